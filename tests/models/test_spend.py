"""Gamma-Gamma against the published CDNOW estimates, plain lifetimes, and simulation."""

import json
import pickle
import warnings

import joblib
import numpy as np
import pandas as pd
import pytest
from sklearn.base import clone
from sklearn.exceptions import NotFittedError

from models import ConvergenceError, GammaGammaModel, SpendStatistics, spend_statistics

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from lifetimes import GammaGammaFitter

# Fader, Hardie & Lee (2005, "RFM and CLV") and Hardie's note 025, CDNOW
# calibration repeaters: p=6.25, q=3.74, gamma=15.44; below to more digits.
PUBLISHED = {"p": 6.2496, "q": 3.7442, "gamma": 15.4435}


@pytest.fixture(scope="module")
def features(cdnow_sample_calibration_features):
    return cdnow_sample_calibration_features


@pytest.fixture(scope="module")
def repeaters(features):
    return features[(features["frequency"] > 0) & (features["monetary_value"] > 0)]


@pytest.fixture(scope="module")
def fitted(features):
    return GammaGammaModel().fit(features)


@pytest.fixture(scope="module")
def lifetimes_reference(repeaters):
    return GammaGammaFitter().fit(repeaters["frequency"], repeaters["monetary_value"])


def test_fit_reproduces_published_cdnow_estimates(fitted, repeaters):
    for parameter, value in PUBLISHED.items():
        assert fitted.params_[parameter] == pytest.approx(value, rel=1e-3), parameter
    assert fitted.n_customers_ == len(repeaters) == 946
    assert fitted.convergence_["converged"]


def test_same_maximum_and_standard_errors_as_lifetimes(fitted, repeaters, lifetimes_reference):
    names = {"p": "p", "q": "q", "gamma": "v"}
    for parameter, lifetimes_name in names.items():
        assert fitted.params_[parameter] == pytest.approx(lifetimes_reference.params_[lifetimes_name], rel=1e-5)
        assert fitted.standard_errors_[parameter] == pytest.approx(
            lifetimes_reference.standard_errors_[lifetimes_name], rel=1e-3
        )
    # lifetimes minimises the mean negative log-likelihood per customer.
    assert fitted.log_likelihood_ == pytest.approx(
        -lifetimes_reference._negative_log_likelihood_ * len(repeaters), rel=1e-9
    )


def test_standard_errors_positive_and_finite(fitted):
    errors = np.array(list(fitted.standard_errors_.values()))
    assert np.all(np.isfinite(errors)) and np.all(errors > 0)


def test_population_mean_and_correlation(fitted, repeaters):
    p, q, gamma = (fitted.params_[name] for name in ("p", "q", "gamma"))
    assert fitted.population_mean_spend_ == pytest.approx(p * gamma / (q - 1), rel=1e-12)
    assert fitted.frequency_monetary_correlation_ == pytest.approx(
        repeaters["frequency"].astype(float).corr(repeaters["monetary_value"]), rel=1e-10
    )
    # The model's independence assumption roughly holds on CDNOW.
    assert abs(fitted.frequency_monetary_correlation_) < 0.2


def test_non_repeaters_and_zero_spend_repeaters_do_not_change_the_fit(fitted, repeaters, features):
    zero_spend = repeaters.head(20).assign(monetary_value=0.0).set_axis(repeaters.index[:20] + "_free")
    model = GammaGammaModel().fit(pd.concat([features, zero_spend]))
    assert model.params_ == pytest.approx(fitted.params_, rel=1e-9)
    assert GammaGammaModel().fit(repeaters).params_ == pytest.approx(fitted.params_, rel=1e-9)


def test_duplicating_every_customer_keeps_the_maximum_and_doubles_the_likelihood(fitted, repeaters):
    doubled = pd.concat([repeaters, repeaters.set_axis(repeaters.index + "_copy")])
    model = GammaGammaModel().fit(doubled)
    assert model.n_customers_ == 2 * fitted.n_customers_
    assert model.n_unique_rows_ == fitted.n_unique_rows_
    assert model.log_likelihood_ == pytest.approx(2 * fitted.log_likelihood_, rel=1e-9)
    for parameter, value in model.params_.items():
        assert value == pytest.approx(fitted.params_[parameter], rel=1e-5)


