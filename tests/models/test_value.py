"""Discounting, predicted and historical CLV, acquisition costs and tiers.

References come from lifetimes (its own ``customer_lifetime_value``), from the
raw CDNOW log read with pandas, or from hand computations written out below.
"""

import warnings

import numpy as np
import pandas as pd
import pytest

from models import BetaGeoModel, GammaGammaModel
from models.value import (
    DEFAULT_TIERS,
    HistoricalCLV,
    acquisition_cost_per_customer,
    assign_tiers,
    customer_margin_rate,
    discount_rate_per_period,
    discounted_expected_purchases,
    expected_purchases_by_step,
    historical_clv,
    naive_holdout_forecast,
    predicted_clv,
    tier_summary,
    tier_thresholds,
)

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from lifetimes import BetaGeoFitter, GammaGammaFitter
    from lifetimes.utils import _customer_lifetime_value

# lifetimes' month for freq='W' in customer_lifetime_value.
LIFETIMES_WEEKS_PER_MONTH = 4.345


# --- discounting -----------------------------------------------------------


def test_discount_rate_per_period_compounds_to_the_annual_rate():
    weekly = discount_rate_per_period(0.10, 7)
    assert (1 + weekly) ** (365.25 / 7) == pytest.approx(1.10, rel=1e-12)
    # The textbook monthly equivalent of 10 % a year: 1.1 ** (1 / 12) - 1.
    assert discount_rate_per_period(0.10, 365.25 / 12) == pytest.approx(0.00797414042890376, rel=1e-12)
    assert discount_rate_per_period(0.0, 7) == 0.0


@pytest.mark.parametrize(
    ("annual", "days", "message"),
    [(-1.0, 7, "above -1"), (0.1, 0, "positive"), (float("nan"), 7, "finite")],
)
def test_discount_rate_per_period_rejects_impossible_rates(annual, days, message):
    with pytest.raises(ValueError, match=message):
        discount_rate_per_period(annual, days)


# --- predicted CLV against lifetimes ----------------------------------------


class LifetimesPurchaseModel:
    """lifetimes' own BG/NBD prediction behind the ``expected_purchases`` interface."""

    def __init__(self, fitter):
        self.fitter = fitter
        self.rows_seen = []

    def expected_purchases(self, features, horizon):
        self.rows_seen.append(len(features))
        return pd.Series(
            self.fitter.conditional_expected_number_of_purchases_up_to_time(
                horizon, features["frequency"], features["recency"], features["T"]
            ).to_numpy(),
            index=features.index,
        )


@pytest.fixture(scope="module")
def lifetimes_reference(cdnow_sample_calibration_features):
    """BG/NBD and Gamma-Gamma fitted by lifetimes, and lifetimes' 12-month CLV."""
    features = cdnow_sample_calibration_features
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        purchase = BetaGeoFitter().fit(features["frequency"], features["recency"], features["T"])
        # lifetimes' Gamma-Gamma needs repeat customers with positive spend.
        repeat = features[(features["frequency"] > 0) & (features["monetary_value"] > 0)]
        spend = GammaGammaFitter().fit(repeat["frequency"], repeat["monetary_value"])
        clv = spend.customer_lifetime_value(
            purchase,
            features["frequency"],
            features["recency"],
            features["T"],
            features["monetary_value"],
            time=12,
            discount_rate=0.01,
            freq="W",
        )
        expected_spend = spend.conditional_expected_average_profit(
            features["frequency"], features["monetary_value"]
        )
    # lifetimes returns its CLV in the row order of its inputs; pin the ids.
    clv = pd.Series(clv.to_numpy(), index=features.index)
    return {"purchase": purchase, "expected_spend": expected_spend, "clv": clv}


def _with_params(params):
    model = BetaGeoModel()
    model.params_ = dict(params)
    return model


