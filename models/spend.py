"""Spend per purchase: the Gamma-Gamma model.

References
----------
.. [1] Fader, P. S., Hardie, B. G. S. and Lee, K. L. (2005), "RFM and CLV:
   using iso-value curves for customer base analysis", Journal of Marketing
   Research 42(4), 415-430.
.. [2] Fader, P. S. and Hardie, B. G. S. (2013), "The Gamma-Gamma model of
   monetary value", http://brucehardie.com/notes/025/.

With static covariates (:mod:`models.covariates`) the scale of a customer's spend rate is
gamma_i = gamma exp(d . x_i), so their expected spend per purchase p gamma_i / (q - 1) is the
baseline's times exp(d . x_i); no published anchor has this link, which mirrors the purchase
models' (Fader & Hardie, note 019). The fit reads distinct (design, frequency, spend) rows.
"""

from __future__ import annotations

import numbers

import numpy as np
import pandas as pd
from scipy.optimize import minimize
from scipy.special import digamma, gammaln, polygamma
from sklearn.utils.validation import check_is_fitted

from . import _covariate_fit
from ._estimation import RELATIVE_GRADIENT_WARNING, ConvergenceError, MaximumLikelihoodEstimator, describe_optimum
from ._validation import SPEND_COLUMNS, check_features, check_real, rows, unique_rows
from .covariates import check_covariates, design_matrix


