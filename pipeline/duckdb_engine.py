"""The DuckDB engine (``engine: duckdb``, the default): the log read and validated in DuckDB
(``pipeline/transactions.py``), sorted by customer and date there (DuckDB spills to disk when
memory runs short) and handed to the pure features stage (``pipeline/stages/features.py``)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd
import pyarrow as pa

from pipeline.config import Config, FeatureSettings, InputSettings, ValidationSettings
from pipeline.io import connect, fetch_arrow
from pipeline.stages.features import FeaturesResult, features_of_sorted_log, resolve_calibration_end
from pipeline.stages.sorted_log import MICRO_UNITS
from pipeline.transactions import TRANSACTIONS_VIEW, LogSummary, load_transactions

# Amounts are summed as fixed-point decimals of this type (1e-6 resolution), as integer
# micro-units: exact, so a rerun or another engine cannot differ in the last bits.
EXACT = "DECIMAL(18, 6)"


def _date_literal(value: dt.date) -> str:
    return f"DATE '{value.isoformat()}'"


def sorted_log_sql(
    observation_end: dt.date,
    with_margin: bool = False,
    with_channel: bool = False,
    with_acquisition_cost: bool = False,
    source: str = TRANSACTIONS_VIEW,
) -> str:
    """SQL of the log up to ``observation_end`` sorted by customer and date, what
    :func:`pipeline.stages.sorted_log.summarize_sorted_log` reads.

    Amounts (and margins) become integer micro-units of :data:`EXACT`. Within a day rows sort
    by channel, missing ones last, so the first row with a channel is the first purchase's, then
    by every other column, so that exact duplicates are adjacent (the data-quality counts).
    """
    columns = ["customer_id", "order_date", f"CAST(CAST(amount AS {EXACT}) * {MICRO_UNITS} AS BIGINT) AS amount_micro"]
    order = ["customer_id", "order_date"]
    if with_margin:
        columns.append(f"CAST(CAST(margin AS {EXACT}) * {MICRO_UNITS} AS BIGINT) AS margin_micro")
    if with_channel:
        columns.append("channel")
        order.append("channel NULLS LAST")
    if with_acquisition_cost:
        columns.append("acquisition_cost")
    order += [name.rsplit(" AS ", 1)[-1] for name in columns[2:] if name != "channel"]
    return (
        f"SELECT {', '.join(columns)} FROM {source} "
        f"WHERE order_date <= {_date_literal(observation_end)} ORDER BY {', '.join(order)}"
    )


def fetch_sorted_log(con: duckdb.DuckDBPyConnection, log: LogSummary) -> pa.Table:
    """The validated ``transactions`` view sorted by customer and date (see :func:`sorted_log_sql`)."""
    sql = sorted_log_sql(
        log.observation_end, with_margin=log.has_margin, with_channel=log.has_channel,
        with_acquisition_cost=log.has_acquisition_cost,
    )
    return fetch_arrow(con, sql)


def compute_features(
    transactions: str | Path | pd.DataFrame,
    input_settings: InputSettings,
    settings: FeatureSettings,
    validation: ValidationSettings | None = None,
    threads: int | None = None,
    calibration_writer: Any = None,
    holdout_purchases: bool = False,
) -> FeaturesResult:
    """Features of a log given as a path (CSV/Parquet/text) or a DataFrame: the Python API.

    ``calibration_writer``: an open writer the calibration features go to instead of the
    result (see :func:`pipeline.stages.features.features_of_sorted_log`).
    ``holdout_purchases``: count the holdout purchases per day too (see
    :func:`pipeline.stages.sorted_log.summarize_sorted_log`).
    """
    validation = validation or ValidationSettings()
    con = connect(threads=threads)
    try:
        log = load_transactions(con, transactions, input_settings, validation, settings.observation_end)
        calibration_end = resolve_calibration_end(
            settings, log.first_date, log.observation_end, validation.max_holdout_share
        )
        sorted_log = fetch_sorted_log(con, log)
    finally:
        # DuckDB keeps the sort's memory (1.7 GB at 50M rows) until its connection closes.
        con.close()
    # One chunk per column, so the numpy views need no copy; the chunked result is freed here.
    sorted_log = sorted_log.combine_chunks()
    return features_of_sorted_log(
        sorted_log, log, settings.period, calibration_end, calibration_writer, holdout_purchases=holdout_purchases
    )


def sorted_log_from_config(
    config: Config, source: str | Path | pd.DataFrame | None = None, before_sort: Any = None, threads: int | None = None,
) -> tuple[pa.Table, LogSummary]:
    """A config's log (or ``source``) validated and sorted by customer and date, with its
    summary: read once for several feature tables (``clv backtest``'s origins; see
    :func:`pipeline.stages.features.log_up_to`). ``before_sort(log)`` runs on the summary
    before the sort, so a setting the data cannot satisfy fails before that work."""
    con = connect(threads=threads)
    try:
        log = load_transactions(con, source if source is not None else config.input.path, config.input,
                                config.validation, config.features.observation_end)
        if before_sort is not None:
            before_sort(log)
        sorted_log = fetch_sorted_log(con, log)
    finally:
        con.close()  # see compute_features
    return sorted_log.combine_chunks(), log


def features_from_config(
    config: Config, source: str | Path | pd.DataFrame | None = None, calibration_writer: Any = None,
) -> FeaturesResult:
    """Features for a whole config (its input unless ``source`` is given)."""
    return compute_features(
        source if source is not None else config.input.path,
        config.input,
        config.features,
        config.validation,
        calibration_writer=calibration_writer,
    )
