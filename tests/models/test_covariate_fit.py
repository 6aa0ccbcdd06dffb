"""Models with static covariates: recovery of known coefficients from simulated logs, the
plain model at coefficients 0, and predictions with each customer's own parameters."""

import copy
import json

import numpy as np
import pandas as pd
import pytest

from models import (
    PURCHASE_MODELS,
    BetaGeoModel,
    GammaGammaModel,
    ModifiedBetaGeoModel,
    ParetoNBDModel,
    _beta_geometric,
    _covariate_fit,
    _pareto_nbd,
    discounting,
    group_histories,
    spend_statistics,
)
from models.spend import _covariate_log_likelihood_and_derivatives, _log_likelihood_and_gradient
from tests.models import simulate

COVARIATES = ["channel[web]", "age"]
N_CUSTOMERS = 4000
# Baselines and coefficients the logs are simulated with (design: web 0/1, age ~ N(0, 1)).
TRUTH = {
    "paretonbd": ({"r": 0.8, "alpha": 8.0, "s": 0.7, "beta": 10.0},
                  {"alpha": [0.5, 0.2], "beta": [-0.4, 0.3]}),
    "bgnbd": ({"r": 0.6, "alpha": 4.0, "a": 0.8, "b": 2.5},
              {"alpha": [0.5, 0.2], "a": [0.3, -0.2], "b": [-0.3, 0.2]}),
    "mbgnbd": ({"r": 0.6, "alpha": 4.0, "a": 0.8, "b": 2.5},
               {"alpha": [0.5, 0.2], "a": [0.3, -0.2], "b": [-0.3, 0.2]}),
}
SPEND_TRUTH = ({"p": 6.0, "q": 4.0, "gamma": 15.0}, {"gamma": [0.4, -0.2]})
SIGNS = {"alpha": -1, "beta": -1, "a": 1, "b": 1, "gamma": 1}


def _own(value, coefficients, design, sign):
    return value * np.exp(sign * (design @ np.asarray(coefficients)))


def simulated_purchases(name, seed, n=N_CUSTOMERS, effects=True):
    """A log simulated from ``name`` with the channel and age effects of TRUTH (or none)."""
    rng = np.random.default_rng(seed)
    covariates = simulate.customers_with_covariates(rng, n)
    age = rng.integers(20, 53, n).astype(float)
    design = covariates[COVARIATES].to_numpy()
    base, coefficients = TRUTH[name]
    own = {key: (_own(value, coefficients[key], design, SIGNS[key]) if effects and key in coefficients else value)
           for key, value in base.items()}
    if name == "paretonbd":
        histories = simulate.pareto_nbd(rng, age, own["r"], own["alpha"], own["s"], own["beta"])
    else:
        histories = simulate.beta_geometric(rng, age, own["r"], own["alpha"], own["a"], own["b"],
                                            modified=name == "mbgnbd")
    return pd.concat([histories, covariates], axis=1)


def simulated_spend(seed, n=N_CUSTOMERS, effects=True):
    rng = np.random.default_rng(seed)
    covariates = simulate.customers_with_covariates(rng, n)
    frequency = rng.integers(1, 8, n)
    base, coefficients = SPEND_TRUTH
    gamma = _own(base["gamma"], coefficients["gamma"], covariates[COVARIATES].to_numpy(), 1) if effects \
        else base["gamma"]
    spend = simulate.gamma_gamma(rng, frequency, base["p"], base["q"], gamma)
    return covariates.assign(frequency=frequency.astype(float), monetary_value=spend)


@pytest.fixture(scope="module")
def logs():
    # Seeded. Over other seeds, some one of a model's ten estimates lies beyond 3 of its
    # standard errors about once in twenty draws (as ten near-normal estimates should).
    return {name: simulated_purchases(name, seed) for seed, name in enumerate(TRUTH, start=40)}


@pytest.fixture(scope="module")
def fitted(logs):
    return {name: PURCHASE_MODELS[name](covariates=COVARIATES).fit(logs[name]) for name in TRUTH}


@pytest.fixture(scope="module")
def plain(logs):
    return {name: PURCHASE_MODELS[name]().fit(logs[name]) for name in TRUTH}


@pytest.fixture(scope="module")
def spend_log():
    return simulated_spend(20)


@pytest.fixture(scope="module")
def spend_model(spend_log):
    return GammaGammaModel(covariates=COVARIATES).fit(spend_log)


