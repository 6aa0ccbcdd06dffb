"""Pareto/NBD maximum likelihood on distinct histories, fast: our own, proven equal to lifetimes.

lifetimes fits Pareto/NBD with Nelder–Mead from a fixed start, evaluating the Gauss
hypergeometric function 2F1 twice for every distinct history at each of hundreds to
thousands of evaluations: a minute at 18M customers (231k distinct calibration histories).
Two things make it fast here:

* **2F1 once per distinct pair.** The likelihood's A_0 term (Fader & Hardie, note 009,
  eqs. 18–20) evaluates 2F1 at ``(frequency, recency)`` and at ``(frequency, T)``. Those pairs
  are far fewer than the histories (7.4k and 3.7k of the 231k above), so 2F1 is evaluated per
  pair and gathered; the rest of the expression is cheap elementwise arithmetic. The pair
  indices depend on the data only and are built once per fit (:class:`ParetoNBDLikelihood`).
* **A gradient method** on log-parameters (L-BFGS-B, forward-difference gradients, from a
  deterministic start computed from the data, then Newton steps), instead of Nelder–Mead:
  tens of iterations. The optimiser, its fallback starts and its account of a parameter that
  ran away are shared with BG/NBD and MBG/NBD (``_optimum.py``); what is Pareto/NBD's own is
  here: the likelihood, the start, and what each parameter running away means.

The log-likelihood is lifetimes' expression (``ParetoNBDFitter._conditional_log_likelihood``),
exact where recency == T as ``_lifetimes_compat`` workaround 12 makes it: equal to it to
rounding (tested), so the optimum is lifetimes' maximum, found sooner and more tightly.

With static covariates alpha and beta differ by design pattern (:mod:`models.covariates`):
:meth:`ParetoNBDLikelihood.per_history_by_pattern` evaluates the same expression with each
history's own alpha and beta, 2F1 once per distinct (pattern, frequency, recency) and
(pattern, frequency, T); :func:`probability_alive` is its P(alive) for per-row parameters.
"""

from __future__ import annotations

import numpy as np
from scipy.special import gammaln, hyp2f1

from . import _optimum
from ._validation import group_rows

PARAMETERS = ("r", "alpha", "s", "beta")
OPTIMIZER = "L-BFGS-B on log-parameters (own Pareto/NBD likelihood, 2F1 once per distinct pair)"
# The scale parameters, which the fallback starts move (models/_optimum.py).
SCALES = (False, True, False, True)
# What each parameter running away says about the data: (to 0, to infinity).
_NO_DROPOUT = "the dropout process is not identified (too few customers stop buying within the data)"
RUNAWAY_MEANINGS = {
    "r": (_optimum.NO_PURCHASE_RATES, _optimum.SAME_PURCHASE_RATES),
    "alpha": (_optimum.PURCHASE_SCALE, _optimum.PURCHASE_SCALE),
    "s": (_NO_DROPOUT, _NO_DROPOUT),
    "beta": (_NO_DROPOUT, _NO_DROPOUT),
}


