"""The validated, typed transaction log every stage reads: the input boundary.

``load_transactions`` turns whatever the user's file holds into the DuckDB view
``transactions(customer_id, order_date DATE, amount DOUBLE, margin DOUBLE, channel VARCHAR,
acquisition_cost DOUBLE)``
or raises :class:`InputDataError` with one line naming the file, column and first bad row.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import warnings
from collections.abc import Callable
from pathlib import Path

import duckdb
import pandas as pd

from pipeline.config import InputSettings, ValidationSettings
from pipeline.errors import DataQualityWarning, InputDataError
from pipeline.input_rules import (
    MARGIN_ABOVE_AMOUNT,
    Check,
    RuleContext,
    after_observation_end_check,
    checks,
    configured_columns,
    dated_after,
    literal,
)
from pipeline.io import RAW_VIEW, duckdb_identifier, first_line, register_transactions

TYPED_VIEW = "typed_transactions"
TYPED_ROWS = "typed_transaction_rows"
TRANSACTIONS_VIEW = "transactions"

TEMPORAL_TYPES = ("DATE", "TIMESTAMP")
_NUMERIC_TYPES = ("DOUBLE", "FLOAT", "DECIMAL", "INTEGER", "BIGINT", "SMALLINT", "TINYINT", "HUGEINT",
                  "UBIGINT", "UINTEGER", "USMALLINT", "UTINYINT", "REAL")


@dataclasses.dataclass(frozen=True)
class LogSummary:
    """What was read: used in run summaries, data fingerprints and messages."""

    source: str
    rows_read: int
    rows_used: int
    customers: int | None  # known once the features are computed (counting here costs a pass)
    first_date: dt.date
    last_date: dt.date
    observation_end: dt.date
    negative_amount_rows_dropped: int
    rows_after_observation_end: int
    has_margin: bool
    has_channel: bool
    has_acquisition_cost: bool
    future_rows_dropped: int = 0
    margin_above_amount_rows: int = 0


@dataclasses.dataclass(frozen=True)
class ValidationCounts:
    """What one aggregation over the typed log counts, on either engine, for :func:`summarize_counts`."""

    rows: int
    failing: list[int]  # rows failing each input rule, in the order of ``input_rules.checks``
    future: int  # dated after the latest possible date
    first_date: dt.date | None  # of the rows not in the future
    last_present_date: dt.date | None
    after_end: int  # not in the future but after the observation end
    negative: int  # in the window with a negative amount
    last_date: dt.date | None  # in the window
    margin_above: int


def summarize_counts(
    label: str,
    counts: ValidationCounts,
    rules: list[Check],
    row_error: Callable[[Check, int], str],
    settings: InputSettings,
    validation: ValidationSettings,
    observation_end: dt.date | None,
    latest: dt.date,
    has_margin: bool,
) -> LogSummary:
    """The log's summary from its :class:`ValidationCounts`, or the first problem as one line:
    the decisions both engines take on what their validation pass counted (``row_error``
    describes a failing rule's first row, which only the engine can look up)."""
    if counts.rows == 0:
        raise InputDataError(f"{label}: the log has no rows")
    for check, bad_count in zip(rules, counts.failing):
        if bad_count:
            raise InputDataError(row_error(check, bad_count))
    if counts.first_date is None or counts.last_present_date is None:
        raise InputDataError(f"{label}: every row is dated in the future (after {latest}): no usable rows")
    if observation_end is None:
        observation_end = counts.last_present_date
    if counts.margin_above:
        warn_margin_above_amount(label, counts.margin_above, bool(settings.columns.cost))
    if observation_end < counts.first_date:
        raise InputDataError(
            f"{label}: observation end (as-of date) {observation_end} is before the first transaction "
            f"({counts.first_date})"
        )
    if counts.after_end and validation.rows_after_observation_end == "fail":
        raise InputDataError(row_error(after_observation_end_check(settings, observation_end), counts.after_end))
    drop_negative = validation.negative_amounts == "drop"
    used = counts.rows - counts.future - counts.after_end - (counts.negative if drop_negative else 0)
    if counts.last_date is None or used == 0:
        raise InputDataError(f"{label}: no usable rows on or before observation_end {observation_end}")
    check_freshness(label, counts.last_date, observation_end, validation)
    mapping = settings.columns
    return LogSummary(
        source=label,
        rows_read=counts.rows,
        rows_used=used,
        # Counted with the features: a distinct count here costs a pass over the log.
        customers=None,
        first_date=counts.first_date,
        last_date=counts.last_date,
        observation_end=observation_end,
        negative_amount_rows_dropped=counts.negative if drop_negative else 0,
        rows_after_observation_end=counts.after_end,
        has_margin=has_margin,
        has_channel=mapping.channel is not None,
        has_acquisition_cost=mapping.acquisition_cost is not None,
        future_rows_dropped=counts.future,
        margin_above_amount_rows=counts.margin_above,
    )


def today_utc() -> dt.date:
    """Today's date in UTC (a retrain's default as-of date)."""
    return dt.datetime.now(dt.timezone.utc).date()


def latest_possible_date() -> dt.date:
    """The latest date a real transaction can carry now: today in the earliest time zone (UTC+14),
    so a shop's local date is never taken for the future, wherever the job runs."""
    return (dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=14)).date()


