"""Every workaround for lifetimes, each with what breaks and on which versions.

lifetimes (0.11.3, the last release, unmaintained since 2020) is the source of
most closed-form predictions for the purchase models, and the reference their
fits are tested and benchmarked against. The estimators in ``purchase.py``
never touch a lifetimes object: they call the functions here, which take plain
arrays and a dict of parameters in the features' time unit, and return plain
arrays. The estimators fit with our own likelihoods and optimiser
(``_beta_geometric.py``, ``_pareto_nbd.py``, ``_optimum.py``), so the
workarounds of lifetimes' fitters (2, 3, 4, 5, 9, 11) apply only to
:func:`fit_purchase_model` and :func:`total_log_likelihood`, kept for the
tests and benchmarks that compare with lifetimes; the estimators keep
lifetimes' penalty (:func:`penalty`, whose scale workarounds 5 and 9 explain).
The problems
worked around, as seen with lifetimes 0.11.3 on pandas 3.1, numpy 2.4 and
scipy 1.17:

1. Import side effects. ``lifetimes/fitters/__init__.py`` calls
   ``warnings.simplefilter("ignore", FutureWarning)`` for the whole process,
   and ``lifetimes/utils.py`` sets ``pd.options.mode.chained_assignment``,
   an option pandas 3 deprecates (a Pandas4Warning on every import).
2. The BG/NBD and MBG/NBD negative log-likelihoods (and Gamma-Gamma's, not
   used here) call ``warnings.simplefilter`` again on *every evaluation*, so
   fitting resets the caller's warning filters.
3. ``BaseFitter._fit`` prints the scipy result to stdout when BFGS fails before
   raising; the print is noise in batch logs and the exception text says only
   "try a larger penalizer". It also treats scipy's "precision loss" status as
   failure, although BFGS reports it at a maximum when the requested gradient
   tolerance is below the rounding noise of the objective (BG/NBD on the
   CDNOW sample at tol=1e-12); the fit is then retried with tolerances 1000
   times looser, up to the flatness the estimators check for afterwards.
4. ``ParetoNBDFitter`` starts Nelder-Mead from ``np.random.normal(1, 0.05)``
   drawn from the global, unseeded numpy generator, so two fits of the same
   data differ (and the caller's global random state moves). It also ignores
   Nelder-Mead's own failure flag, so running out of iterations goes
   unnoticed; the estimators' gradient check at the result catches that.
5. ``ParetoNBDFitter`` minimises ``sum(weights * ll) / mean(weights)``, so with
   sufficient-statistics weights the penalizer weighs more against the data
   than in an unweighted fit; BG/NBD and MBG/NBD divide by ``sum(weights)`` and
   are unaffected.
6. Every fitter keeps the training data as ``self.data`` (and closures over it
   in ``generate_new_data``), which would then be pickled with the model.
   Nothing here keeps a fitter after ``fit``: predictions use a throwaway
   fitter that holds only ``params_``.
7. ``ParetoNBDFitter`` reports no standard errors (``_hessian_ = None``); the
   estimators compute them for every model in ``_estimation.py``.
8. ``ParetoNBDFitter.conditional_probability_of_n_purchases_up_to_time``
   returns 0 for a zero horizon even for n = 0, where the probability is 1, and
   ``conditional_expected_number_of_purchases_up_to_time`` takes ``log(0)``
   (a RuntimeWarning) for a zero horizon.
9. lifetimes fits in a rescaled time unit (oldest customer's age = 1) and
   takes initial values in that scale (and on a log scale for BG/NBD and
   MBG/NBD); ``initial_params`` here are in the features' time unit.
10. ``conditional_expected_number_of_purchases_up_to_time`` evaluates the
   hypergeometric term (BG/NBD: twice, for its overflow fallback) for every
   customer and horizon, although it depends on (frequency, T, horizon) only;
   a 52-week CLV of 18M customers spent most of its time there. The BG/NBD
   and MBG/NBD expectations for many horizons are computed here with
   lifetimes' expressions, the term once per distinct (frequency, T) and
   horizon; the result equals lifetimes' to the last bit (tested).
11. ``BaseFitter._fit`` (BG/NBD, MBG/NBD) computes an autograd Hessian after
   every fit for the fitter's own standard errors, which nothing here reads:
   the estimators compute theirs for every model (workaround 7). It was a
   quarter of each fit's time; the fitters used here skip it, with the same
   optimiser call otherwise.
12. ``ParetoNBDFitter`` gives NaN for a customer whose last purchase is at T
   (recency == T; CDNOW master has one, x = 170, t_x = T = 70.86 weeks): the
   A_0 term of the individual likelihood (Fader & Hardie note 009 eqs. 18-20)
   is a difference of two equal numbers there, which rounding makes zero or
   negative before the log. Its log-likelihood then makes the whole fitting
   objective NaN (Nelder-Mead wanders), and its P(alive), expected purchases
   and conditional PMF are NaN for that customer. A_0 is exactly 0 there:
   the fitter used here skips the term, P(alive) is 1, and the expectation
   is P(alive) times the closed form for a customer known to be alive.
13. With static covariates the parameters are per customer (arrays). lifetimes' closed
   forms are numpy expressions that broadcast over them, except where Pareto/NBD branches
   on ``alpha < beta`` for the whole call (``_log_A_0``, the conditional PMF): P(alive) then
   comes from ``_pareto_nbd.probability_alive`` (the same expression, elementwise), and the
   PMF is called per group sharing (alpha, beta) (``ParetoNBDModel``).
"""