@pytest.mark.parametrize("source", ["lifetimes_fitter", "BetaGeoModel"])
def test_predicted_clv_matches_lifetimes_customer_lifetime_value(
    cdnow_sample_calibration_features, lifetimes_reference, source
):
    features = cdnow_sample_calibration_features
    fitter = lifetimes_reference["purchase"]
    model = LifetimesPurchaseModel(fitter) if source == "lifetimes_fitter" else _with_params(fitter.params_)
    # Shuffled rows and a spend Series in another order: the result must
    # follow the customer ids, not positions.
    shuffled = features.sample(frac=1.0, random_state=1)
    discounted = discounted_expected_purchases(
        model, shuffled, n_steps=12, step_periods=LIFETIMES_WEEKS_PER_MONTH, discount_rate_per_step=0.01
    )
    clv = predicted_clv(discounted, lifetimes_reference["expected_spend"])
    assert clv.index.equals(shuffled.index)
    expected = lifetimes_reference["clv"].reindex(shuffled.index)
    np.testing.assert_allclose(clv.to_numpy(), expected.to_numpy(), rtol=1e-6)
    assert clv.sum() == pytest.approx(expected.sum(), rel=1e-9)


def test_predicted_clv_applies_margin_and_acquisition_cost_to_lifetimes_clv(
    cdnow_sample_calibration_features, lifetimes_reference
):
    features = cdnow_sample_calibration_features
    model = _with_params(lifetimes_reference["purchase"].params_)
    discounted = discounted_expected_purchases(model, features, 12, LIFETIMES_WEEKS_PER_MONTH, 0.01)
    acquisition = pd.Series(np.where(features["frequency"] > 0, 5.0, 2.0), index=features.index)
    clv = predicted_clv(
        discounted, lifetimes_reference["expected_spend"], margin_rate=0.3, acquisition_cost=acquisition
    )
    expected = 0.3 * lifetimes_reference["clv"] - acquisition
    np.testing.assert_allclose(clv.to_numpy(), expected.to_numpy(), rtol=1e-6, atol=1e-9)


def test_predicted_clv_with_the_projects_own_fitted_models(cdnow_sample_calibration_features):
    # Our BG/NBD and Gamma-Gamma fits, valued by lifetimes' discounting loop
    # (the function behind GammaGammaFitter.customer_lifetime_value) fed with
    # the same parameters and our expected spend.
    features = cdnow_sample_calibration_features
    purchase = BetaGeoModel().fit(features)
    spend = GammaGammaModel().fit(features)
    expected_spend = spend.expected_spend(features)
    fitter = BetaGeoFitter()
    fitter.params_ = pd.Series(purchase.params_)
    # lifetimes assigns predict inside fit; an unfitted fitter lacks it.
    fitter.predict = fitter.conditional_expected_number_of_purchases_up_to_time
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = _customer_lifetime_value(
            fitter,
            features["frequency"],
            features["recency"],
            features["T"],
            expected_spend,
            time=12,
            discount_rate=0.01,
            freq="W",
        )
    discounted = discounted_expected_purchases(purchase, features, 12, LIFETIMES_WEEKS_PER_MONTH, 0.01)
    clv = predicted_clv(discounted, expected_spend)
    np.testing.assert_allclose(clv.to_numpy(), expected.reindex(features.index).to_numpy(), rtol=1e-6)


def test_discounting_in_blocks_of_histories_changes_no_bit(cdnow_sample_calibration_features, monkeypatch):
    # The unique histories are valued a block at a time to bound memory; every customer
    # must get the same bits whatever the block size.
    import models.value

    features = cdnow_sample_calibration_features
    purchase = BetaGeoModel().fit(features)
    whole = discounted_expected_purchases(purchase, features, 52, 1.0, 0.002)
    monkeypatch.setattr(models.value, "UNIQUE_ROWS_PER_BLOCK", 7)
    in_blocks = discounted_expected_purchases(purchase, features, 52, 1.0, 0.002)
    assert len(features) > 7 * 10 and np.array_equal(whole.to_numpy(), in_blocks.to_numpy())
    assert whole.index.equals(features.index)


