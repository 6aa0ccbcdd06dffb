"""Maximum-likelihood estimation shared by every model: the estimator base class, and
standard errors and convergence checks at the maximum.

All models get their standard errors the same way, from the Hessian of the
*total* log-likelihood in the natural parameter scale, taken by central finite
differences or, where a model has it (Gamma-Gamma), in closed form. lifetimes
only reports them for some fitters (not Pareto/NBD) and on a log scale of a rescaled mean; doing it here makes them comparable across
models and independent of how the optimiser parametrised the problem.
"""

import copy
import math
import warnings
from collections.abc import Mapping

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils.validation import check_is_fitted

from ._validation import check_settings
from .covariates import check_covariates

# The optimum should be flat: a relative change of any parameter should move
# the mean log-likelihood per customer by less than this. lifetimes' BFGS stops
# at 1e-7 on the same scale; Nelder-Mead at tol=1e-7 lands near 1e-6.
RELATIVE_GRADIENT_WARNING = 1e-4

# Central second differences balance truncation error (h**2) against rounding
# error (eps / h**2); h near eps**(1/4) of the parameter minimises the sum.
RELATIVE_STEP = 1e-4


class ConvergenceError(RuntimeError):
    """The optimiser stopped without reaching a maximum of the likelihood."""


def gradient_and_hessian(log_likelihood, point, relative_step=RELATIVE_STEP, real_line=None):
    """Central finite-difference gradient and Hessian of a scalar function.

    Parameters
    ----------
    log_likelihood : callable
        Maps a 1-d float array of parameters to a float.
    point : numpy.ndarray
        Where to differentiate; every entry must be positive, but those marked ``real_line``.
    relative_step : float
        Step as a fraction of each positive parameter.
    real_line : numpy.ndarray of bool, optional
        Parameters on the whole real line (covariate coefficients). A step relative to the
        value would be 0 at a coefficient of 0, so theirs is ``relative_step`` times
        max(1, |value|): absolute near 0, on the scale of standardised covariates.

    Returns
    -------
    gradient : numpy.ndarray
    hessian : numpy.ndarray
    """
    point = np.asarray(point, dtype=np.float64)
    dimension = len(point)
    steps = relative_step * np.abs(point)
    if real_line is not None:
        real_line = np.asarray(real_line, dtype=bool)
        steps[real_line] = relative_step * np.maximum(1.0, np.abs(point[real_line]))
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


def relative_gradient_per_customer(gradient, point, n_customers, real_line=None) -> float:
    """The largest ``theta * dLL/dtheta`` per customer: the change of the log-likelihood per
    relative change of a parameter, which does not grow with the size of the data. A fit is
    flat at most :data:`RELATIVE_GRADIENT_WARNING`. For parameters marked ``real_line``
    (coefficients of standardised or 0/1 covariates, 0 when there is no effect) the change
    per unit change, ``dLL/dtheta``: a relative change of 0 would hide any slope there."""
    scale = np.abs(np.asarray(point, dtype=np.float64))
    if real_line is not None:
        scale = np.where(np.asarray(real_line, dtype=bool), 1.0, scale)
    return float(np.max(np.abs(np.asarray(gradient)) * scale) / max(n_customers, 1))


def describe_optimum(log_likelihood, point, n_customers, optimizer, model_label, penalty=None, derivatives=None,
                     real_line=None):
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
    derivatives : callable, optional
        Maps the parameter vector to the gradient and Hessian of the objective (the
        log-likelihood minus the penalty), for a model that has them in closed form (or
        a closed-form gradient: ``models._optimum.derivatives``).
        Default: central finite differences (:func:`gradient_and_hessian`), whose
        Hessian carries the rounding of the log-likelihood divided by the squared step,
        so a sum taken in another order moves the standard errors in their fourth digit.
    real_line : numpy.ndarray of bool, optional
        Parameters on the whole real line (covariate coefficients): differentiated with an
        absolute step and checked for flatness per unit (:func:`gradient_and_hessian`,
        :func:`relative_gradient_per_customer`).

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

    if derivatives is None:
        gradient, hessian = gradient_and_hessian(objective, point, real_line=real_line)
    else:
        gradient, hessian = (np.asarray(values, dtype=np.float64) for values in derivatives(point))
    relative_gradient = relative_gradient_per_customer(gradient, point, n_customers, real_line)
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


