"""Time the whole pipeline, as `clv run` runs it, against the plain-lifetimes path on the same logs.

Usage::

    python -m benchmarks.bench_pipeline --rows 1M,10M,50M --repeats 3 --skip-lifetimes-above 10M

For each synthetic log, ``clv run`` (features → fits → value → report → MLflow logging and
model registration) runs in a fresh process against a temporary config and SQLite store;
its wall and CPU are the whole process's, and its peak RSS the whole process tree's (the
command tracks MLflow in a child process: the two processes' peaks added up). Step times come from the progress
lines the command prints on stderr ("… computing features", "… fitting …", "… valuing
customers", "… drawing plots", "… logging to MLflow"), stamped as they arrive. The
plain-lifetimes path (summary, BetaGeoFitter, GammaGammaFitter, customer_lifetime_value)
alternates with it, one fresh process per repeat. The first run's BG/NBD and Gamma-Gamma
parameters are compared with the generator's true ones stored in the log.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import os
import platform
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

from benchmarks._measure import (
    StreamedRun,
    child_environment,
    format_stack_summary,
    median,
    run_streaming,
    summarise_stack_samples,
    task_command,
)
from benchmarks._tasks import RETURNED_MARKER, STACK_SAMPLES_ENV
from benchmarks.bench_features import RESULTS_DIRECTORY, _commit, _memory_gib, _version, ensure_log
from benchmarks.generate import format_count, parse_count, read_true_parameters

# Targets for the whole run (issue 8): rows -> (seconds, peak RSS bytes or None).
TARGETS = {1_000_000: (5.0, None), 50_000_000: (60.0, 4 * 10**9)}

CALIBRATION_END = "1997-09-30"
OBSERVATION_END = "1998-06-30"

# The steps of a run, in order, named from its progress lines. "start-up" is spawn to the
# first line (interpreter, imports, config, opening the MLflow store and run); "exit" is
# from the command's return to the end of the process (freeing the frames).
STEPS = (
    "start-up", "features", "fit: calibration purchase", "fit: calibration spend + backtest", "fit: all data",
    "value", "report", "mlflow", "exit",
)
STEP_TITLES = {
    "start-up": "start-up (interpreter, imports, config, MLflow run opened)",
    "features": "features (DuckDB, Parquet written, frames built)",
    "fit: calibration purchase": "fit purchase model(s) on the calibration period",
    "fit: calibration spend + backtest": "fit Gamma-Gamma on the calibration period + holdout backtest",
    "fit: all data": "fit BG/NBD + Gamma-Gamma on all data",
    "value": "value (CLV, P(alive), historical CLV, tiers; customers.parquet)",
    "report": "report (plots, summary.json)",
    "mlflow": "MLflow logging + model registration (+ printed report)",
    "exit": "interpreter exit",
}
# Which lifetimes steps do the same work as which of ours (for the per-step ratios).
LIFETIMES_STEPS = {
    "features": ("read", "summary"),
    "fit: all data": ("fit_bgnbd", "fit_gamma_gamma"),
    "value": ("clv",),
}

# A fit "recovers" the truth when every parameter is within this relative distance, and the
# mean purchase rate r/alpha is within RATE_BIAS_RANGE: merging same-day purchases into one
# period (daily resolution) lowers the rate by a few percent (-3.5 % on the 1M log).
PARAMETER_TOLERANCE = 0.10
RATE_BIAS_RANGE = (-0.07, 0.01)


@dataclasses.dataclass
class Step:
    name: str
    seconds: float
    cpu_seconds: float
    peak_rss_bytes: int


@dataclasses.dataclass
class OurRun:
    """One `clv run` child: the whole process and its steps."""

    seconds: float
    cpu_seconds: float
    peak_rss_bytes: int  # the process tree's (see benchmarks._measure.StreamedRun)
    main_peak_rss_bytes: int
    steps: list[Step]
    progress: list[tuple[float, str]]
    run_dir: str | None
    models: dict[str, Any] | None

    def step(self, name: str) -> Step | None:
        return next((s for s in self.steps if s.name == name), None)


@dataclasses.dataclass
class LifetimesRun:
    seconds: float
    cpu_seconds: float
    peak_rss_bytes: int
    report: dict[str, Any]


@dataclasses.dataclass
class Workspace:
    """A temporary config, SQLite store and output folder for one log."""

    directory: Path
    config: Path
    tracking_uri: str
    log: Path
    store_seconds: float | None = None


def _step_of(message: str) -> str | None:
    if message == "computing features":
        return "features"
    if message == "fitting Gamma-Gamma (calibration)":
        # The backtest of every candidate runs after this line, before the refit on all data.
        return "fit: calibration spend + backtest"
    if message.endswith("(calibration)"):
        return "fit: calibration purchase"
    if message.startswith("fitting") and message.endswith("on all data"):
        return "fit: all data"
    return {"valuing customers": "value", "drawing plots": "report", "logging to MLflow": "mlflow"}.get(message)


def steps_from_progress(run: StreamedRun) -> tuple[list[Step], list[tuple[float, str]]]:
    """Per-step seconds, CPU and peak RSS from the stamped progress lines of a `clv run` child.

    A step lasts from its first progress line to the next step's. Its CPU is the difference of
    the child's CPU clock read at those two lines. Its peak RSS is the child's high-water mark
    at its end when that rose during the step (exact), else the largest sampled RSS in it: the
    main process's, not its tracking child's.
    """
    boundaries: list[tuple[str, float, float, int]] = [("start-up", 0.0, 0.0, 0)]
    progress = []
    for line in run.lines:
        if line.text == RETURNED_MARKER:
            boundaries.append(("exit", line.seconds, line.cpu_seconds, line.rss_high_water_bytes))
            continue
        if not line.text.startswith("… "):
            continue
        message = line.text[2:].strip()
        progress.append((round(line.seconds, 3), message))
        name = _step_of(message)
        if name is not None and name != boundaries[-1][0]:
            boundaries.append((name, line.seconds, line.cpu_seconds, line.rss_high_water_bytes))
    boundaries.append(("end", run.seconds, run.cpu_seconds, run.main_peak_rss_bytes))
    steps = []
    for (name, start, cpu_start, high_start), (_, end, cpu_end, high_end) in zip(boundaries, boundaries[1:]):
        peak = high_end if high_end > high_start else run.peak_rss_between(start, end)
        steps.append(Step(name, end - start, cpu_end - cpu_start, peak))
    return steps, progress


def default_candidates() -> list[str]:
    """The purchase-model candidates a config gets when it names none (configs/default.yaml's):
    what users run, so what the benchmarks run unless told otherwise."""
    from pipeline.config import PurchaseModelSettings

    return list(PurchaseModelSettings().candidates)


def make_workspace(
    log: Path, directory: Path, tracking: bool = True, candidates=None, overrides: dict[str, Any] | None = None
) -> Workspace:
    """Write the benchmark's config for ``log`` into ``directory`` (store and outputs beside it).

    ``candidates``: the purchase models (default: :func:`default_candidates`). ``overrides``
    are top-level config sections set on top (e.g. ``engine`` and ``spark``).
    """
    directory.mkdir(parents=True, exist_ok=True)
    uri = f"sqlite:///{directory / 'mlflow.db'}"
    settings = {
        "input": {
            "path": str(log),
            "format": "parquet",
            "columns": {"customer_id": "customer_id", "date": "date", "amount": "amount"},
            "date_format": None,
        },
        "features": {"period": {"unit": "week", "resolution": "daily"}, "calibration_end": CALIBRATION_END},
        "models": {"purchase": {"candidates": list(candidates or default_candidates())}},
        "value": {"margin_rate": 0.3},
        "tracking": {"enabled": tracking, "uri": uri},
        "output_dir": str(directory / "outputs"),
        **(overrides or {}),
    }
    config = directory / "config.yaml"
    config.write_text(yaml.safe_dump(settings, sort_keys=False))
    return Workspace(directory=directory, config=config, tracking_uri=uri, log=log)


def init_store(workspace: Workspace) -> float:
    """Create the store before the timed runs: a first run's one-time cost (see bench_tracking)."""
    run = run_streaming(task_command("init-store", workspace.tracking_uri))
    workspace.store_seconds = json.loads(run.stdout.strip().splitlines()[-1])["seconds"]
    return run.seconds


def latest_run_dir(workspace: Workspace) -> Path | None:
    latest = workspace.directory / "outputs" / "LATEST"
    if not latest.is_file():
        return None
    name = latest.read_text().strip()
    path = Path(name) if Path(name).is_absolute() else latest.parent / name
    return path if path.is_dir() else None


def run_ours(
    workspace: Workspace, timeout_seconds: float | None = None, environment: dict[str, str] | None = None
) -> OurRun:
    """`clv run -c CONFIG` in a fresh process (progress lines on, so no ``-q``)."""
    run = run_streaming(
        task_command("clv", "run", "-c", str(workspace.config)), timeout_seconds=timeout_seconds, environment=environment
    )
    steps, progress = steps_from_progress(run)
    run_dir = latest_run_dir(workspace)
    models = None
    if run_dir is not None and (run_dir / "model" / "models.json").is_file():
        models = json.loads((run_dir / "model" / "models.json").read_text())
    return OurRun(
        run.seconds, run.cpu_seconds, run.peak_rss_bytes, run.main_peak_rss_bytes, steps, progress, str(run_dir), models
    )


def run_lifetimes(log: Path, timeout_seconds: float | None = None) -> LifetimesRun:
    run = run_streaming(
        task_command("lifetimes-pipeline", str(log), "--observation-end", OBSERVATION_END),
        timeout_seconds=timeout_seconds,
    )
    report = json.loads(run.stdout.strip().splitlines()[-1])
    return LifetimesRun(run.seconds, run.cpu_seconds, run.peak_rss_bytes, report)


def where_time_goes(workspace: Workspace, timeout_seconds: float | None = None) -> tuple[OurRun, list[dict[str, Any]]]:
    """One extra `clv run` with its main thread's stack sampled: seconds by project frame."""
    samples = workspace.directory / "run_stacks.json"
    sampled = run_ours(workspace, timeout_seconds, child_environment() | {STACK_SAMPLES_ENV: str(samples)})
    if sampled.run_dir:
        shutil.rmtree(sampled.run_dir, ignore_errors=True)
    return sampled, summarise_stack_samples(samples)


@dataclasses.dataclass
class SizeResult:
    rows_requested: int
    rows: int
    customers: int
    truth: dict[str, Any]
    ours: list[OurRun]
    lifetimes: list[LifetimesRun]
    lifetimes_skipped: str | None
    workspace: Workspace
    where: list[dict[str, Any]] | None = None
    sampled_run: OurRun | None = None

    def ours_seconds(self) -> float:
        return median([r.seconds for r in self.ours])

    def ours_rss(self) -> float:
        return median([r.peak_rss_bytes for r in self.ours])

    def step_seconds(self, name: str) -> float | None:
        values = [r.step(name).seconds for r in self.ours if r.step(name) is not None]
        return median(values) if values else None

    def step_cpu(self, name: str) -> float | None:
        values = [r.step(name).cpu_seconds for r in self.ours if r.step(name) is not None]
        return median(values) if values else None

    def step_rss(self, name: str) -> float | None:
        values = [r.step(name).peak_rss_bytes for r in self.ours if r.step(name) is not None]
        return median(values) if values else None

    def lifetimes_step_seconds(self, names: tuple[str, ...]) -> float | None:
        if not self.lifetimes:
            return None
        return median([sum(r.report["steps"][n]["seconds"] for n in names) for r in self.lifetimes])

    def target(self) -> tuple[str, str]:
        target = TARGETS.get(self.rows_requested)
        if target is None:
            return "-", "-"
        seconds, rss = target
        parts, met = [f"<= {seconds:g} s"], self.ours_seconds() <= seconds
        if rss is not None:
            parts.append(f"<= {rss / 1e9:g} GB")
            met = met and self.ours_rss() <= rss
        return ", ".join(parts), "yes" if met else "NO"


def bench_size(
    rows: int,
    seed: int,
    repeats: int,
    lifetimes_repeats: int,
    skip_lifetimes_above: int | None,
    scratch: Path,
    timeout_seconds: float | None = None,
    where: bool = False,
    candidates: list[str] | None = None,
) -> SizeResult:
    log = ensure_log(rows, seed)
    metadata = read_true_parameters(log)
    label = format_count(rows)
    skip = None
    if skip_lifetimes_above is not None and rows > skip_lifetimes_above:
        skip = f"skipped (> {format_count(skip_lifetimes_above)})"
    elif lifetimes_repeats == 0:
        skip = "skipped"
    workspace = make_workspace(log, scratch / f"pipeline_{label}", candidates=candidates)
    store_seconds = init_store(workspace)
    print(f"  {label:>4} store created in {store_seconds:.1f} s (not counted)", file=sys.stderr, flush=True)
    ours: list[OurRun] = []
    lifetimes: list[LifetimesRun] = []
    for repeat in range(max(repeats, 0 if skip else lifetimes_repeats)):
        if repeat < repeats:
            ours.append(run_ours(workspace, timeout_seconds))
            _progress(label, "ours", repeat, ours[-1].seconds, ours[-1].cpu_seconds, ours[-1].peak_rss_bytes)
            print("         " + ", ".join(f"{s.name} {s.seconds:.1f}" for s in ours[-1].steps), file=sys.stderr)
            if repeat > 0 and ours[-1].run_dir:
                # Later repeats' outputs are not needed (the first is kept for scoring and checks).
                shutil.rmtree(ours[-1].run_dir, ignore_errors=True)
        if skip is None and repeat < lifetimes_repeats:
            lifetimes.append(run_lifetimes(log, timeout_seconds))
            last = lifetimes[-1]
            _progress(label, "lifetimes", repeat, last.seconds, last.cpu_seconds, last.peak_rss_bytes)
            print(
                "         " + ", ".join(f"{k} {v['seconds']:.1f}" for k, v in last.report["steps"].items()),
                file=sys.stderr,
            )
    sampled, located = where_time_goes(workspace, timeout_seconds) if where else (None, None)
    return SizeResult(
        rows_requested=rows,
        rows=metadata["rows"],
        customers=metadata["customers"],
        truth=metadata,
        ours=ours,
        lifetimes=lifetimes,
        lifetimes_skipped=skip,
        workspace=workspace,
        where=located,
        sampled_run=sampled,
    )


def _progress(label: str, task: str, repeat: int, seconds: float, cpu: float, rss: int) -> None:
    print(
        f"  {label:>4} {task:<9} repeat {repeat + 1}: {seconds:7.2f} s, CPU {cpu:6.1f} s, peak RSS {rss / 1e9:5.2f} GB",
        file=sys.stderr,
        flush=True,
    )


def _range_text(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.2f} (1 run)"
    return f"{median(values):.2f} ({min(values):.2f}-{max(values):.2f})"


def _gb(value: float | None) -> str:
    return "-" if value is None else f"{value / 1e9:.2f} GB"


def format_table(results: list[SizeResult]) -> str:
    header = [
        "rows", "customers", "ours wall s (median, range)", "ours CPU s", "ours peak RSS (process tree)",
        "lifetimes wall s", "lifetimes CPU s", "lifetimes peak RSS", "time ratio (lifetimes/ours)",
        "RSS ratio", "target (ours)", "met",
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for result in results:
        target, met = result.target()
        if result.lifetimes:
            seconds = [r.seconds for r in result.lifetimes]
            rss = median([r.peak_rss_bytes for r in result.lifetimes])
            lifetimes = [
                _range_text(seconds),
                f"{median([r.cpu_seconds for r in result.lifetimes]):.1f}",
                _gb(rss),
                f"{median(seconds) / result.ours_seconds():.2f}x",
                f"{rss / result.ours_rss():.2f}x",
            ]
        else:
            lifetimes = [result.lifetimes_skipped or "skipped"] * 3 + ["-", "-"]
        lines.append("| " + " | ".join([
            f"{result.rows:,}", f"{result.customers:,}",
            _range_text([r.seconds for r in result.ours]) if len(result.ours) > 1 else f"{result.ours[0].seconds:.2f} (1 run)",
            f"{median([r.cpu_seconds for r in result.ours]):.1f}", _gb(result.ours_rss()),
            *lifetimes, target, met,
        ]) + " |")
    return "\n".join(lines)


def format_steps(results: list[SizeResult]) -> str:
    """Per-step medians, ours next to the lifetimes steps that do the same work."""
    header = ["rows", "step", "ours s", "ours CPU s", "peak RSS in step", "share of wall", "lifetimes s", "ratio (lifetimes/ours)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for result in results:
        total = result.ours_seconds()
        for name in STEPS:
            seconds = result.step_seconds(name)
            if seconds is None:
                continue
            theirs = result.lifetimes_step_seconds(LIFETIMES_STEPS[name]) if name in LIFETIMES_STEPS else None
            lifetimes_text = "-"
            if name in LIFETIMES_STEPS:
                lifetimes_text = result.lifetimes_skipped or "skipped" if theirs is None else f"{theirs:.2f} ({' + '.join(LIFETIMES_STEPS[name])})"
            lines.append("| " + " | ".join([
                format_count(result.rows_requested), STEP_TITLES[name], f"{seconds:.2f}", f"{result.step_cpu(name):.1f}",
                _gb(result.step_rss(name)), f"{seconds / total:.0%}", lifetimes_text,
                "-" if theirs is None or seconds <= 0 else f"{theirs / seconds:.2f}x",
            ]) + " |")
    return "\n".join(lines)


def parameter_recovery(result: SizeResult) -> list[dict[str, Any]]:
    """True vs fitted parameters (ours, and lifetimes' when it ran) with relative differences."""
    models = next((r.models for r in result.ours if r.models), None)
    if models is None:
        return []
    fitted = {**models["final"]["purchase"]["params"], **models["final"]["spend"]["params"]}
    errors = {**models["final"]["purchase"].get("standard_errors", {}), **models["final"]["spend"].get("standard_errors", {})}
    truth = {**result.truth["bgnbd"], **result.truth["gamma_gamma"]}
    truth["gamma"] = truth.pop("v")
    theirs = {}
    if result.lifetimes:
        theirs = {**result.lifetimes[0].report["bgnbd"], **result.lifetimes[0].report["gamma_gamma"]}
        theirs["gamma"] = theirs.pop("v")
    rows = []
    for name in ("r", "alpha", "a", "b", "p", "q", "gamma"):
        rows.append({
            "parameter": name, "true": truth[name], "ours": fitted[name], "standard_error": errors.get(name),
            "relative_difference": fitted[name] / truth[name] - 1,
            "lifetimes": theirs.get(name),
            "ours_vs_lifetimes": None if name not in theirs else fitted[name] / theirs[name] - 1,
            "within_tolerance": abs(fitted[name] / truth[name] - 1) <= PARAMETER_TOLERANCE,
        })
    rate_true, rate_ours = truth["r"] / truth["alpha"], fitted["r"] / fitted["alpha"]
    rows.append({
        "parameter": "r/alpha", "true": rate_true, "ours": rate_ours, "standard_error": None,
        "relative_difference": rate_ours / rate_true - 1,
        "lifetimes": None if not theirs else theirs["r"] / theirs["alpha"],
        "ours_vs_lifetimes": None if not theirs else rate_ours / (theirs["r"] / theirs["alpha"]) - 1,
        "within_tolerance": RATE_BIAS_RANGE[0] <= rate_ours / rate_true - 1 <= RATE_BIAS_RANGE[1],
    })
    return rows


def format_recovery(results: list[SizeResult]) -> str:
    header = ["rows", "parameter", "true", "ours (± s.e.)", "ours/true − 1", "lifetimes", "ours/lifetimes − 1", "within bias?"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for result in results:
        for row in parameter_recovery(result):
            error = f" ± {row['standard_error']:.4f}" if row["standard_error"] is not None else ""
            lines.append("| " + " | ".join([
                format_count(result.rows_requested), row["parameter"], f"{row['true']:.4g}", f"{row['ours']:.4f}{error}",
                f"{row['relative_difference']:+.1%}",
                "-" if row["lifetimes"] is None else f"{row['lifetimes']:.4f}",
                "-" if row["ours_vs_lifetimes"] is None else f"{row['ours_vs_lifetimes']:+.1e}",
                "yes" if row["within_tolerance"] else "NO",
            ]) + " |")
    lines.append("")
    lines.append(
        f"within bias: |ours/true − 1| <= {PARAMETER_TOLERANCE:.0%} per parameter, and the mean rate r/alpha "
        f"within {RATE_BIAS_RANGE[0]:+.0%}..{RATE_BIAS_RANGE[1]:+.0%} (same-day purchases merge into one period)"
    )
    return "\n".join(lines)


def machine_description() -> str:
    text = f"{os.cpu_count()} cores, {_memory_gib():.0f} GiB, Python {platform.python_version()}"
    text += f", duckdb {_version('duckdb')}, pandas {_version('pandas')}, mlflow {_version('mlflow')}"
    text += f", lifetimes {_version('lifetimes')}, commit {_commit()}"
    try:
        text += ", load average at start " + " ".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        pass
    return text


def write_json(path: Path, payload: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, default=_json_default) + "\n")
    print(f"\nmeasurements written to {path}", file=sys.stderr)
    return path


def _json_default(value: Any) -> Any:
    if dataclasses.is_dataclass(value):
        return dataclasses.asdict(value)
    if isinstance(value, Path):
        return str(value)
    raise TypeError(type(value))


def parse_size_list(text: str) -> list[int]:
    return [parse_count(part) for part in text.split(",") if part.strip()]


def parse_optional_count(text: str) -> int | None:
    return None if text.strip().lower() in ("none", "never", "") else parse_count(text)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rows", type=parse_size_list, default=[10**6, 10**7, 5 * 10**7], help="e.g. 1M,10M,50M")
    parser.add_argument("--repeats", type=int, default=3, help="fresh-process repeats per tool and size")
    parser.add_argument("--lifetimes-repeats", type=int, help="repeats for lifetimes (default: --repeats; 0 skips it)")
    parser.add_argument(
        "--skip-lifetimes-above", type=parse_optional_count, default=10**7,
        help="skip lifetimes for logs larger than this (default 10M: it takes ~10 min and 10.5 GB at 50M; 'none' never skips)",
    )
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--candidates", type=lambda text: [part.strip() for part in text.split(",") if part.strip()],
        help="purchase-model candidates of our config (default: the default config's, all three)",
    )
    parser.add_argument("--timeout", type=float, help="give up on one child after this many seconds")
    parser.add_argument(
        "--where", action="store_true",
        help="one extra run per benchmark (not counted) with the stack sampled: where the time goes",
    )


def run(args: argparse.Namespace, scratch: Path) -> tuple[list[SizeResult], Path]:
    """Benchmark every size; print the tables; write the JSON. Workspaces stay in ``scratch``."""
    lifetimes_repeats = args.repeats if args.lifetimes_repeats is None else args.lifetimes_repeats
    started = dt.datetime.now()
    machine = machine_description()
    results = []
    for rows in args.rows:
        print(f"pipeline, {format_count(rows)} rows:", file=sys.stderr, flush=True)
        results.append(
            bench_size(
                rows, args.seed, args.repeats, lifetimes_repeats, args.skip_lifetimes_above, scratch, args.timeout,
                args.where, args.candidates,
            )
        )
    print(f"\nclv run (features → fit → value → report → MLflow) vs plain lifetimes ({started:%Y-%m-%d %H:%M}, {machine})")
    candidates = args.candidates or default_candidates()
    print(f"candidates: {', '.join(candidates)} (plain lifetimes: BG/NBD only); wall = whole process, start-up included\n")
    print(format_table(results))
    print("\nper step (medians; step times from the progress lines on stderr):\n")
    print(format_steps(results))
    print("\nparameter recovery (first run; BG/NBD in weeks, Gamma-Gamma in $):\n")
    print(format_recovery(results))
    for result in results:
        if result.where:
            print(
                f"\nwhere the time goes ({format_count(result.rows_requested)}, one extra run with its stack sampled "
                f"every 0.2 s, {result.sampled_run.seconds:.1f} s; seconds of wall by innermost project frame):\n"
            )
            print("\n".join(format_stack_summary(result.where, 20)))
    path = write_json(RESULTS_DIRECTORY / f"pipeline_{started:%Y%m%d_%H%M%S}.json", {
        "started": started.isoformat(timespec="seconds"),
        "machine": machine,
        "results": [
            {
                "rows": r.rows, "customers": r.customers, "ours": r.ours, "lifetimes": r.lifetimes,
                "lifetimes_skipped": r.lifetimes_skipped, "store_creation_seconds": r.workspace.store_seconds,
                "recovery": parameter_recovery(r), "target": r.target(),
                "where": r.where, "sampled_run": r.sampled_run,
            }
            for r in results
        ],
    })
    return results, path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_pipeline", description=__doc__.splitlines()[0])
    add_arguments(parser)
    parser.add_argument("--keep", type=Path, help="keep the configs, stores and outputs in this folder")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    if args.keep is not None:
        run(args, args.keep)
        return 0
    with tempfile.TemporaryDirectory(prefix="bench_pipeline_") as scratch:
        run(args, Path(scratch))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
