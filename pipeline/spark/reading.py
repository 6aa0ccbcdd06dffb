"""Reading and checking the log on Spark: ``pipeline/transactions.py``'s typed, validated log.

The raw file (CSV with a sniffed delimiter, whitespace-separated text or Parquet) is read with
every text column a string, typed as DuckDB types it (dates through :func:`parse_date`, the
strptime formats of ``input.date_format`` translated by :func:`spark_date_pattern`) and checked
against the input rules of ``pipeline/input_rules.py`` in one aggregation (:func:`read_transactions`).
"""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path, PurePosixPath

from pyspark.errors import PySparkException
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from pipeline.config import InputSettings, ValidationSettings, resolve_input_path
from pipeline.errors import ConfigError, InputDataError
from pipeline.input_rules import (
    MARGIN_ABOVE_AMOUNT,
    RAW_FIELDS,
    Check,
    RuleContext,
    checks,
    configured_columns,
    dated_after,
)
from pipeline.io import detect_format
from pipeline.transactions import LogSummary, ValidationCounts, latest_possible_date, summarize_counts

_NUMBER = r"^[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?$"
_NUMERIC_TYPES = (T.ByteType, T.ShortType, T.IntegerType, T.LongType, T.FloatType, T.DoubleType, T.DecimalType)
_TEMPORAL_TYPES = (T.DateType, T.TimestampType, T.TimestampNTZType)
_CANDIDATE_DELIMITERS = ",;\t|"

_POSITION = "__position"
_FIELD_COUNT = "__field_count"


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
    window_aggregates = [
        _count_where(present & ~in_window).alias("after_end"),
        _count_where(in_window & (col("amount") < 0)).alias("negative"),
        F.max(F.when(in_window, col("order_date"))).alias("window_last_date"),
        _count_where(present & MARGIN_ABOVE_AMOUNT.spark() if margin_source else F.lit(False)).alias(
            "margin_above"
        ),
    ]
    try:
        stats = typed.agg(*aggregates, *window_aggregates).head().asDict()
    except PySparkException as exc:
        raise InputDataError(f"{label}: cannot read: {_first_message_line(exc)}") from None
    counts = ValidationCounts(
        rows=stats["rows"], failing=[stats[f"check_{i}"] for i in range(len(rules))], future=stats["future"],
        first_date=stats["first_date"], last_present_date=stats["last_date"], after_end=stats["after_end"],
        negative=stats["negative"], last_date=stats["window_last_date"], margin_above=stats["margin_above"],
    )
    log = summarize_counts(
        label, counts, rules, lambda check, bad_count: _row_error(raw, settings, label, check, bad_count),
        settings, validation, observation_end, latest, margin_source is not None,
    )
    usable = present & (col("order_date") <= F.lit(log.observation_end))
    if drop_negative:
        usable &= col("amount") >= 0
    transactions = typed.where(usable).select(
        "customer_id", "order_date", "amount", "margin", "channel", "acquisition_cost"
    )
    return transactions, log