def _within_three_standard_errors(model, base, coefficients):
    table = model.coefficients_
    for parameter, values in coefficients.items():
        rows = table[table["parameter"] == parameter].set_index("covariate")
        for covariate, truth in zip(COVARIATES, values):
            estimate, error = rows.loc[covariate, "coefficient"], rows.loc[covariate, "standard_error"]
            assert abs(estimate - truth) < 3 * error, (parameter, covariate, estimate, truth, error)
    for name, truth in base.items():
        estimate, error = model.params_[name], model.standard_errors_[name]
        assert abs(estimate - truth) < 3 * error, (name, estimate, truth, error)


# --- recovery ----------------------------------------------------------------


@pytest.mark.parametrize("name", list(TRUTH))
def test_purchase_model_recovers_known_coefficients(fitted, name):
    model = fitted[name]
    assert model.convergence_["converged"]
    _within_three_standard_errors(model, *TRUTH[name])
    table = model.coefficients_
    assert list(table.columns) == ["process", "parameter", "covariate", "coefficient", "standard_error", "z", "p_value"]
    assert set(table["process"]) == {"purchase", "dropout"}
    # The channel's purchase effect is real and large here: far from 0.
    purchase = table[(table["process"] == "purchase") & (table["covariate"] == "channel[web]")]
    assert float(purchase["p_value"].iloc[0]) < 1e-6


def test_gamma_gamma_recovers_known_coefficients(spend_model):
    assert spend_model.convergence_["converged"]
    _within_three_standard_errors(spend_model, *SPEND_TRUTH)
    assert list(spend_model.coefficients_["process"]) == ["spend", "spend"]


def test_summary_carries_the_coefficients_as_json(fitted, spend_model):
    for model in [*fitted.values(), spend_model]:
        summary = json.loads(json.dumps(model.summary(), allow_nan=False))
        assert summary["settings"]["covariates"] == COVARIATES
        assert [row["covariate"] for row in summary["coefficients"]] == list(model.coefficients_["covariate"])
        assert summary["coefficients"][0]["coefficient"] == model.coefficients_["coefficient"].iloc[0]
        names = list(model.covariance_.index)
        assert len(names) == len(model.params_) + len(model.coefficients_)


# --- coefficients at 0: the plain model ------------------------------------


@pytest.mark.parametrize("name", list(TRUTH))
def test_likelihood_at_zero_coefficients_is_the_plain_likelihood_per_customer(plain, logs, name):
    model = PURCHASE_MODELS[name](covariates=COVARIATES)
    histories = group_histories(logs[name], COVARIATES)
    frequency, recency, age = histories.unique_arrays()
    patterns, pattern = _covariate_fit.patterns_of(histories.unique_design(COVARIATES))
    layout = _covariate_fit.CoefficientLayout(model.parameter_names, model._covariate_links, COVARIATES)
    params = plain[name].params_
    point = layout.start([params[key] for key in model.parameter_names])
    if name == "paretonbd":
        likelihood = _pareto_nbd.ParetoNBDLikelihood(frequency, recency, age, histories.counts, pattern=pattern)
        values = layout.individual(point, patterns)
        per_history = likelihood.per_history_by_pattern(values["r"], values["alpha"], values["s"], values["beta"])
        np.testing.assert_allclose(per_history, likelihood.per_history(list(params.values())), rtol=1e-12)
    else:
        modified = name == "mbgnbd"
        per_history = _beta_geometric.per_history(*layout.individual(point, patterns[pattern]).values(),
                                                  frequency, recency, age, modified)[0]
        reference = _beta_geometric.BetaGeometricLikelihood(frequency, recency, age, histories.counts, modified)
        np.testing.assert_allclose(per_history, reference.per_history(list(params.values()))[0], rtol=1e-12)
    total, _ = model._covariate_log_likelihood(layout, frequency, recency, age, histories.counts, pattern, patterns)
    assert total(point) == pytest.approx(plain[name].log_likelihood_, rel=1e-12)


def test_gamma_gamma_likelihood_at_zero_coefficients_is_the_plain_one(spend_log):
    statistics = spend_statistics(spend_log, COVARIATES)
    params = np.array([5.0, 3.0, 12.0])
    total, gradient, _ = _covariate_log_likelihood_and_derivatives(np.r_[params, 0.0, 0.0], statistics, COVARIATES)
    plain_total, plain_gradient = _log_likelihood_and_gradient(params, statistics)
    assert total == pytest.approx(plain_total, rel=1e-12)
    np.testing.assert_allclose(gradient[:3], plain_gradient, rtol=1e-10)


