"""Run one benchmark task in a fresh Python process and measure it.

Each repeat gets its own process so that its peak RSS is its own: memory that an earlier
repeat left in the allocator, or imported modules' caches, cannot hide or inflate it. The
peak comes from ``wait4`` on that one child (``ru_maxrss``, KiB on Linux);
``getrusage(RUSAGE_CHILDREN)`` would report the largest child so far, not this one.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

_REPOSITORY = Path(__file__).resolve().parent.parent


@dataclasses.dataclass(frozen=True)
class Measurement:
    """One repeat of one task.

    ``seconds`` is what the task timed itself (the work, without interpreter start-up and
    imports); ``process_seconds`` is the whole child process; ``cpu_seconds`` is user +
    system time of the child, so ``cpu_seconds / seconds`` shows how many cores it kept busy.
    """

    seconds: float
    process_seconds: float
    cpu_seconds: float
    peak_rss_bytes: int
    report: dict


class TaskFailed(RuntimeError):
    """The child exited non-zero; the message carries the end of its stderr."""


def run_task(arguments: list[str], timeout_seconds: float | None = None) -> Measurement:
    """Run ``python -m benchmarks._tasks *arguments`` and measure it.

    The child prints one JSON object on its last stdout line, with at least ``seconds``.
    """
    command = [sys.executable, "-m", "benchmarks._tasks", *arguments]
    environment = dict(os.environ)
    # The child must import this package however the parent was started.
    environment["PYTHONPATH"] = os.pathsep.join(filter(None, [str(_REPOSITORY), environment.get("PYTHONPATH")]))
    with tempfile.TemporaryFile() as stdout, tempfile.TemporaryFile() as stderr:
        started = time.perf_counter()
        process = subprocess.Popen(command, stdout=stdout, stderr=stderr, cwd=_REPOSITORY, env=environment)
        try:
            status, usage = _wait(process, timeout_seconds)
        except BaseException:
            process.kill()
            process.wait()
            raise
        process_seconds = time.perf_counter() - started
        stdout.seek(0)
        stderr.seek(0)
        output = stdout.read().decode(errors="replace")
        errors = stderr.read().decode(errors="replace")
    exit_code = os.waitstatus_to_exitcode(status)
    # Popen must not try to reap the child again: wait4 already did.
    process.returncode = exit_code
    if exit_code != 0:
        tail = "\n".join(errors.strip().splitlines()[-15:])
        raise TaskFailed(f"{' '.join(arguments)}: exit code {exit_code}\n{tail}")
    lines = [line for line in output.splitlines() if line.strip()]
    report = json.loads(lines[-1])
    return Measurement(
        seconds=float(report["seconds"]),
        process_seconds=process_seconds,
        cpu_seconds=usage.ru_utime + usage.ru_stime,
        peak_rss_bytes=usage.ru_maxrss * 1024,
        report=report,
    )


def _wait(process: subprocess.Popen, timeout_seconds: float | None):
    if timeout_seconds is None:
        _, status, usage = os.wait4(process.pid, 0)
        return status, usage
    deadline = time.monotonic() + timeout_seconds
    while True:
        pid, status, usage = os.wait4(process.pid, os.WNOHANG)
        if pid == process.pid:
            return status, usage
        if time.monotonic() > deadline:
            raise TimeoutError(f"benchmark task still running after {timeout_seconds:.0f} s")
        time.sleep(0.05)


def median(values: list[float]) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2
