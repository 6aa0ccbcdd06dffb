"""Everything MLflow: runs, what each run logs, the pyfunc model, the registry and comparisons.

No other module imports mlflow. Small ``log_*`` functions, each logging one kind of thing, are
called by the CLI around the stages; the stages themselves know nothing of tracking.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import math
import os
import subprocess
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from pipeline.config import Config, TrackingSettings, resolve_input_path
from pipeline.errors import InputDataError, TrackingError
from pipeline.io import file_sha256

DEFAULT_URI = "sqlite:///mlflow.db"
DEFAULT_ARTIFACTS = "mlartifacts"
CHAMPION = "champion"
CHALLENGER = "challenger"
RUN_KIND_TAG = "clv.run_kind"
MODEL_ARTIFACT = "model"
# MLflow caps param values; longer ones (a long path, a tier action) are cut with a marker.
_PARAM_LIMIT = 500


def _quiet_mlflow() -> None:
    # The HTTP client retries for minutes by default; a scheduled job should fail fast.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    # MLflow's INFO lines (table creation, registry) and hints would bury the run's report.
    # Importing mlflow configures its logger, so levels are set after the import.
    import logging

    import mlflow  # noqa: F401

    logging.getLogger("mlflow").setLevel(logging.ERROR)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=r".*(type hints|Inferred schema contains integer).*")


def tracking_uri(settings: TrackingSettings) -> str:
    """The tracking URI: the config's, else $MLFLOW_TRACKING_URI, else a SQLite store here."""
    return settings.uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_URI


def _artifact_location(uri: str) -> str | None:
    # A local SQLite store keeps artifacts beside it (./mlartifacts), not in the cwd's mlruns/.
    if uri.startswith("sqlite:///"):
        database = Path(uri.removeprefix("sqlite:///"))
        return (database.resolve().parent / DEFAULT_ARTIFACTS).as_uri()
    return None


def check_store(uri: str) -> None:
    """Check, without importing MLflow, that a tracking server answers or a SQLite store opens.

    MLflow itself retries a SQLite file it cannot open for about 100 s before failing. Raises
    :class:`TrackingError` (one line: URI and what failed).
    """
    if uri.startswith(("http://", "https://")):
        import requests

        try:
            requests.get(uri.rstrip("/") + "/health", timeout=5).raise_for_status()
        except requests.RequestException as exc:
            reason = type(exc).__name__ if not str(exc) else str(exc).splitlines()[0][:200]
            raise TrackingError(f"tracking server {uri} is unreachable: {reason}") from None
    elif uri.startswith("sqlite:///"):
        import sqlite3

        database = Path(uri.removeprefix("sqlite:///")).resolve()
        try:
            database.parent.mkdir(parents=True, exist_ok=True)
            with contextlib.closing(sqlite3.connect(database)) as connection:
                connection.execute("PRAGMA schema_version").fetchone()
        except (OSError, sqlite3.Error) as exc:
            raise TrackingError(f"tracking store {uri}: cannot open {database} as SQLite ({exc})") from None


def connect(settings: TrackingSettings):
    """Point MLflow at the configured store and check it answers; return an ``MlflowClient``.

    Raises :class:`TrackingError` (one line: URI and what failed) when it does not.
    """
    _quiet_mlflow()
    import mlflow
    from mlflow import MlflowClient

    uri = tracking_uri(settings)
    check_store(uri)
    # MLflow also exports the URI as $MLFLOW_TRACKING_URI for subprocesses; a command leaves
    # the environment as it found it (an embedding process's next command reads it).
    environment_uri = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    if environment_uri is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = environment_uri
    try:
        client = MlflowClient(tracking_uri=uri)
        experiment = client.get_experiment_by_name(settings.experiment)
        if experiment is None:
            client.create_experiment(settings.experiment, artifact_location=_artifact_location(uri))
    except Exception as exc:  # noqa: BLE001 - any store failure is the same message to the user
        raise TrackingError(f"tracking store {uri}: {str(exc).splitlines()[0][:300]}") from None
    mlflow.set_experiment(settings.experiment)
    return client


