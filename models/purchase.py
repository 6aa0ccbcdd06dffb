"""Purchase-count models: BG/NBD, MBG/NBD and Pareto/NBD.

Each estimator reads one row per customer (``frequency``, ``recency``, ``T``,
in a common time unit such as weeks) and answers questions about future
purchases in that unit. Every fit is our own: lifetimes' likelihoods, evaluated
once per distinct history (BG/NBD and MBG/NBD in ``_beta_geometric.py``, with
their analytic gradient; Pareto/NBD in ``_pareto_nbd.py``, 2F1 once per distinct
pair) and maximised by one optimiser (``_optimum.py``: L-BFGS-B on log-parameters
from a start computed from the data, Newton steps, bounded fallback starts),
reaching lifetimes' maxima (tested) in a fraction of its time. Most closed-form
predictions come from lifetimes, wrapped in ``_lifetimes_compat.py``. Everything
is computed once per unique (frequency, recency, T) row and joined back to the
customer index. Every method
that reads customers takes a features table or, to group the customers only once
for many calls, their :class:`~models.histories.CustomerHistories`.

References
----------
.. [1] Fader, P. S., Hardie, B. G. S. and Lee, K. L. (2005), "Counting your
   customers the easy way: an alternative to the Pareto/NBD model",
   Marketing Science 24(2), 275-284.
.. [2] Batislam, E. P., Denizel, M. and Filiztekin, A. (2007), "Empirical
   validation and comparison of models for customer base analysis",
   International Journal of Research in Marketing 24(3), 201-209; corrected
   in Wagner, U. and Hoppe, D. (2008), "Erratum on the MBG/NBD model",
   International Journal of Research in Marketing 25(3), 225-226.
.. [3] Schmittlein, D. C., Morrison, D. G. and Colombo, R. (1987), "Counting
   your customers: who are they and what will they do next?", Management
   Science 33(1), 1-24; expressions as in Fader, P. S. and Hardie, B. G. S.
   (2005), "A note on deriving the Pareto/NBD model and related expressions",
   http://brucehardie.com/notes/009/.
"""

import numpy as np
import pandas as pd
from scipy.special import betaln
from scipy.stats import nbinom
from sklearn.utils.validation import check_is_fitted

from . import _beta_geometric, _lifetimes_compat, _optimum, _pareto_nbd
from ._estimation import MaximumLikelihoodEstimator, describe_optimum
from ._validation import check_count, check_horizon
from .histories import as_histories


