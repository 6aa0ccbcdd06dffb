"""Spend per purchase: the Gamma-Gamma model.

References
----------
.. [1] Fader, P. S., Hardie, B. G. S. and Lee, K. L. (2005), "RFM and CLV:
   using iso-value curves for customer base analysis", Journal of Marketing
   Research 42(4), 415-430.
.. [2] Fader, P. S. and Hardie, B. G. S. (2013), "The Gamma-Gamma model of
   monetary value", http://brucehardie.com/notes/025/.
"""

import numbers

import numpy as np
import pandas as pd
from scipy.optimize import minimize
from scipy.special import digamma, gammaln
from sklearn.utils.validation import check_is_fitted

from ._estimation import RELATIVE_GRADIENT_WARNING, ConvergenceError, MaximumLikelihoodEstimator, describe_optimum
from ._validation import SPEND_COLUMNS, check_features, unique_rows


class _SpendStatistics:
    """The repeat customers' data reduced to what the Gamma-Gamma likelihood needs.

    Terms that depend on a customer only through the frequency x are summed
    once per distinct x; the terms linear in p and log(m) collapse to two
    constants; only log(gamma + m x) is evaluated per distinct (x, m) pair.
    """

    def __init__(self, frequency, spend):
        (self.frequencies,), _, self.frequency_counts = unique_rows([frequency])
        (self.pair_frequencies, self.pair_spends), _, self.pair_counts = unique_rows([frequency, spend])
        self.log_frequencies = np.log(self.frequencies)
        self.sum_log_spend = float(np.sum(np.log(spend)))
        self.sum_frequency_log_spend = float(np.sum(frequency * np.log(spend)))
        self.n_customers = int(len(frequency))


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
    statistics : _SpendStatistics

    Returns
    -------
    log_likelihood : float
    gradient : numpy.ndarray
        Derivatives with respect to (p, q, gamma).
    """
    p, q, gamma = params
    x, counts = statistics.frequencies, statistics.frequency_counts
    shape = p * x
    per_frequency = (
        gammaln(shape + q) - gammaln(shape) - gammaln(q) + q * np.log(gamma) + shape * statistics.log_frequencies
    )
    pair_x, pair_m, pair_counts = statistics.pair_frequencies, statistics.pair_spends, statistics.pair_counts
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
            np.dot(counts, x * (digamma_shape_q - digamma(shape) + statistics.log_frequencies))
            + statistics.sum_frequency_log_spend
            - np.dot(pair_counts, pair_x * log_denominator),
            np.dot(counts, digamma_shape_q - digamma(q) + np.log(gamma)) - np.dot(pair_counts, log_denominator),
            statistics.n_customers * q / gamma - np.dot(pair_counts, (p * pair_x + q) / (gamma + pair_m * pair_x)),
        ]
    )
    return float(total), gradient


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

    Attributes
    ----------
    params_ : dict of str to float
        ``p``, ``q``, ``gamma``, in the currency unit of ``monetary_value``.
    standard_errors_ : dict of str to float
        From the Hessian of the total log-likelihood in the natural scale.
    covariance_ : pandas.DataFrame
        Asymptotic covariance matrix of the parameters.
    log_likelihood_ : float
        Total log-likelihood of the repeat customers' mean spends.
    population_mean_spend_ : float
        p gamma / (q - 1), the expected spend per purchase of a customer
        without repeat purchases; infinite when q <= 1.
    frequency_monetary_correlation_ : float
        Pearson correlation of frequency and monetary_value among the repeat
        customers fitted on. The model assumes it is close to 0.
    n_customers_ : int
        Repeat customers fitted on.
    n_unique_rows_ : int
        Distinct (frequency, monetary_value) pairs among them.
    convergence_ : dict
        Optimiser, iterations, message, relative gradient at the fit and
        whether the Hessian is negative definite.
    """

    model_name = "gammagamma"
    parameter_names = ("p", "q", "gamma")

    def __init__(self, penalizer=0.0, initial_params=None, tol=1e-7, max_iter=None, min_repeat_customers=30):
        super().__init__(penalizer=penalizer, initial_params=initial_params, tol=tol, max_iter=max_iter)
        self.min_repeat_customers = min_repeat_customers

    def _check_settings(self):
        super()._check_settings()
        if not (isinstance(self.min_repeat_customers, numbers.Integral) and self.min_repeat_customers >= 1):
            raise ValueError(f"min_repeat_customers must be a positive integer, got {self.min_repeat_customers!r}")

    def fit(self, features, y=None):
        """Estimate p, q and gamma by maximum likelihood on the repeat customers.

        Parameters
        ----------
        features : pandas.DataFrame
            One row per customer with columns ``frequency`` (repeat purchases)
            and ``monetary_value`` (mean spend over the repeat purchases).
            Customers with no repeat purchase or zero spend are left out.
        y : None
            Ignored; present for scikit-learn compatibility.

        Returns
        -------
        self
        """
        self._check_settings()
        columns = check_features(features, SPEND_COLUMNS)
        repeat = (columns["frequency"] > 0) & (columns["monetary_value"] > 0)
        n_repeat = int(np.count_nonzero(repeat))
        if n_repeat < self.min_repeat_customers:
            raise ValueError(
                f"features: only {n_repeat} repeat customers (frequency > 0 and monetary_value > 0); "
                f"the Gamma-Gamma model needs at least min_repeat_customers={self.min_repeat_customers}"
            )
        frequency, spend = columns["frequency"][repeat], columns["monetary_value"][repeat]
        statistics = _SpendStatistics(frequency, spend)

        if self.initial_params is None:
            start = np.array([1.0, 2.0, float(np.mean(spend))])
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
            raise ConvergenceError(
                f"gammagamma: the optimiser did not converge ({result.message}); "
                "try other initial_params, a larger max_iter or a small penalizer"
            )
        params = np.exp(result.x)

        optimum = describe_optimum(
            lambda values: _log_likelihood_and_gradient(values, statistics)[0],
            params,
            n_repeat,
            optimizer="BFGS on log-parameters (scipy)",
            model_label=type(self).__name__,
            penalty=lambda values: n_repeat * self.penalizer * float(np.sum(values**2)),
        )
        self._store_optimum(
            params,
            optimum,
            n_repeat,
            len(statistics.pair_counts),
            iterations=int(result.nit),
            message=str(result.message),
        )
        p, q, gamma = params
        # Fader, Hardie & Lee (2005) [1]_: E[Z] = p gamma / (q - 1), finite only for q > 1.
        self.population_mean_spend_ = float(p * gamma / (q - 1)) if q > 1 else float("inf")
        self.frequency_monetary_correlation_ = (
            float(np.corrcoef(frequency, spend)[0, 1]) if np.ptp(frequency) > 0 and np.ptp(spend) > 0 else float("nan")
        )
        return self

    def expected_spend(self, features):
        """Expected mean spend per future purchase of each customer, given their history.

        Parameters
        ----------
        features : pandas.DataFrame
            Columns ``frequency`` and ``monetary_value``, indexed by customer id.

        Returns
        -------
        pandas.Series
            E[Z | x, m], indexed like ``features``. Customers without repeat
            purchases get the population mean ``population_mean_spend_``.
        """
        check_is_fitted(self)
        columns = check_features(features, SPEND_COLUMNS)
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
        expected *= self.population_mean_spend_
        own_weight *= spend
        expected += own_weight
        return pd.Series(expected, index=features.index, name="expected_spend")

    def _summary_extras(self):
        """Gamma-Gamma's own figures in :meth:`summary`."""
        return {
            "population_mean_spend": self.population_mean_spend_,
            "frequency_monetary_correlation": self.frequency_monetary_correlation_,
        }
