"""A candidate that cannot be fitted is skipped with its reason; only when all fail does the run stop."""

from __future__ import annotations

import json

import pytest
from mlflow import MlflowClient
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.duckdb_engine import features_from_config
from pipeline.errors import InputDataError
from pipeline.runner import run_backtest
from pipeline.stages.fit import CandidateFailedError, fit_models, fit_purchase_model, fit_stage
from tests.conftest import CONFIGS, sample_config

runner = CliRunner()
SAMPLE = str(CONFIGS / "cdnow_sample.yaml")


def test_iteration_limit_fails_each_model_with_one_line(cdnow_sample_calibration_features):
    settings = sample_config("models.purchase.max_iter=1").models
    # A fit stops at its iteration limit (as scikit-learn's do): the check at the result catches it.
    for name in ["bgnbd", "mbgnbd", "paretonbd"]:
        with pytest.raises(CandidateFailedError, match="likelihood is not flat") as caught:
            fit_purchase_model(name, cdnow_sample_calibration_features, settings)
        assert "\n" not in str(caught.value)


def test_fit_models_skips_the_failing_candidate(cdnow_sample_calibration_features):
    settings = sample_config("models.purchase.max_iter={mbgnbd: 1}").models
    fitted = fit_models(cdnow_sample_calibration_features, settings)
    assert list(fitted.purchase) == ["bgnbd", "paretonbd"]
    assert list(fitted.failed) == ["mbgnbd"] and "did not converge" in fitted.failed["mbgnbd"]
    # The others are the same fits as without the failing candidate.
    alone = fit_models(cdnow_sample_calibration_features, sample_config("models.purchase.candidates=[bgnbd]").models)
    assert fitted.purchase["bgnbd"].params_ == alone.purchase["bgnbd"].params_


def test_every_candidate_failing_is_one_line_listing_each_reason(cdnow_sample_calibration_features):
    settings = sample_config("models.purchase.max_iter=1", "models.purchase.candidates=[bgnbd, paretonbd]").models
    with pytest.raises(InputDataError) as caught:
        fit_models(cdnow_sample_calibration_features, settings)
    message = str(caught.value)
    assert message.startswith("features: every purchase model failed to fit (bgnbd: cannot fit BG/NBD: the optimiser")
    assert "; paretonbd: cannot fit Pareto/NBD: the optimiser stopped where the likelihood is not flat" in message
    assert "\n" not in message


def test_the_same_reason_for_every_candidate_is_said_once(cdnow_sample_calibration_features):
    """A problem of the data (or of a shared setting), not of one model."""
    settings = sample_config("models.purchase.candidates=[bgnbd, mbgnbd, paretonbd]").models
    # Everyone's first purchase on the last day of calibration: no time to learn rates from.
    ageless = cdnow_sample_calibration_features.assign(frequency=0, recency=0.0, T=0.0)
    with pytest.raises(InputDataError) as caught:
        fit_models(ageless, settings)
    assert str(caught.value) == (
        "features: no purchase model can be fitted (bgnbd, mbgnbd, paretonbd): column 'T': every row is 0, so there "
        "is no time to learn purchase rates from"
    )


def test_selected_model_failing_on_all_data_falls_back_to_the_next_best(tmp_path):
    config = sample_config()
    features = features_from_config(config)
    calibration = features.calibration_frame(indexed=False)
    backtest = run_backtest(calibration, config)
    metrics = backtest.metrics
    assert backtest.selected == "paretonbd"  # the published CDNOW sample result: Pareto/NBD wins its holdout
    # The same backtest, then the all-data fit of the winner limited to one iteration.
    limited = sample_config("models.purchase.max_iter={paretonbd: 1}")
    fit = fit_stage(features.features_frame(indexed=False), limited.models, backtest)
    ranked = sorted((name for name in metrics if name != "historical_baseline"),
                    key=lambda name: metrics[name]["purchases_rmse"])
    assert fit.selected == ranked[1]
    assert "paretonbd failed (all-data fit: cannot fit Pareto/NBD" in fit.selection_reason
    assert f"so {ranked[1]}, the next best, is used" in fit.selection_reason
    assert list(fit.failed_candidates) == ["paretonbd"]


def test_run_completes_on_the_other_candidates_and_says_which_was_skipped(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    common = ["-c", SAMPLE, "--set", f"tracking.uri={uri}", "--set", f"output_dir={tmp_path / 'outputs'}"]
    result = runner.invoke(app, ["run", "-q", *common, "--set", "models.purchase.max_iter={mbgnbd: 1}"])
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output
    assert "skipped candidates" in result.output and "mbgnbd: calibration fit: cannot fit MBG/NBD" in result.output
    summary = json.loads(next((tmp_path / "outputs").glob("*/summary.json")).read_text())
    assert list(summary["model"]["failed_candidates"]) == ["mbgnbd"]
    assert summary["model"]["selected_purchase_model"] in ("bgnbd", "paretonbd")
    assert set(summary["backtest"]) == {"bgnbd", "paretonbd", "historical_baseline"}
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("clv")
    runs = {r.data.tags.get("mlflow.runName"): r for r in client.search_runs([experiment.experiment_id])}
    assert runs["mbgnbd"].info.status == "FAILED"
    assert "did not converge" in runs["mbgnbd"].data.tags["clv.error"]
    assert runs["bgnbd"].info.status == "FINISHED"
    parent = next(r for r in runs.values() if r.data.tags.get("clv.run_kind") == "pipeline")
    assert parent.info.status == "FINISHED" and "mbgnbd" in parent.data.tags["clv.failed_candidates"]
    compared = runner.invoke(app, ["compare", *common])
    assert compared.exit_code == 0 and "mbgnbd" in compared.output


def test_run_with_every_candidate_failing_exits_2_and_leaves_no_finished_run(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    result = runner.invoke(app, [
        "run", "-q", "-c", SAMPLE, "--set", f"tracking.uri={uri}", "--set", f"output_dir={tmp_path / 'outputs'}",
        "--set", "models.purchase.max_iter=1",
    ])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "every purchase model failed to fit (bgnbd:" in lines[0]
    assert "mbgnbd:" in lines[0] and "paretonbd:" in lines[0]
    assert not any(p.is_dir() for p in (tmp_path / "outputs").iterdir())
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("clv")
    assert {r.info.status for r in client.search_runs([experiment.experiment_id])} == {"FAILED"}
