"""Features stage: per-customer RFM summary (and calibration/holdout split) in DuckDB SQL.

Definitions are exactly lifetimes' ``summary_data_from_transaction_data`` /
``calibration_and_holdout_data`` (Fader, Hardie & Lee 2005 conventions):

* purchases are counted at most once per period (a day at daily resolution, a calendar
  week/month otherwise); same-period amounts are summed;
* ``frequency`` = number of periods with a purchase after the first one;
* ``recency`` = age (in periods) at the last purchase; ``T`` = age at the observation end;
* ``monetary_value`` = mean of the repeat periods' totals (0 for one-time buyers).

In the holdout, ``frequency_holdout`` counts periods with a purchase and
``monetary_value_holdout`` is — as in lifetimes — the mean of the holdout *transactions*
(not of period totals); ``revenue_holdout / frequency_holdout`` gives the period-total mean
that is comparable with Gamma-Gamma's expected spend.

The SQL streams from CSV/Parquet, so logs larger than memory work (DuckDB spills).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from pathlib import Path

import duckdb
import pandas as pd
import pyarrow as pa

from pipeline.config import Config, FeatureSettings, InputSettings, PeriodSettings, ValidationSettings
from pipeline.errors import InputDataError
from pipeline.io import connect, fetch_arrow
from pipeline.transactions import TRANSACTIONS_VIEW, LogSummary, load_transactions

# The purchase models' inputs (models' PURCHASE_COLUMNS, not imported: that would load scikit-learn
# and lifetimes into every features run).
HISTORY_COLUMNS = ["frequency", "recency", "T"]
FEATURE_COLUMNS = [*HISTORY_COLUMNS, "monetary_value"]
HOLDOUT_COLUMNS = ["frequency_holdout", "monetary_value_holdout", "revenue_holdout", "duration_holdout"]

_EPOCH_MONDAY = "DATE '1970-01-05'"

# Sums of doubles depend on the order threads add them in, so a rerun could differ in the
# last bits. Summing as fixed-point decimals (1e-6 resolution) is exact and order-free.
EXACT = "DECIMAL(18, 6)"
# Calibration-period features share the query with the full ones under this prefix.
CALIBRATION_PREFIX = "calibration__"



def period_index_sql(date_sql: str, period: PeriodSettings) -> str:
    """SQL for the integer index of the period a date falls in (consecutive periods differ by 1)."""
    if period.resolution == "daily" or period.unit == "day":
        return f"date_diff('day', DATE '1970-01-01', {date_sql})"
    if period.unit == "week":
        # ISO weeks start on Monday, as pandas' 'W' (= W-SUN, Monday–Sunday) periods do.
        return f"(date_diff('day', {_EPOCH_MONDAY}, date_trunc('week', {date_sql})) // 7)"
    return f"(year({date_sql}) * 12 + month({date_sql}) - 1)"


def _date_literal(value: dt.date) -> str:
    return f"DATE '{value.isoformat()}'"


@dataclasses.dataclass(frozen=True)
class FeaturesResult:
    """The stage's tables plus what describes them.

    ``features`` are at the observation end (what the value stage and scoring use);
    ``calibration`` (when a calibration end is set) are at the calibration end with the
    holdout columns (what the backtest fits on); ``repeat_purchases`` counts repeat
    purchases per day over the whole log (for tracking plots).
    """

    features: pa.Table
    calibration: pa.Table | None
    repeat_purchases: pa.Table
    log: LogSummary
    observation_end: dt.date
    calibration_end: dt.date | None

    def features_frame(self, indexed: bool = True) -> pd.DataFrame:
        """The features as pandas, indexed by customer id (``indexed=False``: a column, see ``_frame``)."""
        return _frame(self.features, indexed)

    def calibration_frame(self, indexed: bool = True) -> pd.DataFrame:
        if self.calibration is None:
            raise ValueError("no calibration_end was set, so there are no calibration features")
        return _frame(self.calibration, indexed)


def _frame(table: pa.Table, indexed: bool = True) -> pd.DataFrame:
    if not indexed:
        # The history columns as one contiguous chunk each, which pandas wraps without copying
        # (the copy happens here instead of in to_pandas): read-only, so the models can reuse
        # their grouping of customers into histories across a run's calls
        # (models._validation.unique_rows). Only these three: combining every column cost 6 s
        # at 18M customers.
        for name in HISTORY_COLUMNS:
            if name in table.column_names:
                position = table.schema.get_field_index(name)
                table = table.set_column(position, name, pa.chunked_array([table[name].combine_chunks()]))
    # split_blocks avoids consolidating columns into one 2-D block (a second full copy).
    frame = table.to_pandas(split_blocks=True)
    # Unindexed, customer_id stays an Arrow-backed column and rows are aligned by position:
    # at 18M customers every join, reindex or difference on a string index converted it to
    # Python objects (gigabytes, seconds each). The pipeline works this way; people and tests
    # get the customer index.
    return frame.set_index("customer_id") if indexed else frame


def resolve_calibration_end(
    settings: FeatureSettings, first_date: dt.date, observation_end: dt.date
) -> dt.date | None:
    """The calibration end from the settings, checked to lie strictly inside the data."""
    calibration_end = settings.calibration_end
    if settings.holdout_periods is not None:
        days = settings.holdout_periods * settings.period.days_per_unit
        calibration_end = observation_end - dt.timedelta(days=round(days))
    if calibration_end is None:
        return None
    if not first_date <= calibration_end < observation_end:
        raise InputDataError(
            f"features.calibration_end {calibration_end} is outside the data: it must be on or after "
            f"the first transaction ({first_date}) and before observation_end ({observation_end})"
        )
    return calibration_end


def _customer_columns(
    period: PeriodSettings,
    end: dt.date,
    in_window: str,
    with_margin: bool,
    with_channel: bool,
    with_acquisition_cost: bool,
    prefix: str = "",
) -> list[str]:
    """Per-customer aggregates over the marked rows for which ``in_window`` holds, named ``prefix`` + name."""
    divisor = repr(float(period.index_divisor))
    end_index = period_index_sql(_date_literal(end), period)
    periods = f"count(*) FILTER (WHERE starts_period AND {in_window})"
    amount = f"sum(CAST(amount AS {EXACT})) FILTER (WHERE {in_window})"
    first_amount = f"sum(CAST(amount AS {EXACT})) FILTER (WHERE period = first_period)"
    columns = [
        f"CAST({periods} - 1 AS BIGINT) AS {prefix}frequency",
        f"(max(period) FILTER (WHERE {in_window}) - min(first_period)) / {divisor} AS {prefix}recency",
        f"({end_index} - min(first_period)) / {divisor} AS {prefix}T",
        f"CASE WHEN {periods} > 1 THEN CAST({amount} - {first_amount} AS DOUBLE) / ({periods} - 1)"
        f" ELSE 0.0 END AS {prefix}monetary_value",
        f"min(order_date){'' if in_window == 'TRUE' else f' FILTER (WHERE {in_window})'} AS {prefix}first_purchase_date",
        f"count(*) FILTER (WHERE {in_window}) AS {prefix}n_transactions",
        f"CAST({amount} AS DOUBLE) AS {prefix}total_amount",
    ]
    if with_margin:
        columns.append(f"CAST(sum(CAST(margin AS {EXACT})) FILTER (WHERE {in_window}) AS DOUBLE) AS {prefix}total_margin")
    if with_channel:
        # The first purchase's channel (rows without one skipped); ties on that day are broken
        # by name, deterministically.
        columns.append(f"arg_min(channel, (order_date, channel)) FILTER (WHERE {in_window}) AS {prefix}first_channel")
    if with_acquisition_cost:
        columns.append(f"max(acquisition_cost) FILTER (WHERE {in_window}) AS {prefix}acquisition_cost")
    return columns




def features_sql(
    period: PeriodSettings,
    observation_end: dt.date,
    calibration_end: dt.date | None = None,
    with_margin: bool = False,
    with_channel: bool = False,
    with_acquisition_cost: bool = False,
    source: str = TRANSACTIONS_VIEW,
    with_repeat_purchases: bool = False,
) -> str:
    """SQL of the features in one pass over a typed transactions relation ``source``.

    Each customer's rows are ordered by date in a window, and the first row of every period is
    marked (its period differs from the previous row's). Counting marked rows gives the
    periods without a (customer, period) hash aggregate, which on CDNOW-like logs holds about
    one entry per row (49.5M periods from 50M rows) and dominated time and memory.

    Output columns: ``customer_id`` and the features at the observation end; with
    ``calibration_end`` also the features at the calibration end (names prefixed with
    :data:`CALIBRATION_PREFIX`), the holdout columns and ``in_calibration`` (the customer bought
    by the calibration end), split apart by :func:`split_calibration`; with
    ``with_repeat_purchases``, extra rows with a NULL ``customer_id`` carry per-day repeat
    purchases (``date``, ``repeat_purchases``) from the same pass (GROUPING SETS).
    """
    obs = _date_literal(observation_end)
    index = period_index_sql("order_date", period)
    extras = [c for c, on in (("margin", with_margin), ("channel", with_channel),
                                ("acquisition_cost", with_acquisition_cost)) if on]
    marks = [
        f"{index} IS DISTINCT FROM lag({index}) OVER customer_dates AS starts_period",
        f"first_value({index}) OVER customer_dates AS first_period",
    ]
    flags = dict(with_margin=with_margin, with_channel=with_channel, with_acquisition_cost=with_acquisition_cost)
    columns = _customer_columns(period, observation_end, "TRUE", **flags)
    if calibration_end is not None:
        cal = _date_literal(calibration_end)
        # A calendar period can straddle the calibration end: its holdout part starts a
        # holdout period of its own, as lifetimes counts the holdout separately.
        marks.append(
            f"order_date > {cal} AND ({index} IS DISTINCT FROM lag({index}) OVER customer_dates"
            f" OR lag(order_date) OVER customer_dates <= {cal}) AS starts_holdout_period"
        )
        # Both feature sets from the one sorted window: the sort of every transaction by
        # customer and date is most of the cost, and a second query repeated it (50M rows:
        # 47 s for the two queries).
        columns += _customer_columns(period, calibration_end, f"order_date <= {cal}", **flags, prefix=CALIBRATION_PREFIX)
        holdout_amount = f"sum(CAST(amount AS {EXACT})) FILTER (WHERE order_date > {cal})"
        holdout_rows = f"count(*) FILTER (WHERE order_date > {cal})"
        duration = (
            f"({period_index_sql(obs, period)} - {period_index_sql(cal, period)}) / {float(period.index_divisor)!r}"
        )
        columns += [
            "count(*) FILTER (WHERE starts_holdout_period) AS frequency_holdout",
            f"coalesce(CAST({holdout_amount} AS DOUBLE) / nullif({holdout_rows}, 0), 0.0) AS monetary_value_holdout",
            f"coalesce(CAST({holdout_amount} AS DOUBLE), 0.0) AS revenue_holdout",
            f"{duration} AS duration_holdout",
            f"min(order_date) <= {cal} AS in_calibration",
        ]
    grouping = "GROUP BY customer_id"
    order = "ORDER BY customer_id"
    if with_repeat_purchases:
        columns += [
            "order_date AS date",
            "count(*) FILTER (WHERE starts_period AND period <> first_period) AS repeat_purchases",
        ]
        grouping = "GROUP BY GROUPING SETS ((customer_id), (order_date))"
        order = "ORDER BY customer_id NULLS LAST, date"
    extra_sql = "".join(f", {c}" for c in extras)
    body = ",\n               ".join(columns)
    return f"""
        WITH marked AS (
            SELECT customer_id, order_date, amount{extra_sql}, {index} AS period,
                   {", ".join(marks)}
            FROM {source}
            WHERE order_date <= {obs}
            WINDOW customer_dates AS (PARTITION BY customer_id ORDER BY order_date)
        )
        SELECT customer_id,
               {body}
        FROM marked
        {grouping}
        {order}"""


def split_repeat_purchases(combined: pa.Table) -> tuple[pa.Table, pa.Table]:
    """Split a ``with_repeat_purchases`` result into the features and the per-day table."""
    import pyarrow.compute as pc

    count = combined.num_rows - combined["customer_id"].null_count
    # Customer rows sort first (NULLS LAST): slices share buffers, nothing is copied.
    features = combined.slice(0, count).drop_columns(["date", "repeat_purchases"])
    per_day = combined.slice(count).select(["date", "repeat_purchases"])
    return features, per_day.filter(pc.greater(per_day["repeat_purchases"], 0))


def split_calibration(combined: pa.Table) -> tuple[pa.Table, pa.Table]:
    """Split a result of ``features_sql(..., calibration_end)`` into features and calibration tables.

    The calibration table has the customers who bought by the calibration end (as lifetimes'
    ``calibration_and_holdout_data``), with unprefixed feature names and the holdout columns.
    """
    names = combined.column_names
    calibration_names = [n for n in names if n.startswith(CALIBRATION_PREFIX)]
    features = combined.select([n for n in names if n not in [*calibration_names, *HOLDOUT_COLUMNS, "in_calibration"]])
    calibration = combined.select(["customer_id", *calibration_names, *HOLDOUT_COLUMNS]).filter(combined["in_calibration"])
    calibration = calibration.rename_columns(
        ["customer_id", *(n.removeprefix(CALIBRATION_PREFIX) for n in calibration_names), *HOLDOUT_COLUMNS]
    )
    return features, calibration


def build_features(
    con: duckdb.DuckDBPyConnection,
    log: LogSummary,
    settings: FeatureSettings,
) -> FeaturesResult:
    """Compute the features table from the validated ``transactions`` view on ``con``."""
    observation_end = log.observation_end
    calibration_end = resolve_calibration_end(settings, log.first_date, observation_end)
    columns = {
        "with_margin": log.has_margin,
        "with_channel": log.has_channel,
        "with_acquisition_cost": log.has_acquisition_cost,
    }
    sql = features_sql(settings.period, observation_end, calibration_end, with_repeat_purchases=True, **columns)
    features, repeat_purchases = split_repeat_purchases(fetch_arrow(con, sql))
    calibration = None
    if calibration_end is not None:
        features, calibration = split_calibration(features)
    log = dataclasses.replace(log, customers=features.num_rows)
    return FeaturesResult(
        features=features,
        calibration=calibration,
        repeat_purchases=repeat_purchases,
        log=log,
        observation_end=observation_end,
        calibration_end=calibration_end,
    )


def compute_features(
    transactions: str | Path | pd.DataFrame,
    input_settings: InputSettings,
    settings: FeatureSettings,
    validation: ValidationSettings | None = None,
    threads: int | None = None,
) -> FeaturesResult:
    """Features of a log given as a path (CSV/Parquet/text) or a DataFrame: the Python API."""
    con = connect(threads=threads)
    try:
        log = load_transactions(
            con, transactions, input_settings, validation or ValidationSettings(), settings.observation_end
        )
        return build_features(con, log, settings)
    finally:
        con.close()


def features_from_config(config: Config, source: str | Path | pd.DataFrame | None = None) -> FeaturesResult:
    """Features for a whole config (its input unless ``source`` is given)."""
    return compute_features(
        source if source is not None else config.input.path,
        config.input,
        config.features,
        config.validation,
    )