import contextlib
import io
import warnings

import numpy as np
import pandas as pd
from scipy.special import gammaln

from . import _pareto_nbd
from ._estimation import RELATIVE_GRADIENT_WARNING, ConvergenceError
from ._validation import group_rows, unique_rows

# Workaround 1: catch_warnings restores the process-wide filter list after the
# import, undoing lifetimes' simplefilter; the pandas 3 deprecation warning for
# mode.chained_assignment is silenced because the option is a no-op there.
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from lifetimes import BetaGeoFitter, ModifiedBetaGeoFitter, ParetoNBDFitter
    from lifetimes.utils import ConvergenceError as LifetimesConvergenceError


class _WithoutItsHessian:
    """Workaround 11: lifetimes' ``BaseFitter._fit`` without the Hessian after the fit.

    The same ``minimize`` call and failure report (workaround 3 reads the printed result);
    an identity matrix stands in for the Hessian, so the fitter's own variance matrix and
    standard errors are placeholders, never read.
    """

    def _fit(self, minimizing_function_args, initial_params, params_size, disp, tol=1e-7, bounds=None, **kwargs):
        from autograd import value_and_grad
        from scipy.optimize import minimize

        options = {"disp": disp, **kwargs}
        start = 0.1 * np.ones(params_size) if initial_params is None else initial_params
        output = minimize(
            value_and_grad(self._negative_log_likelihood), jac=True, method=None, tol=tol, x0=start,
            args=minimizing_function_args, options=options, bounds=bounds,
        )
        if output.success:
            return output.x, output.fun, np.eye(params_size)
        print(output)
        raise LifetimesConvergenceError("The model did not converge.")


class _BetaGeoFitter(_WithoutItsHessian, BetaGeoFitter):
    pass


class _ModifiedBetaGeoFitter(_WithoutItsHessian, ModifiedBetaGeoFitter):
    pass


FITTERS = {
    "bgnbd": _BetaGeoFitter,
    "mbgnbd": _ModifiedBetaGeoFitter,
    "paretonbd": ParetoNBDFitter,
}
PARAMETER_NAMES = {
    "bgnbd": ("r", "alpha", "a", "b"),
    "mbgnbd": ("r", "alpha", "a", "b"),
    "paretonbd": ("r", "alpha", "s", "beta"),
}
# Parameters measured in units of time; lifetimes rescales them with the data.
TIME_PARAMETERS = {"bgnbd": ("alpha",), "mbgnbd": ("alpha",), "paretonbd": ("alpha", "beta")}
# Workaround 3: each retry after a precision-loss failure loosens tol by this
# factor, but never beyond the flatness the estimators require afterwards.
PRECISION_LOSS_TOL_FACTOR = 1e3

