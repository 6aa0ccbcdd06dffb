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

from models import ConvergenceError, GammaGammaModel

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