class MaximumLikelihoodEstimator(BaseEstimator):
    """What every model fitted by maximum likelihood shares: settings, fitted attributes, summary.

    A subclass sets ``model_name`` and ``parameter_names``, and writes its own likelihood,
    ``fit`` and predictions. Its ``fit`` checks the settings with :meth:`_check_settings`,
    maximises the likelihood, describes the maximum with :func:`describe_optimum` and hands
    that to :meth:`_store_optimum`, which sets the attributes below. Predictions guard with
    ``sklearn.utils.validation.check_is_fitted``, which asks :meth:`__sklearn_is_fitted__`.

    Parameters
    ----------
    penalizer : float, default 0.0
        L2 penalty on the parameters; 0 gives the maximum-likelihood estimate.
    initial_params : dict of str to float, optional
        Starting values of the optimiser, one per name in ``parameter_names``.
    tol : float, default 1e-7
        Tolerance of the optimiser.
    max_iter : int, optional
        Iteration limit of the optimiser; None keeps its default.
    covariates : sequence of str, optional
        Design columns (:class:`~models.covariates.CovariateEncoder`) whose coefficients scale
        the model's parameters per customer (see :mod:`models.covariates`); None or empty
        gives the plain model.

    Each model's docstring says what these mean for its optimiser. ``get_params`` (what the
    pipeline logs as MLflow params) returns the constructor's arguments, as in scikit-learn;
    a subclass with more settings lists them all in its own ``__init__``.

    Attributes
    ----------
    params_ : dict of str to float
        The parameters at the maximum, by name.
    standard_errors_ : dict of str to float
        Asymptotic standard errors from the Hessian of the total log-likelihood in the
        natural parameter scale (of the penalized objective when ``penalizer`` > 0; NaN
        when it is not negative definite).
    covariance_ : pandas.DataFrame
        Inverse of the negative Hessian, indexed by parameter name both ways.
    log_likelihood_ : float
        Total (unpenalized) log-likelihood at ``params_``.
    n_customers_ : int
        Customers the likelihood sums over.
    n_unique_rows_ : int
        Distinct rows the likelihood was evaluated on.
    convergence_ : dict
        Optimiser, relative gradient per customer at the fit, whether the Hessian is
        negative definite, an overall ``converged`` flag, and what the model adds.
    coefficients_ : pandas.DataFrame or None
        With covariates, one row per coefficient: ``process``, ``parameter``, ``covariate``,
        ``coefficient``, ``standard_error``, ``z``, ``p_value``; ``params_`` are then the
        baseline (all design columns 0) and ``covariance_`` covers the coefficients too
        (named ``parameter:covariate``). None without covariates.
    covariates_ : tuple of str
        The design columns the fit used, whose values every prediction reads (() without).
    """

    model_name: str | None = None
    parameter_names: tuple[str, ...] = ()

    def __init__(self, penalizer=0.0, initial_params=None, tol=1e-7, max_iter=None, covariates=None):
        self.penalizer = penalizer
        self.initial_params = initial_params
        self.tol = tol
        self.max_iter = max_iter
        self.covariates = covariates

    def __sklearn_is_fitted__(self):
        # Fitted means having parameters; every prediction reads params_ first.
        return hasattr(self, "params_")

    def _check_settings(self):
        """Check the settings at ``fit`` (the constructor stores them unchecked)."""
        check_settings(self)
        check_covariates(self.covariates)

    def _store_optimum(self, point, optimum, n_customers, n_unique_rows, layout=None, **convergence):
        """Set the fitted attributes from the maximum and :func:`describe_optimum`'s account of it.

        Parameters
        ----------
        point : numpy.ndarray
            The parameters at the maximum, in the order of ``parameter_names``.
        optimum : dict
            What :func:`describe_optimum` returned for ``point``.
        n_customers, n_unique_rows : int
            Customers and distinct rows the likelihood summed over.
        layout : models._covariate_fit.CoefficientLayout, optional
            With covariates: where the coefficients follow the parameters in ``point``.
        **convergence
            The model's own diagnostics, added to ``convergence_`` (e.g. the tolerance used).
        """
        names = list(self.parameter_names)
        self.params_ = {name: float(value) for name, value in zip(names, point)}
        self.standard_errors_ = {name: float(error) for name, error in zip(names, optimum["standard_errors"])}
        all_names = names if layout is None else layout.names
        self.covariance_ = pd.DataFrame(optimum["covariance"], index=all_names, columns=all_names)
        self.coefficients_ = None if layout is None else layout.table(point, optimum["standard_errors"])
        self.covariates_ = () if layout is None else layout.covariates
        self.log_likelihood_ = optimum["log_likelihood"]
        self.n_customers_ = int(n_customers)
        self.n_unique_rows_ = int(n_unique_rows)
        self.convergence_ = {**optimum["convergence"], **convergence}

    def with_params(self, values):
        """A copy of this fitted model that predicts at other parameter values, without refitting.

        What :mod:`models.uncertainty` evaluates at each draw of the parameters. Only what the
        predictions read changes (``params_`` and the ``coefficient`` column of
        ``coefficients_``, and what a model derives from them); the fit's own account of
        itself (``standard_errors_``, ``covariance_``, ``log_likelihood_``, ``convergence_``,
        the other columns of ``coefficients_``) stays that of the fit, which it describes.

        Parameters
        ----------
        values : mapping of str to float
            One value per name of ``covariance_.index``: the parameters (positive) and, with
            covariates, the coefficients (``parameter:covariate``). A pandas Series will do.

        Returns
        -------
        estimator
            A shallow copy of this one, fitted, with those values.

        Raises
        ------
        ValueError
            If a name is missing or unknown, a value is not finite, or a parameter is not
            above 0; the message names them.
        """
        check_is_fitted(self)
        if not isinstance(values, Mapping | pd.Series):
            raise TypeError(f"values must be a mapping of parameter name to value, got {type(values).__name__}")
        names = list(self.covariance_.index)
        given = {str(name): value for name, value in values.items()}
        missing, unknown = [name for name in names if name not in given], sorted(set(given) - set(names))
        if missing or unknown:
            raise ValueError(f"values: need exactly {names}; missing {missing}, unknown {unknown}")
        checked = {name: float(given[name]) for name in names}
        bad = [name for name, value in checked.items() if not math.isfinite(value)]
        if bad:
            raise ValueError(f"values: {bad} not finite")
        not_positive = [name for name in self.parameter_names if not checked[name] > 0]
        if not_positive:
            raise ValueError(f"values: parameter(s) {not_positive} must be above 0")
        model = copy.copy(self)
        model.params_ = {name: checked[name] for name in self.parameter_names}
        coefficients = getattr(self, "coefficients_", None)
        if coefficients is not None:
            coefficients = coefficients.copy()
            coefficients["coefficient"] = [checked[f"{parameter}:{covariate}"] for parameter, covariate
                                           in zip(coefficients["parameter"], coefficients["covariate"])]
            model.coefficients_ = coefficients
        return model

    def _summary_extras(self):
        """The model's own fitted figures for :meth:`summary`, by key (none here)."""
        return {}

    def summary(self):
        """Fitted model as a JSON-serialisable dict.

        Returns
        -------
        dict
            Keys ``model``, ``estimator``, ``settings`` (``get_params()``), ``params``,
            ``standard_errors``, ``log_likelihood``, ``n_customers``, ``n_unique_rows``, the
            model's own figures (:meth:`_summary_extras`), ``convergence`` and, with
            covariates, ``coefficients`` (the rows of ``coefficients_`` as dicts). Non-finite
            numbers are None.
        """
        check_is_fitted(self)
        coefficients = getattr(self, "coefficients_", None)
        extra = {} if coefficients is None else {"coefficients": [
            {key: (json_number(value) if isinstance(value, float) else value) for key, value in row.items()}
            for row in coefficients.to_dict(orient="records")
        ]}
        return {
            "model": self.model_name,
            "estimator": type(self).__name__,
            "settings": {name: list(value) if isinstance(value, tuple) else value
                         for name, value in self.get_params().items()},
            "params": {name: json_number(value) for name, value in self.params_.items()},
            "standard_errors": {name: json_number(value) for name, value in self.standard_errors_.items()},
            "log_likelihood": json_number(self.log_likelihood_),
            "n_customers": self.n_customers_,
            "n_unique_rows": self.n_unique_rows_,
            **{name: json_number(value) for name, value in self._summary_extras().items()},
            "convergence": dict(self.convergence_),
            **extra,
        }
