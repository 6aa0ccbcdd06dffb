"""Goodness of fit and prediction-quality figures (models/diagnostics.py), against lifetimes,
numerical integration, formulas by hand and brute force over tie orders."""

import warnings

import numpy as np
import pandas as pd
import pytest
from scipy import integrate, stats
from scipy.stats import nbinom

from models import BetaGeoModel, ModifiedBetaGeoModel, ParetoNBDModel
from models.diagnostics import (
    chi_square_test,
    gains_curve,
    normalized_gini,
    observed_purchase_counts,
    probability_scores,
    purchase_count_distribution,
)
from tests.models.simulate import beta_geometric

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from lifetimes import BetaGeoFitter, ModifiedBetaGeoFitter
    from lifetimes.datasets import load_cdnow_summary


@pytest.fixture(scope="module")
def cdnow():
    return load_cdnow_summary(index_col=[0])


@pytest.mark.parametrize("ours, theirs", [(BetaGeoModel, BetaGeoFitter), (ModifiedBetaGeoModel, ModifiedBetaGeoFitter)])
def test_expected_histogram_sums_lifetimes_unconditional_distribution_over_the_ages(cdnow, ours, theirs):
    model = ours().fit(cdnow)
    fitter = theirs()
    fitter.params_ = pd.Series(model.params_)
    expected = purchase_count_distribution(model, cdnow["T"])
    by_hand = np.zeros(8)
    for age, count in cdnow["T"].value_counts().items():
        masses = [float(fitter.probability_of_n_purchases_up_to_time(age, n)) for n in range(7)]
        by_hand[:7] += count * np.array(masses)
        by_hand[7] += count * (1 - sum(masses))
    np.testing.assert_allclose(expected.to_numpy(), by_hand, rtol=1e-9)
    assert list(expected.index) == [0, 1, 2, 3, 4, 5, 6, "7+"]
    assert expected.sum() == pytest.approx(len(cdnow))


def test_pareto_nbd_histogram_matches_the_integral_over_the_lifetime(cdnow):
    """P(X(t) = x) = (b/(b+t))^s NB(x; r, a/(a+t)) + int_0^t s b^s (b+u)^-(s+1) NB(x; r, a/(a+u)) du."""
    model = ParetoNBDModel().fit(cdnow)
    r, alpha, s, beta = (model.params_[k] for k in ("r", "alpha", "s", "beta"))
    ages = np.array([10.0, 25.5, 38.0, 38.0])

    def mass(x, t):
        alive = (beta / (beta + t)) ** s * nbinom.pmf(x, r, alpha / (alpha + t))
        died = integrate.quad(lambda u: s * beta**s * (beta + u) ** -(s + 1) * nbinom.pmf(x, r, alpha / (alpha + u)),
                              0, t, epsabs=1e-13, epsrel=1e-11)[0]
        return alive + died

    expected = purchase_count_distribution(model, ages, largest=4)
    by_hand = [sum(mass(x, t) for t in ages) for x in range(4)]
    np.testing.assert_allclose(expected.to_numpy()[:4], by_hand, rtol=1e-7)


def test_a_model_fits_the_histogram_of_its_own_simulated_customers_and_not_a_misspecified_one():
    rng = np.random.default_rng(3)
    ages = np.round(rng.uniform(30, 78, 6000), 0)
    data = beta_geometric(rng, ages, r=0.243, alpha=4.414, a=0.793, b=2.426)
    model = BetaGeoModel().fit(data)
    observed = observed_purchase_counts(data["frequency"])
    expected = purchase_count_distribution(model, data["T"])
    test = chi_square_test(observed, expected, fitted_parameters=4)
    assert test.degrees_of_freedom == 3 and test.p_value > 0.01
    # Every repeat buyer given four more purchases: a gap at 1-4 the fitted model cannot match.
    shifted = data.assign(frequency=np.where(data["frequency"] > 0, data["frequency"] + 4, 0.0))
    misfit = BetaGeoModel().fit(shifted)
    bad = chi_square_test(observed_purchase_counts(shifted["frequency"]),
                          purchase_count_distribution(misfit, shifted["T"]), 4)
    assert bad.p_value < 1e-6


def test_chi_square_by_hand_and_its_refusals():
    test = chi_square_test([10, 20, 30], [15, 20, 25], fitted_parameters=0)
    assert test.statistic == pytest.approx(25 / 15 + 0 + 25 / 25)
    assert test.degrees_of_freedom == 2
    assert test.p_value == pytest.approx(stats.chi2.sf(25 / 15 + 1, 2))
    with pytest.raises(ValueError, match="no degree of freedom"):
        chi_square_test([1, 2, 3], [2, 2, 2], fitted_parameters=2)
    with pytest.raises(ValueError, match="different customers"):
        chi_square_test([1, 2, 3], [2, 2, 3], fitted_parameters=0)
    with pytest.raises(ValueError, match="positive"):
        chi_square_test([1, 2], [3, 0], fitted_parameters=0)


