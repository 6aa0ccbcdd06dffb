"""BG/NBD and MBG/NBD log-likelihood of distinct histories, with its analytic gradient.

lifetimes fits both models with BFGS and autograd gradients over every distinct history at
each evaluation, and then an autograd Hessian. Here the likelihood and its gradient are
closed-form numpy: the terms that depend on one variable (frequency, recency or T, each with
tens to a few thousand distinct values) are computed once per distinct value and gathered,
so the special functions (gammaln, digamma) run on few values and a history costs a dozen
elementwise operations. :func:`per_history` takes its four parameters as scalars or as
arrays broadcast against the histories (one value per row), for models whose parameters
differ between groups of customers.

The expression is lifetimes' (``BetaGeoFitter._negative_log_likelihood`` and
``ModifiedBetaGeoFitter._negative_log_likelihood``), equal to it to rounding (tested), so the
maximum is lifetimes' maximum.

References
----------
.. [1] Fader, P. S., Hardie, B. G. S. and Lee, K. L. (2005), "Counting your customers the
   easy way: an alternative to the Pareto/NBD model", Marketing Science 24(2), 275-284,
   eq. 6; and Fader, Hardie & Lee, "Implementing the BG/NBD model for customer base
   analysis in Excel" (2005), http://brucehardie.com/notes/004/.
.. [2] Batislam, E. P., Denizel, M. and Filiztekin, A. (2007), "Empirical validation and
   comparison of models for customer base analysis", International Journal of Research in
   Marketing 24(3), 201-209; Wagner, U. and Hoppe, D. (2008), "Erratum on the MBG/NBD
   model", International Journal of Research in Marketing 25(3), 225-226.
"""

from __future__ import annotations

import numpy as np
from scipy.special import digamma, gammaln

from . import _optimum

PARAMETERS = ("r", "alpha", "a", "b")


def per_history(r, alpha, a, b, frequency, recency, age, modified: bool) -> tuple[np.ndarray, np.ndarray]:
    """Each history's BG/NBD (or MBG/NBD) log-likelihood and its gradient.

    Parameters
    ----------
    r, alpha, a, b : float or numpy.ndarray
        The parameters (``alpha`` in the time unit of ``recency`` and ``age``): scalars, or
        arrays broadcastable against the histories, e.g. one value per row.
    frequency, recency, age : numpy.ndarray
        Repeat purchases, age at the last repeat purchase, and age at the end of calibration.
    modified : bool
        MBG/NBD (a customer may also drop out right after the first purchase) when True.

    Returns
    -------
    log_likelihood : numpy.ndarray
        Each row's log-likelihood, shape (n,).
    gradient : numpy.ndarray
        Shape (4, n): each row's derivatives with respect to (r, alpha, a, b).
    """
    frequency, recency, age = (np.asarray(values, dtype=np.float64) for values in (frequency, recency, age))
    by_frequency = _frequency_terms(r, a, b, frequency, modified)
    return _combine(r, alpha, a, frequency, by_frequency, _time_terms(alpha, recency), _time_terms(alpha, age))


def _frequency_terms(r, a, b, frequency, modified: bool) -> tuple[np.ndarray, ...]:
    """The terms of one history that depend on its frequency and the parameters r, a, b only.

    With k dropout opportunities survived by a customer alive at T (k = x for BG/NBD,
    x + 1 for MBG/NBD, which adds one at the first purchase), eq. 6 of [1] and eq. 4 of [2]:

    L = Gamma(r + x) alpha^r / Gamma(r) * B(a, b + k) / B(a, b)
        * [(alpha + T)^-(r + x) + 1[k > 0] a / (b + k - 1) (alpha + t_x)^-(r + x)]
    """
    k = frequency + (1.0 if modified else 0.0)
    # lifetimes' max(x, 1) - 1 for BG/NBD: the dropout term is absent at x = 0, where b - 1
    # may be negative; any positive denominator keeps the arithmetic finite. The term's log
    # is -inf there, which the log-sum below turns into exactly 0 without a mask per row.
    dropped_b = b + np.maximum(k, 1.0) - 1.0
    rate = gammaln(r + frequency) - gammaln(r)
    survival = gammaln(a + b) + gammaln(b + k) - gammaln(b) - gammaln(a + b + k)
    log_dropped = np.where(k > 0, np.log(a) - np.log(dropped_b), -np.inf)
    d_rate_r = digamma(r + frequency) - digamma(r)
    d_survival_a = digamma(a + b) - digamma(a + b + k)
    d_survival_b = d_survival_a + digamma(b + k) - digamma(b)
    return rate + survival, log_dropped, d_rate_r, d_survival_a, d_survival_b, 1.0 / dropped_b


def _time_terms(alpha, time) -> tuple[np.ndarray, np.ndarray]:
    """log(alpha + t) and 1 / (alpha + t)."""
    shifted = alpha + time
    return np.log(shifted), 1.0 / shifted


