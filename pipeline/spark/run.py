"""A run's tables on the cluster: what ``clv run`` with ``engine: spark`` writes without the
driver holding per-customer data.

The features and calibration tables go from the executors straight into the run catalog as
Parquet datasets; the driver receives only counts and the repeat purchases per calendar day
(one row a day, however many customers).
"""

from __future__ import annotations

from pyspark import StorageLevel
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from pipeline.catalog import CALIBRATION_FILE, FEATURES_FILE, REPEAT_PURCHASES_FILE, RunCatalog
from pipeline.io import write_parquet
from pipeline.spark.feature_tables import SparkFeatures


def _customer_counts(table: DataFrame) -> tuple[int, int]:
    """(customers, repeat customers) of a features table, counted on the cluster."""
    row = table.agg(F.count(F.lit(1)).alias("customers"),
                    F.count(F.when(F.col("frequency") > 0, 1)).alias("repeat_customers")).head()
    return (int(row["customers"]), int(row["repeat_customers"])) if row is not None else (0, 0)


def write_features(computed: SparkFeatures, catalog: RunCatalog) -> dict[str, int | None]:
    """Write ``computed``'s tables into ``catalog`` (features and calibration as datasets, by
    the executors) and return the counts the features summary reports.

    The log is read once for the three tables (kept on the executors' memory and disk while
    they are written); each written table is counted from its files, not recomputed.
    """
    spark = computed.features.sparkSession
    cached_here = computed.transactions.storageLevel == StorageLevel.NONE
    if cached_here:
        computed.transactions.persist(StorageLevel.MEMORY_AND_DISK)
    try:
        computed.features.write.mode("errorifexists").parquet(str(catalog.path(FEATURES_FILE)))
        if computed.calibration is not None:
            computed.calibration.write.mode("errorifexists").parquet(str(catalog.path(CALIBRATION_FILE)))
        write_parquet(computed.repeat_purchases.toPandas(), catalog.path(REPEAT_PURCHASES_FILE))
    finally:
        if cached_here:
            computed.transactions.unpersist()
    customers, repeaters = _customer_counts(spark.read.parquet(str(catalog.path(FEATURES_FILE))))
    calibration_customers = calibration_repeaters = None
    if computed.calibration is not None:
        calibration_customers, calibration_repeaters = _customer_counts(
            spark.read.parquet(str(catalog.path(CALIBRATION_FILE)))
        )
    return {
        "customers": customers,
        "repeat_customers": repeaters,
        "calibration_customers": calibration_customers,
        "calibration_repeat_customers": calibration_repeaters,
    }
