"""The work that one benchmark child process does, timed from inside.

Run by :mod:`benchmarks._measure` as ``python -m benchmarks._tasks TASK LOG [--save PATH]``.
The clock covers reading the log and computing the summary, not interpreter start-up or
imports: both tools pay those once per process, not per log. ``--save`` writes the
per-customer summary after the clock stops, for the equality check.

The whole-pipeline benchmarks add three tasks:

* ``clv ARGS...`` runs the ``clv`` command in this process, exactly as the console script
  does, then prints ``… [benchmark] command returned`` on stderr so that interpreter exit
  (freeing a few GB of frames) is told apart from the last step;
* ``init-store URI`` creates an MLflow SQLite store and the experiment, as a first run would;
* ``lifetimes-pipeline LOG`` is the plain-lifetimes path (summary, BG/NBD, Gamma-Gamma,
  CLV), each step timed.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # annotations only: the task processes import pyarrow when they need it
    import pyarrow as pa

# numpy and pyarrow are imported where used: the ``clv`` task must start like the console
# script, which sets their memory options before importing them (a child that imported them
# first peaked 0.4 GB higher at 50M rows).

SUMMARY_COLUMNS = ["customer_id", "frequency", "recency", "T", "monetary_value"]


def run_ours(log: Path, threads: int | None) -> tuple[float, pa.Table, dict]:
    """Our features stage through its Python API, as a user of the library calls it."""
    from pipeline.config import ColumnMap, FeatureSettings, InputSettings, PeriodSettings
    from pipeline.duckdb_engine import compute_features

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
    import numpy as np
    import pandas as pd
    import pyarrow as pa
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


RETURNED_MARKER = "… [benchmark] command returned"


# With this set (to a JSON path), the ``clv`` task samples its main thread's stack every
# STACK_SAMPLE_SECONDS and writes where the wall time went (see StackSampler).
STACK_SAMPLES_ENV = "CLV_BENCH_STACK_SAMPLES"
STACK_SAMPLE_SECONDS = 0.2


class StackSampler:
    """Wall time by code location, from the main thread's stack sampled by a thread.

    Each interval is charged to the innermost frame in the project (``pipeline/``,
    ``models/``) and the innermost Python frame below it (pandas, lifetimes, MLflow...).
    A C call that holds the GIL delays the sample: its time is charged to wherever the stack
    is when the sampler gets the GIL back, usually the same call or the line after it.
    Good enough to rank steps taking seconds, not to split sub-second ones.
    """

    def __init__(self, interval_seconds: float = STACK_SAMPLE_SECONDS) -> None:
        import collections
        import threading

        self.interval_seconds = interval_seconds
        self.seconds: collections.Counter = collections.Counter()
        self._stop = threading.Event()
        self._main = threading.main_thread().ident
        self._thread = threading.Thread(target=self._loop, daemon=True)
        root = Path(__file__).resolve().parent.parent
        self._project = tuple(str(root / folder) + "/" for folder in ("pipeline", "models"))

    def start(self) -> StackSampler:
        self._thread.start()
        return self

    def _loop(self) -> None:
        last = time.perf_counter()
        while not self._stop.wait(self.interval_seconds):
            now = time.perf_counter()
            self.seconds[self._where(sys._current_frames().get(self._main))] += now - last
            last = now

    def _where(self, frame) -> tuple[str, str]:
        innermost = project = None
        while frame is not None:
            name = frame.f_code.co_filename
            if innermost is None:
                innermost = f"{_short_path(name)}:{frame.f_code.co_name}"
            if project is None and name.startswith(self._project):
                project = f"{_short_path(name)}:{frame.f_code.co_name}:{frame.f_lineno}"
            frame = frame.f_back
        return project or "(outside the project)", innermost or "?"

    def stop(self, path: Path) -> None:
        self._stop.set()
        self._thread.join()
        rows = [
            {"project_frame": where, "innermost_frame": inner, "seconds": round(seconds, 3)}
            for (where, inner), seconds in self.seconds.most_common()
        ]
        Path(path).write_text(json.dumps(rows, indent=1) + "\n")


def _short_path(filename: str) -> str:
    for marker in ("/site-packages/", str(Path(__file__).resolve().parent.parent) + "/"):
        if marker in filename:
            return filename.split(marker, 1)[1]
    return filename


def run_clv(arguments: list[str]) -> int:
    """``clv ARGS`` in this process, as the console script runs it (progress lines on stderr)."""
    import os

    started, cpu_started = time.perf_counter(), time.process_time()
    samples_path = os.environ.get(STACK_SAMPLES_ENV)
    sampler = StackSampler().start() if samples_path else None
    from pipeline.cli import app

    try:
        exit_code = app(arguments, prog_name="clv", standalone_mode=False)
    except SystemExit as exc:
        exit_code = exc.code
    exit_code = exit_code if isinstance(exit_code, int) else 0
    seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
    if sampler is not None:
        sampler.stop(Path(samples_path))
    print(RETURNED_MARKER, file=sys.stderr, flush=True)
    print(json.dumps({"task": "clv", "seconds": seconds, "cpu_seconds": cpu_seconds, "exit_code": exit_code}))
    # Leave as the console script does (pipeline.cli.main): no interpreter teardown.
    from pipeline.cli import exit_now

    exit_now(exit_code)


def init_store(uri: str) -> None:
    """Create the SQLite store (schema migrations) and the experiment, as ``clv run`` would."""
    from pipeline import tracking
    from pipeline.config import TrackingSettings

    started = time.perf_counter()
    tracking.connect(TrackingSettings(uri=uri))
    print(json.dumps({"task": "init-store", "seconds": time.perf_counter() - started}))


def run_lifetimes_pipeline(log: Path, observation_end: str, horizon_months: int) -> dict:
    """The plain-lifetimes path a user would write: summary, BG/NBD, Gamma-Gamma, CLV.

    ``fit`` gets ``.values``: lifetimes 0.11.3 on pandas 3 rejects its own summary's Series
    ("Some values in recency vector are larger than T vector"). The CLV call keeps Series,
    because lifetimes builds its result on ``frequency.index``.
    """
    import pandas as pd
    from lifetimes import BetaGeoFitter, GammaGammaFitter
    from lifetimes.utils import summary_data_from_transaction_data

    warnings.simplefilter("ignore")
    steps: dict[str, dict[str, float]] = {}
    clock = [time.perf_counter(), time.process_time()]

    def lap(name: str) -> None:
        now, cpu = time.perf_counter(), time.process_time()
        steps[name] = {"seconds": now - clock[0], "cpu_seconds": cpu - clock[1]}
        clock[:] = [now, cpu]

    started, cpu_started = clock
    transactions = pd.read_parquet(log)
    lap("read")
    summary = summary_data_from_transaction_data(
        transactions, "customer_id", "date", monetary_value_col="amount",
        observation_period_end=observation_end, freq="D", freq_multiplier=7,
    )
    lap("summary")
    purchase = BetaGeoFitter().fit(summary["frequency"].values, summary["recency"].values, summary["T"].values)
    lap("fit_bgnbd")
    repeaters = summary[summary["frequency"] > 0]
    spend = GammaGammaFitter().fit(repeaters["frequency"].values, repeaters["monetary_value"].values)
    lap("fit_gamma_gamma")
    clv = spend.customer_lifetime_value(
        purchase, summary["frequency"], summary["recency"], summary["T"], summary["monetary_value"],
        time=horizon_months, discount_rate=0.01, freq="W",
    )
    lap("clv")
    return {
        "seconds": time.perf_counter() - started,
        "cpu_seconds": time.process_time() - cpu_started,
        "steps": steps,
        "customers": len(summary),
        "repeat_customers": len(repeaters),
        "bgnbd": {k: float(v) for k, v in purchase.params_.items()},
        "gamma_gamma": {k: float(v) for k, v in spend.params_.items()},
        "clv_total": float(clv.sum()),
    }


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["clv"]:
        return run_clv(argv[1:])
    if argv[:1] == ["init-store"]:
        init_store(argv[1])
        return 0
    if argv[:1] == ["lifetimes-pipeline"]:
        parser = argparse.ArgumentParser(prog="python -m benchmarks._tasks lifetimes-pipeline")
        parser.add_argument("log", type=Path)
        parser.add_argument("--observation-end", default="1998-06-30")
        parser.add_argument("--horizon-months", type=int, default=12)
        args = parser.parse_args(argv[1:])
        report = run_lifetimes_pipeline(args.log, args.observation_end, args.horizon_months)
        print(json.dumps({"task": "lifetimes-pipeline", **report}))
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
        import pyarrow.parquet as pq

        pq.write_table(table, args.save)
    print(json.dumps({"task": args.task, "seconds": seconds, **details}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
