"""Covariates end to end: run, score and compare on a simulated log with a channel effect, and
on the built-in CDNOW sample with a customer attribute file the test writes."""

from __future__ import annotations

import datetime as dt
import json

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from pipeline.cli import app
from tests.conftest import CONFIGS

runner = CliRunner()
START = dt.date(2024, 1, 1)
CALIBRATION_END = dt.date(2024, 12, 31)
OBSERVATION_END = dt.date(2025, 6, 30)
# BG/NBD with the purchase rate's scale alpha_i = alpha exp(-g x): web customers buy e^0.9 ≈ 2.5
# times as often as store customers (the reference, the commoner channel).
R, ALPHA, A, B = 0.8, 12.0, 0.6, 3.0
WEB_EFFECT = 0.9


def simulated_log(seed: int = 11, customers: int = 4000) -> pd.DataFrame:
    """Transactions of BG/NBD customers (daily, amounts Gamma-distributed) with a channel effect."""
    rng = np.random.default_rng(seed)
    web = rng.random(customers) < 0.35
    alpha = ALPHA * np.exp(-WEB_EFFECT * web)
    rate = rng.gamma(R, 1.0 / alpha)  # purchases per week
    dropout = rng.beta(A, B, customers)
    horizon_days = (OBSERVATION_END - START).days
    rows = []
    for customer in range(customers):
        first = int(rng.integers(0, 200))
        day, alive = float(first), True
        days = [first]
        while alive:
            day += rng.exponential(7.0 / rate[customer])
            if day > horizon_days:
                break
            days.append(int(day))
            alive = rng.random() >= dropout[customer]
        channel = "web" if web[customer] else "store"
        for when in days:
            rows.append((f"C{customer:05d}", START + dt.timedelta(days=when), round(float(rng.gamma(4.0, 6.0)), 2),
                         channel))
    return pd.DataFrame(rows, columns=["customer_id", "date", "amount", "channel"])


@pytest.fixture(scope="module")
def channel_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("covariates")
    log = root / "log.csv"
    simulated_log().to_csv(log, index=False)
    common = [
        "--set", f"input.path={log}", "--set", "input.format=csv", "--set", "input.date_format='%Y-%m-%d'", "--set", "input.header=true",
        "--set", "input.columns={customer_id: customer_id, date: date, amount: amount, channel: channel}",
        "--set", f"features.calibration_end={CALIBRATION_END}", "--set", f"features.observation_end={OBSERVATION_END}",
        "--set", "validation.max_staleness_days=null",
        "--set", f"tracking.uri=sqlite:///{root}/mlflow.db", "--set", f"output_dir={root / 'outputs'}",
        "-c", str(CONFIGS / "default.yaml"),
    ]
    result = runner.invoke(app, ["run", "-q", *common, "--set", "models.covariates=[first_channel]",
                                 "--set", "models.purchase.candidates=[bgnbd]",
                                 "--set", "value.acquisition_cost.per_channel={web: 1.0, store: 200.0}"])
    assert result.exit_code == 0, result.output + result.stderr
    run_dir = next(p for p in (root / "outputs").iterdir() if p.is_dir())
    return root, common, run_dir, result


def test_a_channel_effect_is_found_tested_and_selected(channel_run):
    _, _, run_dir, result = channel_run
    models = json.loads((run_dir / "model" / "models.json").read_text())
    calibration = models["calibration"]
    test = calibration["covariates"]["likelihood_ratio_tests"]["bgnbd"]
    assert test["df"] == 3 and test["p_value"] < 1e-6  # purchase + a + b coefficients of channel[web]
    coefficients = pd.DataFrame(calibration["purchase_models"]["bgnbd_cov"]["coefficients"])
    purchase = coefficients[(coefficients["process"] == "purchase") & (coefficients["covariate"] == "first_channel[web]")]
    estimate, error = float(purchase["coefficient"].iloc[0]), float(purchase["standard_error"].iloc[0])
    assert abs(estimate - WEB_EFFECT) < 3 * error
    assert models["selected_purchase_model"] == "bgnbd_cov"
    assert models["covariates"]["columns"] == ["first_channel"]
    # Each customer valued with their own parameters: web customers expect more purchases.
    customers = pd.read_parquet(run_dir / "customers.parquet")
    log = pd.read_csv(channel_run[0] / "log.csv").groupby("customer_id")["channel"].first()
    by_channel = customers.set_index("customer_id")["expected_purchases"].groupby(log).mean()
    assert by_channel["web"] > 1.5 * by_channel["store"]
    assert "likelihood-ratio test, bgnbd" in result.output and "first_channel[web]" in result.output
    covariates = json.loads((run_dir / "summary.json").read_text())["model"]["covariates"]
    assert covariates["used_by_selected_model"] and covariates["likelihood_ratio_tests"]["bgnbd"]["p_value"] < 1e-6


def test_scoring_and_compare_use_each_customers_covariates(channel_run, tmp_path):
    root, common, run_dir, _ = channel_run
    assert runner.invoke(app, ["promote", "1", *common]).exit_code == 0
    out = tmp_path / "scores.parquet"
    result = runner.invoke(app, ["score", "-q", *common, "--as-of", str(OBSERVATION_END), "--out", str(out)])
    assert result.exit_code == 0, result.stderr
    exported = pd.read_parquet(out).set_index("customer_id")
    customers = pd.read_parquet(run_dir / "customers.parquet").set_index("customer_id")
    np.testing.assert_allclose(exported.loc[customers.index, "predicted_clv"], customers["predicted_clv"], rtol=1e-9)
    compared = runner.invoke(app, ["compare", *common])
    assert compared.exit_code == 0, compared.stderr
    # The registered model takes the raw covariate and refuses a level it never saw.
    import mlflow.pyfunc

    mlflow.set_tracking_uri(f"sqlite:///{root}/mlflow.db")
    model = mlflow.pyfunc.load_model("models:/clv@champion")
    frame = pd.read_parquet(run_dir / "features.parquet").head(50)
    predicted = model.predict(frame)
    assert len(predicted) == 50 and np.isfinite(predicted["predicted_clv"]).all()
    with pytest.raises(Exception, match="first_channel"):
        model.predict(frame.assign(first_channel="fax"))


