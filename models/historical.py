"""Historical CLV of the business formula, and the naive holdout baseline.

Both read only the transaction summary (the features), no fitted model: the
historical CLV is what the business formula of the practitioner articles [1]_
gives, printed beside the predicted CLV; the naive baseline carries each
customer's calibration rates over the holdout, for the backtest to beat.

Time units: ``recency``, ``T`` and every ``*_periods`` argument are in the
model's period (the unit of the features, e.g. weeks); ``days_per_period``
converts them to days (7 for weeks). ``churn_rate_annual`` is per year.
Margin rates are fractions of revenue (0.3 for 30 %).

References
----------
.. [1] The "historical CLV" business formula (average purchase value x
   purchase frequency x average customer lifespan, on margin, minus the
   customer acquisition cost), as stated in the Spanish practitioner articles
   the project's brief started from (e.g. Q2BSTUDIO, "Valor de vida del
   cliente (CLV)"; digital datatalks, "Cómo maximizar el valor del Customer
   Lifetime Value"; WorkMeter,
   https://www.workmeter.com/blog/como-analizar-la-rentabilidad-de-sus-clientes/).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd

from ._validation import (
    PURCHASE_COLUMNS,
    aligned,
    check_feature_column,
    check_features,
    check_positive_real,
    check_real,
    rows,
)
from .discounting import DAYS_PER_YEAR


@dataclasses.dataclass(frozen=True)
class CompanyHistoricalCLV:
    """Historical CLV of a customer base: the company figures.

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


@dataclasses.dataclass(frozen=True)
class HistoricalCLV(CompanyHistoricalCLV):
    """Historical CLV of a customer base: the company figures and one value per customer.

    Attributes
    ----------
    per_customer : pandas.Series
        Each customer's historical CLV, indexed by customer id; the company figures are
        those of :class:`CompanyHistoricalCLV`.
    """

    per_customer: pd.Series = dataclasses.field(repr=False)


@dataclasses.dataclass(frozen=True)
class HistoricalTotals:
    """Sums over a batch of customers from which the company's historical CLV follows.

    Built by :func:`historical_totals` for any batch (a Spark partition, a chunk of a
    file); totals of disjoint batches add up with ``+`` (or ``sum``) to those of their
    union, and :func:`historical_clv_from_totals` turns them into the company figures,
    so a cluster sends the driver these few numbers instead of its customers.

    Attributes
    ----------
    n_customers : int
    revenue : float
        Total revenue (``total_amount``).
    purchases : float
        Total purchases (``n_transactions``).
    customer_years : float
        Active customer-years observed (the exposure of the lifespan estimate).
    churn_events : int
        Customers counted as churned.
    margin_revenue : float
        Sum of margin rate x revenue.
    acquisition_cost : float
        Sum of the customers' acquisition costs (the company figure uses its mean).
    days_per_period, churn_inactivity_days : float
        The settings the batch was measured with; totals measured otherwise do not add.
    """

    n_customers: int
    revenue: float
    purchases: float
    customer_years: float
    churn_events: int
    margin_revenue: float
    acquisition_cost: float
    days_per_period: float
    churn_inactivity_days: float

    def __add__(self, other):
        if not isinstance(other, HistoricalTotals):
            return NotImplemented
        settings = (self.days_per_period, self.churn_inactivity_days)
        if settings != (other.days_per_period, other.churn_inactivity_days):
            raise ValueError(
                "cannot add historical totals measured with other settings: (days_per_period, "
                f"churn_inactivity_days) {settings} and {(other.days_per_period, other.churn_inactivity_days)}"
            )
        return HistoricalTotals(
            n_customers=self.n_customers + other.n_customers,
            revenue=self.revenue + other.revenue,
            purchases=self.purchases + other.purchases,
            customer_years=self.customer_years + other.customer_years,
            churn_events=self.churn_events + other.churn_events,
            margin_revenue=self.margin_revenue + other.margin_revenue,
            acquisition_cost=self.acquisition_cost + other.acquisition_cost,
            days_per_period=self.days_per_period,
            churn_inactivity_days=self.churn_inactivity_days,
        )

    def __radd__(self, other):
        # sum() starts from 0.
        if isinstance(other, int) and other == 0:
            return self
        return NotImplemented


def _activity(features, days_per_period, churn_inactivity_days, allow_empty=False):
    """Purchases, revenue, churn flag and active exposure (years) per customer."""
    days_per_period = check_positive_real(days_per_period, "days_per_period")
    churn_inactivity_days = check_positive_real(churn_inactivity_days, "churn_inactivity_days")
    columns = check_features(features, PURCHASE_COLUMNS)
    if len(features) == 0 and not allow_empty:
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


# A customer's purchases per year are measured over at least this much active time.
DEFAULT_MIN_EXPOSURE_YEARS = 1.0