class _PurchaseModel(MaximumLikelihoodEstimator):
    """Shared fitting, validation and prediction for the purchase-count models.

    Every method that reads customers takes a features table, checked and grouped into
    unique histories at each call, or a :class:`~models.histories.CustomerHistories`
    (checked and grouped once, by the caller): the same numbers either way. A Series
    result is "indexed like ``features``": the DataFrame's index, or the
    CustomerHistories' ``index``, which is that of the features it grouped.

    Parameters
    ----------
    penalizer : float, default 0.0
        L2 penalty on the parameters, acting as lifetimes' ``penalizer_coef``
        in an unweighted lifetimes fit: added to the mean (BG/NBD, MBG/NBD) or
        total (Pareto/NBD) negative log-likelihood, with time rescaled so that
        the oldest customer's age is 1. 0 gives the maximum-likelihood
        estimate.
    initial_params : dict of str to float, optional
        Starting values for the optimiser, in the time unit of the features.
        Defaults to a deterministic start computed from the data (each
        model's ``starting_values``), with bounded fallback starts.
    tol : float, default 1e-7
        Tolerance of L-BFGS-B on the per-customer objective, scaled (see
        ``_optimum.fit``); Newton steps then polish the maximum.
    max_iter : int, optional
        Iteration limit of L-BFGS-B; None keeps 1000. A fit that reaches it
        stops there, with a ConvergenceWarning and ``convergence_["converged"]``
        False.

    Attributes
    ----------
    params_ : dict of str to float
        Maximum-likelihood parameters, in the time unit of the features.
    standard_errors_ : dict of str to float
        Asymptotic standard errors from the Hessian of the total
        log-likelihood in the natural parameter scale (of the penalized
        log-likelihood when ``penalizer`` > 0).
    covariance_ : pandas.DataFrame
        Inverse of the negative Hessian (the asymptotic covariance matrix).
    log_likelihood_ : float
        Total log-likelihood over customers at ``params_``, in the features'
        time unit (the number the papers report).
    n_customers_ : int
        Customers the model was fitted on.
    n_unique_rows_ : int
        Distinct (frequency, recency, T) rows, the size of the likelihood sum.
    convergence_ : dict
        Optimiser name, the tolerance used, relative gradient per customer at
        the fit, whether the Hessian is negative definite, and an overall
        ``converged`` flag.
    """

    def fit(self, features, y=None):
        """Estimate the model's parameters by maximum likelihood.

        Parameters
        ----------
        features : pandas.DataFrame or CustomerHistories
            One row per customer with columns ``frequency`` (repeat
            purchases), ``recency`` (age at the last repeat purchase) and
            ``T`` (age at the end of calibration); other columns are ignored.
            Or those customers already grouped (:func:`~models.histories.group_histories`).
        y : None
            Ignored; present for scikit-learn compatibility.

        Returns
        -------
        self
        """
        self._check_settings()
        histories = as_histories(features)
        if len(histories) == 0:
            raise ValueError("features: no rows to fit on")
        frequency, recency, age = histories.unique_arrays()
        if np.max(age) == 0:
            raise ValueError("features: column 'T': every row is 0, so there is no time to learn purchase rates from")
        if np.max(frequency) == 0:
            # Every likelihood then rises towards a mean purchase rate of 0 along a ridge flat
            # enough for the optimiser to stop anywhere on it, with no parameter run far.
            raise ValueError("features: column 'frequency': every row is 0, so there are no repeat purchases to learn "
                             "purchase rates from")
        counts = histories.counts
        n_customers = int(counts.sum())

        def penalty(values):
            return _lifetimes_compat.penalty(self.model_name, values, age, n_customers, self.penalizer)

        params, tol_used, log_likelihood = self._maximise(frequency, recency, age, counts, penalty)
        point = np.array([params[name] for name in self.parameter_names])
        # Standard errors from our own Hessian, for every model (_lifetimes_compat, workaround 7).
        optimum = describe_optimum(
            log_likelihood,
            point,
            n_customers,
            optimizer=self._optimizer,
            model_label=type(self).__name__,
            penalty=penalty,
            # The Hessian newton_polish checked: from the closed-form gradient where there is one.
            derivatives=_optimum.derivatives(log_likelihood, penalty),
        )
        self._store_optimum(point, optimum, n_customers, len(counts), tol=tol_used)
        return self

    # The optimiser's name in convergence_, set by each model.
    _optimizer = ""

    def _maximise(self, frequency, recency, age, counts, penalty):
        """The maximum of the (penalized) likelihood of distinct histories weighted by ``counts``:
        ``(params, tol_used, log_likelihood)``, the last the total log-likelihood as a function
        of the parameter vector. Each model has its own."""
        raise NotImplementedError

    def _start(self):
        """``initial_params`` as a vector in the order of ``parameter_names``, or None."""
        return None if self.initial_params is None else [self.initial_params[name] for name in self.parameter_names]

    def _per_unique_history(self, features, compute, name):
        """Evaluate ``compute(frequency, recency, T)`` once per unique row, one value per customer.

        The Series is indexed like ``features``: a DataFrame's index, or a CustomerHistories'
        ``index`` (that of the features it grouped).
        """
        check_is_fitted(self)
        histories = as_histories(features)
        # Read first: histories built from counts alone refuse here, before any computing.
        inverse, index = histories.inverse, histories.index
        if len(histories) == 0:
            return pd.Series([], index=index, name=name, dtype=np.float64)
        values = np.asarray(compute(*histories.unique_arrays()), dtype=np.float64)
        return pd.Series(values[inverse], index=index, name=name)

    def expected_purchases(self, features, horizon):
        """Expected number of purchases in the next ``horizon`` periods, given each customer's history.

        Parameters
        ----------
        features : pandas.DataFrame or CustomerHistories
            Columns ``frequency``, ``recency``, ``T``, indexed by customer id, or those
            customers grouped (:func:`~models.histories.group_histories`).
        horizon : float
            Length of the future period, in the time unit of ``recency`` and ``T``.

        Returns
        -------
        pandas.Series
            Expected purchases in (T, T + horizon], indexed like ``features``.
        """
        horizon = check_horizon(horizon)
        return self._per_unique_history(
            features,
            lambda frequency, recency, age: _lifetimes_compat.conditional_expected_purchases(
                self.model_name, self.params_, horizon, frequency, recency, age
            ),
            "expected_purchases",
        )

    def expected_purchases_by_horizon(self, features, horizons):
        """Expected purchases in (T, T + h] for each of several horizons ``h``.

        One pass over the unique histories for all horizons, where calling
        :meth:`expected_purchases` per horizon on a features table would regroup the
        customers each time (that regrouping was half the cost of a 52-week CLV at 10M rows).

        Parameters
        ----------
        features : pandas.DataFrame or CustomerHistories
            Columns ``frequency``, ``recency``, ``T``, indexed by customer id, or those
            customers grouped (:func:`~models.histories.group_histories`).
        horizons : sequence of float
            Horizons, in the time unit of ``recency`` and ``T``.

        Returns
        -------
        numpy.ndarray
            Shape (customers, horizons), rows in the order of the customers of ``features``.
        """
        check_is_fitted(self)
        horizons = [check_horizon(h) for h in horizons]
        histories = as_histories(features)
        inverse = histories.inverse  # histories built from counts alone refuse here
        if len(histories) == 0:
            return np.zeros((0, len(horizons)))
        per_unique = _lifetimes_compat.conditional_expected_purchases_by_horizon(
            self.model_name, self.params_, horizons, *histories.unique_arrays()
        )
        return per_unique[inverse]

    def probability_alive(self, features):
        """Probability that each customer is still active at the end of calibration.

        Parameters
        ----------
        features : pandas.DataFrame or CustomerHistories
            Columns ``frequency``, ``recency``, ``T``, indexed by customer id, or those
            customers grouped (:func:`~models.histories.group_histories`).

        Returns
        -------
        pandas.Series
            P(alive at T | history), indexed like ``features``.
        """
        return self._per_unique_history(
            features,
            lambda frequency, recency, age: _lifetimes_compat.probability_alive(
                self.model_name, self.params_, frequency, recency, age
            ),
            "probability_alive",
        )

    def churn_probability(self, features):
        """Probability that each customer has already dropped out by the end of calibration.

        Parameters
        ----------
        features : pandas.DataFrame or CustomerHistories
            Columns ``frequency``, ``recency``, ``T``, indexed by customer id, or those
            customers grouped (:func:`~models.histories.group_histories`).

        Returns
        -------
        pandas.Series
            1 - P(alive at T | history), indexed like ``features``.
        """
        return (1.0 - self.probability_alive(features)).rename("churn_probability")

    def probability_of_purchases(self, features, n_purchases, horizon):
        """Probability of exactly ``n_purchases`` purchases in the next ``horizon`` periods, given history.

        Parameters
        ----------
        features : pandas.DataFrame or CustomerHistories
            Columns ``frequency``, ``recency``, ``T``, indexed by customer id, or those
            customers grouped (:func:`~models.histories.group_histories`).
        n_purchases : int
            Number of purchases, 0 or more.
        horizon : float
            Length of the future period, in the time unit of ``recency`` and ``T``.

        Returns
        -------
        pandas.Series
            P(X(T, T + horizon] = n_purchases | history), indexed like ``features``.
        """
        n_purchases = check_count(n_purchases)
        horizon = check_horizon(horizon)

        def compute(frequency, recency, age):
            if horizon == 0:
                # Nothing can happen in an empty period; exact, unlike the formulas' rounding.
                return np.full(len(frequency), float(n_purchases == 0))
            return self._conditional_probability_of_purchases(n_purchases, horizon, frequency, recency, age)

        return self._per_unique_history(features, compute, "probability_of_purchases")

    def expected_purchases_new_customer(self, horizon):
        """Expected repeat purchases of a newly acquired customer within ``horizon`` periods of the first.

        Parameters
        ----------
        horizon : float or array_like of float
            Time since the first purchase, in the model's time unit.

        Returns
        -------
        float or numpy.ndarray
            Unconditional E[X(horizon)], shaped like ``horizon``.
        """
        check_is_fitted(self)
        values = np.asarray(horizon, dtype=np.float64)
        if np.any(~np.isfinite(values)) or np.any(values < 0):
            raise ValueError("horizon must be finite and non-negative")
        expected = _lifetimes_compat.expected_purchases_new_customer(self.model_name, self.params_, values)
        expected = expected.reshape(values.shape)
        return float(expected) if expected.ndim == 0 else expected