def _log_one_plus_exp(gap) -> tuple[np.ndarray, np.ndarray]:
    """log(1 + e^gap) and its derivative e^gap / (1 + e^gap), from one exp and one log1p.

    np.logaddexp(0, gap) by the same formula (numpy's own), and the derivative from it: a
    third of the time of logaddexp and scipy's expit, which were most of an evaluation.
    """
    log_sum = np.maximum(gap, 0.0) + np.log1p(np.exp(-np.abs(gap)))
    return log_sum, np.exp(gap - log_sum)


def _combine(r, alpha, a, frequency, by_frequency, at_recency, at_age) -> tuple[np.ndarray, np.ndarray]:
    """Each history's log-likelihood and gradient from its one-variable terms (see
    :func:`_frequency_terms` for the expression)."""
    base, log_dropped, d_rate_r, d_survival_a, d_survival_b, inverse_dropped_b = by_frequency
    log_recency, inverse_recency = at_recency
    log_age, inverse_age = at_age
    exponent = r + frequency
    # log of the bracket: the alive term times 1 + exp(gap), where gap is the log-ratio of
    # the dropped term to the alive one, as lifetimes' MBG/NBD writes it.
    gap = log_dropped + exponent * (log_age - log_recency)
    log_sum, dropped = _log_one_plus_exp(gap)
    log_likelihood = base + r * np.log(alpha) - exponent * log_age + log_sum
    # dropped: the posterior weight of "dropped after the last purchase" within the bracket.
    alive = 1.0 - dropped
    gradient = np.stack(np.broadcast_arrays(
        d_rate_r + np.log(alpha) - alive * log_age - dropped * log_recency,
        r / alpha - exponent * (alive * inverse_age + dropped * inverse_recency),
        d_survival_a + dropped / a,
        d_survival_b - dropped * inverse_dropped_b,
    ))
    return log_likelihood, gradient


class BetaGeometricLikelihood:
    """The BG/NBD or MBG/NBD log-likelihood of distinct histories weighted by their customers.

    Parameters
    ----------
    frequency, recency, age : numpy.ndarray
        Distinct ``(frequency, recency, T)`` histories (float64).
    weights : numpy.ndarray
        Customers per history.
    modified : bool
        MBG/NBD when True, BG/NBD otherwise.
    """

    def __init__(self, frequency, recency, age, weights, modified: bool):
        self.frequency = np.asarray(frequency, dtype=np.float64)
        self.recency = np.asarray(recency, dtype=np.float64)
        self.age = np.asarray(age, dtype=np.float64)
        self.weights = np.asarray(weights, dtype=np.float64)
        self.modified = bool(modified)
        # Terms of one variable per distinct value (tens of frequencies, hundreds of ages and
        # recencies), gathered to the histories: the special functions run on few values.
        self._frequencies, self._frequency_of = np.unique(self.frequency, return_inverse=True)
        self._recencies, self._recency_of = np.unique(self.recency, return_inverse=True)
        self._ages, self._age_of = np.unique(self.age, return_inverse=True)
        # Customers per distinct frequency and age, and their repeat purchases per age: the
        # sums of terms of one variable are taken over these (value_and_gradient).
        self._customers = float(self.weights.sum())
        self._customers_by_frequency = np.bincount(self._frequency_of, self.weights, len(self._frequencies))
        self._customers_by_age = np.bincount(self._age_of, self.weights, len(self._ages))
        self._purchases_by_age = np.bincount(self._age_of, self.weights * self.frequency, len(self._ages))

    def per_history(self, params) -> tuple[np.ndarray, np.ndarray]:
        """Each distinct history's log-likelihood and gradient (shape (4, n)) at ``params`` = (r, alpha, a, b)."""
        r, alpha, a, b = (float(value) for value in params)

        def gathered(terms, inverse):
            return tuple(term[inverse] for term in terms)

        by_frequency = gathered(_frequency_terms(r, a, b, self._frequencies, self.modified), self._frequency_of)
        at_recency = gathered(_time_terms(alpha, self._recencies), self._recency_of)
        at_age = gathered(_time_terms(alpha, self._ages), self._age_of)
        return _combine(r, alpha, a, self.frequency, by_frequency, at_recency, at_age)

    def value_and_gradient(self, params) -> tuple[float, np.ndarray]:
        """The total log-likelihood (every customer's, summed) and its gradient.

        The sum of :meth:`per_history` weighted by the customers (tested), rearranged so that
        each term of one variable is summed over its distinct values with the customers'
        weights, and only the bracket's log-sum runs per history: at 158k histories an
        evaluation went from ~35 to ~7 ms.
        """
        r, alpha, a, b = (float(value) for value in params)
        base, log_dropped, d_rate_r, d_survival_a, d_survival_b, inverse_dropped_b = _frequency_terms(
            r, a, b, self._frequencies, self.modified)
        log_age, inverse_age = _time_terms(alpha, self._ages)
        log_recency, inverse_recency = _time_terms(alpha, self._recencies)
        by_frequency, by_age = self._customers_by_frequency, self._customers_by_age
        # sum of (r + x) over the customers of each age
        exponent_by_age = r * by_age + self._purchases_by_age
        weights, frequency_of = self.weights, self._frequency_of
        spread = log_age[self._age_of] - log_recency[self._recency_of]
        exponent = self.frequency + r
        log_sum, dropped = _log_one_plus_exp(log_dropped[frequency_of] + exponent * spread)
        weighted_dropped = weights * dropped
        log_alpha = np.log(alpha)
        value = (_optimum.dot(by_frequency, base) + r * log_alpha * self._customers - _optimum.dot(exponent_by_age, log_age)
                 + _optimum.dot(weights, log_sum))
        gradient = np.array([
            _optimum.dot(by_frequency, d_rate_r) + log_alpha * self._customers - _optimum.dot(by_age, log_age)
            + _optimum.dot(weighted_dropped, spread),
            r / alpha * self._customers - _optimum.dot(exponent_by_age, inverse_age)
            - _optimum.dot(weighted_dropped * exponent, inverse_recency[self._recency_of] - inverse_age[self._age_of]),
            _optimum.dot(by_frequency, d_survival_a) + weighted_dropped.sum() / a,
            _optimum.dot(by_frequency, d_survival_b) - _optimum.dot(weighted_dropped, inverse_dropped_b[frequency_of]),
        ])
        return float(value), gradient

    def __call__(self, params) -> float:
        """The total log-likelihood: every customer's, summed."""
        return self.value_and_gradient(params)[0]


