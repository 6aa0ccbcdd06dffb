"""The numpy reductions over a sorted log: the paths the lifetimes comparisons do not reach."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from pipeline.config import ColumnMap, FeatureSettings, InputSettings, PeriodSettings
from pipeline.duckdb_engine import compute_features
from pipeline.errors import InputDataError
from pipeline.stages.sorted_log import MICRO_UNITS, day_number, period_index, summarize_sorted_log

FRAME_INPUT = InputSettings(
    path="dataframe", columns=ColumnMap(customer_id="customer_id", date="date", amount="amount"), date_format=None
)


def test_integer_and_text_customer_ids_give_the_same_features(cdnow_sample_transactions):
    numbered = cdnow_sample_transactions.assign(customer_id=cdnow_sample_transactions["customer_id"].astype(int))
    settings = FeatureSettings(calibration_end=dt.date(1997, 9, 30))
    by_text = compute_features(cdnow_sample_transactions, FRAME_INPUT, settings)
    by_number = compute_features(numbered, FRAME_INPUT, settings)
    assert pa.types.is_integer(by_number.features["customer_id"].type)
    for name in ("features", "calibration", "repeat_purchases"):
        text_table, number_table = getattr(by_text, name), getattr(by_number, name)
        assert text_table.drop_columns([c for c in ["customer_id"] if c in text_table.column_names]).equals(
            number_table.drop_columns([c for c in ["customer_id"] if c in number_table.column_names])
        )


def test_periods_are_calendar_weeks_from_monday_and_calendar_months():
    days = np.array([day_number(dt.date(2024, 1, d)) for d in (7, 8, 14, 15, 31)])
    weeks = period_index(days, PeriodSettings(unit="week", resolution="calendar"))
    # 2024-01-07 is a Sunday: the 8th starts a new week, which runs to the 14th.
    assert np.diff(weeks).tolist() == [1, 0, 1, 2]
    months = period_index(days, PeriodSettings(unit="month", resolution="calendar"))
    assert np.diff(months).tolist() == [0, 0, 0, 0]
    assert period_index(np.array([day_number(dt.date(2024, 2, 1))]), PeriodSettings(unit="month", resolution="calendar"))[0] == months[0] + 1


def _sorted_log(rows: list[tuple[str, dt.date, int]]) -> pa.Table:
    frame = pd.DataFrame(rows, columns=["customer_id", "order_date", "amount_micro"])
    return pa.Table.from_pandas(frame, preserve_index=False).cast(
        pa.schema([("customer_id", pa.string()), ("order_date", pa.date32()), ("amount_micro", pa.int64())])
    )


def test_a_customer_whose_totals_could_overflow_is_refused():
    huge = 999_999_999_999 * MICRO_UNITS
    rows = [("a", dt.date(2024, 1, d), huge) for d in range(1, 12)]
    with pytest.raises(InputDataError, match="a customer has 11 transactions and amounts reach 999,999,999,999"):
        summarize_sorted_log(_sorted_log(rows), PeriodSettings(), dt.date(2024, 2, 1))


def test_same_day_rows_form_one_period_and_holdout_counts_its_own_periods():
    rows = [
        ("a", dt.date(2024, 1, 1), 10 * MICRO_UNITS),
        ("a", dt.date(2024, 1, 1), 5 * MICRO_UNITS),
        ("a", dt.date(2024, 1, 8), 7 * MICRO_UNITS),
        ("a", dt.date(2024, 1, 20), 3 * MICRO_UNITS),
        ("b", dt.date(2024, 1, 10), 4 * MICRO_UNITS),
    ]
    period = PeriodSettings(unit="day", resolution="daily")
    features, calibration, per_day = summarize_sorted_log(_sorted_log(rows), period, dt.date(2024, 1, 31), dt.date(2024, 1, 9))
    full = features.to_pandas().set_index("customer_id")
    assert full.loc["a", ["frequency", "recency", "T", "monetary_value", "n_transactions", "total_amount"]].tolist() == [
        2, 19.0, 30.0, 5.0, 4, 25.0
    ]
    assert full.loc["b", ["frequency", "monetary_value"]].tolist() == [0, 0.0]
    # Only a bought by the calibration end; b starts in the holdout.
    split = calibration.to_pandas().set_index("customer_id")
    assert split.index.tolist() == ["a"]
    assert split.loc["a", ["frequency", "recency", "T", "monetary_value"]].tolist() == [1, 7.0, 8.0, 7.0]
    assert split.loc["a", ["frequency_holdout", "revenue_holdout", "monetary_value_holdout", "duration_holdout"]].tolist() == [
        1, 3.0, 3.0, 22.0
    ]
    assert per_day.to_pydict() == {"date": [dt.date(2024, 1, 8), dt.date(2024, 1, 20)], "repeat_purchases": [1, 1]}


def test_chunks_of_a_few_rows_give_the_same_tables_as_one_chunk(cdnow_sample_transactions):
    from pipeline.config import ValidationSettings
    from pipeline.duckdb_engine import fetch_sorted_log
    from pipeline.io import connect
    from pipeline.transactions import load_transactions

    log = cdnow_sample_transactions.assign(
        cost=cdnow_sample_transactions["amount"] * 0.6,
        channel=np.where(cdnow_sample_transactions["quantity"] > 1, "web", None),
        cac=np.where(cdnow_sample_transactions["quantity"] > 2, 12.0, np.nan),
    )
    columns = ColumnMap(
        customer_id="customer_id", date="date", amount="amount", cost="cost", channel="channel", acquisition_cost="cac"
    )
    con = connect()
    summary = load_transactions(con, log, FRAME_INPUT.model_copy(update={"columns": columns}), ValidationSettings())
    sorted_log = fetch_sorted_log(con, summary).combine_chunks()
    con.close()
    period = PeriodSettings(unit="week", resolution="calendar")
    # Calibration ends early, so some customers have not bought yet and the split drops them.
    args = (period, summary.observation_end, dt.date(1997, 2, 15))
    whole = summarize_sorted_log(sorted_log, *args)
    chunked = summarize_sorted_log(sorted_log, *args, chunk_rows=7)
    assert whole[1].num_rows < whole[0].num_rows
    assert whole[0]["first_channel"].null_count and whole[0]["acquisition_cost"].null_count
    for one, many in zip(whole, chunked):
        assert one.equals(many)

    # Streamed a chunk at a time to a sink, the calibration table is the same rows in the same order.
    parts: list = []
    streamed = summarize_sorted_log(sorted_log, *args, chunk_rows=7, calibration_sink=parts.append)
    assert streamed[1] is None and len(parts) > 1
    assert pa.concat_tables(parts).equals(whole[1])
    assert streamed[0].equals(whole[0]) and streamed[2].equals(whole[2])
