"""Our BG/NBD and MBG/NBD likelihood and fit (models/_beta_geometric.py, models/_optimum.py) against lifetimes'."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

from models import BetaGeoModel, ConvergenceError, ModifiedBetaGeoModel, group_histories
from models._beta_geometric import (
    BetaGeometricLikelihood,
    fallback_starts,
    maximise,
    per_history,
    starting_values,
)
from models._lifetimes_compat import FITTERS, fit_purchase_model, penalty
from pipeline.config import load_config
from pipeline.duckdb_engine import features_from_config
from tests.conftest import CONFIGS

MODELS = {"bgnbd": BetaGeoModel, "mbgnbd": ModifiedBetaGeoModel}
NAMES = ("r", "alpha", "a", "b")


def arrays(features) -> tuple[np.ndarray, ...]:
    grouped = group_histories(features)
    return (*grouped.unique_arrays(), grouped.counts.astype(float))


@pytest.fixture(scope="module")
def sample(cdnow_sample_calibration_features):
    return arrays(cdnow_sample_calibration_features)


@pytest.fixture(scope="module")
def master():
    """CDNOW master (23,570 customers), calibration to 1997-09-30 as in the default config."""
    return arrays(features_from_config(load_config(CONFIGS / "default.yaml")).calibration_frame())


@pytest.fixture(scope="module")
def synthetic():
    """50,000 customers drawn from a BG/NBD, acquired over 40 weeks, observed for 30 more."""
    from tests.models.test_purchase import simulate

    rng = np.random.default_rng(18)
    ages = 30.0 + np.floor(rng.uniform(0, 40, 50_000) * 7) / 7  # whole days, in weeks
    features, _, _ = simulate("bgnbd", {"r": 0.8, "alpha": 6.0, "a": 1.2, "b": 4.0}, ages, 0.0, rng)
    return arrays(features)


def lifetimes_per_history(name, params, frequency, recency, age):
    """lifetimes' own objective, one history at a time: its negative log-likelihood of a
    single row with weight 1 is that row's log-likelihood, negated."""
    objective = FITTERS[name]._negative_log_likelihood
    one = np.ones(1)
    return np.array([
        -objective(np.log(params), frequency[i:i + 1], recency[i:i + 1], age[i:i + 1], one, 0.0)
        for i in range(len(frequency))
    ])


PARAMETER_SETS = [
    (0.2426, 4.4136, 0.7929, 2.4259),  # BG/NBD's CDNOW maximum
    (0.5248, 6.183, 0.8914, 1.614),  # MBG/NBD's
    (2.0, 1.0, 0.1, 100.0),  # b > 1 far from the data's
    (0.5, 30.0, 3.0, 0.5),  # b < 1: BG/NBD's b - 1 < 0, a term absent at x = 0
]


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("params", PARAMETER_SETS)
def test_each_historys_log_likelihood_is_lifetimes(sample, name, params):
    frequency, recency, age, counts = sample
    theirs = lifetimes_per_history(name, np.array(params), frequency, recency, age)
    ours, _ = per_history(*params, frequency, recency, age, modified=name == "mbgnbd")
    np.testing.assert_allclose(ours, theirs, rtol=1e-12, atol=0)
    # The fit's object (terms of one variable per distinct value) gives the same numbers.
    gathered, _ = BetaGeometricLikelihood(frequency, recency, age, counts, name == "mbgnbd").per_history(params)
    np.testing.assert_allclose(gathered, theirs, rtol=1e-12, atol=0)


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("params", PARAMETER_SETS)
def test_the_analytic_gradient_is_the_finite_difference_one(sample, name, params):
    frequency, recency, age, _ = sample
    modified = name == "mbgnbd"
    _, gradient = per_history(*params, frequency, recency, age, modified)
    assert gradient.shape == (4, len(frequency))
    for index in range(4):
        # Central differences with a step of eps^(1/3) of the parameter: error ~1e-10 relative.
        step = 1e-5 * params[index]
        up, down = list(params), list(params)
        up[index] += step
        down[index] -= step
        numeric = (per_history(*up, frequency, recency, age, modified)[0]
                   - per_history(*down, frequency, recency, age, modified)[0]) / (2 * step)
        scale = np.max(np.abs(numeric))
        np.testing.assert_allclose(gradient[index], numeric, rtol=1e-6, atol=1e-7 * scale, err_msg=NAMES[index])


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("params", PARAMETER_SETS)
def test_the_fits_totals_are_the_weighted_sums_of_each_historys(sample, name, params):
    # value_and_gradient sums terms of one variable over their distinct values: the same sums.
    frequency, recency, age, counts = sample
    values, gradients = per_history(*params, frequency, recency, age, modified=name == "mbgnbd")
    total, gradient = BetaGeometricLikelihood(frequency, recency, age, counts, name == "mbgnbd").value_and_gradient(
        params)
    assert total == pytest.approx(float(np.sum(counts * values)), rel=1e-13)
    reference = (gradients * counts).sum(axis=1)
    np.testing.assert_allclose(gradient, reference, rtol=1e-9, atol=1e-9 * np.abs(gradients * counts).sum())


