"""Maximum likelihood with static covariates: where the coefficients sit, and the optimiser.

A model with covariates has its plain parameters (the baseline, at design row 0) followed by
one coefficient per (linked parameter, design column); a linked parameter theta becomes
theta_i = theta exp(sign c . x_i) for customer i (the links are in :mod:`models.covariates`).
The fit starts from the plain model's maximum with every coefficient 0 (where the two
likelihoods are equal), runs L-BFGS-B on log-parameters and raw coefficients, and finishes
with Newton steps, whose finite-difference Hessian takes absolute steps for the coefficients
(a step relative to a coefficient is 0 at 0).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.optimize import minimize
from scipy.stats import norm

from ._estimation import (
    ConvergenceError,
    gradient_and_hessian,
)
from ._optimum import newton_steps
from ._validation import group_rows


class CoefficientLayout:
    """The full parameter vector of a model with covariates.

    Parameters
    ----------
    base_names : sequence of str
        The plain model's parameters, in order.
    links : sequence of (process, parameter, sign)
        Each linked parameter: the process it belongs to (``purchase``, ``dropout``,
        ``spend``), its name among ``base_names``, and the sign of the exponent.
    covariates : sequence of str
        Design columns; each linked parameter has one coefficient per column, in this order.
    """

    def __init__(self, base_names, links, covariates):
        self.base_names = tuple(base_names)
        self.links = tuple(links)
        self.covariates = tuple(covariates)
        self.n_base = len(self.base_names)
        self.names = [*self.base_names,
                      *(f"{parameter}:{covariate}" for _, parameter, _ in self.links for covariate in self.covariates)]
        self.real_line = np.array([False] * self.n_base + [True] * (len(self.names) - self.n_base))

    def start(self, base) -> np.ndarray:
        """The plain parameters ``base`` with every coefficient 0."""
        return np.concatenate([np.asarray(base, dtype=np.float64), np.zeros(len(self.names) - self.n_base)])

    def coefficients(self, point) -> dict[str, np.ndarray]:
        """Each linked parameter's coefficient vector, by parameter name."""
        point = np.asarray(point, dtype=np.float64)
        k = len(self.covariates)
        return {parameter: point[self.n_base + position * k:self.n_base + (position + 1) * k]
                for position, (_, parameter, _) in enumerate(self.links)}

    def individual(self, point, design) -> dict:
        """The parameters of each row of ``design`` (rows x covariates): a float for an unlinked
        parameter, an array (one per row) for a linked one."""
        point = np.asarray(point, dtype=np.float64)
        design = np.asarray(design, dtype=np.float64)
        values: dict = {name: float(value) for name, value in zip(self.base_names, point[:self.n_base])}
        coefficients = self.coefficients(point)
        for _, parameter, sign in self.links:
            values[parameter] = values[parameter] * np.exp(sign * (design @ coefficients[parameter]))
        return values

    def table(self, point, standard_errors) -> pd.DataFrame:
        """``coefficients_``: one row per coefficient with its standard error, z and Wald p-value."""
        point = np.asarray(point, dtype=np.float64)
        errors = np.asarray(standard_errors, dtype=np.float64)
        records = []
        position = self.n_base
        for process, parameter, _ in self.links:
            for covariate in self.covariates:
                value, error = float(point[position]), float(errors[position])
                z = value / error if error > 0 else float("nan")
                records.append({
                    "process": process,
                    "parameter": parameter,
                    "covariate": covariate,
                    "coefficient": value,
                    "standard_error": error,
                    "z": z,
                    "p_value": float(2 * norm.sf(abs(z))) if np.isfinite(z) else float("nan"),
                })
                position += 1
        return pd.DataFrame.from_records(
            records, columns=["process", "parameter", "covariate", "coefficient", "standard_error", "z", "p_value"]
        )


def patterns_of(design) -> tuple[np.ndarray, np.ndarray]:
    """The distinct rows of ``design`` (patterns x covariates) and each row's pattern."""
    design = np.asarray(design, dtype=np.float64)
    if design.shape[1] == 0:
        return np.zeros((1, 0)), np.zeros(len(design), dtype=np.intp)
    unique, inverse = group_rows([design[:, column] for column in range(design.shape[1])])
    return np.column_stack(unique) if len(design) else np.zeros((0, design.shape[1])), np.asarray(inverse)