class SpendStatistics:
    """The repeat customers reduced to what a Gamma-Gamma fit needs, without the customers.

    The likelihood depends on a repeat customer only through their pair (frequency x,
    mean spend m): terms in x alone are summed once per distinct x, the terms linear in
    p and log(m) collapse to two sums, and only log(gamma + m x) is evaluated per
    distinct pair. So the distinct pairs with their counts and two sums are all a fit
    reads, and what a cluster sends the driver instead of its customers: a group-by on
    (frequency, monetary_value) counting rows, and the sums of log(monetary_value) and
    frequency * log(monetary_value), over the repeat customers (frequency > 0 and
    monetary_value > 0, the customers :meth:`GammaGammaModel.fit` reads). Build it from
    those aggregates with this constructor, or from a features table with
    :func:`spend_statistics`; :meth:`GammaGammaModel.fit` takes either in place of the
    table, with the table's results (bit for bit through :func:`spend_statistics`, to the
    rounding of the sums through this constructor).

    Too many distinct pairs to send (spend is continuous, so there can be nearly one per
    customer)? Fit on a sample: draw a seeded uniform sample of the repeat customers on
    the cluster, collect it and reduce it with ``spend_statistics(sample)``. The estimates
    are then those of the sample, with its (larger) standard errors; on 200,000 simulated
    repeat customers a 10 % sample's p, q and gamma lie within 3 of its standard errors of
    the full fit's (``tests/models/test_spend.py``). The sample must be uniform over
    customers (not over pairs), or the counts no longer estimate the population's.

    Parameters
    ----------
    frequency : array_like of float
        Repeat purchases of each distinct pair: whole numbers of at least 1.
    monetary_value : array_like of float
        Mean spend per repeat purchase of each distinct pair: finite and above 0.
    counts : array_like of int
        Repeat customers with each pair: whole numbers of at least 1.
    sum_log_spend : float, optional
        Sum over the repeat customers of log(monetary_value) (natural log). Default
        ``sum(counts * log(monetary_value))``: the same number up to rounding.
    sum_frequency_log_spend : float, optional
        Sum over the repeat customers of frequency * log(monetary_value). Default
        ``sum(counts * frequency * log(monetary_value))``.
    covariates : sequence of str, optional
        Names of the design columns of ``design``.
    design : array_like of float, optional
        With ``covariates``: each row's design values (rows x covariates); rows are then
        distinct in (design, frequency, monetary_value) together.

    Raises
    ------
    TypeError
        If an array is not numeric or a sum not a real number.
    ValueError
        If the arrays are not 1-d of one length, a value is out of its range, two pairs
        are alike, or a sum disagrees with the pairs beyond rounding (a log in another
        base, a sum over pairs instead of customers); the message names the argument.

    Attributes
    ----------
    frequency, monetary_value, counts : numpy.ndarray
        The distinct pairs and their counts (read-only; float64, float64, int64).
    covariates : tuple of str
        The design columns held (empty without covariates).
    design : numpy.ndarray
        Read-only (rows x covariates) design values of each row.
    n_customers : int
        Repeat customers, ``sum(counts)``.
    sum_log_spend, sum_frequency_log_spend : float
        The two sums the likelihood reads.
    mean_spend : float
        Mean of monetary_value over the repeat customers: the fit's starting gamma.
    frequency_monetary_correlation : float
        Pearson correlation of frequency and monetary_value over the repeat customers
        (NaN when either is constant or there are no customers). It is Pearson, a function
        of the moments, so the pairs with counts give it exactly: no sample is needed.
        They give it centred (sum of counts * (x - mean x) * (m - mean m)), which keeps
        the digits that raw sums of x, m, x², m² and x m would lose to cancellation.
    """

    __slots__ = (
        "_by_frequency",
        "_correlation",
        "_counts",
        "_covariates",
        "_design",
        "_frequency",
        "_mean_spend",
        "_monetary_value",
        "_n_customers",
        "_sum_frequency_log_spend",
        "_sum_log_spend",
    )

    def __init__(self, frequency, monetary_value, counts, sum_log_spend=None, sum_frequency_log_spend=None,
                 covariates=None, design=None):
        covariates = check_covariates(covariates)
        frequency = _float_array(frequency, "frequency")
        design = np.zeros((len(frequency), 0)) if design is None else np.asarray(design, dtype=np.float64)
        if design.ndim != 2 or design.shape != (len(frequency), len(covariates)):
            raise ValueError(f"design must be one row of {len(covariates)} covariate value(s) per pair, "
                             f"got shape {design.shape}")
        if not np.all(np.isfinite(design)):
            raise ValueError(f"design: {rows(int(np.count_nonzero(~np.isfinite(design).all(axis=1))))} NaN or infinite")
        monetary_value = _float_array(monetary_value, "monetary_value")
        counts = _float_array(counts, "counts")
        for name, values in (("monetary_value", monetary_value), ("counts", counts)):
            if len(values) != len(frequency):
                raise ValueError(f"{name} has {len(values)} entries for {len(frequency)} values of frequency")
        _check_whole_positive(frequency, "frequency", "repeat purchases (customers without any are not fitted on)")
        not_positive = int(np.count_nonzero(~np.isfinite(monetary_value) | (monetary_value <= 0)))
        if not_positive:
            raise ValueError(
                f"monetary_value: {rows(not_positive)} not a finite amount above 0 "
                "(customers without spend are not fitted on)"
            )
        _check_whole_positive(counts, "counts", "customers")
        distinct = unique_rows([frequency, monetary_value, *design.T])[0][0]
        repeated = len(frequency) - len(distinct)
        if repeated:
            raise ValueError(
                f"frequency, monetary_value: {rows(repeated)} with a pair an earlier row already has; "
                "group them and add their counts"
            )
        counts = counts.astype(np.int64)
        log_spend = np.log(monetary_value)
        # Centred, weighted by the counts: the pairs' own rounding, nothing per customer.
        sums = {
            "sum_log_spend": (sum_log_spend, log_spend),
            "sum_frequency_log_spend": (sum_frequency_log_spend, frequency * log_spend),
        }
        checked = {}
        for name, (given, terms) in sums.items():
            from_pairs = float(np.dot(counts, terms))
            if given is None:
                checked[name] = from_pairs
                continue
            given = check_real(given, name)
            # Sums over millions of customers in any order agree with the pairs' to about
            # 1e-12 of the sum of magnitudes; a log in base 10 or a sum over pairs is far off.
            if abs(given - from_pairs) > 1e-8 * float(np.dot(counts, np.abs(terms))) + 1e-300:
                raise ValueError(
                    f"{name} = {given!r} but the pairs give {from_pairs!r}: it must be the natural-log sum "
                    "over the repeat customers (each pair counted as often as its count)"
                )
            checked[name] = given
        n_customers = int(counts.sum())
        mean_spend = float(np.dot(counts, monetary_value)) / n_customers if n_customers else float("nan")
        self._set(
            frequency,
            monetary_value,
            counts,
            checked["sum_log_spend"],
            checked["sum_frequency_log_spend"],
            mean_spend,
            _weighted_correlation(frequency, monetary_value, counts),
            covariates,
            design,
        )

    @classmethod
    def _from_checked(cls, *values) -> SpendStatistics:
        """Built from arrays already checked (by :func:`spend_statistics`), with its exact figures."""
        statistics = cls.__new__(cls)
        statistics._set(*values)
        return statistics

    def _set(self, frequency, monetary_value, counts, sum_log_spend, sum_frequency_log_spend, mean_spend, correlation,
             covariates=(), design=None):
        self._covariates = tuple(covariates)
        self._design = _read_only(np.zeros((len(frequency), 0)) if design is None
                                  else np.array(design, dtype=np.float64).reshape(len(frequency), len(covariates)))
        self._frequency = _read_only(np.array(frequency, dtype=np.float64))
        self._monetary_value = _read_only(np.array(monetary_value, dtype=np.float64))
        self._counts = _read_only(np.array(counts, dtype=np.int64))
        # Per distinct frequency, in the order of the pairs (so, for pairs in the order of
        # their first customer, that of the first customer with each frequency). The
        # counts are summed as floats, exact below 2**53 customers.
        (frequencies,), inverse, _ = unique_rows([self._frequency])
        frequency_counts = np.bincount(inverse, weights=self._counts, minlength=len(frequencies)).astype(np.int64)
        self._by_frequency = (frequencies, frequency_counts, np.log(frequencies))
        self._n_customers = int(self._counts.sum())
        self._sum_log_spend = float(sum_log_spend)
        self._sum_frequency_log_spend = float(sum_frequency_log_spend)
        self._mean_spend = float(mean_spend)
        self._correlation = float(correlation)

    @property
    def frequency(self) -> np.ndarray:
        return self._frequency

    @property
    def monetary_value(self) -> np.ndarray:
        return self._monetary_value

    @property
    def counts(self) -> np.ndarray:
        return self._counts

    @property
    def n_customers(self) -> int:
        return self._n_customers

    @property
    def covariates(self) -> tuple[str, ...]:
        return self._covariates

    @property
    def design(self) -> np.ndarray:
        return self._design

    @property
    def sum_log_spend(self) -> float:
        return self._sum_log_spend

    @property
    def sum_frequency_log_spend(self) -> float:
        return self._sum_frequency_log_spend

    @property
    def mean_spend(self) -> float:
        return self._mean_spend

    @property
    def frequency_monetary_correlation(self) -> float:
        return self._correlation

    def __len__(self) -> int:
        """The number of distinct (frequency, monetary_value) pairs."""
        return len(self._counts)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(customers={self.n_customers}, pairs={len(self)})"


