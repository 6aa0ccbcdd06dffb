"""The tracking process beside `clv run`: how a run ends when the store, the pipeline or the
process itself fails. Real SQLite stores in temp dirs, a real child process."""

from __future__ import annotations

import contextlib
import re
import sqlite3

import pytest
from mlflow import MlflowClient
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.errors import TrackingError
from pipeline.tracking.background import BackgroundRun
from tests.conftest import CONFIGS, sample_config

# End to end (runs, Spark, notebooks or servers): `pytest -m "not slow"` skips them.
pytestmark = pytest.mark.slow

runner = CliRunner()
SAMPLE = str(CONFIGS / "cdnow_sample.yaml")


def unopenable_store(tmp_path) -> str:
    # A directory where the SQLite file should be.
    (tmp_path / "store.db").mkdir()
    return f"sqlite:///{tmp_path}/store.db"


def foreign_store(tmp_path) -> str:
    # A SQLite file that opens, with a schema MLflow does not know: only MLflow finds it unusable.
    with contextlib.closing(sqlite3.connect(tmp_path / "store.db")) as connection:
        connection.execute("CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL)")
        connection.execute("INSERT INTO alembic_version VALUES ('0000fromthefuture')")
        connection.commit()
    return f"sqlite:///{tmp_path}/store.db"


def run_command(tmp_path, uri: str, *extra: str):
    return runner.invoke(app, [
        "run", "-q", "-c", SAMPLE, "--set", f"output_dir={tmp_path / 'outputs'}", "--set", f"tracking.uri={uri}",
        "--set", "models.purchase.candidates=[bgnbd]", *extra,
    ])


def test_a_store_that_does_not_open_stops_the_run_before_any_work(tmp_path):
    result = run_command(tmp_path, unopenable_store(tmp_path))
    assert result.exit_code == 3
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"error: tracking store sqlite:///{tmp_path}/store.db: cannot open")
    assert not (tmp_path / "outputs").exists()


def test_a_store_mlflow_cannot_use_stops_the_run_leaving_nothing(tmp_path):
    # Found by the tracking process while the run works: the run stops at its next step.
    result = run_command(tmp_path, foreign_store(tmp_path))
    assert result.exit_code == 3
    (line,) = result.stderr.strip().splitlines()
    assert line == f"error: tracking store sqlite:///{tmp_path}/store.db: Can't locate revision identified by '0000fromthefuture'"
    assert not any((tmp_path / "outputs").iterdir())


def test_an_unusable_optional_store_warns_and_the_run_writes_locally(tmp_path):
    result = run_command(tmp_path, foreign_store(tmp_path), "--set", "tracking.required=false")
    # The CLI prints its own warnings as one line each.
    warned = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert len(warned) == 1 and re.search("Can't locate revision.*tracking.required is false", warned[0]), result.stderr
    assert result.exit_code == 0, result.stderr
    assert list((tmp_path / "outputs").glob("*/customers.parquet"))
    assert "MLflow run" not in result.stdout


def started(tmp_path) -> tuple[BackgroundRun, MlflowClient]:
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    tracker = BackgroundRun(sample_config(f"tracking.uri={uri}"), "pipeline")
    tracker.start()
    tracker.wait_until_started()
    assert tracker.run_id
    return tracker, MlflowClient(uri)


@pytest.mark.parametrize("error, status", [
    (KeyboardInterrupt(), "KILLED"),
    (ValueError("features: column 'amount' is not a number"), "FAILED"),
])
def test_a_run_that_fails_or_is_interrupted_ends_with_its_error(tmp_path, error, status):
    tracker, client = started(tmp_path)
    tracker.fail(error)
    tracker.close()
    run = client.get_run(tracker.run_id)
    assert run.info.status == status
    assert run.data.tags["clv.error_type"] == type(error).__name__
    assert run.data.tags["clv.error"] == (str(error) or type(error).__name__)


def test_a_run_the_pipeline_left_unfinished_ends_failed(tmp_path):
    # The parent closes without finishing (as when it dies): the child sees the end of its input.
    tracker, client = started(tmp_path)
    tracker.close()
    run = client.get_run(tracker.run_id)
    assert run.info.status == "FAILED"
    assert run.data.tags["clv.error_type"] == "ProcessEnded"


def test_a_tracking_process_that_dies_is_a_tracking_error(tmp_path):
    tracker, _ = started(tmp_path)
    tracker._process.kill()  # a crash, as an out-of-memory kill would be
    with pytest.raises(TrackingError, match="ended unexpectedly"):
        tracker.send_finish(tmp_path, {"value": {}}, None)
        tracker.finish()
    tracker.close()
