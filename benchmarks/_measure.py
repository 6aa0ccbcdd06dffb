"""Run one benchmark task in a fresh Python process and measure it.

Each repeat gets its own process so that its peak RSS is its own: memory that an earlier
repeat left in the allocator, or imported modules' caches, cannot hide or inflate it. The
peak comes from ``wait4`` on that one child (``ru_maxrss``, KiB on Linux);
``getrusage(RUSAGE_CHILDREN)`` would report the largest child so far, not this one.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
import sys
import tempfile
import threading
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
    environment = child_environment()
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


def child_environment() -> dict[str, str]:
    """This process's environment, with the repository first on the child's import path."""
    environment = dict(os.environ)
    # The child must import this package however the parent was started.
    environment["PYTHONPATH"] = os.pathsep.join(filter(None, [str(_REPOSITORY), environment.get("PYTHONPATH")]))
    return environment


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


@dataclasses.dataclass(frozen=True)
class Line:
    """One stderr line of a streamed child, stamped when it arrived.

    ``seconds`` counts from the child's spawn; ``cpu_seconds`` and ``rss_high_water_bytes``
    are the child's user + system time and ``VmHWM`` read from /proc at that moment (all its
    threads; not its own children, which only count once they have exited).
    """

    seconds: float
    text: str
    cpu_seconds: float
    rss_high_water_bytes: int


@dataclasses.dataclass(frozen=True)
class DescendantPeak:
    """One process below a streamed child, as last seen while sampling.

    ``command`` is its command line at the last sample (so after any ``exec``: Spark's
    ``spark-submit`` shell script becomes ``java …``), ``peak_rss_bytes`` its ``VmHWM`` and
    ``cpu_seconds`` its own user + system time (not its children's) at the last read before it
    exited. A process that lived less than one sampling interval may be missing.
    """

    pid: int
    command: str
    peak_rss_bytes: int
    cpu_seconds: float = 0.0


@dataclasses.dataclass(frozen=True)
class StreamedRun:
    """A child process measured whole, with its stderr lines stamped as they arrived.

    ``seconds`` and ``cpu_seconds`` are the whole process: interpreter start-up, imports and
    exit included (``wait4``'s rusage, whose CPU also covers the grandchildren it waited for,
    such as ``clv run``'s tracking process). ``peak_rss_bytes`` is the whole process tree's:
    the child's own peak (``ru_maxrss``) plus the peak (``VmHWM``, last read before it exited)
    of every descendant seen while sampling, as if all peaks fell at the same moment, so it
    never understates; ``main_peak_rss_bytes`` is the child's alone. ``rss_samples`` are
    ``(seconds, the child's VmRSS bytes)`` every ``sample_seconds``, to tell which step a peak
    belongs to; ``tree_rss_samples`` the same for the whole tree.

    ``descendants`` are the per-process peaks behind the tree figure, with command lines, so a
    benchmark can tell a JVM from Python workers. ``own_peak_rss_bytes`` is the child's own
    ``VmHWM`` read from /proc (at every sample and every stderr line): unlike ``ru_maxrss``,
    which ``wait4`` reports as the largest of the child *and the descendants it reaped*, it is
    never another process's peak.
    """

    command: list[str]
    exit_code: int
    seconds: float
    cpu_seconds: float
    peak_rss_bytes: int
    main_peak_rss_bytes: int
    lines: list[Line]
    rss_samples: list[tuple[float, int]]
    tree_rss_samples: list[tuple[float, int]]
    stdout: str
    descendants: list[DescendantPeak] = dataclasses.field(default_factory=list)
    own_peak_rss_bytes: int = 0

    def peak_rss_between(self, start_seconds: float, end_seconds: float) -> int:
        """The largest sampled RSS in ``[start, end]`` (0 when no sample fell in it)."""
        return max((rss for t, rss in self.rss_samples if start_seconds <= t <= end_seconds), default=0)


def run_streaming(
    command: list[str],
    cwd: Path | None = None,
    environment: dict[str, str] | None = None,
    timeout_seconds: float | None = None,
    sample_seconds: float = 0.1,
    check: bool = True,
) -> StreamedRun:
    """Run ``command`` in a fresh process; stamp each stderr line on arrival; sample its RSS.

    Python's stderr is line-buffered even off a terminal (3.9+), so a progress line is read
    here within milliseconds of being printed: the gaps between lines are the steps' times.
    ``check`` raises :class:`TaskFailed` on a non-zero exit, with the end of stderr.
    """
    started = time.perf_counter()
    with tempfile.TemporaryFile() as stdout:
        process = subprocess.Popen(
            command, stdout=stdout, stderr=subprocess.PIPE, cwd=cwd or _REPOSITORY,
            env=environment or child_environment(),
        )
        lines: list[Line] = []

        def read_stderr() -> None:
            for raw in iter(process.stderr.readline, b""):
                now = time.perf_counter() - started
                cpu, high_water = _proc_cpu_and_high_water(process.pid)
                lines.append(Line(now, raw.decode(errors="replace").rstrip("\n"), cpu, high_water))

        reader = threading.Thread(target=read_stderr, daemon=True)
        reader.start()
        samples: list[tuple[float, int]] = []
        tree_samples: list[tuple[float, int]] = []
        descendant_peaks: dict[int, int] = {}
        descendant_commands: dict[int, str] = {}
        descendant_cpu: dict[int, float] = {}
        own_high_water = 0
        deadline = None if timeout_seconds is None else time.monotonic() + timeout_seconds
        try:
            while True:
                pid, status, usage = os.wait4(process.pid, os.WNOHANG)
                if pid == process.pid:
                    break
                now, (rss, high_water) = time.perf_counter() - started, _proc_memory(process.pid)
                own_high_water = max(own_high_water, high_water)
                tree_rss = rss
                for descendant in _descendants(process.pid):
                    descendant_rss, descendant_high_water = _proc_memory(descendant)
                    tree_rss += descendant_rss
                    descendant_peaks[descendant] = max(descendant_peaks.get(descendant, 0), descendant_high_water)
                    command = _proc_command(descendant)
                    if command:
                        descendant_commands[descendant] = command
                    cpu = _proc_cpu_and_high_water(descendant, high_water=False)[0]
                    if not math.isnan(cpu):
                        descendant_cpu[descendant] = cpu
                if rss:
                    samples.append((now, rss))
                    tree_samples.append((now, tree_rss))
                if deadline is not None and time.monotonic() > deadline:
                    raise TimeoutError(f"{' '.join(command)}: still running after {timeout_seconds:.0f} s")
                time.sleep(sample_seconds)
        except BaseException:
            process.kill()
            process.wait()
            raise
        seconds = time.perf_counter() - started
        reader.join()
        process.stderr.close()
        stdout.seek(0)
        output = stdout.read().decode(errors="replace")
    exit_code = os.waitstatus_to_exitcode(status)
    # Popen must not try to reap the child again: wait4 already did.
    process.returncode = exit_code
    if check and exit_code != 0:
        tail = "\n".join(line.text for line in lines[-15:])
        raise TaskFailed(f"{' '.join(command)}: exit code {exit_code}\n{tail}")
    return StreamedRun(
        command=list(command),
        exit_code=exit_code,
        seconds=seconds,
        cpu_seconds=usage.ru_utime + usage.ru_stime,
        peak_rss_bytes=usage.ru_maxrss * 1024 + sum(descendant_peaks.values()),
        main_peak_rss_bytes=usage.ru_maxrss * 1024,
        lines=lines,
        rss_samples=samples,
        tree_rss_samples=tree_samples,
        stdout=output,
        descendants=[
            DescendantPeak(pid, descendant_commands.get(pid, ""), peak, descendant_cpu.get(pid, 0.0))
            for pid, peak in descendant_peaks.items()
        ],
        own_peak_rss_bytes=max([own_high_water, *(line.rss_high_water_bytes for line in lines)]),
    )


def task_command(*arguments: str) -> list[str]:
    """The command line that runs ``python -m benchmarks._tasks *arguments``."""
    return [sys.executable, "-m", "benchmarks._tasks", *arguments]


_CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _proc_cpu_and_high_water(pid: int, high_water: bool = True) -> tuple[float, int]:
    """User + system seconds and VmHWM of a live process (NaN / 0 once it has gone; VmHWM
    is not read, 0, with ``high_water=False``)."""
    try:
        # The command name may hold spaces or parentheses: the fields start after the last ')'.
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        cpu = (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS
    except (OSError, IndexError, ValueError):
        cpu = float("nan")
    return cpu, _proc_status_kib(pid, "VmHWM:") * 1024 if high_water else 0


def _descendants(pid: int) -> list[int]:
    """Live descendants of ``pid`` (children's children too), from each thread's ``children``
    list in /proc: a few small reads, so sampling every 0.1 s does not load the machine."""
    found, frontier = [], [pid]
    while frontier:
        children = []
        for parent in frontier:
            try:
                threads = os.listdir(f"/proc/{parent}/task")
            except OSError:
                continue
            for thread in threads:
                try:
                    children += [int(child) for child in Path(f"/proc/{parent}/task/{thread}/children").read_text().split()]
                except (OSError, ValueError):
                    continue
        found += children
        frontier = children
    return found


def _proc_memory(pid: int) -> tuple[int, int]:
    """``VmRSS`` and ``VmHWM`` in bytes, from one read of /proc/PID/status (0, 0 once it has gone)."""
    values = {"VmRSS:": 0, "VmHWM:": 0}
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                key = line[:6]
                if key in values:
                    values[key] = int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return values["VmRSS:"], values["VmHWM:"]


def _proc_command(pid: int) -> str:
    """A live process's command line, arguments joined by spaces ("" once it has gone)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().rstrip(b"\0").replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _proc_status_kib(pid: int, key: str) -> int:
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith(key):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def summarise_stack_samples(path: Path, top_inner: int = 3) -> list[dict]:
    """Seconds by innermost project frame, from a ``StackSampler`` file (see ``_tasks``)."""
    rows = json.loads(Path(path).read_text())
    by_project: dict[str, float] = {}
    for row in rows:
        by_project[row["project_frame"]] = by_project.get(row["project_frame"], 0.0) + row["seconds"]
    return [
        {"project_frame": name, "seconds": round(seconds, 2),
         "top_inner": [r for r in rows if r["project_frame"] == name][:top_inner]}
        for name, seconds in sorted(by_project.items(), key=lambda item: -item[1])
    ]


def format_stack_summary(rows: list[dict], limit: int = 15) -> list[str]:
    lines = []
    for row in rows[:limit]:
        inner = "; ".join(f"{r['innermost_frame']} {r['seconds']:.1f}" for r in row["top_inner"])
        lines.append(f"  {row['seconds']:7.1f}  {row['project_frame']}   [{inner}]")
    return lines
