"""The model registry: versions, the challenger and champion aliases, promotion and run comparison."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from pipeline.config import Config
from pipeline.errors import InputDataError
from pipeline.tracking.runs import (
    _PARAM_LIMIT,
    RUN_KIND_TAG,
    _Run,
    data_fingerprint,
    log_data,
    log_outputs,
    log_value,
)
from pipeline.tracking.store import connect

CHAMPION = "champion"


CHALLENGER = "challenger"


def register_model(run: _Run, info: Any, scorer: Any, checks: dict[str, Any] | None = None) -> dict[str, Any]:
    """A new registered version of the model logged as ``info``; ``challenger`` if it passes ``checks``
    (:func:`pipeline.release.release_checks`), each recorded as a ``check.<name>`` tag and, when
    it failed, ``check.<name>.why``."""
    import mlflow
    from mlflow.exceptions import MlflowException

    settings = run.config.tracking

    # Registering through the client (not log_model's registered_model_name) returns the new
    # version directly and keeps MLflow's console chatter out of the run report.
    try:
        run.client.create_registered_model(settings.registered_model)
    except MlflowException as exc:
        if "already exists" not in str(exc).lower() and "ALREADY_EXISTS" not in str(exc):
            raise
    created = run.client.create_model_version(settings.registered_model, source=info.model_uri, run_id=run.run_id,
                                              model_id=getattr(info, "model_id", None))
    version = str(created.version)
    checks = checks or {}
    passed = all(check.passed for check in checks.values())
    name = settings.registered_model
    tags = {"purchase_model": scorer.purchase_model_name, "checks_passed": str(passed).lower()}
    for key, check in checks.items():
        tags[f"check.{key}"] = str(check.passed).lower()
        if not check.passed:
            tags[f"check.{key}.why"] = check.detail[:_PARAM_LIMIT]
    for key, value in tags.items():
        run.client.set_model_version_tag(name, version, key, value)
    if passed:
        run.client.set_registered_model_alias(name, CHALLENGER, version)
    mlflow.set_tags({"clv.registered_model": name, "clv.model_version": version, "clv.checks_passed": str(passed).lower()})
    return {"name": name, "version": version, "model_uri": info.model_uri, "checks_passed": passed,
            "checks": {key: check.passed for key, check in checks.items()},
            "failed_checks": {key: check.detail for key, check in checks.items() if not check.passed}}


def champion_version(client: Any, name: str) -> Any:
    """The registered model version holding the champion alias, or None."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        return None


def promote(config: Config, reference: str) -> dict[str, str]:
    """Give the ``champion`` alias to a version, named by number or by the run that made it."""
    client = connect(config.tracking)
    name = config.tracking.registered_model
    from mlflow.exceptions import MlflowException

    if reference.isdigit():
        try:
            version = client.get_model_version(name, reference)
        except MlflowException:
            raise InputDataError(f"registered model '{name}' has no version {reference}") from None
    else:
        versions = client.search_model_versions(f"name = '{name}' and run_id = '{reference}'")
        if not versions:
            raise InputDataError(f"run {reference} registered no version of '{name}'")
        version = versions[0]
    previous = champion_version(client, name)
    client.set_registered_model_alias(name, CHAMPION, version.version)
    return {
        "name": name,
        "version": str(version.version),
        "run_id": version.run_id,
        "previous": None if previous is None else str(previous.version),
    }


