"""Historical CLV of the business formula and the naive holdout baseline.

References come from the raw CDNOW log read with pandas, or from hand
computations written out below.
"""

import numpy as np
import pandas as pd
import pytest

from models.historical import (
    CompanyHistoricalCLV,
    HistoricalCLV,
    HistoricalTotals,
    historical_clv,
    historical_clv_from_totals,
    historical_totals,
    naive_holdout_forecast,
)


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
    # The chance of at least one purchase is a Poisson process's at that expected count.
    assert forecast.loc["steady"].tolist() == pytest.approx([3.9, 117.0, 1 - np.exp(-3.9)])
    assert forecast.loc["once"].tolist() == [0.0, 0.0, 0.0]
    # new: half a period old, so the rate is measured over the one-period floor.
    assert forecast.loc["new"].tolist() == pytest.approx([39.0, 195.0, 1 - np.exp(-39.0)])

    per_customer = naive_holdout_forecast(features, pd.Series({"new": 1.0, "once": 5.0, "steady": 10.0}))
    assert per_customer.loc["steady", "predicted_purchases"] == pytest.approx(1.0)


# --- totals that merge across batches (what a cluster sends the driver) -----------------

COMPANY_FIELDS = [
    "n_customers", "average_purchase_value", "purchases_per_year", "lifespan_years", "churn_rate_annual",
    "churn_events", "customer_years", "margin_rate", "acquisition_cost", "clv",
]


def random_batches(features, n_batches, seed):
    labels = np.random.default_rng(seed).integers(0, n_batches, len(features))
    return [features[labels == label] for label in range(n_batches)]


def assert_same_company_figures(got, expected, rel):
    for field in COMPANY_FIELDS:
        value, reference = getattr(got, field), getattr(expected, field)
        if isinstance(reference, float) and np.isnan(reference):
            assert np.isnan(value), field
        else:
            assert value == pytest.approx(reference, rel=rel, abs=0), field


@pytest.mark.parametrize(
    "settings",
    [
        {},
        {"churn_inactivity_days": 90.0, "margin_rate": 0.3, "acquisition_cost": 12.5},
        {"margin_rate": "per customer", "acquisition_cost": "per customer"},
    ],
)
def test_totals_of_random_batches_add_up_to_the_whole(cdnow_sample_full_features, settings):
    features = cdnow_sample_full_features
    rng = np.random.default_rng(3)
    settings = {
        name: pd.Series(rng.uniform(0.05, 0.6, len(features)), index=features.index)
        if value == "per customer" else value
        for name, value in settings.items()
    }
    whole = historical_clv(features, 7.0, **settings)
    batches = random_batches(features, 5, seed=29)
    assert min(len(batch) for batch in batches) > 0 and sum(len(batch) for batch in batches) == len(features)
    totals = sum(historical_totals(batch, 7.0, **settings) for batch in batches)
    assert isinstance(totals, HistoricalTotals)
    company = historical_clv_from_totals(totals)
    assert isinstance(company, CompanyHistoricalCLV) and not hasattr(company, "per_customer")
    assert_same_company_figures(company, whole, rel=1e-12)
    assert company.churn_events == whole.churn_events and company.n_customers == len(features)
    assert whole.method.startswith(company.method) and "per customer" not in company.method
    # The whole table's totals give its figures bit for bit: historical_clv goes through them.
    assert_same_company_figures(historical_clv_from_totals(historical_totals(features, 7.0, **settings)), whole, rel=0)


def test_per_customer_values_do_not_depend_on_the_batch(cdnow_sample_full_features):
    features = cdnow_sample_full_features
    margin = pd.Series(np.linspace(0.2, 0.4, len(features)), index=features.index)
    batches = random_batches(features, 5, seed=31)
    company = historical_clv_from_totals(sum(historical_totals(batch, 7.0, margin_rate=margin) for batch in batches))
    whole = historical_clv(features, 7.0, margin_rate=margin, lifespan_years=company.lifespan_years)
    # The lifespan the cluster's totals give is the one the whole table estimates.
    assert company.lifespan_years == pytest.approx(historical_clv(features, 7.0).lifespan_years, rel=1e-12)
    for batch in batches:
        per_batch = historical_clv(batch, 7.0, margin_rate=margin, lifespan_years=company.lifespan_years)
        pd.testing.assert_series_equal(per_batch.per_customer, whole.per_customer.loc[batch.index], check_exact=True)


def test_totals_by_hand_and_their_edges(small_log_features):
    totals = historical_totals(small_log_features, 7.0, churn_inactivity_days=180, acquisition_cost=5.0)
    assert (totals.n_customers, totals.revenue, totals.purchases, totals.churn_events) == (4, 460.0, 11.0, 2)
    assert totals.customer_years == pytest.approx(840 / 365.25, rel=1e-12)
    assert (totals.margin_revenue, totals.acquisition_cost) == (460.0, 20.0)
    empty = historical_totals(small_log_features.iloc[:0], 7.0, churn_inactivity_days=180)
    assert empty.n_customers == 0 and (empty + totals).revenue == totals.revenue
    with pytest.raises(ValueError, match="features: no customers"):
        historical_clv_from_totals(empty)
    with pytest.raises(ValueError, match="cannot estimate the customer lifespan"):
        historical_clv_from_totals(historical_totals(small_log_features.loc[["c", "d"]], 7.0))
    with pytest.raises(ValueError, match="cannot add historical totals measured with other settings"):
        totals + historical_totals(small_log_features, 7.0, churn_inactivity_days=90)
    with pytest.raises(TypeError):
        totals + 1
    with pytest.raises(TypeError, match="totals must be HistoricalTotals"):
        historical_clv_from_totals(small_log_features)
    assert historical_clv_from_totals(totals, lifespan_years=2.0).lifespan_years == 2.0


def test_historical_clv_over_a_horizon_is_the_formula_with_the_horizon_for_the_lifespan():
    from models.historical import historical_clv, historical_clv_over_horizon

    features = pd.DataFrame(
        {"frequency": [3.0, 0.0, 10.0], "recency": [20.0, 0.0, 60.0], "T": [40.0, 30.0, 100.0],
         "n_transactions": [4, 1, 11], "total_amount": [100.0, 20.0, 550.0]},
        index=["a", "b", "c"],
    )
    full = historical_clv(features, 7.0, churn_inactivity_days=180.0, margin_rate=0.3, acquisition_cost=2.0)
    horizon = historical_clv_over_horizon(features, 7.0, 1.0, churn_inactivity_days=180.0, margin_rate=0.3,
                                          acquisition_cost=2.0)
    # Over a horizon as long as the company lifespan, the two formulas are one.
    same = historical_clv_over_horizon(features, 7.0, full.lifespan_years, churn_inactivity_days=180.0,
                                       margin_rate=0.3, acquisition_cost=2.0)
    pd.testing.assert_series_equal(same, full.per_customer.rename("historical_clv_horizon"))
    # By hand for customer c: 40 weeks (280 days) without a purchase, so churned at the last
    # purchase: active 60 weeks; 11 purchases of 50 on average.
    years = 60 * 7 / 365.25
    assert horizon["c"] == pytest.approx(50.0 * 11 / years * 1.0 * 0.3 - 2.0)
    # b: one purchase, active less than a year: the floor of one year.
    assert horizon["b"] == pytest.approx(20.0 * 1 * 0.3 - 2.0)