def maximise(log_likelihood, start, real_line, n_customers, penalty=None, tol=1e-7, max_iter=None,
             gradient=None, derivatives=None, model_label="model"):
    """The maximum of ``log_likelihood`` (minus ``penalty``) from ``start``.

    Parameters
    ----------
    log_likelihood : callable
        Total log-likelihood of the full parameter vector (natural scale).
    start : numpy.ndarray
        Where to start: positive parameters, then coefficients.
    real_line : numpy.ndarray of bool
        Which entries are coefficients (unbounded); the others are optimised on their log.
    n_customers : float
        Customers summed over: the objective is per customer, so tolerances mean the same at
        any size.
    penalty : callable, optional
        Subtracted from the log-likelihood (a function of the full vector).
    gradient : callable, optional
        The gradient of the penalized objective in the natural scale, for a model that has it
        in closed form; default forward differences.
    derivatives : callable, optional
        The gradient and Hessian of the penalized objective, for the Newton steps; default
        finite differences of the objective.

    Returns
    -------
    point : numpy.ndarray
        The maximum (natural scale), polished by Newton steps.
    at_maximum : bool
        Whether the point reached is flat per customer with a negative-definite Hessian.

    Raises
    ------
    ConvergenceError
        When the optimiser ends on a non-finite point or objective.
    """
    real_line = np.asarray(real_line, dtype=bool)
    positive = ~real_line

    def objective_of(values):
        value = log_likelihood(values)
        return value - (penalty(values) if penalty is not None else 0.0)

    def natural(u):
        values = u.copy()
        values[positive] = np.exp(u[positive])
        return values

    def minimised(u):
        values = natural(u)
        if not np.all(np.isfinite(values)):
            return np.inf
        value = objective_of(values)
        return -value / n_customers if np.isfinite(value) else np.inf

    jac: object = "2-point"
    if gradient is not None:
        def minimised_with_gradient(u):
            values = natural(u)
            value = objective_of(values) if np.all(np.isfinite(values)) else np.nan
            if not np.isfinite(value):
                return np.inf, np.zeros_like(u)
            derivative = np.asarray(gradient(values), dtype=np.float64)
            if not np.all(np.isfinite(derivative)):
                return np.inf, np.zeros_like(u)
            # Chain rule through the log of the positive parameters.
            derivative = np.where(positive, derivative * values, derivative)
            return -value / n_customers, -derivative / n_customers

        function, jac = minimised_with_gradient, True
    else:
        function = minimised
    start = np.asarray(start, dtype=np.float64)
    u0 = start.copy()
    u0[positive] = np.log(start[positive])
    options = {"ftol": tol * 1e-3, "gtol": tol * 1e-2, "maxiter": max_iter or 1000}
    with np.errstate(all="ignore"):
        result = minimize(function, u0, method="L-BFGS-B", jac=jac, options=options)
    point = natural(result.x)
    if not (np.all(np.isfinite(point)) and np.isfinite(result.fun)):
        raise ConvergenceError(f"{model_label}: the optimiser did not converge with covariates ({result.message}); "
                               "try fewer covariates or a small penalizer")
    with np.errstate(all="ignore"):
        return newton_polish(objective_of, point, real_line, n_customers, derivatives)


def hessian_from_gradient(gradient, point, real_line, relative_step=1e-6) -> np.ndarray:
    """The Hessian by central differences of an analytic ``gradient``, symmetrised: first
    differences carry the rounding of the gradient over the step, where second differences
    of the log-likelihood carry its rounding over the squared step. Steps are relative for
    positive parameters and absolute near 0 for coefficients (``real_line``)."""
    point = np.asarray(point, dtype=np.float64)
    real_line = np.asarray(real_line, dtype=bool)
    steps = relative_step * np.where(real_line, np.maximum(1.0, np.abs(point)), np.abs(point))
    columns = []
    for index, step in enumerate(steps):
        moved = point.copy()
        moved[index] += step
        forward = np.asarray(gradient(moved), dtype=np.float64)
        moved[index] -= 2 * step
        backward = np.asarray(gradient(moved), dtype=np.float64)
        columns.append((forward - backward) / (2 * step))
    hessian = np.column_stack(columns)
    return (hessian + hessian.T) / 2


def penalty_gradient(penalty, values) -> np.ndarray:
    """Central differences of a quadratic ``penalty`` (exact but for rounding), with absolute
    steps where a value is 0 (a coefficient the penalty does not read)."""
    values = np.asarray(values, dtype=np.float64)
    gradient = np.empty(len(values))
    for index in range(len(values)):
        step = np.zeros(len(values))
        step[index] = 1e-4 * max(abs(values[index]), 1.0)
        gradient[index] = (penalty(values + step) - penalty(values - step)) / (2 * step[index])
    return gradient


def newton_polish(objective, point, real_line, n_customers, derivatives=None, steps=6) -> tuple[np.ndarray, bool]:
    """Newton steps on ``objective`` from ``point`` while it rises and the positive parameters
    stay positive; and whether the end is a maximum (flat per customer, negative-definite
    Hessian). Quasi-Newton methods stop once the objective changes little, which on the
    ridges between shapes and scales leaves the parameters short of the maximum.
    ``derivatives`` (gradient and Hessian in closed form) replaces finite differences."""
    real_line = np.asarray(real_line, dtype=bool)

    def differentiate(values):
        if derivatives is not None:
            return tuple(np.asarray(value, dtype=np.float64) for value in derivatives(values))
        return gradient_and_hessian(objective, values, real_line=real_line)

    return newton_steps(objective, differentiate, point, n_customers, real_line, steps)
