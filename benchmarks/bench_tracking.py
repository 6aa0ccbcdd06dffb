"""What MLflow tracking adds to a run: `clv run` on CDNOW with tracking off vs on.

Usage::

    python -m benchmarks.bench_tracking --repeats 3

On the built-in CDNOW master log (``configs/default.yaml``), with outputs and a SQLite
store in a temporary folder. A first tracked run on a fresh store (the warm-up: it also
warms the page cache for both variants) pays the one-time creation of the database; it is
reported apart, with the store creation timed alone as well. Then runs with
``--set tracking.enabled=false`` and with tracking on alternate, each in a fresh process,
and the difference of the medians is what tracking costs a run (issue 6: <= 3 s).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import sys
import tempfile
from pathlib import Path

from benchmarks._measure import median, run_streaming, task_command
from benchmarks.bench_features import RESULTS_DIRECTORY
from benchmarks.bench_pipeline import STEPS, OurRun, machine_description, steps_from_progress, write_json

CONFIG = Path(__file__).resolve().parent.parent / "configs" / "default.yaml"
TARGET_SECONDS = 3.0


@dataclasses.dataclass
class TrackingResult:
    off: list[OurRun]
    on: list[OurRun]
    warm_up: OurRun
    store_creation_seconds: float
    store_creation_process_seconds: float

    def difference(self) -> float:
        return median([r.seconds for r in self.on]) - median([r.seconds for r in self.off])

    def cpu_difference(self) -> float:
        return median([r.cpu_seconds for r in self.on]) - median([r.cpu_seconds for r in self.off])


def run_clv(scratch: Path, tracking: bool) -> OurRun:
    store = f"sqlite:///{scratch / 'mlflow.db'}"
    command = task_command(
        "clv", "run", "-c", str(CONFIG), "--set", f"tracking.uri={store}",
        "--set", f"output_dir={scratch / 'outputs'}", "--set", f"tracking.enabled={'true' if tracking else 'false'}",
    )
    run = run_streaming(command)
    steps, progress = steps_from_progress(run)
    return OurRun(run.seconds, run.cpu_seconds, run.peak_rss_bytes, run.main_peak_rss_bytes, steps, progress, None, None)


def bench(repeats: int, scratch: Path) -> TrackingResult:
    print("tracking, CDNOW master:", file=sys.stderr, flush=True)
    # Store creation alone, on a store of its own (the runs below get a fresh one of theirs).
    alone = scratch / "store_alone"
    alone.mkdir()
    created = run_streaming(task_command("init-store", f"sqlite:///{alone / 'mlflow.db'}"))
    creation = json.loads(created.stdout.strip().splitlines()[-1])["seconds"]
    print(f"  store creation alone: {creation:.2f} s in the process ({created.seconds:.2f} s whole)", file=sys.stderr)
    warm_up = run_clv(scratch, tracking=True)
    print(f"  warm-up (tracked, fresh store): {warm_up.seconds:.2f} s", file=sys.stderr, flush=True)
    off, on = [], []
    for repeat in range(repeats):
        for tracking, runs in ((False, off), (True, on)):
            runs.append(run_clv(scratch, tracking))
            last = runs[-1]
            print(
                f"  tracking {'on ' if tracking else 'off'} repeat {repeat + 1}: {last.seconds:6.2f} s, "
                f"CPU {last.cpu_seconds:5.1f} s, peak RSS {last.peak_rss_bytes / 1e9:.2f} GB; "
                + ", ".join(f"{s.name} {s.seconds:.1f}" for s in last.steps),
                file=sys.stderr, flush=True,
            )
    return TrackingResult(off, on, warm_up, creation, created.seconds)


def _step_median(runs: list[OurRun], name: str) -> float:
    values = [step.seconds for run in runs for step in run.steps if step.name == name]
    return median(values) if values else 0.0


def format_report(result: TrackingResult) -> str:
    def wall(runs: list[OurRun]) -> str:
        values = [r.seconds for r in runs]
        return f"{median(values):.2f} ({min(values):.2f}-{max(values):.2f})"

    lines = [
        "| variant | wall s (median, range) | CPU s | peak RSS |",
        "|---|---|---|---|",
        f"| tracking off | {wall(result.off)} | {median([r.cpu_seconds for r in result.off]):.1f} | "
        f"{median([r.peak_rss_bytes for r in result.off]) / 1e9:.2f} GB |",
        f"| tracking on | {wall(result.on)} | {median([r.cpu_seconds for r in result.on]):.1f} | "
        f"{median([r.peak_rss_bytes for r in result.on]) / 1e9:.2f} GB |",
        f"| first tracked run on a new store (warm-up) | {result.warm_up.seconds:.2f} | {result.warm_up.cpu_seconds:.1f} | "
        f"{result.warm_up.peak_rss_bytes / 1e9:.2f} GB |",
        "",
        f"tracking adds {result.difference():+.2f} s wall ({result.cpu_difference():+.1f} CPU-s) per run; "
        f"target <= {TARGET_SECONDS:g} s: {'met' if result.difference() <= TARGET_SECONDS else 'NOT met'}",
        "",
        "| step | off s | on s | difference |",
        "|---|---|---|---|",
    ]
    for name in STEPS:
        off, on = _step_median(result.off, name), _step_median(result.on, name)
        lines.append(f"| {name} | {off:.2f} | {on:.2f} | {on - off:+.2f} |")
    lines += [
        "",
        f"one-time store creation: {result.store_creation_seconds:.2f} s alone (schema migrations, in a process "
        f"that had imported MLflow; {result.store_creation_process_seconds:.2f} s whole); "
        f"the first tracked run took {result.warm_up.seconds - median([r.seconds for r in result.on]):+.2f} s "
        "more than the median tracked run",
    ]
    return "\n".join(lines)


def run(args: argparse.Namespace, scratch: Path) -> TrackingResult:
    started = dt.datetime.now()
    machine = machine_description()
    scratch.mkdir(parents=True, exist_ok=True)
    result = bench(args.tracking_repeats, scratch)
    print(f"\nclv run on CDNOW master (configs/default.yaml), MLflow tracking off vs on ({started:%Y-%m-%d %H:%M}, {machine})\n")
    print(format_report(result))
    write_json(RESULTS_DIRECTORY / f"tracking_{started:%Y%m%d_%H%M%S}.json", {
        "started": started.isoformat(timespec="seconds"), "machine": machine,
        "result": dataclasses.asdict(result), "difference_seconds": result.difference(),
        "cpu_difference_seconds": result.cpu_difference(),
    })
    return result


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tracking-repeats", type=int, default=3, help="runs of each variant (after one warm-up)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_tracking", description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", dest="tracking_repeats", type=int, default=3, help="runs of each variant")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench_tracking_") as scratch:
        run(args, Path(scratch))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
