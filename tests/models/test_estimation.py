"""The finite-difference derivatives behind every model's standard errors."""

from __future__ import annotations

import numpy as np

from models._estimation import gradient_and_hessian


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