# Workaround 4: lifetimes' random start is normal(1, 0.05) in its rescaled
# units; its mean is a deterministic start that converges on CDNOW.
PARETO_DEFAULT_START = np.ones(4)


@contextlib.contextmanager
def _contained_lifetimes_call():
    """Run lifetimes code without letting it change warning filters or print.

    Workarounds 2 and 3. Overflow and divide-by-zero RuntimeWarnings are also
    silenced: the optimisers probe extreme parameter values on their way to the
    maximum, and the result is checked afterwards by its gradient and Hessian.
    """
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()) as printed:
        warnings.simplefilter("ignore", RuntimeWarning)
        yield printed


def _lifetimes_time_scale(age):
    # Mirrors lifetimes.utils._scale_time, which every fitter applies to T.
    return 1.0 / np.max(age)


def fit_purchase_model(model_name, frequency, recency, age, weights, penalizer, initial_params, tol, max_iter):
    """Fit a purchase model with lifetimes on unique rows weighted by their counts.

    The reference the estimators' own fits are compared with (tests, benchmarks).

    Parameters
    ----------
    model_name : {"bgnbd", "mbgnbd", "paretonbd"}
    frequency, recency, age : numpy.ndarray
        Unique (frequency, recency, T) rows.
    weights : numpy.ndarray
        Number of customers per unique row.
    penalizer : float
        lifetimes' ``penalizer_coef``, meant as in an unweighted lifetimes fit
        on one row per customer.
    initial_params : dict or None
        Starting values in the features' time unit.
    tol : float
        Passed to ``scipy.optimize.minimize`` through lifetimes.
    max_iter : int or None
        Iteration limit; None keeps lifetimes' default.

    Returns
    -------
    params : dict of str to float
        Fitted parameters in the features' time unit.
    tol_used : float
        The tolerance of the fit that succeeded (see workaround 3).
    """
    names = PARAMETER_NAMES[model_name]
    scale = _lifetimes_time_scale(age)
    start = None
    if initial_params is not None:
        # Workaround 9: initial_params are in the features' time unit, lifetimes' in its rescaled one.
        start = np.array(
            [initial_params[name] * (scale if name in TIME_PARAMETERS[model_name] else 1.0) for name in names]
        )

    options = {} if max_iter is None else {"maxiter": max_iter}
    if model_name == "paretonbd":
        # Workaround 5: dividing by mean(weights) instead of 1 shrinks the data
        # term by that factor, so shrink the penalizer by the same factor.
        fitter = _ParetoNBDFitterExactAtRecencyT(penalizer_coef=penalizer / np.mean(weights))
        with _contained_lifetimes_call():
            fitter.fit(
                frequency,
                recency,
                age,
                weights=weights,
                initial_params=PARETO_DEFAULT_START if start is None else start,
                tol=tol,
                **options,
            )
        # Workaround 4: lifetimes does not say whether Nelder-Mead converged; the estimators'
        # gradient check at the result (_estimation.describe_optimum) does.
        # Workaround 6: copy the numbers out and let the fitter (and its data) go.
        return {name: float(fitter.params_[name]) for name in names}, tol

    tolerances = [tol]
    while tolerances[-1] * PRECISION_LOSS_TOL_FACTOR <= RELATIVE_GRADIENT_WARNING:
        tolerances.append(tolerances[-1] * PRECISION_LOSS_TOL_FACTOR)
    for attempt, attempt_tol in enumerate(tolerances):
        fitter = FITTERS[model_name](penalizer_coef=penalizer)
        with _contained_lifetimes_call() as printed:
            try:
                fitter.fit(
                    frequency,
                    recency,
                    age,
                    weights=weights,
                    initial_params=None if start is None else np.log(start),
                    tol=attempt_tol,
                    **options,
                )
            except LifetimesConvergenceError as error:
                message = next(
                    (line.strip() for line in printed.getvalue().splitlines() if "message" in line),
                    "message: none from scipy",
                )
                if "precision loss" in message and attempt + 1 < len(tolerances):
                    continue
                raise ConvergenceError(
                    f"{model_name}: the optimiser did not converge ({message}); "
                    "try other initial_params, a larger max_iter or a small penalizer"
                ) from error
        # Workaround 6: copy the numbers out and let the fitter (and its data) go.
        return {name: float(fitter.params_[name]) for name in names}, attempt_tol


