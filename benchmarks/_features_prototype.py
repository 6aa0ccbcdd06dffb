"""A prototype of the features SQL that needs one pass and half the memory: for profiling only.

The stage in ``pipeline/stages/features.py`` builds the per-(customer, period) table with a
hash aggregate and then aggregates it again per customer; ``repeat_purchases_sql`` builds
the same per-period table a second time. On CDNOW-like logs almost every (customer, day)
is its own period (49.5M periods from 50M rows), so each of those hash aggregates holds
about one entry per row: that is where the time and the 5 GB peak go.

This copy finds the periods with a window instead (``lag`` over each customer's rows in
date order marks the first row of every period), which DuckDB evaluates by partitioning
and sorting rather than by a 50M-entry hash table, and aggregates the marked rows per
customer and per day in one ``GROUPING SETS`` pass. Same definitions, same numbers
(checked against the stage by ``benchmarks.profile_features``).

Only the case the benchmark runs is covered: no calibration split, no margin, channel or
acquisition-cost columns. Those would be extra aggregates in the same pass
(``sum(margin)``, ``arg_min(channel, (order_date, channel))`` over the period-start rows,
``max(acquisition_cost)``).
"""

from __future__ import annotations

import datetime as dt

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.config import PeriodSettings
from pipeline.io import fetch_arrow
from pipeline.stages.features import period_index_sql
from pipeline.transactions import TRANSACTIONS_VIEW


def prototype_sql(period: PeriodSettings, observation_end: dt.date, source: str = TRANSACTIONS_VIEW) -> str:
    """Features (one row per customer) and repeat purchases per day (rows with a NULL customer)."""
    # The settings renamed this property once (days_per_period -> index_divisor).
    divisor = repr(float(getattr(period, "index_divisor", None) or period.days_per_period))
    index = period_index_sql("order_date", period)
    end_index = period_index_sql(f"DATE '{observation_end.isoformat()}'", period)
    periods = "count(*) FILTER (WHERE starts_period)"
    return f"""
        WITH marked AS (
            SELECT customer_id, order_date, amount, {index} AS period,
                   -- Rows of one day are one period whatever their order, so ties need no tie-break.
                   {index} IS DISTINCT FROM lag({index}) OVER customer_dates AS starts_period,
                   first_value({index}) OVER customer_dates AS first_period
            FROM {source}
            WHERE order_date <= DATE '{observation_end.isoformat()}'
            WINDOW customer_dates AS (PARTITION BY customer_id ORDER BY order_date)
        )
        SELECT customer_id,
               CAST({periods} - 1 AS BIGINT) AS frequency,
               (max(period) - min(period)) / {divisor} AS recency,
               ({end_index} - min(period)) / {divisor} AS T,
               CASE WHEN {periods} > 1
                    THEN (sum(amount) - sum(amount) FILTER (WHERE period = first_period)) / ({periods} - 1)
                    ELSE 0.0 END AS monetary_value,
               min(order_date) AS first_purchase_date,
               count(*) AS n_transactions,
               sum(amount) AS total_amount,
               -- A period's date is its first purchase's, as in the stage's repeat_purchases_sql.
               order_date AS date,
               count(*) FILTER (WHERE starts_period AND period <> first_period) AS repeat_purchases
        FROM marked
        GROUP BY GROUPING SETS ((customer_id), (order_date))
        ORDER BY customer_id NULLS LAST, date"""


def prototype_build(
    con: duckdb.DuckDBPyConnection, period: PeriodSettings, observation_end: dt.date
) -> tuple[pa.Table, pa.Table]:
    """The features table and the repeat-purchases-per-day table from one query."""
    both = fetch_arrow(con, prototype_sql(period, observation_end))
    customers = both.num_rows - both["customer_id"].null_count
    # Slices share the query's buffers: splitting the result copies nothing.
    features = both.slice(0, customers).drop_columns(["date", "repeat_purchases"])
    per_day = both.slice(customers).select(["date", "repeat_purchases"])
    per_day = per_day.filter(pc.greater(per_day["repeat_purchases"], 0))
    return features, per_day