def test_builtin_data_with_a_customer_attribute_file(tmp_path):
    from pipeline.config import resolve_input_path

    sample = pd.read_csv(resolve_input_path("builtin:CDNOW_sample.txt"), sep=r"\s+", header=None)
    ids = np.unique(sample[0].to_numpy())
    rng = np.random.default_rng(5)
    attributes = pd.DataFrame({"id": ids, "segment": rng.choice(["a", "b", "c"], len(ids)),
                               "age": rng.normal(40, 10, len(ids)).round()})
    path = tmp_path / "customers.csv"
    attributes.to_csv(path, index=False)
    common = ["-c", str(CONFIGS / "cdnow_sample.yaml"), "--set", f"output_dir={tmp_path / 'out'}",
              "--set", f"tracking.uri=sqlite:///{tmp_path}/mlflow.db",
              "--set", f"input.customers={{path: {path}, customer_id: id, columns: [segment, age]}}",
              "--set", "models.purchase.candidates=[bgnbd]"]
    result = runner.invoke(app, ["run", "-q", *common, "--set", "models.covariates=[segment, age]"])
    assert result.exit_code == 0, result.output + result.stderr
    run_dir = next(p for p in (tmp_path / "out").iterdir() if p.is_dir())
    text = (run_dir / "model" / "models.json").read_text()
    assert "likelihood_ratio_tests" in text and "segment[" in text

    # Without a holdout the configured covariates are used; the registered model scores with
    # the attribute file of the config and asks for the attributes in its signature.
    no_holdout = ["--set", "features.calibration_end=null", "--set", "models.covariates=[segment, age]"]
    result = runner.invoke(app, ["run", "-q", *common, *no_holdout])
    assert result.exit_code == 0, result.output + result.stderr
    assert runner.invoke(app, ["promote", "2", *common]).exit_code == 0
    out = tmp_path / "scores.parquet"
    scored = runner.invoke(app, ["score", "-q", *common, "--as-of", "1998-06-30", "--out", str(out)])
    assert scored.exit_code == 0, scored.stderr
    exported = pd.read_parquet(out)
    assert len(exported) == 2357 and np.isfinite(exported["predicted_clv"]).all()
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    inputs = mlflow.models.get_model_info("models:/clv@champion").signature.inputs.input_names()
    assert {"segment", "age"} <= set(inputs)

    # A customer missing from the file: one line naming the file and a customer, exit 2, no run.
    attributes.iloc[1:].to_csv(path, index=False)
    before = sorted(p.name for p in (tmp_path / "out").iterdir())
    bad = runner.invoke(app, ["run", "-q", *common, "--set", "models.covariates=[segment]"])
    assert bad.exit_code == 2
    assert str(path) in bad.stderr and "have no row" in bad.stderr and "Traceback" not in bad.stderr
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == before


def test_a_covariate_champion_is_refitted_on_a_new_window_with_its_own_encoding(channel_run):
    # What clv retrain does with a champion: its models refitted on the challenger's window and
    # scored on its holdout. On the run's own window that is the run's own backtest figure.
    import joblib

    from pipeline.catalog import RunCatalog
    from pipeline.stages.fit import refitted_holdout_metric

    _, _, run_dir, _ = channel_run
    scorer = joblib.load(run_dir / "model" / "scorer.joblib")
    assert scorer.covariates == ("first_channel",) and scorer.design_columns == ["first_channel[web]"]
    calibration = RunCatalog(run_dir, run_dir).calibration(columns=None)
    metric = refitted_holdout_metric(scorer, calibration, "purchases_rmse")
    backtest = json.loads((run_dir / "backtest.json").read_text())
    assert metric == pytest.approx(backtest["bgnbd_cov"]["purchases_rmse"], rel=1e-6)


def test_a_new_customer_per_channel_against_its_acquisition_cost(channel_run):
    _, _, run_dir, result = channel_run
    new_customer = json.loads((run_dir / "summary.json").read_text())["value"]["new_customer"]
    groups = new_customer["groups"]
    assert set(groups) == {"all customers", "channel web", "channel store"}
    web, store = groups["channel web"], groups["channel store"]
    # The covariate model was selected: web newcomers buy more (e^0.9 in the rate), before any history.
    assert web["discounted_repeat_purchases"] > 1.5 * store["discounted_repeat_purchases"]
    assert web["acquisition_cost"] == 1.0 and store["acquisition_cost"] == 200.0
    assert web["ltv_to_cac"] == pytest.approx(web["ltv_lifetime"] / 1.0)
    assert web["ltv_lifetime"] == pytest.approx(
        web["first_purchase_margin"] + web["margin_per_repeat_purchase"] * web["discounted_repeat_purchases"])
    assert web["ltv_horizon"] < web["ltv_lifetime"]
    assert store["ltv_to_cac"] < 1 and store["payback_months"] == float("inf")
    assert web["payback_months"] < 12
    assert any(line.startswith("channel store: a new customer is worth") for line in new_customer["warnings"])
    assert "channel store: a new customer is worth" in result.output
