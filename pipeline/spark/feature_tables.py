"""The features stage on Spark, and what the single-machine fit collects from it.

Column for column the features of ``pipeline/stages/sorted_log.py``, aggregated per customer
over the log of :func:`pipeline.spark.reading.read_transactions`; the fit's inputs
(:func:`unique_statistics`, :func:`purchase_fit_frame`, :func:`spend_fit_frame`) are small
summaries of these tables brought to the driver.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
from pyspark import StorageLevel
from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from pipeline.config import Config, FeatureSettings, InputSettings, PeriodSettings, ValidationSettings
from pipeline.spark.reading import read_transactions
from pipeline.stages.features import FeaturesResult, resolve_calibration_end
from pipeline.stages.sorted_log import MICRO_UNITS
from pipeline.transactions import LogSummary

# Amounts are summed as integer micro-units, as the DuckDB engine sums them
# (``pipeline/stages/sorted_log.py``): exact in any order, divided by 10⁶ only at the end. The
# units are DuckDB's CAST(x AS DECIMAL(18, 6)), which it computes as round-half-away-from-zero
# of x * 1e6 in double arithmetic; Spark's HALF_UP round of the same double product is that
# rounding (for values below 2^52), where Spark's own double-to-decimal cast rounds the
# shortest decimal string and differs for values such as 133.2532915. Sums of 64-bit integers
# also keep Spark off its arbitrary-precision decimal sums (DECIMAL(28, 6) buffers).

_EPOCH = dt.date(1970, 1, 1)
_EPOCH_MONDAY = dt.date(1970, 1, 5)


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


def _micros(column: Column) -> Column:
    """``CAST(CAST(column AS DECIMAL(18, 6)) * 1e6 AS BIGINT)`` as DuckDB computes it (see the note above)."""
    return F.round(column * float(MICRO_UNITS)).cast("long")


def _money(micros: Column) -> Column:
    """Micro-units as a double: ``pipeline.stages.sorted_log``'s ``_as_money``."""
    return micros.cast("double") / float(MICRO_UNITS)


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
        F.sum(_micros(col("amount"))).alias("amount"),
        F.count(F.lit(1)).alias("transactions"),
        F.min("order_date").alias("first_date"),
    ]
    customer_extra = []
    if with_margin:
        period_aggregates.append(F.sum(_micros(col("margin"))).alias("margin"))
        customer_extra.append(_money(F.sum("margin")).alias("total_margin"))
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
    repeat_total = _money(F.sum("amount") - F.min_by("amount", "period"))
    return periods.groupBy("customer_id").agg(
        (count - 1).cast("long").alias("frequency"),
        ((F.max("period") - F.min("period")) / divisor).alias("recency"),
        ((F.lit(period_index_of(split_end, period)) - F.min("period")) / divisor).alias("T"),
        F.when(count > 1, repeat_total / (count - 1)).otherwise(F.lit(0.0)).alias("monetary_value"),
        F.min("first_date").alias("first_purchase_date"),
        F.sum("transactions").cast("long").alias("n_transactions"),
        _money(F.sum("amount")).alias("total_amount"),
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
    (``pipeline.stages.sorted_log.summarize_sorted_log``: names, order, types, values), in no
    particular row order: a global sort of every customer cost two range-partitioned shuffles,
    and nothing downstream needs it (the fits order the distinct rows by their first customer
    id; :meth:`SparkFeatures.collect` sorts what it brings back).

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
    full = _calibration_table(transactions, period, observation_end, *extra)
    if calibration_end is None:
        return full, None
    col = F.col
    calibration = _calibration_table(transactions, period, calibration_end, *extra)
    # Distinct periods by grouping on them first: one shuffle, where count(DISTINCT) next to
    # other aggregates would make Spark expand every row.
    holdout_periods = (
        transactions.where((col("order_date") > F.lit(calibration_end)) & (col("order_date") <= F.lit(observation_end)))
        .groupBy("customer_id", period_index(col("order_date"), period).alias("period"))
        .agg(F.sum(_micros(col("amount"))).alias("amount"), F.count(F.lit(1)).alias("transactions"))
    )
    revenue = _money(F.sum("amount"))
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
            features = _to_arrow(self.features.orderBy("customer_id"))
            return FeaturesResult(
                features=features,
                calibration=None if self.calibration is None else _to_arrow(self.calibration.orderBy("customer_id")),
                repeat_purchases=_to_arrow(self.repeat_purchases),
                # Customers are counted with the features (as the DuckDB engine does).
                log=dataclasses.replace(self.log, customers=features.num_rows),
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
    """Read, validate and summarise a log on Spark: ``pipeline.duckdb_engine.compute_features``."""
    frame, log = read_transactions(
        spark, transactions, input_settings, validation or ValidationSettings(), settings.observation_end
    )
    calibration_end = resolve_calibration_end(
        settings, log.first_date, log.observation_end, (validation or ValidationSettings()).max_holdout_share
    )
    # Every table below aggregates per customer: partitioned by customer once (and cached so by
    # the writer), the log is shuffled once instead of twice for each of the four tables.
    frame = frame.repartition("customer_id")
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
    customer by id, which is the order ``models.group_histories`` meets them in a
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