OPTIMIZER = "L-BFGS-B on log-parameters (own {model} likelihood with its analytic gradient)"
# The parameters the fallback starts move (models/_optimum.py): the purchase rates' scale and
# b, which sets how many purchases a customer survives on average.
SCALES = (False, True, False, True)
# What each parameter running away says about the data: (to 0, to infinity). a -> 0 or
# b -> infinity is a dropout probability of 0 after every purchase: nobody drops out.
_NO_DROPOUT = "dropout is not identified (too few customers stop buying within the data)"
RUNAWAY_MEANINGS = {
    "r": (_optimum.NO_PURCHASE_RATES, _optimum.SAME_PURCHASE_RATES),
    "alpha": (_optimum.PURCHASE_SCALE, _optimum.PURCHASE_SCALE),
    "a": (_NO_DROPOUT, "the dropout probabilities are not identified"),
    "b": ("the dropout probabilities are not identified", _NO_DROPOUT),
}


def starting_values(frequency, recency, age, weights) -> np.ndarray:
    """A deterministic start from the data's moments: unit shapes (r = a = 1), the purchase
    rate's scale from the purchases per unit of time observed (alpha = sum T / sum x), and
    b = 1 + mean x: a mean dropout probability a / (a + b) of one per the purchases the mean
    customer made, as if the data saw about one dropout per customer."""
    mean_frequency, _, alpha = _optimum.moments(frequency, age, weights)
    return np.array([1.0, alpha, 1.0, 1.0 + mean_frequency])


def fallback_starts(start: np.ndarray, age) -> list[np.ndarray]:
    """Where to start again when the first start fails or runs away: lifetimes' own start
    (every log-parameter 0.1 in its time unit, where the oldest customer's age is 1), then the
    first start's alpha and b ten times larger and smaller. Bounded: four starts in all."""
    lifetimes_start = np.exp(0.1) * np.array([1.0, float(np.max(age)), 1.0, 1.0])
    return _optimum.fallback_starts(start, lifetimes_start, SCALES)


def maximise(likelihood: BetaGeometricLikelihood, start=None, penalty=None, tol: float = 1e-7,
             max_iter: int | None = None) -> np.ndarray:
    """The maximum-likelihood parameters (r, alpha, a, b).

    From ``start`` (default :func:`starting_values`), then from each of :func:`fallback_starts`
    until one ends at a maximum (:func:`models._optimum.maximise`, with the analytic gradient).

    Raises
    ------
    ConvergenceError
        When every start fails, naming the parameter that ran away and what that means.
    """
    first = starting_values(likelihood.frequency, likelihood.recency, likelihood.age, likelihood.weights)
    first = first if start is None else np.asarray(start, dtype=np.float64)
    model_name = "mbgnbd" if likelihood.modified else "bgnbd"
    return _optimum.maximise(likelihood, [first, *fallback_starts(first, likelihood.age)], model_name, PARAMETERS,
                             RUNAWAY_MEANINGS, penalty, tol, max_iter)
