"""Time batch scoring (`clv score`) of a whole synthetic log with the champion model.

Usage::

    python -m benchmarks.bench_scoring --rows 50M --repeats 3 [--where]

A pipeline run on the log registers a model version (one is made here, or
:mod:`benchmarks.run` hands over the first run of :mod:`benchmarks.bench_pipeline`);
``clv promote 1`` makes it champion; then each repeat runs, in a fresh process::

    clv score --model models:/clv@champion --input LOG --as-of 1998-06-30 --out SCRATCH/scores.parquet -q -c CONFIG

and is measured whole: wall, CPU, peak RSS, customers scored per second. ``--where`` adds
one run (not counted) whose main thread's stack is sampled every 0.2 s, to show where the
time goes (scoring prints no progress lines).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from benchmarks._measure import format_stack_summary, median, run_streaming, task_command
from benchmarks._tasks import STACK_SAMPLES_ENV
from benchmarks.bench_features import RESULTS_DIRECTORY, ensure_log
from benchmarks.bench_pipeline import (
    OBSERVATION_END,
    Workspace,
    init_store,
    machine_description,
    make_workspace,
    parse_size_list,
    run_ours,
    write_json,
)
from benchmarks.generate import format_count, read_true_parameters

# Issue 7: rows -> (seconds, peak RSS bytes), end to end.
TARGETS = {50_000_000: (30.0, 4 * 10**9)}


@dataclasses.dataclass
class ScoreRun:
    seconds: float
    in_command_seconds: float
    cpu_seconds: float
    peak_rss_bytes: int
    customers: int
    log_rows: int | None


@dataclasses.dataclass
class ScoringResult:
    rows_requested: int
    rows: int
    customers: int
    setup: dict[str, Any]
    runs: list[ScoreRun]
    where: list[dict[str, Any]] | None

    def seconds(self) -> float:
        return median([r.seconds for r in self.runs])

    def rss(self) -> float:
        return median([r.peak_rss_bytes for r in self.runs])

    def target(self) -> tuple[str, str]:
        target = TARGETS.get(self.rows_requested)
        if target is None:
            return "-", "-"
        seconds, rss = target
        met = self.seconds() <= seconds and self.rss() <= rss
        return f"<= {seconds:g} s, <= {rss / 1e9:g} GB", "yes" if met else "NO"


def prepare(workspace: Workspace | None, log: Path, scratch: Path) -> tuple[Workspace, dict[str, Any]]:
    """A workspace whose store has version 1 of the model as champion."""
    setup: dict[str, Any] = {}
    if workspace is None:
        workspace = make_workspace(log, scratch)
        init_store(workspace)
        print("  pipeline run to register a model ...", file=sys.stderr, flush=True)
        made = run_ours(workspace)
        setup["pipeline_run_seconds"] = made.seconds
    else:
        setup["pipeline_run"] = "reused from bench_pipeline"
    promoted = run_streaming(task_command("clv", "promote", "1", "-c", str(workspace.config)))
    setup["promote_seconds"] = promoted.seconds
    print(f"  promoted version 1 in {promoted.seconds:.1f} s", file=sys.stderr, flush=True)
    return workspace, setup


def score_command(workspace: Workspace, out: Path) -> list[str]:
    return task_command(
        "clv", "score", "--model", "models:/clv@champion", "--input", str(workspace.log),
        "--as-of", OBSERVATION_END, "--out", str(out), "-q", "-c", str(workspace.config),
    )


def run_score(workspace: Workspace, out: Path, environment: dict[str, str] | None = None) -> ScoreRun:
    for stale in (out, out.with_name(out.name + ".manifest.json")):
        stale.unlink(missing_ok=True)
    run = run_streaming(score_command(workspace, out), environment=environment)
    report = json.loads(run.stdout.strip().splitlines()[-1])
    manifest = json.loads(out.with_name(out.name + ".manifest.json").read_text())
    return ScoreRun(
        seconds=run.seconds,
        in_command_seconds=report["seconds"],
        cpu_seconds=run.cpu_seconds,
        peak_rss_bytes=run.peak_rss_bytes,
        customers=int(manifest["rows"]),
        log_rows=manifest.get("input_rows"),
    )


def where_time_goes(workspace: Workspace, out: Path, scratch: Path) -> list[dict[str, Any]]:
    """One extra run with the stack sampler on: seconds by the innermost project frame."""
    from benchmarks._measure import child_environment, summarise_stack_samples

    samples = scratch / "score_stacks.json"
    environment = child_environment() | {STACK_SAMPLES_ENV: str(samples)}
    run_score(workspace, out, environment)
    return summarise_stack_samples(samples)


def bench(
    rows: int, seed: int, repeats: int, scratch: Path, workspace: Workspace | None = None, where: bool = False
) -> ScoringResult:
    log = ensure_log(rows, seed)
    metadata = read_true_parameters(log)
    label = format_count(rows)
    print(f"scoring, {label} rows:", file=sys.stderr, flush=True)
    workspace, setup = prepare(workspace, log, scratch / f"scoring_{label}")
    out = scratch / f"scores_{label}.parquet"
    runs = []
    for repeat in range(repeats):
        runs.append(run_score(workspace, out))
        last = runs[-1]
        print(
            f"  {label:>4} score repeat {repeat + 1}: {last.seconds:7.2f} s (in command {last.in_command_seconds:.2f}), "
            f"CPU {last.cpu_seconds:6.1f} s, peak RSS {last.peak_rss_bytes / 1e9:5.2f} GB, {last.customers:,} customers",
            file=sys.stderr, flush=True,
        )
    located = where_time_goes(workspace, out, scratch) if where else None
    out.unlink(missing_ok=True)
    return ScoringResult(rows, metadata["rows"], metadata["customers"], setup, runs, located)


def format_table(results: list[ScoringResult]) -> str:
    header = [
        "rows", "customers scored", "wall s (median, range)", "in-command s", "CPU s", "peak RSS",
        "customers/s", "log rows/s", "target", "met",
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for result in results:
        seconds = [r.seconds for r in result.runs]
        wall = f"{median(seconds):.2f}" + (f" ({min(seconds):.2f}-{max(seconds):.2f})" if len(seconds) > 1 else " (1 run)")
        target, met = result.target()
        lines.append("| " + " | ".join([
            f"{result.rows:,}", f"{result.runs[0].customers:,}", wall,
            f"{median([r.in_command_seconds for r in result.runs]):.2f}",
            f"{median([r.cpu_seconds for r in result.runs]):.1f}", f"{result.rss() / 1e9:.2f} GB",
            f"{result.runs[0].customers / result.seconds():,.0f}", f"{result.rows / result.seconds():,.0f}",
            target, met,
        ]) + " |")
    for result in results:
        if result.where:
            lines += ["", f"where the time goes ({format_count(result.rows_requested)}, one sampled run, seconds of wall):", ""]
            lines += format_stack_summary(result.where, 12)
    return "\n".join(lines)


def run(args: argparse.Namespace, scratch: Path, workspaces: dict[int, Workspace] | None = None) -> list[ScoringResult]:
    started = dt.datetime.now()
    machine = machine_description()
    results = [
        bench(rows, args.seed, args.scoring_repeats, scratch, (workspaces or {}).get(rows), args.where)
        for rows in args.scoring_rows
    ]
    print(f"\nclv score --model models:/clv@champion ({started:%Y-%m-%d %H:%M}, {machine})")
    print("wall = whole process (start-up, model load from the registry, features, scoring, export)\n")
    print(format_table(results))
    write_json(RESULTS_DIRECTORY / f"scoring_{started:%Y%m%d_%H%M%S}.json", {
        "started": started.isoformat(timespec="seconds"), "machine": machine,
        "results": [dataclasses.asdict(r) | {"target": r.target()} for r in results],
    })
    return results


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--scoring-rows", type=parse_size_list, default=[5 * 10**7], help="log sizes to score (default 50M)")
    parser.add_argument("--scoring-repeats", type=int, default=3)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_scoring", description=__doc__.splitlines()[0])
    add_arguments(parser)
    parser.add_argument("--where", action="store_true", help="one extra sampled run: where the time goes")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench_scoring_") as scratch:
        run(args, Path(scratch))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
