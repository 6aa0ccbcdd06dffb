"""`engine: spark` on a real Spark standalone cluster (a master and a worker on 127.0.0.1).

The same run as the DuckDB engine's, table for table; batch scoring on the cluster's executors;
bad input ending as it does on DuckDB. The cluster is the session's ``spark_cluster`` fixture
(tests/conftest.py, tests/spark_cluster.py).

``clv`` runs in a process of its own, as a user runs it: a SparkSession belongs to its process
and ``getOrCreate`` hands back the one already running, so in this process a local session of
another test module would be reused whatever ``spark.master`` says. A process also gives the
console script's real exit code and stderr.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pandas as pd
import pytest

from tests.conftest import CONFIGS, REPO_ROOT
from tests.engines import assert_same_runs, run_dir
from tests.pipeline.test_bad_input import BAD, write_config

# End to end (runs, Spark, notebooks or servers): `pytest -m "not slow"` skips them.
pytestmark = pytest.mark.slow

pytest.importorskip("pyspark")

SAMPLE = str(CONFIGS / "cdnow_sample.yaml")


def _environment() -> dict[str, str]:
    environment = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])),
        # The driver on the address the cluster listens on, whatever this host's name resolves to.
        "SPARK_LOCAL_IP": "127.0.0.1",
    }
    # What the executors' Python is must come from spark_session, not from this process (where
    # a local session of another module may have set it).
    environment.pop("PYSPARK_PYTHON", None)
    return environment


CLV = [sys.executable, "-c", "from pipeline.cli import main; main()"]


def clv(*args: str) -> subprocess.CompletedProcess:
    """The ``clv`` console script (``pipeline.cli:main``) on this checkout's code."""
    return subprocess.run([*CLV, *args], env=_environment(), capture_output=True, text=True, timeout=300)


