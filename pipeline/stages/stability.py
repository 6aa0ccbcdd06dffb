"""Stability over several origins: the backtest repeated at K calibration ends, summarised.

One holdout says which candidate predicted best over one stretch of time; a second or third
stretch says whether that was the model or the luck of the window. Origin ``k = 0 .. K-1``
observes the log up to the run's observation end minus ``k`` holdout lengths, and its
calibration period ends one holdout length before that: the holdouts tile the end of the log
without overlapping, the latest first (origin 1 is ``clv run``'s own split).

Pure functions of tables: the caller (``pipeline/runner.py``) computes each origin's features
and backtest; this module places the origins, then takes each origin's metrics table
(``{model: {metric: value}}``, the rows :class:`pipeline.stages.fit.Backtest` holds) and the
model each selected, and returns tidy frames and a JSON-able summary. Metrics are whatever
numeric keys the rows have: the backtest gains metrics without this module changing.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
from numbers import Real
from typing import Any

import numpy as np
import pandas as pd

from pipeline.config import FeatureSettings
from pipeline.errors import ConfigError
from pipeline.stages.features import resolve_calibration_end

LONG_COLUMNS = ["origin", "calibration_end", "observation_end", "model", "metric", "value"]
STABILITY_COLUMNS = ["model", "metric", "mean", "sd", "min", "max", "origins"]


@dataclasses.dataclass(frozen=True)
class Origin:
    """One calibration/holdout split: ``number`` 1 is the latest (the configured split)."""

    number: int
    calibration_end: dt.date
    observation_end: dt.date
    # The configured holdout's days, when it left no room for every origin and a shorter one
    # was used (see origin_windows); None when the configured one is used.
    configured_holdout_days: int | None = None

    @property
    def holdout_days(self) -> int:
        return (self.observation_end - self.calibration_end).days

    def to_dict(self) -> dict[str, Any]:
        return {"origin": self.number, "calibration_end": self.calibration_end.isoformat(),
                "observation_end": self.observation_end.isoformat(), "holdout_days": self.holdout_days,
                "configured_holdout_days": self.configured_holdout_days}


def shortened_holdout_note(windows: list[Origin]) -> str | None:
    """One line saying the origins use a shorter holdout than the configured one, or None."""
    first = windows[0] if windows else None
    if first is None or first.configured_holdout_days is None:
        return None
    return (f"the configured {first.configured_holdout_days}-day holdout leaves room for fewer than {len(windows)} "
            f"origins in the data: each origin's holdout is {first.holdout_days} days instead, so origin 1 is not "
            "clv run's split (set features.holdout_periods to choose the length)")


def longest_holdout_days(first_date: dt.date, observation_end: dt.date, origins: int, days_per_period: float) -> int:
    """The longest holdout, in whole days of whole periods, that leaves ``origins`` of them one
    after another at the end of the data with at least one holdout of calibration history
    before the earliest; 0 when not even one period does."""
    history = (observation_end - first_date).days
    periods = math.floor(history / (origins + 1) / days_per_period)
    return round(periods * days_per_period) if periods >= 1 else 0


def origin_windows(
    settings: FeatureSettings, first_date: dt.date, observation_end: dt.date, origins: int | None = None,
    max_holdout_share: float | None = None, fit_holdout: bool = True,
) -> list[Origin]:
    """The ``origins`` splits (default ``settings.origins``) of a log from ``first_date`` to
    ``observation_end``, latest first.

    Origin 1 is the configured split, checked as every run checks it
    (:func:`pipeline.stages.features.resolve_calibration_end`). With more than one, the holdout
    is required and the earliest origin's calibration period must lie in the data and be at
    least one holdout long (a model fitted on less history than it is asked to predict says
    little about the model). When the configured holdout is too long for that, ``fit_holdout``
    (the default) uses the longest whole-period holdout that fits
    (:func:`longest_holdout_days`) for every origin, and the origins say so
    (``configured_holdout_days``, :func:`shortened_holdout_note`): on the built-in CDNOW log the
    39-week holdout of its 78 weeks leaves room for one origin only. Otherwise, and when even
    that is impossible, :class:`ConfigError` names the key, the origin and its dates.
    """
    count = settings.origins if origins is None else origins
    if count < 1:
        raise ConfigError(f"features.origins {count}: give at least 1")
    holdout = settings.holdout_days(observation_end)
    if holdout is None:
        raise ConfigError(f"features.origins {count}: a backtest needs a holdout: set features.calibration_end "
                          "or features.holdout_periods")
    first_calibration_end = resolve_calibration_end(settings, first_date, observation_end, max_holdout_share)
    assert first_calibration_end is not None  # a holdout was configured
    configured = None
    if count > 1 and fit_holdout and (observation_end - first_date).days < (count + 1) * holdout:
        configured = holdout
        holdout = longest_holdout_days(first_date, observation_end, count, settings.period.days_per_unit)
        if holdout == 0:
            raise ConfigError(
                f"features.origins {count}: the data's {(observation_end - first_date).days} days from {first_date} "
                f"to {observation_end} leave no room for {count} holdouts of even one {settings.period.unit} "
                "each after a calibration period as long: use fewer origins")
        first_calibration_end = observation_end - dt.timedelta(days=holdout)
    windows = [Origin(1, first_calibration_end, observation_end, configured)]
    for k in range(1, count):
        end = observation_end - dt.timedelta(days=k * holdout)
        windows.append(Origin(k + 1, end - dt.timedelta(days=holdout), end, configured))
    earliest = windows[-1]
    if count > 1:
        earliest_holdout = f"holdout {earliest.calibration_end} to {earliest.observation_end}"
        where = f"features.origins {count}: origin {earliest.number}"
        fix = "use fewer origins or a shorter holdout"
        if earliest.calibration_end <= first_date:
            raise ConfigError(f"{where} would calibrate up to {earliest.calibration_end} ({earliest_holdout}), "
                              f"but the data start on {first_date}: {fix}")
        calibration_days = (earliest.calibration_end - first_date).days
        if calibration_days < holdout:
            raise ConfigError(f"{where} would calibrate on {first_date} to {earliest.calibration_end}, "
                              f"{calibration_days} days, shorter than its {holdout}-day {earliest_holdout}: {fix}")
        if max_holdout_share is not None:
            history_days = (earliest.observation_end - first_date).days
            if holdout > max_holdout_share * history_days:
                raise ConfigError(f"{where}: the {holdout}-day {earliest_holdout} is {holdout / history_days:.1%} "
                                  f"of that origin's history, above validation.max_holdout_share "
                                  f"{max_holdout_share:.1%}: {fix}")
    return windows


def numeric_metrics(row: dict[str, Any]) -> dict[str, float]:
    """Every number of a model's metrics row as a float (NaN kept; flags and text left out)."""
    return {key: float(value) for key, value in row.items()
            if isinstance(value, Real) and not isinstance(value, bool)}


