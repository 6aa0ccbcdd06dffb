"""The whole pipeline on the CDNOW sample, and each stage run alone from disk."""

from __future__ import annotations

import json

import joblib
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.runner import run_pipeline
from tests.conftest import CONFIGS, sample_config

runner = CliRunner()


@pytest.fixture(scope="module")
def sample_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("run")
    config = sample_config("models.purchase.candidates=[bgnbd, paretonbd]")
    return run_pipeline(config, run_dir), run_dir


def test_run_writes_every_output(sample_run):
    result, run_dir = sample_run
    for name in ["customers.parquet", "summary.json", "features.parquet", "calibration.parquet", "model/scorer.joblib"]:
        assert (run_dir / name).is_file(), name
    for plot in ["calibration_vs_holdout", "cumulative_tracking", "probability_alive_matrix", "clv_distribution", "clv_by_tier"]:
        assert (run_dir / "plots" / f"{plot}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert set(summary["backtest"]) == {"bgnbd", "paretonbd", "historical_baseline"}
    assert summary["model"]["selected_purchase_model"] in {"bgnbd", "paretonbd"}


def test_customer_rows_are_consistent(sample_run):
    result, run_dir = sample_run
    customers = pd.read_parquet(run_dir / "customers.parquet").set_index("customer_id")
    assert len(customers) == 2357
    np.testing.assert_allclose(customers["churn_probability"], 1 - customers["probability_alive"])
    assert customers["probability_no_purchases"].between(0, 1).all()
    # Margin 0.30 and no CAC in the sample config: CLV = 0.3 x discounted purchases x spend.
    np.testing.assert_allclose(
        customers["predicted_clv"],
        0.3 * customers["discounted_expected_purchases"] * customers["expected_spend"],
        rtol=1e-12,
    )
    # Discounting only lowers the horizon's expected purchases.
    assert (customers["discounted_expected_purchases"] <= customers["expected_purchases"] + 1e-12).all()
    assert set(customers["tier"]) == {"high", "medium", "low"}
    assert customers.groupby("tier")["predicted_clv"].min()["high"] >= customers.groupby("tier")["predicted_clv"].max()["medium"]


def test_summary_tiers_add_up(sample_run):
    result, _ = sample_run
    tiers = result.summary["value"]["tiers"]
    assert sum(t["n_customers"] for t in tiers.values()) == 2357
    assert sum(t["share_of_predicted_clv"] for t in tiers.values()) == pytest.approx(1.0)
    # Quantile cuts 0.8 / 0.5: the high tier is about a fifth of customers (ties at the cut go up).
    assert 0.15 < tiers["high"]["share_of_customers"] < 0.25


def test_pickled_scorer_reproduces_customers(sample_run):
    result, run_dir = sample_run
    scorer = joblib.load(run_dir / "model/scorer.joblib")
    features = pd.read_parquet(run_dir / "features.parquet").set_index("customer_id")
    customers = pd.read_parquet(run_dir / "customers.parquet").set_index("customer_id")
    rescored = scorer.score(features)
    pd.testing.assert_frame_equal(rescored, customers[rescored.columns])


def test_a_second_run_gives_identical_numbers(sample_run, tmp_path):
    _, run_dir = sample_run
    run_pipeline(sample_config("models.purchase.candidates=[bgnbd, paretonbd]"), tmp_path)
    first = pd.read_parquet(run_dir / "customers.parquet")
    second = pd.read_parquet(tmp_path / "customers.parquet")
    pd.testing.assert_frame_equal(first, second, check_exact=True)


def test_stages_alone_equal_the_whole_run(sample_run, tmp_path):
    _, run_dir = sample_run
    common = ["-c", str(CONFIGS / "cdnow_sample.yaml"), "--set", f"output_dir={tmp_path}",
              "--set", "models.purchase.candidates=[bgnbd, paretonbd]"]
    for command in ["features", "fit", "value", "report"]:
        result = runner.invoke(app, [command, *common])
        assert result.exit_code == 0, (command, result.output, result.stderr)
    stage_dir = next(p for p in tmp_path.iterdir() if p.is_dir())
    pd.testing.assert_frame_equal(
        pd.read_parquet(stage_dir / "customers.parquet"), pd.read_parquet(run_dir / "customers.parquet")
    )
    assert "Backtest on the holdout" in result.output


def test_calibration_file_is_the_calibration_features(sample_run):
    # The run writes the calibration split as it computes it; the file must be exactly the
    # table the features stage returns in memory.
    from pipeline.stages.features import features_from_config

    result, run_dir = sample_run
    expected = features_from_config(sample_config()).calibration
    assert pq.read_table(run_dir / "calibration.parquet").equals(expected)
    # Counted as the chunks were written, they are the in-memory table's counts.
    summary = json.loads((run_dir / "features_summary.json").read_text())
    repeaters = int((expected["frequency"].to_numpy() > 0).sum())
    assert (summary["calibration_customers"], summary["calibration_repeat_customers"]) == (expected.num_rows, repeaters)
    assert 0 < repeaters < expected.num_rows
    pd.testing.assert_frame_equal(result.calibration_frame(), expected.to_pandas(date_as_object=False))


def test_too_few_repeat_customers_is_a_clear_error(tmp_path):
    result = runner.invoke(
        app,
        ["run", "-c", str(CONFIGS / "cdnow_sample.yaml"), "--set", f"output_dir={tmp_path}",
         "--set", "models.spend.min_repeat_customers=5000", "--set", "models.purchase.candidates=[bgnbd]"],
    )
    assert result.exit_code == 2
    assert "cannot fit Gamma-Gamma" in result.stderr and "5000" in result.stderr
    assert "Traceback" not in result.stderr
    assert not any(tmp_path.iterdir())