def test_purchases_by_step_add_up_to_the_cumulative_expectation(
    cdnow_sample_calibration_features, lifetimes_reference
):
    features = cdnow_sample_calibration_features
    model = LifetimesPurchaseModel(lifetimes_reference["purchase"])
    by_step = expected_purchases_by_step(model, features, n_steps=3, step_periods=13.0)
    assert by_step.shape == (len(features), 3)
    assert list(by_step.columns) == [1, 2, 3]
    assert by_step.index.equals(features.index)
    # The model saw each distinct (frequency, recency, T) once per horizon.
    n_unique = len(features[["frequency", "recency", "T"]].drop_duplicates())
    assert n_unique < len(features)
    assert model.rows_seen == [n_unique] * 3
    fitter = lifetimes_reference["purchase"]
    cumulative = fitter.conditional_expected_number_of_purchases_up_to_time(
        39.0, features["frequency"], features["recency"], features["T"]
    )
    np.testing.assert_allclose(by_step.sum(axis=1).to_numpy(), cumulative.to_numpy(), rtol=1e-9)
    first = fitter.conditional_expected_number_of_purchases_up_to_time(
        13.0, features["frequency"], features["recency"], features["T"]
    )
    np.testing.assert_allclose(by_step[1].to_numpy(), first.to_numpy(), rtol=1e-12)


# --- predicted CLV by hand ---------------------------------------------------


class SaturatingPurchaseModel:
    """Cumulative expected purchases a * t / (1 + t), with a = frequency + 1.

    A stand-in with a known closed form: steps of one period give a / 2 in
    the first and a * (2/3 - 1/2) = a / 6 in the second.
    """

    def expected_purchases(self, features, horizon):
        return (features["frequency"] + 1.0) * horizon / (1.0 + horizon)


@pytest.fixture
def two_customers():
    return pd.DataFrame(
        {"frequency": [2, 0, 2], "recency": [5.0, 0.0, 5.0], "T": [10.0, 4.0, 10.0]},
        index=pd.Index(["b", "a", "c"], name="customer_id"),
    )


def test_two_period_example_by_hand(two_customers):
    by_step = expected_purchases_by_step(SaturatingPurchaseModel(), two_customers, n_steps=2, step_periods=1.0)
    np.testing.assert_allclose(by_step.loc["b"].to_numpy(), [1.5, 0.5])
    np.testing.assert_allclose(by_step.loc["a"].to_numpy(), [0.5, 1 / 6])

    discounted = discounted_expected_purchases(
        SaturatingPurchaseModel(), two_customers, n_steps=2, step_periods=1.0, discount_rate_per_step=0.1
    )
    # b: 1.5 / 1.1 + 0.5 / 1.21 = 1.363636... + 0.413223... ; a: a third of it.
    assert discounted["b"] == pytest.approx(1.7768595041322315, rel=1e-12)
    assert discounted["a"] == pytest.approx(1.7768595041322315 / 3, rel=1e-12)
    assert discounted["c"] == discounted["b"]

    spend = pd.Series({"a": 20.0, "b": 10.0, "c": 10.0})
    cost = pd.Series({"a": 1.0, "b": 2.0, "c": 0.0})
    clv = predicted_clv(discounted, spend, margin_rate=0.3, acquisition_cost=cost)
    assert list(clv.index) == ["b", "a", "c"]
    # b: 1.7768595 * 10 * 0.3 - 2 ; a: 0.5922865 * 20 * 0.3 - 1 ; c: no CAC.
    assert clv["b"] == pytest.approx(5.3305785123966945 - 2.0, rel=1e-12)
    assert clv["a"] == pytest.approx(3.553719008264463 - 1.0, rel=1e-12)
    assert clv["c"] == pytest.approx(5.3305785123966945, rel=1e-12)


