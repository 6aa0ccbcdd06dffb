"""The work that one benchmark child process does, timed from inside.

Run by :mod:`benchmarks._measure` as ``python -m benchmarks._tasks TASK LOG [--save PATH]``
(TASK ``profile`` is :mod:`benchmarks.profile_features`'s).
The clock covers reading the log and computing the summary, not interpreter start-up or
imports: both tools pay those once per process, not per log. ``--save`` writes the
per-customer summary after the clock stops, for the equality check.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

SUMMARY_COLUMNS = ["customer_id", "frequency", "recency", "T", "monetary_value"]


def run_ours(log: Path, threads: int | None) -> tuple[float, pa.Table, dict]:
    """Our features stage through its Python API, as a user of the library calls it."""
    from pipeline.config import ColumnMap, FeatureSettings, InputSettings, PeriodSettings
    from pipeline.stages.features import compute_features

    input_settings = InputSettings(
        path=str(log),
        columns=ColumnMap(customer_id="customer_id", date="date", amount="amount"),
        date_format=None,
    )
    settings = FeatureSettings(period=PeriodSettings(unit="week", resolution="daily"))
    extra = {} if threads is None else {"threads": threads}
    started, cpu_started = time.perf_counter(), time.process_time()
    result = compute_features(str(log), input_settings, settings, **extra)
    seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
    # The result's table was renamed from ``table`` to ``features`` once; accept both.
    table = result.features if hasattr(result, "features") else result.table
    return seconds, table.select(SUMMARY_COLUMNS), {"customers": table.num_rows, "cpu_seconds": cpu_seconds}


def run_lifetimes(log: Path) -> tuple[float, pa.Table, dict]:
    """lifetimes' own helper on the same log, read with pandas as its users do."""
    import pandas as pd
    from lifetimes.utils import summary_data_from_transaction_data

    # lifetimes 0.11.3 on pandas 3 warns on every call; the noise is not part of the work.
    warnings.simplefilter("ignore")
    started, cpu_started = time.perf_counter(), time.process_time()
    transactions = pd.read_parquet(log)
    read_seconds = time.perf_counter() - started
    summary = summary_data_from_transaction_data(
        transactions, "customer_id", "date", monetary_value_col="amount", freq="D", freq_multiplier=7
    )
    seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
    del transactions
    # Zero-copy views of the frame's columns, so saving does not add a copy of the result.
    table = pa.Table.from_arrays(
        [pa.array(np.asarray(summary.index, dtype=np.int64))]
        + [pa.array(summary[column].to_numpy()) for column in SUMMARY_COLUMNS[1:]],
        names=SUMMARY_COLUMNS,
    )
    return seconds, table, {"customers": len(summary), "read_seconds": read_seconds, "cpu_seconds": cpu_seconds}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["profile"]:
        from benchmarks.profile_features import main_child

        print(json.dumps({"task": "profile", **main_child(argv[1:])}))
        return 0
    parser = argparse.ArgumentParser(prog="python -m benchmarks._tasks")
    parser.add_argument("task", choices=["ours", "lifetimes"])
    parser.add_argument("log", type=Path)
    parser.add_argument("--save", type=Path, help="write the per-customer summary here (Parquet)")
    parser.add_argument("--threads", type=int, help="DuckDB threads for our stage (default: all cores)")
    args = parser.parse_args(argv)
    if args.task == "ours":
        seconds, table, details = run_ours(args.log, args.threads)
    else:
        seconds, table, details = run_lifetimes(args.log)
    if args.save is not None:
        pq.write_table(table, args.save)
    print(json.dumps({"task": args.task, "seconds": seconds, **details}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
