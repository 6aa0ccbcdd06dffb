"""Features must equal lifetimes' own helpers exactly (they are the published definitions)."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lifetimes.utils import calibration_and_holdout_data, summary_data_from_transaction_data

from pipeline.config import ColumnMap, FeatureSettings, InputSettings, PeriodSettings, load_config
from pipeline.duckdb_engine import compute_features
from pipeline.errors import InputDataError
from tests.conftest import CONFIGS, sample_config

FRAME_INPUT = InputSettings(
    path="dataframe", columns=ColumnMap(customer_id="customer_id", date="date", amount="amount"), date_format=None
)
PERIODS = {
    ("D", 1.0): PeriodSettings(unit="day", resolution="daily"),
    ("D", 7.0): PeriodSettings(unit="week", resolution="daily"),
    ("W", 1.0): PeriodSettings(unit="week", resolution="calendar"),
}


def assert_same_summary(ours: pd.DataFrame, reference: pd.DataFrame) -> None:
    assert sorted(ours.index) == sorted(reference.index)
    reference = reference.loc[ours.index]
    np.testing.assert_array_equal(ours["frequency"].to_numpy(), reference["frequency"].to_numpy())
    np.testing.assert_array_equal(ours["recency"].to_numpy(), reference["recency"].to_numpy())
    np.testing.assert_array_equal(ours["T"].to_numpy(), reference["T"].to_numpy())
    np.testing.assert_allclose(ours["monetary_value"], reference["monetary_value"], rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("freq, multiplier", list(PERIODS))
def test_cdnow_sample_equals_lifetimes_summary(cdnow_sample_transactions, freq, multiplier):
    period = PERIODS[(freq, multiplier)]
    ours = compute_features(
        cdnow_sample_transactions, FRAME_INPUT, FeatureSettings(period=period)
    ).features_frame()
    reference = summary_data_from_transaction_data(
        cdnow_sample_transactions, "customer_id", "date", monetary_value_col="amount",
        freq=freq, freq_multiplier=multiplier,
    )
    assert len(ours) == 2357
    assert_same_summary(ours, reference)


def test_text_file_and_dataframe_give_the_same_features(cdnow_sample_transactions, cdnow_sample_full_features):
    from_frame = compute_features(cdnow_sample_transactions, FRAME_INPUT, FeatureSettings()).features_frame()
    pd.testing.assert_frame_equal(
        from_frame[["frequency", "recency", "T", "monetary_value", "n_transactions"]],
        cdnow_sample_full_features[["frequency", "recency", "T", "monetary_value", "n_transactions"]],
    )


@pytest.mark.parametrize("freq, multiplier", [("D", 7.0), ("W", 1.0)])
def test_calibration_holdout_equals_lifetimes(cdnow_sample_transactions, freq, multiplier):
    settings = FeatureSettings(period=PERIODS[(freq, multiplier)], calibration_end=dt.date(1997, 9, 30))
    ours = compute_features(cdnow_sample_transactions, FRAME_INPUT, settings).calibration_frame()
    # lifetimes' helper only works on pandas 3 when given a monetary column.
    reference = calibration_and_holdout_data(
        cdnow_sample_transactions, "customer_id", "date",
        calibration_period_end="1997-09-30", observation_period_end="1998-06-30",
        freq=freq, freq_multiplier=multiplier, monetary_value_col="amount",
    ).loc[ours.index]
    for column in ["frequency", "recency", "T"]:
        np.testing.assert_array_equal(ours[column].to_numpy(), reference[f"{column}_cal"].to_numpy())
    np.testing.assert_allclose(ours["monetary_value"], reference["monetary_value_cal"], rtol=1e-9, atol=1e-9)
    np.testing.assert_array_equal(ours["frequency_holdout"].to_numpy(), reference["frequency_holdout"].to_numpy())
    np.testing.assert_allclose(
        ours["monetary_value_holdout"], reference["monetary_value_holdout"], rtol=1e-9, atol=1e-9
    )
    np.testing.assert_array_equal(ours["duration_holdout"].to_numpy(), reference["duration_holdout"].to_numpy())


def test_published_sample_split_sizes(cdnow_sample_calibration_features):
    features = cdnow_sample_calibration_features
    # Fader, Hardie & Lee (2005): 2,357 customers, 946 of whom repeat in the 39-week calibration.
    assert len(features) == 2357
    assert int((features["frequency"] > 0).sum()) == 946
    assert features["duration_holdout"].unique().tolist() == [39.0]
    # First-day buyers (1997-01-01) are 272 days = 38.86 weeks old at 1997-09-30.
    assert features["T"].max() == pytest.approx(272 / 7)


def test_holdout_revenue_is_all_holdout_spend(cdnow_sample_transactions, cdnow_sample_calibration_features):
    holdout = cdnow_sample_transactions[
        (cdnow_sample_transactions["date"] > "1997-09-30")
        & cdnow_sample_transactions["customer_id"].isin(cdnow_sample_calibration_features.index)
    ]
    assert cdnow_sample_calibration_features["revenue_holdout"].sum() == pytest.approx(holdout["amount"].sum())


def test_holdout_periods_sets_the_calibration_end(cdnow_sample_transactions):
    settings = FeatureSettings(holdout_periods=39)
    result = compute_features(cdnow_sample_transactions, FRAME_INPUT, settings)
    assert result.calibration_end == dt.date(1998, 6, 30) - dt.timedelta(days=273)


def test_rows_after_observation_end_are_ignored(cdnow_sample_transactions):
    end = dt.date(1997, 6, 30)
    result = compute_features(cdnow_sample_transactions, FRAME_INPUT, FeatureSettings(observation_end=end))
    kept = cdnow_sample_transactions[cdnow_sample_transactions["date"] <= "1997-06-30"]
    assert result.log.rows_used == len(kept)
    assert result.log.rows_after_observation_end == len(cdnow_sample_transactions) - len(kept)
    assert result.features.num_rows == kept["customer_id"].nunique()


def test_margin_and_channel_columns(cdnow_sample_transactions):
    log = cdnow_sample_transactions.assign(
        cost=cdnow_sample_transactions["amount"] * 0.6,
        channel=np.where(cdnow_sample_transactions["quantity"] > 1, "web", "store"),
        cac=np.where(cdnow_sample_transactions["quantity"] > 1, 12.0, 8.0),
    )
    columns = ColumnMap(
        customer_id="customer_id", date="date", amount="amount", cost="cost", channel="channel", acquisition_cost="cac"
    )
    settings = FRAME_INPUT.model_copy(update={"columns": columns})
    features = compute_features(log, settings, FeatureSettings()).features_frame()
    np.testing.assert_allclose(features["total_margin"], features["total_amount"] * 0.4, rtol=1e-9)
    first = log.sort_values(["customer_id", "date", "channel"]).groupby("customer_id")["channel"].first()
    assert (features["first_channel"] == first.loc[features.index]).all()
    largest_cac = log.groupby("customer_id")["cac"].max()
    np.testing.assert_array_equal(features["acquisition_cost"], largest_cac.loc[features.index])


def test_calibration_end_outside_data_is_an_input_error(cdnow_sample_transactions):
    with pytest.raises(InputDataError, match="calibration_end 1996-01-01 is outside the data"):
        compute_features(
            cdnow_sample_transactions, FRAME_INPUT, FeatureSettings(calibration_end=dt.date(1996, 1, 1))
        )


def test_config_runs_the_sample_file(cdnow_sample_calibration_features):
    # The sample file ships without a header; its first customer buys on 1997-01-01, 01-18, 08-02.
    first = cdnow_sample_calibration_features.loc["00004"]
    assert first["frequency"] == 2
    assert first["recency"] == pytest.approx(213 / 7)
    assert sample_config().features.period.lifetimes_freq == ("D", 7.0)


@st.composite
def transaction_logs(draw):
    customers = draw(st.integers(min_value=1, max_value=25))
    rows = []
    for customer in range(customers):
        purchases = draw(st.integers(min_value=1, max_value=8))
        days = draw(st.lists(st.integers(min_value=0, max_value=120), min_size=purchases, max_size=purchases))
        for day in days:
            cents = draw(st.integers(min_value=0, max_value=50_000))
            rows.append((f"c{customer}", pd.Timestamp("2024-01-01") + pd.Timedelta(days=day), cents / 100))
            if draw(st.booleans()) and draw(st.booleans()):
                rows.append((f"c{customer}", pd.Timestamp("2024-01-01") + pd.Timedelta(days=day), 1.5))
    return pd.DataFrame(rows, columns=["customer_id", "date", "amount"])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    log=transaction_logs(),
    period_key=st.sampled_from(list(PERIODS)),
    end_offset=st.integers(min_value=0, max_value=30),
)
def test_random_logs_equal_lifetimes(log, period_key, end_offset):
    freq, multiplier = period_key
    observation_end = log["date"].max() + pd.Timedelta(days=end_offset)
    ours = compute_features(
        log, FRAME_INPUT, FeatureSettings(period=PERIODS[period_key], observation_end=observation_end.date())
    ).features_frame()
    reference = summary_data_from_transaction_data(
        log, "customer_id", "date", monetary_value_col="amount",
        observation_period_end=observation_end, freq=freq, freq_multiplier=multiplier,
    )
    assert_same_summary(ours, reference)


def test_daily_repeat_purchases_add_up_to_frequency(cdnow_sample_transactions):
    result = compute_features(cdnow_sample_transactions, FRAME_INPUT, FeatureSettings())
    daily = result.repeat_purchases.to_pandas()
    assert daily["repeat_purchases"].sum() == result.features_frame()["frequency"].sum()
    # The first repeat purchase cannot precede the second day of the log.
    assert daily["date"].min() > dt.date(1997, 1, 1)


def test_features_do_not_depend_on_thread_count():
    # Reproducibility: same data + config give bit-identical features however DuckDB schedules work.
    config = load_config(CONFIGS / "default.yaml")
    one = compute_features(config.input.path, config.input, config.features, threads=1)
    two = compute_features(config.input.path, config.input, config.features, threads=2)
    assert one.features.equals(two.features)
    assert one.calibration.equals(two.calibration)
