"""Stability over several origins (pipeline/stages/stability.py): hand-computed figures."""

from __future__ import annotations

import datetime as dt
import json
import math

import pytest

from pipeline.config import FeatureSettings
from pipeline.errors import ConfigError
from pipeline.stages.stability import (
    Origin,
    long_table,
    numeric_metrics,
    origin_windows,
    stability_summary,
    stability_table,
    win_counts,
)

D = dt.date

# Three origins' backtest rows; "brier" stands for a metric the backtest may gain later: the
# module must carry it like the others without knowing its name.
TABLES = [
    {"bgnbd": {"purchases_rmse": 1.0, "purchases_total_error_pct": -4.0, "brier": 0.2},
     "paretonbd": {"purchases_rmse": 2.0, "purchases_total_error_pct": 1.0, "brier": 0.3},
     "historical_baseline": {"purchases_rmse": 5.0, "purchases_total_error_pct": 30.0}},
    {"bgnbd": {"purchases_rmse": 3.0, "purchases_total_error_pct": 2.0, "brier": float("nan")},
     "paretonbd": {"purchases_rmse": 2.5, "purchases_total_error_pct": -1.0, "brier": 0.1},
     "historical_baseline": {"purchases_rmse": 6.0, "purchases_total_error_pct": 20.0}},
    # paretonbd failed to fit at the third origin: no row.
    {"bgnbd": {"purchases_rmse": 2.0, "purchases_total_error_pct": 5.0, "brier": 0.4},
     "historical_baseline": {"purchases_rmse": 7.0, "purchases_total_error_pct": 10.0}},
]
SELECTED = ["bgnbd", "paretonbd", "bgnbd"]
ORIGINS = [Origin(1, D(1998, 3, 31), D(1998, 6, 30)), Origin(2, D(1997, 12, 30), D(1998, 3, 31)),
           Origin(3, D(1997, 9, 30), D(1997, 12, 30))]


def figures(table, model, metric):
    row = table[(table["model"] == model) & (table["metric"] == metric)]
    assert len(row) == 1
    return row.iloc[0]


def test_mean_sd_min_max_and_count_per_model_and_metric():
    table = stability_table(TABLES)
    rmse = figures(table, "bgnbd", "purchases_rmse")
    # 1, 3, 2: mean 2, sample variance ((1 + 1 + 0) / 2) = 1.
    assert (rmse["mean"], rmse["sd"], rmse["min"], rmse["max"], rmse["origins"]) == (2.0, 1.0, 1.0, 3.0, 3)
    error = figures(table, "bgnbd", "purchases_total_error_pct")
    # -4, 2, 5: mean 1, deviations -5, 1, 4: variance (25 + 1 + 16) / 2 = 21.
    assert error["mean"] == 1.0
    assert error["sd"] == pytest.approx(math.sqrt(21.0), rel=1e-15)
    # The NaN at the second origin is left out: 0.2 and 0.4.
    brier = figures(table, "bgnbd", "brier")
    assert brier["origins"] == 2
    assert brier["mean"] == pytest.approx(0.3, rel=1e-15)
    assert brier["sd"] == pytest.approx(math.sqrt(0.02), rel=1e-12)
    # Two origins for the model that failed at the third: 2 and 2.5.
    pareto = figures(table, "paretonbd", "purchases_rmse")
    assert (pareto["mean"], pareto["origins"]) == (2.25, 2)
    assert pareto["sd"] == pytest.approx(math.sqrt(0.125), rel=1e-15)
    baseline = figures(table, "historical_baseline", "purchases_rmse")
    assert (baseline["mean"], baseline["sd"]) == (6.0, 1.0)
    assert list(table["model"].unique()) == ["bgnbd", "paretonbd", "historical_baseline"]


def test_one_origin_has_no_spread():
    table = stability_table(TABLES[:1])
    rmse = figures(table, "paretonbd", "purchases_rmse")
    assert (rmse["mean"], rmse["min"], rmse["max"], rmse["origins"]) == (2.0, 2.0, 2.0, 1)
    assert math.isnan(rmse["sd"])


def test_a_metric_never_finite_has_no_figures():
    table = stability_table([{"m": {"x": float("nan")}}, {"m": {"x": float("inf")}}])
    row = figures(table, "m", "x")
    assert row["origins"] == 0
    assert all(math.isnan(row[key]) for key in ("mean", "sd", "min", "max"))


def test_only_numbers_are_metrics():
    assert numeric_metrics({"a": 1, "b": 2.5, "c": "text", "d": True, "e": None}) == {"a": 1.0, "b": 2.5}


def test_win_counts_over_the_candidates():
    wins = win_counts(SELECTED, ["paretonbd", "bgnbd", "mbgnbd"])
    assert wins.to_dict("list") == {"model": ["bgnbd", "paretonbd", "mbgnbd"], "wins": [2, 1, 0],
                                    "share": [2 / 3, 1 / 3, 0.0]}