@pytest.mark.parametrize("modified", [False, True])
def test_parameters_may_differ_per_history(sample, modified):
    # A covariate model's groups: each row's parameters from its group, equal to fitting each
    # group's rows alone with scalars.
    frequency, recency, age, _ = sample
    group = np.arange(len(frequency)) % 3
    by_group = np.array([[0.24, 4.4, 0.79, 2.4], [0.5, 8.0, 1.5, 3.0], [1.2, 2.0, 0.3, 0.9]])
    r, alpha, a, b = by_group[group].T
    values, gradient = per_history(r, alpha, a, b, frequency, recency, age, modified)
    for g, params in enumerate(by_group):
        rows = group == g
        alone, alone_gradient = per_history(*params, frequency[rows], recency[rows], age[rows], modified)
        np.testing.assert_allclose(values[rows], alone, rtol=1e-15)
        np.testing.assert_allclose(gradient[:, rows], alone_gradient, rtol=1e-15)
    # One r for everyone, the rest per row: broadcasting.
    mixed, _ = per_history(0.24, alpha, a, b, frequency, recency, age, modified)
    first = group == 0
    np.testing.assert_allclose(mixed[first], values[first], rtol=1e-15)


def lifetimes_maximum(name, frequency, recency, age, counts, penalizer=0.0):
    """lifetimes' BFGS run until it stops moving (tol 1e-10 on its mean objective)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference, _ = fit_purchase_model(name, frequency, recency, age, counts, penalizer, None, 1e-10, 20_000)
    return np.array([reference[key] for key in NAMES])


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("data", ["sample", "master", "synthetic"])
def test_the_fit_reaches_lifetimes_maximum(request, name, data):
    frequency, recency, age, counts = request.getfixturevalue(data)
    likelihood = BetaGeometricLikelihood(frequency, recency, age, counts, name == "mbgnbd")
    theirs = lifetimes_maximum(name, frequency, recency, age, counts)
    ours = maximise(likelihood)
    assert likelihood(ours) == pytest.approx(likelihood(theirs), rel=1e-8)
    assert likelihood(ours) >= likelihood(theirs) - 1e-10 * abs(likelihood(theirs))
    np.testing.assert_allclose(ours, theirs, rtol=1e-5)


@pytest.mark.parametrize("name", list(MODELS))
def test_a_penalized_fit_reaches_lifetimes_penalized_maximum(sample, name):
    frequency, recency, age, counts = sample
    theirs = lifetimes_maximum(name, frequency, recency, age, counts, penalizer=0.05)
    model = MODELS[name](penalizer=0.05).fit(pd.DataFrame({"frequency": np.repeat(frequency, counts.astype(int)),
                                                           "recency": np.repeat(recency, counts.astype(int)),
                                                           "T": np.repeat(age, counts.astype(int))}))
    assert model.convergence_["converged"]
    np.testing.assert_allclose([model.params_[key] for key in NAMES], theirs, rtol=1e-5)
    # The same objective as lifetimes': its penalty, in units of the total log-likelihood.
    likelihood = BetaGeometricLikelihood(frequency, recency, age, counts, name == "mbgnbd")
    ours = np.array([model.params_[key] for key in NAMES])
    n = counts.sum()
    assert likelihood(ours) - penalty(name, ours, age, n, 0.05) >= (
        likelihood(theirs) - penalty(name, theirs, age, n, 0.05) - 1e-10 * abs(likelihood(theirs)))


@pytest.mark.parametrize("name", list(MODELS))
def test_a_fit_is_deterministic_and_starts_where_the_data_say(sample, name):
    frequency, recency, age, counts = sample
    start = starting_values(frequency, recency, age, counts)
    assert start[1] == pytest.approx(np.dot(counts, age) / np.dot(counts, frequency))
    assert start[3] == pytest.approx(1 + np.dot(counts, frequency) / counts.sum())
    assert len(fallback_starts(start, age)) == 3  # four starts at most
    likelihood = BetaGeometricLikelihood(frequency, recency, age, counts, name == "mbgnbd")
    np.testing.assert_array_equal(maximise(likelihood), maximise(likelihood))
    first, second = MODELS[name]().fit(group_histories_of(sample)), MODELS[name]().fit(group_histories_of(sample))
    assert first.params_ == second.params_ and first.standard_errors_ == second.standard_errors_


def group_histories_of(data):
    frequency, recency, age, counts = data
    repeat = counts.astype(int)
    return pd.DataFrame({"frequency": np.repeat(frequency, repeat), "recency": np.repeat(recency, repeat),
                         "T": np.repeat(age, repeat)})


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("start", [
    {"r": 5.0, "alpha": 1.0, "a": 5.0, "b": 0.2},
    {"r": 0.05, "alpha": 500.0, "a": 0.05, "b": 50.0},
])
def test_far_starts_reach_the_same_maximum(cdnow_sample_calibration_features, name, start):
    reference = MODELS[name]().fit(cdnow_sample_calibration_features)
    model = MODELS[name](initial_params=start).fit(cdnow_sample_calibration_features)
    assert model.convergence_["converged"]
    for key, value in reference.params_.items():
        assert model.params_[key] == pytest.approx(value, rel=1e-5), key


def fit_or_reason(model_class, features):
    """The fitted model, or the ConvergenceError's message: any other exception fails the test."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return model_class().fit(features)
        except ConvergenceError as error:
            return str(error)