def test_expected_spend_matches_lifetimes_and_keeps_the_index(fitted, features, lifetimes_reference):
    shuffled = features.sample(frac=1.0, random_state=5)
    expected = fitted.expected_spend(shuffled)
    assert expected.index.equals(shuffled.index)
    reference = lifetimes_reference.conditional_expected_average_profit(
        shuffled["frequency"].to_numpy(float), shuffled["monetary_value"].to_numpy()
    )
    np.testing.assert_allclose(expected.to_numpy(), reference, rtol=1e-5)
    no_repeats = shuffled["frequency"] == 0
    np.testing.assert_allclose(expected[no_repeats], fitted.population_mean_spend_, rtol=1e-12)


def test_expected_spend_agrees_with_simulation():
    # Draw each customer's true mean spend p / nu and their observed mean over
    # x purchases; the conditional expectation must match the true means on
    # average within any group defined by the observations (here x and
    # quintiles of the observed mean).
    p, q, gamma = PUBLISHED["p"], PUBLISHED["q"], PUBLISHED["gamma"]
    rng = np.random.default_rng(7)
    n = 200_000
    nu = rng.gamma(q, 1.0 / gamma, n)
    frequency = rng.integers(1, 8, n)
    observed_mean = rng.gamma(p * frequency, 1.0 / (nu * frequency))
    true_mean = p / nu
    features = pd.DataFrame({"frequency": frequency, "monetary_value": observed_mean})
    model = GammaGammaModel()
    model.params_ = dict(PUBLISHED)
    model.population_mean_spend_ = p * gamma / (q - 1)
    predicted = model.expected_spend(features).to_numpy()
    failures = []
    for x in (1, 3, 7):
        at_x = frequency == x
        quintile = pd.qcut(observed_mean[at_x], 5, labels=False)
        for band in range(5):
            truth = true_mean[at_x][quintile == band]
            guess = predicted[at_x][quintile == band]
            standard_error = truth.std(ddof=1) / np.sqrt(len(truth))
            if abs(guess.mean() - truth.mean()) > 4 * standard_error:
                failures.append(f"x={x} band {band}: predicted {guess.mean():.3f}, true {truth.mean():.3f}")
    assert not failures, failures


def test_refuses_too_few_repeat_customers(features):
    few = features[features["frequency"] > 0].head(12)
    with pytest.raises(ValueError, match="only 12 repeat customers.*min_repeat_customers=30"):
        GammaGammaModel().fit(pd.concat([few, features[features["frequency"] == 0]]))
    with pytest.raises(ValueError, match="only 946 repeat customers"):
        GammaGammaModel(min_repeat_customers=1000).fit(features)


def test_expected_spend_refuses_an_infinite_population_mean():
    model = GammaGammaModel()
    model.params_ = {"p": 2.0, "q": 0.8, "gamma": 10.0}
    model.population_mean_spend_ = float("inf")
    with pytest.raises(ValueError, match="q = 0.8"):
        model.expected_spend(pd.DataFrame({"frequency": [1], "monetary_value": [10.0]}))


@pytest.mark.parametrize(
    ("corrupt", "message"),
    [
        (lambda f: f.drop(columns=["monetary_value"]), "missing column\\(s\\) 'monetary_value'"),
        (
            lambda f: f.assign(monetary_value=np.where(np.arange(len(f)) < 3, -5.0, f["monetary_value"])),
            "column 'monetary_value': 3 rows negative",
        ),
        (
            lambda f: f.assign(monetary_value=f["monetary_value"].where(f.index != f.index[0])),
            "column 'monetary_value': 1 row NaN",
        ),
        (
            lambda f: f.assign(frequency=np.where(np.arange(len(f)) < 2, -1, f["frequency"])),
            "column 'frequency': 2 rows negative",
        ),
    ],
)
def test_bad_features_rejected_at_fit_and_predict(fitted, features, corrupt, message):
    bad = corrupt(features)
    with pytest.raises(ValueError, match=message):
        GammaGammaModel().fit(bad)
    with pytest.raises(ValueError, match=message):
        fitted.expected_spend(bad)


@pytest.mark.parametrize("predict", [lambda model, f: model.expected_spend(f), lambda model, f: model.summary()])
def test_unfitted_model_refuses_to_predict(features, predict):
    with pytest.raises(NotFittedError):
        predict(GammaGammaModel(), features)


def test_get_params_set_params_and_clone_round_trip():
    model = GammaGammaModel(penalizer=0.01, min_repeat_customers=100)
    params = model.get_params()
    assert params == {
        "penalizer": 0.01,
        "initial_params": None,
        "tol": 1e-7,
        "max_iter": None,
        "min_repeat_customers": 100,
        "covariates": None,
    }
    assert GammaGammaModel().set_params(**params).get_params() == params
    assert clone(model).get_params() == params