def spend_statistics(features, covariates=None) -> SpendStatistics:
    """The repeat customers of a features table reduced to :class:`SpendStatistics`.

    The customers :meth:`GammaGammaModel.fit` reads: frequency > 0 and monetary_value > 0.
    A fit on the result equals, bit for bit, the fit on ``features``.

    Parameters
    ----------
    features : pandas.DataFrame
        One row per customer with columns ``frequency`` (repeat purchases) and
        ``monetary_value`` (mean spend over the repeat purchases); other columns are
        ignored. Or a seeded uniform sample of such rows (see :class:`SpendStatistics`).
    covariates : sequence of str, optional
        Design columns to keep with each pair (for a fit with covariates); rows are then
        distinct (design, frequency, monetary_value).

    Returns
    -------
    SpendStatistics
        Pairs in the order of their first customer.

    Raises
    ------
    TypeError
        If ``features`` is not a DataFrame.
    ValueError
        If a column is missing, NaN, infinite or negative, or a frequency fractional; the
        message names the column and the number of rows.
    """
    columns = check_features(features, SPEND_COLUMNS)
    covariates = check_covariates(covariates)
    repeat = (columns["frequency"] > 0) & (columns["monetary_value"] > 0)
    frequency, spend = columns["frequency"][repeat], columns["monetary_value"][repeat]
    design = design_matrix(features, covariates)[repeat] if covariates else None
    if design is None:
        (pair_frequencies, pair_spends), _, pair_counts = unique_rows([frequency, spend])
    else:
        (pair_frequencies, pair_spends, *pair_design), _, pair_counts = unique_rows([frequency, spend, *design.T])
        design = np.column_stack(pair_design) if len(pair_frequencies) else np.zeros((0, len(covariates)))
    log_spend = np.log(spend)
    varied = len(spend) > 0 and np.ptp(frequency) > 0 and np.ptp(spend) > 0
    # The customers are at hand, so the mean and the correlation are taken over them as
    # before the pairs existed: a fit on a table gives the same bits as it always has.
    return SpendStatistics._from_checked(
        pair_frequencies,
        pair_spends,
        pair_counts,
        float(np.sum(log_spend)),
        float(np.sum(frequency * log_spend)),
        float(np.mean(spend)) if len(spend) else float("nan"),
        float(np.corrcoef(frequency, spend)[0, 1]) if varied else float("nan"),
        covariates,
        design,
    )


def _float_array(values, name):
    """A 1-d numeric argument as float64; the messages name it."""
    array = np.asarray(values)
    if array.dtype == object:  # pandas' nullable numbers arrive as objects
        array = pd.to_numeric(pd.Series(array.ravel())).to_numpy(dtype=np.float64, na_value=np.nan)
    if array.dtype == np.bool_ or not np.issubdtype(array.dtype, np.number):
        raise TypeError(f"{name} must be an array of numbers, got {array.dtype}")
    if array.ndim != 1:
        raise ValueError(f"{name} must be 1-d, one number per distinct pair; got {array.ndim} dimension(s)")
    return array.astype(np.float64)


def _check_whole_positive(values, name, what):
    bad = int(np.count_nonzero(~np.isfinite(values) | (values != np.floor(values)) | (values < 1)))
    if bad:
        raise ValueError(f"{name}: {rows(bad)} not a whole number of at least 1 ({what})")