def warn_margin_above_amount(label: str, rows: int, margin_source_is_cost: bool) -> None:
    what = "a negative cost" if margin_source_is_cost else "a margin above their amount"
    warnings.warn(
        f"{label}: {rows:,} rows have {what}; their margins are used as given "
        "(validation.margin_above_amount: fail stops the run instead)",
        DataQualityWarning, stacklevel=3,
    )


def check_freshness(label: str, last_date: dt.date, as_of: dt.date, validation: ValidationSettings) -> None:
    """Refuse a log whose last transaction is too long before the as-of date.

    Features computed far past the last purchase make every customer look dead (the
    pipeline would predict a CLV of about 0 for everyone and a retrain would register that).
    """
    limit = validation.max_staleness_days
    gap = (as_of - last_date).days
    if limit is not None and gap > limit:
        raise StaleDataError(
            f"{label}: stale data: the last transaction is on {last_date}, {gap:,} days before the as-of date "
            f"{as_of} (validation.max_staleness_days: {limit}); fix the export, set the as-of date to {last_date} "
            "(--as-of, or features.observation_end), or raise validation.max_staleness_days"
        )


class StaleDataError(InputDataError):
    """The log ends too long before the as-of date."""


def _is_text_source(con: duckdb.DuckDBPyConnection) -> bool:
    plan = con.execute(f"SELECT sql FROM duckdb_views() WHERE view_name = '{RAW_VIEW}'").fetchall()
    return bool(plan) and "read_csv" in plan[0][0]


def _column_types(con: duckdb.DuckDBPyConnection) -> dict[str, str]:
    rows = con.execute(f"DESCRIBE {RAW_VIEW}").fetchall()
    return {row[0]: row[1] for row in rows}


def _is(type_name: str, family: tuple[str, ...]) -> bool:
    return type_name.upper().startswith(family)


def date_expression(column: str, type_name: str, date_format: str | None) -> str:
    """SQL reading a log's date column (of DuckDB type ``type_name``) as a DATE: typed dates as
    they are, text with ``date_format`` (NULL where it does not parse)."""
    if _is(type_name, TEMPORAL_TYPES):
        return f"CAST({column} AS DATE)"
    text = f"trim(CAST({column} AS VARCHAR))"
    if date_format:
        fmt = date_format.replace("'", "''")
        return f"CAST(try_strptime({text}, '{fmt}') AS DATE)"
    return f"TRY_CAST({text} AS DATE)"


def _number_expression(column: str, type_name: str) -> str:
    if _is(type_name, _NUMERIC_TYPES):
        return f"CAST({column} AS DOUBLE)"
    return f"TRY_CAST(trim(CAST({column} AS VARCHAR)) AS DOUBLE)"


