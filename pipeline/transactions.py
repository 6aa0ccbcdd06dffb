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
from pathlib import Path

import duckdb
import pandas as pd

from pipeline.config import InputSettings, ValidationSettings
from pipeline.errors import DataQualityWarning, InputDataError
from pipeline.io import RAW_VIEW, duckdb_identifier, first_line, register_transactions

TYPED_VIEW = "typed_transactions"
TYPED_ROWS = "typed_transaction_rows"
MAX_AMOUNT = 1e12
TRANSACTIONS_VIEW = "transactions"

_TEMPORAL_TYPES = ("DATE", "TIMESTAMP")
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


def today_utc() -> dt.date:
    """Today's date in UTC (a retrain's default as-of date)."""
    return dt.datetime.now(dt.timezone.utc).date()


def latest_possible_date() -> dt.date:
    """The latest date a real transaction can carry now: today in the earliest time zone (UTC+14),
    so a shop's local date is never taken for the future, wherever the job runs."""
    return (dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=14)).date()


# The date and margin rules of the input boundary, shared by the DuckDB and Spark engines so
# both report the same first problem for the same file.

def future_rows_message(raw_date: str, latest: dt.date) -> str:
    return (f"'{raw_date}' is in the future (after {latest}, today's date in the earliest time zone); fix the row "
            "or set validation.future_dates: drop to drop such rows")


def margin_above_amount_message(margin_source_is_cost: bool) -> str:
    problem = "cost is negative" if margin_source_is_cost else "margin is above the amount"
    return f"{problem} (set validation.margin_above_amount: warn to keep such rows with a warning)"


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


def _date_expression(column: str, type_name: str, date_format: str | None) -> str:
    if _is(type_name, _TEMPORAL_TYPES):
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