def _weighted_correlation(frequency, spend, counts):
    """Pearson correlation over customers, from distinct pairs and their counts; NaN if either is constant."""
    if len(counts) == 0 or np.ptp(frequency) == 0 or np.ptp(spend) == 0:
        return float("nan")
    n = counts.sum()
    frequency_deviation = frequency - np.dot(counts, frequency) / n
    spend_deviation = spend - np.dot(counts, spend) / n
    covariance = np.dot(counts, frequency_deviation * spend_deviation)
    variances = np.dot(counts, frequency_deviation**2) * np.dot(counts, spend_deviation**2)
    # Clipped like numpy's corrcoef: rounding can carry |r| a hair past 1.
    return float(np.clip(covariance / np.sqrt(variances), -1.0, 1.0))


def _read_only(array):
    array.flags.writeable = False
    return array


def _log_likelihood_and_gradient(params, statistics):
    """Total Gamma-Gamma log-likelihood of the repeat customers, and its gradient.

    Fader, Hardie & Lee (2005) [1]_ eq. 3, the density of a customer's mean
    spend m over x purchases:
    f(m | p, q, gamma, x) = Gamma(p x + q) / (Gamma(p x) Gamma(q))
                            * gamma^q m^(p x - 1) x^(p x) / (gamma + m x)^(p x + q).

    Parameters
    ----------
    params : numpy.ndarray
        (p, q, gamma), all positive.
    statistics : SpendStatistics

    Returns
    -------
    log_likelihood : float
    gradient : numpy.ndarray
        Derivatives with respect to (p, q, gamma).
    """
    p, q, gamma = params
    x, counts, log_frequencies = statistics._by_frequency
    shape = p * x
    per_frequency = gammaln(shape + q) - gammaln(shape) - gammaln(q) + q * np.log(gamma) + shape * log_frequencies
    pair_x, pair_m, pair_counts = statistics.frequency, statistics.monetary_value, statistics.counts
    log_denominator = np.log(gamma + pair_m * pair_x)
    total = (
        np.dot(counts, per_frequency)
        + p * statistics.sum_frequency_log_spend
        - statistics.sum_log_spend
        - np.dot(pair_counts, (p * pair_x + q) * log_denominator)
    )
    digamma_shape_q = digamma(shape + q)
    gradient = np.array(
        [
            np.dot(counts, x * (digamma_shape_q - digamma(shape) + log_frequencies))
            + statistics.sum_frequency_log_spend
            - np.dot(pair_counts, pair_x * log_denominator),
            np.dot(counts, digamma_shape_q - digamma(q) + np.log(gamma)) - np.dot(pair_counts, log_denominator),
            statistics.n_customers * q / gamma - np.dot(pair_counts, (p * pair_x + q) / (gamma + pair_m * pair_x)),
        ]
    )
    return float(total), gradient


def _log_likelihood_hessian(params, statistics):
    """Hessian of :func:`_log_likelihood_and_gradient`'s total log-likelihood in (p, q, gamma).

    Differentiating its gradient once more, with psi_1 the trigamma function, d = gamma + m x
    per pair and n the number of customers:
    d2/dp2 = sum_x c_x x^2 (psi_1(p x + q) - psi_1(p x)),  d2/dp dq = sum_x c_x x psi_1(p x + q),
    d2/dp dgamma = -sum c x / d,  d2/dq2 = sum_x c_x (psi_1(p x + q) - psi_1(q)),
    d2/dq dgamma = n / gamma - sum c / d,  d2/dgamma2 = -n q / gamma^2 + sum c (p x + q) / d^2.
    In closed form because central differences of a total over millions of customers
    carry its rounding divided by the squared step: the standard errors then moved in
    their fourth digit with the order of the sums (a table's against a cluster's).
    """
    p, q, gamma = params
    x, counts, _ = statistics._by_frequency
    shape = p * x
    trigamma_shape_q = polygamma(1, shape + q)
    pair_x, pair_counts = statistics.frequency, statistics.counts
    inverse_denominator = 1.0 / (gamma + statistics.monetary_value * pair_x)
    n_customers = statistics.n_customers
    p_p = np.dot(counts, x**2 * (trigamma_shape_q - polygamma(1, shape)))
    p_q = np.dot(counts, x * trigamma_shape_q)
    p_gamma = -np.dot(pair_counts, pair_x * inverse_denominator)
    q_q = np.dot(counts, trigamma_shape_q - polygamma(1, q))
    q_gamma = n_customers / gamma - np.dot(pair_counts, inverse_denominator)
    gamma_gamma = -n_customers * q / gamma**2 + np.dot(pair_counts, (p * pair_x + q) * inverse_denominator**2)
    return np.array([[p_p, p_q, p_gamma], [p_q, q_q, q_gamma], [p_gamma, q_gamma, gamma_gamma]])


