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

By concern: :mod:`.session` (the SparkSession), :mod:`.reading` (reading, typing and
validating the log), :mod:`.feature_tables` (the features and the fit's inputs) and :mod:`.scoring`
(batch scoring). The names callers use are re-exported here. Importing this package imports
PySpark (the optional ``spark`` extra): callers import it only when ``engine: spark`` is asked for.
"""

from __future__ import annotations

from pipeline.spark.feature_tables import (
    SparkFeatures,
    compute_features,
    features,
    features_from_config,
    period_index,
    period_index_of,
    purchase_fit_frame,
    repeat_purchases,
    spend_fit_frame,
    unique_statistics,
)
from pipeline.spark.reading import parse_date, read_transactions, spark_date_pattern
from pipeline.spark.scoring import score, score_schema
from pipeline.spark.session import spark_session

__all__ = [
    "SparkFeatures",
    "compute_features",
    "features",
    "features_from_config",
    "parse_date",
    "period_index",
    "period_index_of",
    "purchase_fit_frame",
    "read_transactions",
    "repeat_purchases",
    "score",
    "score_schema",
    "spark_date_pattern",
    "spark_session",
    "spend_fit_frame",
    "unique_statistics",
]
