"""value.horizon: lifetime, and the like-for-like comparisons every run prints (issue 19)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient
from typer.testing import CliRunner

from pipeline.cli import app
from tests.conftest import CONFIGS

pytestmark = pytest.mark.slow
runner = CliRunner()


def run(tmp_path, *overrides):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    common = ["-c", str(CONFIGS / "cdnow_sample.yaml"), "--set", f"output_dir={tmp_path / 'out'}",
              "--set", f"tracking.uri={uri}", "--set", "models.purchase.candidates=[bgnbd]"]
    result = runner.invoke(app, ["run", *common, *overrides])
    assert result.exit_code == 0, result.output + result.stderr
    run_dir = (tmp_path / "out" / (tmp_path / "out" / "LATEST").read_text().strip())
    return result, run_dir, uri


@pytest.mark.parametrize("horizon", ["12", "lifetime"])
def test_both_horizons_print_and_log_the_two_like_for_like_comparisons(tmp_path, horizon):
    result, run_dir, uri = run(tmp_path, "--set", f"value.horizon={horizon}")
    customers = pd.read_parquet(run_dir / "customers.parquet")
    chosen = "clv_lifetime" if horizon == "lifetime" else "clv_horizon"
    np.testing.assert_array_equal(customers["predicted_clv"], customers[chosen])
    # Every future purchase weighs at least as much as the next 52 weeks' (same discounting).
    assert (customers["dert"] >= customers["discounted_expected_purchases"] - 1e-12).all()
    assert (customers["clv_lifetime"] >= customers["clv_horizon"] - 1e-9).all()
    summary = json.loads((run_dir / "summary.json").read_text())
    comparisons = summary["value"]["like_for_like"]
    company = comparisons["company"]
    assert company["horizon"]["predicted_mean"] == pytest.approx(customers["clv_horizon"].mean())
    assert company["horizon"]["historical_mean"] == pytest.approx(customers["historical_clv_horizon"].mean())
    assert company["lifetime"]["predicted_mean"] == pytest.approx(
        customers["realised_margin"].mean() + customers["clv_lifetime"].mean())
    assert company["lifetime"]["historical_mean"] == pytest.approx(customers["historical_clv"].mean())
    assert list(comparisons["by_tier"]) == list(summary["value"]["tiers"])  # the tier table's order
    assert sum(tier["customers"] for tier in comparisons["by_tier"].values()) == len(customers)
    assert "like for like" in result.output and "realised + predicted lifetime" in result.output
    assert (run_dir / "plots" / "like_for_like.png").stat().st_size > 10_000
    metrics = next(found.data.metrics for found in MlflowClient(uri).search_runs(["1"])
                   if "clv.predicted_clv_mean" in found.data.metrics)  # the run, not a candidate's
    assert metrics["lfl.lifetime.predicted_mean"] == pytest.approx(company["lifetime"]["predicted_mean"])
    assert "lfl.tier.high.horizon.historical_mean" in metrics
    compared = runner.invoke(app, ["compare", "--set", f"tracking.uri={uri}", "-c", str(CONFIGS / "cdnow_sample.yaml")])
    assert compared.exit_code == 0, compared.stderr
    from pipeline import tracking
    from tests.conftest import sample_config

    row = tracking.compare_runs(sample_config(f"tracking.uri={uri}")).iloc[0]
    assert row["lifetime_predicted_mean"] == pytest.approx(company["lifetime"]["predicted_mean"])
    assert row["horizon_historical_mean"] == pytest.approx(company["horizon"]["historical_mean"])