def _bad_number(alias: str) -> str:
    return f"({alias} IS NULL OR isnan({alias}) OR isinf({alias}))"


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
    wanted = {
        "customer_id": mapping.customer_id,
        "date": mapping.date,
        "amount": mapping.amount,
        "margin": mapping.margin,
        "cost": mapping.cost,
        "channel": mapping.channel,
        "acquisition_cost": mapping.acquisition_cost,
    }
    for role, name in wanted.items():
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
            {_date_expression(q(date_col), types[date_col], settings.date_format)} AS order_date,
            {amount_expr} AS amount,
            {margin_expr} AS margin,
            {channel_expr} AS channel,
            {cac_expr} AS acquisition_cost,
            CAST({q(date_col)} AS VARCHAR) AS raw_date,
            CAST({q(amount_col)} AS VARCHAR) AS raw_amount,
            {field_count} AS field_count
        FROM {RAW_VIEW}"""
    )

    expected_fields = len(settings.names) if settings.names else None
    if field_count != "NULL::INTEGER" and expected_fields is None:
        expected_fields = len([c for c in types if c != "__field_count"])
    checks = [
        # (condition, column, describe(raw_row) -> message)
        (
            f"field_count IS NOT NULL AND field_count <> {expected_fields or 0}",
            None,
            lambda r: f"has {r['field_count']} fields, expected {expected_fields}",
        ),
        ("customer_id IS NULL", cid, lambda r: "customer id is empty"),
        (
            "order_date IS NULL",
            date_col,
            lambda r: (
                "date is empty" if r["raw_date"] is None
                else f"'{r['raw_date']}' is not a date (format {settings.date_format})"
            ),
        ),
        (
            _bad_number("amount"),
            amount_col,
            lambda r: (
                "amount is empty" if r["raw_amount"] is None
                else f"'{r['raw_amount']}' is not a finite number"
            ),
        ),
    ]
    if margin_source:
        checks.append(
            (_bad_number("margin"), margin_source, lambda r: "margin/cost is empty or not a finite number")
        )
    if mapping.acquisition_cost:
        checks.append(
            (
                "acquisition_cost < 0 OR isnan(acquisition_cost) OR isinf(acquisition_cost)",
                mapping.acquisition_cost,
                lambda r: "acquisition cost is negative or not a finite number",
            )
        )
    # Amounts are summed as DECIMAL(18, 6) (exact, order-free): larger values cannot be held.
    checks.append(
        (
            f"abs(amount) >= {MAX_AMOUNT:.0f}" + (f" OR abs(margin) >= {MAX_AMOUNT:.0f}" if margin_source else ""),
            amount_col,
            lambda r: f"{r['raw_amount']} is too large (amounts must be below {MAX_AMOUNT:,.0f})",
        )
    )
    if validation.negative_amounts == "fail":
        checks.append(
            (
                "amount < 0",
                amount_col,
                lambda r: f"negative amount {r['raw_amount']} (set validation.negative_amounts: drop to drop such rows)",
            )
        )
    margin_above = "margin > amount"
    if margin_source and validation.margin_above_amount == "fail":
        checks.append((margin_above, margin_source, lambda r: margin_above_amount_message(bool(mapping.cost))))
    latest = latest_possible_date()
    future = f"order_date > {_date_literal(latest)}"
    if validation.future_dates == "fail":
        checks.append((future, date_col, lambda r: future_rows_message(r["raw_date"], latest)))

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
    count_columns = ", ".join(f"count(*) FILTER (WHERE {cond})" for cond, _, _ in checks)
    # Future rows (when dropped) take no part: not in the dates, the counts or the as-of date.
    present = f"NOT ({future})"
    # Without an as-of date the window ends at the last present date: every present row is in it.
    in_window = present if observation_end is None else f"{present} AND order_date <= {_date_literal(observation_end)}"
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
    rows_read = stats[0]
    if rows_read == 0:
        raise InputDataError(f"{label}: the log has no rows")
    for (condition, column, describe), bad_count in zip(checks, stats[1 : 1 + len(checks)]):
        if bad_count:
            raise InputDataError(_row_error(con, label, settings, condition, column, describe, bad_count))
    (future_rows, first_date, last_present_date, after_end, negative_kept_rows, last_date,
     margin_above_rows) = stats[1 + len(checks):]
    if observation_end is None:
        observation_end = last_present_date
    if first_date is None:
        raise InputDataError(f"{label}: every row is dated in the future (after {latest}): no usable rows")
    if margin_above_rows:
        warn_margin_above_amount(label, margin_above_rows, bool(mapping.cost))
    if observation_end < first_date:
        raise InputDataError(
            f"{label}: observation end (as-of date) {observation_end} is before the first transaction ({first_date})"
        )
    if after_end and validation.rows_after_observation_end == "fail":
        condition = f"order_date > DATE '{observation_end.isoformat()}'"
        raise InputDataError(
            _row_error(
                con, label, settings, condition, date_col,
                lambda r: f"'{r['raw_date']}' is after observation_end {observation_end}",
                after_end,
            )
        )
    if last_date is None:
        raise InputDataError(f"{label}: no usable rows on or before observation_end {observation_end}")
    check_freshness(label, last_date, observation_end, validation)
    drop_negative = " AND amount >= 0" if validation.negative_amounts == "drop" else ""
    con.execute(
        f"""CREATE OR REPLACE TEMP VIEW {TRANSACTIONS_VIEW} AS
            SELECT customer_id, order_date, amount, margin, channel, acquisition_cost
            FROM {checked}
            WHERE order_date <= {_date_literal(observation_end)} AND {present}{drop_negative}"""
    )
    used = rows_read - future_rows - after_end - (negative_kept_rows if drop_negative else 0)
    if used == 0:
        raise InputDataError(f"{label}: no usable rows on or before observation_end {observation_end}")
    return LogSummary(
        source=label,
        rows_read=rows_read,
        rows_used=used,
        customers=None,
        first_date=first_date,
        last_date=last_date,
        observation_end=observation_end,
        negative_amount_rows_dropped=negative_kept_rows if drop_negative else 0,
        rows_after_observation_end=after_end,
        has_margin=margin_source is not None,
        has_channel=mapping.channel is not None,
        has_acquisition_cost=mapping.acquisition_cost is not None,
        future_rows_dropped=future_rows,
        margin_above_amount_rows=margin_above_rows,
    )


def _date_literal(value: dt.date) -> str:
    return f"DATE '{value.isoformat()}'"


def _row_error(con, label, settings, condition, column, describe, bad_count) -> str:
    """Locate the first offending row in file order and describe it in one line."""
    threads = con.execute("SELECT current_setting('threads')").fetchall()[0][0]
    # One thread keeps the scan in file order, so row numbers match the file's lines.
    con.execute("SET threads = 1")
    try:
        cursor = con.execute(
            f"""SELECT * FROM (SELECT row_number() OVER () AS row_number, * FROM {TYPED_VIEW})
                WHERE {condition} ORDER BY row_number LIMIT 1"""
        )
        names = [d[0] for d in cursor.description]
        row = dict(zip(names, cursor.fetchall()[0]))
    finally:
        con.execute(f"SET threads = {int(threads)}")
    where = f"row {row['row_number']}"
    if label != "input DataFrame":
        line = row["row_number"] + (1 if settings.header else 0)
        where = f"line {line}"
    column_part = f"column '{column}', " if column else ""
    more = f" ({bad_count} such rows)" if bad_count > 1 else ""
    return f"{label}: {column_part}{where}: {describe(row)}{more}"
