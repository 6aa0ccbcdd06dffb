"""A Spark standalone cluster on 127.0.0.1 for the tests: one master and one worker.

Started with the ``spark-class`` launcher the pyspark package ships (no Spark download), on
free ports, with logs and the worker's directory under a temporary directory. The ``spark_cluster``
fixture in ``tests/conftest.py`` starts one for the session and stops it at the end.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
STARTUP_TIMEOUT_S = 90.0


@dataclass(frozen=True)
class SparkCluster:
    url: str  # spark://127.0.0.1:PORT, what spark.master is set to
    web_ui: str  # the master's UI; /json/ lists workers and applications
    root: Path  # logs (master.log, worker.log) and the worker's work directory (work/: executors' logs)

    def state(self) -> dict[str, Any]:
        """The master's view: workers, active and completed applications."""
        with urllib.request.urlopen(f"{self.web_ui}/json/", timeout=5) as response:
            return json.load(response)

    def logs(self, tail: int = 3000) -> str:
        parts = []
        for path in sorted(self.root.glob("*.log")) + sorted((self.root / "work").glob("*/*/stderr")):
            parts.append(f"--- {path.relative_to(self.root)}\n{path.read_text(errors='replace')[-tail:]}")
        return "\n".join(parts)


def free_ports(count: int) -> list[int]:
    """``count`` different ports nothing listens on now (the OS picks them; held together so none
    repeats). Another process could still take one before the daemons bind it."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def spark_class() -> Path:
    import pyspark

    return Path(pyspark.__file__).parent / "bin" / "spark-class"


@contextmanager
def standalone_cluster(root: Path, cores: int = 2, memory: str = "1g") -> Iterator[SparkCluster]:
    """A master and one worker (``cores``, ``memory``) on 127.0.0.1, stopped on exit.

    Yields once the worker has registered with the master (ALIVE in the master's JSON).
    Each daemon is the leader of its own process group, so stopping it also stops the
    executor JVMs the worker launched for applications.
    """
    master_port, master_ui_port, worker_ui_port = free_ports(3)
    environment = {
        # Not $PYSPARK_PYTHON: executors start the Python the driver names (spark_session's
        # choice, under test), whatever the worker's environment says.
        **{key: value for key, value in os.environ.items() if key != "PYSPARK_PYTHON"},
        # Executors' Python workers import this checkout's code, as the driver does.
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])),
        "SPARK_LOCAL_IP": "127.0.0.1",
        # (spark-class logs to stderr, kept in master.log and worker.log; executors log under work/.)
        "SPARK_WORKER_DIR": str(root / "work"),
        # The master's REST submission server listens on a fixed port (6066) by default in Spark 4.
        "SPARK_MASTER_OPTS": "-Dspark.master.rest.enabled=false",
    }
    cluster = SparkCluster(f"spark://127.0.0.1:{master_port}", f"http://127.0.0.1:{master_ui_port}", root)
    launcher = str(spark_class())
    daemons: dict[str, subprocess.Popen] = {}
    try:
        daemons["master"] = _start(
            [launcher, "org.apache.spark.deploy.master.Master", "--host", "127.0.0.1", "--port", str(master_port),
             "--webui-port", str(master_ui_port)],
            root / "master.log", environment,
        )
        # A worker that finds no master retries only 5-15 s later: start it once the master is up.
        _wait_until(cluster, daemons, lambda state: state.get("status") == "ALIVE", "the master is not up")
        daemons["worker"] = _start(
            [launcher, "org.apache.spark.deploy.worker.Worker", "--host", "127.0.0.1", "--cores", str(cores),
             "--memory", memory, "--webui-port", str(worker_ui_port), "--work-dir", str(root / "work"), cluster.url],
            root / "worker.log", environment,
        )
        _wait_until(cluster, daemons, lambda state: any(w.get("state") == "ALIVE" for w in state.get("workers", [])),
                    "no worker registered with the master")
        yield cluster
    finally:
        for daemon in reversed(daemons.values()):  # the worker (and its executors) first, then the master
            _stop(daemon)


def _start(command: list[str], log: Path, environment: dict[str, str]) -> subprocess.Popen:
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "wb") as output:
        return subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT,
                                env=environment, start_new_session=True)


def _wait_until(cluster: SparkCluster, daemons: dict[str, subprocess.Popen], ready: Callable[[dict[str, Any]], bool],
                what: str) -> None:
    """Poll the master's JSON until ``ready``; a daemon that exits or a timeout raises with the logs."""
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        for name, daemon in daemons.items():
            if daemon.poll() is not None:
                raise RuntimeError(f"the Spark {name} exited with {daemon.returncode}:\n{cluster.logs()}")
        try:
            if ready(cluster.state()):
                return
        except (OSError, ValueError):  # not listening yet, or a page that is not the JSON yet
            pass
        time.sleep(0.2)
    raise RuntimeError(f"Spark cluster {cluster.url}: {what} after {STARTUP_TIMEOUT_S:.0f} s:\n{cluster.logs()}")


def _stop(daemon: subprocess.Popen, timeout: float = 30.0) -> None:
    """SIGTERM to the daemon's process group (JVM shutdown hooks run), SIGKILL if it lingers,
    then SIGKILL to whatever of its group outlived it (an executor JVM the worker launched)."""
    try:
        os.killpg(daemon.pid, signal.SIGTERM)
        daemon.wait(timeout=timeout)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        pass
    try:
        os.killpg(daemon.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    daemon.wait()