def total_log_likelihood(model_name, params, frequency, recency, age, weights):
    """Total log-likelihood over customers, in the features' time unit.

    lifetimes' own objective is a mean (BG/NBD, MBG/NBD) or a sum over the
    mean weight (Pareto/NBD) in rescaled time, so it is not the number the
    papers report. Its static likelihood functions are evaluated here at the
    unscaled times and multiplied back, giving e.g. -9582.4 for BG/NBD on CDNOW
    (Fader, Hardie & Lee 2005, "Counting your customers the easy way").

    Parameters
    ----------
    model_name : {"bgnbd", "mbgnbd", "paretonbd"}
    params : numpy.ndarray
        Parameter vector in the order of ``PARAMETER_NAMES[model_name]``.
    frequency, recency, age, weights : numpy.ndarray
        Unique rows and their counts.

    Returns
    -------
    float
    """
    params = np.asarray(params, dtype=np.float64)
    if np.any(params <= 0):
        return -np.inf
    with _contained_lifetimes_call():
        if model_name == "paretonbd":
            mean_scaled = _ParetoNBDFitterExactAtRecencyT._negative_log_likelihood(
                params, frequency, recency, age, weights, 0.0
            )
            return float(-mean_scaled * np.mean(weights))
        negative_mean = FITTERS[model_name]._negative_log_likelihood(
            np.log(params), frequency, recency, age, weights, 0.0
        )
        return float(-negative_mean * np.sum(weights))


def penalty(model_name, params, age, n_customers, penalizer):
    """lifetimes' L2 penalty in units of the total log-likelihood.

    lifetimes adds ``penalizer * sum(params**2)`` (time parameters in its
    rescaled unit, workaround 9) to a per-customer mean for BG/NBD and MBG/NBD
    but to a total for Pareto/NBD (workaround 5), so the same ``penalizer``
    weighs n_customers times less against the data in Pareto/NBD. Needed to
    check that a penalized fit is at a stationary point of what it optimised.

    Parameters
    ----------
    model_name : {"bgnbd", "mbgnbd", "paretonbd"}
    params : numpy.ndarray
        Parameter vector in the order of ``PARAMETER_NAMES[model_name]``.
    age : numpy.ndarray
        Customers' ages T (only the maximum matters).
    n_customers : int
    penalizer : float

    Returns
    -------
    float
    """
    if penalizer == 0:
        return 0.0
    scale = _lifetimes_time_scale(age)
    rescaled = np.array(
        [
            value * (scale if name in TIME_PARAMETERS[model_name] else 1.0)
            for name, value in zip(PARAMETER_NAMES[model_name], params)
        ]
    )
    per_objective = penalizer * float(np.sum(rescaled**2))
    return per_objective if model_name == "paretonbd" else n_customers * per_objective


