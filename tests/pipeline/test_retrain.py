"""Scheduled retraining: promotion gate, idempotence, lock and failure safety, on a real MLflow store."""

from __future__ import annotations

import pytest
from filelock import FileLock
from mlflow import MlflowClient
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.retrain import LOCK_FILE
from tests.conftest import CONFIGS

runner = CliRunner()
SAMPLE = str(CONFIGS / "cdnow_sample.yaml")
FAST = ["--set", "models.purchase.candidates=[bgnbd]"]
# A heavy penalty drags BG/NBD's parameters away from the maximum: a measurably worse model.
WORSE = ["--set", "models.purchase.penalizer=5"]


@pytest.fixture()
def store(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    common = ["-c", SAMPLE, "--set", f"tracking.uri={uri}", "--set", f"output_dir={tmp_path / 'outputs'}", *FAST]
    return tmp_path, uri, common


def retrain(common, *extra):
    return runner.invoke(app, ["retrain", "-q", *common, "--as-of", "1998-06-30", *extra])


def champion(uri):
    return str(MlflowClient(uri).get_model_version_by_alias("clv", "champion").version)


def test_first_retrain_promotes_and_rerun_does_not_double_promote(store):
    _, uri, common = store
    first = retrain(common)
    assert first.exit_code == 0, first.stderr
    assert "PROMOTED: no champion yet" in first.output
    assert champion(uri) == "1"
    again = retrain(common)
    assert again.exit_code == 0, again.stderr
    assert "KEPT champion" in again.output and "already trained on as-of 1998-06-30" in again.output
    assert champion(uri) == "1"
    # The rerun is still logged and registered, only not promoted.
    assert len(MlflowClient(uri).search_model_versions("name = 'clv'")) == 2


def test_worse_challenger_is_kept_out_and_better_one_promoted(store):
    _, uri, common = store
    assert retrain(common).exit_code == 0  # version 1: champion
    worse = retrain(common, *WORSE)
    assert worse.exit_code == 0, worse.stderr
    assert "KEPT champion" in worse.output and "champion kept" in worse.output
    assert champion(uri) == "1"
    client = MlflowClient(uri)
    run = client.get_run(client.get_model_version("clv", "2").run_id)
    assert run.data.tags["clv.retrain.promoted"] == "false"
    assert run.data.metrics["retrain.challenger_metric"] > run.data.metrics["retrain.champion_metric"]
    # Now the penalized model is champion; an unpenalized retrain beats it on the same window.
    assert runner.invoke(app, ["promote", "2", *common]).exit_code == 0
    better = retrain(common)
    assert better.exit_code == 0, better.stderr
    assert "PROMOTED" in better.output and "at least as good" in better.output
    assert champion(uri) == "3"


def test_lock_refuses_a_concurrent_retrain(store):
    root, uri, common = store
    (root / "outputs").mkdir()
    with FileLock(str(root / "outputs" / LOCK_FILE)):
        result = retrain(common)
    assert result.exit_code == 75
    assert "another retrain holds" in result.stderr
    assert not any(p.is_dir() for p in (root / "outputs").iterdir())


def test_failed_retrain_never_touches_the_champion(store):
    _, uri, common = store
    assert retrain(common).exit_code == 0
    failed = retrain(common, "--set", "models.spend.min_repeat_customers=5000")
    assert failed.exit_code == 2
    assert champion(uri) == "1"
    assert len(MlflowClient(uri).search_model_versions("name = 'clv'")) == 1