def _probability_of_purchases_when_alive(n_purchases, horizon, r, alpha, a, b):
    """P(exactly n purchases in a period of length ``horizon``) for a BG/NBD customer alive at its start.

    Fader, Hardie & Lee (2005) [1]_ eq. 8:
    P(X(t) = n) = B(a, b + n) / B(a, b) * NB(n; r, alpha / (alpha + t))
                + 1[n > 0] * B(a + 1, b + n - 1) / B(a, b) * P(NB(r, alpha / (alpha + t)) >= n),
    where NB is the negative binomial pmf Gamma(r + n) / (Gamma(r) n!) p^r (1 - p)^n;
    the finite sum in the paper is 1 minus the NB survival function. Arrays
    of ``r``, ``alpha`` and ``b`` are allowed.
    """
    success = alpha / (alpha + horizon)
    still_buying = np.exp(betaln(a, b + n_purchases) - betaln(a, b)) * nbinom.pmf(n_purchases, r, success)
    if n_purchases == 0:
        return still_buying
    dropped_after_last = np.exp(betaln(a + 1, b + n_purchases - 1) - betaln(a, b)) * nbinom.sf(
        n_purchases - 1, r, success
    )
    return still_buying + dropped_after_last


class _BetaGeometricModel(_PurchaseModel):
    # Dropout opportunities a customer with x repeat purchases has survived if
    # alive at T: x for BG/NBD, x + 1 for MBG/NBD (which adds one at time 0).
    _dropout_opportunities_offset = 0

    def _maximise(self, frequency, recency, age, counts, penalty):
        # Our own likelihood with its analytic gradient (models/_beta_geometric.py): lifetimes'
        # maximum, without its autograd gradients and Hessian.
        likelihood = _beta_geometric.BetaGeometricLikelihood(
            frequency, recency, age, counts, modified=self._dropout_opportunities_offset == 1
        )
        point = _beta_geometric.maximise(likelihood, self._start(), penalty, tol=self.tol, max_iter=self.max_iter)
        return dict(zip(self.parameter_names, (float(value) for value in point))), self.tol, likelihood

    def _conditional_probability_of_purchases(self, n_purchases, horizon, frequency, recency, age):
        # Given alive at T, the history's likelihood factorises into
        # lambda^x exp(-lambda T) (1 - p)^k with k surviving dropout
        # opportunities, so lambda | history ~ Gamma(r + x, alpha + T) and
        # p | history ~ Beta(a, b + k), independently. The Poisson process is
        # memoryless and dropout is only possible after future purchases, so
        # from T on the customer is a BG/NBD customer with those parameters
        # ([1] eq. 8). A customer dead at T makes no purchases. For MBG/NBD
        # ([2]) this reproduces Wagner & Hoppe's conditional expectation.
        r, alpha, a, b = (self.params_[name] for name in self.parameter_names)
        alive = _lifetimes_compat.probability_alive(self.model_name, self.params_, frequency, recency, age)
        when_alive = _probability_of_purchases_when_alive(
            n_purchases,
            horizon,
            r + frequency,
            alpha + age,
            a,
            b + frequency + self._dropout_opportunities_offset,
        )
        return (1.0 - alive) * (n_purchases == 0) + alive * when_alive


