"""The Spark session the engine runs in: UTC dates, Spark 3+ datetime patterns, local defaults."""

from __future__ import annotations

import ipaddress
import logging
import os
import signal
import sys
import threading
import warnings

from pyspark.sql import SparkSession

from pipeline.config import SparkSettings


def spark_session(settings: SparkSettings) -> SparkSession:
    """The Spark session for ``settings`` (an existing one is reused, as ``getOrCreate`` does).

    Dates are computed in UTC whatever the machine's zone; local masters get few shuffle
    partitions (Spark's default of 200 makes small logs slow). Masters whose executors run on
    this machine use this interpreter for their Python workers, which has the project installed.
    """
    defaults = {
        "spark.ui.showConsoleProgress": "false",
        "spark.log.level": "ERROR",
        "spark.sql.execution.arrow.pyspark.enabled": "true",
    }
    if settings.master.startswith("local"):
        defaults["spark.sql.shuffle.partitions"] = "8"
    _choose_executor_python(settings)
    _quiet_known_noise()
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
    if threading.current_thread() is threading.main_thread():
        # PySpark's SIGINT handler cancels the jobs through py4j from inside the handler, on the
        # connection the interrupted call is still reading ("reentrant call", a logged traceback).
        # Ctrl-C is a plain KeyboardInterrupt again; pipeline.spark.run.spark_failures cancels
        # the jobs once the interrupted call has let go of its connection.
        signal.signal(signal.SIGINT, signal.default_int_handler)
    return spark


class _InterruptedCallFilter(logging.Filter):
    """Drops py4j's report of a Ctrl-C during a call to the JVM: it logs a traceback with
    ``logging.exception`` on the root logger (py4j/java_gateway.py, ``send_command``), after
    PySpark's SIGINT handler has cancelled the jobs; the CLI says "interrupted" in one line."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.getMessage() != "KeyboardInterrupt while sending command."


def _quiet_known_noise() -> None:
    """Silence what PySpark and py4j print on stderr that is not the user's business."""
    # PySpark 4 warns that it "does not yet fully support pandas >= 3.0.0" each time a pandas
    # function is defined; what this project runs on Spark with pandas 3 is tested
    # (tests/pipeline/test_spark*.py).
    warnings.filterwarnings("ignore", message="PySpark does not yet fully support pandas", category=FutureWarning)
    root = logging.getLogger()
    if not any(isinstance(existing, _InterruptedCallFilter) for existing in root.filters):
        root.addFilter(_InterruptedCallFilter())


def _choose_executor_python(settings: SparkSettings) -> None:
    """Name the Python the executors start for ``mapInPandas`` (batch scoring), before the session.

    A driver started as a plain ``python`` process (not through spark-submit) sends the
    executors ``$PYSPARK_PYTHON``, else ``python3`` from their PATH, and ignores the
    ``spark.pyspark.python`` property; so the property (``spark.conf``), which Spark documents as
    winning over the variable, is exported to it here. Without either, executors on this
    machine (``local[…]``, ``local-cluster[…]``, a standalone master on a loopback address)
    get this interpreter: the ``python3`` on the PATH may lack pandas or this project, and a
    scoring job then fails on the executors with ``No module named 'pipeline'``. A remote
    cluster keeps PySpark's default: this interpreter's path means nothing on its workers.
    """
    configured = settings.conf.get("spark.pyspark.python")
    if configured:
        os.environ["PYSPARK_PYTHON"] = configured
    elif _executors_on_this_machine(settings.master):
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)


def _executors_on_this_machine(master: str) -> bool:
    """``local[…]``/``local-cluster[…]``, or ``spark://`` masters all on loopback addresses
    (a master bound to loopback can only have workers on this machine)."""
    if master.startswith("local"):
        return True
    if not master.startswith("spark://"):
        return False
    hosts = [address.rsplit(":", 1)[0].strip("[]") for address in master.removeprefix("spark://").split(",")]
    return all(_is_loopback(host) for host in hosts)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may well be another machine
        return False