def code_version() -> dict[str, str]:
    """Git commit (when run from a checkout) and package version, as tags."""
    from importlib.metadata import PackageNotFoundError, version

    tags = {}
    try:
        tags["clv.package_version"] = version("clv-pipeline")
    except PackageNotFoundError:
        pass
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
            cwd=Path(__file__).resolve().parent,
        )
        if commit.returncode == 0:
            tags["mlflow.source.git.commit"] = commit.stdout.strip()
            dirty = subprocess.run(
                ["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True,
                timeout=5, cwd=Path(__file__).resolve().parent,
            )
            tags["clv.git_dirty"] = str(bool(dirty.stdout.strip())).lower()
    except (OSError, subprocess.SubprocessError):
        pass
    return tags


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
def tracked_run(config: Config, kind: str, run_name: str | None = None) -> Iterator[Any]:
    """An MLflow run around a stage or the pipeline; FAILED with the error as a tag if it raises.

    With ``tracking.enabled: false`` — or an unreachable store and ``tracking.required: false``
    — yields ``None`` and the caller writes outputs locally only.
    """
    settings = config.tracking
    if not settings.enabled:
        yield None
        return
    try:
        client = connect(settings)
    except TrackingError as exc:
        if settings.required:
            raise
        warnings.warn(f"{exc}; tracking.required is false, so outputs are written locally only", stacklevel=2)
        yield None
        return
    with open_run(client, config, kind, run_name) as run:
        yield run


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
            end_failed(opened, error_line(exc), type(exc).__name__, killed=isinstance(exc, KeyboardInterrupt))
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
    mlflow.log_dict(fit.summary(), "models.json")


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


def log_value(run: _Run, value_summary: dict[str, Any]) -> None:
    """Predicted vs historical CLV (totals, means, per tier) as metrics."""
    import mlflow

    flat = {f"clv.{k}": v for k, v in value_summary.items() if k != "tiers"}
    for tier, row in value_summary["tiers"].items():
        flat |= {f"tier.{tier}.{k}": v for k, v in row.items()}
    mlflow.log_metrics(_finite(flat))


def log_outputs(run: _Run, run_dir: Path) -> None:
    """The run directory's plots, customers table, summaries — everything but the staging temp files."""
    import mlflow

    run_dir = Path(run_dir)
    for name in ("customers.parquet", "summary.json", "features_summary.json", "backtest.json", "value.json",
                 "monitor.json"):
        if (run_dir / name).is_file():
            mlflow.log_artifact(str(run_dir / name))
    if (run_dir / "plots").is_dir():
        mlflow.log_artifacts(str(run_dir / "plots"), artifact_path="plots")


def log_monitor(run: _Run, metrics: dict[str, float], alert: str | None) -> None:
    """The champion's forecast against the log since its as-of date (``monitor.*``), and its alert."""
    import mlflow

    mlflow.log_metrics(_finite(metrics))
    mlflow.set_tag("clv.monitor.alert", "true" if alert else "false")
    if alert:
        mlflow.set_tag("clv.monitor.alert_reason", alert[:500])


# --- the registered model -----------------------------------------------------------------

def _pyfunc_class():
    import mlflow.pyfunc

    class CustomerValueModel(mlflow.pyfunc.PythonModel):
        """Scores a per-customer features frame: P(alive), churn, purchases, spend, CLV, tier.

        Input: one row per customer with ``customer_id``, ``frequency``, ``recency``, ``T``,
        ``monetary_value``, ``n_transactions``, ``total_amount`` (optionally ``total_margin``,
        ``acquisition_cost``, ``first_channel``), in the model's time unit.
        """

        def load_context(self, context):
            import joblib

            self.scorer = joblib.load(context.artifacts["scorer"])

        # A DataFrame hint: MLflow infers no schema from it (the logged signature stays the
        # contract) and, without any hint, warns on every log past all warnings filters.
        def predict(self, context, model_input: pd.DataFrame, params=None):
            frame = pd.DataFrame(model_input)
            if "customer_id" in frame.columns:
                frame = frame.set_index("customer_id")
            return self.scorer.score(frame).reset_index()

    return CustomerValueModel


PYFUNC_INPUT_COLUMNS = ["customer_id", "frequency", "recency", "T", "monetary_value", "n_transactions", "total_amount"]


def _log_pyfunc(example: pd.DataFrame, signature: Any, scorer_path: Path, scorer: Any) -> Any:
    import mlflow

    with warnings.catch_warnings():
        # MLflow suggests type hints on predict; this model carries an explicit signature instead.
        warnings.simplefilter("ignore", UserWarning)
        return mlflow.pyfunc.log_model(
            name=MODEL_ARTIFACT,
            python_model=_pyfunc_class()(),
            artifacts={"scorer": str(scorer_path)},
            signature=signature,
            input_example=example,
            # Listing requirements skips MLflow's slow import-tracing inference.
            pip_requirements=["lifetimes==0.11.3", "pandas", "numpy", "scipy", "scikit-learn", "joblib"],
            metadata={"value_settings": scorer.settings_summary()},
        )


def model_example(features: pd.DataFrame) -> pd.DataFrame:
    """The logged model's input example: the first five customers, with the columns it reads."""
    optional = [c for c in ("total_margin", "acquisition_cost", "first_channel") if c in features.columns]
    return features.head(5).reset_index()[PYFUNC_INPUT_COLUMNS + optional]


def log_model(run: _Run, scorer_path: Path, example: pd.DataFrame, scorer: Any) -> Any:
    """Log the pyfunc model (signature and input ``example``, see :func:`model_example`) in the run."""
    from mlflow.models import infer_signature

    output = scorer.score(example.set_index("customer_id")).reset_index()
    return _log_pyfunc(example, infer_signature(example, output), scorer_path, scorer)


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
            "predicted_clv_mean": metrics.get("clv.predicted_clv_mean"),
            "historical_clv_mean": metrics.get("clv.historical_clv_customer_mean"),
            "version": tags.get("clv.model_version"),
            "skipped": ", ".join(part.split(":", 1)[0] for part in tags.get("clv.failed_candidates", "").split("; ") if part),
            "champion": bool(champion is not None and champion.run_id == item.info.run_id),
        })
    return pd.DataFrame(rows)