def load_transactions(
    con: duckdb.DuckDBPyConnection,
    source: str | Path | pd.DataFrame,
    settings: InputSettings,
    validation: ValidationSettings,
    observation_end: dt.date | None = None,
) -> LogSummary:
    """Register, type and validate the log; create the ``transactions`` view of usable rows."""
    label = register_transactions(con, source, settings)
    try:
        types = _column_types(con)
    except duckdb.Error as exc:
        raise InputDataError(f"{label}: cannot read: {first_line(exc)}") from None
    mapping = settings.columns
    for role, name in configured_columns(settings).items():
        if name is not None and name not in types:
            available = ", ".join(c for c in types if c != "__field_count")
            raise InputDataError(
                f"{label}: column '{name}' (input.columns.{role}) not found; the file has: {available}"
            )

    q = duckdb_identifier
    cid, date_col, amount_col = mapping.customer_id, mapping.date, mapping.amount
    customer_expr = q(cid)
    if _is(types[cid], ("VARCHAR",)):
        customer_expr = f"NULLIF(trim({q(cid)}), '')"
    amount_expr = _number_expression(q(amount_col), types[amount_col])
    margin_expr = "NULL::DOUBLE"
    margin_source = None
    if mapping.margin:
        margin_expr = _number_expression(q(mapping.margin), types[mapping.margin])
        margin_source = mapping.margin
    elif mapping.cost:
        margin_expr = f"({amount_expr} - {_number_expression(q(mapping.cost), types[mapping.cost])})"
        margin_source = mapping.cost
    channel_expr = f"CAST({q(mapping.channel)} AS VARCHAR)" if mapping.channel else "NULL::VARCHAR"
    cac_expr = "NULL::DOUBLE"
    if mapping.acquisition_cost:
        cac_expr = _number_expression(q(mapping.acquisition_cost), types[mapping.acquisition_cost])
    field_count = "__field_count" if "__field_count" in types else "NULL::INTEGER"
    con.execute(
        f"""CREATE OR REPLACE TEMP VIEW {TYPED_VIEW} AS SELECT
            {customer_expr} AS customer_id,
            {date_expression(q(date_col), types[date_col], settings.date_format)} AS order_date,
            {amount_expr} AS amount,
            {margin_expr} AS margin,
            {channel_expr} AS channel,
            {cac_expr} AS acquisition_cost,
            CAST({q(date_col)} AS VARCHAR) AS raw_date,
            CAST({q(amount_col)} AS VARCHAR) AS raw_amount,
            {field_count} AS field_count
        FROM {RAW_VIEW}"""
    )

    latest = latest_possible_date()
    data_columns = [c for c in types if c != "__field_count"]
    rules = checks(RuleContext.for_source(settings, validation, latest, data_columns, "__field_count" in types))
    future = dated_after(latest).sql
    margin_above = MARGIN_ABOVE_AMOUNT.sql

    checked = TYPED_VIEW
    if "__field_count" in types or _is_text_source(con):
        # Text is parsed once: the typed rows are kept (DuckDB spills them if memory runs
        # short) and every later pass reads them instead of re-parsing the file. Only the
        # error path goes back to the file, for the raw value and its line number.
        con.execute(
            f"""CREATE OR REPLACE TEMP TABLE {TYPED_ROWS} AS
                SELECT customer_id, order_date, amount, margin, channel, acquisition_cost, field_count
                FROM {TYPED_VIEW}"""
        )
        checked = TYPED_ROWS
    count_columns = ", ".join(f"count(*) FILTER (WHERE {check.duckdb_condition()})" for check in rules)
    # Future rows (when dropped) take no part: not in the dates, the counts or the as-of date.
    present = f"NOT ({future})"
    # Without an as-of date the window ends at the last present date: every present row is in it.
    in_window = present if observation_end is None else f"{present} AND order_date <= {literal(observation_end).sql}"
    try:
        stats = con.execute(
            f"""SELECT count(*), {count_columns},
                   count(*) FILTER (WHERE {future}),
                   min(order_date) FILTER (WHERE {present}),
                   max(order_date) FILTER (WHERE {present}),
                   count(*) FILTER (WHERE {present} AND NOT ({in_window})),
                   count(*) FILTER (WHERE {in_window} AND amount < 0),
                   max(order_date) FILTER (WHERE {in_window}),
                   {f"count(*) FILTER (WHERE {present} AND {margin_above})" if margin_source else "0"}
               FROM {checked}"""
        ).fetchall()[0]
    except duckdb.Error as exc:
        raise InputDataError(f"{label}: cannot read: {first_line(exc)}") from None
    counts = ValidationCounts(stats[0], list(stats[1:1 + len(rules)]), *stats[1 + len(rules):])
    log = summarize_counts(
        label, counts, rules, lambda check, bad_count: _row_error(con, label, settings, check, bad_count),
        settings, validation, observation_end, latest, margin_source is not None,
    )
    drop_negative = " AND amount >= 0" if validation.negative_amounts == "drop" else ""
    con.execute(
        f"""CREATE OR REPLACE TEMP VIEW {TRANSACTIONS_VIEW} AS
            SELECT customer_id, order_date, amount, margin, channel, acquisition_cost
            FROM {checked}
            WHERE order_date <= {literal(log.observation_end).sql} AND {present}{drop_negative}"""
    )
    return log


def _row_error(con, label: str, settings: InputSettings, check: Check, bad_count: int) -> str:
    """Locate the first offending row in file order and describe it in one line."""
    threads = con.execute("SELECT current_setting('threads')").fetchall()[0][0]
    # One thread keeps the scan in file order, so row numbers match the file's lines.
    con.execute("SET threads = 1")
    try:
        cursor = con.execute(
            f"""SELECT * FROM (SELECT row_number() OVER () AS row_number, * FROM {TYPED_VIEW})
                WHERE {check.duckdb_condition()} ORDER BY row_number LIMIT 1"""
        )
        names = [d[0] for d in cursor.description]
        row = dict(zip(names, cursor.fetchall()[0]))
    finally:
        con.execute(f"SET threads = {int(threads)}")
    where = f"row {row['row_number']}"
    if label != "input DataFrame":
        line = row["row_number"] + (1 if settings.header else 0)
        where = f"line {line}"
    return check.error(label, row, bad_count, where)