def test_per_customer_margin_scales_each_customer(two_customers):
    discounted = pd.Series([2.0, 1.0, 4.0], index=two_customers.index)
    spend = pd.Series(10.0, index=two_customers.index)
    margin = pd.Series({"a": 0.5, "b": 0.2, "c": 1.0})
    clv = predicted_clv(discounted, spend, margin_rate=margin, acquisition_cost=3.0)
    assert clv.to_dict() == pytest.approx({"b": 2 * 10 * 0.2 - 3, "a": 1 * 10 * 0.5 - 3, "c": 4 * 10 * 1.0 - 3})


def test_predicted_clv_refuses_spend_that_misses_customers(two_customers):
    discounted = pd.Series([2.0, 1.0, 4.0], index=two_customers.index)
    with pytest.raises(ValueError, match="expected_spend: no value for 1 of 3 customers"):
        predicted_clv(discounted, pd.Series({"a": 1.0, "b": 2.0}))
    with pytest.raises(ValueError, match="margin_rate: 1 row NaN"):
        predicted_clv(
            discounted,
            pd.Series(1.0, index=two_customers.index),
            margin_rate=pd.Series({"a": 1.0, "b": np.nan, "c": 1.0}),
        )


def test_step_arguments_are_checked(two_customers):
    with pytest.raises(ValueError, match="n_steps"):
        expected_purchases_by_step(SaturatingPurchaseModel(), two_customers, n_steps=0, step_periods=1.0)
    with pytest.raises(ValueError, match="step_periods"):
        expected_purchases_by_step(SaturatingPurchaseModel(), two_customers, n_steps=2, step_periods=0.0)
    with pytest.raises(ValueError, match="discount_rate_per_step"):
        discounted_expected_purchases(SaturatingPurchaseModel(), two_customers, 2, 1.0, -1.0)


# --- acquisition cost and margin ---------------------------------------------


def test_acquisition_cost_sources():
    index = pd.Index(["a", "b", "c"])
    assert acquisition_cost_per_customer(index).tolist() == [0.0, 0.0, 0.0]
    assert acquisition_cost_per_customer(index, constant=12.5).tolist() == [12.5, 12.5, 12.5]
    channel = pd.Series({"c": "search", "a": "social", "b": "search"})
    by_channel = acquisition_cost_per_customer(index, per_channel={"search": 30.0, "social": 8.0}, channel=channel)
    assert by_channel.to_dict() == {"a": 8.0, "b": 30.0, "c": 30.0}
    column = pd.Series({"b": 4.0, "a": 1.0, "c": 0.0})
    assert acquisition_cost_per_customer(index, column=column).tolist() == [1.0, 4.0, 0.0]


def test_acquisition_cost_names_unknown_channels():
    index = pd.Index(["a", "b", "c", "d"])
    channel = pd.Series({"a": "search", "b": "tv", "c": "radio", "d": "tv"})
    with pytest.raises(ValueError, match=r"no acquisition cost for channel\(s\) 'radio', 'tv'"):
        acquisition_cost_per_customer(index, per_channel={"search": 30.0}, channel=channel)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"constant": 1.0, "column": pd.Series({"a": 1.0})}, "one source"),
        ({"per_channel": {"x": 1.0}}, "needs channel"),
        ({"channel": pd.Series({"a": "x"})}, "only used with per_channel"),
        ({"column": pd.Series({"b": 1.0})}, "no value for 1 of 1 customers"),
        ({"constant": -1.0}, "negative"),
    ],
)
def test_acquisition_cost_rejects_bad_arguments(arguments, message):
    with pytest.raises(ValueError, match=message):
        acquisition_cost_per_customer(pd.Index(["a"]), **arguments)


def test_customer_margin_rate_uses_default_without_revenue():
    amount = pd.Series({"a": 100.0, "b": 0.0, "c": 50.0})
    margin = pd.Series({"c": 5.0, "a": 40.0, "b": 0.0})
    rate = customer_margin_rate(margin, amount, default_rate=0.25)
    assert rate.to_dict() == pytest.approx({"a": 0.4, "b": 0.25, "c": 0.1})


