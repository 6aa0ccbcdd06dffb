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

With ``covariates`` (design columns, :mod:`models.covariates`) alpha and the dropout
parameters differ by customer; the fit is over distinct (design, frequency, recency, T)
rows, and every prediction evaluates the same closed forms with each row's own parameters
(arrays that broadcast, never a loop over customers).

Lifetime value: ``discounted_expected_residual_purchases`` (DERT: every future purchase,
discounted continuously to T) and ``discounted_expected_purchases_new_customer`` (a new
customer's repeat purchases, discounted to the first, over a horizon or the lifetime) are
P(alive) times the discounted purchases of a customer known to be alive, computed in
``_residual.py`` (a trapezoid rule in log-time, to 1e-12; the Pareto/NBD closed form of
Fader, Hardie & Lee 2005, "RFM and CLV", eq. 2, with its U function evaluated there).

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

from . import _beta_geometric, _covariate_fit, _lifetimes_compat, _optimum, _pareto_nbd, _residual
from ._estimation import MaximumLikelihoodEstimator, describe_optimum
from ._validation import check_count, check_horizon, check_real, group_rows
from .covariates import check_covariate_row, check_covariates
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
    covariates : sequence of str, optional
        Design columns of the features (:class:`~models.covariates.CovariateEncoder`) that
        scale alpha (purchase) and the dropout parameters per customer, with the links of
        :mod:`models.covariates`. None or empty: the plain model, to the bit. The penalty,
        if any, applies to the baseline parameters only; ``initial_params`` start them.

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
    coefficients_ : pandas.DataFrame or None
        With covariates: ``process``, ``parameter``, ``covariate``, ``coefficient``,
        ``standard_error``, ``z``, ``p_value``, one row per coefficient; ``params_`` and
        ``standard_errors_`` are then the baseline's (every design column 0) and
        ``covariance_`` also covers the coefficients. None without covariates.
    """

    # (process, parameter, sign): the parameters a covariate scales, theta_i =
    # theta exp(sign c . x_i). See models.covariates for the choice.
    _covariate_links: tuple[tuple[str, str, int], ...] = ()

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
        covariates = check_covariates(self.covariates)
        histories = as_histories(features, covariates)
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

        if covariates:
            return self._fit_with_covariates(histories, covariates, penalty)
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

    def _fit_with_covariates(self, histories, covariates, penalty):
        """Baseline parameters and coefficients by maximum likelihood, from the plain maximum."""
        frequency, recency, age = histories.unique_arrays()
        counts = histories.counts
        n_customers = int(counts.sum())
        patterns, pattern = _covariate_fit.patterns_of(histories.unique_design(covariates))
        layout = _covariate_fit.CoefficientLayout(self.parameter_names, self._covariate_links, covariates)
        # At coefficients 0 the two likelihoods are equal, so the plain maximum is the
        # natural start: the optimiser then only has to find the covariates' effects.
        plain, _, _ = self._maximise(frequency, recency, age, counts, penalty)
        start = layout.start([plain[name] for name in self.parameter_names])
        log_likelihood, likelihood_gradient = self._covariate_log_likelihood(
            layout, frequency, recency, age, counts, pattern, patterns
        )

        def base_penalty(values):
            return penalty(values[:layout.n_base])

        gradient = derivatives = None
        if likelihood_gradient is not None:
            def gradient(values):
                return likelihood_gradient(values) - _covariate_fit.penalty_gradient(base_penalty, values)

            def derivatives(values):
                return gradient(values), _covariate_fit.hessian_from_gradient(gradient, values, layout.real_line)

        label = type(self).__name__
        point, _ = _covariate_fit.maximise(log_likelihood, start, layout.real_line, n_customers, base_penalty,
                                           tol=self.tol, max_iter=self.max_iter, gradient=gradient,
                                           derivatives=derivatives, model_label=label)
        optimum = describe_optimum(log_likelihood, point, n_customers, optimizer=self._covariate_optimizer,
                                   model_label=label, penalty=base_penalty, derivatives=derivatives,
                                   real_line=layout.real_line)
        self._store_optimum(point, optimum, n_customers, len(counts), layout=layout, tol=self.tol)
        return self

    _covariate_optimizer = "L-BFGS-B on log-parameters and coefficients from the plain maximum, then Newton steps"

    def _covariate_log_likelihood(self, layout, frequency, recency, age, counts, pattern, patterns):
        """The total log-likelihood of the full parameter vector (``layout``) over distinct rows,
        each with its pattern's parameters, and its gradient (a callable, or None to have it by
        finite differences)."""
        raise NotImplementedError

    def _fitted_covariates(self) -> tuple[str, ...]:
        """The design columns the fit used; () for a plain fit (or one pickled before covariates)."""
        return tuple(getattr(self, "covariates_", ()))

    def _params_for(self, design):
        """The parameters of each row of ``design`` (rows x fitted covariates): ``params_`` as it is
        without covariates (the plain path, bit for bit), else arrays for the linked ones."""
        covariates = self._fitted_covariates()
        if not covariates:
            return self.params_
        layout = _covariate_fit.CoefficientLayout(self.parameter_names, self._covariate_links, covariates)
        point = [*(self.params_[name] for name in self.parameter_names), *self.coefficients_["coefficient"]]
        return layout.individual(point, design)

    def _histories(self, features):
        return as_histories(features, self._fitted_covariates())

    def _row_params(self, histories):
        covariates = self._fitted_covariates()
        return self._params_for(histories.unique_design(covariates) if covariates else None)

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
        """Evaluate ``compute(params, frequency, recency, T)`` once per unique row, one value per customer.

        ``params`` is ``params_``, or with covariates each row's own (arrays for the linked
        parameters). The Series is indexed like ``features``: a DataFrame's index, or a
        CustomerHistories' ``index`` (that of the features it grouped).
        """
        check_is_fitted(self)
        histories = self._histories(features)
        # Read first: histories built from counts alone refuse here, before any computing.
        inverse, index = histories.inverse, histories.index
        if len(histories) == 0:
            return pd.Series([], index=index, name=name, dtype=np.float64)
        values = np.asarray(compute(self._row_params(histories), *histories.unique_arrays()), dtype=np.float64)
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
            lambda params, frequency, recency, age: _lifetimes_compat.conditional_expected_purchases(
                self.model_name, params, horizon, frequency, recency, age
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
        histories = self._histories(features)
        inverse = histories.inverse  # histories built from counts alone refuse here
        if len(histories) == 0:
            return np.zeros((0, len(horizons)))
        covariates = self._fitted_covariates()
        pattern = None
        if covariates:
            pattern = _covariate_fit.patterns_of(histories.unique_design(covariates))[1]
        per_unique = _lifetimes_compat.conditional_expected_purchases_by_horizon(
            self.model_name, self._row_params(histories), horizons, *histories.unique_arrays(), pattern=pattern
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
            lambda params, frequency, recency, age: _lifetimes_compat.probability_alive(
                self.model_name, params, frequency, recency, age
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

        def compute(params, frequency, recency, age):
            if horizon == 0:
                # Nothing can happen in an empty period; exact, unlike the formulas' rounding.
                return np.full(len(frequency), float(n_purchases == 0))
            return self._conditional_probability_of_purchases(params, n_purchases, horizon, frequency, recency, age)

        return self._per_unique_history(features, compute, "probability_of_purchases")

    def expected_purchases_new_customer(self, horizon, covariates=None):
        """Expected repeat purchases of a newly acquired customer within ``horizon`` periods of the first.

        Parameters
        ----------
        horizon : float or array_like of float
            Time since the first purchase, in the model's time unit.
        covariates : dict, pandas.Series or pandas.DataFrame, optional
            For a model fitted with covariates, the new customer's design values (a dict or
            Series of design column to value), or a table of several customers' (one row
            each, e.g. ``encoder.transform(new_customers)``). None: the baseline customer
            (every design column 0: reference levels, mean numerics). Ignored without
            covariates.

        Returns
        -------
        float, numpy.ndarray or pandas.Series
            Unconditional E[X(horizon)], shaped like ``horizon``; for a table of customers a
            Series indexed like it (scalar ``horizon``) or an array (customers, *horizon's shape).
        """
        check_is_fitted(self)
        values = np.asarray(horizon, dtype=np.float64)
        if np.any(~np.isfinite(values)) or np.any(values < 0):
            raise ValueError("horizon must be finite and non-negative")
        fitted_covariates = self._fitted_covariates()
        if not fitted_covariates or covariates is None or not isinstance(covariates, pd.DataFrame):
            params = self.params_
            if fitted_covariates and covariates is not None:
                one_row = self._params_for(check_covariate_row(covariates, fitted_covariates))
                params = {name: float(np.asarray(value).reshape(-1)[0]) for name, value in one_row.items()}
            expected = _lifetimes_compat.expected_purchases_new_customer(self.model_name, params, values)
            expected = expected.reshape(values.shape)
            return float(expected) if expected.ndim == 0 else expected
        design = check_covariate_row(covariates, fitted_covariates)
        per_row = self._params_for(design)
        shaped = {name: (np.asarray(value).reshape((-1,) + (1,) * values.ndim) if np.ndim(value) else value)
                  for name, value in per_row.items()}
        expected = _lifetimes_compat.expected_purchases_new_customer(self.model_name, shaped, values[np.newaxis, ...])
        expected = np.broadcast_to(expected, (len(design), *values.shape))
        if values.ndim == 0:
            return pd.Series(np.array(expected, dtype=np.float64), index=covariates.index,
                             name="expected_purchases_new_customer")
        return np.array(expected, dtype=np.float64)

    def discounted_expected_residual_purchases(self, features, discount_rate_continuous):
        """Discounted expected residual purchases (DERT): every future purchase, each discounted to T.

        ``E[integral_T^inf exp(-delta (t - T)) dX(t) | history]``: the expected purchases
        after the end of calibration over the customer's whole remaining lifetime, each
        discounted continuously from its time back to T. Times the expected spend per
        purchase (and a margin rate) it is the residual lifetime value (Fader, Hardie &
        Lee 2005, "RFM and CLV", eq. 2 for Pareto/NBD; computed as in ``models/_residual.py``).

        Parameters
        ----------
        features : pandas.DataFrame or CustomerHistories
            Columns ``frequency``, ``recency``, ``T``, indexed by customer id, or those
            customers grouped (:func:`~models.histories.group_histories`); for a model
            fitted with covariates, with its design columns.
        discount_rate_continuous : float
            Continuous discount rate delta per model period (the features' time unit), 0 or
            more: a purchase ``t`` periods after T counts ``exp(-delta t)``. From an annual
            rate d, ``log(1 + d) * days_per_period / 365.25``
            (:func:`~models.discounting.continuous_discount_rate`).

        Returns
        -------
        pandas.Series
            DERT, in purchases, indexed like ``features``. With a rate of 0 it is the
            expected number of all future purchases: finite for BG/NBD and MBG/NBD when
            a > 1 and for Pareto/NBD when s > 1 (the mean of 1 / p, of lambda / mu, is
            finite), inf otherwise.
        """
        delta = _check_continuous_rate(discount_rate_continuous)

        def compute(params, frequency, recency, age):
            alive = _lifetimes_compat.probability_alive(self.model_name, params, frequency, recency, age)
            # Recency only enters P(alive): the rest is once per distinct (frequency, T) and,
            # with covariates, per distinct parameters (few: thousands of 230k histories).
            per_row = [np.broadcast_to(value, frequency.shape) for value in params.values() if np.ndim(value)]
            (pair_frequency, pair_age, *_), pair = group_rows([frequency, age, *per_row])
            first_row = np.empty(len(pair_frequency), dtype=np.intp)
            first_row[pair[::-1]] = np.arange(len(pair))[::-1]
            pair_params = {name: value[first_row] if np.ndim(value) else value for name, value in params.items()}
            when_alive = _residual.discounted_when_alive(
                self.model_name,
                _residual.alive_parameters(self.model_name, pair_params, pair_frequency, pair_age),
                delta,
            )
            with np.errstate(invalid="ignore"):
                # A customer certainly dead has no future, even where the alive one's is infinite.
                return np.where(alive == 0, 0.0, alive * when_alive[pair])

        return self._per_unique_history(features, compute, "discounted_expected_residual_purchases")

    def discounted_expected_purchases_new_customer(self, discount_rate_continuous, horizon=np.inf, covariates=None):
        """Expected repeat purchases of a newly acquired customer, each discounted to the first purchase.

        ``E[integral_0^horizon exp(-delta t) dX(t)]`` for a customer whose first purchase is
        at 0 (unconditional: no history yet), over their lifetime (``horizon`` inf) or its
        first ``horizon`` periods. With a rate of 0 and a finite horizon it is
        :meth:`expected_purchases_new_customer`.

        Parameters
        ----------
        discount_rate_continuous : float
            Continuous discount rate per model period, 0 or more (see
            :meth:`discounted_expected_residual_purchases`).
        horizon : float, default inf
            Time since the first purchase, in model periods; inf for the whole lifetime.
        covariates : dict, pandas.Series or pandas.DataFrame, optional
            As for :meth:`expected_purchases_new_customer`: one new customer's design values,
            a table of several customers' (one row each), or None for the baseline customer.
            Ignored without covariates.

        Returns
        -------
        float or pandas.Series
            Discounted expected repeat purchases (the first purchase not counted); for a
            table of customers a Series indexed like it. With a rate of 0 and an infinite
            horizon, all expected repeat purchases (inf where they diverge, as in
            :meth:`discounted_expected_residual_purchases`).
        """
        check_is_fitted(self)
        delta = _check_continuous_rate(discount_rate_continuous)
        horizon = check_real(horizon, "horizon", allow_infinite=True)
        if horizon < 0:
            raise ValueError(f"horizon must be non-negative, got {horizon}")
        params, index = self._new_customer_params(covariates)
        n_rows = 1 if index is None else len(index)
        weight, alive = _residual.new_customer_parameters(self.model_name, params)
        alive = {name: np.broadcast_to(np.asarray(value, dtype=np.float64), (n_rows,)) for name, value in alive.items()}
        value = np.broadcast_to(weight, (n_rows,)) * _residual.discounted_when_alive(self.model_name, alive, delta, horizon)
        if index is None:
            return float(value[0])
        return pd.Series(np.array(value, dtype=np.float64), index=index,
                         name="discounted_expected_purchases_new_customer")

    def _new_customer_params(self, covariates):
        """The parameters of new customers with ``covariates`` (the convention of
        :meth:`expected_purchases_new_customer`) and their index, None for one customer."""
        fitted_covariates = self._fitted_covariates()
        if not fitted_covariates or covariates is None:
            return self.params_, None
        design = check_covariate_row(covariates, fitted_covariates)
        per_row = self._params_for(design)
        if isinstance(covariates, pd.DataFrame):
            return per_row, covariates.index
        return {name: float(np.asarray(value).reshape(-1)[0]) for name, value in per_row.items()}, None


def _check_continuous_rate(discount_rate_continuous):
    delta = check_real(discount_rate_continuous, "discount_rate_continuous")
    if delta < 0:
        raise ValueError(f"discount_rate_continuous must be 0 or more, got {delta}")
    return delta


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

    def _covariate_log_likelihood(self, layout, frequency, recency, age, counts, pattern, patterns):
        # _beta_geometric.per_history takes per-row parameters and gives each row's gradient in
        # them; the chain rule through theta_i = theta exp(sign c . x_i) gives the gradient in
        # the baseline (d theta_i / d theta = theta_i / theta) and in c (sign x_i theta_i).
        weights = np.asarray(counts, dtype=np.float64)
        design = patterns[pattern]
        modified = self._dropout_opportunities_offset == 1
        linked = {parameter: (position, sign) for position, (_, parameter, sign) in enumerate(layout.links)}
        k = len(layout.covariates)

        def evaluate(point):
            values = layout.individual(point, design)
            if not (values["r"] > 0):
                return -np.inf, None
            per_row, per_row_gradient = _beta_geometric.per_history(
                values["r"], values["alpha"], values["a"], values["b"], frequency, recency, age, modified
            )
            return float(np.dot(weights, per_row)), (values, per_row_gradient)

        def log_likelihood(point):
            return evaluate(point)[0]

        def gradient(point):
            total, parts = evaluate(point)
            if parts is None or not np.isfinite(total):
                return np.full(len(point), np.nan)
            values, per_row_gradient = parts
            result = np.zeros(len(point))
            for index, name in enumerate(self.parameter_names):
                weighted = weights * per_row_gradient[index]
                if name not in linked:
                    result[index] = weighted.sum()
                    continue
                position, sign = linked[name]
                # d LL / d log(theta_i), row by row.
                by_log = weighted * values[name]
                result[index] = by_log.sum() / point[index]
                start = layout.n_base + position * k
                result[start:start + k] = sign * (design.T @ by_log)
            return result

        return log_likelihood, gradient

    def _conditional_probability_of_purchases(self, params, n_purchases, horizon, frequency, recency, age):
        # Given alive at T, the history's likelihood factorises into
        # lambda^x exp(-lambda T) (1 - p)^k with k surviving dropout
        # opportunities, so lambda | history ~ Gamma(r + x, alpha + T) and
        # p | history ~ Beta(a, b + k), independently. The Poisson process is
        # memoryless and dropout is only possible after future purchases, so
        # from T on the customer is a BG/NBD customer with those parameters
        # ([1] eq. 8). A customer dead at T makes no purchases. For MBG/NBD
        # ([2]) this reproduces Wagner & Hoppe's conditional expectation.
        r, alpha, a, b = (params[name] for name in self.parameter_names)
        alive = _lifetimes_compat.probability_alive(self.model_name, params, frequency, recency, age)
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
    _covariate_links = (("purchase", "alpha", -1), ("dropout", "a", 1), ("dropout", "b", 1))


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
    _covariate_links = (("purchase", "alpha", -1), ("dropout", "a", 1), ("dropout", "b", 1))


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
    # CLVTools' links (Fader & Hardie note 019): a positive coefficient means faster purchases
    # (smaller alpha), or faster dropout (smaller beta).
    _covariate_links = (("purchase", "alpha", -1), ("dropout", "beta", -1))

    def _maximise(self, frequency, recency, age, counts, penalty):
        # Our own likelihood and optimiser (models/_pareto_nbd.py): lifetimes' maximum, found
        # in a fraction of Nelder-Mead's time.
        likelihood = _pareto_nbd.ParetoNBDLikelihood(frequency, recency, age, counts)
        point = _pareto_nbd.maximise(likelihood, self._start(), penalty, tol=self.tol, max_iter=self.max_iter)
        return dict(zip(self.parameter_names, (float(value) for value in point))), self.tol, likelihood

    def _covariate_log_likelihood(self, layout, frequency, recency, age, counts, pattern, patterns):
        likelihood = _pareto_nbd.ParetoNBDLikelihood(frequency, recency, age, counts, pattern=pattern)
        weights = likelihood.weights

        def log_likelihood(point):
            values = layout.individual(point, patterns)
            if not (values["r"] > 0 and values["s"] > 0):
                return -np.inf
            per_history = likelihood.per_history_by_pattern(values["r"], values["alpha"], values["s"], values["beta"])
            return float(np.dot(weights, per_history))

        return log_likelihood, None

    def _conditional_probability_of_purchases(self, params, n_purchases, horizon, frequency, recency, age):
        if np.ndim(params["alpha"]) == 0:
            return _lifetimes_compat.pareto_probability_of_purchases(
                params, n_purchases, horizon, frequency, recency, age
            )
        # lifetimes' conditional PMF (note 028 eq. 16) branches on alpha < beta for the whole
        # call, so customers go through it in groups sharing (alpha, beta): one vectorised call
        # per design pattern (few for channels; this method is not on the CLV path).
        pairs, group = _covariate_fit.patterns_of(np.column_stack([params["alpha"], params["beta"]]))
        result = np.empty(len(frequency))
        for position, (alpha, beta) in enumerate(pairs):
            rows = group == position
            own = {"r": params["r"], "alpha": float(alpha), "s": params["s"], "beta": float(beta)}
            result[rows] = _lifetimes_compat.pareto_probability_of_purchases(
                own, n_purchases, horizon, frequency[rows], recency[rows], age[rows]
            )
        return result


PURCHASE_MODELS = {
    BetaGeoModel.model_name: BetaGeoModel,
    ModifiedBetaGeoModel.model_name: ModifiedBetaGeoModel,
    ParetoNBDModel.model_name: ParetoNBDModel,
}
