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

FEATURE_COLUMNS = ["frequency", "recency", "T", "monetary_value"]
HOLDOUT_COLUMNS = ["frequency_holdout", "monetary_value_holdout", "revenue_holdout", "duration_holdout"]

_EPOCH_MONDAY = "DATE '1970-01-05'"

# Sums of doubles depend on the order threads add them in, so a rerun could differ in the
# last bits. Summing as fixed-point decimals (1e-6 resolution) is exact and order-free.
EXACT = "DECIMAL(18, 6)"


def _exact_sum(column: str) -> str:
    return f"sum(CAST({column} AS {EXACT}))"


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

    def features_frame(self) -> pd.DataFrame:
        return self.features.to_pandas().set_index("customer_id")

    def calibration_frame(self) -> pd.DataFrame:
        if self.calibration is None:
            raise ValueError("no calibration_end was set, so there are no calibration features")
        return self.calibration.to_pandas().set_index("customer_id")


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


def features_sql(
    period: PeriodSettings,
    observation_end: dt.date,
    calibration_end: dt.date | None = None,
    with_margin: bool = False,
    with_channel: bool = False,
    with_acquisition_cost: bool = False,
    source: str = TRANSACTIONS_VIEW,
) -> str:
    """The SQL of the features table over a typed transactions relation ``source``."""
    split_end = calibration_end or observation_end
    divisor = repr(float(period.index_divisor))
    index = period_index_sql("order_date", period)
    end_index = period_index_sql(_date_literal(split_end), period)
    extra_period = []
    extra_customer = []
    if with_margin:
        extra_period.append(f"{_exact_sum('margin')} AS margin")
        extra_customer.append("CAST(sum(margin) AS DOUBLE) AS total_margin")
    if with_channel:
        # Ties on the first day are broken by channel name so the result is deterministic.
        extra_period.append("arg_min(channel, (order_date, channel)) AS channel")
        extra_customer.append("arg_min(channel, period) AS first_channel")
    if with_acquisition_cost:
        extra_period.append("max(acquisition_cost) AS acquisition_cost")
        extra_customer.append("max(acquisition_cost) AS acquisition_cost")
    period_extra_sql = "".join(f", {e}" for e in extra_period)
    customer_extra_sql = "".join(f", {e}" for e in extra_customer)
    calibration = f"""
        WITH periods AS (
            SELECT customer_id, {index} AS period, {_exact_sum("amount")} AS amount, count(*) AS transactions,
                   min(order_date) AS first_date{period_extra_sql}
            FROM {source}
            WHERE order_date <= {_date_literal(split_end)}
            GROUP BY customer_id, period
        )
        SELECT customer_id,
               CAST(count(*) - 1 AS BIGINT) AS frequency,
               (max(period) - min(period)) / {divisor} AS recency,
               ({end_index} - min(period)) / {divisor} AS T,
               CASE WHEN count(*) > 1
                    THEN CAST(sum(amount) - arg_min(amount, period) AS DOUBLE) / (count(*) - 1)
                    ELSE 0.0 END AS monetary_value,
               min(first_date) AS first_purchase_date,
               CAST(sum(transactions) AS BIGINT) AS n_transactions,
               CAST(sum(amount) AS DOUBLE) AS total_amount{customer_extra_sql}
        FROM periods
        GROUP BY customer_id"""
    if calibration_end is None:
        return calibration + "\nORDER BY customer_id"
    duration = f"({period_index_sql(_date_literal(observation_end), period)} - {end_index}) / {divisor}"
    return f"""
        WITH calibration AS ({calibration}),
        holdout AS (
            SELECT customer_id, count(DISTINCT {index}) AS periods,
                   CAST({_exact_sum("amount")} AS DOUBLE) AS revenue,
                   CAST({_exact_sum("amount")} AS DOUBLE) / count(*) AS mean_transaction
            FROM {source}
            WHERE order_date > {_date_literal(calibration_end)} AND order_date <= {_date_literal(observation_end)}
            GROUP BY customer_id
        )
        SELECT calibration.*,
               CAST(coalesce(holdout.periods, 0) AS BIGINT) AS frequency_holdout,
               coalesce(holdout.mean_transaction, 0.0) AS monetary_value_holdout,
               coalesce(holdout.revenue, 0.0) AS revenue_holdout,
               {duration} AS duration_holdout
        FROM calibration LEFT JOIN holdout USING (customer_id)
        ORDER BY customer_id"""


def repeat_purchases_sql(period: PeriodSettings, source: str = TRANSACTIONS_VIEW) -> str:
    """Repeat purchases (at the model's resolution) per calendar day, for tracking plots."""
    index = period_index_sql("order_date", period)
    return f"""
        WITH periods AS (
            SELECT customer_id, {index} AS period, min(order_date) AS first_date
            FROM {source} GROUP BY customer_id, period
        ),
        firsts AS (SELECT customer_id, min(period) AS first_period FROM periods GROUP BY customer_id)
        SELECT first_date AS date, count(*) AS repeat_purchases
        FROM periods JOIN firsts USING (customer_id)
        WHERE period > first_period
        GROUP BY first_date ORDER BY first_date"""


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
    features = fetch_arrow(con, features_sql(settings.period, observation_end, **columns))
    calibration = None
    if calibration_end is not None:
        calibration = fetch_arrow(con, features_sql(settings.period, observation_end, calibration_end, **columns))
    repeat_purchases = fetch_arrow(con, repeat_purchases_sql(settings.period))
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