# --- historical CLV ------------------------------------------------------------


@pytest.fixture
def small_log_features():
    """Four customers in weeks; ages in days are 7 x weeks.

    a: purchases on days 0 and 70 (3 transactions, $90), observed 700 days:
       inactive 630 days, churned, active 70 days.
    b: one purchase ($20), observed 350 days: churned, active 0 days.
    c: purchases from day 0 to 630 (6 transactions, $300), observed 700 days:
       inactive 70 days, active, active 700 days.
    d: one purchase ($50), observed 70 days: active, active 70 days.
    Totals: $460, 11 purchases, 840 active days, 2 churn events.
    """
    return pd.DataFrame(
        {
            "frequency": [2, 0, 5, 0],
            "recency": [10.0, 0.0, 90.0, 0.0],
            "T": [100.0, 50.0, 100.0, 10.0],
            "n_transactions": [3, 1, 6, 1],
            "total_amount": [90.0, 20.0, 300.0, 50.0],
        },
        index=pd.Index(["a", "b", "c", "d"], name="customer_id"),
    )


def test_historical_clv_by_hand(small_log_features):
    result = historical_clv(small_log_features, days_per_period=7.0, churn_inactivity_days=180)
    assert isinstance(result, HistoricalCLV)
    years = 840 / 365.25
    assert result.n_customers == 4
    assert result.churn_events == 2
    assert result.customer_years == pytest.approx(years)
    assert result.average_purchase_value == pytest.approx(460 / 11)
    assert result.purchases_per_year == pytest.approx(11 / years)
    assert result.churn_rate_annual == pytest.approx(2 / years)
    assert result.lifespan_years == pytest.approx(420 / 365.25)
    # 460/11 x 11/years x years/2: revenue per churn event.
    assert result.clv == pytest.approx(230.0)
    assert "1 / annual churn rate" in result.method

    lifespan = 420 / 365.25
    # a and b have under a year of active time (floored to a year); c has
    # 700 days: 6 purchases / (700 / 365.25) a year at $50.
    expected = {
        "a": 30 * 3 * lifespan,
        "b": 20 * 1 * lifespan,
        "c": 50 * 6 / (700 / 365.25) * lifespan,
        "d": 50 * 1 * lifespan,
    }
    assert result.per_customer.to_dict() == pytest.approx(expected)
    assert result.per_customer["c"] == pytest.approx(180.0)


def test_historical_clv_margin_and_acquisition_cost(small_log_features):
    margin = pd.Series({"a": 0.5, "b": 0.5, "c": 0.2, "d": 1.0})
    cost = pd.Series({"a": 10.0, "b": 10.0, "c": 30.0, "d": 2.0})
    result = historical_clv(small_log_features, 7.0, margin_rate=margin, acquisition_cost=cost)
    # Revenue-weighted margin: (45 + 10 + 60 + 50) / 460; mean CAC 13.
    assert result.margin_rate == pytest.approx(165 / 460)
    assert result.acquisition_cost == pytest.approx(13.0)
    assert result.clv == pytest.approx(230 * 165 / 460 - 13)
    assert result.per_customer["c"] == pytest.approx(180 * 0.2 - 30)

    scalar = historical_clv(small_log_features, 7.0, margin_rate=0.4, acquisition_cost=5.0)
    assert scalar.clv == pytest.approx(230 * 0.4 - 5)


def test_historical_clv_churn_threshold_is_strict():
    # Daily resolution: ages are days / 7. Inactive exactly 180 days is not
    # churn, even where (295 / 7 - 115 / 7) * 7 comes out a hair above 180.
    features = pd.DataFrame(
        {
            "frequency": [1, 1, 1],
            "recency": [10 / 7, 115 / 7, 10 / 7],
            "T": [190 / 7, 295 / 7, 191 / 7],
            "n_transactions": [2, 2, 2],
            "total_amount": [10.0, 10.0, 10.0],
        },
        index=["at_threshold", "at_threshold_inexact", "past_threshold"],
    )
    result = historical_clv(features, 7.0, churn_inactivity_days=180)
    assert result.churn_events == 1
    assert result.customer_years == pytest.approx((190 + 295 + 10) / 365.25)