def _covariate_log_likelihood_and_derivatives(point, statistics, covariates, hessian=True):
    """Total Gamma-Gamma log-likelihood with gamma_i = gamma exp(d . x_i), its gradient and Hessian.

    ``point`` is (p, q, gamma, d_1..d_k) for the design columns ``covariates`` of
    ``statistics``. The density of [1]_ eq. 3 with each row's gamma_i: the terms of x alone
    are summed per distinct frequency as in the plain model, q log(gamma_i) and
    (p x + q) log(gamma_i + m x) per row. With u = gamma_i / (gamma_i + m x) and c the row's
    count, d/d log(gamma_i) = c (q - (p x + q) u), whose derivative in log(gamma_i) is
    -c (p x + q) u (1 - u); the chain rule through gamma_i = gamma exp(d . x_i) gives the rest.
    """
    point = np.asarray(point, dtype=np.float64)
    p, q, gamma = point[:3]
    coefficients = point[3:]
    design = _design_of(statistics, covariates)
    x, counts, log_frequencies = statistics._by_frequency
    shape = p * x
    per_frequency = gammaln(shape + q) - gammaln(shape) - gammaln(q) + shape * log_frequencies
    pair_x, pair_m = statistics.frequency, statistics.monetary_value
    pair_counts = statistics.counts.astype(np.float64)
    own_gamma = gamma * np.exp(design @ coefficients)
    denominator = own_gamma + pair_m * pair_x
    log_denominator = np.log(denominator)
    log_own_gamma = np.log(own_gamma)
    exponent = p * pair_x + q
    total = (
        np.dot(counts, per_frequency)
        + p * statistics.sum_frequency_log_spend
        - statistics.sum_log_spend
        + np.dot(pair_counts, q * log_own_gamma - exponent * log_denominator)
    )
    share = own_gamma / denominator
    by_log_gamma = pair_counts * (q - exponent * share)
    digamma_shape_q = digamma(shape + q)
    gradient = np.concatenate([
        [
            np.dot(counts, x * (digamma_shape_q - digamma(shape) + log_frequencies))
            + statistics.sum_frequency_log_spend
            - np.dot(pair_counts, pair_x * log_denominator),
            np.dot(counts, digamma_shape_q - digamma(q)) + np.dot(pair_counts, log_own_gamma - log_denominator),
            by_log_gamma.sum() / gamma,
        ],
        design.T @ by_log_gamma,
    ])
    if not hessian:
        return float(total), gradient, None
    trigamma_shape_q = polygamma(1, shape + q)
    curvature = -pair_counts * exponent * share * (1.0 - share)
    p_by_log_gamma = -pair_counts * pair_x * share
    q_by_log_gamma = pair_counts * (1.0 - share)
    size = 3 + len(coefficients)
    result = np.empty((size, size))
    result[0, 0] = np.dot(counts, x**2 * (trigamma_shape_q - polygamma(1, shape)))
    result[0, 1] = result[1, 0] = np.dot(counts, x * trigamma_shape_q)
    result[1, 1] = np.dot(counts, trigamma_shape_q - polygamma(1, q))
    result[0, 2] = result[2, 0] = p_by_log_gamma.sum() / gamma
    result[1, 2] = result[2, 1] = q_by_log_gamma.sum() / gamma
    result[2, 2] = (curvature.sum() - by_log_gamma.sum()) / gamma**2
    result[0, 3:] = result[3:, 0] = design.T @ p_by_log_gamma
    result[1, 3:] = result[3:, 1] = design.T @ q_by_log_gamma
    result[2, 3:] = result[3:, 2] = design.T @ curvature / gamma
    result[3:, 3:] = design.T @ (curvature[:, np.newaxis] * design)
    return float(total), gradient, result


def _design_of(statistics, covariates):
    missing = [name for name in covariates if name not in statistics.covariates]
    if missing:
        raise ValueError(
            f"these SpendStatistics hold no covariate column(s) {missing}; "
            "build them with spend_statistics(features, covariates=...) naming them"
        )
    return statistics.design[:, [statistics.covariates.index(name) for name in covariates]]


def _newton_polish(params, derivatives, max_steps=5):
    """A few Newton steps from where BFGS stopped, onto the maximum itself.

    BFGS stops once the gradient is below its tolerance, at a point that depends on its
    path, and so on the rounding of the sums it read: a table's customers and a cluster's
    aggregates of them, summed in other orders, ended 1e-12 apart. Newton's quadratic
    convergence lands both on the maximum to rounding. A step is taken only where the
    Hessian is negative definite and the parameters stay positive; otherwise BFGS's
    point stands.
    """
    for _ in range(max_steps):
        gradient, hessian = derivatives(params)
        try:
            cholesky = np.linalg.cholesky(-hessian)
        except np.linalg.LinAlgError:
            break
        step = np.linalg.solve(cholesky.T, np.linalg.solve(cholesky, gradient))
        moved = params + step
        if not (np.all(np.isfinite(moved)) and np.all(moved > 0)):
            break
        params = moved
        if np.max(np.abs(step) / params) < 4 * np.finfo(np.float64).eps:
            break
    return params


