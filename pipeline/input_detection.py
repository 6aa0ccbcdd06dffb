"""A newcomer's own log with no config: which file format, which column is which, how dates are
written, and a holdout that suits the history (``clv run --input``, ``clv init``).

Columns are recognised by name (English and Spanish, case, spaces and hyphens ignored); a column
no name matches, or two columns matching one role, is an error that lists the file's columns
and the flag that settles it. Text dates are tried against every common format over the whole
column (DuckDB scans it once): a day/month order the data cannot decide (every day ≤ 12) is an
error naming both readings and ``--date-format``. Everything detected is said in ``notes``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
from pathlib import Path
from typing import Any

import duckdb

from pipeline.config import InputSettings
from pipeline.errors import InputDataError
from pipeline.io import RAW_VIEW, _sql_string, connect, duckdb_identifier, first_line, register_transactions
from pipeline.io import detect_format as format_of_suffix
from pipeline.transactions import TEMPORAL_TYPES, date_expression

# Names each role goes by, normalised (lower case, runs of other characters as "_").
ROLE_NAMES: dict[str, tuple[str, ...]] = {
    "customer_id": ("customer_id", "customer", "customerid", "customer_no", "customer_number", "cust_id",
                    "client_id", "client", "clientid", "user_id", "userid", "user", "member_id", "buyer_id",
                    "account_id", "cliente", "id_cliente", "cliente_id", "codigo_cliente", "cod_cliente",
                    "usuario", "id_usuario"),
    "date": ("date", "order_date", "invoice_date", "invoicedate", "orderdate", "transaction_date", "purchase_date",
             "sale_date", "order_datetime", "datetime", "timestamp", "created_at", "fecha", "fecha_compra",
             "fecha_pedido", "fecha_factura", "fecha_venta", "fecha_transaccion"),
    "amount": ("amount", "revenue", "sales", "sale", "total", "order_total", "order_value", "order_amount",
               "sales_amount", "sale_amount", "value", "spend", "dollar_value", "importe", "monto", "valor",
               "total_venta", "venta", "ventas", "ingreso", "ingresos", "facturacion"),
    "margin": ("margin", "profit", "gross_margin", "gross_profit", "margen", "beneficio", "ganancia"),
    "cost": ("cost", "cogs", "cost_of_goods", "coste", "costo"),
    "channel": ("channel", "sales_channel", "acquisition_channel", "canal", "canal_venta"),
}
REQUIRED_ROLES = ("customer_id", "date", "amount")
# The flag that names each role's column.
ROLE_FLAGS = {"customer_id": "--customer-col", "date": "--date-col", "amount": "--amount-col",
              "margin": "--margin-col", "cost": "--cost-col", "channel": "--channel-col"}

# Text date formats tried, in order of preference; each pair of day-first and month-first
# readings is ambiguous when both parse every value.
DATE_FORMATS = (
    "%Y-%m-%d", "%Y%m%d", "%Y/%m/%d", "%Y-%m-%d %H:%M:%S", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M",
    "%Y-%m-%d %H:%M:%S.%f", "%Y-%m-%dT%H:%M:%S.%f", "%Y-%m-%dT%H:%M:%SZ", "%Y-%m-%dT%H:%M:%S%z",
    "%d/%m/%Y", "%m/%d/%Y", "%d-%m-%Y", "%m-%d-%Y", "%d.%m.%Y",
    "%d/%m/%Y %H:%M", "%m/%d/%Y %H:%M", "%d/%m/%Y %H:%M:%S", "%m/%d/%Y %H:%M:%S",
    "%d/%m/%y", "%m/%d/%y",
)
_SWAPPED = {"%d": "%m", "%m": "%d"}
# Rows every date format is tried on before the likely ones are checked on the whole column.
SNIFF_ROWS = 100_000

# The holdout a detected log gets: this share of its history, in whole periods, when the history
# holds at least MIN_HISTORY_PERIODS of them (fewer: no holdout, the first candidate is used).
HOLDOUT_SHARE = 1 / 3
MIN_HISTORY_PERIODS = 12


def normalised(name: str) -> str:
    return re.sub(r"[^0-9a-z]+", "_", name.strip().lower()).strip("_")


@dataclasses.dataclass
class DetectedInput:
    """What was found in a log: the ``input`` and ``features`` settings for it, and notes."""

    input: dict[str, Any]
    features: dict[str, Any]
    notes: list[str]

    def overrides(self) -> dict[str, Any]:
        return {"input": self.input, "features": self.features}


def detect_format(path: Path) -> str:
    """``csv``, ``parquet`` (a file, or a folder of them) or ``whitespace`` (padded text)."""
    if path.is_dir():
        if not any(path.rglob("*.parquet")):
            raise InputDataError(f"{path}: a folder holds Parquet files (*.parquet) to read; this one has none")
        return "parquet"
    try:
        return format_of_suffix(path, "auto")
    except InputDataError:  # no telling suffix (.txt, none): the first line says
        pass
    with path.open(errors="replace") as handle:
        first = handle.readline()
    if any(mark in first for mark in (",", ";", "\t", "|")):
        return "csv"
    if len(first.split()) >= 3:
        return "whitespace"
    raise InputDataError(f"{path}: cannot tell whether this is CSV, Parquet or whitespace-separated text: "
                         "pass --set input.format=csv (or parquet, whitespace)")


def match_columns(columns: list[str], given: dict[str, str | None], path: Path) -> tuple[dict[str, str], list[str]]:
    """Each role's column: the one given (checked to exist), else the one whose name is a known
    name of the role. Returns the columns by role and notes."""
    listed = ", ".join(columns)
    by_name = {normalised(column): column for column in columns}
    for role, column in given.items():  # a misspelt flag first: it is what the user just typed
        if column and column not in columns:
            raise InputDataError(f"{path}: no column '{column}' ({ROLE_FLAGS[role]}); the file's columns: {listed}")
    found: dict[str, str] = {}
    notes = []
    for role, names in ROLE_NAMES.items():
        flag = ROLE_FLAGS[role]
        if given.get(role):
            found[role] = str(given[role])
            continue
        matches = [by_name[name] for name in names if name in by_name]
        taken = set(found.values())
        matches = [column for column in dict.fromkeys(matches) if column not in taken]
        if len(matches) > 1:
            raise InputDataError(f"{path}: {', '.join(matches)} could each be the {role.replace('_', ' ')} column: "
                                 f"pass {flag} <name> (the file's columns: {listed})")
        if matches:
            found[role] = matches[0]
        elif role in REQUIRED_ROLES:
            raise InputDataError(f"{path}: no {role.replace('_', ' ')} column recognised among {listed}: "
                                 f"pass {flag} <name>")
    if "margin" in found and "cost" in found:
        notes.append(f"both a margin ({found['margin']}) and a cost ({found['cost']}) column: the margin is used")
        del found["cost"]
    notes.insert(0, "columns: " + ", ".join(f"{role} = {column}" for role, column in found.items()))
    return found, notes


def detect_date_format(con: duckdb.DuckDBPyConnection, sql: str, column: str, type_name: str, path: Path,
                       given: str | None) -> tuple[str | None, str]:
    """The strptime format of a text date column (DuckDB type ``type_name``; None for a typed
    one), and a note."""
    if type_name.upper().startswith(TEMPORAL_TYPES):
        return None, f"dates: {column} is a typed {type_name.lower()} column"
    if given:
        return given, f"dates: {column} read with {given} (--date-format)"
    name = duckdb_identifier(column)
    text = f"trim(CAST({name} AS VARCHAR))"

    def fitting_formats(formats: tuple[str, ...], rows: str) -> tuple[list[str], str]:
        checks = ", ".join(f"count(*) FILTER (WHERE try_strptime({text}, {_sql_string(fmt)}) IS NULL)"
                           for fmt in formats)
        try:
            failures, example = con.execute(
                f"SELECT [{checks}], any_value({text}) FROM (SELECT * FROM {sql} WHERE {text} <> ''{rows})").fetchone()
        except duckdb.Error as exc:
            raise InputDataError(f"{path}: cannot read column {column}: {first_line(exc)}") from None
        return [fmt for fmt, failed in zip(formats, failures) if failed == 0], example

    # Every format on the first rows, then the survivors on the whole column: a large log is
    # scanned once for a few formats, not for all of them.
    candidates, sample = fitting_formats(DATE_FORMATS, f" LIMIT {SNIFF_ROWS}")
    fitting, _ = fitting_formats(tuple(candidates), "") if candidates else ([], sample)
    if not fitting:
        raise InputDataError(f"{path}: column {column}: no common date format reads every value (e.g. "
                             f"'{sample}'): pass --date-format, e.g. --date-format '%d/%m/%Y'")
    chosen = fitting[0]
    swapped = "".join(_SWAPPED.get(part, part) for part in re.split(r"(%[dm])", chosen))
    if swapped != chosen and swapped in fitting:
        raise InputDataError(
            f"{path}: column {column}: every date reads both as {chosen} and as {swapped} (no day is above 12, e.g. "
            f"'{sample}'): pass --date-format '{chosen}' or --date-format '{swapped}'")
    return chosen, f"dates: {column} read with {chosen} (e.g. '{sample}')"


def holdout_for(first: dt.date, last: dt.date, days_per_period: float, unit: str) -> tuple[float | None, str]:
    """The holdout a detected log gets (:data:`HOLDOUT_SHARE` of its history) and a note."""
    periods = (last - first).days / days_per_period
    if periods < MIN_HISTORY_PERIODS:
        return None, (f"holdout: none (the history is {periods:.0f} {unit}s, under {MIN_HISTORY_PERIODS}): no backtest, "
                      "the first candidate model is used")
    holdout = max(1, int(periods * HOLDOUT_SHARE))
    return float(holdout), (f"holdout: the last {holdout} {unit}s, a third of the {periods:.0f}-{unit} history "
                            "(set --set features.holdout_periods=N to choose)")


def detect_input(path: str | Path, given: dict[str, str | None] | None = None, date_format: str | None = None,
                 days_per_period: float = 7.0, unit: str = "week") -> DetectedInput:
    """Read a log's header, recognise its columns and date format, and suit a holdout to it.

    ``given``: role → column the user named (``--customer-col`` ...); ``date_format``: the
    user's ``--date-format``.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise InputDataError(f"{path}: input file not found")
    if path.is_file() and path.stat().st_size == 0:
        raise InputDataError(f"{path}: the file is empty")
    fmt = detect_format(path)
    con = connect(threads=2)
    try:
        # The log as every run reads it (text files' columns as text): io.register_transactions.
        register_transactions(con, path, InputSettings(path=str(path), format=fmt))
        types = {row[0]: row[1] for row in con.execute(f"DESCRIBE {RAW_VIEW}").fetchall()
                 if not row[0].startswith("__")}  # the whitespace reader's own field count
        found, notes = match_columns(list(types), given or {}, path)
        notes.insert(0, f"format: {fmt}" + (" (a folder of Parquet files)" if path.is_dir() else ""))
        date_fmt, date_note = detect_date_format(con, RAW_VIEW, found["date"], types[found["date"]], path, date_format)
        notes.append(date_note)
        date_sql = date_expression(duckdb_identifier(found["date"]), types[found["date"]], date_fmt)
        first, last = con.execute(f"SELECT min({date_sql}), max({date_sql}) FROM {RAW_VIEW}").fetchone()
    finally:
        con.close()
    if first is None:
        raise InputDataError(f"{path}: column {found['date']} holds no date")
    holdout, holdout_note = holdout_for(first, last, days_per_period, unit)
    notes.append(f"history: {first} to {last}; time unit: {unit}s")
    notes.append(holdout_note)
    input_settings: dict[str, Any] = {
        "path": str(path), "format": fmt, "header": True, "names": None, "delimiter": None,
        "columns": {role: found.get(role) for role in ROLE_NAMES} | {"acquisition_cost": None},
        "date_format": date_fmt,
    }
    features = {"observation_end": None, "calibration_end": None, "holdout_periods": holdout}
    return DetectedInput(input_settings, features, notes)
