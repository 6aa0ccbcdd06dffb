"""The champion's forecast against the log since its as-of date, checked by hand on the CDNOW sample.

The champion is trained as of 1998-03-31; the next retrain, as of 1998-06-30, compares what
it predicted for its customers over those 91 days with what they did. The reference figures are
computed here independently: features with lifetimes' own summary helper, predictions with
lifetimes' fitters at the champion's logged parameters, and purchases counted with pandas.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from lifetimes import BetaGeoFitter, GammaGammaFitter
from lifetimes.utils import summary_data_from_transaction_data
from mlflow import MlflowClient
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.stages import monitor
from tests.conftest import CONFIGS

# End to end (runs, Spark, notebooks or servers): `pytest -m "not slow"` skips them.
pytestmark = pytest.mark.slow

runner = CliRunner()
CHAMPION_AS_OF, AS_OF = pd.Timestamp("1998-03-31"), pd.Timestamp("1998-06-30")


@pytest.fixture(scope="module")
def monitored(tmp_path_factory):
    root = tmp_path_factory.mktemp("monitor")
    uri = f"sqlite:///{root}/mlflow.db"
    common = ["-q", "-c", str(CONFIGS / "cdnow_sample.yaml"), "--set", f"tracking.uri={uri}",
              "--set", f"output_dir={root / 'outputs'}", "--set", "models.purchase.candidates=[bgnbd]",
              "--set", "features.calibration_end=null", "--set", "features.holdout_periods=26"]
    first = runner.invoke(app, ["retrain", *common, "--as-of", "1998-03-31"])
    assert first.exit_code in (0, 4), first.output
    assert runner.invoke(app, ["promote", "1", *common[1:]]).exit_code == 0
    second = runner.invoke(app, ["retrain", *common, "--as-of", "1998-06-30"])
    assert second.exit_code in (0, 4), second.output
    run_dir = root / "outputs" / (root / "outputs" / "LATEST").read_text().strip()
    client = MlflowClient(uri)
    champion_run = client.get_run(client.get_model_version("clv", "1").run_id)
    retrain_run = client.get_run(client.get_model_version("clv", "2").run_id)
    return json.loads((run_dir / "monitor.json").read_text()), champion_run, retrain_run, run_dir, second


@pytest.fixture(scope="module")
def by_hand(monitored, cdnow_sample_transactions):
    _, champion_run, _, _, _ = monitored
    metrics = champion_run.data.metrics
    log = cdnow_sample_transactions
    before = log[log["date"] <= CHAMPION_AS_OF]
    features = summary_data_from_transaction_data(
        before, "customer_id", "date", monetary_value_col="amount", observation_period_end=CHAMPION_AS_OF,
        freq="D", freq_multiplier=7,
    )
    purchase = BetaGeoFitter()
    purchase.params_ = pd.Series({name: metrics[f"purchase.{name}"] for name in ("r", "alpha", "a", "b")})
    horizon = (AS_OF - CHAMPION_AS_OF).days / 7
    predicted = purchase.conditional_expected_number_of_purchases_up_to_time(
        horizon, features["frequency"], features["recency"], features["T"]
    )
    spend = GammaGammaFitter()
    spend.params_ = pd.Series({"p": metrics["spend.p"], "q": metrics["spend.q"], "v": metrics["spend.gamma"]})
    expected_spend = spend.conditional_expected_average_profit(features["frequency"], features["monetary_value"])
    after = log[(log["date"] > CHAMPION_AS_OF) & (log["date"] <= AS_OF) & log["customer_id"].isin(features.index)]
    # Purchases are counted once a day per customer (daily resolution), spend summed.
    purchases = after.groupby("customer_id")["date"].nunique().reindex(features.index, fill_value=0)
    alive = purchase.conditional_probability_alive(features["frequency"], features["recency"], features["T"]) >= 0.5
    return {
        "customers": len(features),
        "purchases_predicted": float(predicted.sum()),
        "purchases_actual": float(purchases.sum()),
        "revenue_predicted": float((predicted * expected_spend).sum()),
        "revenue_actual": float(after["amount"].sum()),
        "alive_share_bought": float((purchases[alive] > 0).mean()),
        "after": after,
    }


def test_totals_equal_a_hand_computation(monitored, by_hand):
    report = monitored[0]
    total = report["total"]
    assert report["champion_as_of"] == "1998-03-31" and report["as_of"] == "1998-06-30"
    assert total["customers"] == by_hand["customers"]
    assert total["purchases_actual"] == by_hand["purchases_actual"]
    assert total["revenue_actual"] == pytest.approx(by_hand["revenue_actual"], rel=1e-12)
    assert total["purchases_predicted"] == pytest.approx(by_hand["purchases_predicted"], rel=1e-9)
    assert total["revenue_predicted"] == pytest.approx(by_hand["revenue_predicted"], rel=1e-9)
    expected_error = 100 * (by_hand["purchases_predicted"] - by_hand["purchases_actual"]) / by_hand["purchases_actual"]
    assert total["purchases_error_pct"] == pytest.approx(expected_error, rel=1e-9)
    assert report["alive_share_bought"] == pytest.approx(by_hand["alive_share_bought"], rel=1e-12)


def test_tiers_and_deciles_add_up_to_the_total(monitored):
    report = monitored[0]
    for part in ("by_tier", "by_decile"):
        for key in ("customers", "purchases_predicted", "purchases_actual", "revenue_actual"):
            assert sum(group[key] for group in report[part].values()) == pytest.approx(report["total"][key], rel=1e-12)
    assert sorted(report["by_decile"], key=int) == [str(d) for d in range(1, 11)]
    assert list(report["by_tier"]) == ["high", "medium", "low"]  # the report's order, highest first
    # The top decile of predicted CLV buys more than the bottom one: the forecast ranks.
    assert report["by_decile"]["10"]["purchases_actual"] > report["by_decile"]["1"]["purchases_actual"]


def test_logged_as_metrics_and_a_plot(monitored, by_hand):
    report, _, retrain_run, run_dir, second = monitored
    metrics = retrain_run.data.metrics
    assert metrics["monitor.purchases_actual"] == by_hand["purchases_actual"]
    assert metrics["monitor.purchases_predicted"] == pytest.approx(by_hand["purchases_predicted"], rel=1e-9)
    assert "monitor.decile.10.purchases_actual" in metrics and "monitor.tier.high.purchases_actual" in metrics
    assert retrain_run.data.tags["clv.monitor.alert"] in ("true", "false")
    assert (run_dir / "plots" / "champion_forecast.png").stat().st_size > 10_000
    assert "forecast made 1998-03-31" in second.output


def test_cumulative_curve_ends_at_the_actual_total(monitored, by_hand):
    """The day-by-day curve of the plot: its actual line counts the same purchases as the total."""
    after = by_hand["after"]
    daily = after.drop_duplicates(["customer_id", "date"]).groupby("date").size()
    per_day = pd.DataFrame({"date": daily.index.date, "holdout_purchases": daily.to_numpy()})
    report = monitored[0]

    class Flat:  # a model that predicts one purchase per period for everyone, to check the axis
        def expected_purchases_by_horizon(self, unique, horizons):
            return np.tile(np.asarray(horizons, dtype=float), (len(unique), 1))

    histories = pd.DataFrame({"frequency": [0, 1], "recency": [0.0, 2.0], "T": [5.0, 5.0]})
    curve = monitor.cumulative_forecast_data(histories, Flat(), per_day, CHAMPION_AS_OF.date(), AS_OF.date(), 7.0)
    assert curve["actual_cumulative"].iloc[-1] == report["total"]["purchases_actual"]
    assert curve["predicted_cumulative"].iloc[-1] == pytest.approx(2 * 91 / 7)
    assert curve["actual_cumulative"].is_monotonic_increasing and len(curve) == 92


def test_alert_names_the_miss():
    report = {"total": {"purchases_error_pct": 45.0, "purchases_predicted": 145.0, "purchases_actual": 100.0,
                        "revenue_error_pct": -5.0, "revenue_predicted": 95.0, "revenue_actual": 100.0}}
    message = monitor.alert(report, 30.0)
    assert message.startswith("the champion's forecast missed by more than 30%: purchases +45.0%")
    assert "revenue" not in message
    assert monitor.alert(report, 50.0) is None and monitor.alert(report, None) is None
