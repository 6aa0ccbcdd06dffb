"""An MLflow run and what it logs: config, data fingerprint, fits, candidates, backtest, value, outputs, monitor."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import math
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from pipeline.config import Config, resolve_input_path
from pipeline.io import file_sha256
from pipeline.tracking.store import code_version

RUN_KIND_TAG = "clv.run_kind"


_PARAM_LIMIT = 500


def flatten(mapping: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` → ``{"a.b": 1}``; lists become their YAML flow form."""
    flat: dict[str, Any] = {}
    for key, value in mapping.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat |= flatten(value, name + ".")
        else:
            flat[name] = value
    return flat


def _param_value(value: Any) -> str:
    if isinstance(value, (list, dict)):
        value = yaml.safe_dump(value, default_flow_style=True, width=10_000).strip()
    text = str(value)
    return text if len(text) <= _PARAM_LIMIT else text[: _PARAM_LIMIT - 3] + "..."


def input_file_sha256(path: Path) -> str:
    """SHA-256 of an input file, computed once per process for the same size and modification time
    (the background tracker hashes the log while the run works, and finds it done at the end)."""
    stat = Path(path).stat()
    return _file_sha256_of_version(str(path), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=4)
def _file_sha256_of_version(path: str, size: int, modified_ns: int) -> str:
    return file_sha256(Path(path))


def data_fingerprint(config: Config, log_info: dict[str, Any], source: Any = None) -> dict[str, Any]:
    """What identifies the input: path, size, dates and a SHA-256 of the file's bytes."""
    fingerprint = {
        "path": str(log_info.get("source")),
        "rows": log_info.get("rows_read"),
        "customers": log_info.get("customers"),
        "first_date": log_info.get("first_date"),
        "last_date": log_info.get("last_date"),
    }
    if isinstance(source, pd.DataFrame):
        fingerprint["sha256"] = hashlib.sha256(
            pd.util.hash_pandas_object(source, index=False).to_numpy().tobytes()
        ).hexdigest()
        fingerprint["hash_of"] = "DataFrame rows"
    else:
        path = resolve_input_path(str(source if source is not None else config.input.path))
        if path.is_file():
            fingerprint["sha256"] = input_file_sha256(path)
            fingerprint["hash_of"] = "file bytes"
        else:  # a directory of Parquet parts: hash the sorted list of names and sizes
            parts = sorted(p for p in path.rglob("*") if p.is_file())
            listing = "\n".join(f"{p.relative_to(path)} {p.stat().st_size}" for p in parts)
            fingerprint["sha256"] = hashlib.sha256(listing.encode()).hexdigest()
            fingerprint["hash_of"] = "file names and sizes"
    return fingerprint


@contextlib.contextmanager
def open_run(client: Any, config: Config, kind: str, run_name: str | None = None) -> Iterator[_Run]:
    """Start an MLflow run (kind and code version as tags); FAILED with the error if the body raises."""
    import mlflow

    tags = {RUN_KIND_TAG: kind, **code_version()}
    with mlflow.start_run(run_name=run_name, tags=tags) as run:
        opened = _Run(client=client, run_id=run.info.run_id, config=config)
        try:
            yield opened
        except BaseException as exc:
            try:
                end_failed(opened, error_line(exc), type(exc).__name__, killed=isinstance(exc, KeyboardInterrupt))
            except Exception:  # noqa: BLE001 - the store may be what failed: the body's error is the one to report
                pass
            raise


def error_line(exc: BaseException) -> str:
    """An error's first line, as runs record it."""
    return str(exc).splitlines()[0][:500] if str(exc) else type(exc).__name__


