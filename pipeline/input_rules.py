"""The rules of the input boundary, each declared once: both engines compile this table.

A rule says which rows of the typed log are bad (a condition over its columns
``customer_id, order_date, amount, margin, acquisition_cost, field_count``), which column the
message names (by its config role), and what the message says (from the raw values of the
first bad row: ``raw_date``, ``raw_amount``, ``field_count``). :data:`RULES` lists them in the
order they are checked: a file that breaks several reports the first. Which rules apply
depends on the config (``validation.*`` and the optional columns); :func:`checks` gives the
ones that do for a run, and each engine turns their conditions into its own expressions:
:meth:`Check.duckdb_condition` (SQL text) and :meth:`Check.spark_condition` (a Spark Column).

Conditions are written with :class:`Expr`, a few operators and functions that hold both
engines' forms side by side, so a condition cannot say one thing in SQL and another in Spark.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import operator
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from pipeline.config import InputSettings, ValidationSettings

if TYPE_CHECKING:
    from pyspark.sql import Column

# Amounts are summed as DECIMAL(18, 6) (exact, order-free): larger values cannot be held. Every
# double below 1e12 fits when DuckDB or Spark rounds it to 6 decimals (the largest,
# 999999999999.99988, is 999,999,999,999,999,872 micro-units), so |x| < 1e12 is the whole rule.
MAX_AMOUNT = 1e12

# The raw values of a bad row that messages may read (the engines fetch these for the first one).
RAW_FIELDS = ("raw_date", "raw_amount", "field_count")

Row = Mapping[str, Any]


# ---------------------------------------------------------------------------------------------
# Conditions in both engines' forms


def _spark_functions():
    # Imported when a Spark form is built: the DuckDB engine runs without pyspark installed.
    from pyspark.sql import functions

    return functions


class Expr:
    """A value or condition over the typed log: DuckDB SQL text and the Spark Column it stands for.

    The Spark form is built on demand (:meth:`spark`), so the DuckDB engine never imports pyspark.
    """

    def __init__(self, sql: str, spark: Callable[[], Column]):
        self.sql = sql
        self._spark = spark

    def spark(self) -> Column:
        return self._spark()

    def __or__(self, other: Expr) -> Expr:
        return Expr(f"({self.sql} OR {other.sql})", lambda: self.spark() | other.spark())

    def __and__(self, other: Expr) -> Expr:
        return Expr(f"({self.sql} AND {other.sql})", lambda: self.spark() & other.spark())

    def __invert__(self) -> Expr:
        return Expr(f"(NOT {self.sql})", lambda: ~self.spark())

    def _compare(self, sql_operator: str, python_operator, other: Any) -> Expr:
        right = other if isinstance(other, Expr) else literal(other)
        return Expr(f"({self.sql} {sql_operator} {right.sql})", lambda: python_operator(self.spark(), right.spark()))

    def __lt__(self, other: Any) -> Expr:
        return self._compare("<", operator.lt, other)

    def __gt__(self, other: Any) -> Expr:
        return self._compare(">", operator.gt, other)

    def __ge__(self, other: Any) -> Expr:
        return self._compare(">=", operator.ge, other)

    def __ne__(self, other: object) -> Expr:  # type: ignore[override]  # a condition, as in Spark
        return self._compare("<>", operator.ne, other)

    def is_null(self) -> Expr:
        return Expr(f"({self.sql} IS NULL)", lambda: self.spark().isNull())

    def is_not_null(self) -> Expr:
        return Expr(f"({self.sql} IS NOT NULL)", lambda: self.spark().isNotNull())

    def is_nan(self) -> Expr:
        return Expr(f"isnan({self.sql})", lambda: _spark_functions().isnan(self.spark()))

    def is_infinite(self) -> Expr:
        return Expr(f"isinf({self.sql})", lambda: _spark_functions().abs(self.spark()) == float("inf"))

    def abs(self) -> Expr:
        return Expr(f"abs({self.sql})", lambda: _spark_functions().abs(self.spark()))


def column(name: str) -> Expr:
    """A column of the typed log (plain names only: these are the engines' own columns)."""
    return Expr(name, lambda: _spark_functions().col(name))


def literal(value: float | dt.date) -> Expr:
    """A number or a date."""
    if isinstance(value, dt.date):
        sql = f"DATE '{value.isoformat()}'"
    elif isinstance(value, int) and not isinstance(value, bool):
        sql = str(value)
    elif isinstance(value, float):  # numpy's float64 too, whose repr is not SQL
        sql = repr(float(value))
    else:
        raise TypeError(f"no literal for {value!r}")
    return Expr(sql, lambda: _spark_functions().lit(value))


def not_finite(value: Expr) -> Expr:
    """Empty (NULL), NaN or infinite."""
    return value.is_null() | value.is_nan() | value.is_infinite()


CUSTOMER_ID = column("customer_id")
ORDER_DATE = column("order_date")
AMOUNT = column("amount")
MARGIN = column("margin")
ACQUISITION_COST = column("acquisition_cost")
FIELD_COUNT = column("field_count")

# Also what the engines count with: rows in the future take no part when dropped, and rows
# with a margin above their amount are a counted warning unless validation makes them an error.
MARGIN_ABOVE_AMOUNT = MARGIN > AMOUNT


def dated_after(date: dt.date) -> Expr:
    """Rows dated after ``date`` (the latest possible date, or the observation end)."""
    return ORDER_DATE > date


# ---------------------------------------------------------------------------------------------
# Messages shared with the rest of the boundary


def future_rows_message(raw_date: str, latest: dt.date) -> str:
    return (f"'{raw_date}' is in the future (after {latest}, today's date in the earliest time zone); fix the row "
            "or set validation.future_dates: drop to drop such rows")


def margin_above_amount_message(margin_source_is_cost: bool) -> str:
    problem = "cost is negative" if margin_source_is_cost else "margin is above the amount"
    return f"{problem} (set validation.margin_above_amount: warn to keep such rows with a warning)"


# ---------------------------------------------------------------------------------------------
# The table


def configured_columns(settings: InputSettings) -> dict[str, str | None]:
    """The log's column for each config role (``input.columns.<role>``; None if not configured)."""
    mapping = settings.columns
    return {
        "customer_id": mapping.customer_id,
        "date": mapping.date,
        "amount": mapping.amount,
        "margin": mapping.margin,
        "cost": mapping.cost,
        "channel": mapping.channel,
        "acquisition_cost": mapping.acquisition_cost,
    }


@dataclasses.dataclass(frozen=True)
class RuleContext:
    """What the rules of one run depend on besides the row."""

    settings: InputSettings
    validation: ValidationSettings
    latest: dt.date  # the latest possible transaction date (``transactions.latest_possible_date``)
    expected_fields: int | None = None  # fields a line must have, for sources that count them

    @classmethod
    def for_source(
        cls, settings: InputSettings, validation: ValidationSettings, latest: dt.date,
        data_columns: list[str], counts_fields: bool,
    ) -> RuleContext:
        """The context of a source with ``data_columns``; ``counts_fields``: whitespace files, split per line."""
        expected = len(settings.names or data_columns) if counts_fields else None
        return cls(settings, validation, latest, expected)

    @property
    def margin_source(self) -> str | None:
        """The column margins come from: the margin column, else the cost column (margin = amount − cost)."""
        return self.settings.columns.margin or self.settings.columns.cost

    @property
    def margin_is_cost(self) -> bool:
        return self.settings.columns.margin is None and self.settings.columns.cost is not None

    def column_of(self, role: str | None) -> str | None:
        if role is None:
            return None
        if role == "margin":
            return self.margin_source
        return configured_columns(self.settings)[role]


@dataclasses.dataclass(frozen=True)
class Rule:
    """One rule of the input boundary, as declared in :data:`RULES`.

    ``reports`` is the config role of the column the message names (``"margin"``: the margin or
    cost column margins come from; None: the line as a whole). ``applies``, ``condition`` and
    ``message`` take the run's :class:`RuleContext`; ``message`` also the first bad row's raw values.
    """

    name: str
    reports: str | None
    condition: Callable[[RuleContext], Expr]
    message: Callable[[Row, RuleContext], str]
    applies: Callable[[RuleContext], bool] = lambda context: True


def _date_message(row: Row, context: RuleContext) -> str:
    if row["raw_date"] is None:
        return "date is empty"
    return f"'{row['raw_date']}' is not a date (format {context.settings.date_format})"


def _amount_message(row: Row, context: RuleContext) -> str:
    return "amount is empty" if row["raw_amount"] is None else f"'{row['raw_amount']}' is not a finite number"


def _has_margin(context: RuleContext) -> bool:
    return context.margin_source is not None


RULES: tuple[Rule, ...] = (
    Rule(
        "field_count", None,
        condition=lambda c: FIELD_COUNT.is_not_null() & (FIELD_COUNT != c.expected_fields),
        message=lambda r, c: f"has {r['field_count']} fields, expected {c.expected_fields}",
        applies=lambda c: c.expected_fields is not None,
    ),
    Rule("customer_id_empty", "customer_id", lambda c: CUSTOMER_ID.is_null(), lambda r, c: "customer id is empty"),
    Rule("date_not_a_date", "date", lambda c: ORDER_DATE.is_null(), _date_message),
    Rule("amount_not_finite", "amount", lambda c: not_finite(AMOUNT), _amount_message),
    Rule(
        "margin_not_finite", "margin",
        condition=lambda c: not_finite(MARGIN),
        message=lambda r, c: "margin/cost is empty or not a finite number",
        applies=_has_margin,
    ),
    Rule(
        # An empty acquisition cost is allowed: the configured CAC applies to that customer.
        "acquisition_cost_invalid", "acquisition_cost",
        condition=lambda c: (ACQUISITION_COST < 0) | ACQUISITION_COST.is_nan() | ACQUISITION_COST.is_infinite(),
        message=lambda r, c: "acquisition cost is negative or not a finite number",
        applies=lambda c: c.settings.columns.acquisition_cost is not None,
    ),
    Rule(
        "amount_too_large", "amount",
        condition=lambda c: AMOUNT.abs() >= MAX_AMOUNT,
        message=lambda r, c: f"{r['raw_amount']} is too large (amounts must be below {MAX_AMOUNT:,.0f})",
    ),
    Rule(
        "margin_too_large", "margin",
        condition=lambda c: MARGIN.abs() >= MAX_AMOUNT,
        message=lambda r, c: f"margin is too large (margins must be below {MAX_AMOUNT:,.0f})",
        applies=_has_margin,
    ),
    Rule(
        "negative_amount", "amount",
        condition=lambda c: AMOUNT < 0,
        message=lambda r, c: (
            f"negative amount {r['raw_amount']} (set validation.negative_amounts: drop to drop such rows)"
        ),
        applies=lambda c: c.validation.negative_amounts == "fail",
    ),
    Rule(
        "margin_above_amount", "margin",
        condition=lambda c: MARGIN_ABOVE_AMOUNT,
        message=lambda r, c: margin_above_amount_message(c.margin_is_cost),
        applies=lambda c: _has_margin(c) and c.validation.margin_above_amount == "fail",
    ),
    Rule(
        "future_date", "date",
        condition=lambda c: dated_after(c.latest),
        message=lambda r, c: future_rows_message(r["raw_date"], c.latest),
        applies=lambda c: c.validation.future_dates == "fail",
    ),
)


# ---------------------------------------------------------------------------------------------
# Rules as one run applies them


@dataclasses.dataclass(frozen=True)
class Check:
    """A rule bound to a run: the column it names, its condition, and its message for a row."""

    name: str
    column: str | None
    condition: Expr
    describe: Callable[[Row], str]

    def duckdb_condition(self) -> str:
        """The condition as DuckDB SQL over the typed view."""
        return self.condition.sql

    def spark_condition(self) -> Column:
        """The condition as a Spark Column over the typed DataFrame."""
        return self.condition.spark()

    def error(self, label: str, row: Row, bad_count: int, where: str | None = None) -> str:
        """The one-line message for the first bad row of ``bad_count``.

        ``where`` is ``"line N"`` (or ``"row N"`` of a DataFrame) where the engine knows it;
        Spark does not track line numbers.
        """
        place = ", ".join(part for part in (self.column and f"column '{self.column}'", where) if part)
        more = f" ({bad_count} such rows)" if bad_count > 1 else ""
        return f"{label}: {place + ': ' if place else ''}{self.describe(row)}{more}"


def _describer(rule: Rule, context: RuleContext) -> Callable[[Mapping[str, Any]], str]:
    """The message of ``rule`` for a raw row, in this run's context."""
    return lambda row: rule.message(row, context)


def checks(context: RuleContext) -> list[Check]:
    """The rules that apply to this run, in the order they are checked."""
    return [
        Check(rule.name, context.column_of(rule.reports), rule.condition(context), _describer(rule, context))
        for rule in RULES
        if rule.applies(context)
    ]


def after_observation_end_check(settings: InputSettings, observation_end: dt.date) -> Check:
    """Rows after an explicit observation end, when ``validation.rows_after_observation_end: fail``.

    Checked after the table's rules, once the observation end is known (the default is the
    log's last date, which no row is after).
    """
    return Check(
        "after_observation_end", settings.columns.date, dated_after(observation_end),
        lambda row: f"'{row['raw_date']}' is after observation_end {observation_end}",
    )