class ParetoNBDLikelihood:
    """The Pareto/NBD log-likelihood of distinct histories weighted by their customers.

    Parameters
    ----------
    frequency, recency, age : numpy.ndarray
        Distinct ``(frequency, recency, T)`` histories (float64).
    weights : numpy.ndarray
        Customers per history.
    pattern : numpy.ndarray of int, optional
        Each history's design pattern, for :meth:`per_history_by_pattern`.
    """

    def __init__(self, frequency, recency, age, weights, pattern=None):
        self.frequency = np.asarray(frequency, dtype=np.float64)
        self.recency = np.asarray(recency, dtype=np.float64)
        self.age = np.asarray(age, dtype=np.float64)
        self.weights = np.asarray(weights, dtype=np.float64)
        # Histories whose last purchase is not at T carry the A_0 term (workaround 12).
        self.inside = self.recency < self.age
        inside_frequency = self.frequency[self.inside]
        self._at_recency = _pairs(inside_frequency, self.recency[self.inside])
        self._at_age = _pairs(inside_frequency, self.age[self.inside])
        # Terms of one variable are computed per distinct value (tens of frequencies, hundreds
        # of ages) and gathered: the transcendental functions run on few values.
        self._frequencies, self._frequency_of = np.unique(self.frequency, return_inverse=True)
        self._ages, self._age_of = np.unique(self.age, return_inverse=True)
        self.pattern = None if pattern is None else np.asarray(pattern, dtype=np.intp)
        if self.pattern is not None:
            inside_pattern = self.pattern[self.inside]
            self._by_pattern_at = tuple(
                _triples(inside_pattern, inside_frequency, times)
                for times in (self.recency[self.inside], self.age[self.inside])
            )

    def per_history(self, params) -> np.ndarray:
        """Each distinct history's log-likelihood at ``params`` = (r, alpha, s, beta)."""
        r, alpha, s, beta = (float(value) for value in params)
        x = self.frequency
        by_frequency, by_age = self._frequency_of, self._age_of
        common = (gammaln(r + self._frequencies) - gammaln(r) + r * np.log(alpha) + s * np.log(beta))[by_frequency]
        # Alive at T: no dropout in (0, T].
        alive = -(r + x) * np.log(alpha + self._ages)[by_age] - s * np.log(beta + self._ages)[by_age]
        if not self.inside.any():
            return common + alive
        # A_0 (note 009 eqs. 19-20): with the larger of alpha and beta as the base, 2F1 at
        # recency minus 2F1 at T, each over its base to the power r + s + x.
        base, gap = (alpha, alpha - beta) if alpha >= beta else (beta, beta - alpha)

        def log_term(pairs: _Pairs) -> np.ndarray:
            pair_x, pair_t = pairs.values
            total = r + s + pair_x
            second = s + 1.0 if alpha >= beta else r + pair_x
            value = np.log(hyp2f1(total, second, total + 1.0, gap / (base + pair_t)))
            return (value - total * np.log(base + pair_t))[pairs.inverse]

        at_recency, at_age = log_term(self._at_recency), log_term(self._at_age)
        # log(e^u - e^v) = u + log(1 - e^(v - u)): lifetimes' signed logsumexp, more exactly.
        log_a0 = at_recency + np.log(-np.expm1(at_age - at_recency))
        inside = self.inside
        log_weight = (np.log(s) - np.log(r + s + self._frequencies))[by_frequency[inside]]
        result = common + alive
        result[inside] += np.logaddexp(0.0, log_weight + log_a0 - alive[inside])
        return result

    def __call__(self, params) -> float:
        """The total log-likelihood: every customer's, summed."""
        return _optimum.dot(self.weights, self.per_history(params))

    def per_history_by_pattern(self, r, alpha, s, beta) -> np.ndarray:
        """Each distinct history's log-likelihood when alpha and beta are per design pattern.

        ``alpha`` and ``beta`` are arrays with one value per pattern (the ``pattern`` given
        at construction indexes them); ``r`` and ``s`` are shared. The expression of
        :meth:`per_history`, term by term, with each history's own alpha and beta.
        """
        if self.pattern is None:
            raise ValueError("per_history_by_pattern needs the histories' patterns at construction")
        alpha, beta = np.asarray(alpha, dtype=np.float64), np.asarray(beta, dtype=np.float64)
        x, age = self.frequency, self.age
        own_alpha, own_beta = alpha[self.pattern], beta[self.pattern]
        common = gammaln(r + x) - gammaln(r) + r * np.log(own_alpha) + s * np.log(own_beta)
        alive = -(r + x) * np.log(own_alpha + age) - s * np.log(own_beta + age)
        result = common + alive
        if not self.inside.any():
            return result

        def log_term(triples: _Triples) -> np.ndarray:
            pair_pattern, pair_x, pair_t = triples.values
            return _log_a0_term(r, s, pair_x, pair_t, alpha[pair_pattern], beta[pair_pattern])[triples.inverse]

        at_recency, at_age = (log_term(triples) for triples in self._by_pattern_at)
        log_a0 = at_recency + np.log(-np.expm1(at_age - at_recency))
        inside = self.inside
        log_weight = np.log(s) - np.log(r + s + x[inside])
        result[inside] += np.logaddexp(0.0, log_weight + log_a0 - alive[inside])
        return result


def _log_a0_term(r, s, x, t, alpha, beta):
    """log of one of A_0's two terms (note 009 eqs. 19-20) at time ``t``, elementwise in
    ``alpha`` and ``beta``: 2F1 over its base (the larger of alpha and beta) to the power
    r + s + x, as :meth:`ParetoNBDLikelihood.per_history` takes it."""
    alpha_larger = alpha >= beta
    base = np.where(alpha_larger, alpha, beta)
    gap = np.abs(alpha - beta)
    total = r + s + x
    second = np.where(alpha_larger, s + 1.0, r + x)
    return np.log(hyp2f1(total, second, total + 1.0, gap / (base + t))) - total * np.log(base + t)


