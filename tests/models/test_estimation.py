"""The finite-difference derivatives behind every model's standard errors, and the shared estimator base."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.exceptions import NotFittedError

from models._estimation import MaximumLikelihoodEstimator, describe_optimum, gradient_and_hessian


def smooth_function(x):
    # Curvature in every direction and every pair, on a scale like a log-likelihood's.
    return float(-1e5 * (np.log(x[0]) * x[1] ** 2 + np.exp(0.3 * x[2] * x[3]) + x[0] * x[3] ** 3 - x[1] * x[2]))


def exact_derivatives(x):
    x0, x1, x2, x3 = x
    e = np.exp(0.3 * x2 * x3)
    gradient = -1e5 * np.array([x1**2 / x0 + x3**3, 2 * x1 * np.log(x0) - x2, 0.3 * x3 * e - x1, 0.3 * x2 * e + 3 * x0 * x3**2])
    hessian = -1e5 * np.array([
        [-(x1**2) / x0**2, 2 * x1 / x0, 0.0, 3 * x3**2],
        [2 * x1 / x0, 2 * np.log(x0), -1.0, 0.0],
        [0.0, -1.0, 0.09 * x3**2 * e, 0.3 * e + 0.09 * x2 * x3 * e],
        [3 * x3**2, 0.0, 0.3 * e + 0.09 * x2 * x3 * e, 0.09 * x2**2 * e + 6 * x0 * x3],
    ])
    return gradient, hessian


def test_gradient_and_hessian_match_the_exact_derivatives():
    point = np.array([0.6, 4.2, 0.8, 2.5])
    gradient, hessian = gradient_and_hessian(smooth_function, point)
    exact_gradient, exact_hessian = exact_derivatives(point)
    np.testing.assert_allclose(gradient, exact_gradient, rtol=1e-6)
    # Every entry, off-diagonal ones included, to second order in the step.
    np.testing.assert_allclose(hessian, exact_hessian, rtol=1e-5, atol=1e-5 * np.abs(exact_hessian).max())
    assert np.array_equal(hessian, hessian.T)


def test_the_likelihood_is_evaluated_once_per_needed_point():
    calls = []

    def counted(x):
        calls.append(x.copy())
        return smooth_function(x)

    gradient_and_hessian(counted, np.array([0.6, 4.2, 0.8, 2.5]))
    assert len(calls) == 1 + 2 * 4 + 4 * 3  # centre, ±each parameter, ++ and -- per pair


class ExponentialRateModel(MaximumLikelihoodEstimator):
    """Waiting times ~ Exponential(rate): a likelihood with a closed-form maximum and standard error."""

    model_name = "exponential"
    parameter_names = ("rate",)

    def fit(self, waits):
        self._check_settings()
        waits = np.asarray(waits, dtype=np.float64)
        rate = len(waits) / waits.sum()  # the MLE, n / sum(x)
        optimum = describe_optimum(
            lambda values: len(waits) * np.log(values[0]) - values[0] * waits.sum(),
            np.array([rate]),
            len(waits),
            optimizer="closed form",
            model_label="ExponentialRateModel",
        )
        self._store_optimum(np.array([rate]), optimum, len(waits), len(np.unique(waits)), iterations=0)
        return self


def test_the_base_stores_a_maximum_as_the_fitted_attributes():
    waits = np.array([0.5, 1.0, 1.5, 2.0, 2.0, 5.0])
    model = ExponentialRateModel().fit(waits)
    rate = 6 / 12.0
    assert model.params_ == {"rate": rate}
    # Fisher information n / rate**2, so the standard error is rate / sqrt(n).
    assert model.standard_errors_["rate"] == pytest.approx(rate / np.sqrt(6), rel=1e-6)
    assert model.covariance_.loc["rate", "rate"] == pytest.approx(rate**2 / 6, rel=1e-6)
    assert model.log_likelihood_ == pytest.approx(6 * np.log(rate) - rate * 12.0, rel=1e-12)
    assert (model.n_customers_, model.n_unique_rows_) == (6, 5)
    assert model.convergence_["converged"] is True and model.convergence_["iterations"] == 0
    assert model.convergence_["optimizer"] == "closed form"

    summary = json.loads(json.dumps(model.summary(), allow_nan=False))
    assert summary["model"] == "exponential" and summary["estimator"] == "ExponentialRateModel"
    assert summary["settings"] == {"penalizer": 0.0, "initial_params": None, "tol": 1e-7, "max_iter": None, "covariates": None}
    assert summary["params"] == {"rate": rate}
    assert list(summary)[-1] == "convergence"


def test_the_base_refuses_a_summary_before_fit_and_bad_settings_at_fit():
    with pytest.raises(NotFittedError):
        ExponentialRateModel().summary()
    with pytest.raises(ValueError, match="penalizer must be a non-negative number"):
        ExponentialRateModel(penalizer=-1.0).fit([1.0])
    # The constructor only stores: a bad setting is accepted until fit, and cloned as given.
    assert clone(ExponentialRateModel(tol=-1.0)).get_params()["tol"] == -1.0

