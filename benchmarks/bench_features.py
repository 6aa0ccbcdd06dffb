"""Time our features stage against lifetimes' summary helper on the same synthetic logs.

Usage::

    python -m benchmarks.bench_features --rows 1M,10M,50M --repeats 3 --skip-lifetimes-above 10M

Logs missing from benchmarks/data/ are generated first (seed 7). Every repeat runs in a
fresh process (see :mod:`benchmarks._measure`); ours and lifetimes alternate, so that a
noisy neighbour on a shared machine slows both rather than one. The first repeat of each
also saves its summary, and the two are compared customer by customer.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import os
import platform
import sys
import tempfile
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq

from benchmarks._measure import Measurement, median, run_task
from benchmarks.generate import default_path, format_count, generate, parse_count, read_true_parameters

RESULTS_DIRECTORY = Path(__file__).resolve().parent / "results"

# Issue 3's targets for our stage: (rows, seconds, peak RSS bytes or None).
TARGETS = {10_000_000: (4.0, None), 50_000_000: (15.0, 4 * 10**9)}


@dataclasses.dataclass
class SizeResult:
    rows_requested: int
    rows: int
    customers: int
    ours: list[Measurement]
    lifetimes: list[Measurement]
    lifetimes_skipped: str | None
    equality: str | None

    def ours_seconds(self) -> float:
        return median([m.seconds for m in self.ours])

    def ours_rss(self) -> float:
        return median([m.peak_rss_bytes for m in self.ours])

    def lifetimes_seconds(self) -> float | None:
        return median([m.seconds for m in self.lifetimes]) if self.lifetimes else None

    def lifetimes_rss(self) -> float | None:
        return median([m.peak_rss_bytes for m in self.lifetimes]) if self.lifetimes else None

    def target(self) -> tuple[str, str]:
        """The target's text and whether our median meets it."""
        target = TARGETS.get(self.rows_requested)
        if target is None:
            return "-", "-"
        seconds, rss = target
        parts = [f"<= {seconds:g} s"]
        met = self.ours_seconds() <= seconds
        if rss is not None:
            parts.append(f"<= {rss / 1e9:g} GB")
            met = met and self.ours_rss() <= rss
        return ", ".join(parts), "yes" if met else "NO"


def compare_summaries(ours_path: Path, lifetimes_path: Path) -> str:
    """Whether frequency/recency/T agree exactly, customer by customer; monetary to 1e-9."""
    ours = pq.read_table(ours_path)
    theirs = pq.read_table(lifetimes_path)
    ours = ours.take(pc.sort_indices(ours, [("customer_id", "ascending")]))
    theirs = theirs.take(pc.sort_indices(theirs, [("customer_id", "ascending")]))
    if ours.num_rows != theirs.num_rows or not ours["customer_id"].equals(theirs["customer_id"]):
        return f"NO: customers differ ({ours.num_rows:,} vs {theirs.num_rows:,})"
    problems = []
    for column in ("frequency", "recency", "T"):
        mine = ours[column].to_numpy().astype(np.float64)
        reference = theirs[column].to_numpy()
        differing = int(np.count_nonzero(mine != reference))
        if differing:
            problems.append(f"{column} differs for {differing:,} customers")
    mine = ours["monetary_value"].to_numpy()
    reference = theirs["monetary_value"].to_numpy()
    # Sums of cents in a different order differ in the last bits; that is not a disagreement.
    relative = np.abs(mine - reference) / np.maximum(np.abs(reference), 1e-12)
    worst = float(relative.max()) if relative.size else 0.0
    if worst > 1e-9:
        problems.append(f"monetary_value differs (max relative {worst:.1e})")
    if problems:
        return "NO: " + "; ".join(problems)
    return f"yes, exact F/R/T for {ours.num_rows:,} customers (monetary max rel diff {worst:.0e})"


def ensure_log(rows: int, seed: int) -> Path:
    path = default_path(rows, seed)
    if not path.exists():
        print(f"generating {path.name} ...", file=sys.stderr, flush=True)
        generate(rows, seed, path)
    return path