def probability_alive(r, alpha, s, beta, frequency, recency, age) -> np.ndarray:
    """Pareto/NBD P(alive at T | history) with per-row ``alpha`` and ``beta`` (arrays like
    ``frequency``), for models with covariates.

    Fader & Hardie, note 009 eqs. 36-37: 1 / (1 + s / (r + s + x) (alpha + T)^(r + x)
    (beta + T)^s A_0), computed as lifetimes' ``conditional_probability_alive``; exactly 1
    where recency == T, where A_0 is 0 (``_lifetimes_compat`` workaround 12).
    """
    x, recency, age = (np.asarray(v, dtype=np.float64) for v in (frequency, recency, age))
    alpha, beta = np.broadcast_to(alpha, x.shape), np.broadcast_to(beta, x.shape)
    alive = np.ones(len(x))
    inside = recency < age
    if inside.any():
        xi, ai, bi = x[inside], alpha[inside], beta[inside]
        at_recency = _log_a0_term(r, s, xi, recency[inside], ai, bi)
        at_age = _log_a0_term(r, s, xi, age[inside], ai, bi)
        log_a0 = at_recency + np.log(-np.expm1(at_age - at_recency))
        exponent = (np.log(s) - np.log(r + s + xi) + (r + xi) * np.log(ai + age[inside])
                    + s * np.log(bi + age[inside]) + log_a0)
        alive[inside] = 1.0 / (1.0 + np.exp(exponent))
    return alive


class _Triples:
    __slots__ = ("inverse", "values")

    def __init__(self, values, inverse):
        self.values = values
        self.inverse = inverse


def _triples(pattern: np.ndarray, first: np.ndarray, second: np.ndarray) -> _Triples:
    """Distinct ``(pattern, first, second)`` rows, and each row's position among them."""
    if len(first) == 0:
        return _Triples((np.empty(0, dtype=np.intp), np.empty(0), np.empty(0)), np.empty(0, dtype=np.intp))
    (patterns, firsts, seconds), inverse = group_rows([pattern, first, second])
    return _Triples((patterns, firsts, seconds), inverse)


class _Pairs:
    __slots__ = ("inverse", "values")

    def __init__(self, values, inverse):
        self.values = values
        self.inverse = inverse


def _pairs(first: np.ndarray, second: np.ndarray) -> _Pairs:
    """Distinct ``(first, second)`` pairs, and each row's position among them."""
    if len(first) == 0:
        return _Pairs(np.empty((2, 0)), np.empty(0, dtype=np.intp))
    values, inverse = np.unique(np.stack([first, second]), axis=1, return_inverse=True)
    return _Pairs(values, inverse.reshape(-1))


def starting_values(frequency, recency, age, weights) -> np.ndarray:
    """A deterministic start from the data's moments: unit shapes (r = s = 1), the purchase
    rate's scale from the purchases per unit of time observed (alpha = sum T / sum x), the
    dropout rate's from the mean age (beta = mean T: about one dropout per observed lifetime)."""
    _, mean_age, alpha = _optimum.moments(frequency, age, weights)
    return np.array([1.0, alpha, 1.0, max(mean_age, 1e-3)])


def fallback_starts(start: np.ndarray, age) -> list[np.ndarray]:
    """Where to start again when the first start fails or runs away: lifetimes' own start
    (unit shapes, scales equal to the oldest customer's age), then the first start's scales
    ten times larger and smaller. Bounded: four starts in all."""
    oldest = float(np.max(age))
    return _optimum.fallback_starts(start, np.array([1.0, oldest, 1.0, oldest]), SCALES)


def maximise(likelihood: ParetoNBDLikelihood, start=None, penalty=None, tol: float = 1e-7,
             max_iter: int | None = None) -> np.ndarray:
    """The maximum-likelihood parameters (r, alpha, s, beta).

    From ``start`` (default :func:`starting_values`), then from each of :func:`fallback_starts`
    until one ends at a maximum (:func:`models._optimum.maximise`, with forward-difference
    gradients).

    Raises
    ------
    ConvergenceError
        When every start fails, naming the parameter that ran away and what that means.
    """
    first = starting_values(likelihood.frequency, likelihood.recency, likelihood.age, likelihood.weights)
    first = first if start is None else np.asarray(start, dtype=np.float64)
    return _optimum.maximise(likelihood, [first, *fallback_starts(first, likelihood.age)], "paretonbd", PARAMETERS,
                             RUNAWAY_MEANINGS, penalty, tol, max_iter)