class _ParetoNBDFitterExactAtRecencyT(ParetoNBDFitter):
    """Workaround 12: lifetimes' Pareto/NBD likelihood, exact where recency == T.

    The conditional PMF (note 028 eq. 16) divides by the individual likelihood (note 009
    eq. 18), whose A_0 term lifetimes computes as a difference of two equal numbers when
    recency == T; rounding makes it negative and the log NaN. A_0 is exactly 0 there.
    """

    @staticmethod
    def _conditional_log_likelihood(params, freq, rec, T):
        r, alpha, s, beta = params
        freq, rec, T = (np.atleast_1d(np.asarray(v, dtype=np.float64)) for v in (freq, rec, T))
        freq, rec, T = np.broadcast_arrays(freq, rec, T)
        result = (
            gammaln(r + freq) - gammaln(r) + r * np.log(alpha) + s * np.log(beta)
            - (r + freq) * np.log(alpha + T) - s * np.log(beta + T)
        )
        inside = rec < T
        if inside.any():
            result = result.copy()
            result[inside] = ParetoNBDFitter._conditional_log_likelihood(params, freq[inside], rec[inside], T[inside])
        return result

    @staticmethod
    def _negative_log_likelihood(params, freq, rec, T, weights, penalizer_coef):
        # lifetimes' objective calls ParetoNBDFitter._conditional_log_likelihood by class
        # name, so one NaN row (recency == T) made the whole objective NaN and Nelder-Mead
        # wander (seen on CDNOW master). Same formula, exact at recency == T.
        if np.any(np.asarray(params) <= 0.0):
            return np.inf
        conditional = _ParetoNBDFitterExactAtRecencyT._conditional_log_likelihood(params, freq, rec, T)
        penalizer_term = penalizer_coef * sum(np.asarray(params) ** 2)
        return -(weights * conditional).sum() / weights.mean() + penalizer_term


def _fitter_with_params(model_name, params):
    # Workaround 6: a fitter holding only the parameters, enough for lifetimes'
    # prediction methods (they read self.params_ and nothing else).
    fitter = _ParetoNBDFitterExactAtRecencyT() if model_name == "paretonbd" else FITTERS[model_name]()
    names = PARAMETER_NAMES[model_name]
    if any(np.ndim(params[name]) for name in names):
        # Workaround 13: per-customer arrays, held as objects so lifetimes reads them whole.
        fitter.params_ = pd.Series([params[name] for name in names], index=list(names), dtype=object)
    else:
        fitter.params_ = pd.Series({name: params[name] for name in names})
    return fitter


def _per_row(params) -> bool:
    """Whether some parameter is an array (one per customer: a model with covariates)."""
    return any(np.ndim(value) for value in params.values())


def conditional_expected_purchases(model_name, params, horizon, frequency, recency, age):
    """Expected purchases in (T, T + horizon] given each customer's history.

    BG/NBD: Fader, Hardie & Lee (2005) eq. 10. MBG/NBD: Batislam, Denizel &
    Filiztekin (2007) with the correction of Wagner & Hoppe (2008). Pareto/NBD:
    Schmittlein, Morrison & Colombo (1987); Fader & Hardie (2005) note 009
    eq. 41.

    Returns
    -------
    numpy.ndarray
    """
    if horizon == 0:
        # Workaround 8 (Pareto/NBD takes log(0)); the answer is 0 for all models.
        return np.zeros(len(frequency))
    if model_name == "paretonbd":
        # Workaround 12: see _pareto_probability_alive. Note 009 eq. 41 is P(alive) times
        # the expectation for a customer known to be alive, which has a closed form.
        frequency, age = np.asarray(frequency, dtype=float), np.asarray(age, dtype=float)
        alive = _pareto_probability_alive(params, frequency, recency, age)
        return alive * _pareto_expected_when_alive(params, horizon, frequency, age)
    fitter = _fitter_with_params(model_name, params)
    with _contained_lifetimes_call():
        expected = fitter.conditional_expected_number_of_purchases_up_to_time(horizon, frequency, recency, age)
    return np.asarray(expected, dtype=np.float64)


