"""The Spark session the engine runs in: UTC dates, Spark 3+ datetime patterns, local defaults."""

from __future__ import annotations

import os
import sys

from pyspark.sql import SparkSession

from pipeline.config import SparkSettings


def spark_session(settings: SparkSettings) -> SparkSession:
    """The Spark session for ``settings`` (an existing one is reused, as ``getOrCreate`` does).

    Dates are computed in UTC whatever the machine's zone; local masters get few shuffle
    partitions (Spark's default of 200 makes small logs slow) and use this interpreter for
    their Python workers, which has the project installed.
    """
    local = settings.master.startswith("local")
    defaults = {
        "spark.ui.showConsoleProgress": "false",
        "spark.log.level": "ERROR",
        "spark.sql.execution.arrow.pyspark.enabled": "true",
    }
    if local:
        defaults["spark.sql.shuffle.partitions"] = "8"
        # PySpark starts local Python workers with $PYSPARK_PYTHON, else whatever `python3` is
        # on the PATH, which may lack pandas or this project.
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    required = {
        "spark.sql.session.timeZone": "UTC",
        # Datetime patterns as documented for Spark 3+, never the Java 7 SimpleDateFormat ones.
        "spark.sql.legacy.timeParserPolicy": "CORRECTED",
    }
    builder = SparkSession.builder.master(settings.master).appName(settings.app_name)
    for key, value in {**defaults, **settings.conf, **required}.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    # getOrCreate hands back a running session as it is: set what correctness depends on again.
    for key, value in required.items():
        spark.conf.set(key, value)
    return spark