def long_table(origins: list[Origin], tables: list[dict[str, dict[str, Any]]]) -> pd.DataFrame:
    """One row per origin, model and metric (:data:`LONG_COLUMNS`), in the tables' orders."""
    if len(origins) != len(tables):
        raise ValueError(f"{len(origins)} origins but {len(tables)} metrics tables")
    rows = [
        (origin.number, origin.calibration_end, origin.observation_end, model, metric, value)
        for origin, table in zip(origins, tables)
        for model, row in table.items()
        for metric, value in numeric_metrics(row).items()
    ]
    return pd.DataFrame(rows, columns=LONG_COLUMNS)


def stability_table(tables: list[dict[str, dict[str, Any]]]) -> pd.DataFrame:
    """Each model's and metric's spread over the origins (:data:`STABILITY_COLUMNS`).

    ``mean``, ``sd`` (ddof = 1), ``min`` and ``max`` of the finite values; ``origins`` counts
    them. A model that failed at some origin (no row there) or a metric that was not finite
    there is left out of that origin's figures: ``sd`` is NaN below two values, the others
    below one. Models and metrics keep their order of first appearance.
    """
    values: dict[tuple[str, str], list[float]] = {}
    for table in tables:
        for model, row in table.items():
            for metric, value in numeric_metrics(row).items():
                values.setdefault((model, metric), []).append(value)
    rows = []
    for (model, metric), seen in values.items():
        finite = np.array([value for value in seen if math.isfinite(value)], dtype=float)
        n = len(finite)
        rows.append((
            model, metric,
            float(finite.mean()) if n else math.nan,
            float(finite.std(ddof=1)) if n > 1 else math.nan,
            float(finite.min()) if n else math.nan,
            float(finite.max()) if n else math.nan,
            n,
        ))
    return pd.DataFrame(rows, columns=STABILITY_COLUMNS)


def win_counts(selected: list[str], candidates: list[str]) -> pd.DataFrame:
    """How many origins selected each candidate (``model``, ``wins``, ``share``), most wins
    first (ties in the candidates' order); a winner missing from ``candidates`` is added."""
    names = list(dict.fromkeys([*candidates, *selected]))
    wins = [sum(1 for name in selected if name == model) for model in names]
    frame = pd.DataFrame({"model": names, "wins": wins})
    frame["share"] = frame["wins"] / len(selected) if selected else math.nan
    order = sorted(range(len(names)), key=lambda i: -wins[i])  # sorted is stable: ties keep their order
    return frame.iloc[order].reset_index(drop=True)


def _json_number(value: float) -> float | None:
    return value if math.isfinite(value) else None  # JSON has no NaN


def stability_summary(
    origins: list[Origin], tables: list[dict[str, dict[str, Any]]], selected: list[str], candidates: list[str],
    selection_metric: str,
) -> dict[str, Any]:
    """Everything of a several-origin backtest as plain JSON (NaN as null): the origins with
    their tables and winners, each model's spread per metric, and the win counts."""
    spread = stability_table(tables)
    per_model: dict[str, dict[str, dict[str, float | int | None]]] = {}
    for row in spread.to_dict("records"):
        per_model.setdefault(str(row["model"]), {})[str(row["metric"])] = {
            **{key: _json_number(float(row[key])) for key in ("mean", "sd", "min", "max")},
            "origins": int(row["origins"]),
        }
    wins = win_counts(selected, candidates)
    return {
        "selection_metric": selection_metric,
        "origins": [
            {**origin.to_dict(), "selected": name,
             "metrics": {model: {metric: _json_number(value) for metric, value in numeric_metrics(row).items()}
                         for model, row in table.items()}}
            for origin, table, name in zip(origins, tables, selected)
        ],
        "stability": per_model,
        "wins": {str(model): int(count) for model, count in zip(wins["model"], wins["wins"])},
    }

