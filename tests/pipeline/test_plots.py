"""Plot data against independent computations; every plot writes a real PNG."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest
from matplotlib import image as mpimg
from scipy.special import hyp2f1

from models.purchase import BetaGeoModel
from pipeline.duckdb_engine import features_from_config
from pipeline.plots import (
    calibration_vs_holdout_data,
    cumulative_tracking_data,
    plot_calibration_vs_holdout,
    plot_clv_by_tier,
    plot_clv_distribution,
    plot_cumulative_tracking,
    plot_probability_alive_matrix,
    probability_alive_matrix_data,
)
from tests.conftest import sample_config

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
CALIBRATION_END = dt.date(1997, 9, 30)
OBSERVATION_END = dt.date(1998, 6, 30)


@pytest.fixture(scope="module")
def bgnbd(cdnow_sample_calibration_features):
    return BetaGeoModel().fit(cdnow_sample_calibration_features)


@pytest.fixture(scope="module")
def daily_repeat_purchases():
    return features_from_config(sample_config()).repeat_purchases.to_pandas()


def assert_png(path, min_bytes=10_000):
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    assert len(data) > min_bytes
    height, width = mpimg.imread(path).shape[:2]
    assert width >= 600 and height >= 400
    assert [p.name for p in path.parent.iterdir() if p.name.endswith(".tmp")] == []


def bgnbd_expected_purchases_new_customer(params, t):
    """FHL (2005) eq. 9, written out here independently of models/."""
    r, alpha, a, b = params["r"], params["alpha"], params["a"], params["b"]
    t = np.asarray(t, dtype=np.float64)
    return (a + b - 1) / (a - 1) * (1 - (alpha / (alpha + t)) ** r * hyp2f1(r, b, a + b - 1, t / (alpha + t)))


def bgnbd_probability_alive(params, frequency, recency, T):
    """FHL (2005) P(alive | x, t_x, T) (Fader, Hardie & Lee, "Computing P(alive) using the BG/NBD model")."""
    r, alpha, a, b = params["r"], params["alpha"], params["a"], params["b"]
    frequency = np.asarray(frequency, dtype=np.float64)
    odds_dead = np.where(
        frequency > 0,
        a / np.maximum(b + frequency - 1, 1e-12) * ((alpha + T) / (alpha + recency)) ** (r + frequency),
        0.0,
    )
    return 1.0 / (1.0 + odds_dead)


# --- calibration vs holdout -------------------------------------------------------------


def test_calibration_vs_holdout_means_equal_a_groupby(cdnow_sample_calibration_features, bgnbd):
    calibration = cdnow_sample_calibration_features
    predicted = bgnbd.expected_purchases(calibration, 39.0)
    data = calibration_vs_holdout_data(calibration, predicted.sample(frac=1.0, random_state=1))

    reference = pd.DataFrame(
        {
            "bin": calibration["frequency"].clip(upper=7),
            "actual": calibration["frequency_holdout"],
            "predicted": predicted,
        }
    ).groupby("bin")
    assert list(data.index) == ["0", "1", "2", "3", "4", "5", "6", "7+"]
    np.testing.assert_array_equal(data["customers"], reference.size().to_numpy())
    np.testing.assert_allclose(data["actual_holdout_purchases"], reference["actual"].mean(), rtol=1e-12)
    np.testing.assert_allclose(data["predicted_holdout_purchases"], reference["predicted"].mean(), rtol=1e-12)
    assert data["customers"].sum() == 2357
    # FHL (2005) Fig. 4: the 1,411 customers with no repeat purchase in weeks 1-39.
    assert data.loc["0", "customers"] == 1411


def test_calibration_vs_holdout_keeps_empty_bins_and_rejects_missing_predictions():
    calibration = pd.DataFrame(
        {"frequency": [0, 0, 5, 9], "frequency_holdout": [0, 2, 3, 7]}, index=["a", "b", "c", "d"]
    )
    predicted = pd.Series([0.5, 0.5, 2.0, 6.0], index=["a", "b", "c", "d"])
    data = calibration_vs_holdout_data(calibration, predicted, max_frequency=3)
    assert list(data.index) == ["0", "1", "2", "3+"]
    assert list(data["customers"]) == [2, 0, 0, 2]
    assert data.loc["0", "actual_holdout_purchases"] == 1.0
    assert data.loc["3+", "actual_holdout_purchases"] == 5.0
    assert data.loc["3+", "predicted_holdout_purchases"] == 4.0
    assert np.isnan(data.loc["1", "actual_holdout_purchases"])
    with pytest.raises(ValueError, match="no value for 1 of 4 customers"):
        calibration_vs_holdout_data(calibration, predicted.drop("c"))


# --- cumulative tracking ----------------------------------------------------------------


@pytest.fixture(scope="module")
def tracking(daily_repeat_purchases, cdnow_sample_full_features, bgnbd):
    return cumulative_tracking_data(
        daily_repeat_purchases, cdnow_sample_full_features["first_purchase_date"], bgnbd, 7.0, OBSERVATION_END
    )


def test_tracking_grid_is_weekly_from_the_first_purchase_and_ends_at_observation_end(tracking):
    dates = pd.to_datetime(tracking["date"])
    assert tracking["date"].iloc[0] == dt.date(1997, 1, 1)
    assert tracking["date"].iloc[-1] == OBSERVATION_END
    assert set(dates.diff().dt.days.iloc[1:-1]) == {7}
    assert tracking["periods_since_start"].iloc[-1] == pytest.approx(545 / 7)
    assert tracking["periods_since_start"].iloc[39] == 39.0


def test_tracking_actual_equals_cumulative_repeat_purchases_from_the_raw_log(
    tracking, cdnow_sample_transactions, cdnow_sample_full_features
):
    # Independent of the features stage: distinct purchase days per customer, first day dropped.
    days = cdnow_sample_transactions[["customer_id", "date"]].drop_duplicates()
    first = days.groupby("customer_id")["date"].transform("min")
    repeat_days = np.sort(days.loc[days["date"] > first, "date"].to_numpy())
    expected = np.searchsorted(repeat_days, pd.to_datetime(tracking["date"]).to_numpy(), side="right")
    np.testing.assert_array_equal(tracking["actual_cumulative"], expected)
    assert tracking["actual_cumulative"].iloc[-1] == cdnow_sample_full_features["frequency"].sum() == 4339


def test_tracking_prediction_equals_per_customer_sum_of_fhl_eq_9(tracking, cdnow_sample_full_features, bgnbd):
    first = pd.to_datetime(cdnow_sample_full_features["first_purchase_date"]).to_numpy()
    grid = pd.to_datetime(tracking["date"]).to_numpy()
    ages = np.clip((grid[:, None] - first[None, :]) / np.timedelta64(1, "D"), 0, None) / 7.0
    expected = bgnbd_expected_purchases_new_customer(bgnbd.params_, ages).sum(axis=1)
    np.testing.assert_allclose(tracking["predicted_cumulative"], expected, rtol=1e-8, atol=1e-8)


def test_bgnbd_tracks_cdnow_within_five_percent(
    tracking, daily_repeat_purchases, cdnow_sample_full_features, bgnbd
):
    to_calibration_end = cumulative_tracking_data(
        daily_repeat_purchases, cdnow_sample_full_features["first_purchase_date"], bgnbd, 7.0, CALIBRATION_END
    )
    at_calibration_end = to_calibration_end.iloc[-1]
    assert at_calibration_end["date"] == CALIBRATION_END
    # Repeat purchases in weeks 1-39 are the calibration frequencies: 2,457.
    assert at_calibration_end["actual_cumulative"] == 2457
    assert at_calibration_end["predicted_cumulative"] == pytest.approx(2457, rel=0.05)
    at_end = tracking.iloc[-1]
    assert at_end["predicted_cumulative"] == pytest.approx(at_end["actual_cumulative"], rel=0.05)
    # The last whole week on the grid (week 77, 1998-06-24); FHL (2005) Fig. 2 runs to week 78.
    week_77 = tracking.loc[tracking["periods_since_start"] == 77.0].iloc[0]
    assert week_77["predicted_cumulative"] == pytest.approx(week_77["actual_cumulative"], rel=0.05)


def test_tracking_counts_no_purchases_before_a_cohort_arrives():
    class LinearModel:
        def expected_purchases_new_customer(self, ages):
            return np.asarray(ages, dtype=np.float64)  # one repeat purchase per period of age

    first = pd.Series([dt.date(2024, 1, 1), dt.date(2024, 1, 15), dt.date(2024, 1, 15)])
    repeats = pd.DataFrame({"date": [dt.date(2024, 1, 10), dt.date(2024, 1, 20)], "repeat_purchases": [2, 5]})
    data = cumulative_tracking_data(repeats, first, LinearModel(), 7.0, dt.date(2024, 1, 24))
    assert list(data["date"]) == [dt.date(2024, 1, d) for d in (1, 8, 15, 22, 24)]
    assert list(data["actual_cumulative"]) == [0, 0, 2, 7, 7]
    # Ages in weeks: first cohort 0, 1, 2, 3, 23/7; the two-customer cohort 0, 0, 0, 1, 9/7.
    np.testing.assert_allclose(data["predicted_cumulative"], [0, 1, 2, 3 + 2, 23 / 7 + 2 * 9 / 7])


# --- probability alive ------------------------------------------------------------------


def test_probability_alive_matrix_equals_fhl_closed_form_and_masks_impossible_histories(bgnbd):
    data = probability_alive_matrix_data(bgnbd, max_frequency=10, max_recency=50.0, T=39.0, steps=26)
    assert data.shape == (11, 26)
    assert list(data.index) == list(range(11))
    np.testing.assert_allclose(data.columns, np.linspace(0, 50, 26))
    assert data.attrs["T"] == 39.0

    frequency, recency = np.meshgrid(data.index, data.columns, indexing="ij")
    impossible = (recency > 39.0) | ((frequency == 0) & (recency > 0))
    values = data.to_numpy()
    np.testing.assert_array_equal(np.isnan(values), impossible)
    expected = bgnbd_probability_alive(bgnbd.params_, frequency, recency, 39.0)
    np.testing.assert_allclose(values[~impossible], expected[~impossible], rtol=1e-8)
    assert data.loc[0, 0.0] == 1.0  # BG/NBD: no repeat purchase means no chance to drop out yet


def test_probability_alive_matrix_equals_model_on_a_constructed_frame(bgnbd):
    data = probability_alive_matrix_data(bgnbd, max_frequency=4, max_recency=30.0, T=30.0, steps=7)
    histories = pd.DataFrame({"frequency": [1, 3, 4], "recency": [5.0, 20.0, 30.0], "T": [30.0] * 3})
    expected = bgnbd.probability_alive(histories).to_numpy()
    np.testing.assert_allclose([data.loc[1, 5.0], data.loc[3, 20.0], data.loc[4, 30.0]], expected, rtol=1e-12)


# --- PNGs -------------------------------------------------------------------------------


def test_every_plot_writes_a_png_without_leaking_pyplot_figures(
    tmp_path, cdnow_sample_calibration_features, tracking, bgnbd
):
    import matplotlib.pyplot as plt

    before = plt.get_fignums()
    calibration = cdnow_sample_calibration_features
    predicted = bgnbd.expected_purchases(calibration, 39.0)
    rng = np.random.default_rng(0)
    clv = pd.Series(rng.lognormal(3.0, 1.5, 2357), index=calibration.index)
    clv.iloc[:5] = np.nan
    cuts = {"low": 0.0, "medium": float(clv.quantile(0.5)), "high": float(clv.quantile(0.9))}
    tier_summary = pd.DataFrame(
        {
            "customers": [1200, 900, 257],
            "mean_predicted_clv": [8.0, 40.0, 300.0],
            "mean_historical_clv": [10.0, 35.0, 250.0],
        },
        index=pd.Index(["low", "medium", "high"], name="tier"),
    )

    written = [
        plot_calibration_vs_holdout(
            calibration_vs_holdout_data(calibration, predicted), tmp_path / "calibration_vs_holdout.png", "BG/NBD"
        ),
        plot_cumulative_tracking(tracking, tmp_path / "tracking.png", CALIBRATION_END, "BG/NBD"),
        plot_probability_alive_matrix(
            probability_alive_matrix_data(bgnbd, 30, 39.0, 39.0), tmp_path / "nested" / "p_alive.png", "BG/NBD"
        ),
        plot_clv_distribution(clv, cuts, tmp_path / "clv_distribution.png"),
        plot_clv_by_tier(tier_summary, tmp_path / "clv_by_tier.png"),
    ]
    for path in written:
        assert path.is_file()
        assert_png(path)
    assert plt.get_fignums() == before


def test_clv_distribution_handles_a_cut_above_the_clip_and_rejects_no_data(tmp_path):
    clv = pd.Series(np.arange(1000, dtype=np.float64))
    path = plot_clv_distribution(clv, {"whale": 5000.0}, tmp_path / "clv.png")
    assert_png(path)
    with pytest.raises(ValueError, match="no non-missing values"):
        plot_clv_distribution(pd.Series([np.nan]), {}, tmp_path / "empty.png")
