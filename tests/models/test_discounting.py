"""Discounting, predicted CLV, acquisition costs and margins.

References come from lifetimes (its own ``customer_lifetime_value``) or from
hand computations written out below.
"""

import warnings

import numpy as np
import pandas as pd
import pytest

from models import BetaGeoModel, GammaGammaModel
from models.discounting import (
    acquisition_cost_per_customer,
    customer_margin_rate,
    discount_rate_per_period,
    discounted_expected_purchases,
    expected_purchases_by_step,
    predicted_clv,
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
    import models.discounting

    features = cdnow_sample_calibration_features
    purchase = BetaGeoModel().fit(features)
    whole = discounted_expected_purchases(purchase, features, 52, 1.0, 0.002)
    monkeypatch.setattr(models.discounting, "UNIQUE_ROWS_PER_BLOCK", 7)
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