def log_pipeline_run(
    run: _Run, config: Config, config_path: Path | None, result: Any, source: Any = None,
    champion_clv_total: float | None = None,
) -> dict[str, Any]:
    """Everything a whole-pipeline run logs, in this process, ending with the registered model
    version. (``clv run`` logs the same from its tracking process, each part when it is ready.)

    ``result`` needs ``summary``, ``fit``, ``value`` (``summary``, ``scorer``), ``run_dir`` and
    ``features``.
    """
    log_config(run, config, config_path)
    log_fit(run, result.fit)
    logged_model = log_model(
        run, Path(result.run_dir) / "model" / "scorer.joblib", model_example(result.features), result.value.scorer
    )
    return log_pipeline_end(run, config, result, logged_model, source, champion_clv_total)


def log_fit(run: _Run, fit: Any) -> None:
    """The production models, the candidates (nested runs) and the backtest."""
    log_model_summaries(run, fit)
    log_candidates(run, fit)
    log_backtest(run, fit)


def log_pipeline_end(
    run: _Run, config: Config, result: Any, logged_model: Any, source: Any = None, champion_clv_total: float | None = None,
) -> dict[str, Any]:
    """What a pipeline run logs once its outputs are in place (data fingerprint, value, outputs),
    then the registration of ``logged_model`` (:func:`log_model`'s result) with the release gates'
    verdict (``champion_clv_total``: the champion's on the same customers, for the ratio gate)."""
    import mlflow

    from pipeline.config import config_digest
    from pipeline.release import release_checks

    features_info = result.summary["features"]
    mlflow.set_tags({"clv.as_of": features_info["observation_end"], "clv.config_sha256": config_digest(config)})
    log_data(run, data_fingerprint(config, features_info, source), features_info)
    log_value(run, result.value.summary)
    log_outputs(run, result.run_dir)
    mlflow.set_tag("mlflow.runName", f"{result.fit.selected} as of {features_info['observation_end']}")
    value = result.value.summary
    checks = release_checks(
        result.fit, value, config.release, config.models.selection_metric,
        clv_total=value["predicted_clv_total"], champion_clv_total=champion_clv_total,
    )
    return register_model(run, logged_model, result.value.scorer, checks)


def load_scorer(config: Config, model_uri: str) -> tuple[Any, Any]:
    """The frozen scorer inside a registered pyfunc model, and which model version it is."""
    from mlflow.exceptions import MlflowException

    from pipeline.stages.score import ModelIdentity

    client = connect(config.tracking)
    import mlflow.pyfunc

    name = version = run_id = None
    try:
        if model_uri.startswith("models:/"):
            reference = model_uri.removeprefix("models:/")
            if "@" in reference:
                name, alias = reference.split("@", 1)
                found = client.get_model_version_by_alias(name, alias)
            else:
                name, _, number = reference.partition("/")
                found = client.get_model_version(name, number)
            version, run_id = str(found.version), found.run_id
        elif model_uri.startswith("runs:/"):
            run_id = model_uri.removeprefix("runs:/").split("/", 1)[0]
        with warnings.catch_warnings():
            # Unpickling the model class repeats MLflow's type-hint suggestion; the model has a signature.
            warnings.simplefilter("ignore", UserWarning)
            model = mlflow.pyfunc.load_model(model_uri)
    except (MlflowException, OSError) as exc:
        raise InputDataError(f"model {model_uri}: not found ({str(exc).splitlines()[0][:200]})") from None
    scorer = getattr(model.unwrap_python_model(), "scorer", None)
    if scorer is None:
        raise InputDataError(f"model {model_uri}: not a CLV model logged by this pipeline")
    return scorer, ModelIdentity(uri=model_uri, name=name, version=version, run_id=run_id)
