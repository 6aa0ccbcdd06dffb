"""Predicted customer value: discounting, predicted CLV, and its margin and acquisition-cost terms.

Pure functions over arrays and frames indexed by customer id. Predicted CLV
combines a fitted purchase model (``expected_purchases``) with a spend model
(``expected_spend``): the expected purchases of each future step, discounted
to today, times the expected spend and the margin rate, minus the customer
acquisition cost (CAC).

Time units: ``recency``, ``T`` and every ``*_periods`` argument are in the
model's period (the unit of the features, e.g. weeks); ``days_per_period``
converts them to days (7 for weeks, 30.4375 for average months). Rates say
what they are per: ``discount_rate_annual``, ``discount_rate_per_step``.
Margin rates are fractions of revenue (0.3 for 30 %).

Lifetime value uses continuous discounting: a purchase ``t`` periods ahead counts
``exp(-delta t)``, delta the continuous rate per model period from
:func:`continuous_discount_rate` (``log(1 + d_annual) * days_per_period / 365.25``;
``exp(-delta) = 1 / (1 + discount_rate_per_period(...))``, so the two conventions agree at
period ends).

How the pipeline uses this
--------------------------
* Horizon CLV: :func:`discounted_expected_purchases` (``n_steps`` steps of
  ``step_periods`` model periods, ``discount_rate_per_step`` from
  :func:`discount_rate_per_period`), then :func:`predicted_clv`.
* Residual lifetime CLV: ``delta = continuous_discount_rate(discount_rate_annual,
  days_per_period)``; ``dert = purchase_model.discounted_expected_residual_purchases(features,
  delta)`` (purchases, indexed like ``features``; see ``models/_residual.py``); then
  ``predicted_clv(dert, expected_spend, margin_rate)`` (no acquisition cost: these customers
  are already acquired).
* A new customer: ``purchase_model.discounted_expected_purchases_new_customer(delta,
  horizon=inf, covariates=row_or_table)`` is their discounted expected repeat purchases
  from the first purchase on (over ``horizon`` model periods if finite); times margin per
  purchase plus the first purchase's margin, minus CAC, it is the value of acquiring one.
  :func:`payback_period` gives the model periods until that value turns non-negative.

References
----------
.. [1] Fader, P. S., Hardie, B. G. S. and Lee, K. L. (2005), "RFM and CLV:
   using iso-value curves for customer base analysis", Journal of Marketing
   Research 42(4), 415-430: discounted expected transactions times expected
   spend per transaction.
.. [2] lifetimes 0.11.3, ``lifetimes.utils._customer_lifetime_value``: the
   stepwise discounting reproduced here (cash flows at the end of each step).
.. [3] The "historical CLV" business formula (average purchase value x
   purchase frequency x average customer lifespan, on margin, minus the
   customer acquisition cost), as stated in the Spanish practitioner articles
   the project's brief started from (see ``models/historical.py``): the margin
   and CAC terms of predicted CLV follow it.
.. [4] Fader, Hardie & Lee (2005) [1]_ eq. 2: DERT with continuous discounting; the
   payback period is the usual break-even time of acquisition spend (e.g. Gupta, S. and
   Lehmann, D. R. (2005), "Managing customers as investments"), here on the model's
   discounted expected repeat purchases.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

from ._validation import (
    aligned,
    check_positive_int,
    check_positive_real,
    check_real,
    finite_values,
    reindexed,
    rows,
)
from .histories import as_histories

DAYS_PER_YEAR = 365.25


# --- discounting -----------------------------------------------------------


def discount_rate_per_period(discount_rate_annual, days_per_period):
    """Discount rate per period equivalent to an annual rate under compounding.

    Parameters
    ----------
    discount_rate_annual : float
        Annual discount rate as a fraction (0.1 for 10 % a year); above -1.
    days_per_period : float
        Length of the period in days (7 for a week, 30.4375 for an average
        month, ``step_periods * days_per_model_period`` for a CLV step).

    Returns
    -------
    float
        ``(1 + discount_rate_annual) ** (days_per_period / 365.25) - 1``, so
        that compounding over a year of periods gives the annual rate.
    """
    # expm1 of the continuous rate (log1p inside) keeps small rates exact where
    # (1 + d) ** x - 1 would cancel; one place checks and computes the rate.
    return float(np.expm1(continuous_discount_rate(discount_rate_annual, days_per_period)))


def continuous_discount_rate(discount_rate_annual, days_per_period):
    """Continuous discount rate per period equivalent to an annual rate.

    Parameters
    ----------
    discount_rate_annual : float
        Annual discount rate as a fraction (0.1 for 10 % a year); above -1.
    days_per_period : float
        Length of the model period in days (7 for weeks, 30.4375 for average months).

    Returns
    -------
    float
        ``delta = log(1 + discount_rate_annual) * days_per_period / 365.25``: a cash flow
        ``t`` periods ahead is worth ``exp(-delta t)`` today, so a year of periods
        discounts by ``1 / (1 + discount_rate_annual)``, and at whole periods this equals
        :func:`discount_rate_per_period`'s discrete rate, ``exp(delta) - 1``.
    """
    discount_rate_annual = check_real(discount_rate_annual, "discount_rate_annual")
    days_per_period = check_real(days_per_period, "days_per_period")
    if discount_rate_annual <= -1:
        raise ValueError(f"discount_rate_annual must be above -1, got {discount_rate_annual}")
    if days_per_period <= 0:
        raise ValueError(f"days_per_period must be positive, got {days_per_period}")
    return float(np.log1p(discount_rate_annual) * days_per_period / DAYS_PER_YEAR)


# --- predicted CLV ---------------------------------------------------------


# Unique (frequency, recency, T) rows valued at once by discounted_expected_purchases.
UNIQUE_ROWS_PER_BLOCK = 1 << 16


def _expected_purchases_by_step_of_rows(purchase_model, unique_features, n_steps, step_periods):
    """Per-step expected purchases of each row of ``unique_features``, distinct histories."""
    # A purchase model's prediction depends on a customer only through
    # (frequency, recency, T): a whole number and two ages on a daily grid,
    # so tens of millions of customers share far fewer distinct rows. Each
    # horizon is evaluated on those once and the result joined back. The model
    # is given a features table: any model with expected_purchases will do.
    cumulative = np.zeros((len(unique_features), n_steps + 1))
    horizons = [step * step_periods for step in range(1, n_steps + 1)]
    if hasattr(purchase_model, "expected_purchases_by_horizon"):
        cumulative[:, 1:] = purchase_model.expected_purchases_by_horizon(unique_features, horizons)
    else:  # any model with just expected_purchases(features, horizon)
        for step, horizon in enumerate(horizons, start=1):
            cumulative[:, step] = np.asarray(purchase_model.expected_purchases(unique_features, horizon), dtype=np.float64)
    # The models give the cumulative E[X(T, T + t)]; a step's purchases are
    # the increments, as in lifetimes' customer_lifetime_value [2].
    return np.diff(cumulative, axis=1)


def _covariates_of(purchase_model) -> tuple[str, ...]:
    """The design columns a model fitted with covariates reads (grouped with the histories, so
    that the distinct rows carry each customer's design to the model)."""
    return tuple(getattr(purchase_model, "covariates_", ()))


def expected_purchases_by_step(purchase_model, features, n_steps, step_periods):
    """Expected purchases of each customer in each of the next ``n_steps`` steps.

    Parameters
    ----------
    purchase_model : fitted purchase model
        Anything with ``expected_purchases(features, horizon)`` returning the
        conditional expected purchases in (T, T + horizon] (``BetaGeoModel``,
        ``ModifiedBetaGeoModel``, ``ParetoNBDModel``).
    features : pandas.DataFrame or CustomerHistories
        Columns ``frequency``, ``recency``, ``T`` (model periods), indexed by
        customer id, or those customers grouped
        (:func:`~models.histories.group_histories`); for a model fitted with
        covariates, with its design columns (grouped with them).
    n_steps : int
        Number of future steps.
    step_periods : float
        Length of one step in model periods (4.345 weeks for a month, as in
        lifetimes' ``freq='W'``; 365.25 / 12 / 7 = 4.348 for an average month).

    Returns
    -------
    pandas.DataFrame
        Customers x steps: column ``k`` (1 to ``n_steps``) holds the expected
        purchases in (T + (k - 1) * step_periods, T + k * step_periods],
        indexed like ``features`` (a CustomerHistories' ``index``).
    """
    n_steps = check_positive_int(n_steps, "n_steps")
    step_periods = check_positive_real(step_periods, "step_periods")
    histories = as_histories(features, _covariates_of(purchase_model))
    # Read first: histories built from counts alone refuse here, before any computing.
    inverse, index = histories.inverse, histories.index
    by_step = (
        np.zeros((0, n_steps)) if len(histories) == 0
        else _expected_purchases_by_step_of_rows(purchase_model, histories.unique, n_steps, step_periods)
    )
    columns = pd.RangeIndex(1, n_steps + 1, name="step")
    return pd.DataFrame(by_step[inverse], index=index, columns=columns)


def discounted_expected_purchases(purchase_model, features, n_steps, step_periods, discount_rate_per_step):
    """Expected purchases over the next ``n_steps`` steps, each discounted to today.

    Parameters
    ----------
    purchase_model : fitted purchase model
        Anything with ``expected_purchases(features, horizon)``, as in
        :func:`expected_purchases_by_step`.
    features : pandas.DataFrame or CustomerHistories
        Columns ``frequency``, ``recency``, ``T`` (model periods), indexed by
        customer id, or those customers grouped
        (:func:`~models.histories.group_histories`); for a model fitted with
        covariates, with its design columns (grouped with them).
    n_steps : int
        Number of future steps (12 for a year of monthly steps).
    step_periods : float
        Length of one step in model periods.
    discount_rate_per_step : float
        Discount rate per step, as a fraction; see
        :func:`discount_rate_per_period` to derive it from an annual rate.

    Returns
    -------
    pandas.Series
        ``sum_k purchases_k / (1 + discount_rate_per_step) ** k`` for
        k = 1..n_steps, indexed like ``features`` (a CustomerHistories'
        ``index``). Each step's purchases are discounted from the step's end,
        the convention of lifetimes [2].
    """
    discount_rate_per_step = check_real(discount_rate_per_step, "discount_rate_per_step")
    if discount_rate_per_step <= -1:
        raise ValueError(f"discount_rate_per_step must be above -1, got {discount_rate_per_step}")
    n_steps = check_positive_int(n_steps, "n_steps")
    step_periods = check_positive_real(step_periods, "step_periods")
    histories = as_histories(features, _covariates_of(purchase_model))
    # Read first: histories built from counts alone refuse here, before any computing.
    inverse, index = histories.inverse, histories.index
    unique = histories.unique
    discount_factors = (1.0 + discount_rate_per_step) ** -np.arange(1, n_steps + 1, dtype=np.float64)
    discounted = np.zeros(len(unique))
    # Discount on the unique rows, then join back: one float per customer instead of an
    # n_customers x n_steps matrix. The unique rows go a block at a time: their
    # n_steps-wide matrices were gigabytes at 18M customers (~1M distinct histories).
    # Accumulated step by step rather than with a matrix product, whose summation order
    # (BLAS blocking) depends on the number of rows: a customer must get the same bits
    # whether scored alone, in a batch, in a Spark partition or in any block.
    for start in range(0, len(discounted), UNIQUE_ROWS_PER_BLOCK):
        block = unique.iloc[start:start + UNIQUE_ROWS_PER_BLOCK].reset_index(drop=True)
        by_step = _expected_purchases_by_step_of_rows(purchase_model, block, n_steps, step_periods)
        block_discounted = discounted[start:start + len(block)]
        for step in range(by_step.shape[1]):
            block_discounted += by_step[:, step] * discount_factors[step]
    return pd.Series(discounted[inverse], index=index, name="discounted_expected_purchases")


def predicted_clv(discounted_purchases, expected_spend, margin_rate=1.0, acquisition_cost=0.0):
    """Predicted customer lifetime value: discounted purchases x spend x margin - acquisition cost.

    Parameters
    ----------
    discounted_purchases : pandas.Series
        Discounted expected purchases per customer (from
        :func:`discounted_expected_purchases`), indexed by customer id.
    expected_spend : pandas.Series
        Expected revenue per purchase (e.g. Gamma-Gamma's ``expected_spend``),
        indexed by customer id; must cover every customer of
        ``discounted_purchases`` (order may differ).
    margin_rate : float or pandas.Series, default 1.0
        Profit as a fraction of revenue, one for all or per customer
        (:func:`customer_margin_rate`). 1.0 gives revenue CLV.
    acquisition_cost : float or pandas.Series, default 0.0
        Customer acquisition cost (CAC) subtracted once, one for all or per
        customer (:func:`acquisition_cost_per_customer`).

    Returns
    -------
    pandas.Series
        CLV per customer, indexed like ``discounted_purchases``.

    References
    ----------
    Fader, Hardie & Lee (2005) [1]_: CLV = DET x E[M], the discounted expected
    transactions times the expected spend per transaction; margin and CAC as
    in the business formula [3]_.
    """
    if not isinstance(discounted_purchases, pd.Series):
        raise TypeError(
            f"discounted_purchases must be a pandas Series, got {type(discounted_purchases).__name__}"
        )
    index = discounted_purchases.index
    purchases = finite_values(discounted_purchases, "discounted_purchases")
    spend = aligned(expected_spend, index, "expected_spend")
    margin = aligned(margin_rate, index, "margin_rate")
    cost = aligned(acquisition_cost, index, "acquisition_cost")
    # In place, the same operations in the same order: at 18M customers each temporary is 144 MB.
    clv = purchases * spend
    clv *= margin
    clv -= cost
    return pd.Series(clv, index=index, name="clv")


# --- a new customer's payback --------------------------------------------------


def payback_period(purchase_model, discount_rate_continuous, margin_per_purchase, first_purchase_margin,
                   acquisition_cost, covariates=None):
    """Model periods until a new customer's discounted margin covers their acquisition cost.

    The smallest ``t`` with ``first_purchase_margin + margin_per_purchase * D(t) >=
    acquisition_cost``, where ``D(t)`` is the new customer's discounted expected repeat
    purchases in their first ``t`` periods
    (``purchase_model.discounted_expected_purchases_new_customer(delta, t, covariates)``),
    found by root finding on that increasing curve.

    Parameters
    ----------
    purchase_model : fitted purchase model
        ``BetaGeoModel``, ``ModifiedBetaGeoModel`` or ``ParetoNBDModel``.
    discount_rate_continuous : float
        Continuous discount rate per model period, 0 or more
        (:func:`continuous_discount_rate`).
    margin_per_purchase : float
        Expected margin of each repeat purchase (e.g. expected spend times margin rate), 0
        or more, in money.
    first_purchase_margin : float
        Margin of the first (acquiring) purchase, in money; may be negative (a discount).
    acquisition_cost : float
        Customer acquisition cost (CAC), in money.
    covariates : dict, pandas.Series or pandas.DataFrame, optional
        The new customer's design values, or a table of several customers' (one row each),
        as for ``expected_purchases_new_customer``; None for the baseline customer.

    Returns
    -------
    float or pandas.Series
        Model periods from the first purchase: 0 when the first purchase already pays
        (``first_purchase_margin >= acquisition_cost``), inf when the expected lifetime
        value never reaches the cost; a Series indexed like a table of ``covariates``.
        Accurate to 1e-9 relative (or 1e-12 periods).
    """
    from scipy.optimize import brentq

    delta = check_real(discount_rate_continuous, "discount_rate_continuous")
    if delta < 0:
        raise ValueError(f"discount_rate_continuous must be 0 or more, got {delta}")
    margin = check_real(margin_per_purchase, "margin_per_purchase")
    if margin < 0:
        raise ValueError(f"margin_per_purchase must be 0 or more, got {margin}")
    first = check_real(first_purchase_margin, "first_purchase_margin")
    cost = check_real(acquisition_cost, "acquisition_cost")
    table = isinstance(covariates, pd.DataFrame) and bool(_covariates_of(purchase_model))
    customers = [covariates.iloc[[row]] for row in range(len(covariates))] if table else [covariates]

    def one(design):
        # Each evaluation is one customer's curve: a row's own parameters, never the table's.
        def discounted(horizon):
            value = purchase_model.discounted_expected_purchases_new_customer(delta, horizon, design)
            return float(np.asarray(value).reshape(-1)[0])

        if first >= cost:
            return 0.0
        needed = (cost - first) / margin if margin > 0 else np.inf
        if not discounted(np.inf) > needed:
            return np.inf
        # Bracket by doubling from one period: D is increasing and reaches `needed`.
        high = 1.0
        while discounted(high) < needed:
            high *= 2.0
        low = high / 2.0 if high > 1.0 else 0.0
        return float(brentq(lambda horizon: discounted(horizon) - needed, low, high, xtol=1e-12, rtol=1e-10))

    periods = np.array([one(design) for design in customers], dtype=np.float64)
    if table:
        return pd.Series(periods, index=covariates.index, name="payback_period")
    return float(periods[0])


# --- acquisition cost and margin -------------------------------------------


def acquisition_cost_per_customer(index, constant=None, per_channel=None, channel=None, column=None):
    """Customer acquisition cost (CAC) of each customer, from one of three sources.

    Parameters
    ----------
    index : pandas.Index
        Customer ids to return costs for.
    constant : float, optional
        One cost for every customer.
    per_channel : dict of str to float, optional
        Cost per acquisition channel; needs ``channel``.
    channel : pandas.Series, optional
        Each customer's acquisition channel (e.g. the ``first_channel``
        feature), indexed by customer id.
    column : pandas.Series, optional
        Each customer's own cost, indexed by customer id.

    Returns
    -------
    pandas.Series
        Cost per customer, indexed by ``index``; zeros if no source is given.

    Raises
    ------
    ValueError
        If more than one source is given, a channel or cost is missing for
        some customers, a cost is negative or not finite, or a customer's
        channel has no cost in ``per_channel`` (the message names the
        channels).
    """
    index = pd.Index(index)
    sources = {"constant": constant, "per_channel": per_channel, "column": column}
    given = [name for name, value in sources.items() if value is not None]
    if len(given) > 1:
        raise ValueError(f"give one source of acquisition cost, got {' and '.join(given)}")
    if channel is not None and per_channel is None:
        raise ValueError("channel is only used with per_channel")

    if constant is not None:
        cost = check_real(constant, "constant")
        values = np.full(len(index), cost)
    elif per_channel is not None:
        if not isinstance(per_channel, Mapping):
            raise TypeError(f"per_channel must be a dict of channel to cost, got {type(per_channel).__name__}")
        if channel is None:
            raise ValueError("per_channel needs channel, the acquisition channel of each customer")
        channels = reindexed(channel, index, "channel")
        unknown = sorted(
            {"<missing>" if pd.isna(name) else str(name) for name in pd.unique(channels) if name not in per_channel}
        )
        if unknown:
            known = ", ".join(repr(str(name)) for name in per_channel)
            raise ValueError(
                f"per_channel: no acquisition cost for channel(s) {', '.join(repr(name) for name in unknown)}"
                f" (costs are given for {known or 'no channel'})"
            )
        costs = {name: check_real(value, f"per_channel[{name!r}]") for name, value in per_channel.items()}
        values = channels.map(costs).to_numpy(dtype=np.float64)
    elif column is not None:
        values = reindexed(column, index, "acquisition cost column").to_numpy(dtype=np.float64, na_value=np.nan)
    else:
        values = np.zeros(len(index))

    bad = int(np.count_nonzero(~np.isfinite(values)))
    if bad:
        raise ValueError(f"acquisition cost: {rows(bad)} NaN or infinite")
    negative = int(np.count_nonzero(values < 0))
    if negative:
        raise ValueError(f"acquisition cost: {rows(negative)} negative")
    return pd.Series(values, index=index, name="acquisition_cost")


def customer_margin_rate(total_margin, total_amount, default_rate):
    """Each customer's own margin rate where they have revenue, else a default.

    Parameters
    ----------
    total_margin : pandas.Series
        Profit summed over the customer's transactions (the ``total_margin``
        feature), indexed by customer id.
    total_amount : pandas.Series
        Revenue summed over the same transactions (``total_amount``), same index.
    default_rate : float
        Margin rate for customers without revenue (or without a known margin).

    Returns
    -------
    pandas.Series
        ``total_margin / total_amount`` where the amount is positive and the
        margin known, ``default_rate`` elsewhere; indexed like ``total_amount``.
    """
    default_rate = check_real(default_rate, "default_rate")
    amount = finite_values(total_amount, "total_amount")
    margin = reindexed(total_margin, total_amount.index, "total_margin").to_numpy(dtype=np.float64, na_value=np.nan)
    own = (amount > 0) & np.isfinite(margin)
    with np.errstate(divide="ignore", invalid="ignore"):
        rate = np.where(own, margin / np.where(own, amount, 1.0), default_rate)
    return pd.Series(rate, index=total_amount.index, name="margin_rate")