def _historical_method(churn_inactivity_days, min_exposure_years, lifespan_given):
    """The method in words; without the per-customer clause when ``min_exposure_years`` is None."""
    if lifespan_given:
        lifespan = "lifespan given by the caller"
    else:
        lifespan = (
            "lifespan = 1 / annual churn rate, the exponential MLE under censoring: churn events / active "
            f"customer-years, a customer churned if inactive more than {churn_inactivity_days:g} days before "
            "the observation end (active time first to last purchase if churned, first purchase to observation "
            "end if not)"
        )
    company = (
        f"historical CLV = average purchase value x purchases per active customer-year x lifespan x margin - CAC; "
        f"{lifespan}"
    )
    if min_exposure_years is None:
        return company
    return (
        f"{company}; per customer: own average purchase value and own purchases per active year (active time "
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
    min_exposure_years=DEFAULT_MIN_EXPOSURE_YEARS,
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

    References
    ----------
    The business formula of the practitioner articles [1]_; the lifespan and
    frequency estimates above are this project's.
    """
    min_exposure_years = check_positive_real(min_exposure_years, "min_exposure_years")
    if lifespan_years is not None:
        lifespan_years = check_positive_real(lifespan_years, "lifespan_years")
    purchases, revenue, churned, exposure_years = _activity(features, days_per_period, churn_inactivity_days)
    index = features.index
    margin = aligned(margin_rate, index, "margin_rate")
    cost = aligned(acquisition_cost, index, "acquisition_cost")
    # The company figures from this batch's totals, the one formula a cluster's summed totals go through too.
    company = historical_clv_from_totals(
        _totals(purchases, revenue, churned, exposure_years, margin, cost, days_per_period, churn_inactivity_days),
        lifespan_years,
    )

    per_customer = _customer_formula(purchases, revenue, exposure_years, min_exposure_years,
                                     company.lifespan_years, margin, cost)
    figures = {field.name: getattr(company, field.name) for field in dataclasses.fields(company)}
    figures["method"] = _historical_method(churn_inactivity_days, min_exposure_years, lifespan_years is not None)
    return HistoricalCLV(**figures, per_customer=pd.Series(per_customer, index=index, name="historical_clv"))


def historical_totals(features, days_per_period, churn_inactivity_days=180.0, margin_rate=1.0, acquisition_cost=0.0):
    """Totals of a batch of customers for the company's historical CLV; batches add up with ``+``.

    Parameters
    ----------
    features : pandas.DataFrame
        The batch: one row per customer, as :func:`historical_clv` reads them. May be
        empty (an empty partition adds nothing).
    days_per_period : float
        Days in one model period (7 for weeks).
    churn_inactivity_days : float, default 180
        A customer without a purchase in more than this many days before the
        observation end counts as churned.
    margin_rate : float or pandas.Series, default 1.0
        Profit as a fraction of revenue, one for all or per customer (covering the batch).
    acquisition_cost : float or pandas.Series, default 0.0
        CAC, one for all or per customer (covering the batch).

    Returns
    -------
    HistoricalTotals
        For :func:`historical_clv_from_totals`, alone or summed with other batches'.
    """
    purchases, revenue, churned, exposure_years = _activity(
        features, days_per_period, churn_inactivity_days, allow_empty=True
    )
    index = features.index
    return _totals(
        purchases,
        revenue,
        churned,
        exposure_years,
        aligned(margin_rate, index, "margin_rate"),
        aligned(acquisition_cost, index, "acquisition_cost"),
        days_per_period,
        churn_inactivity_days,
    )


def _totals(purchases, revenue, churned, exposure_years, margin, cost, days_per_period, churn_inactivity_days):
    return HistoricalTotals(
        n_customers=len(purchases),
        revenue=float(revenue.sum()),
        purchases=float(purchases.sum()),
        customer_years=float(exposure_years.sum()),
        churn_events=int(churned.sum()),
        margin_revenue=float(np.sum(margin * revenue)),
        acquisition_cost=float(cost.sum()),
        days_per_period=float(days_per_period),
        churn_inactivity_days=float(churn_inactivity_days),
    )


def historical_clv_from_totals(totals, lifespan_years=None, per_customer_min_exposure_years=None) -> CompanyHistoricalCLV:
    """The company's historical CLV from the totals of its customers (no per-customer values).

    The company figures of :func:`historical_clv` (see there for the formula and the
    lifespan estimate), from :func:`historical_totals` of all the customers, computed at
    once or summed over batches. To value each customer, give the lifespan found here
    (``lifespan_years``) to :func:`historical_clv` on each batch: per customer, nothing
    else depends on the other customers.

    Parameters
    ----------
    totals : HistoricalTotals
    lifespan_years : float, optional
        Average lifespan to use instead of estimating it from the totals.
    per_customer_min_exposure_years : float, optional
        When the customers are also valued one by one (by :func:`historical_clv` with this
        ``min_exposure_years`` and the lifespan found here), the method in words says so,
        as :func:`historical_clv`'s does.

    Returns
    -------
    CompanyHistoricalCLV

    Raises
    ------
    ValueError
        If there are no customers, the lifespan cannot be estimated (no churn event) or
        no active time was observed.
    """
    if not isinstance(totals, HistoricalTotals):
        raise TypeError(f"totals must be HistoricalTotals, got {type(totals).__name__}")
    if lifespan_years is not None:
        lifespan_years = check_positive_real(lifespan_years, "lifespan_years")
    if totals.n_customers == 0:
        raise ValueError("features: no customers")
    # numpy scalars, so that an empty exposure gives inf or NaN (reported below) rather than ZeroDivisionError.
    figures = _company_figures(
        np.float64(totals.revenue),
        np.float64(totals.purchases),
        np.float64(totals.customer_years),
        totals.churn_events,
        np.float64(totals.margin_revenue),
        np.float64(totals.acquisition_cost) / totals.n_customers,
        lifespan_years,
    )
    if not np.isfinite(figures["lifespan_years"]):
        raise ValueError(
            f"cannot estimate the customer lifespan: no customer was inactive for more than "
            f"{totals.churn_inactivity_days:g} days before the observation end; shorten churn_inactivity_days "
            "or give lifespan_years"
        )
    if not np.isfinite(figures["purchases_per_year"]):
        raise ValueError("cannot estimate the purchase frequency: no active customer-time was observed")
    return CompanyHistoricalCLV(
        n_customers=totals.n_customers,
        average_purchase_value=float(figures["average_purchase_value"]),
        purchases_per_year=float(figures["purchases_per_year"]),
        lifespan_years=float(figures["lifespan_years"]),
        churn_rate_annual=float(figures["churn_rate_annual"]),
        churn_events=totals.churn_events,
        customer_years=totals.customer_years,
        margin_rate=float(figures["margin_rate"]),
        acquisition_cost=float(figures["acquisition_cost"]),
        clv=float(figures["clv"]),
        method=_historical_method(totals.churn_inactivity_days, per_customer_min_exposure_years,
                                  lifespan_years is not None),
    )


# --- naive baseline --------------------------------------------------------


def historical_clv_over_horizon(
    features,
    days_per_period,
    horizon_years,
    churn_inactivity_days=180.0,
    margin_rate=1.0,
    acquisition_cost=0.0,
    min_exposure_years=DEFAULT_MIN_EXPOSURE_YEARS,
):
    """The business formula over a horizon instead of a lifespan, per customer.

    Own average purchase value x own purchases per active year (as :func:`historical_clv`
    measures them) x ``horizon_years`` x own margin rate - own CAC: what the articles'
    arithmetic says a customer brings over the next ``horizon_years``, to set beside a
    predicted CLV over the same horizon (like for like: the predicted figure covers a horizon,
    the historical one a whole lifespan). Undiscounted, as the formula is; no dropout, which is
    what the models add.

    Parameters
    ----------
    features, days_per_period, churn_inactivity_days, margin_rate, acquisition_cost, min_exposure_years
        As :func:`historical_clv`.
    horizon_years : float
        The horizon, in years.

    Returns
    -------
    pandas.Series
        Indexed like ``features``, named ``historical_clv_horizon``.
    """
    horizon_years = check_positive_real(horizon_years, "horizon_years")
    min_exposure_years = check_positive_real(min_exposure_years, "min_exposure_years")
    purchases, revenue, _, exposure_years = _activity(features, days_per_period, churn_inactivity_days,
                                                      allow_empty=True)
    index = features.index
    margin = aligned(margin_rate, index, "margin_rate")
    cost = aligned(acquisition_cost, index, "acquisition_cost")
    values = _customer_formula(purchases, revenue, exposure_years, min_exposure_years, horizon_years, margin, cost)
    return pd.Series(values, index=index, name="historical_clv_horizon")


def _customer_formula(purchases, revenue, exposure_years, min_exposure_years, years, margin, cost):
    """The business formula for each customer over ``years``: own average purchase value x own
    purchases per active year (active time floored at ``min_exposure_years``) x ``years`` x
    margin - CAC; over the company lifespan it is the historical CLV, over a horizon its
    like-for-like partner."""
    yearly_purchases = purchases / np.maximum(exposure_years, min_exposure_years)
    return (revenue / purchases) * yearly_purchases * years * margin - cost


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
        with ``frequency_holdout``), ``predicted_revenue`` (comparable
        with ``revenue_holdout``) and ``probability_any_purchase`` (of at least
        one purchase in the holdout), indexed like ``features``.

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
    # The baseline states no probability of its own: a rate carried forward with no dropout
    # is a Poisson process, whose chance of at least one event is 1 - exp(-expected count).
    # A customer who never repeated gets 0, which log loss punishes when they buy.
    probability_any_purchase = -np.expm1(-predicted_purchases)
    return pd.DataFrame(
        {"predicted_purchases": predicted_purchases, "predicted_revenue": predicted_revenue,
         "probability_any_purchase": probability_any_purchase},
        index=features.index,
        copy=False,
    )