def test_brier_log_loss_and_reliability_by_hand():
    predicted = np.array([0.1, 0.1, 0.8, 0.4, 0.9, 0.2])
    happened = np.array([0, 1, 1, 0, 1, 0], dtype=bool)
    scores, table = probability_scores(predicted, happened, bins=2)
    assert scores["brier"] == pytest.approx(np.mean((predicted - happened) ** 2))
    assert scores["log_loss"] == pytest.approx(-np.mean(np.where(happened, np.log(predicted), np.log(1 - predicted))))
    assert scores["base_rate"] == pytest.approx(0.5)
    # Lower half: 0.1, 0.1, 0.2; upper: 0.4, 0.8, 0.9.
    assert table["customers"].tolist() == [3, 3]
    assert table["mean_predicted"].tolist() == pytest.approx([0.4 / 3, 2.1 / 3])
    assert table["observed_rate"].tolist() == pytest.approx([1 / 3, 2 / 3])
    with pytest.raises(ValueError, match="probabilities"):
        probability_scores([1.2], [True])


def test_gini_is_one_for_the_best_order_zero_without_information_and_minus_one_reversed():
    realised = np.array([0.0, 1.0, 3.0, 6.0, 10.0])
    assert normalized_gini(realised, realised) == pytest.approx(1.0)
    assert normalized_gini(-realised, realised) == pytest.approx(-1.0)
    assert normalized_gini(np.ones(5), realised) == pytest.approx(0.0)
    assert np.isnan(normalized_gini(realised, np.ones(5)))
    curve = gains_curve(realised, realised)
    assert curve.iloc[0].tolist() == [0.0, 0.0] and curve.iloc[-1].tolist() == [1.0, 1.0]


def test_ties_count_as_the_mean_over_every_order_of_the_block():
    rng = np.random.default_rng(5)
    predicted = rng.integers(0, 4, 60).astype(float)  # many ties, as customers sharing a history
    realised = rng.gamma(1.0, 10.0, 60)
    ours = normalized_gini(predicted, realised)

    def gini_of(order):  # a strict order, highest first: the textbook sum
        shares = np.concatenate([[0.0], np.cumsum(realised[order]) / realised.sum()])
        return 2.0 * np.trapezoid(shares, np.linspace(0.0, 1.0, 61)) - 1.0

    best = gini_of(np.argsort(-realised))
    # Ties broken at random, many times: their mean is the block-mean figure.
    brute = [gini_of(np.lexsort([rng.random(60), -predicted])) / best for _ in range(20_000)]
    assert ours == pytest.approx(np.mean(brute), abs=2e-3)


def test_conditional_expectation_test_by_hand_and_a_group_the_model_says_is_empty():
    from models.diagnostics import conditional_expectation_test

    test = conditional_expectation_test([12.0, 30.0, 8.0], [10.0, 25.0, 10.0])
    assert test.statistic == pytest.approx(4 / 10 + 25 / 25 + 4 / 10)
    # Nothing fitted on the holdout and totals free to differ: every group is a degree of freedom.
    assert test.degrees_of_freedom == 3
    assert test.p_value == pytest.approx(stats.chi2.sf(1.8, 3))
    # A group with no purchases expected or made is no group; one expected empty that bought
    # is an infinitely bad fit, not a group to drop.
    assert conditional_expectation_test([12.0, 0.0], [10.0, 0.0]).degrees_of_freedom == 1
    infinite = conditional_expectation_test([12.0, 3.0], [10.0, 0.0])
    assert infinite.statistic == np.inf and infinite.p_value == 0.0
    with pytest.raises(ValueError):
        conditional_expectation_test([0.0], [0.0])


def test_probability_sums_of_batches_add_up_to_the_whole_scores():
    from models.diagnostics import probability_score_sums, probability_scores, probability_scores_from_sums

    rng = np.random.default_rng(3)
    predicted = rng.random(500)
    happened = rng.random(500) < predicted
    whole, _ = probability_scores(predicted, happened)
    parts = [probability_score_sums(predicted[rows], happened[rows]) for rows in np.array_split(np.arange(500), 7)]
    merged = {key: sum(part[key] for part in parts) for key in parts[0]}
    assert probability_scores_from_sums(merged) == pytest.approx(whole, rel=1e-12)