@pytest.mark.parametrize("name", list(MODELS))
def test_nobody_stops_buying_is_a_one_line_reason_not_a_wrong_fit(name):
    # Every customer buys every week until T: no dropout is visible in the data.
    rng = np.random.default_rng(0)
    age = rng.integers(10, 40, size=3_000).astype(float)
    outcome = fit_or_reason(MODELS[name], pd.DataFrame({"frequency": age, "recency": age, "T": age}))
    if isinstance(outcome, str):
        assert outcome.startswith(f"{name}: ") and "\n" not in outcome
        assert "ran away to" in outcome and "not identified" in outcome, outcome
    else:
        # Converged: then to a maximum where nearly nobody drops out.
        assert outcome.convergence_["converged"]
        assert outcome.params_["a"] / (outcome.params_["a"] + outcome.params_["b"]) < 1e-3


@pytest.mark.parametrize("name", list(MODELS))
def test_nobody_buys_again_after_some_week_converges_or_says_why(cdnow_sample_calibration_features, name):
    # The sample with every repeat purchase after week 20 removed: a cliff no BG/NBD draws.
    features = cdnow_sample_calibration_features[["frequency", "recency", "T"]].copy()
    late = features["recency"] > 20
    features.loc[late, "recency"] = 20.0
    features.loc[features["frequency"] > 0, "frequency"] = 1
    outcome = fit_or_reason(MODELS[name], features)
    if isinstance(outcome, str):
        assert outcome.startswith(f"{name}: ") and "\n" not in outcome and "ran away to" in outcome, outcome
    else:
        assert np.all(np.isfinite(list(outcome.params_.values())))
        assert np.isfinite(outcome.log_likelihood_)


@pytest.mark.parametrize("name", ["bgnbd", "mbgnbd", "paretonbd"])
def test_no_repeat_purchases_at_all_is_a_one_line_reason(name):
    # Nothing to learn purchase rates from: refused before the optimiser wanders along the ridge
    # towards a mean rate of 0, where it stops anywhere (seen: MBG/NBD at 4 different points).
    from models import PURCHASE_MODELS

    rng = np.random.default_rng(1)
    age = rng.integers(10, 40, size=2_000).astype(float)
    with pytest.raises(ValueError, match=r"^features: column 'frequency': every row is 0, so there are no repeat"):
        PURCHASE_MODELS[name]().fit(pd.DataFrame({"frequency": 0, "recency": 0.0, "T": age}))