def test_historical_clv_needs_churn_or_a_given_lifespan(small_log_features):
    with pytest.raises(ValueError, match="no customer was inactive for more than 1000 days"):
        historical_clv(small_log_features, 7.0, churn_inactivity_days=1000)
    given = historical_clv(small_log_features, 7.0, churn_inactivity_days=1000, lifespan_years=2.0)
    assert given.lifespan_years == 2.0
    assert np.isnan(given.churn_rate_annual)
    # Nobody churned, so everyone is active to the end: 700 + 350 + 700 + 70 days.
    assert given.clv == pytest.approx(460 / (1820 / 365.25) * 2.0)


def test_historical_clv_on_cdnow_matches_the_raw_log(cdnow_sample_full_features, cdnow_sample_transactions):
    # Recomputed from the transaction rows with pandas dates, not from features.
    log = cdnow_sample_transactions
    observation_end = pd.Timestamp("1998-06-30")
    assert log["date"].max() == observation_end
    per_customer = log.groupby("customer_id").agg(
        first=("date", "min"), last=("date", "max"), purchases=("date", "size"), revenue=("amount", "sum")
    )
    churned = (observation_end - per_customer["last"]).dt.days > 180
    active_days = np.where(
        churned,
        (per_customer["last"] - per_customer["first"]).dt.days,
        (observation_end - per_customer["first"]).dt.days,
    )
    years = active_days.sum() / 365.25
    expected_clv = (
        per_customer["revenue"].sum() / per_customer["purchases"].sum()
        * per_customer["purchases"].sum() / years
        * years / churned.sum()
    )

    result = historical_clv(cdnow_sample_full_features, days_per_period=7.0, churn_inactivity_days=180)
    assert result.churn_events == churned.sum()
    assert result.customer_years == pytest.approx(years, rel=1e-12)
    assert result.lifespan_years == pytest.approx(years / churned.sum(), rel=1e-12)
    assert result.clv == pytest.approx(expected_clv, rel=1e-12)

    floored_years = np.maximum(active_days / 365.25, 1.0)
    expected_per_customer = per_customer["revenue"] / floored_years * result.lifespan_years
    np.testing.assert_allclose(
        result.per_customer.to_numpy(), expected_per_customer.reindex(result.per_customer.index).to_numpy(), rtol=1e-9
    )


def test_naive_holdout_forecast_by_hand():
    features = pd.DataFrame(
        {
            "frequency": [2, 0, 1],
            "recency": [15.0, 0.0, 0.5],
            "T": [20.0, 30.0, 0.5],
            "total_amount": [90.0, 40.0, 10.0],
        },
        index=["steady", "once", "new"],
    )
    forecast = naive_holdout_forecast(features, holdout_periods=39.0, min_exposure_periods=1.0)
    # steady: 2 repeat purchases in 20 periods over 39, at 90 / 3 each.
    assert forecast.loc["steady"].tolist() == pytest.approx([3.9, 117.0])
    assert forecast.loc["once"].tolist() == [0.0, 0.0]
    # new: half a period old, so the rate is measured over the one-period floor.
    assert forecast.loc["new"].tolist() == pytest.approx([39.0, 195.0])

    per_customer = naive_holdout_forecast(features, pd.Series({"new": 1.0, "once": 5.0, "steady": 10.0}))
    assert per_customer.loc["steady", "predicted_purchases"] == pytest.approx(1.0)


# --- tiers ---------------------------------------------------------------------


@pytest.fixture
def ten_customers():
    return pd.Series(np.arange(1.0, 11.0), index=[f"c{i}" for i in range(1, 11)], name="clv")


