"""The MLflow store: where it is, checking it answers (without MLflow), connecting, code version tags."""

from __future__ import annotations

import contextlib
import os
import subprocess
import warnings
from pathlib import Path

from pipeline.config import TrackingSettings
from pipeline.errors import TrackingError

DEFAULT_URI = "sqlite:///mlflow.db"


DEFAULT_ARTIFACTS = "mlartifacts"


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
            client.create_experiment(settings.experiment, artifact_location=_artifact_location(uri),
                                     tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND})
        elif EXPERIMENT_KIND_TAG not in experiment.tags:
            client.set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
    except Exception as exc:  # noqa: BLE001 - any store failure is the same message to the user
        raise TrackingError(f"tracking store {uri}: {str(exc).splitlines()[0][:300]}") from None
    mlflow.set_experiment(settings.experiment)
    return client


# MLflow 3's UI opens an experiment without this tag on its GenAI overview ("Traces 0"); with it,
# on the training runs. An experiment a user tagged otherwise keeps their tag.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"


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