def test_long_table_has_a_row_per_origin_model_and_metric():
    table = long_table(ORIGINS, TABLES)
    # 3 + 3 + 2 metrics at the first two origins, 3 + 2 at the third.
    assert len(table) == 8 + 8 + 5
    row = table[(table["origin"] == 2) & (table["model"] == "paretonbd") & (table["metric"] == "brier")].iloc[0]
    assert (row["calibration_end"], row["observation_end"], row["value"]) == (D(1997, 12, 30), D(1998, 3, 31), 0.1)


def test_summary_is_plain_json():
    summary = stability_summary(ORIGINS, TABLES, SELECTED, ["bgnbd", "paretonbd"], "purchases_rmse")
    text = json.dumps(summary, allow_nan=False)  # NaN would not be JSON
    back = json.loads(text)
    assert back["wins"] == {"bgnbd": 2, "paretonbd": 1}
    assert back["stability"]["bgnbd"]["purchases_rmse"] == {"mean": 2.0, "sd": 1.0, "min": 1.0, "max": 3.0, "origins": 3}
    assert back["origins"][1]["selected"] == "paretonbd"
    assert back["origins"][1]["metrics"]["bgnbd"]["brier"] is None
    assert back["origins"][2]["calibration_end"] == "1997-09-30"
    assert back["origins"][2]["holdout_days"] == 91


def weeks(holdout_periods=None, calibration_end=None, origins=1):
    return FeatureSettings(holdout_periods=holdout_periods, calibration_end=calibration_end, origins=origins)


def test_origins_are_one_holdout_apart():
    windows = origin_windows(weeks(holdout_periods=13, origins=3), D(1997, 1, 1), D(1998, 6, 30))
    # 13 weeks = 91 days back from the observation end, three times.
    assert windows == ORIGINS


def test_a_calibration_end_sets_the_holdout_length():
    windows = origin_windows(weeks(calibration_end=D(1998, 4, 30), origins=2), D(1997, 1, 1), D(1998, 6, 30))
    # 61 days: 1998-04-30 to 1998-06-30, then 1998-02-28 to 1998-04-30.
    assert [(w.calibration_end, w.observation_end) for w in windows] == [
        (D(1998, 4, 30), D(1998, 6, 30)), (D(1998, 2, 28), D(1998, 4, 30))]


def test_one_origin_is_the_configured_split():
    # A calibration period shorter than the holdout is allowed for the one split, as clv run allows it.
    windows = origin_windows(weeks(calibration_end=D(1997, 9, 30)), D(1997, 1, 1), D(1998, 6, 30))
    assert windows == [Origin(1, D(1997, 9, 30), D(1998, 6, 30))]


@pytest.mark.parametrize("settings, message", [
    (weeks(origins=2), "features.origins 2: a backtest needs a holdout"),
    (weeks(holdout_periods=39, origins=2), "features.origins 2: origin 2 would calibrate up to 1996-12-31 .holdout 1996-12-31 to 1997-09-30., but"),
    # 26 weeks = 182 days: origin 3 holds out 1997-07-01 .. 1997-12-30 and calibrates to 1996-12-31.
    (weeks(holdout_periods=26, origins=3), "1996-12-31 .holdout 1996-12-31 to 1997-07-01., but the data start on"),
    # 20 weeks = 140 days: origin 3 calibrates 1997-01-01 .. 1997-05-06, 125 days.
    (weeks(holdout_periods=20, origins=3), "origin 3 would calibrate on 1997-01-01 to 1997-05-06, 125 days, shorter than its 140-day holdout"),
])
def test_impossible_origins_are_config_errors(settings, message):
    with pytest.raises(ConfigError, match=message):
        origin_windows(settings, D(1997, 1, 1), D(1998, 6, 30), fit_holdout=False)


def test_a_holdout_too_long_for_the_origins_gives_way_to_the_longest_that_fits():
    from pipeline.stages.stability import shortened_holdout_note

    # The built-in CDNOW run: 39 weeks of holdout in 545 days leave room for one origin; three
    # origins and a calibration as long as a holdout need 4 holdouts: 19 whole weeks (133 days).
    windows = origin_windows(weeks(calibration_end=D(1997, 9, 30), origins=3), D(1997, 1, 1), D(1998, 6, 30))
    assert [(w.calibration_end, w.observation_end) for w in windows] == [
        (D(1998, 2, 17), D(1998, 6, 30)), (D(1997, 10, 7), D(1998, 2, 17)), (D(1997, 5, 27), D(1997, 10, 7))]
    assert {w.holdout_days for w in windows} == {133} and {w.configured_holdout_days for w in windows} == {273}
    note = shortened_holdout_note(windows)
    assert note is not None and "273-day holdout" in note and "133 days" in note
    # A holdout that fits is kept, and says nothing.
    kept = origin_windows(weeks(holdout_periods=13, origins=3), D(1997, 1, 1), D(1998, 6, 30))
    assert kept == ORIGINS and shortened_holdout_note(kept) is None
    # Not even one week each: an error, not a day-long holdout.
    with pytest.raises(ConfigError, match="features.origins 80: the data's 545 days .* leave no room for 80 holdouts "
                                          "of even one week"):
        origin_windows(weeks(holdout_periods=13, origins=80), D(1997, 1, 1), D(1998, 6, 30))