def compare_runs(config: Config, experiment: str | None = None, last: int = 10) -> pd.DataFrame:
    """Recent pipeline runs side by side: data, model, parameters, holdout and CLV figures."""
    client = connect(config.tracking)
    name = experiment or config.tracking.experiment
    found = client.get_experiment_by_name(name)
    if found is None:
        raise InputDataError(f"no MLflow experiment named '{name}'")
    runs = client.search_runs(
        [found.experiment_id],
        filter_string=f"tags.`{RUN_KIND_TAG}` = 'pipeline'",
        order_by=["attributes.start_time DESC"],
        max_results=last,
    )
    champion = champion_version(client, config.tracking.registered_model)
    rows = []
    for item in runs:
        metrics, params, tags = item.data.metrics, item.data.params, item.data.tags
        purchase = {k.removeprefix("purchase."): v for k, v in metrics.items()
                    if k.startswith("purchase.") and k.count(".") == 1 and k not in ("purchase.log_likelihood", "purchase.n_customers")}
        rows.append({
            "run_id": item.info.run_id,
            "started": pd.Timestamp(item.info.start_time, unit="ms").strftime("%Y-%m-%d %H:%M"),
            "status": item.info.status,
            "data": params.get("data.sha256", "")[:10],
            "rows": params.get("data.rows"),
            "model": params.get("purchase.model") or tags.get("clv.selected_purchase_model"),
            "params": ", ".join(f"{k} {v:.3g}" for k, v in purchase.items()),
            "holdout_purchases_rmse": metrics.get("holdout.purchases_rmse"),
            "holdout_purchases_total_error_pct": metrics.get("holdout.purchases_total_error_pct"),
            "baseline_purchases_rmse": metrics.get("baseline.purchases_rmse"),
            # Diagnostics (runs before issue 20 have none): churn calibration, ranking, fit.
            "holdout_any_purchase_brier": metrics.get("holdout.any_purchase_brier"),
            "baseline_any_purchase_brier": metrics.get("baseline.any_purchase_brier"),
            "holdout_revenue_gini": metrics.get("holdout.revenue_gini"),
            "holdout_purchases_spearman_repeat_customers": metrics.get("holdout.purchases_spearman_repeat_customers"),
            "calibration_chi_square_p_value": metrics.get("holdout.calibration_chi_square_p_value"),
            "predicted_clv_mean": metrics.get("clv.predicted_clv_mean"),
            "historical_clv_mean": metrics.get("clv.historical_clv_customer_mean"),
            # Like for like (runs before issue 19 have none): horizon and whole-lifetime pairs.
            "horizon_predicted_mean": metrics.get("lfl.horizon.predicted_mean"),
            "horizon_historical_mean": metrics.get("lfl.horizon.historical_mean"),
            "lifetime_predicted_mean": metrics.get("lfl.lifetime.predicted_mean"),
            "lifetime_historical_mean": metrics.get("lfl.lifetime.historical_mean"),
            "version": tags.get("clv.model_version"),
            "skipped": ", ".join(part.split(":", 1)[0] for part in tags.get("clv.failed_candidates", "").split("; ") if part),
            "champion": bool(champion is not None and champion.run_id == item.info.run_id),
        })
    return pd.DataFrame(rows)


def set_description(run_dir: Path) -> None:
    """The run's model card as its MLflow description (the UI's "Description" box), cut to what
    a tag holds; the whole card is the ``model_card.md`` artifact."""
    import mlflow
    from mlflow.utils.validation import MAX_TAG_VAL_LENGTH

    from pipeline.catalog import MODEL_CARD_FILE

    card = Path(run_dir) / MODEL_CARD_FILE
    if not card.is_file():
        return
    text = card.read_text()
    if len(text) > MAX_TAG_VAL_LENGTH:
        text = text[: MAX_TAG_VAL_LENGTH - 80].rsplit("\n", 1)[0] + f"\n\n… (the whole card: artifact {MODEL_CARD_FILE})\n"
    mlflow.set_tag("mlflow.note.content", text)


def log_pipeline_end(
    run: _Run, config: Config, run_dir: Path, summary: dict[str, Any], scorer: Any, logged_model: Any,
    checks: dict[str, Any], source: Any = None,
) -> dict[str, Any]:
    """What a pipeline run logs once its outputs are in place (data fingerprint, value, outputs),
    then the registration of ``logged_model`` (:func:`pipeline.tracking.model.log_model`'s result)
    with the release gates' verdict ``checks`` (:func:`pipeline.release.release_checks`)."""
    import mlflow

    from pipeline.config import config_digest

    features_info = summary["features"]
    mlflow.set_tags({"clv.as_of": features_info["observation_end"], "clv.config_sha256": config_digest(config)})
    log_data(run, data_fingerprint(config, features_info, source), features_info)
    log_value(run, summary["value"])
    log_outputs(run, run_dir)
    set_description(run_dir)
    if summary.get("data_quality"):
        # A table artifact: the MLflow UI shows it as one, and compares it across runs.
        mlflow.log_table(pd.DataFrame(summary["data_quality"]["rows"]), "data_quality.json")
        mlflow.log_metrics({f"data_quality.{key}": float(value) for key in ("duplicate_rows", "zero_amount_rows",
                            "same_day_rows_merged") if (value := features_info.get(key)) is not None})
    mlflow.set_tag("mlflow.runName", f"{summary['model']['selected_purchase_model']} as of {features_info['observation_end']}")
    return register_model(run, logged_model, scorer, checks)
