"""The Spark engine (``engine: spark``): the transaction log, features and batch scoring on PySpark.

The definitions are the DuckDB engine's, column for column: the input rules of
``pipeline/input_rules.py`` (one table both engines compile), the typed log of
``pipeline/transactions.py`` and the features of ``pipeline/stages/sorted_log.py`` (there
numpy reductions over a log DuckDB sorted; here Spark aggregates over a window per customer).
Amounts are summed as exact DECIMAL(18, 6) values there, and so they are here, so both engines
give bit-identical features (tests/pipeline/test_spark.py compares them value by value).

What stays on one machine: the model fit. The purchase models depend on a customer only through
the unique ``(frequency, recency, T)`` rows, which stay small at any scale
(:func:`unique_statistics`); Gamma-Gamma needs the repeat customers' ``(frequency,
monetary_value)`` (:func:`spend_fit_frame`). Scoring goes back to the cluster: a fitted
:class:`~pipeline.stages.value.CustomerValueScorer` is broadcast and every partition's batches
go through the scoring core, :func:`pipeline.stages.value.score_customers` (:func:`score`).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import re
import shutil
import sys
import uuid
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
from pyspark import StorageLevel
from pyspark.errors import PySparkException, PythonException
from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from pipeline.config import (
    Config,
    FeatureSettings,
    InputSettings,
    PeriodSettings,
    SparkSettings,
    ValidationSettings,
    resolve_input_path,
)
from pipeline.errors import ConfigError, InputDataError
from pipeline.input_rules import (
    MARGIN_ABOVE_AMOUNT,
    RAW_FIELDS,
    Check,
    RuleContext,
    after_observation_end_check,
    checks,
    configured_columns,
    dated_after,
)
from pipeline.io import detect_format
from pipeline.stages.features import FEATURE_COLUMNS, FeaturesResult, resolve_calibration_end
from pipeline.stages.score import OPTIONAL_FEATURES, REQUIRED_FEATURES, check_feature_columns
from pipeline.stages.value import SCORE_COLUMNS
from pipeline.transactions import LogSummary, check_freshness, latest_possible_date, warn_margin_above_amount

# The DuckDB engine sums CAST(x AS DECIMAL(18, 6)); DuckDB computes that cast as
# round-half-away-from-zero of x * 1e6 in double arithmetic, which differs from Spark's own
# double-to-decimal cast (it rounds the shortest decimal string) for values such as
# 133.2532915. Rounding x * 1e6 in Spark (HALF_UP, which for doubles below 2^52 is the same
# rounding) and scaling the integer back gives DuckDB's decimal exactly.
EXACT = T.DecimalType(18, 6)
_MICROS = 1_000_000

_EPOCH = dt.date(1970, 1, 1)
_EPOCH_MONDAY = dt.date(1970, 1, 5)

_NUMBER = r"^[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?$"
_NUMERIC_TYPES = (T.ByteType, T.ShortType, T.IntegerType, T.LongType, T.FloatType, T.DoubleType, T.DecimalType)
_TEMPORAL_TYPES = (T.DateType, T.TimestampType, T.TimestampNTZType)
_CANDIDATE_DELIMITERS = ",;\t|"

_POSITION = "__position"
_FIELD_COUNT = "__field_count"


# ---------------------------------------------------------------------------------------------
# Session


def spark_session(settings: SparkSettings) -> SparkSession:
    """The Spark session for ``settings`` (an existing one is reused, as ``getOrCreate`` does).

    Dates are computed in UTC whatever the machine's zone; local masters get few shuffle
    partitions (Spark's default of 200 makes small logs slow) and use this interpreter for
    their Python workers, which has the project installed.
    """
    local = settings.master.startswith("local")
    defaults = {
        "spark.ui.showConsoleProgress": "false",
        "spark.log.level": "ERROR",
        "spark.sql.execution.arrow.pyspark.enabled": "true",
    }
    if local:
        defaults["spark.sql.shuffle.partitions"] = "8"
        # PySpark starts local Python workers with $PYSPARK_PYTHON, else whatever `python3` is
        # on the PATH, which may lack pandas or this project.
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    required = {
        "spark.sql.session.timeZone": "UTC",
        # Datetime patterns as documented for Spark 3+, never the Java 7 SimpleDateFormat ones.
        "spark.sql.legacy.timeParserPolicy": "CORRECTED",
    }
    builder = SparkSession.builder.master(settings.master).appName(settings.app_name)
    for key, value in {**defaults, **settings.conf, **required}.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    # getOrCreate hands back a running session as it is: set what correctness depends on again.
    for key, value in required.items():
        spark.conf.set(key, value)
    return spark


# ---------------------------------------------------------------------------------------------
# Reading the log


_STRPTIME_NUMERIC = {"Y": "yyyy", "y": "yy", "m": "MM", "d": "dd", "H": "HH", "I": "hh", "M": "mm",
                     "S": "ss", "j": "DDD", "f": "SSSSSS"}
_STRPTIME_TEXT = {"b": "MMM", "B": "MMMM", "a": "EEE", "A": "EEEE", "p": "a"}
# Directives DuckDB reads with one or two digits; a single pattern letter does the same in
# Spark, but only where a separator follows (digits of adjacent fields need fixed widths).
_VARIABLE_WIDTH = {"m": "M", "d": "d", "H": "H", "I": "h", "M": "m", "S": "s"}


def spark_date_pattern(strptime_format: str) -> str:
    """The Spark datetime pattern that parses what ``strptime_format`` parses.

    Raises :class:`ConfigError` for directives without a Spark equivalent.
    """
    tokens: list[tuple[str, str]] = []  # ("directive", letter) or ("literal", text)
    position = 0
    while position < len(strptime_format):
        char = strptime_format[position]
        if char == "%" and position + 1 < len(strptime_format):
            letter = strptime_format[position + 1]
            position += 2
            if letter == "%":
                tokens.append(("literal", "%"))
            elif letter in _STRPTIME_NUMERIC or letter in _STRPTIME_TEXT:
                tokens.append(("directive", letter))
            else:
                supported = " ".join(f"%{c}" for c in [*_STRPTIME_NUMERIC, *_STRPTIME_TEXT])
                raise ConfigError(
                    f"input.date_format: %{letter} has no Spark equivalent (the Spark engine reads {supported})"
                )
        else:
            tokens.append(("literal", char))
            position += 1
    pattern = []
    for index, (kind, value) in enumerate(tokens):
        if kind == "literal":
            pattern.append("'" + value.replace("'", "''") + "'")
            continue
        neighbours = [tokens[i] for i in (index - 1, index + 1) if 0 <= i < len(tokens)]
        separated = all(k == "literal" for k, _ in neighbours)
        if value in _VARIABLE_WIDTH and separated:
            pattern.append(_VARIABLE_WIDTH[value])
        else:
            pattern.append(_STRPTIME_NUMERIC.get(value) or _STRPTIME_TEXT[value])
    return _merge_literals(pattern)


def _merge_literals(parts: list[str]) -> str:
    # Adjacent quoted literals ('-''x') would read as one literal with an escaped quote.
    merged: list[str] = []
    for part in parts:
        if part.startswith("'") and merged and merged[-1].startswith("'"):
            merged[-1] = merged[-1][:-1] + part[1:]
        else:
            merged.append(part)
    return "".join(merged)


def _is_uri(text: str) -> bool:
    return re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", text) is not None


def _first_line(spark: SparkSession, path: str) -> str | None:
    if not _is_uri(path):
        with open(path, encoding="utf-8", errors="replace") as handle:
            return handle.readline()
    row = spark.read.text(path).head()
    return None if row is None else row[0]


def _sniff_delimiter(first_line: str | None) -> str:
    """The candidate delimiter that occurs most often in the first line (',' if none does).

    DuckDB's sniffer detects the delimiter; a Spark read needs it named. Set
    ``input.delimiter`` when the first line could mislead (e.g. commas inside a quoted header).
    """
    counts = {candidate: (first_line or "").count(candidate) for candidate in _CANDIDATE_DELIMITERS}
    best = max(counts, key=counts.get)
    return best if counts[best] else ","


def _read_raw(
    spark: SparkSession, source: str | Path | DataFrame, settings: InputSettings
) -> tuple[DataFrame, str, str]:
    """The log as Spark reads it (text files: every column a string), a label and the format."""
    if isinstance(source, DataFrame):
        return source, "input DataFrame", "dataframe"
    text = str(source)
    if text.startswith("builtin:"):
        text = str(resolve_input_path(text))
    if not _is_uri(text):
        path = Path(text).expanduser()
        if not path.exists():
            raise InputDataError(f"{path}: input file not found")
        if path.is_file() and path.stat().st_size == 0:
            raise InputDataError(f"{path}: the file is empty")
        text = str(path)
    fmt = detect_format(PurePosixPath(text), settings.format)
    try:
        if fmt == "parquet":
            return spark.read.parquet(text), text, fmt
        if fmt == "whitespace":
            return _read_whitespace(spark, text, settings), text, fmt
        return _read_csv(spark, text, settings), text, fmt
    except PySparkException as exc:
        raise InputDataError(f"{text}: cannot read as {fmt}: {_first_message_line(exc)}") from None


def _read_csv(spark: SparkSession, path: str, settings: InputSettings) -> DataFrame:
    delimiter = settings.delimiter or _sniff_delimiter(_first_line(spark, path))
    reader = spark.read.options(
        header=settings.header, sep=delimiter, quote='"', escape='"', mode="PERMISSIVE", inferSchema=False
    )
    if settings.names:
        reader = reader.schema(T.StructType([T.StructField(n, T.StringType()) for n in settings.names]))
    return reader.csv(path)


def _read_whitespace(spark: SparkSession, path: str, settings: InputSettings) -> DataFrame:
    """Columns separated by runs of blanks (CDNOW's .txt files), as DuckDB's reader splits them.

    Each line is read whole: the CSV reader with a delimiter that never occurs and no quoting
    is ``spark.read.text`` that also skips a header line at the start of each file.
    """
    names = settings.names
    if names is None:
        names = (_first_line(spark, path) or "").split()
        if not names:
            raise InputDataError(f"{path}: the file is empty")
    lines = spark.read.options(header=settings.header, sep="\x1f", quote="", escape="").schema("line STRING").csv(path)
    parts = F.split(F.trim(F.col("line")), r"\s+")
    return (
        lines.where(F.trim(F.col("line")) != "")
        .select(*[F.get(parts, i).alias(name) for i, name in enumerate(names)], F.size(parts).alias(_FIELD_COUNT))
    )


def _first_message_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


def _column(name: str) -> Column:
    """A column by its exact name (dots and backticks in it are not syntax)."""
    return F.col("`" + name.replace("`", "``") + "`")


def _text(column: Column) -> Column:
    return F.trim(column.cast("string"))


def _number(column: Column, data_type: T.DataType) -> Column:
    if isinstance(data_type, _NUMERIC_TYPES):
        return column.cast("double")
    text = _text(column)
    # Java's parser also reads '1d', '2f' and hexadecimal floats; DuckDB's does not.
    return F.when(text.rlike(_NUMBER), text.try_cast("double"))


def parse_date(text: Column, strptime_format: str) -> Column:
    """Dates parsed from ``text`` as DuckDB's ``try_strptime(text, strptime_format)`` parses them (NULL if not)."""
    date = F.try_to_date(text, spark_date_pattern(strptime_format))
    if "%y" in strptime_format.replace("%%", ""):
        # strptime (and DuckDB) read two-digit years 69-99 as 1969-1999; Spark's 'yy' as 2069-2099.
        # A century back lands on the same calendar day: no century year lies in between.
        date = F.when(F.year(date) >= 2069, F.add_months(date, -1200)).otherwise(date)
    return date


def _date(column: Column, data_type: T.DataType, date_format: str | None) -> Column:
    if isinstance(data_type, _TEMPORAL_TYPES):
        return F.to_date(column)
    text = _text(column)
    if date_format:
        return parse_date(text, date_format)
    return text.try_cast("date")


def _typed(raw: DataFrame, settings: InputSettings, keep: tuple[str, ...] = ()) -> tuple[DataFrame, str | None]:
    """The typed log (``load_transactions``' view) and the column margins come from, if any."""
    types = {field.name: field.dataType for field in raw.schema.fields}
    mapping = settings.columns
    cid = mapping.customer_id
    customer = _column(cid)
    if isinstance(types[cid], T.StringType):
        customer = F.nullif(F.trim(customer), F.lit(""))
    amount = _number(_column(mapping.amount), types[mapping.amount])
    margin = F.lit(None).cast("double")
    margin_source = None
    if mapping.margin:
        margin = _number(_column(mapping.margin), types[mapping.margin])
        margin_source = mapping.margin
    elif mapping.cost:
        margin = amount - _number(_column(mapping.cost), types[mapping.cost])
        margin_source = mapping.cost
    channel = _column(mapping.channel).cast("string") if mapping.channel else F.lit(None).cast("string")
    cac = F.lit(None).cast("double")
    if mapping.acquisition_cost:
        cac = _number(_column(mapping.acquisition_cost), types[mapping.acquisition_cost])
    field_count = F.col(_FIELD_COUNT) if _FIELD_COUNT in types else F.lit(None).cast("int")
    typed = raw.select(
        customer.alias("customer_id"),
        _date(_column(mapping.date), types[mapping.date], settings.date_format).alias("order_date"),
        amount.alias("amount"),
        margin.alias("margin"),
        channel.alias("channel"),
        cac.alias("acquisition_cost"),
        _column(mapping.date).cast("string").alias("raw_date"),
        _column(mapping.amount).cast("string").alias("raw_amount"),
        field_count.alias("field_count"),
        *[F.col(name) for name in keep],
    )
    return typed, margin_source


def _count_where(condition: Column) -> Column:
    return F.count(F.when(condition, F.lit(1)))


def _row_error(raw: DataFrame, settings: InputSettings, label: str, check: Check, bad_count: int) -> str:
    """Describe the first offending row in file order in one line.

    Spark has no line numbers; monotonically_increasing_id grows with the partition index and the
    position in it, and a file's partitions follow its byte offsets, so the smallest id is the
    earliest row.
    """
    typed, _ = _typed(raw.withColumn(_POSITION, F.monotonically_increasing_id()), settings, keep=(_POSITION,))
    first = (
        typed.where(check.spark_condition())
        .select(F.min_by(F.struct(*RAW_FIELDS), F.col(_POSITION)).alias("row"))
        .head()["row"]
        .asDict()
    )
    return check.error(label, first, bad_count)


def read_transactions(
    spark: SparkSession,
    source: str | Path | DataFrame,
    settings: InputSettings,
    validation: ValidationSettings,
    observation_end: dt.date | None = None,
) -> tuple[DataFrame, LogSummary]:
    """The validated, typed log ``(customer_id, order_date, amount, margin, channel, acquisition_cost)``.

    Parameters
    ----------
    spark : SparkSession
    source : str, Path or pyspark.sql.DataFrame
        A CSV, Parquet or whitespace-separated text file (local path, ``builtin:<file>`` or a
        URI such as ``s3a://…``), or a Spark DataFrame with the configured columns.
    settings, validation
        The config's ``input`` and ``validation`` sections.
    observation_end : datetime.date, optional
        Last date considered; default the last date in the log.

    Returns
    -------
    transactions : pyspark.sql.DataFrame
        The usable rows (on or before the observation end; negative amounts dropped if so
        configured), lazily: every action on it reads the source again unless it is cached.
    log : LogSummary
        What was read, as the DuckDB engine reports it.

    Raises
    ------
    InputDataError
        One line naming the file and column, the offending value of the first bad row in file
        order and the count of such rows (no line numbers: Spark does not track them).
    """
    raw, label, _ = _read_raw(spark, source, settings)
    columns = raw.columns
    mapping = settings.columns
    for role, name in configured_columns(settings).items():
        if name is not None and name not in columns:
            available = ", ".join(c for c in columns if c != _FIELD_COUNT)
            raise InputDataError(
                f"{label}: column '{name}' (input.columns.{role}) not found; the file has: {available}"
            )

    typed, margin_source = _typed(raw, settings)
    latest = latest_possible_date()
    data_columns = [c for c in columns if c != _FIELD_COUNT]
    rules = checks(RuleContext.for_source(settings, validation, latest, data_columns, _FIELD_COUNT in columns))
    col = F.col
    drop_negative = validation.negative_amounts == "drop"
    # Future rows (when dropped) take no part: not in the dates, the counts or the as-of date.
    present = ~dated_after(latest).spark()
    aggregates = [
        F.count(F.lit(1)).alias("rows"),
        *[_count_where(check.spark_condition()).alias(f"check_{i}") for i, check in enumerate(rules)],
        _count_where(~present).alias("future"),
        F.min(F.when(present, col("order_date"))).alias("first_date"),
        F.max(F.when(present, col("order_date"))).alias("last_date"),
    ]

    # Without an as-of date the window ends at the last present date: every present row is in it.
    in_window = present if observation_end is None else present & (col("order_date") <= F.lit(observation_end))
    usable = in_window & (col("amount") >= 0) if drop_negative else in_window
    window_aggregates = [
        _count_where(present & ~in_window).alias("after_end"),
        _count_where(in_window & (col("amount") < 0)).alias("negative"),
        F.max(F.when(in_window, col("order_date"))).alias("window_last_date"),
        _count_where(usable).alias("used"),
        F.count_distinct(F.when(usable, col("customer_id"))).alias("customers"),
        _count_where(present & MARGIN_ABOVE_AMOUNT.spark() if margin_source else F.lit(False)).alias(
            "margin_above"
        ),
    ]
    try:
        stats = typed.agg(*aggregates, *window_aggregates).head().asDict()
    except PySparkException as exc:
        raise InputDataError(f"{label}: cannot read: {_first_message_line(exc)}") from None
    if stats["rows"] == 0:
        raise InputDataError(f"{label}: the log has no rows")
    for i, check in enumerate(rules):
        if stats[f"check_{i}"]:
            raise InputDataError(_row_error(raw, settings, label, check, stats[f"check_{i}"]))

    first_date = stats["first_date"]
    if first_date is None:
        raise InputDataError(f"{label}: every row is dated in the future (after {latest}): no usable rows")
    if observation_end is None:
        observation_end = stats["last_date"]
    stats["last_date"] = stats["window_last_date"]
    last_date, used, customers, after_end = stats["last_date"], stats["used"], stats["customers"], stats["after_end"]
    if stats["margin_above"]:
        warn_margin_above_amount(label, stats["margin_above"], bool(mapping.cost))
    if observation_end < first_date:
        raise InputDataError(
            f"{label}: observation end (as-of date) {observation_end} is before the first transaction ({first_date})"
        )
    if after_end and validation.rows_after_observation_end == "fail":
        check = after_observation_end_check(settings, observation_end)
        raise InputDataError(_row_error(raw, settings, label, check, after_end))
    if used == 0 or last_date is None:
        raise InputDataError(f"{label}: no usable rows on or before observation_end {observation_end}")
    check_freshness(label, last_date, observation_end, validation)
    transactions = typed.where(usable).select(
        "customer_id", "order_date", "amount", "margin", "channel", "acquisition_cost"
    )
    log = LogSummary(
        source=label,
        rows_read=stats["rows"],
        rows_used=used,
        customers=customers,
        first_date=first_date,
        last_date=last_date,
        observation_end=observation_end,
        negative_amount_rows_dropped=stats["negative"] if drop_negative else 0,
        rows_after_observation_end=after_end,
        has_margin=margin_source is not None,
        has_channel=mapping.channel is not None,
        has_acquisition_cost=mapping.acquisition_cost is not None,
        future_rows_dropped=stats["future"],
        margin_above_amount_rows=stats["margin_above"],
    )
    return transactions, log


# ---------------------------------------------------------------------------------------------
# Features


def period_index(date: Column, period: PeriodSettings) -> Column:
    """The integer index of the period ``date`` falls in; consecutive periods differ by 1.

    The periods of the DuckDB engine's ``pipeline.stages.sorted_log.period_index``, whose month
    indices count from 1970 rather than from year 0: only differences of indices reach the features.
    """
    if period.resolution == "daily" or period.unit == "day":
        return F.datediff(date, F.lit(_EPOCH))
    if period.unit == "week":
        # Monday-to-Sunday weeks counted from Monday 1970-01-05 (floor: earlier dates too).
        return F.floor(F.datediff(date, F.lit(_EPOCH_MONDAY)) / 7).cast("int")
    return F.year(date) * 12 + F.month(date) - 1


def period_index_of(date: dt.date, period: PeriodSettings) -> int:
    """:func:`period_index` of one date, in Python (for the split dates)."""
    if period.resolution == "daily" or period.unit == "day":
        return (date - _EPOCH).days
    if period.unit == "week":
        return (date - _EPOCH_MONDAY).days // 7
    return date.year * 12 + date.month - 1


def _exact(column: Column) -> Column:
    """``CAST(column AS DECIMAL(18, 6))`` computed as DuckDB computes it (see :data:`EXACT`)."""
    micros = F.round(column * float(_MICROS)).cast(T.DecimalType(18, 0))
    return (micros * F.lit(Decimal(1).scaleb(-6))).cast(EXACT)


def _calibration_table(
    transactions: DataFrame,
    period: PeriodSettings,
    split_end: dt.date,
    with_margin: bool,
    with_channel: bool,
    with_acquisition_cost: bool,
) -> DataFrame:
    """Per-customer summary up to ``split_end``: the calibration features of ``pipeline/stages/sorted_log.py``."""
    col = F.col
    divisor = F.lit(float(period.index_divisor))
    period_aggregates = [
        F.sum(_exact(col("amount"))).alias("amount"),
        F.count(F.lit(1)).alias("transactions"),
        F.min("order_date").alias("first_date"),
    ]
    customer_extra = []
    if with_margin:
        period_aggregates.append(F.sum(_exact(col("margin"))).alias("margin"))
        customer_extra.append(F.sum("margin").cast("double").alias("total_margin"))
    if with_channel:
        # DuckDB's arg_min(channel, (order_date, channel)) skips NULL channels; of the rest it
        # takes the earliest day, ties broken by name. The smallest (date, channel) pair is that
        # row in a period and, periods being ordered like their dates, across periods too.
        first = F.when(col("channel").isNotNull(), F.struct("order_date", "channel"))
        period_aggregates.append(F.min(first).alias("channel"))
        customer_extra.append(F.min("channel").getField("channel").alias("first_channel"))
    if with_acquisition_cost:
        period_aggregates.append(F.max("acquisition_cost").alias("acquisition_cost"))
        customer_extra.append(F.max("acquisition_cost").alias("acquisition_cost"))
    periods = (
        transactions.where(col("order_date") <= F.lit(split_end))
        .groupBy("customer_id", period_index(col("order_date"), period).alias("period"))
        .agg(*period_aggregates)
    )
    count = F.count(F.lit(1))
    repeat_total = (F.sum("amount") - F.min_by("amount", "period")).cast("double")
    return periods.groupBy("customer_id").agg(
        (count - 1).cast("long").alias("frequency"),
        ((F.max("period") - F.min("period")) / divisor).alias("recency"),
        ((F.lit(period_index_of(split_end, period)) - F.min("period")) / divisor).alias("T"),
        F.when(count > 1, repeat_total / (count - 1)).otherwise(F.lit(0.0)).alias("monetary_value"),
        F.min("first_date").alias("first_purchase_date"),
        F.sum("transactions").cast("long").alias("n_transactions"),
        F.sum("amount").cast("double").alias("total_amount"),
        *customer_extra,
    )


def features(
    transactions: DataFrame,
    settings: FeatureSettings,
    observation_end: dt.date,
    calibration_end: dt.date | None = None,
    with_margin: bool = False,
    with_channel: bool = False,
    with_acquisition_cost: bool = False,
) -> tuple[DataFrame, DataFrame | None]:
    """Per-customer features at ``observation_end`` and, with a calibration end, at that date.

    Column for column the DuckDB engine's features and calibration tables
    (``pipeline.stages.sorted_log.summarize_sorted_log``: names, order, types, values), sorted
    by customer id.

    Parameters
    ----------
    transactions : pyspark.sql.DataFrame
        The validated log of :func:`read_transactions`.
    settings : FeatureSettings
        Only ``period`` is read here; resolve the split dates with
        :func:`pipeline.stages.features.resolve_calibration_end` (or use :func:`compute_features`).
    observation_end, calibration_end : datetime.date
        The end of the data and, optionally, of the calibration period.
    with_margin, with_channel, with_acquisition_cost : bool
        Whether the log has these columns (``LogSummary.has_*``).

    Returns
    -------
    features : pyspark.sql.DataFrame
        At the observation end, for valuing and scoring.
    calibration : pyspark.sql.DataFrame or None
        At the calibration end with ``frequency_holdout``, ``monetary_value_holdout``,
        ``revenue_holdout`` and ``duration_holdout``, for the backtest.
    """
    period = settings.period
    extra = (with_margin, with_channel, with_acquisition_cost)
    full = _calibration_table(transactions, period, observation_end, *extra).orderBy("customer_id")
    if calibration_end is None:
        return full, None
    col = F.col
    calibration = _calibration_table(transactions, period, calibration_end, *extra)
    # Distinct periods by grouping on them first: one shuffle, where count(DISTINCT) next to
    # other aggregates would make Spark expand every row.
    holdout_periods = (
        transactions.where((col("order_date") > F.lit(calibration_end)) & (col("order_date") <= F.lit(observation_end)))
        .groupBy("customer_id", period_index(col("order_date"), period).alias("period"))
        .agg(F.sum(_exact(col("amount"))).alias("amount"), F.count(F.lit(1)).alias("transactions"))
    )
    revenue = F.sum("amount").cast("double")
    holdout = holdout_periods.groupBy("customer_id").agg(
        F.count(F.lit(1)).alias("periods"),
        revenue.alias("revenue"),
        (revenue / F.sum("transactions")).alias("mean_transaction"),
    )
    duration = (period_index_of(observation_end, period) - period_index_of(calibration_end, period)) / float(
        period.index_divisor
    )
    with_holdout = (
        calibration.join(holdout, "customer_id", "left")
        .select(
            *[calibration[name] for name in calibration.columns],
            F.coalesce(col("periods"), F.lit(0)).cast("long").alias("frequency_holdout"),
            F.coalesce(col("mean_transaction"), F.lit(0.0)).alias("monetary_value_holdout"),
            F.coalesce(col("revenue"), F.lit(0.0)).alias("revenue_holdout"),
            F.lit(duration).alias("duration_holdout"),
        )
        .orderBy("customer_id")
    )
    return full, with_holdout


def repeat_purchases(transactions: DataFrame, period: PeriodSettings) -> DataFrame:
    """Repeat purchases (at the model's resolution) per calendar day, as the DuckDB engine counts them.

    That is ``pipeline.stages.sorted_log``'s ``repeat_purchases`` column (``_Chunk.add_repeat_purchases``).
    """
    col = F.col
    periods = transactions.groupBy("customer_id", period_index(col("order_date"), period).alias("period")).agg(
        F.min("order_date").alias("first_date")
    )
    first_period = F.min("period").over(Window.partitionBy("customer_id"))
    return (
        periods.withColumn("first_period", first_period)
        .where(col("period") > col("first_period"))
        .groupBy(col("first_date").alias("date"))
        .agg(F.count(F.lit(1)).alias("repeat_purchases"))
        .orderBy("date")
    )


@dataclasses.dataclass(frozen=True)
class SparkFeatures:
    """The features stage on Spark: lazy DataFrames plus what describes them.

    Nothing is computed until an action (a write, :meth:`collect`) runs; each action reads the
    log again unless ``transactions`` is cached.
    """

    transactions: DataFrame
    features: DataFrame
    calibration: DataFrame | None
    repeat_purchases: DataFrame
    log: LogSummary
    observation_end: dt.date
    calibration_end: dt.date | None

    def collect(self) -> FeaturesResult:
        """The tables on the driver as Arrow, exactly as the DuckDB engine returns them.

        For logs whose features fit in the driver's memory (a few hundred bytes a customer);
        otherwise write the DataFrames and use :func:`unique_statistics` for the fit.
        """
        # Three tables from one read of the log: cache it for the while, unless the caller has.
        cached_here = self.transactions.storageLevel == StorageLevel.NONE
        if cached_here:
            self.transactions.persist()
        try:
            return FeaturesResult(
                features=_to_arrow(self.features),
                calibration=None if self.calibration is None else _to_arrow(self.calibration),
                repeat_purchases=_to_arrow(self.repeat_purchases),
                log=self.log,
                observation_end=self.observation_end,
                calibration_end=self.calibration_end,
            )
        finally:
            if cached_here:
                self.transactions.unpersist()


def _to_arrow(frame: DataFrame) -> pa.Table:
    table = frame.toArrow()
    # The schema DuckDB's tables have: every column nullable, plain (32-bit offset) strings.
    fields = [
        pa.field(field.name, pa.string() if pa.types.is_large_string(field.type) else field.type)
        for field in table.schema
    ]
    return table.cast(pa.schema(fields))


def compute_features(
    spark: SparkSession,
    transactions: str | Path | DataFrame,
    input_settings: InputSettings,
    settings: FeatureSettings,
    validation: ValidationSettings | None = None,
) -> SparkFeatures:
    """Read, validate and summarise a log on Spark: ``pipeline.stages.features.compute_features``."""
    frame, log = read_transactions(
        spark, transactions, input_settings, validation or ValidationSettings(), settings.observation_end
    )
    calibration_end = resolve_calibration_end(
        settings, log.first_date, log.observation_end, (validation or ValidationSettings()).max_holdout_share
    )
    full, calibration = features(
        frame, settings, log.observation_end, calibration_end,
        with_margin=log.has_margin, with_channel=log.has_channel, with_acquisition_cost=log.has_acquisition_cost,
    )
    return SparkFeatures(
        transactions=frame,
        features=full,
        calibration=calibration,
        repeat_purchases=repeat_purchases(frame, settings.period),
        log=log,
        observation_end=log.observation_end,
        calibration_end=calibration_end,
    )


def features_from_config(
    spark: SparkSession, config: Config, source: str | Path | DataFrame | None = None
) -> SparkFeatures:
    """Features for a whole config on Spark (its input unless ``source`` is given)."""
    return compute_features(
        spark, source if source is not None else config.input.path, config.input, config.features, config.validation
    )


# ---------------------------------------------------------------------------------------------
# What the single-machine fit needs


def unique_statistics(features_df: DataFrame) -> pd.DataFrame:
    """The unique ``(frequency, recency, T)`` rows with their number of customers, on the driver.

    The purchase models depend on a customer only through these three numbers, and there are
    few distinct combinations however many customers there are (bounded by the number of
    periods cubed; tens of thousands in practice). Rows come in the order of their first
    customer by id, which is the order ``models._validation.unique_rows`` meets them in a
    features table sorted by customer id, so a fit on :func:`purchase_fit_frame` adds up the
    likelihood in the same order and gives bit-identical parameters.

    Returns
    -------
    pandas.DataFrame
        Columns ``frequency`` (int64), ``recency``, ``T`` (float64) and ``customers`` (int64).
    """
    grouped = (
        features_df.groupBy("frequency", "recency", "T")
        .agg(F.count(F.lit(1)).alias("customers"), F.min("customer_id").alias("first_customer"))
        .orderBy("first_customer")
        .drop("first_customer")
    )
    return grouped.toPandas()


def purchase_fit_frame(statistics: pd.DataFrame) -> pd.DataFrame:
    """One row per customer rebuilt from :func:`unique_statistics`, for the purchase models' ``fit``.

    The estimators take one row per customer and group them again; this frame has 24 bytes a
    customer (three float64/int64 columns), e.g. about 440 MB for 18 million customers, and no
    customer ids (a fit does not use them).
    """
    counts = statistics["customers"].to_numpy()
    columns = ("frequency", "recency", "T")
    return pd.DataFrame({name: np.repeat(statistics[name].to_numpy(), counts) for name in columns})


def spend_fit_frame(features_df: DataFrame) -> pd.DataFrame:
    """``frequency`` and ``monetary_value`` of the customers Gamma-Gamma is fitted on, on the driver.

    Only repeat customers with a positive spend enter the fit (``GammaGammaModel.fit`` drops the
    rest); their spends are mostly distinct, so they are collected one row each, 16 bytes plus
    the id a customer, sorted by id like the DuckDB features so the fit is bit-identical.
    """
    repeaters = features_df.where((F.col("frequency") > 0) & (F.col("monetary_value") > 0))
    frame = repeaters.select("customer_id", "frequency", "monetary_value").orderBy("customer_id").toPandas()
    return frame.set_index("customer_id")


# ---------------------------------------------------------------------------------------------
# Batch scoring


def score_schema(features_schema: T.StructType) -> T.StructType:
    """The scored rows: customer id, the model features and :data:`SCORE_COLUMNS` (as ``customers.parquet``)."""
    fields = [features_schema["customer_id"]]
    fields += [features_schema[name] for name in FEATURE_COLUMNS]
    fields += [
        T.StructField(name, T.StringType() if name in ("tier", "action") else T.DoubleType())
        for name in SCORE_COLUMNS
    ]
    return T.StructType(fields)


def _broadcast(spark: SparkSession, value: Any) -> tuple[Callable[[], Any], Callable[[], None]]:
    """Ship ``value`` to the executors once; Spark Connect has no broadcast, so use the closure there."""
    try:
        handle = spark.sparkContext.broadcast(value)
    except PySparkException:
        return (lambda: value), (lambda: None)
    return (lambda: handle.value), handle.destroy


def score(
    features_df: DataFrame,
    scorer: Any,
    output_dir: str | Path,
    constant_columns: dict[str, Any] | None = None,
) -> Path:
    """Score every customer with a fitted scorer on the executors and write Parquet partitions.

    Parameters
    ----------
    features_df : pyspark.sql.DataFrame
        Features as :func:`features` returns them (at least ``customer_id``, the model
        features, ``n_transactions`` and ``total_amount``; ``total_margin``,
        ``acquisition_cost`` and ``first_channel`` are used when present).
    scorer : pipeline.stages.value.CustomerValueScorer
        Small and picklable: broadcast once, applied to each Arrow batch with ``mapInPandas``.
        Executors need this project installed (local masters share the driver's interpreter).
    output_dir : str or Path
        The Parquet dataset directory to create (replaced if it exists). It is written beside
        as a temporary directory and renamed into place, so a failure leaves nothing behind;
        on a cluster it must be a filesystem path that every executor and the driver see.
    constant_columns : dict, optional
        Appended to every row, e.g. ``{"model_version": "3", "scored_at": ...}``, so an export
        can be traced to the model that made it.

    Returns
    -------
    Path
        ``output_dir``.
    """
    from pipeline.stages.value import score_customers

    check_feature_columns(features_df.columns, "features")
    # Only what the scorer reads crosses to Python.
    needed = features_df.select(*[c for c in REQUIRED_FEATURES + OPTIONAL_FEATURES if c in features_df.columns])
    schema = score_schema(needed.schema)
    names = schema.fieldNames()
    scorer_value, release = _broadcast(features_df.sparkSession, scorer)

    def score_batches(batches):
        model = scorer_value()
        for batch in batches:
            if batch.empty:
                continue
            frame = batch.set_index("customer_id")
            # The scoring core on the batch's own unique histories: nothing leaves the executor.
            yield frame[FEATURE_COLUMNS].join(score_customers(model, frame)).reset_index()[names]

    scored = needed.mapInPandas(score_batches, schema)
    for name, value in (constant_columns or {}).items():
        scored = scored.withColumn(name, F.lit(value))

    target = Path(output_dir)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
    try:
        scored.write.mode("errorifexists").parquet(str(staging))
        _replace_directory(staging, target)
    except PythonException as exc:
        shutil.rmtree(staging, ignore_errors=True)
        message = _user_error(exc)
        if message is None:
            raise
        raise InputDataError(message) from None
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    finally:
        release()
    return target


def _replace_directory(new: Path, target: Path) -> None:
    if not target.exists():
        os.replace(new, target)
        return
    # A directory cannot be renamed over a non-empty one: move the old one aside first.
    old = target.with_name(f".{target.name}.{uuid.uuid4().hex}.old")
    os.replace(target, old)
    try:
        os.replace(new, target)
    except BaseException:
        os.replace(old, target)
        raise
    shutil.rmtree(old, ignore_errors=True)


def _user_error(exc: PythonException) -> str | None:
    """The one-line message of a user error the scorer raised on an executor, if it was one.

    Executors' exceptions come back as text (the worker's traceback), not as objects.
    """
    match = re.search(r"pipeline\.errors\.(?:InputDataError|ConfigError): (.+)", str(exc))
    return match.group(1).strip() if match else None
