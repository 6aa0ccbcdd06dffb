"""How the champion's forecast met reality: what the champion predicted at its own as-of date
against what the log shows since then (pure functions of tables; ``clv retrain`` runs them).

The champion's customers are those who had bought by its as-of date; their features at that
date, with the holdout columns up to the retrain's as-of date, are the calibration table of
a features run with ``calibration_end`` = the champion's as-of. The champion's frozen scorer
values them exactly as it did when it was trained (same settings, same tier cuts).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import numpy as np
import pandas as pd

from models import group_histories
from pipeline.stages.value import score_customers

# Points of the predicted cumulative curve: each is one expectation per unique history.
CURVE_POINTS = 40
DECILES = 10
# A customer predicted alive: P(alive) at the champion's as-of of at least this.
ALIVE_THRESHOLD = 0.5


def _error_pct(predicted: float, actual: float) -> float:
    return 100.0 * (predicted - actual) / actual if actual else float("nan")


def _totals(frame: pd.DataFrame) -> dict[str, float]:
    predicted_purchases = float(frame["predicted_purchases"].sum())
    actual_purchases = float(frame["frequency_holdout"].sum())
    predicted_revenue = float(frame["predicted_revenue"].sum())
    actual_revenue = float(frame["revenue_holdout"].sum())
    return {
        "customers": float(len(frame)),
        "purchases_predicted": predicted_purchases,
        "purchases_actual": actual_purchases,
        "purchases_error_pct": _error_pct(predicted_purchases, actual_purchases),
        "revenue_predicted": predicted_revenue,
        "revenue_actual": actual_revenue,
        "revenue_error_pct": _error_pct(predicted_revenue, actual_revenue),
    }


def predicted_clv_decile(predicted_clv: pd.Series) -> np.ndarray:
    """Decile 1 (lowest) to 10 (highest) of predicted CLV; ties are split by position in the table,
    so equal histories can fall in neighbouring deciles and every decile has the same size (±1)."""
    order = np.argsort(predicted_clv.to_numpy(dtype=float), kind="stable")
    deciles = np.empty(len(order), dtype=np.int64)
    deciles[order] = np.arange(len(order)) * DECILES // max(len(order), 1) + 1
    return deciles


def forecast_vs_actual(calibration: pd.DataFrame, scorer: Any) -> dict[str, Any]:
    """The champion's forecast for (its as-of, now] against what happened.

    Parameters
    ----------
    calibration : pandas.DataFrame
        One row per customer who had bought by the champion's as-of date: ``frequency``,
        ``recency``, ``T`` and the other features the scorer reads, at that date, plus
        ``frequency_holdout``, ``revenue_holdout`` and ``duration_holdout`` (periods) since.
        Indexed by customer id.
    scorer : CustomerValueScorer
        The champion's frozen scorer.

    Returns
    -------
    dict
        ``total`` (predicted and actual purchases and revenue, errors in %), ``by_tier``,
        ``by_decile`` (of predicted CLV, 10 = highest), ``alive_share_bought`` (of customers
        with P(alive) ≥ 0.5 then, the share who bought since) and ``dead_share_bought``.
    """
    horizon = float(calibration["duration_holdout"].iloc[0])
    histories = group_histories(calibration)  # once, for the scores and the holdout forecast
    scores = score_customers(scorer, calibration, histories=histories, intervals=False)
    frame = pd.DataFrame({
        "frequency_holdout": calibration["frequency_holdout"].to_numpy(dtype=float),
        "revenue_holdout": calibration["revenue_holdout"].to_numpy(dtype=float),
        "predicted_purchases": scorer.purchase_model.expected_purchases(histories, horizon).to_numpy(dtype=float),
        "expected_spend": scores["expected_spend"].to_numpy(dtype=float),
        "probability_alive": scores["probability_alive"].to_numpy(dtype=float),
        "tier": scores["tier"].astype(str).to_numpy(),
        "decile": predicted_clv_decile(scores["predicted_clv"]),
    })
    frame["predicted_revenue"] = frame["predicted_purchases"] * frame["expected_spend"]
    bought = frame["frequency_holdout"] > 0
    alive = frame["probability_alive"] >= ALIVE_THRESHOLD
    groups = frame.groupby("tier")
    return {
        "holdout_periods": horizon,
        "total": _totals(frame),
        # Tiers in the scorer's order, highest first, as the run's report lists them.
        "by_tier": {tier: _totals(groups.get_group(tier)) for tier in scorer.tier_names if tier in groups.groups},
        "by_decile": {int(str(decile)): _totals(group) for decile, group in frame.groupby("decile")},
        "alive_customers": float(alive.sum()),
        "alive_share_bought": float(bought[alive].mean()) if alive.any() else float("nan"),
        "dead_share_bought": float(bought[~alive].mean()) if (~alive).any() else float("nan"),
    }


def cumulative_forecast_data(
    calibration: pd.DataFrame, purchase_model: Any, holdout_purchases_per_day: pd.DataFrame,
    start: dt.date, end: dt.date, days_per_period: float,
) -> pd.DataFrame:
    """Cumulative purchases since ``start`` (the champion's as-of): predicted by the champion
    for its customers, and what they did, day by day to ``end``.

    ``holdout_purchases_per_day`` has ``date`` and ``holdout_purchases`` (the champion's
    customers' purchases that day, as ``frequency_holdout`` counts them). The prediction is
    evaluated at :data:`CURVE_POINTS` days and interpolated between them.
    """
    days = (end - start).days
    grid = np.unique(np.linspace(0, days, CURVE_POINTS).round().astype(int))
    histories = calibration[["frequency", "recency", "T"]]
    unique = histories.value_counts(sort=False).reset_index(name="customers")
    horizons = [float(day) / days_per_period for day in grid if day > 0]
    by_horizon = purchase_model.expected_purchases_by_horizon(unique, horizons)
    predicted = np.concatenate([[0.0], unique["customers"].to_numpy(dtype=float) @ by_horizon])
    every_day = np.arange(days + 1)
    actual_per_day = np.zeros(days + 1)
    if len(holdout_purchases_per_day):
        offsets = (pd.to_datetime(holdout_purchases_per_day["date"]) - pd.Timestamp(start)).dt.days.to_numpy()
        inside = (offsets >= 1) & (offsets <= days)
        np.add.at(actual_per_day, offsets[inside], holdout_purchases_per_day["holdout_purchases"].to_numpy()[inside])
    return pd.DataFrame({
        "date": [start + dt.timedelta(days=int(day)) for day in every_day],
        "days_since_as_of": every_day,
        "actual_cumulative": np.cumsum(actual_per_day),
        "predicted_cumulative": np.interp(every_day, grid, predicted),
    })


def monitor_metrics(report: dict[str, Any]) -> dict[str, float]:
    """The report as flat ``monitor.*`` metric names (tiers and deciles included)."""
    flat = {f"monitor.{key}": value for key, value in report["total"].items()}
    for tier, values in report["by_tier"].items():
        flat |= {f"monitor.tier.{tier}.{key}": value for key, value in values.items()}
    for decile, values in report["by_decile"].items():
        flat |= {f"monitor.decile.{decile:02d}.{key}": value for key, value in values.items()}
    for key in ("alive_customers", "alive_share_bought", "dead_share_bought", "holdout_periods"):
        flat[f"monitor.{key}"] = report[key]
    return flat


def alert(report: dict[str, Any], threshold_pct: float | None) -> str | None:
    """A one-line warning when the realised purchases or revenue miss the forecast by more than
    ``threshold_pct`` percent, else None."""
    if threshold_pct is None:
        return None
    total = report["total"]
    misses = [
        f"{what} {total[f'{what}_error_pct']:+.1f}% (predicted {total[f'{what}_predicted']:,.0f}, "
        f"actual {total[f'{what}_actual']:,.0f})"
        for what in ("purchases", "revenue")
        if np.isfinite(total[f"{what}_error_pct"]) and abs(total[f"{what}_error_pct"]) > threshold_pct
    ]
    if not misses:
        return None
    return f"the champion's forecast missed by more than {threshold_pct:g}%: " + "; ".join(misses)
