"""What a new customer is worth at acquisition, against what acquiring them costs.

The articles' question — is a customer worth more than it costs to acquire — is about a
customer *at their first purchase*, before any history: the first purchase's margin plus the
model's unconditional expectation of the discounted repeat purchases from there
(``discounted_expected_purchases_new_customer``, pymc-marketing's
``expected_purchases_new_customer``, CLVTools' ``newcustomer()``) times the margin of a repeat
purchase (Gamma-Gamma's expected spend of a customer without repeat purchases × margin rate).
Over the whole lifetime and over the run's horizon; overall and per first channel, whose
customers differ in their first purchase, margin and acquisition cost, and — when the models
take ``first_channel`` as a covariate — in their purchase, dropout and spend parameters. Set
against the acquisition cost: LTV:CAC and the payback period (months until the expected
cumulative discounted margin covers CAC).

The per-channel averages are sums over customers (:func:`acquisition_partial`), so an engine
that reduces batches could finish them the same way; the models are evaluated once per group.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from models.discounting import DAYS_PER_YEAR, payback_period
from pipeline.stages.partials import GroupedSums, grouped_sums

ALL_CUSTOMERS = "all customers"
DAYS_PER_MONTH = DAYS_PER_YEAR / 12


def acquisition_partial(features: pd.DataFrame, margin_rate: pd.Series, acquisition_cost: pd.Series) -> GroupedSums:
    """Per group (every customer, and each first channel where the features have it): customers,
    and the sums of the first purchase's margin, the margin rate and the acquisition cost.

    The first purchase's amount is what the customer spent beyond their repeat purchases:
    ``total_amount - frequency × monetary_value`` (``monetary_value`` is the mean of the repeat
    purchase periods' totals).
    """
    rate = np.asarray(margin_rate, dtype=np.float64)
    first_margin = features["frequency"].to_numpy(dtype=np.float64) * features["monetary_value"].to_numpy(dtype=np.float64)
    np.subtract(features["total_amount"].to_numpy(dtype=np.float64), first_margin, out=first_margin)
    first_margin *= rate
    columns = {"first_purchase_margin": first_margin, "margin_rate": rate,
               "acquisition_cost": np.asarray(acquisition_cost, dtype=np.float64)}
    sums = GroupedSums({ALL_CUSTOMERS: {**{name: float(np.sum(values)) for name, values in columns.items()},
                                        "customers": float(len(rate))}})
    if "first_channel" in features.columns:
        by_channel = grouped_sums(features["first_channel"], columns)
        sums.update({f"channel {name}": values for name, values in by_channel.items()})
    return sums


def new_customer_value(scorer: Any, sums: dict[str, dict[str, float]]) -> pd.DataFrame:
    """A new customer's expected value against their acquisition cost, one row per group of
    :func:`acquisition_partial` (merged).

    Columns: ``customers``; ``first_purchase_margin``, ``margin_per_repeat_purchase`` (money);
    ``discounted_repeat_purchases`` over the lifetime; ``ltv_lifetime`` and ``ltv_horizon``
    (first purchase margin + discounted repeat margin; the horizon the run's, discounted
    continuously at the rate equal to the per-period one at period ends);
    ``acquisition_cost`` (the group's mean); ``ltv_to_cac`` (NaN without a cost) and
    ``payback_months`` (0 when the first purchase pays, inf when the lifetime never does).
    """
    model, spend_model = scorer.purchase_model, scorer.spend_model
    delta = scorer.discount_rate_continuous
    rows = {}
    for group, values in sums.items():
        count = values["customers"]
        design = _design_of(scorer, group)
        first_margin = values["first_purchase_margin"] / count
        margin_rate = values["margin_rate"] / count
        cost = values["acquisition_cost"] / count
        newcomer = pd.DataFrame({"frequency": [0.0], "monetary_value": [0.0], **{k: [v] for k, v in (design or {}).items()}})
        spend = float(spend_model.expected_spend(newcomer).iloc[0])
        margin_per_purchase = spend * margin_rate
        lifetime = float(model.discounted_expected_purchases_new_customer(delta, np.inf, design))
        horizon = float(model.discounted_expected_purchases_new_customer(delta, float(scorer.horizon_periods), design))
        ltv_lifetime = first_margin + margin_per_purchase * lifetime
        payback = payback_period(model, delta, margin_per_purchase, first_margin, cost, design)
        rows[group] = {
            "customers": int(count),
            "first_purchase_margin": first_margin,
            "margin_per_repeat_purchase": margin_per_purchase,
            "discounted_repeat_purchases": lifetime,
            "ltv_lifetime": ltv_lifetime,
            "ltv_horizon": first_margin + margin_per_purchase * horizon,
            "acquisition_cost": cost,
            "ltv_to_cac": ltv_lifetime / cost if cost > 0 else float("nan"),
            "payback_months": float(payback) * scorer.days_per_unit / DAYS_PER_MONTH,
        }
    return pd.DataFrame.from_dict(rows, orient="index")


def _design_of(scorer: Any, group: str) -> dict[str, float] | None:
    """A group's design row for a covariate model: the baseline customer (reference levels,
    mean numerics), with the group's first channel where the models take it; None without
    covariates."""
    columns = scorer.design_columns
    if not columns:
        return None
    design = dict.fromkeys(columns, 0.0)
    channel_column = f"first_channel[{group.removeprefix('channel ')}]"
    if group.startswith("channel ") and channel_column in design:
        design[channel_column] = 1.0
    return design


def unprofitable_groups(table: pd.DataFrame) -> list[str]:
    """One line per group whose new customer is worth less than they cost to acquire."""
    lines = []
    for group, row in table.iterrows():
        if np.isfinite(row["ltv_to_cac"]) and row["ltv_to_cac"] < 1:
            lines.append(f"{group}: a new customer is worth {row['ltv_to_cac']:.2f}x their acquisition cost "
                         f"(lifetime value {row['ltv_lifetime']:,.2f} against {row['acquisition_cost']:,.2f}): "
                         "acquiring them does not pay")
    return lines
