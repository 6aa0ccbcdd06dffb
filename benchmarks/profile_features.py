"""Where the features stage spends its time and memory, and what the prototype SQL saves.

Usage::

    python -m benchmarks.profile_features --rows 10M,50M --repeats 3
    python -m benchmarks.profile_features --rows 10M --set preserve_insertion_order=false --explain

For each log, the stage's own statements run in fresh processes (the real
``load_transactions`` and the real ``features_sql`` / ``repeat_purchases_sql``), each
statement timed, next to the prototype of :mod:`benchmarks._features_prototype` on the
same validated view. The prototype's tables are compared with the stage's. ``--explain``
writes DuckDB's ``EXPLAIN ANALYZE`` of both queries to benchmarks/results/.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from benchmarks._measure import Measurement, median, run_task
from benchmarks.bench_features import RESULTS_DIRECTORY, ensure_log
from benchmarks.generate import format_count, generate, parse_count

VARIANTS = ("current", "prototype")


_DISTINCT_CUSTOMERS = "count(DISTINCT customer_id)"


class _TimedConnection:
    """A DuckDB connection that times each statement run through ``execute``.

    Results are fetched inside the timing (DuckDB may defer work to the fetch), then handed
    back as rows; ``load_transactions`` only ever calls ``fetchall`` and ``description``.
    """

    def __init__(self, connection, timings: list[tuple[str, float]], count_customers: bool = True):
        self._connection = connection
        self._timings = timings
        self._count_customers = count_customers

    def execute(self, sql, *parameters):
        if not self._count_customers and _DISTINCT_CUSTOMERS in sql:
            # The proposal: the customer count is the features table's row count, so this
            # full hash aggregate over the log is not needed.
            sql = sql.replace(_DISTINCT_CUSTOMERS, "NULL")
        started = time.perf_counter()
        result = self._connection.execute(sql, *parameters)
        rows = result.fetchall() if result.description else None
        self._timings.append((_statement_label(sql), time.perf_counter() - started))
        return _Rows(rows, result.description)

    def __getattr__(self, name):
        return getattr(self._connection, name)


@dataclasses.dataclass
class _Rows:
    rows: list | None
    description: list | None

    def fetchall(self):
        return self.rows


def _statement_label(sql: str) -> str:
    words = " ".join(sql.split())
    if _DISTINCT_CUSTOMERS in words:
        return "load: count(DISTINCT customer_id)"
    if words.startswith("SELECT count(*), NULL FROM"):
        return "load: count(*) (customers from the features table instead)"
    if words.startswith("SELECT count(*), count(*) FILTER"):
        return "load: validation scan"
    if words.startswith("SELECT count(*) FROM typed_transactions WHERE order_date >"):
        return "load: rows after observation_end"
    if words.startswith(("CREATE", "DESCRIBE")):
        return "load: views and DESCRIBE"
    return "load: " + words[:60]


def run_child(log: Path, variant: str, settings: list[str], threads: int | None, save: Path | None, explain: Path | None) -> dict:
    """One profiled run, inside a benchmark child process (see ``benchmarks._tasks``)."""
    from pipeline.config import ColumnMap, InputSettings, PeriodSettings, ValidationSettings
    from pipeline.io import connect, fetch_arrow
    from pipeline.stages.features import features_sql, repeat_purchases_sql
    from pipeline.transactions import load_transactions

    from benchmarks._features_prototype import prototype_build, prototype_sql

    period = PeriodSettings(unit="week", resolution="daily")
    # A CSV's dates are text: parse them with the default format, as a user's config would.
    date_format = "%Y-%m-%d" if log.suffix == ".csv" else None
    input_settings = InputSettings(path=str(log), columns=ColumnMap(), date_format=date_format)
    timings: list[tuple[str, float]] = []
    started = time.perf_counter()
    cpu_started = time.process_time()
    connection = connect(threads=threads)
    for setting in settings:
        connection.execute(f"SET {setting}")
    log_summary = load_transactions(
        _TimedConnection(connection, timings, count_customers=variant == "current"),
        log,
        input_settings,
        ValidationSettings(),
        None,
    )
    end = log_summary.observation_end
    if variant == "current":
        step = time.perf_counter()
        features = fetch_arrow(connection, features_sql(period, end))
        timings.append(("features_sql (two-level hash aggregate)", time.perf_counter() - step))
        step = time.perf_counter()
        per_day = fetch_arrow(connection, repeat_purchases_sql(period))
        timings.append(("repeat_purchases_sql (same periods again)", time.perf_counter() - step))
        queries = [features_sql(period, end), repeat_purchases_sql(period)]
    else:
        step = time.perf_counter()
        features, per_day = prototype_build(connection, period, end)
        timings.append(("prototype: window + GROUPING SETS (both tables)", time.perf_counter() - step))
        queries = [prototype_sql(period, end)]
    seconds = time.perf_counter() - started
    cpu_seconds = time.process_time() - cpu_started
    if explain is not None:
        plans = [connection.execute("EXPLAIN ANALYZE " + sql).fetchall()[0][1] for sql in queries]
        explain.write_text("\n\n".join(plans) + "\n")
    connection.close()
    if save is not None:
        save.mkdir(parents=True, exist_ok=True)
        pq.write_table(features, save / "features.parquet")
        pq.write_table(per_day, save / "repeat_purchases.parquet")
    return {"seconds": seconds, "cpu_seconds": cpu_seconds, "steps": timings, "customers": features.num_rows}


def compare_tables(current: Path, prototype: Path) -> str:
    """Whether the prototype's tables equal the stage's: integers and dates exactly, floats to 1e-9."""
    problems = []
    for name in ("features.parquet", "repeat_purchases.parquet"):
        expected, actual = pq.read_table(current / name), pq.read_table(prototype / name)
        if expected.column_names != actual.column_names or expected.num_rows != actual.num_rows:
            problems.append(f"{name}: shape or columns differ")
            continue
        for column in expected.column_names:
            left, right = expected[column], actual[column]
            if pa.types.is_floating(left.type):
                left_values, right_values = left.to_numpy(), right.to_numpy()
                scale = np.maximum(np.abs(left_values), 1e-12)
                if left_values.size and float((np.abs(left_values - right_values) / scale).max()) > 1e-9:
                    problems.append(f"{name}: {column} differs")
            elif not pc.all(pc.equal(left, right.cast(left.type))).as_py():
                problems.append(f"{name}: {column} differs")
    return "NO: " + "; ".join(problems) if problems else "yes (same rows, same values)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.profile_features", description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="10M", help="e.g. 10M,50M")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--variants", default=",".join(VARIANTS), help="current,prototype")
    parser.add_argument("--set", dest="settings", action="append", default=[], help="a DuckDB setting, e.g. threads=1")
    parser.add_argument("--threads", type=int)
    parser.add_argument("--explain", action="store_true", help="write EXPLAIN ANALYZE plans to benchmarks/results/")
    parser.add_argument("--csv", action="store_true", help="read the same log as CSV instead of Parquet")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)
    variants = [v for v in args.variants.split(",") if v]
    unknown = set(variants) - set(VARIANTS)
    if unknown:
        parser.error(f"unknown variants: {', '.join(sorted(unknown))}")
    settings_text = ", ".join(args.settings) or "DuckDB defaults"
    with tempfile.TemporaryDirectory(prefix="profile_features_") as scratch:
        for rows in [parse_count(part) for part in args.rows.split(",") if part.strip()]:
            log = ensure_log(rows, args.seed)
            if args.csv:
                log = _ensure_csv(rows, args.seed, log)
            label = format_count(rows)
            measurements: dict[str, list[Measurement]] = {variant: [] for variant in variants}
            # Alternating the variants spreads a noisy neighbour's load over both.
            for repeat in range(args.repeats):
                for variant in variants:
                    arguments = ["profile", str(log), "--variant", variant]
                    arguments += [item for setting in args.settings for item in ("--set", setting)]
                    if args.threads:
                        arguments += ["--threads", str(args.threads)]
                    if repeat == 0:
                        arguments += ["--save", str(Path(scratch) / label / variant)]
                        if args.explain:
                            RESULTS_DIRECTORY.mkdir(parents=True, exist_ok=True)
                            arguments += ["--explain", str(RESULTS_DIRECTORY / f"explain_{variant}_{label}.txt")]
                    measurement = run_task(arguments)
                    measurements[variant].append(measurement)
                    print(
                        f"  {label} {variant:<9} repeat {repeat + 1}: {measurement.seconds:6.2f} s, "
                        f"cpu {measurement.report['cpu_seconds']:6.1f} s, peak {measurement.peak_rss_bytes / 1e9:.2f} GB",
                        file=sys.stderr,
                        flush=True,
                    )
            print(f"\n{label} rows, {log.suffix[1:]} ({settings_text}); medians of {args.repeats} fresh processes")
            print(_breakdown(measurements))
            if set(VARIANTS) <= set(variants):
                check = compare_tables(Path(scratch) / label / "current", Path(scratch) / label / "prototype")
                print(f"prototype tables equal the stage's? {check}")
    return 0


def _ensure_csv(rows: int, seed: int, parquet: Path) -> Path:
    csv = parquet.with_suffix(".csv")
    if not csv.exists():
        print(f"writing {csv.name} ...", file=sys.stderr, flush=True)
        # Same seed and rows, so the Parquet beside it is rewritten with identical content.
        generate(rows, seed, parquet, csv=True)
    return csv


def _breakdown(measurements: dict[str, list[Measurement]]) -> str:
    lines = ["| variant | step | seconds |", "|---|---|---|"]
    for variant, runs in measurements.items():
        steps: dict[str, list[float]] = {}
        for run in runs:
            totals: dict[str, float] = {}
            for name, seconds in run.report["steps"]:
                totals[name] = totals.get(name, 0.0) + seconds
            for name, seconds in totals.items():
                steps.setdefault(name, []).append(seconds)
        for name, values in steps.items():
            lines.append(f"| {variant} | {name} | {median(values):.2f} |")
        total = median([run.seconds for run in runs])
        # The work's own CPU time (all DuckDB threads), without start-up and imports.
        cpu = median([run.report["cpu_seconds"] for run in runs])
        peak = median([run.peak_rss_bytes for run in runs])
        lines.append(
            f"| {variant} | **total** (CPU {cpu:.1f} s, peak RSS {peak / 1e9:.2f} GB) | **{total:.2f}** |"
        )
    return "\n".join(lines)


def main_child(argv: list[str]) -> dict:
    parser = argparse.ArgumentParser(prog="python -m benchmarks._tasks profile")
    parser.add_argument("log", type=Path)
    parser.add_argument("--variant", choices=VARIANTS, required=True)
    parser.add_argument("--set", dest="settings", action="append", default=[])
    parser.add_argument("--threads", type=int)
    parser.add_argument("--save", type=Path)
    parser.add_argument("--explain", type=Path)
    args = parser.parse_args(argv)
    return run_child(args.log, args.variant, args.settings, args.threads, args.save, args.explain)


if __name__ == "__main__":
    raise SystemExit(main())
