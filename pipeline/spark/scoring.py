"""Batch scoring on Spark: a fitted scorer broadcast to the executors, Parquet partitions out."""

from __future__ import annotations

import os
import re
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pyspark.errors import PySparkException, PythonException
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from pipeline.errors import InputDataError
from pipeline.stages.features import FEATURE_COLUMNS
from pipeline.stages.score import OPTIONAL_FEATURES, REQUIRED_FEATURES, check_feature_columns
from pipeline.stages.value import SCORE_COLUMNS

# Why the interval columns are empty on this engine (summary.json's value.intervals says so too).
INTERVALS_ON_SPARK = ("not computed on engine: spark (each executor batch would evaluate every parameter draw "
                      "again); run on engine: duckdb or score with clv score there for the interval columns")


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
            # Without the intervals (empty columns): every Arrow batch of 10,000 rows would
            # evaluate all the parameter draws again (INTERVALS_ON_SPARK).
            yield frame[FEATURE_COLUMNS].join(score_customers(model, frame, intervals=False)).reset_index()[names]

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