def _population_mean_spend(p, q, gamma) -> float:
    """Fader, Hardie & Lee (2005) [1]_: E[Z] = p gamma / (q - 1), finite only for q > 1."""
    return float(p * gamma / (q - 1)) if q > 1 else float("inf")


class GammaGammaModel(MaximumLikelihoodEstimator):
    """Gamma-Gamma model of the mean spend per purchase (Fader, Hardie & Lee 2005).

    A customer's purchase amounts are Gamma(p, nu) around their own mean
    p / nu, with nu ~ Gamma(q, gamma) across customers; spend is assumed
    independent of purchase frequency. Fitted on repeat customers only,
    because a customer's first purchase is not part of ``monetary_value``.

    Parameters
    ----------
    penalizer : float, default 0.0
        L2 penalty on (p, q, gamma) added to the mean negative log-likelihood
        per customer, as lifetimes' ``penalizer_coef``. 0 gives the
        maximum-likelihood estimate.
    initial_params : dict of str to float, optional
        Starting values for ``p``, ``q`` and ``gamma``. Defaults to p = 1,
        q = 2 and gamma = the mean spend, so that the starting population mean
        p gamma / (q - 1) equals the observed one whatever the currency unit.
    tol : float, default 1e-7
        Gradient tolerance of BFGS on the mean log-likelihood in log-parameters.
    max_iter : int, optional
        Iteration limit of BFGS; None keeps scipy's default.
    min_repeat_customers : int, default 30
        Refuse to fit on fewer repeat customers (frequency > 0 and
        monetary_value > 0) than this.
    covariates : sequence of str, optional
        Design columns of the features (:class:`~models.covariates.CovariateEncoder`) that
        scale gamma per customer, gamma_i = gamma exp(d . x_i), and so the expected spend per
        purchase by exp(d . x_i). None or empty: the plain model, to the bit. The penalty,
        if any, applies to p, q and gamma only.

    Attributes
    ----------
    params_ : dict of str to float
        ``p``, ``q``, ``gamma``, in the currency unit of ``monetary_value``.
    standard_errors_ : dict of str to float
        From the Hessian of the total log-likelihood in the natural scale, in
        closed form (so the same, to rounding, whatever order the data come in).
    covariance_ : pandas.DataFrame
        Asymptotic covariance matrix of the parameters.
    log_likelihood_ : float
        Total log-likelihood of the repeat customers' mean spends.
    population_mean_spend_ : float
        p gamma / (q - 1), the expected spend per purchase of a customer
        without repeat purchases; infinite when q <= 1.
    frequency_monetary_correlation_ : float
        Pearson correlation of frequency and monetary_value among the repeat
        customers fitted on (exact from a cluster's pairs and counts too, see
        :class:`SpendStatistics`). The model assumes it is close to 0.
    n_customers_ : int
        Repeat customers fitted on.
    n_unique_rows_ : int
        Distinct (frequency, monetary_value) pairs among them.
    convergence_ : dict
        Optimiser, iterations, message, relative gradient at the fit and
        whether the Hessian is negative definite.
    coefficients_ : pandas.DataFrame or None
        With covariates: one row per design column (``process`` ``spend``, ``parameter``
        ``gamma``) with its coefficient d, standard error, z and p-value; ``params_``,
        ``population_mean_spend_`` and ``standard_errors_`` are then the baseline's (every
        design column 0). None without covariates.
    """

    _covariate_links = (("spend", "gamma", 1),)

    model_name = "gammagamma"
    parameter_names = ("p", "q", "gamma")

    def __init__(self, penalizer=0.0, initial_params=None, tol=1e-7, max_iter=None, min_repeat_customers=30,
                 covariates=None):
        super().__init__(penalizer=penalizer, initial_params=initial_params, tol=tol, max_iter=max_iter,
                         covariates=covariates)
        self.min_repeat_customers = min_repeat_customers

    def _check_settings(self):
        super()._check_settings()
        if not (isinstance(self.min_repeat_customers, numbers.Integral) and self.min_repeat_customers >= 1):
            raise ValueError(f"min_repeat_customers must be a positive integer, got {self.min_repeat_customers!r}")

    def fit(self, features, y=None):
        """Estimate p, q and gamma by maximum likelihood on the repeat customers.

        Parameters
        ----------
        features : pandas.DataFrame or SpendStatistics
            One row per customer with columns ``frequency`` (repeat purchases)
            and ``monetary_value`` (mean spend over the repeat purchases).
            Customers with no repeat purchase or zero spend are left out.
            Or the repeat customers already reduced to their distinct pairs
            (:func:`spend_statistics`, or :class:`SpendStatistics` from a
            cluster's aggregates): the same fit.
        y : None
            Ignored; present for scikit-learn compatibility.

        Returns
        -------
        self
        """
        self._check_settings()
        covariates = check_covariates(self.covariates)
        if isinstance(features, SpendStatistics):
            statistics = features
            _design_of(statistics, covariates)  # refuses statistics without the covariates
        elif isinstance(features, pd.DataFrame):
            statistics = spend_statistics(features, covariates)
        else:
            raise TypeError(f"features must be a pandas DataFrame or SpendStatistics, got {type(features).__name__}")
        n_repeat = statistics.n_customers
        if n_repeat < self.min_repeat_customers:
            raise ValueError(
                f"features: only {n_repeat} repeat customers (frequency > 0 and monetary_value > 0); "
                f"the Gamma-Gamma model needs at least min_repeat_customers={self.min_repeat_customers}"
            )

        spends = statistics.monetary_value
        if len(spends) and np.all(spends == spends[0]):
            # The likelihood keeps rising as p and q grow without bound (no spread to fit): say
            # so, rather than report an optimiser's precision loss.
            raise ConvergenceError(
                f"gammagamma: every repeat customer's mean spend is {spends[0]:g}: with no spread in spend, "
                "p and q run away (the spend distribution is not identified); each customer's expected spend "
                f"is simply {spends[0]:g}"
            )
        if self.initial_params is None:
            start = np.array([1.0, 2.0, statistics.mean_spend])
        else:
            start = np.array([self.initial_params[name] for name in self.parameter_names], dtype=np.float64)

        def objective(log_params):
            # Mean per customer on log-parameters, as lifetimes does: positive
            # parameters without bounds, and a tolerance that does not depend
            # on the number of customers.
            params = np.exp(log_params)
            total, gradient = _log_likelihood_and_gradient(params, statistics)
            value = -total / n_repeat + self.penalizer * np.sum(params**2)
            gradient_params = -gradient / n_repeat + 2 * self.penalizer * params
            return value, gradient_params * params

        options = {} if self.max_iter is None else {"maxiter": self.max_iter}
        with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
            # BFGS line searches may probe huge exponents; the result is checked below.
            result = minimize(objective, np.log(start), jac=True, method="BFGS", tol=self.tol, options=options)
        # BFGS reports "precision loss" when tol is below the objective's
        # rounding noise, even at the maximum; result.jac is the gradient of
        # the mean log-likelihood in log-parameters, so judge flatness by it.
        flat = np.all(np.isfinite(result.x)) and np.max(np.abs(result.jac)) <= RELATIVE_GRADIENT_WARNING
        if not (result.success or flat):
            gone = [f"{name} ran away to {value:.3g}" for name, value, first in
                    zip(self.parameter_names, np.exp(result.x), start)
                    if not np.isfinite(value) or not 1e-3 < value / first < 1e3]
            why = (": ".join(["; ".join(gone), "the spend distribution is not identified by these customers' mean spends"])
                   if gone else f"the optimiser did not converge ({result.message})")
            raise ConvergenceError(
                f"gammagamma: {why}; try other initial_params, a larger max_iter or a small penalizer"
            )

        def derivatives(values):
            # Of the penalized total log-likelihood, the function the optimum maximises.
            return (
                _log_likelihood_and_gradient(values, statistics)[1] - 2 * n_repeat * self.penalizer * values,
                _log_likelihood_hessian(values, statistics) - 2 * n_repeat * self.penalizer * np.eye(len(values)),
            )

        params = _newton_polish(np.exp(result.x), derivatives)
        if covariates:
            # The plain maximum is the start; the diagnostics are the covariate fit's.
            params = self._fit_with_covariates(statistics, covariates, params)
        else:
            optimum = describe_optimum(
                lambda values: _log_likelihood_and_gradient(values, statistics)[0],
                params,
                n_repeat,
                optimizer="BFGS on log-parameters (scipy), then Newton steps",
                model_label=type(self).__name__,
                penalty=lambda values: n_repeat * self.penalizer * float(np.sum(values**2)),
                derivatives=derivatives,
            )
            self._store_optimum(
                params,
                optimum,
                n_repeat,
                len(statistics),
                iterations=int(result.nit),
                message=str(result.message),
            )
        self.population_mean_spend_ = _population_mean_spend(*params[:3])
        self.frequency_monetary_correlation_ = statistics.frequency_monetary_correlation
        return self

    def _fit_with_covariates(self, statistics, covariates, plain):
        """p, q, gamma and the coefficients d by maximum likelihood, from the plain maximum ``plain``
        with d = 0 (where the likelihoods are equal); returns the full parameter vector."""
        n_repeat = statistics.n_customers
        layout = _covariate_fit.CoefficientLayout(self.parameter_names, self._covariate_links, covariates)

        def log_likelihood(values):
            if not np.all(values[:3] > 0):
                return -np.inf
            return _covariate_log_likelihood_and_derivatives(values, statistics, covariates, hessian=False)[0]

        def penalty(values):
            return n_repeat * self.penalizer * float(np.sum(values[:3] ** 2))

        def penalty_gradient(values):
            gradient = np.zeros_like(values)
            gradient[:3] = 2 * n_repeat * self.penalizer * values[:3]
            return gradient

        def gradient(values):
            return _covariate_log_likelihood_and_derivatives(values, statistics, covariates, hessian=False)[1] - \
                penalty_gradient(values)

        def derivatives(values):
            _, gradient, hessian = _covariate_log_likelihood_and_derivatives(values, statistics, covariates)
            penalty_hessian = np.diag((np.arange(len(values)) < 3) * 2.0 * n_repeat * self.penalizer)
            return gradient - penalty_gradient(values), hessian - penalty_hessian

        label = type(self).__name__
        point, _ = _covariate_fit.maximise(log_likelihood, layout.start(plain), layout.real_line, n_repeat, penalty,
                                           tol=self.tol, max_iter=self.max_iter, gradient=gradient,
                                           derivatives=derivatives, model_label=label)
        optimum = describe_optimum(
            log_likelihood, point, n_repeat,
            optimizer="L-BFGS-B on log-parameters and coefficients from the plain maximum, then Newton steps",
            model_label=label, penalty=penalty, derivatives=derivatives, real_line=layout.real_line,
        )
        self._store_optimum(point, optimum, n_repeat, len(statistics), layout=layout)
        return point

    def with_params(self, values):
        """A copy of this fitted model predicting at other values of p, q, gamma (and the
        coefficients): :meth:`MaximumLikelihoodEstimator.with_params`, with
        ``population_mean_spend_`` recomputed from them."""
        model = super().with_params(values)
        model.population_mean_spend_ = _population_mean_spend(*(model.params_[name] for name in self.parameter_names))
        return model

    def expected_spend(self, features):
        """Expected mean spend per future purchase of each customer, given their history.

        Parameters
        ----------
        features : pandas.DataFrame
            Columns ``frequency`` and ``monetary_value``, indexed by customer id, and the
            design columns of a model fitted with covariates.

        Returns
        -------
        pandas.Series
            E[Z | x, m], indexed like ``features``. Customers without repeat
            purchases get the population mean ``population_mean_spend_`` (with covariates,
            their own: times exp(d . x_i)).
        """
        check_is_fitted(self)
        columns = check_features(features, SPEND_COLUMNS)
        population_mean_spend = self.population_mean_spend_
        covariates = tuple(getattr(self, "covariates_", ()))
        if covariates:
            # Each customer's own population mean: gamma_i = gamma exp(d . x_i) scales it.
            coefficients = self.coefficients_.set_index("covariate")["coefficient"]
            design = design_matrix(features, covariates)
            population_mean_spend = population_mean_spend * np.exp(design @ coefficients[list(covariates)].to_numpy())
        p, q = self.params_["p"], self.params_["q"]
        if not q > 1:
            raise ValueError(
                f"the fitted q = {q:.4g} is not above 1, so the model's mean spend per purchase is infinite; "
                "refit with a penalizer or check monetary_value for extreme values"
            )
        frequency, spend = columns["frequency"], columns["monetary_value"]
        # Fader & Hardie, note 025 [2]_ eq. 5 (also Fader, Hardie & Lee 2005 [1]_): a weighted
        # average of the population mean and the customer's own mean, with
        # weight p x / (p x + q - 1) on the customer's own.
        # (1 - w) * mean + w * spend, w = p x / (p x + q - 1), evaluated in the same order in
        # two buffers: at 18M customers each temporary is 144 MB.
        own_weight = np.multiply(p, frequency)
        expected = np.multiply(p, frequency)
        expected += q
        expected -= 1
        own_weight /= expected
        np.subtract(1, own_weight, out=expected)
        expected *= population_mean_spend
        own_weight *= spend
        expected += own_weight
        return pd.Series(expected, index=features.index, name="expected_spend")

    def _summary_extras(self):
        """Gamma-Gamma's own figures in :meth:`summary`."""
        return {
            "population_mean_spend": self.population_mean_spend_,
            "frequency_monetary_correlation": self.frequency_monetary_correlation_,
        }