def clv_until(line: str, *args: str, timeout: float = 240) -> tuple[subprocess.Popen, list[str]]:
    """``clv ARGS`` started, returned once its stderr has printed a line containing ``line``
    (a progress line: do not pass ``-q``), with the lines so far."""
    process = subprocess.Popen([*CLV, *args], env=_environment(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               text=True)
    assert process.stderr is not None
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = process.stderr.readline()
        if not text:
            break
        seen.append(text.rstrip("\n"))
        if line in text:
            return process, seen
    process.kill()
    raise AssertionError(f"no line with {line!r} in:\n" + "\n".join(seen))


# The driver's and executors' JVMs live seconds here: C1 alone compiles soon enough and makes
# each Spark command about a third quicker on two cores. Through spark.conf, as a user would.
QUICK_JVMS = {"spark.driver.extraJavaOptions": "-XX:TieredStopAtLevel=1",
              "spark.executor.extraJavaOptions": "-XX:TieredStopAtLevel=1"}


def on_cluster(cluster, app_name: str) -> list[str]:
    return ["--set", "engine=spark", "--set", f"spark.master={cluster.url}", "--set", f"spark.app_name={app_name}",
            "--set", f"spark.conf={json.dumps(QUICK_JVMS)}"]


def executors_of(cluster, app_name: str) -> list[str]:
    """The worker's executor directories of the finished application ``app_name`` (none if it never ran there)."""
    deadline = time.monotonic() + 20  # the master lists an application once its driver has gone
    while True:
        apps = [app for app in cluster.state()["completedapps"] if app["name"] == app_name]
        if apps or time.monotonic() > deadline:
            break
        time.sleep(0.25)
    assert len(apps) == 1, cluster.state()
    assert apps[0]["state"] == "FINISHED" and apps[0]["cores"] > 0, apps[0]
    return sorted(path.name for path in (cluster.root / "work" / apps[0]["id"]).iterdir())


@pytest.fixture(scope="module")
def runs(spark_cluster, tmp_path_factory):
    """`clv run` of the sample on DuckDB (registered as version 1), then on the cluster."""
    root = tmp_path_factory.mktemp("spark_cluster_runs")
    common = ["-c", SAMPLE, "--set", f"tracking.uri=sqlite:///{root}/mlflow.db"]
    for engine, extra in (("duckdb", []), ("spark", on_cluster(spark_cluster, "clv-cluster-run"))):
        done = clv("run", "-q", *common, "--set", f"output_dir={root / engine}", *extra)
        assert done.returncode == 0, done.stderr
    return root, common


def customers(root, engine) -> pd.DataFrame:
    return pd.read_parquet(next((root / engine).glob("*/customers.parquet")))


def test_a_run_on_the_cluster_equals_the_duckdb_run(runs, spark_cluster):
    root, _ = runs
    # The selected model, why, its parameters, standard errors and likelihood; the customers.
    assert_same_runs(run_dir(root / "spark"), run_dir(root / "duckdb"))
    # The features were computed by executors the worker launched, not in a local master.
    assert executors_of(spark_cluster, "clv-cluster-run")


def test_scoring_on_the_cluster_gives_the_run_rows(runs, spark_cluster, tmp_path):
    # mapInPandas runs the scorer in Python workers the executors start: they need this
    # project, which spark_session arranges for a master on this machine (PYSPARK_PYTHON).
    root, common = runs
    out = tmp_path / "scores.parquet"
    done = clv("score", "-q", *common, *on_cluster(spark_cluster, "clv-cluster-score"), "--model", "models:/clv/1",
               "--as-of", "1998-06-30", "--scored-at", "2026-01-01T00:00:00+00:00", "--out", str(out))
    assert done.returncode == 0, done.stderr
    run = customers(root, "duckdb").set_index("customer_id")
    scores = pd.read_parquet(out).set_index("customer_id")
    assert len(scores) == len(run) == 2357
    pd.testing.assert_frame_equal(scores[run.columns].sort_index(), run.sort_index(), check_exact=True)
    assert executors_of(spark_cluster, "clv-cluster-score")


def test_bad_input_on_the_cluster_is_one_line_exit_2_and_nothing_written(spark_cluster, tmp_path):
    from mlflow.tracking import MlflowClient

    config = write_config(tmp_path, BAD / "bad_date.csv")
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    done = clv("run", "-q", "-c", str(config), "--set", f"tracking.uri={uri}",
               *on_cluster(spark_cluster, "clv-cluster-bad-input"))
    assert done.returncode == 2, done.stderr
    # Local Spark's message (tests/pipeline/test_spark.py): DuckDB's without the line number.
    message = f"{BAD / 'bad_date.csv'}: column 'date': '2024-13-01' is not a date (format %Y-%m-%d)"
    # Spark's JVM writes its start-up notices to the same stderr; ours is the one line at the end.
    lines = done.stderr.strip().splitlines()
    assert lines[-1] == f"error: {message}", done.stderr
    assert [line for line in lines if line.startswith("error")] == lines[-1:], done.stderr
    assert "Traceback" not in done.stderr + done.stdout and "Exception" not in done.stderr, done.stderr
    outputs = tmp_path / "outputs"
    assert not outputs.exists() or not any(outputs.iterdir()), list(outputs.iterdir())
    client = MlflowClient(uri)
    [run] = client.search_runs([client.get_experiment_by_name("clv").experiment_id])
    assert run.info.status == "FAILED" and run.data.tags["clv.error"] == message
    assert executors_of(spark_cluster, "clv-cluster-bad-input")


@pytest.mark.parametrize("master, conf, environment, expected", [
    ("local[*]", {}, {}, sys.executable),
    ("local-cluster[2,1,1024]", {}, {}, sys.executable),
    ("spark://127.0.0.1:7077", {}, {}, sys.executable),
    ("spark://localhost:7077,[::1]:7078", {}, {}, sys.executable),
    # Workers elsewhere: this interpreter's path means nothing there; PySpark's default stands.
    ("spark://spark-master.internal:7077", {}, {}, None),
    ("spark://127.0.0.1:7077,10.0.0.2:7077", {}, {}, None),
    ("yarn", {}, {}, None),
    # $PYSPARK_PYTHON is kept, and the spark.pyspark.python property wins over it (as in Spark).
    ("spark://127.0.0.1:7077", {}, {"PYSPARK_PYTHON": "/opt/py/bin/python"}, "/opt/py/bin/python"),
    ("yarn", {"spark.pyspark.python": "./env/bin/python"}, {"PYSPARK_PYTHON": "python3"}, "./env/bin/python"),
])
def test_the_executors_python(monkeypatch, master, conf, environment, expected):
    from pipeline.config import SparkSettings
    from pipeline.spark.session import _choose_executor_python

    monkeypatch.delenv("PYSPARK_PYTHON", raising=False)
    for key, value in environment.items():
        monkeypatch.setenv(key, value)
    _choose_executor_python(SparkSettings(master=master, conf=conf))
    assert os.environ.get("PYSPARK_PYTHON") == expected


def test_spark_failing_under_the_run_is_one_line_exit_5_and_nothing_written(tmp_path):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    done = clv("run", "-q", "-c", str(CONFIGS / "cdnow_sample.yaml"), "--set", f"tracking.uri={uri}",
               "--set", f"output_dir={tmp_path / 'outputs'}", "--set", "engine=spark",
               "--set", "spark.master=nowhere://cluster")
    assert done.returncode == 5, done.stderr
    lines = done.stderr.strip().splitlines()
    assert lines[-1].startswith("error: Spark failed: ") and "nowhere://cluster" in lines[-1], done.stderr
    assert "Traceback" not in done.stderr + done.stdout, done.stderr
    outputs = tmp_path / "outputs"
    assert not outputs.exists() or not any(outputs.iterdir()), list(outputs.iterdir())
    client = MlflowClient(uri)
    [run] = client.search_runs([client.get_experiment_by_name("clv").experiment_id])
    assert run.info.status == "FAILED" and run.data.tags["clv.error"].startswith("Spark failed: ")


def _executor_processes(app_id: str) -> list[int]:
    """Process ids of the executor JVMs the worker runs for ``app_id``."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            command = open(f"/proc/{entry}/cmdline", "rb").read().split(b"\0")
        except OSError:  # gone meanwhile
            continue
        if b"org.apache.spark.executor.CoarseGrainedExecutorBackend" in command and app_id.encode() in command:
            found.append(int(entry))
    return found


def _active_app(cluster, app_name: str) -> str:
    [app] = [app for app in cluster.state()["activeapps"] if app["name"] == app_name]
    return app["id"]


def test_a_lost_executor_is_replaced_and_the_run_equals_the_duckdb_run(runs, spark_cluster, tmp_path):
    # The executor is killed between Spark jobs of the run (while the driver fits): the worker
    # starts another, Spark recomputes what the lost one held, and the run ends as if nothing
    # happened.
    import signal

    root, common = runs
    app_name = "clv-cluster-lost-executor"
    process, _ = clv_until("fitting", "run", *common, "--set", f"output_dir={tmp_path / 'outputs'}",
                           *on_cluster(spark_cluster, app_name))
    try:
        executors = _executor_processes(_active_app(spark_cluster, app_name))
        assert executors, spark_cluster.state()
        for pid in executors:
            os.kill(pid, signal.SIGKILL)
        _, stderr = process.communicate(timeout=300)
    finally:
        process.kill()
    assert process.returncode == 0, stderr
    assert_same_runs(run_dir(tmp_path / "outputs"), run_dir(root / "duckdb"))
    # The worker ran a second executor for the application: the first one's directory and its own.
    assert len(executors_of(spark_cluster, app_name)) >= 2


def test_ctrl_c_on_the_cluster_is_one_line_exit_130_and_nothing_written(spark_cluster, tmp_path):
    import signal

    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    app_name = "clv-cluster-interrupted"
    # Interrupted as the value stage's first Spark job starts.
    process, _ = clv_until("valuing customers", "run", "-c", SAMPLE, "--set", f"tracking.uri={uri}",
                           "--set", f"output_dir={tmp_path / 'outputs'}", *on_cluster(spark_cluster, app_name))
    try:
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=120)
    finally:
        process.kill()
    assert process.returncode == 130, stderr
    lines = stderr.strip().splitlines()
    assert lines[-1] == "interrupted: nothing was written for the unfinished step", stderr
    assert "Traceback" not in stderr, stderr
    outputs = tmp_path / "outputs"
    assert not outputs.exists() or not any(outputs.iterdir()), list(outputs.iterdir())
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("clv").experiment_id])
    [run] = [run for run in runs if "mlflow.parentRunId" not in run.data.tags]
    assert run.info.status == "KILLED" and run.data.tags["clv.error"] == "KeyboardInterrupt", run.info
    # The candidates' nested runs, if they were opened, end with it.
    assert {child.info.status for child in runs if child is not run} <= {"KILLED"}
    # The application is gone from the cluster with the driver (no executor left running).
    executors_of(spark_cluster, app_name)