def _beta_geometric_expectation_numerator(model_name, params, horizon, frequency, age):
    """The (frequency, T, horizon) factor of the BG/NBD or MBG/NBD conditional expectation.

    Workaround 10: lifetimes' own expressions (``BetaGeoFitter`` and
    ``ModifiedBetaGeoFitter.conditional_expected_number_of_purchases_up_to_time``),
    operation for operation, so the quotient below has lifetimes' bits.
    """
    from scipy.special import hyp2f1

    r, alpha, a, b = (params[name] for name in PARAMETER_NAMES[model_name])
    x, t = frequency, horizon
    with _contained_lifetimes_call():
        if model_name == "mbgnbd":
            hyp_term = hyp2f1(r + x, b + x + 1, a + b + x, t / (alpha + age + t))
            return ((a + b + x) / (a - 1)) * (1 - hyp_term * ((alpha + age) / (alpha + t + age)) ** (r + x))
        _a, _b, _c, _z = r + x, b + x, a + b + x - 1, t / (alpha + age + t)
        ln_hyp_term = np.log(hyp2f1(_a, _b, _c, _z))
        ln_hyp_term_alt = np.log(hyp2f1(_c - _a, _c - _b, _c, _z)) + (_c - _a - _b) * np.log(1 - _z)
        ln_hyp_term = np.where(np.isinf(ln_hyp_term), ln_hyp_term_alt, ln_hyp_term)
        second_term = 1 - np.exp(ln_hyp_term + (r + x) * np.log((alpha + age) / (alpha + t + age)))
        return ((a + b + x - 1) / (a - 1)) * second_term


def _beta_geometric_expectation_denominator(model_name, params, frequency, recency, age):
    # The history's factor (no horizon), as in lifetimes; see the numerator.
    r, alpha, a, b = (params[name] for name in PARAMETER_NAMES[model_name])
    x = frequency
    if model_name == "mbgnbd":
        return 1 + (a / (b + x)) * ((alpha + age) / (alpha + recency)) ** (r + x)
    return 1 + (x > 0) * (a / (b + x - 1)) * ((alpha + age) / (alpha + recency)) ** (r + x)


def conditional_expected_purchases_by_horizon(model_name, params, horizons, frequency, recency, age, pattern=None):
    """Expected purchases in (T, T + h] for every customer and each horizon ``h``.

    Column ``k`` equals ``conditional_expected_purchases(model_name, params,
    horizons[k], ...)``; the parts that do not depend on the horizon (P(alive)
    for Pareto/NBD, the history's factor for BG/NBD and MBG/NBD) are computed
    once, and the hypergeometric term once per distinct (frequency, T)
    (workaround 10), or per distinct (pattern, frequency, T) when ``params`` are per
    row (covariates; ``pattern`` numbers the rows' distinct parameters).

    Returns
    -------
    numpy.ndarray
        Shape (customers, horizons).
    """
    frequency, recency, age = (np.asarray(v, dtype=np.float64) for v in (frequency, recency, age))
    result = np.zeros((len(frequency), len(horizons)))
    if len(frequency) == 0:
        return result
    if model_name == "paretonbd":
        alive = _pareto_probability_alive(params, frequency, recency, age)
        for position, horizon in enumerate(horizons):
            if horizon != 0:
                result[:, position] = alive * _pareto_expected_when_alive(params, horizon, frequency, age)
        return result
    pair_params = params
    if _per_row(params):
        (pair_frequency, pair_age, _), pair = group_rows([frequency, age, pattern])
        first_row = np.empty(len(pair_frequency), dtype=np.intp)
        first_row[pair[::-1]] = np.arange(len(pair))[::-1]
        pair_params = {name: value[first_row] if np.ndim(value) else value for name, value in params.items()}
    else:
        (pair_frequency, pair_age), pair, _ = unique_rows([frequency, age])
    with _contained_lifetimes_call():
        denominator = _beta_geometric_expectation_denominator(model_name, params, frequency, recency, age)
        for position, horizon in enumerate(horizons):
            if horizon != 0:
                numerator = _beta_geometric_expectation_numerator(
                    model_name, pair_params, horizon, pair_frequency, pair_age
                )
                result[:, position] = numerator[pair] / denominator
    return result


