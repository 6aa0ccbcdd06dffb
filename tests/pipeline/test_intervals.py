"""value.intervals in the value stage and the scoring core: every customer's bounds and the
company totals' interval, from seeded parameter draws frozen in the scorer (issue 19)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from models import BetaGeoModel, GammaGammaModel
from models.discounting import discounted_expected_purchases
from models.uncertainty import draw_parameters
from pipeline.errors import ConfigError
from pipeline.stages.value import INTERVAL_COLUMNS, build_scorer
from tests.conftest import sample_config


@pytest.fixture(scope="module")
def fitted(cdnow_sample_full_features):
    features = cdnow_sample_full_features.reset_index()
    return features, BetaGeoModel().fit(features), GammaGammaModel().fit(features)


def value(fitted, *overrides):
    features, purchase, spend = fitted
    config = sample_config(*overrides)
    scorer, _, scores, company = build_scorer(features, purchase, "bgnbd", spend, config.value, config.segments,
                                              config.features.period, seed=config.seed)
    return scorer, scores, company


@pytest.mark.parametrize("horizon", ["12", "lifetime"])
def test_every_customer_has_bounds_around_the_point_and_the_company_total_its_interval(fitted, horizon):
    scorer, scores, company = value(fitted, f"value.horizon={horizon}")
    for figure, point in (("clv", "predicted_clv"), ("expected_purchases", "expected_purchases"),
                          ("probability_alive", "probability_alive")):
        lower, upper, middle = scores[f"{figure}_lower"], scores[f"{figure}_upper"], scores[point]
        slack = 1e-6 * middle.abs() + 1e-12
        assert ((lower <= middle + slack) & (middle <= upper + slack)).all(), figure
    assert (scores["probability_alive_upper"] <= 1.0).all()
    # Most customers' CLV has some width; a customer's 90 % interval is a few per cent of their
    # value on 2,357 customers, not nothing and not everything.
    width = (scores["clv_upper"] - scores["clv_lower"]) / scores["predicted_clv"]
    assert 0.01 < width.median() < 0.5
    assert (scores["purchases_p10"] <= scores["purchases_p90"]).all()
    assert scores["purchases_p90"].max() >= 5 and scores["purchases_p10"].max() >= 1
    total = scores["predicted_clv"].sum()
    bounds = company["predicted_clv_total"]
    assert bounds["lower"] < total < bounds["upper"]
    # Summing first, the customers' errors partly cancel: narrower than the sum of their widths,
    # wider than nothing.
    assert 0 < bounds["upper"] - bounds["lower"] < (scores["clv_upper"] - scores["clv_lower"]).sum()
    purchases = company["expected_purchases_total"]
    assert purchases["lower"] < scores["expected_purchases"].sum() < purchases["upper"]
    assert company["level"] == 0.9 and company["draws"] == 100


def test_the_company_interval_is_the_quantiles_of_the_totals_at_each_draw(fitted):
    """Recomputed by hand: at each of the scorer's draws, every customer's discounted purchases
    times their expected spend times the margin, summed, less the costs."""
    features, purchase, spend = fitted
    scorer, scores, company = value(fitted, "value.intervals.draws=30", "value.acquisition_cost.constant=1.5")
    totals = []
    for (_, purchase_values), (_, spend_values) in zip(scorer.purchase_parameter_draws.iterrows(),
                                                       scorer.spend_parameter_draws.iterrows()):
        drawn = purchase.with_params(purchase_values)
        discounted = discounted_expected_purchases(drawn, features, scorer.horizon_periods, 1.0,
                                                   scorer.discount_rate_per_period)
        spent = spend.with_params(spend_values).expected_spend(features)
        totals.append(float((discounted * spent * scorer.default_margin_rate).sum()) - 1.5 * len(features))
    lower, upper = np.quantile(totals, [0.05, 0.95])
    # The horizon's discounting is held at the point estimate per (frequency, T) pair, which
    # moves the bounds by a few hundredths of the interval's width (4e-4 of the total here).
    for side, by_hand in (("lower", lower), ("upper", upper)):
        assert abs(company["predicted_clv_total"][side] - by_hand) < 0.05 * (upper - lower), side


def test_the_scorer_gives_the_runs_bounds_to_any_subset_and_the_seed_makes_them(fitted):
    features, _, _ = fitted
    scorer, scores, _ = value(fitted)
    subset = features.iloc[::7]
    again = scorer.score(subset)
    pd.testing.assert_frame_equal(again[INTERVAL_COLUMNS].reset_index(drop=True),
                                  scores[INTERVAL_COLUMNS].iloc[::7].reset_index(drop=True))
    same = value(fitted)[1]
    pd.testing.assert_frame_equal(same[INTERVAL_COLUMNS], scores[INTERVAL_COLUMNS])
    other = value(fitted, "seed=7")[1]
    assert not np.allclose(other["clv_upper"], scores["clv_upper"])
    np.testing.assert_allclose(other["clv_upper"], scores["clv_upper"], rtol=0.1, atol=1e-9)


def test_a_wider_level_gives_wider_bounds(fitted):
    _, narrow, _ = value(fitted, "value.intervals.level=0.5")
    _, wide, _ = value(fitted, "value.intervals.level=0.99")
    assert ((wide["clv_upper"] - wide["clv_lower"]) >= (narrow["clv_upper"] - narrow["clv_lower"])).all()
    assert (wide["clv_upper"] - wide["clv_lower"]).sum() > 2 * (narrow["clv_upper"] - narrow["clv_lower"]).sum()


def test_no_draws_leaves_the_columns_empty_and_says_why(fitted):
    scorer, scores, company = value(fitted, "value.intervals.draws=0")
    assert scores[INTERVAL_COLUMNS].isna().all().all()
    assert scores["purchases_p90"].notna().all()  # the spread needs no draws
    assert company == {"unavailable": "value.intervals.draws is 0"}
    assert scorer.settings_summary()["intervals"] == {"unavailable": "value.intervals.draws is 0"}
    with pytest.raises(ConfigError, match="at least 20 draws"):
        sample_config("value.intervals.draws=5")


def test_a_model_without_a_usable_covariance_degrades_the_intervals_not_the_run(fitted):
    features, purchase, spend = fitted
    broken = BetaGeoModel().fit(features)
    broken.covariance_ = broken.covariance_ * np.nan
    config = sample_config()
    scorer, _, scores, company = build_scorer(features, broken, "bgnbd", spend, config.value, config.segments,
                                              config.features.period)
    assert scores[INTERVAL_COLUMNS].isna().all().all() and scores["predicted_clv"].notna().all()
    assert "covariance_ is not finite" in company["unavailable"]
    assert draw_parameters(purchase, 3, 0).shape == (3, 4)


def test_many_histories_take_the_delta_method_frozen_in_the_scorer(fitted, monkeypatch):
    """Above DELTA_ABOVE history-draws the bounds are the draws' limit; on CDNOW's sample
    (2,357 customers, the parameters' errors at their largest) still close to the draws'."""
    from pipeline.stages import value as value_module

    scorer, scores, company = value(fitted)
    assert scorer.interval_method == "draws"
    monkeypatch.setattr(value_module, "DELTA_ABOVE", 0)
    delta_scorer, delta_scores, delta_company = value(fitted)
    assert delta_scorer.interval_method == "delta"
    for column in INTERVAL_COLUMNS:
        width = scores[column.rsplit("_", 1)[0] + "_upper"] - scores[column.rsplit("_", 1)[0] + "_lower"]
        gap = (delta_scores[column] - scores[column]).abs()
        assert (gap <= 0.25 * width + 1e-9).mean() > 0.95, column
    for total in ("predicted_clv_total", "expected_purchases_total"):
        width = company[total]["upper"] - company[total]["lower"]
        for side in ("lower", "upper"):
            assert abs(delta_company[total][side] - company[total][side]) < 0.1 * width, (total, side)
    # Frozen: a few customers scored later get the run's delta bounds, not draws'.
    features = fitted[0]
    again = delta_scorer.score(features.iloc[:50])
    np.testing.assert_array_equal(again["clv_upper"].to_numpy(), delta_scores["clv_upper"].iloc[:50].to_numpy())


def test_intervals_that_fail_to_evaluate_degrade_to_empty_columns_with_the_reason(fitted, monkeypatch):
    from pipeline.stages import value as value_module

    def fails(*args, **kwargs):
        raise ValueError("expected_spend: 3 rows with a NaN or infinite value at some parameter draw\nmore")

    monkeypatch.setattr(value_module, "history_intervals", fails)
    scorer, scores, company = value(fitted)
    assert company == {"unavailable": "expected_spend: 3 rows with a NaN or infinite value at some parameter draw"}
    assert scores[INTERVAL_COLUMNS].isna().all().all() and scores["predicted_clv"].notna().all()
    # The scorer dropped its draws: later scorings leave the columns empty too, and say why.
    assert not scorer.has_intervals and "NaN or infinite" in scorer.settings_summary()["intervals"]["unavailable"]
    assert scorer.score(fitted[0].iloc[:20])[INTERVAL_COLUMNS].isna().all().all()