def test_initial_params_do_not_change_the_maximum(fitted, features):
    model = GammaGammaModel(initial_params={"p": 1.0, "q": 1.0, "gamma": 1.0}).fit(features)
    assert model.params_ == pytest.approx(fitted.params_, rel=1e-5)


def test_failed_optimisation_raises(features):
    with pytest.raises(ConvergenceError, match="gammagamma"):
        GammaGammaModel(max_iter=1).fit(features)


def test_joblib_round_trip_gives_identical_predictions_and_no_training_data(fitted, features, tmp_path):
    path = tmp_path / "spend.joblib"
    joblib.dump(fitted, path)
    loaded = joblib.load(path)
    pd.testing.assert_series_equal(loaded.expected_spend(features), fitted.expected_spend(features))
    assert len(pickle.dumps(fitted)) < 5_000


def test_summary_is_json_and_complete(fitted):
    summary = json.loads(json.dumps(fitted.summary(), allow_nan=False))
    assert summary["model"] == "gammagamma"
    assert set(summary["params"]) == set(summary["standard_errors"]) == {"p", "q", "gamma"}
    assert summary["n_customers"] == 946
    assert summary["population_mean_spend"] == pytest.approx(fitted.population_mean_spend_)
    assert summary["convergence"]["converged"] is True


# --- fitting from aggregates (what a cluster sends the driver) --------------------------


def cluster_aggregates(features):
    """SpendStatistics from the aggregates a cluster computes with group-bys and sums (pandas here).

    The groups come out sorted, not in the customers' order, as a distributed group-by
    gives them in no particular order.
    """
    repeat = features[(features["frequency"] > 0) & (features["monetary_value"] > 0)]
    pairs = repeat.groupby(["frequency", "monetary_value"], sort=True).size().reset_index(name="count")
    log_spend = np.log(repeat["monetary_value"])
    return SpendStatistics(
        pairs["frequency"],
        pairs["monetary_value"],
        pairs["count"],
        sum_log_spend=log_spend.sum(),
        sum_frequency_log_spend=(repeat["frequency"] * log_spend).sum(),
    )


def assert_same_fit(model, reference, rel):
    for attribute in ("params_", "standard_errors_"):
        got, expected = getattr(model, attribute), getattr(reference, attribute)
        assert got.keys() == expected.keys()
        for name in expected:
            assert got[name] == pytest.approx(expected[name], rel=rel, abs=0), (attribute, name)
    for attribute in ("log_likelihood_", "population_mean_spend_", "frequency_monetary_correlation_"):
        assert getattr(model, attribute) == pytest.approx(getattr(reference, attribute), rel=rel, abs=0), attribute
    assert (model.n_customers_, model.n_unique_rows_) == (reference.n_customers_, reference.n_unique_rows_)


def test_fit_on_spend_statistics_of_the_table_is_the_fit_on_the_table(fitted, features):
    statistics = spend_statistics(features)
    model = GammaGammaModel().fit(statistics)
    assert model.params_ == fitted.params_
    assert model.standard_errors_ == fitted.standard_errors_
    assert model.log_likelihood_ == fitted.log_likelihood_
    assert model.frequency_monetary_correlation_ == fitted.frequency_monetary_correlation_
    assert model.convergence_ == fitted.convergence_
    assert (statistics.n_customers, len(statistics)) == (fitted.n_customers_, fitted.n_unique_rows_)
    assert "customers=946" in repr(statistics)


@pytest.mark.parametrize("penalizer", [0.0, 0.01])
def test_fit_on_cluster_aggregates_equals_the_fit_on_the_table(features, penalizer):
    # 1e-12 is near the floor: the gradient is a difference of sums of thousands, so
    # summed in another order the maximum itself moves by a few 1e-13 (relative).
    reference = GammaGammaModel(penalizer=penalizer).fit(features)
    model = GammaGammaModel(penalizer=penalizer).fit(cluster_aggregates(features))
    assert_same_fit(model, reference, rel=1e-12)