def end_failed(run: _Run, message: str, error_type: str, killed: bool = False) -> None:
    """End the active run as FAILED (KILLED when interrupted) with the error as tags."""
    import mlflow

    status = "KILLED" if killed else "FAILED"
    run.client.set_tag(run.run_id, "clv.error", message[:500])
    run.client.set_tag(run.run_id, "clv.error_type", error_type)
    # Candidates logged before the failure (the fit is logged as soon as it exists) end with
    # their parent: nothing of a failed run reads as a finished one.
    children = run.client.search_runs(
        [mlflow.get_run(run.run_id).info.experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{run.run_id}' and attributes.status = 'FINISHED'",
    )
    for child in children:
        run.client.set_tag(child.info.run_id, "clv.error", f"the run it belongs to failed: {message}"[:500])
        run.client.set_terminated(child.info.run_id, status=status)
    mlflow.end_run(status=status)


class _Run:
    """The open run: a client and its id (nested runs are opened through it)."""

    def __init__(self, client: Any, run_id: str, config: Config):
        self.client = client
        self.run_id = run_id
        self.config = config


def log_config(run: _Run, config: Config, config_path: Path | None = None) -> None:
    import mlflow

    resolved = config.model_dump(mode="json")
    mlflow.log_params({key: _param_value(value) for key, value in flatten(resolved).items()})
    mlflow.log_text(yaml.safe_dump(resolved, sort_keys=False), "config/resolved.yaml")
    if config_path is not None:
        mlflow.set_tag("clv.config_file", str(config_path))


def log_data(run: _Run, fingerprint: dict[str, Any], features_info: dict[str, Any]) -> None:
    """The data fingerprint as tags, and an ``mlflow.data`` dataset input (no rows uploaded)."""
    import mlflow
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.data.sources import LocalArtifactDatasetSource

    mlflow.set_tags({f"data.{key}": str(value) for key, value in fingerprint.items()})
    mlflow.log_params({
        "data.sha256": fingerprint["sha256"][:16],
        "data.rows": fingerprint["rows"],
        "data.customers": features_info.get("customers"),
    })
    mlflow.log_metrics({
        "data.rows": float(fingerprint["rows"] or 0),
        "data.customers": float(features_info.get("customers") or 0),
        "data.repeat_customers": float(features_info.get("repeat_customers") or 0),
    })
    path = Path(str(fingerprint["path"]))
    # The digest is the file's own hash, so MLflow never reads (or uploads) the rows.
    source = LocalArtifactDatasetSource(path.resolve().as_uri() if path.exists() else str(path))
    dataset = MetaDataset(source=source, name=path.name, digest=fingerprint["sha256"][:16])
    mlflow.log_input(dataset, context="training")


def _finite(metrics: dict[str, Any]) -> dict[str, float]:
    return {
        key: float(value) for key, value in metrics.items()
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(float(value))
    }


def log_model_summaries(run: _Run, fit: Any) -> None:
    """Fitted parameters, standard errors and log-likelihoods of the production models."""
    import mlflow

    for role, model in (("purchase", fit.purchase_model), ("spend", fit.spend_model)):
        summary = model.summary()
        mlflow.log_params({f"{role}.model": summary["model"]})
        mlflow.log_metrics(_finite({f"{role}.{name}": value for name, value in summary["params"].items()}))
        mlflow.log_metrics(_finite({f"{role}.se.{name}": value for name, value in summary["standard_errors"].items()}))
        mlflow.log_metrics(_finite({
            f"{role}.log_likelihood": summary["log_likelihood"], f"{role}.n_customers": summary["n_customers"],
        }))
    mlflow.log_metric("spend.frequency_monetary_correlation", float(fit.spend_model.frequency_monetary_correlation_))
    for role, model in (("purchase", fit.purchase_model), ("spend", fit.spend_model)):
        for row in model.summary().get("coefficients", []):
            key = _metric_key(f"{role}.coef.{row['parameter']}.{row['covariate']}")
            mlflow.log_metrics(_finite({key: row["coefficient"], f"{key}.se": row["standard_error"],
                                        f"{key}.p_value": row["p_value"]}))
    tests = {} if fit.calibration_models is None else fit.calibration_models.covariate_tests
    for name, test in tests.items():
        mlflow.log_metrics(_finite({f"covariates.lr_test.{name}.{key}": value for key, value in test.items()}))
    mlflow.log_dict(fit.summary(), "models.json")


def _metric_key(text: str) -> str:
    # MLflow keys take letters, digits and _ - . / space: a design column such as channel[web]
    # becomes channel_web_.
    return re.sub(r"[^\w\-./ ]", "_", text)


def log_candidates(run: _Run, fit: Any) -> None:
    """One nested run per candidate purchase model, with its calibration fit and holdout metrics."""
    import mlflow

    failed = fit.failed_candidates
    if failed:
        mlflow.set_tag("clv.failed_candidates", "; ".join(f"{k}: {v}" for k, v in failed.items())[:5000])
    fitted = {} if fit.calibration_models is None else fit.calibration_models.purchase
    for name, reason in failed.items():
        if name not in fitted:  # no calibration fit to show: a FAILED nested run saying why
            with mlflow.start_run(run_name=name, nested=True, tags={RUN_KIND_TAG: "candidate"}) as nested:
                mlflow.log_param("purchase.model", name)
                run.client.set_tag(nested.info.run_id, "clv.error", reason[:500])
                mlflow.end_run(status="FAILED")
    if fit.calibration_models is None:
        mlflow.set_tag("clv.selected_purchase_model", fit.selected)
        return
    for name, model in fitted.items():
        summary = model.summary()
        with mlflow.start_run(run_name=name, nested=True, tags={RUN_KIND_TAG: "candidate"}) as nested:
            mlflow.log_params({"purchase.model": name, **{f"purchase.{k}": v for k, v in summary["params"].items()}})
            mlflow.log_metrics(_finite({f"purchase.se.{k}": v for k, v in summary["standard_errors"].items()}))
            mlflow.log_metric("purchase.log_likelihood", summary["log_likelihood"])
            mlflow.log_metrics(_finite({f"holdout.{k}": v for k, v in fit.backtest[name].items()}))
            mlflow.set_tag("clv.selected", str(name == fit.selected).lower())
            if name in failed:  # fitted on the calibration period, then failed on all data
                run.client.set_tag(nested.info.run_id, "clv.error", failed[name][:500])
                mlflow.end_run(status="FAILED")
    mlflow.set_tags({"clv.selected_purchase_model": fit.selected, "clv.selection_reason": fit.selection_reason})
    mlflow.log_param("selected_purchase_model", fit.selected)


def log_backtest(run: _Run, fit: Any) -> None:
    import mlflow

    if not fit.backtest:
        return
    mlflow.log_metrics(_finite({f"holdout.{k}": v for k, v in fit.backtest[fit.selected].items()}))
    mlflow.log_metrics(_finite({f"baseline.{k}": v for k, v in fit.backtest["historical_baseline"].items()}))


def log_fit(run: _Run, fit: Any) -> None:
    """The production models, the candidates (nested runs) and the backtest."""
    log_model_summaries(run, fit)
    log_candidates(run, fit)
    log_backtest(run, fit)


def log_value(run: _Run, value_summary: dict[str, Any]) -> None:
    """Predicted vs historical CLV (totals, means, per tier) as metrics."""
    import mlflow

    flat = {f"clv.{k}": v for k, v in value_summary.items() if k != "tiers"}
    for tier, row in value_summary["tiers"].items():
        flat |= {f"tier.{tier}.{k}": v for k, v in row.items()}
    # Predicted vs historical like for like: lfl.<pair>.<figure> for the company, and per tier
    # (lfl.tier.<tier>...) and first channel (lfl.channel.<channel>...).
    comparisons = value_summary.get("like_for_like", {})
    groups = {"": comparisons.get("company", {})}
    for kind, key in (("tier", "by_tier"), ("channel", "by_channel")):
        groups |= {f"{kind}.{name}.": figures for name, figures in comparisons.get(key, {}).items()}
    for prefix, figures in groups.items():
        for pair in ("horizon", "lifetime"):
            flat |= {_metric_key(f"lfl.{prefix}{pair}.{k}"): v for k, v in figures.get(pair, {}).items()}
    for group, row in value_summary.get("new_customer", {}).get("groups", {}).items():
        flat |= {_metric_key(f"new_customer.{group}.{k}"): v for k, v in row.items()}
    # The company totals' interval from the parameters' uncertainty: interval.<total>.lower/upper.
    for total, bounds in value_summary.get("intervals", {}).items():
        if isinstance(bounds, dict):
            flat |= {f"interval.{total}.{side}": v for side, v in bounds.items()}
    mlflow.log_metrics(_finite(flat))


def log_outputs(run: _Run, run_dir: Path) -> None:
    """The run directory's plots, customers table, summaries — everything but the staging temp files."""
    import mlflow

    from pipeline.catalog import ARTIFACT_FILES, PLOTS_DIR

    run_dir = Path(run_dir)
    for name in ARTIFACT_FILES:
        if (run_dir / name).is_file():
            mlflow.log_artifact(str(run_dir / name))
    if (run_dir / PLOTS_DIR).is_dir():
        mlflow.log_artifacts(str(run_dir / PLOTS_DIR), artifact_path=PLOTS_DIR)


def log_monitor(run: _Run, metrics: dict[str, float], alert: str | None) -> None:
    """The champion's forecast against the log since its as-of date (``monitor.*``), and its alert."""
    import mlflow

    mlflow.log_metrics(_finite(metrics))
    mlflow.set_tag("clv.monitor.alert", "true" if alert else "false")
    if alert:
        mlflow.set_tag("clv.monitor.alert_reason", alert[:500])


def log_backtest_origins(run: _Run, summary: dict[str, Any], run_dir: Path) -> None:
    """``clv backtest``: on the open (parent) run, each model's spread per metric
    (``stability.<model>.<metric>_mean`` / ``_sd``) and its wins (``wins.<model>``), the report's
    files and plot; one nested run per origin, tagged with its dates and winner, with every
    model's metrics there as ``<model>.<metric>``."""
    import mlflow

    origins = summary["origins"]
    mlflow.log_param("origins", len(origins))
    flat: dict[str, Any] = {}
    for model, metrics in summary["stability"].items():
        for metric, figures in metrics.items():
            flat[_metric_key(f"stability.{model}.{metric}_mean")] = figures["mean"]
            flat[_metric_key(f"stability.{model}.{metric}_sd")] = figures["sd"]
    flat |= {_metric_key(f"wins.{model}"): wins for model, wins in summary["wins"].items()}
    mlflow.log_metrics(_finite(flat))  # nulls (no finite value, one origin's sd) are left out
    mlflow.set_tags({"clv.selection_metric": summary["selection_metric"],
                     "clv.wins": ", ".join(f"{model} {wins}" for model, wins in summary["wins"].items())})
    for origin in origins:
        tags = {RUN_KIND_TAG: "origin", "clv.origin": str(origin["origin"]),
                "clv.calibration_end": origin["calibration_end"], "clv.observation_end": origin["observation_end"],
                "clv.selected_purchase_model": origin["selected"]}
        with mlflow.start_run(run_name=f"origin {origin['origin']} ({origin['calibration_end']})", nested=True,
                              tags=tags):
            mlflow.log_metrics(_finite({_metric_key(f"{model}.{metric}"): value
                                        for model, metrics in origin["metrics"].items()
                                        for metric, value in metrics.items()}))
            if origin.get("failed_candidates"):
                mlflow.set_tag("clv.failed_candidates",
                               "; ".join(f"{k}: {v}" for k, v in origin["failed_candidates"].items())[:5000])
    log_outputs(run, run_dir)
