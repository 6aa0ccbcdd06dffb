"""Run the benchmarks: the whole pipeline, batch scoring, tracking overhead, the features stage (and Spark on demand).

Usage::

    python -m benchmarks.run --rows 1M,10M,50M --repeats 3 --skip-lifetimes-above 10M
    python -m benchmarks.run --only pipeline,scoring --rows 50M --repeats 1
    python -m benchmarks.run --only tracking
    python -m benchmarks.run --only spark --rows 1M,10M,50M --repeats 3   # on demand: needs .[spark] and Java

Missing synthetic logs are generated first (seed 7, benchmarks/data/). Each benchmark
prints its tables and writes its measurements to benchmarks/results/<name>_<time>.json.
Scoring reuses the first pipeline run at its size when the pipeline ran on that log.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import bench_features, bench_pipeline, bench_scoring, bench_spark, bench_tracking
from benchmarks.bench_features import ensure_log
from benchmarks.generate import format_count

BENCHMARKS = ("pipeline", "scoring", "tracking", "features", "spark")
# Spark runs only when asked for (--only spark): it needs the optional extra and Java, and
# takes longer than all the others together.
DEFAULT_BENCHMARKS = ("pipeline", "scoring", "tracking", "features")


def _only(text: str) -> list[str]:
    names = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [name for name in names if name not in BENCHMARKS]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown benchmark {', '.join(unknown)} (choose from {', '.join(BENCHMARKS)})")
    return names


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.splitlines()[0])
    bench_pipeline.add_arguments(parser)
    bench_scoring.add_arguments(parser)
    bench_tracking.add_arguments(parser)
    bench_spark.add_arguments(parser)
    parser.add_argument(
        "--only", type=_only, default=list(DEFAULT_BENCHMARKS),
        help="comma-separated: " + ", ".join(BENCHMARKS) + " (default all but spark)",
    )
    parser.add_argument("--keep", type=Path, help="keep the configs, MLflow stores and run outputs in this folder")
    parser.set_defaults(scoring_rows=None)
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    if args.scoring_rows is None:
        # Issue 7's target is at 50M rows; otherwise score the largest log benchmarked.
        args.scoring_rows = [50_000_000] if 50_000_000 in args.rows else [max(args.rows)]

    sizes = sorted(set(args.rows) | (set(args.scoring_rows) if "scoring" in args.only else set()))
    if {"pipeline", "scoring", "features", "spark"} & set(args.only):
        for rows in sizes:
            ensure_log(rows, args.seed)

    started = time.perf_counter()
    if args.keep is not None:
        args.keep.mkdir(parents=True, exist_ok=True)
        _run_all(args, args.keep)
    else:
        with tempfile.TemporaryDirectory(prefix="bench_") as scratch:
            _run_all(args, Path(scratch))
    print(f"\nall benchmarks done in {(time.perf_counter() - started) / 60:.1f} min", file=sys.stderr)
    return 0


def _run_all(args: argparse.Namespace, scratch: Path) -> None:
    workspaces = {}
    if "tracking" in args.only:
        _banner("tracking")
        bench_tracking.run(args, scratch / "tracking")
    if "pipeline" in args.only:
        _banner("pipeline")
        results, _ = bench_pipeline.run(args, scratch)
        workspaces = {result.rows_requested: result.workspace for result in results if result.ours}
    if "scoring" in args.only:
        _banner("scoring")
        reused = [format_count(rows) for rows in args.scoring_rows if rows in workspaces]
        if reused:
            print(f"(scoring reuses the first pipeline run at {', '.join(reused)})", file=sys.stderr)
        bench_scoring.run(args, scratch, workspaces)
    if "features" in args.only:
        _banner("features")
        skip = "none" if args.skip_lifetimes_above is None else str(args.skip_lifetimes_above)
        bench_features.main([
            "--rows", ",".join(str(rows) for rows in args.rows), "--repeats", str(args.repeats),
            "--skip-lifetimes-above", skip, "--seed", str(args.seed),
        ])
    if "spark" in args.only:
        _banner("spark")
        bench_spark.run(args, scratch)


def _banner(name: str) -> None:
    print(f"\n===== {name} =====", flush=True)
    print(f"===== {name} =====", file=sys.stderr, flush=True)


if __name__ == "__main__":
    raise SystemExit(main())