def bench_size(
    rows: int,
    seed: int,
    repeats: int,
    lifetimes_repeats: int,
    skip_lifetimes_above: int | None,
    lifetimes_once_above: int | None,
    threads: int | None,
    scratch: Path,
) -> SizeResult:
    log = ensure_log(rows, seed)
    metadata = read_true_parameters(log)
    skip = None
    if skip_lifetimes_above is not None and rows > skip_lifetimes_above:
        skip = f"skipped (> {format_count(skip_lifetimes_above)})"
    elif lifetimes_repeats == 0:
        skip = "skipped"
    if lifetimes_once_above is not None and rows > lifetimes_once_above:
        lifetimes_repeats = min(lifetimes_repeats, 1)
    label = format_count(rows)
    ours_saved, lifetimes_saved = scratch / f"ours_{label}.parquet", scratch / f"lifetimes_{label}.parquet"
    ours: list[Measurement] = []
    lifetimes: list[Measurement] = []
    for repeat in range(max(repeats, 0 if skip else lifetimes_repeats)):
        if repeat < repeats:
            arguments = ["ours", str(log)] + (["--threads", str(threads)] if threads else [])
            if repeat == 0:
                arguments += ["--save", str(ours_saved)]
            ours.append(run_task(arguments))
            _progress(label, "ours", repeat, ours[-1])
        if skip is None and repeat < lifetimes_repeats:
            arguments = ["lifetimes", str(log)] + (["--save", str(lifetimes_saved)] if repeat == 0 else [])
            lifetimes.append(run_task(arguments))
            _progress(label, "lifetimes", repeat, lifetimes[-1])
    equality = compare_summaries(ours_saved, lifetimes_saved) if lifetimes else None
    return SizeResult(
        rows_requested=rows,
        rows=metadata["rows"],
        customers=metadata["customers"],
        ours=ours,
        lifetimes=lifetimes,
        lifetimes_skipped=skip,
        equality=equality,
    )


def _progress(label: str, task: str, repeat: int, measurement: Measurement) -> None:
    print(
        f"  {label:>4} {task:<9} repeat {repeat + 1}: {measurement.seconds:7.2f} s, "
        f"CPU {measurement.report.get('cpu_seconds', float('nan')):6.1f} s, "
        f"peak RSS {measurement.peak_rss_bytes / 1e9:5.2f} GB",
        file=sys.stderr,
        flush=True,
    )


def _seconds_text(measurements: list[Measurement]) -> str:
    values = [m.seconds for m in measurements]
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{median(values):.2f} ({min(values):.2f}-{max(values):.2f})"


def _cpu_text(measurements: list[Measurement]) -> str:
    # CPU time of the work (all threads): steadier than wall time when neighbours load the cores.
    return f"{median([m.report.get('cpu_seconds', float('nan')) for m in measurements]):.1f}"


