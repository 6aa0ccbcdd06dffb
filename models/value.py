"""Customer value: discounting, predicted and historical CLV, acquisition costs, tiers.

Pure functions over arrays and frames indexed by customer id. Predicted CLV
combines a fitted purchase model (``expected_purchases``) with a spend model
(``expected_spend``); historical CLV is the business formula computed from
the transaction summary alone; tiers turn either into actions.

Time units: ``recency``, ``T`` and every ``*_periods`` argument are in the
model's period (the unit of the features, e.g. weeks); ``days_per_period``
converts them to days (7 for weeks, 30.4375 for average months). Rates say
what they are per: ``discount_rate_annual``, ``discount_rate_per_step``,
``churn_rate_annual``. Margin rates are fractions of revenue (0.3 for 30 %).

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
   customer acquisition cost) and the CLV tier actions, as stated in the
   Spanish practitioner articles the project's brief started from (e.g.
   Q2BSTUDIO, "Valor de vida del cliente (CLV)"; digital datatalks, "Cómo
   maximizar el valor del Customer Lifetime Value"; WorkMeter,
   https://www.workmeter.com/blog/como-analizar-la-rentabilidad-de-sus-clientes/).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import numpy as np
import pandas as pd

from ._validation import (
    PURCHASE_COLUMNS,
    aligned,
    check_feature_column,
    check_features,
    check_positive_int,
    check_positive_real,
    check_real,
    finite_values,
    reindexed,
    rows,
    unique_rows,
)

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
    discount_rate_annual = check_real(discount_rate_annual, "discount_rate_annual")
    days_per_period = check_real(days_per_period, "days_per_period")
    if discount_rate_annual <= -1:
        raise ValueError(f"discount_rate_annual must be above -1, got {discount_rate_annual}")
    if days_per_period <= 0:
        raise ValueError(f"days_per_period must be positive, got {days_per_period}")
    # expm1/log1p keep small rates exact where (1 + d) ** x - 1 would cancel.
    return float(np.expm1(np.log1p(discount_rate_annual) * days_per_period / DAYS_PER_YEAR))


# --- predicted CLV ---------------------------------------------------------


# Unique (frequency, recency, T) rows valued at once by discounted_expected_purchases.
UNIQUE_ROWS_PER_BLOCK = 1 << 16


def _expected_purchases_by_step_unique(purchase_model, features, n_steps, step_periods):
    """Per-step expected purchases on the unique (frequency, recency, T) rows, and the map back."""
    n_steps = check_positive_int(n_steps, "n_steps")
    step_periods = check_positive_real(step_periods, "step_periods")
    columns = check_features(features, PURCHASE_COLUMNS)
    if len(features) == 0:
        return np.zeros((0, n_steps)), np.zeros(0, dtype=np.intp)
    # A purchase model's prediction depends on a customer only through
    # (frequency, recency, T): a whole number and two ages on a daily grid,
    # so tens of millions of customers share far fewer distinct rows. Each
    # horizon is evaluated on those once and the result joined back.
    unique, inverse, _ = unique_rows([columns[name] for name in PURCHASE_COLUMNS])
    unique_features = pd.DataFrame(dict(zip(PURCHASE_COLUMNS, unique)))
    cumulative = np.zeros((len(unique_features), n_steps + 1))
    horizons = [step * step_periods for step in range(1, n_steps + 1)]
    if hasattr(purchase_model, "expected_purchases_by_horizon"):
        cumulative[:, 1:] = purchase_model.expected_purchases_by_horizon(unique_features, horizons)
    else:  # any model with just expected_purchases(features, horizon)
        for step, horizon in enumerate(horizons, start=1):
            cumulative[:, step] = np.asarray(purchase_model.expected_purchases(unique_features, horizon), dtype=np.float64)
    # The models give the cumulative E[X(T, T + t)]; a step's purchases are
    # the increments, as in lifetimes' customer_lifetime_value [2].
    return np.diff(cumulative, axis=1), inverse


def expected_purchases_by_step(purchase_model, features, n_steps, step_periods):
    """Expected purchases of each customer in each of the next ``n_steps`` steps.

    Parameters
    ----------
    purchase_model : fitted purchase model
        Anything with ``expected_purchases(features, horizon)`` returning the
        conditional expected purchases in (T, T + horizon] (``BetaGeoModel``,
        ``ModifiedBetaGeoModel``, ``ParetoNBDModel``).
    features : pandas.DataFrame
        Columns ``frequency``, ``recency``, ``T`` (model periods), indexed by
        customer id.
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
        indexed like ``features``.
    """
    by_step, inverse = _expected_purchases_by_step_unique(purchase_model, features, n_steps, step_periods)
    columns = pd.RangeIndex(1, by_step.shape[1] + 1, name="step")
    return pd.DataFrame(by_step[inverse], index=features.index, columns=columns)


def discounted_expected_purchases(purchase_model, features, n_steps, step_periods, discount_rate_per_step):
    """Expected purchases over the next ``n_steps`` steps, each discounted to today.

    Parameters
    ----------
    purchase_model : fitted purchase model
        Anything with ``expected_purchases(features, horizon)``, as in
        :func:`expected_purchases_by_step`.
    features : pandas.DataFrame
        Columns ``frequency``, ``recency``, ``T`` (model periods), indexed by
        customer id.
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
        k = 1..n_steps, indexed like ``features``. Each step's purchases are
        discounted from the step's end, the convention of lifetimes [2].
    """
    discount_rate_per_step = check_real(discount_rate_per_step, "discount_rate_per_step")
    if discount_rate_per_step <= -1:
        raise ValueError(f"discount_rate_per_step must be above -1, got {discount_rate_per_step}")
    n_steps = check_positive_int(n_steps, "n_steps")
    step_periods = check_positive_real(step_periods, "step_periods")
    columns = check_features(features, PURCHASE_COLUMNS)
    unique, inverse, _ = unique_rows([columns[name] for name in PURCHASE_COLUMNS])
    discount_factors = (1.0 + discount_rate_per_step) ** -np.arange(1, n_steps + 1, dtype=np.float64)
    discounted = np.zeros(len(unique[0]))
    # Discount on the unique rows, then join back: one float per customer instead of an
    # n_customers x n_steps matrix. The unique rows go a block at a time: their
    # n_steps-wide matrices were gigabytes at 18M customers (~1M distinct histories).
    # Accumulated step by step rather than with a matrix product, whose summation order
    # (BLAS blocking) depends on the number of rows: a customer must get the same bits
    # whether scored alone, in a batch, in a Spark partition or in any block.
    for start in range(0, len(discounted), UNIQUE_ROWS_PER_BLOCK):
        # Copies, so the models do not cache a grouping of each block.
        block = pd.DataFrame({
            name: np.array(values[start:start + UNIQUE_ROWS_PER_BLOCK]) for name, values in zip(PURCHASE_COLUMNS, unique)
        })
        by_step, block_inverse = _expected_purchases_by_step_unique(purchase_model, block, n_steps, step_periods)
        block_discounted = np.zeros(by_step.shape[0])
        for step in range(by_step.shape[1]):
            block_discounted += by_step[:, step] * discount_factors[step]
        discounted[start:start + len(block)] = block_discounted[block_inverse]
    return pd.Series(discounted[inverse], index=features.index, name="discounted_expected_purchases")


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


# --- historical CLV --------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class HistoricalCLV:
    """Historical CLV of a customer base: the company figures and one value per customer.

    Attributes
    ----------
    n_customers : int
    average_purchase_value : float
        Total revenue / number of purchases (transactions).
    purchases_per_year : float
        Purchases per active customer-year.
    lifespan_years : float
        Average customer lifespan in years.
    churn_rate_annual : float
        Churn events per active customer-year (NaN if the lifespan was given).
    churn_events : int
        Customers counted as churned.
    customer_years : float
        Active customer-years observed (the exposure).
    margin_rate : float
        Revenue-weighted margin rate.
    acquisition_cost : float
        Mean customer acquisition cost.
    clv : float
        average_purchase_value x purchases_per_year x lifespan_years x
        margin_rate - acquisition_cost.
    method : str
        How the lifespan and frequency were estimated, in words.
    per_customer : pandas.Series
        Each customer's historical CLV, indexed by customer id.
    """

    n_customers: int
    average_purchase_value: float
    purchases_per_year: float
    lifespan_years: float
    churn_rate_annual: float
    churn_events: int
    customer_years: float
    margin_rate: float
    acquisition_cost: float
    clv: float
    method: str
    per_customer: pd.Series = dataclasses.field(repr=False)


def _activity(features, days_per_period, churn_inactivity_days):
    """Purchases, revenue, churn flag and active exposure (years) per customer."""
    days_per_period = check_positive_real(days_per_period, "days_per_period")
    churn_inactivity_days = check_positive_real(churn_inactivity_days, "churn_inactivity_days")
    columns = check_features(features, PURCHASE_COLUMNS)
    if len(features) == 0:
        raise ValueError("features: no customers")
    purchases = check_feature_column(features, "n_transactions")
    revenue = check_feature_column(features, "total_amount")
    fractional = int(np.count_nonzero((purchases != np.floor(purchases)) | (purchases < 1)))
    if fractional:
        raise ValueError(f"features: column 'n_transactions': {rows(fractional)} not a whole number of at least 1")

    # recency is the age at the last purchase (0 for one purchase day), T the
    # age at the observation end, both in periods since the first purchase.
    # Rounding to a millionth of a day keeps "exactly churn_inactivity_days"
    # from flipping on the float error of days / 7 * 7.
    inactive_days = np.round((columns["T"] - columns["recency"]) * days_per_period, 6)
    churned = inactive_days > churn_inactivity_days
    # Exposure while active: first to last purchase for a churned customer
    # (the churn is dated at the last purchase), first purchase to the
    # observation end for one still active (censored).
    exposure_years = np.where(churned, columns["recency"], columns["T"]) * days_per_period / DAYS_PER_YEAR
    return purchases, revenue, churned, exposure_years


def _historical_method(churn_inactivity_days, min_exposure_years, lifespan_given):
    if lifespan_given:
        lifespan = "lifespan given by the caller"
    else:
        lifespan = (
            "lifespan = 1 / annual churn rate, the exponential MLE under censoring: churn events / active "
            f"customer-years, a customer churned if inactive more than {churn_inactivity_days:g} days before "
            "the observation end (active time first to last purchase if churned, first purchase to observation "
            "end if not)"
        )
    return (
        f"historical CLV = average purchase value x purchases per active customer-year x lifespan x margin - CAC; "
        f"{lifespan}; per customer: own average purchase value and own purchases per active year (active time "
        f"floored at {min_exposure_years:g} years) x company lifespan"
    )


def _company_figures(revenue, purchases, exposure_years, churn_events, margin_revenue, mean_cost, lifespan_years):
    """The business formula on totals; NaN where a figure cannot be estimated."""
    with np.errstate(divide="ignore", invalid="ignore"):
        average_purchase_value = revenue / purchases
        purchases_per_year = purchases / exposure_years
        churn_rate_annual = churn_events / exposure_years
        if lifespan_years is None:
            # No churn observed means the MLE of the lifespan is unbounded:
            # NaN, which historical_clv reports as a lifespan it cannot estimate.
            lifespan = np.where(churn_events > 0, 1.0 / churn_rate_annual, np.nan)
        else:
            lifespan = np.full(np.shape(churn_events), lifespan_years, dtype=np.float64)
            churn_rate_annual = np.full(np.shape(churn_events), np.nan)
        margin_rate = margin_revenue / revenue
        clv = average_purchase_value * purchases_per_year * lifespan * margin_rate - mean_cost
    return {
        "average_purchase_value": average_purchase_value,
        "purchases_per_year": purchases_per_year,
        "lifespan_years": lifespan,
        "churn_rate_annual": churn_rate_annual,
        "margin_rate": margin_rate,
        "acquisition_cost": mean_cost,
        "clv": clv,
    }


def historical_clv(
    features,
    days_per_period,
    churn_inactivity_days=180.0,
    margin_rate=1.0,
    acquisition_cost=0.0,
    lifespan_years=None,
    min_exposure_years=1.0,
):
    """Historical CLV of the business formula, for the company and for each customer.

    Company: average purchase value (revenue / purchases) x purchases per
    active customer-year x average lifespan in years x margin rate - mean CAC.
    Customer: own average purchase value x own purchases per active year x
    the company lifespan x own margin rate - own CAC.

    Parameters
    ----------
    features : pandas.DataFrame
        One row per customer, indexed by customer id, with ``frequency``,
        ``recency`` and ``T`` (model periods; ``T`` is the age at the
        observation end), ``n_transactions`` (purchases, counting the first)
        and ``total_amount`` (revenue).
    days_per_period : float
        Days in one model period (7 for weeks), to turn ages into years.
    churn_inactivity_days : float, default 180
        A customer without a purchase in more than this many days before the
        observation end counts as churned.
    margin_rate : float or pandas.Series, default 1.0
        Profit as a fraction of revenue, one for all or per customer; the
        company figure weighs customers by revenue.
    acquisition_cost : float or pandas.Series, default 0.0
        CAC, one for all or per customer; the company figure uses the mean.
    lifespan_years : float, optional
        Average lifespan to use instead of estimating it from the log.
    min_exposure_years : float, default 1.0
        Floor on a customer's active time when turning their purchase count
        into a yearly frequency (company totals are not floored).

    Returns
    -------
    HistoricalCLV

    Raises
    ------
    ValueError
        If the lifespan cannot be estimated: no customer churned (shorten
        ``churn_inactivity_days`` or give ``lifespan_years``) or no active time
        was observed.

    Notes
    -----
    Lifespan. A customer's lifetime is taken as exponential with an annual
    churn rate; each churned customer contributes one event and their time
    from first to last purchase, each active customer their time from first
    purchase to the observation end and no event (right-censored). The MLE
    of the rate is events / customer-years, and the average lifespan its
    inverse. Dating churn at the last purchase shortens lifetimes by up to
    ``churn_inactivity_days``; dating it at last purchase + the threshold
    would lengthen them by as much. The simpler "mean of observed first to
    last purchase" would ignore that active customers' lifetimes are not over.

    Frequency. Purchases are divided by the same *active* customer-years as
    the lifespan, so that frequency x lifespan is purchases per churned
    customer; dividing by years to the observation end would count years in
    which churned customers were already gone, and the product would
    undercount (on the CDNOW sample: $38 against $104 of revenue already
    observed per customer). Since average purchase value x frequency is
    revenue per year, it does not matter whether a purchase means a
    transaction or a purchase day.

    Per customer, active time is floored at ``min_exposure_years`` (one year
    by default): a yearly frequency needs a year to be measured, and below
    it the purchases so far are taken as the first year's (a floor of one
    week would turn a single purchase last week into 52 a year).
    """
    min_exposure_years = check_positive_real(min_exposure_years, "min_exposure_years")
    if lifespan_years is not None:
        lifespan_years = check_positive_real(lifespan_years, "lifespan_years")
    purchases, revenue, churned, exposure_years = _activity(features, days_per_period, churn_inactivity_days)
    index = features.index
    margin = aligned(margin_rate, index, "margin_rate")
    cost = aligned(acquisition_cost, index, "acquisition_cost")

    figures = _company_figures(
        revenue.sum(),
        purchases.sum(),
        exposure_years.sum(),
        int(churned.sum()),
        float(np.sum(margin * revenue)),
        float(cost.mean()),
        lifespan_years,
    )
    if not np.isfinite(figures["lifespan_years"]):
        raise ValueError(
            f"cannot estimate the customer lifespan: no customer was inactive for more than "
            f"{churn_inactivity_days:g} days before the observation end; shorten churn_inactivity_days "
            "or give lifespan_years"
        )
    if not np.isfinite(figures["purchases_per_year"]):
        raise ValueError("cannot estimate the purchase frequency: no active customer-time was observed")

    yearly_purchases = purchases / np.maximum(exposure_years, min_exposure_years)
    per_customer = (revenue / purchases) * yearly_purchases * figures["lifespan_years"] * margin - cost
    return HistoricalCLV(
        n_customers=len(index),
        average_purchase_value=float(figures["average_purchase_value"]),
        purchases_per_year=float(figures["purchases_per_year"]),
        lifespan_years=float(figures["lifespan_years"]),
        churn_rate_annual=float(figures["churn_rate_annual"]),
        churn_events=int(churned.sum()),
        customer_years=float(exposure_years.sum()),
        margin_rate=float(figures["margin_rate"]),
        acquisition_cost=float(figures["acquisition_cost"]),
        clv=float(figures["clv"]),
        method=_historical_method(churn_inactivity_days, min_exposure_years, lifespan_years is not None),
        per_customer=pd.Series(per_customer, index=index, name="historical_clv"),
    )


def naive_holdout_forecast(features, holdout_periods, min_exposure_periods=1.0):
    """Naive baseline: each customer's calibration purchase rate and purchase value carried forward.

    Parameters
    ----------
    features : pandas.DataFrame
        Calibration features indexed by customer id: ``frequency``,
        ``recency``, ``T`` (model periods) and ``total_amount``.
    holdout_periods : float or pandas.Series
        Length of the holdout in model periods, one for all or per customer
        (the ``duration_holdout`` feature).
    min_exposure_periods : float, default 1.0
        Floor on the time a rate is measured over, so that two purchase days
        in a customer's first days are not extrapolated at that pace.

    Returns
    -------
    pandas.DataFrame
        ``predicted_purchases`` (purchase periods in the holdout, comparable
        with ``frequency_holdout``) and ``predicted_revenue`` (comparable
        with ``revenue_holdout``), indexed like ``features``.

    Notes
    -----
    The rate is repeat purchase periods over the periods since the first
    purchase, ``frequency / max(T, min_exposure_periods)``: the observed rate
    of exactly what the holdout counts, and of what the purchase models
    predict, but with neither dropout nor shrinkage, which is what the
    baseline is there to show. Counting the first purchase as well would
    treat the acquisition as a repeat purchase (on the CDNOW sample it
    doubles the predicted holdout purchases, 5769 against 1882 observed; the
    repeat rate gives 2930). The value per purchase is the customer's
    revenue over their purchase periods, ``total_amount / (frequency + 1)``.
    """
    min_exposure_periods = check_positive_real(min_exposure_periods, "min_exposure_periods")
    columns = check_features(features, PURCHASE_COLUMNS)
    revenue = check_feature_column(features, "total_amount")
    if isinstance(holdout_periods, pd.Series):
        holdout = aligned(holdout_periods, features.index, "holdout_periods")
    else:  # one length for everyone stays a number (an array of it was 144 MB at 18M customers)
        holdout = check_real(holdout_periods, "holdout_periods")
    if np.any(np.asarray(holdout) < 0):
        raise ValueError(f"holdout_periods: {rows(int(np.count_nonzero(np.asarray(holdout) < 0)))} negative")
    # rate * holdout and that times total_amount / (frequency + 1), computed in place in two
    # buffers (the same operations in the same order): at 18M customers each is 144 MB.
    predicted_purchases = np.maximum(columns["T"], min_exposure_periods)
    np.divide(columns["frequency"], predicted_purchases, out=predicted_purchases)
    predicted_purchases *= holdout
    predicted_revenue = columns["frequency"] + 1.0
    np.divide(revenue, predicted_revenue, out=predicted_revenue)
    np.multiply(predicted_purchases, predicted_revenue, out=predicted_revenue)
    return pd.DataFrame(
        {"predicted_purchases": predicted_purchases, "predicted_revenue": predicted_revenue},
        index=features.index,
        copy=False,
    )


# --- tiers -----------------------------------------------------------------


class Tier(NamedTuple):
    """A CLV tier: its name, its lower bound and what to do with its customers.

    ``cut`` is a quantile of CLV (method "quantile") or a CLV amount (method
    "absolute"); a customer belongs to the first tier, from the top, whose
    bound they reach.
    """

    name: str
    cut: float
    action: str


# From the seed articles [3]: high CLV gets loyalty programmes, premium
# support and exclusive offers; medium CLV personalised recommendations and
# upselling; low CLV automated nurture campaigns. Top 20 %, next 30 %, rest.
DEFAULT_TIERS = (
    Tier("high", 0.8, "loyalty programme, premium support and exclusive offers"),
    Tier("medium", 0.5, "personalised recommendations and upselling"),
    Tier("low", 0.0, "automated nurture campaigns"),
)
TIER_METHODS = ("quantile", "absolute")


def _check_tiers(tiers, method):
    if method not in TIER_METHODS:
        raise ValueError(f"method must be one of {', '.join(TIER_METHODS)}, got {method!r}")
    if isinstance(tiers, (str, bytes)) or not isinstance(tiers, Sequence) or len(tiers) == 0:
        raise ValueError("tiers must be a non-empty list of (name, cut, action), highest tier first")
    checked = []
    for position, tier in enumerate(tiers):
        if len(tier) != 3:
            raise ValueError(f"tiers[{position}] must be (name, cut, action), got {tier!r}")
        name, cut, action = tier
        # -inf is the natural absolute bound of the lowest tier.
        cut = check_real(cut, f"tier {name!r}: cut", allow_infinite=True)
        checked.append(Tier(str(name), cut, str(action)))
    names = [tier.name for tier in checked]
    duplicated = sorted({name for name in names if names.count(name) > 1})
    if duplicated:
        raise ValueError(f"tier names must be unique; repeated: {', '.join(repr(name) for name in duplicated)}")
    for upper, lower in zip(checked, checked[1:]):
        if not lower.cut < upper.cut:
            raise ValueError(
                f"tier cuts must decrease from the highest tier to the lowest: {lower.name!r} ({lower.cut:g}) "
                f"is not below {upper.name!r} ({upper.cut:g})"
            )
    if method == "quantile":
        outside = [tier.name for tier in checked if not 0.0 <= tier.cut <= 1.0]
        if outside:
            raise ValueError(f"quantile cuts must lie in [0, 1]; check tier(s) {', '.join(map(repr, outside))}")
        if checked[-1].cut != 0.0:
            raise ValueError(
                f"the lowest tier {checked[-1].name!r} must have quantile cut 0 so that every customer "
                f"gets a tier, got {checked[-1].cut:g}"
            )
    return checked


def tier_thresholds(clv, tiers=DEFAULT_TIERS, method="quantile"):
    """Lower CLV bound of each tier.

    Parameters
    ----------
    clv : pandas.Series
        CLV per customer.
    tiers : sequence of (name, cut, action), default DEFAULT_TIERS
        Highest tier first; cuts strictly decreasing.
    method : {"quantile", "absolute"}
        Whether cuts are quantiles of ``clv`` (linear interpolation, as
        ``pandas.Series.quantile``) or CLV amounts.

    Returns
    -------
    pandas.Series
        Lower CLV bound per tier name, highest tier first (under
        "quantile", the lowest tier's bound is the lowest CLV).
    """
    checked = _check_tiers(tiers, method)
    return _thresholds(finite_values(clv, "clv"), checked, method)


def _thresholds(values, checked, method):
    if method == "quantile":
        cuts = [tier.cut for tier in checked]
        bounds = np.quantile(values, cuts) if len(values) else np.full(len(checked), np.nan)
    else:
        bounds = np.array([tier.cut for tier in checked], dtype=np.float64)
        if len(values) and bounds[-1] > values.min():
            raise ValueError(
                f"the lowest tier {checked[-1].name!r} starts at {bounds[-1]:g}, above the lowest CLV "
                f"{values.min():g}; give it -inf (or a bound at or below every CLV) so that every customer "
                "gets a tier"
            )
    return pd.Series(bounds, index=pd.Index([tier.name for tier in checked], name="tier"), name="lower_bound")


def assign_tiers(clv, tiers=DEFAULT_TIERS, method="quantile"):
    """Tier and action of each customer from their CLV.

    Parameters
    ----------
    clv : pandas.Series
        CLV per customer (predicted or historical), indexed by customer id.
    tiers : sequence of (name, cut, action), default DEFAULT_TIERS
        Highest tier first. With method "quantile" a cut is the tier's lower
        quantile (the defaults: high >= 0.8, medium >= 0.5, low >= 0); with
        "absolute" it is the lower CLV bound. Cuts must decrease, names be
        unique, and the lowest tier must cover everyone (quantile 0, or an
        absolute bound of -inf or at most the lowest CLV).
    method : {"quantile", "absolute"}, default "quantile"

    Returns
    -------
    pandas.DataFrame
        ``tier`` (ordered categorical, lowest tier first so that comparisons
        follow value) and ``action`` (categorical), indexed like ``clv``. A customer exactly
        at a bound belongs to the tier above it.

    Raises
    ------
    ValueError
        Naming the problem with the tiers, or the count of NaN CLVs.
    """
    checked = _check_tiers(tiers, method)
    values = finite_values(clv, "clv")
    bounds = _thresholds(values, checked, method).to_numpy()
    # Negated, the decreasing bounds increase; the first bound at or below a
    # value (its tier from the top) is then a left-sided binary search.
    position = np.searchsorted(-bounds, -values, side="left")
    names = [tier.name for tier in checked]
    tier = pd.Categorical.from_codes(len(names) - 1 - position, categories=names[::-1], ordered=True)
    # Categorical too: a handful of texts repeated on millions of rows.
    distinct_actions = list(dict.fromkeys(tier_.action for tier_ in checked))
    action_codes = np.array([distinct_actions.index(tier_.action) for tier_ in checked])[position]
    actions = pd.Categorical.from_codes(action_codes, categories=distinct_actions)
    frame = pd.DataFrame({"tier": tier, "action": actions}, index=clv.index, copy=False)
    frame.attrs["tiers"] = checked
    return frame


def tier_summary(clv, tiers_frame, historical=None):
    """Customers and predicted value per tier.

    Parameters
    ----------
    clv : pandas.Series
        Predicted CLV per customer, the one the tiers were assigned on.
    tiers_frame : pandas.DataFrame
        Output of :func:`assign_tiers` for the same customers.
    historical : pandas.Series, optional
        Historical CLV per customer (``HistoricalCLV.per_customer``).

    Returns
    -------
    pandas.DataFrame
        One row per tier, highest first: ``action``, ``n_customers``,
        ``share_of_customers``, ``total_predicted_clv``,
        ``mean_predicted_clv``, ``share_of_predicted_clv`` and, with
        ``historical``, ``mean_historical_clv`` (the columns
        ``pipeline.plots.plot_clv_by_tier`` reads). Empty tiers are kept with
        a count of 0.
    """
    values = finite_values(clv, "clv")
    if not isinstance(tiers_frame, pd.DataFrame) or not {"tier", "action"} <= set(tiers_frame.columns):
        raise ValueError("tiers_frame must be the DataFrame from assign_tiers, with columns 'tier' and 'action'")
    tier = reindexed(tiers_frame["tier"], clv.index, "tiers_frame")
    if not isinstance(tier.dtype, pd.CategoricalDtype):
        raise ValueError("tiers_frame['tier'] must be the ordered categorical from assign_tiers")
    frame = pd.DataFrame({"tier": tier.array, "clv": values}, index=clv.index, copy=False)
    if historical is not None:
        frame["historical"] = aligned(historical, clv.index, "historical")
    grouped = frame.groupby("tier", observed=False, sort=True)
    summary = pd.DataFrame(
        {
            "n_customers": grouped.size(),
            "total_predicted_clv": grouped["clv"].sum(),
            "mean_predicted_clv": grouped["clv"].mean(),
        }
    )
    summary["share_of_customers"] = summary["n_customers"] / max(len(frame), 1)
    total = values.sum()
    summary["share_of_predicted_clv"] = summary["total_predicted_clv"] / total if total != 0 else np.nan
    if historical is not None:
        summary["mean_historical_clv"] = grouped["historical"].mean()
    # An empty tier has no row to read its action from; assign_tiers leaves
    # the full list of tiers in attrs for that.
    actions = {tier_.name: tier_.action for tier_ in tiers_frame.attrs.get("tiers", ())}
    actions.update(tiers_frame.drop_duplicates("tier").set_index("tier")["action"].to_dict())
    summary.insert(0, "action", [actions.get(name) for name in summary.index])
    columns = [
        "action",
        "n_customers",
        "share_of_customers",
        "total_predicted_clv",
        "mean_predicted_clv",
        "share_of_predicted_clv",
    ]
    if historical is not None:
        columns.append("mean_historical_clv")
    # Highest tier first, as tiers are given and read.
    summary = summary.loc[list(tier.dtype.categories[::-1]), columns]
    summary.index = pd.CategoricalIndex(summary.index, dtype=tier.dtype, name="tier")
    return summary