def test_aggregates_give_the_pearson_correlation_and_the_sums(features, repeaters):
    statistics = cluster_aggregates(features)
    # Independent reference: pandas' Pearson over the customers themselves.
    assert statistics.frequency_monetary_correlation == pytest.approx(
        repeaters["frequency"].astype(float).corr(repeaters["monetary_value"]), rel=1e-12
    )
    assert statistics.mean_spend == pytest.approx(repeaters["monetary_value"].mean(), rel=1e-12)
    # Without the two sums they come from the pairs: the same fit to rounding.
    bare = SpendStatistics(statistics.frequency, statistics.monetary_value, statistics.counts)
    assert bare.sum_log_spend == pytest.approx(statistics.sum_log_spend, rel=1e-12)
    assert_same_fit(GammaGammaModel().fit(bare), GammaGammaModel().fit(features), rel=1e-12)
    for array in (statistics.frequency, statistics.monetary_value, statistics.counts):
        with pytest.raises(ValueError):
            array[0] = 1


def test_constant_spend_or_frequency_has_no_correlation():
    statistics = SpendStatistics([1.0, 2.0], [10.0, 10.0 + 1e-9], [3, 4])
    assert np.isfinite(statistics.frequency_monetary_correlation)
    assert np.isnan(SpendStatistics([2.0], [10.0], [3]).frequency_monetary_correlation)
    assert np.isnan(SpendStatistics([2.0, 2.0], [10.0, 11.0], [3, 1]).frequency_monetary_correlation)


def test_min_repeat_customers_is_checked_the_same_on_aggregates(features):
    few = pd.concat([features[features["frequency"] > 0].head(12), features[features["frequency"] == 0]])
    for data in (few, spend_statistics(few), cluster_aggregates(few)):
        with pytest.raises(ValueError, match="features: only 12 repeat customers.*min_repeat_customers=30"):
            GammaGammaModel().fit(data)
    none = features[features["frequency"] == 0]
    with pytest.raises(ValueError, match="features: only 0 repeat customers"):
        GammaGammaModel().fit(spend_statistics(none))
    with pytest.raises(ValueError, match="features: only 0 repeat customers"):
        GammaGammaModel().fit(SpendStatistics([], [], []))
    with pytest.raises(ValueError, match="only 946 repeat customers"):
        GammaGammaModel(min_repeat_customers=1000).fit(cluster_aggregates(features))


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (([1, 2], [10.0, 20.0], [3, -1]), "counts: 1 row not a whole number of at least 1"),
        (([1, 2], [10.0, 20.0], [0, 1]), "counts: 1 row not a whole number of at least 1"),
        (([1, 2], [10.0, 20.0], [1.5, 1]), "counts: 1 row not a whole number"),
        (([1, 2], [10.0, 20.0], [3]), "counts has 1 entries for 2 values of frequency"),
        (([1, 2], [10.0], [3, 1]), "monetary_value has 1 entries for 2 values of frequency"),
        (([1, 2], [10.0, 0.0], [3, 1]), "monetary_value: 1 row not a finite amount above 0"),
        (([1, 2], [-10.0, np.nan], [3, 1]), "monetary_value: 2 rows not a finite amount above 0"),
        (([0, 2], [10.0, 20.0], [3, 1]), "frequency: 1 row not a whole number of at least 1"),
        (([1.5, 2], [10.0, 20.0], [3, 1]), "frequency: 1 row not a whole number of at least 1"),
        (([[1, 2]], [10.0, 20.0], [3, 1]), "frequency must be 1-d"),
        (([2, 2], [10.0, 10.0], [3, 1]), "frequency, monetary_value: 1 row with a pair an earlier row already has"),
    ],
)
def test_bad_aggregates_are_rejected_naming_the_argument(arguments, message):
    with pytest.raises(ValueError, match=message):
        SpendStatistics(*arguments)


def test_sums_that_disagree_with_the_pairs_are_rejected():
    frequency, spend, counts = [1, 3], [10.0, 20.0], [3, 1]
    right = 3 * np.log(10.0) + np.log(20.0)
    assert SpendStatistics(frequency, spend, counts, sum_log_spend=right).sum_log_spend == right
    with pytest.raises(ValueError, match="sum_log_spend = .* but the pairs give"):
        SpendStatistics(frequency, spend, counts, sum_log_spend=3 * np.log10(10.0) + np.log10(20.0))
    with pytest.raises(ValueError, match="sum_frequency_log_spend = .* but the pairs give"):
        SpendStatistics(frequency, spend, counts, sum_frequency_log_spend=np.log(10.0) + 3 * np.log(20.0))
    with pytest.raises(ValueError, match="sum_log_spend must be finite"):
        SpendStatistics(frequency, spend, counts, sum_log_spend=np.nan)
    with pytest.raises(TypeError, match="counts must be an array of numbers"):
        SpendStatistics(frequency, spend, ["3", "1"])
    with pytest.raises(TypeError, match="DataFrame or SpendStatistics"):
        GammaGammaModel().fit(np.ones((40, 2)))


