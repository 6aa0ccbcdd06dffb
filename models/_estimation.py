"""Standard errors and convergence checks at a maximum of the log-likelihood.

All models get their standard errors the same way, from the Hessian of the
*total* log-likelihood in the natural parameter scale, taken by central finite
differences. lifetimes only reports them for some fitters (not Pareto/NBD) and
on a log scale of a rescaled mean; doing it here makes them comparable across
models and independent of how the optimiser parametrised the problem.
"""

import warnings

import numpy as np
from sklearn.exceptions import ConvergenceWarning

# The optimum should be flat: a relative change of any parameter should move
# the mean log-likelihood per customer by less than this. lifetimes' BFGS stops
# at 1e-7 on the same scale; Nelder-Mead at tol=1e-7 lands near 1e-6.
RELATIVE_GRADIENT_WARNING = 1e-4

# Central second differences balance truncation error (h**2) against rounding
# error (eps / h**2); h near eps**(1/4) of the parameter minimises the sum.
RELATIVE_STEP = 1e-4


class ConvergenceError(RuntimeError):
    """The optimiser stopped without reaching a maximum of the likelihood."""


def gradient_and_hessian(log_likelihood, point, relative_step=RELATIVE_STEP):
    """Central finite-difference gradient and Hessian of a scalar function.

    Parameters
    ----------
    log_likelihood : callable
        Maps a 1-d float array of strictly positive parameters to a float.
    point : numpy.ndarray
        Where to differentiate; every entry must be positive.
    relative_step : float
        Step as a fraction of each parameter.

    Returns
    -------
    gradient : numpy.ndarray
    hessian : numpy.ndarray
    """
    point = np.asarray(point, dtype=np.float64)
    dimension = len(point)
    steps = relative_step * np.abs(point)
    centre = log_likelihood(point)

    def shifted(*moves):
        moved = point.copy()
        for index, sign in moves:
            moved[index] += sign * steps[index]
        return log_likelihood(moved)

    gradient = np.empty(dimension)
    hessian = np.empty((dimension, dimension))
    forward, backward = np.empty(dimension), np.empty(dimension)
    for i in range(dimension):
        forward[i], backward[i] = shifted((i, 1)), shifted((i, -1))
        gradient[i] = (forward[i] - backward[i]) / (2 * steps[i])
        hessian[i, i] = (forward[i] - 2 * centre + backward[i]) / steps[i] ** 2
        for j in range(i):
            # Second order like the four-point rule, but reusing the single-parameter moves:
            # two new evaluations per pair instead of four (a likelihood over millions of
            # customers is evaluated 1 + 2d + d(d-1) times, 21 rather than 33 for d = 4).
            hessian[i, j] = hessian[j, i] = (
                shifted((i, 1), (j, 1))
                + shifted((i, -1), (j, -1))
                - forward[i] - backward[i] - forward[j] - backward[j]
                + 2 * centre
            ) / (2 * steps[i] * steps[j])
    return gradient, hessian


def describe_optimum(log_likelihood, point, n_customers, optimizer, model_label, penalty=None):
    """Standard errors, covariance and convergence diagnostics at a fitted maximum.

    Parameters
    ----------
    log_likelihood : callable
        Total log-likelihood as a function of the parameter vector (natural scale).
    point : numpy.ndarray
        The parameters the optimiser returned.
    n_customers : int
        Number of customers the likelihood sums over.
    optimizer : str
        Name of the optimiser, reported in the diagnostics.
    model_label : str
        Model name used in warnings.
    penalty : callable, optional
        Penalty subtracted from the log-likelihood during fitting, in the same
        units. The gradient check and the Hessian then use the penalized
        objective, whose maximum the optimiser looked for; the reported
        log-likelihood stays unpenalized.

    Returns
    -------
    dict
        ``log_likelihood`` (float), ``covariance`` (2-d array, NaN when the
        Hessian is not negative definite), ``standard_errors`` (array) and
        ``convergence`` (JSON-serialisable dict).
    """
    point = np.asarray(point, dtype=np.float64)
    total = float(log_likelihood(point))

    def objective(values):
        return log_likelihood(values) - (penalty(values) if penalty is not None else 0.0)

    gradient, hessian = gradient_and_hessian(objective, point)
    # theta * dLL/dtheta is the change per relative change of a parameter; per
    # customer it does not grow with the size of the data.
    relative_gradient = float(np.max(np.abs(gradient * point)) / max(n_customers, 1))
    try:
        # Cholesky both tests for a proper maximum and inverts stably.
        cholesky = np.linalg.cholesky(-hessian)
        inverse_cholesky = np.linalg.inv(cholesky)
        covariance = inverse_cholesky.T @ inverse_cholesky
        negative_definite = True
    except np.linalg.LinAlgError:
        covariance = np.full_like(hessian, np.nan)
        negative_definite = False
    standard_errors = np.sqrt(np.diag(covariance))

    if relative_gradient > RELATIVE_GRADIENT_WARNING:
        warnings.warn(
            f"{model_label}: the fit stopped where the log-likelihood is not flat "
            f"(relative gradient {relative_gradient:.2g} per customer); "
            "try a smaller tol or a larger max_iter",
            ConvergenceWarning,
            stacklevel=3,
        )
    if not negative_definite:
        warnings.warn(
            f"{model_label}: the Hessian of the log-likelihood is not negative definite at the fit; "
            "the standard errors are NaN (the maximum may be on a ridge or at a boundary)",
            ConvergenceWarning,
            stacklevel=3,
        )
    convergence = {
        "optimizer": optimizer,
        "relative_gradient": relative_gradient,
        "hessian_negative_definite": negative_definite,
        "converged": bool(relative_gradient <= RELATIVE_GRADIENT_WARNING and negative_definite),
    }
    return {
        "log_likelihood": total,
        "covariance": covariance,
        "standard_errors": standard_errors,
        "convergence": convergence,
    }


def json_number(value):
    """A float for JSON summaries, with None for NaN and infinities (strict JSON has neither)."""
    value = float(value)
    return value if np.isfinite(value) else None


def fitted_summary(estimator, **extra):
    """The JSON-serialisable description every fitted estimator gives of itself.

    ``extra`` holds model-specific figures (numbers are made JSON-safe: non-finite → None).
    """
    return {
        "model": estimator.model_name,
        "estimator": type(estimator).__name__,
        "settings": estimator.get_params(),
        "params": {name: json_number(value) for name, value in estimator.params_.items()},
        "standard_errors": {name: json_number(value) for name, value in estimator.standard_errors_.items()},
        "log_likelihood": json_number(estimator.log_likelihood_),
        "n_customers": estimator.n_customers_,
        "n_unique_rows": estimator.n_unique_rows_,
        **{name: json_number(value) for name, value in extra.items()},
        "convergence": dict(estimator.convergence_),
    }
