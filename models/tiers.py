"""CLV tiers: cuts on CLV (quantiles or amounts) and the action for each tier.

A customer belongs to the first tier, from the top, whose lower bound their
CLV reaches. The pipeline computes the bounds once, on the run's predicted
CLV, and freezes them as amounts, so a customer scored later lands in the
same tier.

References
----------
.. [1] The CLV tier actions of the Spanish practitioner articles the
   project's brief started from (e.g. Q2BSTUDIO, "Valor de vida del cliente
   (CLV)"; digital datatalks, "Cómo maximizar el valor del Customer Lifetime
   Value"; WorkMeter,
   https://www.workmeter.com/blog/como-analizar-la-rentabilidad-de-sus-clientes/).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import pandas as pd

from ._validation import aligned, check_real, finite_values, reindexed


class Tier(NamedTuple):
    """A CLV tier: its name, its lower bound and what to do with its customers.

    ``cut`` is a quantile of CLV (method "quantile") or a CLV amount (method
    "absolute"); a customer belongs to the first tier, from the top, whose
    bound they reach.
    """

    name: str
    cut: float
    action: str


# From the seed articles [1]: high CLV gets loyalty programmes, premium
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


def quantile_ranks(n, probability):
    """Where a quantile of ``n`` sorted values lies: the lower and upper 0-based ranks and the
    interpolation weight, as numpy's default (linear, Hyndman & Fan's 7th) method places it.

    With the two values at those ranks, :func:`interpolate` gives the quantile: a caller that
    can find values by rank without sorting everything (a cluster) gets exactly ``np.quantile``.
    """
    virtual = (n - 1) * probability
    lower = int(np.floor(virtual))
    return lower, min(lower + 1, n - 1), float(virtual - lower)


def interpolate(lower_value, upper_value, weight):
    """numpy's linear interpolation between neighbouring order statistics (its ``_lerp``: from
    the upper value for weights of one half and more, which keeps the result monotonic)."""
    difference = upper_value - lower_value
    if weight >= 0.5:
        return float(upper_value - difference * (1 - weight))
    return float(lower_value + difference * weight)


def quantiles_from_ranks(n, probabilities, value_at_rank):
    """Quantiles of ``n`` values from a function giving the value at a 0-based rank (ascending):
    equal to ``np.quantile`` of the values (tests/models/test_tiers.py checks it bit for bit)."""
    result = []
    for probability in probabilities:
        lower, upper, weight = quantile_ranks(n, probability)
        result.append(interpolate(value_at_rank(lower), value_at_rank(upper), weight))
    return np.array(result, dtype=np.float64)


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

    The whole table's :func:`tier_partial` finished by :func:`finish_tier_summary`: the
    formulas an engine that reduces batches of customers goes through (every figure here is a
    count or a sum, none needs an order statistic).

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
    partial = tier_partial(clv, tiers_frame, historical)
    # An empty tier has no row to read its action from; assign_tiers leaves
    # the full list of tiers in attrs for that.
    actions = {tier_.name: tier_.action for tier_ in tiers_frame.attrs.get("tiers", ())}
    actions.update(tiers_frame.drop_duplicates("tier").set_index("tier")["action"].to_dict())
    return finish_tier_summary(partial, actions)


def tier_partial(clv, tiers_frame, historical=None):
    """The counts and sums per tier :func:`tier_summary` needs, of any batch of customers.

    Parameters
    ----------
    clv, tiers_frame, historical
        As :func:`tier_summary`, for the batch's customers; ``tiers_frame['tier']`` has the
        same categories in every batch (:func:`assign_tiers` with the same tiers).

    Returns
    -------
    dict
        ``predicted_clv_total`` (float, every customer's predicted CLV) and ``per_tier``: a
        DataFrame indexed by tier (the categorical's order, lowest first) with
        ``n_customers`` (int), ``total_predicted_clv`` and, with ``historical``,
        ``total_historical_clv``. Partials of batches merge by :func:`merge_tier_partials` (a
        batch of no customers is the identity).
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
    per_tier = pd.DataFrame({"n_customers": grouped.size(), "total_predicted_clv": grouped["clv"].sum()})
    if historical is not None:
        per_tier["total_historical_clv"] = grouped["historical"].sum()
    # The whole column's sum, not the tiers' (pandas sums groups with compensated summation,
    # numpy a column pairwise): the total of the shares is the one value_summary reports.
    return {"predicted_clv_total": float(values.sum()), "per_tier": per_tier}


def merge_tier_partials(partials):
    """The sum of :func:`tier_partial` results of batches with the same tiers.

    Raises
    ------
    ValueError
        When there is no partial, or their tiers or columns differ.
    """
    partials = list(partials)
    if not partials:
        raise ValueError("no tier partials to merge")
    total = partials[0]["predicted_clv_total"]
    per_tier = partials[0]["per_tier"].copy()
    for partial in partials[1:]:
        other = partial["per_tier"]
        if not (other.index.equals(per_tier.index) and other.index.dtype == per_tier.index.dtype) or list(
            other.columns
        ) != list(per_tier.columns):
            raise ValueError("tier partials of different tiers or columns cannot be merged")
        total = total + partial["predicted_clv_total"]
        for column in per_tier.columns:
            per_tier[column] = per_tier[column] + other[column]
    return {"predicted_clv_total": total, "per_tier": per_tier}


def finish_tier_summary(partial, actions):
    """The :func:`tier_summary` table from a (merged) :func:`tier_partial`.

    Parameters
    ----------
    partial : dict
        :func:`tier_partial` of all customers, or :func:`merge_tier_partials` of batches.
    actions : mapping of str to str
        Each tier's action, by tier name (``Tier.action``).
    """
    per_tier = partial["per_tier"]
    summary = per_tier[["n_customers", "total_predicted_clv"]].copy()
    # pandas' group mean is its group sum divided by the count: the same bits.
    summary["mean_predicted_clv"] = summary["total_predicted_clv"] / summary["n_customers"]
    summary["share_of_customers"] = summary["n_customers"] / max(int(summary["n_customers"].sum()), 1)
    total = partial["predicted_clv_total"]
    summary["share_of_predicted_clv"] = summary["total_predicted_clv"] / total if total != 0 else np.nan
    columns = [
        "action",
        "n_customers",
        "share_of_customers",
        "total_predicted_clv",
        "mean_predicted_clv",
        "share_of_predicted_clv",
    ]
    if "total_historical_clv" in per_tier.columns:
        summary["mean_historical_clv"] = per_tier["total_historical_clv"] / per_tier["n_customers"]
        columns.append("mean_historical_clv")
    summary.insert(0, "action", [actions.get(name) for name in summary.index])
    # Highest tier first, as tiers are given and read.
    dtype = per_tier.index.dtype
    summary = summary.loc[list(dtype.categories[::-1]), columns]
    summary.index = pd.CategoricalIndex(summary.index, dtype=dtype, name="tier")
    return summary
