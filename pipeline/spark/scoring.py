"""Batch scoring on Spark: a fitted scorer broadcast to the executors, Parquet partitions out."""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pyspark.errors import PySparkException, PythonException
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from models.histories import HISTORY_COLUMNS
from pipeline.errors import InputDataError
from pipeline.stages.features import FEATURE_COLUMNS
from pipeline.stages.score import HISTORY_ROW, OPTIONAL_FEATURES, REQUIRED_FEATURES, check_feature_columns
from pipeline.stages.value import FLOAT32_COLUMNS, SCORE_COLUMNS, history_figures

# A history's purchase figures depend on (frequency, recency, T) alone (no covariates on Spark).
HISTORY_KEYS = list(HISTORY_COLUMNS)


@dataclasses.dataclass(frozen=True)
class HistoryLookup:
    """The purchase figures of a table's distinct histories, computed once on the driver
    (:func:`pipeline.stages.value.history_figures`, with the intervals' parameter draws), and
    the histories themselves: each customer is joined to their history's row
    (:data:`pipeline.stages.score.HISTORY_ROW`) and the executors' batches take its figures by
    position, as ``clv score`` on DuckDB does. Evaluated per Arrow batch instead, every draw
    would be evaluated again for each batch of 10,000 customers. The histories grow with the
    distinct (frequency, recency, T), not with the customers (the all-data fit collects them too).
    """

    histories: pd.DataFrame
    figures: pd.DataFrame

    @classmethod
    def of(cls, features_df: DataFrame, scorer: Any) -> HistoryLookup:
        histories = distinct_histories(features_df)
        return cls(histories, history_figures(scorer, histories))

    def join(self, features_df: DataFrame) -> DataFrame:
        """``features_df`` with each customer's :data:`HISTORY_ROW`."""
        table = features_df.sparkSession.createDataFrame(
            self.histories[HISTORY_KEYS].assign(**{HISTORY_ROW: np.arange(len(self.histories), dtype=np.int32)})
        )
        return features_df.join(F.broadcast(table), on=HISTORY_KEYS, how="inner")


def distinct_histories(features_df: DataFrame) -> pd.DataFrame:
    """The distinct (frequency, recency, T) of ``features_df`` on the driver, sorted: the same
    order whatever the partitions."""
    frame = features_df.select(*HISTORY_KEYS).distinct().toPandas()
    return frame.sort_values(HISTORY_KEYS, kind="stable").reset_index(drop=True)


def score_schema(features_schema: T.StructType) -> T.StructType:
    """The scored rows: customer id, the model features and :data:`SCORE_COLUMNS` (as ``customers.parquet``)."""
    fields = [features_schema["customer_id"]]
    fields += [features_schema[name] for name in FEATURE_COLUMNS]
    fields += [
        T.StructField(name, T.StringType() if name in ("tier", "action")
                      else T.FloatType() if name in FLOAT32_COLUMNS else T.DoubleType())
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
    lookup: HistoryLookup | None = None,
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
    lookup : HistoryLookup, optional
        The figures of the features' histories, when the caller has them (the value stage
        computes them with the company totals); made here otherwise. A covariate model's
        batches are scored on their own, without the interval columns.

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
    if lookup is None and getattr(scorer, "covariate_encoding", None) is None:
        lookup = HistoryLookup.of(needed, scorer)
    if lookup is not None:
        needed = lookup.join(needed)
    scorer_value, release = _broadcast(features_df.sparkSession, scorer)
    figures_value, release_figures = _broadcast(features_df.sparkSession, None if lookup is None else lookup.figures)

    def score_batches(batches):
        model, figures = scorer_value(), figures_value()
        for batch in batches:
            if batch.empty:
                continue
            frame = batch.set_index("customer_id")
            if figures is None:
                scores = score_customers(model, frame, intervals=False)
            else:
                scores = score_customers(model, frame, figures, frame[HISTORY_ROW].to_numpy())
            yield frame[FEATURE_COLUMNS].join(scores).reset_index()[names]

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
        release_figures()
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