def test_quantile_tiers_by_hand(ten_customers):
    # Linear quantiles of 1..10: 0.8 -> 8.2, 0.5 -> 5.5, 0 -> 1.
    assert tier_thresholds(ten_customers).to_dict() == pytest.approx({"high": 8.2, "medium": 5.5, "low": 1.0})
    tiers = assign_tiers(ten_customers)
    assert tiers.index.equals(ten_customers.index)
    assert tiers["tier"].tolist() == ["low"] * 5 + ["medium"] * 3 + ["high"] * 2
    assert tiers["tier"].cat.ordered and list(tiers["tier"].cat.categories) == ["low", "medium", "high"]
    assert tiers.loc["c10", "action"] == DEFAULT_TIERS[0].action
    assert "loyalty" in DEFAULT_TIERS[0].action and "nurture" in DEFAULT_TIERS[-1].action


def test_absolute_tiers_put_a_value_at_a_bound_in_the_tier_above(ten_customers):
    tiers = [("gold", 8.0, "call"), ("silver", 3.0, "mail"), ("rest", -np.inf, "nothing")]
    assigned = assign_tiers(ten_customers, tiers, method="absolute")
    assert assigned["tier"].tolist() == ["rest"] * 2 + ["silver"] * 5 + ["gold"] * 3
    assert assigned.loc["c8", "action"] == "call"


@pytest.mark.parametrize(
    ("tiers", "method", "message"),
    [
        ([("high", 0.5, ""), ("low", 0.8, "")], "quantile", "must decrease.*'low' \\(0.8\\) is not below 'high'"),
        ([("high", 0.8, ""), ("low", 0.1, "")], "quantile", "lowest tier 'low' must have quantile cut 0"),
        ([("high", 0.8, ""), ("high", 0.0, "")], "quantile", "repeated: 'high'"),
        ([("high", 1.5, ""), ("low", 0.0, "")], "quantile", r"\[0, 1\].*'high'"),
        ([("high", 8.0, ""), ("low", 2.0, "")], "absolute", "'low' starts at 2, above the lowest CLV 1"),
        ([("high", 8.0, "")], "median", "method must be one of"),
        ([], "quantile", "non-empty"),
    ],
)
def test_bad_tiers_are_named(ten_customers, tiers, method, message):
    with pytest.raises(ValueError, match=message):
        assign_tiers(ten_customers, tiers, method=method)


def test_tier_summary_by_hand(ten_customers):
    tiers = assign_tiers(ten_customers)
    historical = ten_customers * 2
    summary = tier_summary(ten_customers, tiers, historical=historical)
    assert list(summary.index) == ["high", "medium", "low"]
    assert summary["n_customers"].tolist() == [2, 3, 5]
    assert summary["share_of_customers"].tolist() == pytest.approx([0.2, 0.3, 0.5])
    # high: 9 + 10; medium: 6 + 7 + 8; low: 1..5; total 55.
    assert summary["total_predicted_clv"].tolist() == pytest.approx([19.0, 21.0, 15.0])
    assert summary["mean_predicted_clv"].tolist() == pytest.approx([9.5, 7.0, 3.0])
    assert summary["share_of_predicted_clv"].tolist() == pytest.approx([19 / 55, 21 / 55, 15 / 55])
    assert summary["mean_historical_clv"].tolist() == pytest.approx([19.0, 14.0, 6.0])
    assert summary.loc["low", "action"] == DEFAULT_TIERS[-1].action

    # A frame that lost its attrs (e.g. read back from Parquet) still names the actions.
    tiers.attrs = {}
    assert tier_summary(ten_customers, tiers)["action"].tolist() == [tier.action for tier in DEFAULT_TIERS]


def test_tier_summary_keeps_empty_tiers(ten_customers):
    tiers = [("top", 100.0, "call"), ("rest", -np.inf, "nothing")]
    summary = tier_summary(ten_customers, assign_tiers(ten_customers, tiers, method="absolute"))
    assert summary.loc["top", "n_customers"] == 0
    assert summary.loc["top", "action"] == "call"
    assert "mean_historical_clv" not in summary.columns