def _zeroed(model, plain_model):
    """``model`` with the plain fit's parameters and every coefficient 0."""
    zeroed = copy.deepcopy(model)
    zeroed.params_ = dict(plain_model.params_)
    zeroed.coefficients_ = zeroed.coefficients_.assign(coefficient=0.0)
    return zeroed


@pytest.mark.parametrize("name", list(TRUTH))
def test_predictions_at_zero_coefficients_equal_the_plain_model(fitted, plain, logs, name):
    zeroed, reference, features = _zeroed(fitted[name], plain[name]), plain[name], logs[name].iloc[:500]
    for method in (
        lambda model: model.expected_purchases(features, 10.0),
        lambda model: model.probability_alive(features),
        lambda model: model.churn_probability(features),
        lambda model: model.probability_of_purchases(features, 2, 8.0),
        lambda model: model.expected_purchases_by_horizon(features, [1.0, 4.0, 26.0]),
        lambda model: discounting.discounted_expected_purchases(model, features, 6, 4.35, 0.01),
    ):
        np.testing.assert_allclose(np.asarray(method(zeroed)), np.asarray(method(reference)), rtol=1e-9, atol=1e-14)
    np.testing.assert_allclose(zeroed.expected_purchases_new_customer([1.0, 10.0], {"channel[web]": 1.0, "age": 2.0}),
                               reference.expected_purchases_new_customer([1.0, 10.0]), rtol=1e-12)


def test_gamma_gamma_spend_at_zero_coefficients_equals_the_plain_model(spend_model, spend_log):
    reference = GammaGammaModel().fit(spend_log)
    zeroed = _zeroed(spend_model, reference)
    zeroed.population_mean_spend_ = reference.population_mean_spend_
    np.testing.assert_allclose(zeroed.expected_spend(spend_log), reference.expected_spend(spend_log), rtol=1e-12)


@pytest.mark.parametrize("name", ["paretonbd", "bgnbd"])
def test_a_covariate_unrelated_to_behaviour_leaves_the_baseline_at_the_plain_fit(name):
    features = simulated_purchases(name, seed=30, effects=False)
    with_covariates = PURCHASE_MODELS[name](covariates=COVARIATES).fit(features)
    without = PURCHASE_MODELS[name]().fit(features)
    for key, value in without.params_.items():
        assert abs(with_covariates.params_[key] - value) < 2 * without.standard_errors_[key], key
    assert np.all(np.abs(with_covariates.coefficients_["z"]) < 3.5)


# --- predictions with each customer's own parameters --------------------------


@pytest.mark.parametrize("name", list(TRUTH))
def test_predictions_use_each_customers_own_parameters(fitted, logs, name):
    model, features = fitted[name], logs[name].iloc[:300]
    expected = model.expected_purchases(features, 10.0)
    # Independently: a plain model carrying one customer's own parameters, customer by customer.
    design = features[COVARIATES].to_numpy()
    coefficients = model.coefficients_
    for row in range(0, 300, 37):
        own = dict(model.params_)
        for parameter in coefficients["parameter"].unique():
            values = coefficients[coefficients["parameter"] == parameter]["coefficient"].to_numpy()
            own[parameter] = _own(own[parameter], values, design[row], SIGNS[parameter])
        single = PURCHASE_MODELS[name]()
        single.params_ = own
        one = features.iloc[[row]]
        assert expected.iloc[row] == pytest.approx(single.expected_purchases(one, 10.0).iloc[0], rel=1e-10)
        assert model.probability_alive(one).iloc[0] == pytest.approx(single.probability_alive(one).iloc[0], rel=1e-10)


@pytest.mark.parametrize("name", list(TRUTH))
def test_grouped_histories_and_tables_give_the_same_predictions(fitted, logs, name):
    model, features = fitted[name], logs[name].iloc[:400]
    histories = group_histories(features, COVARIATES)
    pd.testing.assert_series_equal(model.expected_purchases(histories, 5.0), model.expected_purchases(features, 5.0))
    np.testing.assert_array_equal(model.expected_purchases_by_horizon(histories, [5.0]),
                                  model.expected_purchases_by_horizon(features, [5.0]))
    # The horizons at once equal one at a time.
    np.testing.assert_allclose(model.expected_purchases_by_horizon(features, [5.0])[:, 0],
                               model.expected_purchases(features, 5.0), rtol=1e-12)
    with pytest.raises(ValueError, match="grouped without the covariate"):
        model.expected_purchases(group_histories(features), 5.0)


