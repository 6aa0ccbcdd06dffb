"""Finding a maximum of the likelihood: what our own fits (Pareto/NBD, BG/NBD, MBG/NBD) share.

Each model brings its likelihood of distinct histories (an object called with the parameter
vector, with ``weights`` the customers per history, and, when it has one in closed form, a
``value_and_gradient``), a deterministic start computed from the data, fallback starts, and
what each parameter running away means. Here, once for all of them:

* **L-BFGS-B on log-parameters** (:func:`fit`): positive parameters without bounds, and steps
  that are relative changes, which suit scales that differ by orders of magnitude. The
  analytic gradient when the likelihood has one, forward differences otherwise.
* **Newton polish and the "at a maximum" check** (:func:`newton_polish`).
* **Bounded multi-start** (:func:`maximise`): the model's start, then each fallback start,
  until one ends at a maximum; when none does, the parameter that ran away and what that
  means (:func:`ran_away`), in a one-line :class:`~models._estimation.ConvergenceError`.

The estimator then describes the maximum (standard errors, gradient check) with
:func:`~models._estimation.describe_optimum`, as for every model.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
from scipy.optimize import minimize

from ._estimation import (
    RELATIVE_GRADIENT_WARNING,
    ConvergenceError,
    gradient_and_hessian,
    relative_gradient_per_customer,
)

# When no start reaches a maximum, a parameter beyond this factor of its start is named as
# having run away (to 0 or to infinity): the likelihood keeps rising towards a boundary where
# the model degenerates (e.g. nobody drops out).
RUNAWAY = 1e3
# A fallback start moves the first start's parameters by these factors, up and down.
FALLBACK_FACTOR = 10.0

Penalty = Callable[[np.ndarray], float] | None
# What a purchase model's r and alpha running away say, the same for every model (r -> 0 with
# alpha -> infinity is a mean purchase rate r / alpha of 0; r and alpha -> infinity together,
# a Gamma of rates concentrated on one value).
NO_PURCHASE_RATES = "the purchase rates are not identified (too few repeat purchases within the data)"
SAME_PURCHASE_RATES = "the purchase rates look the same for every customer, so their spread is not identified"
PURCHASE_SCALE = "the purchase rates' scale is not identified"


def dot(first: np.ndarray, second: np.ndarray) -> float:
    """The sum of products of two vectors, on one core: the likelihoods' weighted sums.

    Not np.dot: OpenBLAS splits a dot product of 158k values between its threads, and with the
    cores busy (tests, another fit) their hand-offs made each one 2-8 ms instead of 0.1 ms,
    most of an evaluation of the BG/NBD likelihood. numpy's own loop (einsum) takes one core.
    """
    return float(np.einsum("i,i->", first, second))


def moments(frequency, age, weights) -> tuple[float, float, float]:
    """Per customer: the mean repeat purchases, the mean age, and the time per repeat purchase
    (sum T / sum x, the purchase rate's scale, 1 purchase assumed when nobody bought again)."""
    weights = np.asarray(weights, dtype=np.float64)
    customers = float(weights.sum())
    purchases = dot(weights, np.asarray(frequency, dtype=np.float64))
    exposure = dot(weights, np.asarray(age, dtype=np.float64))
    return purchases / customers, exposure / customers, exposure / max(purchases, 1.0)


def fallback_starts(start: np.ndarray, model_start: np.ndarray, scales: Sequence[bool]) -> list[np.ndarray]:
    """Where to start again when the first start fails or runs away: lifetimes' own start for
    the model (``model_start``), then the first start with its ``scales`` parameters
    :data:`FALLBACK_FACTOR` times larger and smaller. Bounded: four starts in all."""
    factor = np.where(np.asarray(scales, dtype=bool), FALLBACK_FACTOR, 1.0)
    start = np.asarray(start, dtype=np.float64)
    return [np.asarray(model_start, dtype=np.float64), start * factor, start / factor]


def _penalty_gradient(penalty: Callable[[np.ndarray], float], values: np.ndarray) -> np.ndarray:
    # lifetimes' penalty is quadratic in the parameters, where central differences are exact
    # but for rounding: its own gradient is not written a second time here.
    gradient = np.empty(len(values))
    for index in range(len(values)):
        step = np.zeros(len(values))
        step[index] = 1e-4 * values[index]
        gradient[index] = (penalty(values + step) - penalty(values - step)) / (2 * step[index])
    return gradient


# Central first differences of a closed-form gradient balance truncation error (h**2) against
# rounding (eps / h): h near eps**(1/3) of the parameter.
GRADIENT_RELATIVE_STEP = 1e-5


def derivatives(likelihood, penalty: Penalty = None) -> Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """The gradient and Hessian of the objective (``likelihood`` minus ``penalty``) as a function
    of the parameters, for :func:`newton_polish` and the estimators' ``describe_optimum``.

    With a closed-form gradient (``likelihood.value_and_gradient``), that gradient and the
    Hessian as its central differences, symmetrised: 1 + 2d evaluations (9 for d = 4) where
    second differences of the value take 21, and a Hessian without their rounding divided by
    the squared step. Otherwise :func:`~models._estimation.gradient_and_hessian`.
    """

    def objective(values):
        return likelihood(values) - (penalty(values) if penalty is not None else 0.0)

    if not hasattr(likelihood, "value_and_gradient"):
        return lambda point: gradient_and_hessian(objective, point)

    def gradient(values):
        result = likelihood.value_and_gradient(values)[1]
        return result if penalty is None else result - _penalty_gradient(penalty, values)

    def at(point):
        point = np.asarray(point, dtype=np.float64)
        columns = []
        for index in range(len(point)):
            step = np.zeros(len(point))
            step[index] = GRADIENT_RELATIVE_STEP * abs(point[index])
            columns.append((gradient(point + step) - gradient(point - step)) / (2 * step[index]))
        hessian = np.column_stack(columns)
        return gradient(point), (hessian + hessian.T) / 2

    return at


def fit(likelihood, start, penalty: Penalty = None, tol: float = 1e-7, max_iter: int | None = None):
    """Maximise ``likelihood`` (minus ``penalty``, a function of the parameters) from ``start``,
    with L-BFGS-B on log-parameters. Returns scipy's result, with ``x`` on the natural scale.

    The objective is per customer, so tolerances mean the same at any size: ``ftol`` is
    ``tol * 1e-3``, ``gtol`` ``tol * 1e-2``.
    """
    n_customers = float(likelihood.weights.sum())
    analytic = hasattr(likelihood, "value_and_gradient")

    def objective(log_values):
        values = np.exp(log_values)
        if not np.all(np.isfinite(values)):
            return (np.inf, np.zeros(len(values))) if analytic else np.inf
        if not analytic:
            value = likelihood(values) - (penalty(values) if penalty is not None else 0.0)
            return -value / n_customers if np.isfinite(value) else np.inf
        value, gradient = likelihood.value_and_gradient(values)
        if penalty is not None:
            value, gradient = value - penalty(values), gradient - _penalty_gradient(penalty, values)
        if not (np.isfinite(value) and np.all(np.isfinite(gradient))):
            return np.inf, np.zeros(len(values))
        # d/d log(theta) = theta * d/d theta
        return -value / n_customers, -gradient * values / n_customers

    options = {"ftol": tol * 1e-3, "gtol": tol * 1e-2, "maxiter": max_iter or 1000}
    # Without a closed-form gradient, forward differences (five evaluations a gradient, where
    # central ones take nine): near the maximum their error is what newton_polish removes.
    result = minimize(objective, np.log(np.asarray(start, dtype=np.float64)), method="L-BFGS-B",
                      jac=True if analytic else "2-point", options=options)
    result.x = np.exp(result.x)
    return result


def newton_polish(likelihood, point: np.ndarray, penalty: Penalty = None, steps: int = 4) -> tuple[np.ndarray, bool]:
    """Newton steps from a quasi-Newton result, kept while the objective rises; and whether the
    point reached is a maximum (the gradient flat per customer, as the estimators check it,
    and the Hessian negative definite).

    L-BFGS-B stops once the objective changes by less than its tolerance, and on the ridge
    between r and alpha that can leave the parameters 1e-5 (relative) from the maximum with
    the log-likelihood equal to 1e-11: a few Newton steps with the Hessian the standard errors
    use (:func:`derivatives`) reach the maximum to the derivatives' precision.
    """

    def objective(values):
        return likelihood(values) - (penalty(values) if penalty is not None else 0.0)

    return newton_steps(objective, derivatives(likelihood, penalty), point, float(likelihood.weights.sum()),
                        steps=steps)


def newton_steps(objective, differentiate, point, n_customers: float, real_line=None,
                 steps: int = 4) -> tuple[np.ndarray, bool]:
    """Newton steps on ``objective`` from ``point`` (``differentiate`` gives its gradient and
    Hessian), kept while it rises and the positive parameters stay positive (``real_line``
    marks the others, e.g. covariate coefficients); and whether the end is a maximum: the
    gradient flat per customer (:func:`relative_gradient_per_customer`) and the Hessian
    negative definite. The one polish of every fit, with and without covariates."""
    real_line = np.zeros(len(point), dtype=bool) if real_line is None else np.asarray(real_line, dtype=bool)
    best = np.asarray(point, dtype=np.float64)
    best_value = objective(best)
    gradient, hessian = differentiate(best)
    for _ in range(steps):
        try:
            candidate = best - np.linalg.solve(hessian, gradient)
        except np.linalg.LinAlgError:
            break
        if not (np.all(np.isfinite(candidate)) and np.all(candidate[~real_line] > 0)):
            break
        value = objective(candidate)
        if not value > best_value:
            break
        best, best_value = candidate, value
        gradient, hessian = differentiate(best)
    flat = relative_gradient_per_customer(gradient, best, n_customers, real_line) <= RELATIVE_GRADIENT_WARNING
    try:
        np.linalg.cholesky(-hessian)
        negative_definite = True
    except np.linalg.LinAlgError:
        negative_definite = False
    return best, bool(flat and negative_definite and np.isfinite(best_value))


Meanings = Mapping[str, tuple[str, str]]


def ran_away(point: np.ndarray, start: np.ndarray, names: Sequence[str], meanings: Meanings) -> str | None:
    """What the parameters that left their start by more than :data:`RUNAWAY` mean, or None.

    ``meanings`` says, for each parameter name, what its running away to 0 and to infinity
    says about the data.
    """
    with np.errstate(all="ignore"):
        ratio = point / start
    gone = [(name, value, bool(factor > 1)) for name, value, factor in zip(names, point, ratio)
            if not np.isfinite(value) or factor > RUNAWAY or factor < 1 / RUNAWAY]
    if not gone:
        return None
    parameters = " and ".join(f"{name} ran away to {value:.3g}" for name, value, _ in gone)
    reasons = "; ".join(dict.fromkeys(meanings[name][upwards] for name, _, upwards in gone))
    return f"{parameters}: {reasons}"


def maximise(likelihood, starts: Sequence[np.ndarray], model_name: str, names: Sequence[str],
             meanings: Meanings, penalty: Penalty = None, tol: float = 1e-7,
             max_iter: int | None = None) -> np.ndarray:
    """The maximum-likelihood parameters, from the first of ``starts`` that reaches a maximum.

    From each start in turn (the model's own, then its fallbacks) :func:`fit`, then
    :func:`newton_polish`, which also says whether the point is a maximum; the first maximum
    is returned (the estimator checks the gradient and the Hessian there again, for its
    diagnostics). When the caller set ``max_iter`` and the optimiser reached it, the point
    where it stopped is returned as it is: the estimator's gradient check reports it short of
    the maximum, as scikit-learn's estimators warn at their iteration limit.

    Raises
    ------
    ConvergenceError
        When every start fails, naming the parameters that ran away from the first start
        where some did and what that means (``meanings``), or else scipy's reason for the
        first start; one line, prefixed by ``model_name``.
    """
    attempts = []
    for point in starts:
        with np.errstate(all="ignore"):
            result = fit(likelihood, point, penalty, tol, max_iter)
        finite = bool(np.all(np.isfinite(result.x)) and np.isfinite(result.fun))
        if max_iter is not None and result.status == 1 and finite:
            return result.x
        if finite:
            with np.errstate(all="ignore"):
                polished, at_maximum = newton_polish(likelihood, result.x, penalty)
            if at_maximum:
                return polished
            result.x = polished
        attempts.append((result, ran_away(result.x, point, names, meanings) if finite else None))
    # A start close to the boundary the likelihood rises towards may stop short of RUNAWAY
    # times its start (seen without any repeat purchase: alpha 955 times its start, from the
    # data's start); a farther start shows the direction.
    runaway = next((reason for _, reason in attempts if reason is not None), None)
    if runaway is not None:
        raise ConvergenceError(f"{model_name}: {runaway} (from {len(attempts)} starts)")
    result = attempts[0][0]
    raise ConvergenceError(f"{model_name}: the optimiser did not converge from {len(attempts)} starts "
                           f"({result.message}); try other initial_params, a larger max_iter or a small penalizer")
