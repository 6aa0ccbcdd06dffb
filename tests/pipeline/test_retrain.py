"""Scheduled retraining: promotion gate, idempotence, lock and failure safety, on a real MLflow store."""

from __future__ import annotations

import pytest
from filelock import FileLock
from mlflow import MlflowClient
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.retrain import LOCK_FILE
from tests.conftest import CONFIGS

# End to end (runs, Spark, notebooks or servers): `pytest -m "not slow"` skips them.
pytestmark = pytest.mark.slow

runner = CliRunner()
SAMPLE = str(CONFIGS / "cdnow_sample.yaml")
FAST = ["--set", "models.purchase.candidates=[bgnbd]"]
# A retrain's holdout rolls with its as-of date: the last 26 weeks.
ROLLING = ["--set", "features.calibration_end=null", "--set", "features.holdout_periods=26"]
# A heavy penalty drags BG/NBD's parameters away from the maximum: a measurably worse model,
# and one that misses the holdout's total purchases by +33 %, past the release gate's ±30 %.
PENALIZED = ["--set", "models.purchase.penalizer=5"]
# The same model with that gate widened: it passes the absolute gates and only loses to the
# champion on the same window.
WORSE = [*PENALIZED, "--set", "release.max_total_error_pct=50"]


@pytest.fixture()
def store(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    common = ["-c", SAMPLE, "--set", f"tracking.uri={uri}", "--set", f"output_dir={tmp_path / 'outputs'}", *FAST,
              *ROLLING]
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


def versions(uri):
    return {str(v.version): v for v in MlflowClient(uri).search_model_versions("name = 'clv'")}


def test_a_fixed_calibration_end_or_no_holdout_is_refused(store):
    _, uri, common = store
    fixed = retrain(common, "--set", "features.calibration_end=1997-09-30", "--set", "features.holdout_periods=null")
    assert fixed.exit_code == 2
    assert "needs a rolling holdout, but features.calibration_end is fixed at 1997-09-30" in fixed.stderr
    none = retrain(common, "--set", "features.holdout_periods=null")
    assert none.exit_code == 2 and "set features.holdout_periods" in none.stderr
    # 39 weeks are 273 of the 545 days observed: more than half.
    long = retrain(common, "--set", "features.holdout_periods=39")
    assert long.exit_code == 2 and "50.1% of the 545 days observed" in long.stderr, long.stderr
    assert not versions(uri)


def test_stale_log_keeps_the_champion_and_says_why_in_one_line(store):
    """The README's cron line (no --as-of: today) on a log that ended in 1998."""
    _, uri, common = store
    assert retrain(common).exit_code == 0
    stale = runner.invoke(app, ["retrain", "-q", *common])
    assert stale.exit_code == 2, stale.output
    lines = stale.stderr.strip().splitlines()
    assert len(lines) == 1 and "stale data: the last transaction is on 1998-06-30" in lines[0]
    assert "validation.max_staleness_days" in lines[0]
    assert champion(uri) == "1" and list(versions(uri)) == ["1"]


def test_stale_log_without_the_freshness_guard_is_rejected_by_the_release_gates(store):
    """Features as of today on a log that ended in 1998: every customer looks dead and the empty
    holdout gives no finite error; the gates register the version, untagged, and exit 4."""
    _, uri, common = store
    assert retrain(common).exit_code == 0
    unguarded = runner.invoke(app, ["retrain", "-q", *common, "--set", "validation.max_staleness_days=null",
                                    "--set", "validation.max_holdout_share=0.99"])
    assert unguarded.exit_code == 4, unguarded.output
    assert "challenger rejected by the release gates: version 2" in unguarded.stderr
    assert "champion version 1 kept" in unguarded.stderr
    assert champion(uri) == "1"
    rejected = versions(uri)["2"]
    assert rejected.tags["checks_passed"] == "false"
    assert rejected.tags["check.holdout_total_purchases_error"] == "false"
    assert not rejected.aliases


def test_degenerate_challenger_is_rejected_by_the_gates_and_never_promoted(store):
    _, uri, common = store
    assert retrain(common).exit_code == 0
    rejected = retrain(common, *PENALIZED)
    assert rejected.exit_code == 4, rejected.output
    message = rejected.stderr.strip().splitlines()[-1]
    assert "holdout total purchases error +33" in message and "(gate ±30%)" in message
    assert champion(uri) == "1"
    version = versions(uri)["2"]
    assert version.tags["check.holdout_total_purchases_error"] == "false"
    assert "+33" in version.tags["check.holdout_total_purchases_error.why"]
    assert not version.aliases
    run = MlflowClient(uri).get_run(version.run_id)
    assert run.info.status == "FINISHED" and run.data.tags["clv.retrain.promoted"] == "false"


def test_clv_shift_against_the_champion_needs_accept_shift(store):
    _, uri, common = store
    assert retrain(common).exit_code == 0
    # A tenth of the margin: every CLV falls to about a tenth of the champion's on the same customers.
    shifted = retrain(common, "--set", "value.margin_rate=0.03")
    assert shifted.exit_code == 4, shifted.output
    assert "times the champion" not in shifted.stderr and "x the champion's" in shifted.stderr
    tags = versions(uri)["2"].tags
    assert tags["check.clv_total_vs_champion"] == "false"
    ratio = float(tags["check.clv_total_vs_champion.why"].split(" is ")[1].split("x")[0])
    assert ratio == pytest.approx(0.1, rel=0.01)
    accepted = retrain(common, "--set", "value.margin_rate=0.03", "--accept-shift")
    assert accepted.exit_code == 0, accepted.output
    assert "check.clv_total_vs_champion" not in versions(uri)["3"].tags