class BetaGeoModel(_BetaGeometricModel):
    """BG/NBD model of repeat purchases (Fader, Hardie & Lee 2005).

    While active a customer buys as a Poisson process with rate lambda ~
    Gamma(r, alpha); after each repeat purchase they drop out with
    probability p ~ Beta(a, b). Parameters: ``r``, ``alpha`` (time unit of
    the features), ``a``, ``b``.
    """

    model_name = "bgnbd"
    parameter_names = ("r", "alpha", "a", "b")
    _dropout_opportunities_offset = 0
    _optimizer = _beta_geometric.OPTIMIZER.format(model="BG/NBD")


class ModifiedBetaGeoModel(_BetaGeometricModel):
    """MBG/NBD model of repeat purchases (Batislam, Denizel & Filiztekin 2007).

    As BG/NBD, but a customer may also drop out right after the first
    purchase, so customers without repeat purchases are not certainly alive.
    Parameters: ``r``, ``alpha`` (time unit of the features), ``a``, ``b``.
    """

    model_name = "mbgnbd"
    parameter_names = ("r", "alpha", "a", "b")
    _dropout_opportunities_offset = 1
    _optimizer = _beta_geometric.OPTIMIZER.format(model="MBG/NBD")


class ParetoNBDModel(_PurchaseModel):
    """Pareto/NBD model of repeat purchases (Schmittlein, Morrison & Colombo 1987).

    While active a customer buys as a Poisson process with rate lambda ~
    Gamma(r, alpha) and stays active for an exponential lifetime with rate
    mu ~ Gamma(s, beta). Parameters: ``r``, ``alpha``, ``s``, ``beta``
    (``alpha`` and ``beta`` in the time unit of the features).
    """

    model_name = "paretonbd"
    parameter_names = ("r", "alpha", "s", "beta")
    _optimizer = _pareto_nbd.OPTIMIZER

    def _maximise(self, frequency, recency, age, counts, penalty):
        # Our own likelihood and optimiser (models/_pareto_nbd.py): lifetimes' maximum, found
        # in a fraction of Nelder-Mead's time.
        likelihood = _pareto_nbd.ParetoNBDLikelihood(frequency, recency, age, counts)
        point = _pareto_nbd.maximise(likelihood, self._start(), penalty, tol=self.tol, max_iter=self.max_iter)
        return dict(zip(self.parameter_names, (float(value) for value in point))), self.tol, likelihood

    def _conditional_probability_of_purchases(self, n_purchases, horizon, frequency, recency, age):
        return _lifetimes_compat.pareto_probability_of_purchases(
            self.params_, n_purchases, horizon, frequency, recency, age
        )


PURCHASE_MODELS = {
    BetaGeoModel.model_name: BetaGeoModel,
    ModifiedBetaGeoModel.model_name: ModifiedBetaGeoModel,
    ParetoNBDModel.model_name: ParetoNBDModel,
}