@pytest.mark.parametrize("name", list(TRUTH))
def test_purchase_distribution_with_covariates_sums_to_one_with_the_expected_mean(fitted, logs, name):
    model, features = fitted[name], logs[name].iloc[:25]
    probabilities = np.column_stack([model.probability_of_purchases(features, n, 6.0) for n in range(40)])
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(probabilities @ np.arange(40), model.expected_purchases(features, 6.0), rtol=1e-5,
                               atol=1e-8)


def test_new_customer_expectations_per_pattern(fitted):
    model = fitted["paretonbd"]
    table = pd.DataFrame({"channel[web]": [0.0, 1.0], "age": [0.0, 0.0]}, index=["store", "web"])
    by_table = model.expected_purchases_new_customer(10.0, table)
    assert list(by_table.index) == ["store", "web"]
    assert by_table["store"] == pytest.approx(model.expected_purchases_new_customer(10.0))
    assert by_table["web"] == pytest.approx(model.expected_purchases_new_customer(10.0, {"channel[web]": 1, "age": 0}))
    # Web buys faster (positive purchase coefficient): more purchases.
    assert by_table["web"] > by_table["store"]
    grid = model.expected_purchases_new_customer(np.array([1.0, 10.0]), table)
    assert grid.shape == (2, 2)
    np.testing.assert_allclose(grid[:, 1], by_table.to_numpy())


def test_gamma_gamma_spend_scales_the_population_mean_by_exp_of_the_effect(spend_model, spend_log):
    newcomers = spend_log.iloc[:3].assign(frequency=0.0, monetary_value=0.0)
    design = newcomers[COVARIATES].to_numpy()
    effect = np.exp(design @ spend_model.coefficients_["coefficient"].to_numpy())
    np.testing.assert_allclose(spend_model.expected_spend(newcomers), spend_model.population_mean_spend_ * effect,
                               rtol=1e-12)


def test_gamma_gamma_hessian_matches_differences_of_its_gradient(spend_model, spend_log):
    statistics = spend_statistics(spend_log, COVARIATES)
    point = np.r_[list(spend_model.params_.values()), spend_model.coefficients_["coefficient"].to_numpy()]
    _, _, hessian = _covariate_log_likelihood_and_derivatives(point, statistics, COVARIATES)

    def gradient(values):
        return _covariate_log_likelihood_and_derivatives(values, statistics, COVARIATES, hessian=False)[1]

    numeric = _covariate_fit.hessian_from_gradient(gradient, point, [False] * 3 + [True] * 2)
    np.testing.assert_allclose(hessian, numeric, rtol=1e-5, atol=1e-6 * np.max(np.abs(hessian)))


@pytest.mark.parametrize("name", ["bgnbd", "mbgnbd"])
def test_beta_geometric_gradient_with_covariates_matches_finite_differences(fitted, logs, name):
    model = fitted[name]
    histories = group_histories(logs[name].iloc[:500], COVARIATES)
    frequency, recency, age = histories.unique_arrays()
    patterns, pattern = _covariate_fit.patterns_of(histories.unique_design(COVARIATES))
    layout = _covariate_fit.CoefficientLayout(model.parameter_names, model._covariate_links, COVARIATES)
    log_likelihood, gradient = model._covariate_log_likelihood(layout, frequency, recency, age, histories.counts,
                                                               pattern, patterns)
    point = np.r_[list(model.params_.values()), model.coefficients_["coefficient"].to_numpy()] * 1.1
    numeric = np.empty(len(point))
    for index in range(len(point)):
        step = np.zeros(len(point))
        step[index] = 1e-6 * max(1.0, abs(point[index]))
        numeric[index] = (log_likelihood(point + step) - log_likelihood(point - step)) / (2 * step[index])
    np.testing.assert_allclose(gradient(point), numeric, rtol=1e-5, atol=1e-4)


def test_covariates_must_be_in_the_features(logs):
    with pytest.raises(ValueError, match="missing covariate column.*'income'"):
        ParetoNBDModel(covariates=["income"]).fit(logs["paretonbd"])
    with pytest.raises(ValueError, match="covariate column 'channel' is not numeric"):
        BetaGeoModel(covariates=["channel"]).fit(logs["bgnbd"])
    with pytest.raises(ValueError, match="covariates must be a list"):
        ModifiedBetaGeoModel(covariates="age").fit(logs["mbgnbd"])
    with pytest.raises(ValueError, match="hold no covariate column"):
        GammaGammaModel(covariates=["age"]).fit(spend_statistics(simulated_spend(1, n=100)))