def format_table(results: list[SizeResult], repeats: int) -> str:
    header = [
        "rows",
        "customers",
        f"ours s (median of {repeats}, range)",
        "ours CPU s",
        "ours peak RSS",
        "lifetimes s",
        "lifetimes CPU s",
        "lifetimes peak RSS",
        "time ratio (lifetimes/ours)",
        "RSS ratio",
        "target (ours)",
        "met",
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for result in results:
        target, met = result.target()
        if result.lifetimes:
            lifetimes_seconds = _seconds_text(result.lifetimes)
            lifetimes_cpu = _cpu_text(result.lifetimes)
            lifetimes_rss = f"{result.lifetimes_rss() / 1e9:.2f} GB"
            time_ratio = f"{result.lifetimes_seconds() / result.ours_seconds():.1f}x"
            rss_ratio = f"{result.lifetimes_rss() / result.ours_rss():.1f}x"
        else:
            lifetimes_seconds = lifetimes_cpu = lifetimes_rss = result.lifetimes_skipped or "skipped"
            time_ratio = rss_ratio = "-"
        cells = [
            f"{result.rows:,}",
            f"{result.customers:,}",
            _seconds_text(result.ours),
            _cpu_text(result.ours),
            f"{result.ours_rss() / 1e9:.2f} GB",
            lifetimes_seconds,
            lifetimes_cpu,
            lifetimes_rss,
            time_ratio,
            rss_ratio,
            target,
            met,
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    for result in results:
        check = result.equality or "not checked (lifetimes skipped)"
        lines.append(f"{format_count(result.rows_requested)}: ours = lifetimes? {check}")
    return "\n".join(lines)


def _parse_size_list(text: str) -> list[int]:
    return [parse_count(part) for part in text.split(",") if part.strip()]


def _parse_optional_count(text: str) -> int | None:
    return None if text.strip().lower() in ("none", "never", "") else parse_count(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_features", description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=_parse_size_list, default=[10**6, 10**7], help="e.g. 1M,10M,50M")
    parser.add_argument("--repeats", type=int, default=3, help="fresh-process repeats per tool and size")
    parser.add_argument(
        "--lifetimes-repeats", type=int, help="repeats for lifetimes (default: --repeats; 0 skips it)"
    )
    parser.add_argument(
        "--skip-lifetimes-above",
        type=_parse_optional_count,
        default=10**7,
        help="skip lifetimes for logs larger than this (default 10M; 'none' never skips)",
    )
    parser.add_argument(
        "--lifetimes-once-above",
        type=_parse_optional_count,
        help="run lifetimes only once for logs larger than this (it takes about a minute at 50M)",
    )
    parser.add_argument("--threads", type=int, help="DuckDB threads for our stage (default: all cores)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--json", type=Path, help="also write the measurements here (default benchmarks/results/)")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    lifetimes_repeats = args.repeats if args.lifetimes_repeats is None else args.lifetimes_repeats

    started = dt.datetime.now()
    results = []
    with tempfile.TemporaryDirectory(prefix="bench_features_") as scratch:
        for rows in args.rows:
            print(f"{format_count(rows)} rows:", file=sys.stderr, flush=True)
            results.append(
                bench_size(
                    rows, args.seed, args.repeats, lifetimes_repeats, args.skip_lifetimes_above,
                    args.lifetimes_once_above, args.threads, Path(scratch),
                )
            )
    machine = f"{os.cpu_count()} cores, {_memory_gib():.0f} GiB, Python {platform.python_version()}"
    machine += f", duckdb {_version('duckdb')}, pandas {_version('pandas')}, commit {_commit()}"
    print(f"\nfeatures stage vs lifetimes.utils.summary_data_from_transaction_data ({started:%Y-%m-%d}, {machine})")
    print(format_table(results, args.repeats))
    _write_json(args.json, started, machine, args, results)
    return 0


def _version(package: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return "?"


def _commit() -> str:
    """The checked-out commit, with '+changes' when the work tree differs from it."""
    import subprocess

    repository = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=repository, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", "pipeline"],
            cwd=repository, capture_output=True, text=True, check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + ("+changes" if dirty else "")


def _memory_gib() -> float:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError):
        return float("nan")


def _write_json(path: Path | None, started: dt.datetime, machine: str, args, results: list[SizeResult]) -> None:
    path = path or RESULTS_DIRECTORY / f"features_{started:%Y%m%d_%H%M%S}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "started": started.isoformat(timespec="seconds"),
        "machine": machine,
        "threads": args.threads,
        "results": [
            {
                "rows": r.rows,
                "customers": r.customers,
                "ours": [dataclasses.asdict(m) for m in r.ours],
                "lifetimes": [dataclasses.asdict(m) for m in r.lifetimes],
                "lifetimes_skipped": r.lifetimes_skipped,
                "equality": r.equality,
            }
            for r in results
        ],
    }
    path.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"\nmeasurements written to {path}", file=sys.stderr)


if __name__ == "__main__":
    raise SystemExit(main())