def simulated_repeat_customers(n_customers, seed):
    """Repeat customers drawn from the Gamma-Gamma model at the published CDNOW parameters."""
    p, q, gamma = PUBLISHED["p"], PUBLISHED["q"], PUBLISHED["gamma"]
    rng = np.random.default_rng(seed)
    nu = rng.gamma(q, 1.0 / gamma, n_customers)
    frequency = rng.integers(1, 15, n_customers)
    # The mean of x Gamma(p, nu) amounts is Gamma(p x, x nu); cents, as a log would record them.
    spend = np.maximum(np.round(rng.gamma(p * frequency, 1.0 / (nu * frequency)), 2), 0.01)
    return pd.DataFrame({"frequency": frequency, "monetary_value": spend})


def test_a_uniform_sample_fit_lies_within_three_standard_errors_of_the_full_fit():
    # What an engine does when the cluster has too many distinct pairs to send: a seeded
    # uniform sample of the repeat customers, reduced on the driver with spend_statistics.
    customers = simulated_repeat_customers(200_000, seed=17)
    full = GammaGammaModel().fit(customers)
    sample = customers.sample(frac=0.1, random_state=2024)
    sampled = GammaGammaModel().fit(spend_statistics(sample))
    assert sampled.n_customers_ == 20_000
    for name in ("p", "q", "gamma"):
        error = sampled.standard_errors_[name]
        assert np.isfinite(error) and error > 0
        assert abs(sampled.params_[name] - full.params_[name]) < 3 * error, (name, sampled.params_, full.params_)
    # And the sample is informative: its errors are about sqrt(10) times the full fit's.
    for name in ("p", "q", "gamma"):
        assert 2.5 < sampled.standard_errors_[name] / full.standard_errors_[name] < 4.5, name


def test_closed_form_hessian_matches_differences_of_the_likelihood(fitted, features):
    from models._estimation import gradient_and_hessian
    from models.spend import _log_likelihood_and_gradient, _log_likelihood_hessian

    statistics = spend_statistics(features)
    point = np.array([fitted.params_[name] for name in ("p", "q", "gamma")]) * np.array([1.1, 0.9, 1.05])
    hessian = _log_likelihood_hessian(point, statistics)
    # Central differences of the likelihood itself: good to about 1e-4 of the entries.
    _, differenced = gradient_and_hessian(lambda values: _log_likelihood_and_gradient(values, statistics)[0], point)
    np.testing.assert_allclose(hessian, differenced, rtol=1e-3, atol=1e-3 * np.max(np.abs(hessian)))
    # Central differences of the closed-form gradient (independently derived in the code): to 1e-7.
    steps = 1e-6 * point
    for i in range(3):
        up, down = point.copy(), point.copy()
        up[i] += steps[i]
        down[i] -= steps[i]
        column = (
            _log_likelihood_and_gradient(up, statistics)[1] - _log_likelihood_and_gradient(down, statistics)[1]
        ) / (2 * steps[i])
        np.testing.assert_allclose(hessian[:, i], column, rtol=1e-6, atol=1e-7 * np.max(np.abs(hessian)))


def test_constant_spend_fails_with_a_line_saying_what_ran_away_and_tiers_keep_their_own_mean():
    from models import ConvergenceError

    rng = np.random.default_rng(0)
    frequency = rng.poisson(2, 3000) + 1
    # A subscription at one price: no spread to fit, said in one line (not a precision loss).
    with pytest.raises(ConvergenceError, match="every repeat customer's mean spend is 9.99: .*p and q run away"):
        GammaGammaModel().fit(pd.DataFrame({"frequency": frequency, "monetary_value": np.full(3000, 9.99)}))
    # Three price tiers, each customer on one: p grows without a within-customer spread, and the
    # expected spend of a repeat customer is their own tier's price (the model's limit).
    tiers = rng.choice([9.99, 19.99, 49.99], 3000)
    features = pd.DataFrame({"frequency": frequency, "monetary_value": tiers})
    expected = GammaGammaModel().fit(features).expected_spend(features)
    np.testing.assert_allclose(expected, tiers, rtol=1e-3)