def _pareto_expected_when_alive(params, horizon, frequency, age):
    # Note 009 eq. 41 without its P(alive) factor: the expectation for a customer known to be alive.
    r, alpha, s, beta = (params[name] for name in PARAMETER_NAMES["paretonbd"])
    return (r + frequency) * (beta + age) / ((alpha + age) * (s - 1)) * (1 - ((beta + age) / (beta + age + horizon)) ** (s - 1))


def probability_alive(model_name, params, frequency, recency, age):
    """Probability that each customer is still active at the end of calibration.

    BG/NBD: Fader, Hardie & Lee (2008), "Computing P(alive) using the BG/NBD
    model", note 021. MBG/NBD: Batislam,
    Denizel & Filiztekin (2007) appendix A eq. 5. Pareto/NBD: Fader & Hardie
    (2005) note 009 eqs. 36-37.

    Returns
    -------
    numpy.ndarray
    """
    if model_name == "paretonbd":
        return _pareto_probability_alive(params, frequency, recency, age)
    fitter = _fitter_with_params(model_name, params)
    with _contained_lifetimes_call():
        alive = fitter.conditional_probability_alive(frequency, recency, age)
    return np.asarray(alive, dtype=np.float64)


def _pareto_probability_alive(params, frequency, recency, age):
    # Workaround 12 (lifetimes 0.11.3 ParetoNBDFitter.conditional_probability_alive):
    # for a customer whose last purchase is at T (recency == T) the two hypergeometric
    # terms of A_0 (note 009 eqs. 19-20) cancel exactly, lifetimes takes log(0) and
    # returns NaN (seen on CDNOW master: x = 170, t_x = T = 70.86 weeks). There A_0 = 0
    # and P(alive) = 1 exactly; the other rows keep lifetimes' value.
    frequency = np.asarray(frequency, dtype=np.float64)
    recency = np.asarray(recency, dtype=np.float64)
    age = np.asarray(age, dtype=np.float64)
    if _per_row(params):
        # Workaround 13: lifetimes branches on alpha < beta for the whole call.
        return _pareto_nbd.probability_alive(params["r"], params["alpha"], params["s"], params["beta"],
                                             frequency, recency, age)
    fitter = _fitter_with_params("paretonbd", params)
    alive = np.ones(len(frequency))
    inside = recency < age
    if inside.any():
        with _contained_lifetimes_call():
            alive[inside] = np.asarray(
                fitter.conditional_probability_alive(frequency[inside], recency[inside], age[inside]),
                dtype=np.float64,
            )
    return alive


def expected_purchases_new_customer(model_name, params, horizon):
    """Expected repeat purchases in (0, horizon] for a newly acquired customer.

    BG/NBD: Fader, Hardie & Lee (2005) eq. 9. MBG/NBD: Batislam, Denizel &
    Filiztekin (2007). Pareto/NBD: Schmittlein, Morrison & Colombo (1987);
    Fader & Hardie (2005) note 009 eq. 27.

    Returns
    -------
    numpy.ndarray
    """
    fitter = _fitter_with_params(model_name, params)
    with _contained_lifetimes_call():
        expected = fitter.expected_number_of_purchases_up_to_time(horizon)
    return np.asarray(expected, dtype=np.float64)


def pareto_probability_of_purchases(params, n_purchases, horizon, frequency, recency, age):
    """Pareto/NBD probability of exactly ``n_purchases`` in (T, T + horizon] given history.

    Fader & Hardie (2006), "Deriving the conditional PMF of the Pareto/NBD
    model", note 028 eq. 16.

    Returns
    -------
    numpy.ndarray
    """
    if horizon == 0:
        # Workaround 8: lifetimes returns 0 here even for n = 0.
        return np.full(len(frequency), 1.0 if n_purchases == 0 else 0.0)
    fitter = _fitter_with_params("paretonbd", params)
    with _contained_lifetimes_call():
        probability = fitter.conditional_probability_of_n_purchases_up_to_time(
            n_purchases, horizon, frequency, recency, age
        )
    return np.asarray(probability, dtype=np.float64)
