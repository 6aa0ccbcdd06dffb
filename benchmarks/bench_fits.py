"""Each purchase model's fit against lifetimes' own fitter on the same distinct histories (issue 18).

Usage::

    python -m benchmarks.bench_fits --rows 1M,10M,50M --repeats 3 [--models bgnbd,mbgnbd,paretonbd] [--lifetimes-repeats 1]

For each synthetic log: the calibration features of the benchmark's config (weeks at daily
resolution, calibration end 1997-09-30, as ``bench_pipeline``), computed once with the DuckDB
engine and grouped into distinct histories (not timed). Then, in this process, alternating
repeat by repeat:

* **ours**: ``PURCHASE_MODELS[name]().fit(histories)``, what ``clv run`` calls: the fit and
  its standard errors (our Hessian), on the distinct ``(frequency, recency, T)`` rows with
  their counts;
* **lifetimes**: its own fitter on the same rows with ``weights=`` the counts
  (``BetaGeoFitter``, ``ModifiedBetaGeoFitter``: BFGS with autograd gradients and its own
  Hessian; ``ParetoNBDFitter``: Nelder–Mead from its default start, seeded), as a lifetimes
  user who groups histories would call it.

Printed: median and range of each, the ratio of medians, and how far apart the two maxima
are (log-likelihood relative difference, largest relative parameter difference).
"""

from __future__ import annotations

import argparse
import datetime as dt
import statistics
import sys
import time
import warnings
from typing import Any

import numpy as np

from benchmarks.bench_features import RESULTS_DIRECTORY, ensure_log
from benchmarks.bench_pipeline import CALIBRATION_END, machine_description, parse_size_list, write_json
from benchmarks.generate import format_count

MODELS = ("bgnbd", "mbgnbd", "paretonbd")
# Issue 18: at 18M customers (50M rows), each fit within these seconds, so that `clv run` with the
# default candidates fits in its 60 s.
TARGET_CUSTOMERS = 18_000_000
TARGET_SECONDS = {"bgnbd": 3.0, "mbgnbd": 3.0, "paretonbd": 5.0}


def calibration_histories(log) -> Any:
    """The distinct calibration histories of the benchmark config's features of ``log``."""
    from models import group_histories
    from pipeline.config import FeatureSettings, InputSettings, PeriodSettings
    from pipeline.duckdb_engine import compute_features

    settings = InputSettings(path=str(log), format="parquet", date_format=None,
                             columns={"customer_id": "customer_id", "date": "date", "amount": "amount"})
    features = FeatureSettings(period=PeriodSettings(unit="week", resolution="daily"),
                               calibration_end=dt.date.fromisoformat(CALIBRATION_END))
    result = compute_features(str(log), settings, features)
    calibration = result.calibration_frame(columns=["frequency", "recency", "T"])
    return group_histories(calibration)


def fit_ours(name: str, histories) -> tuple[float, dict[str, float], float]:
    from models import PURCHASE_MODELS

    started = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = PURCHASE_MODELS[name]().fit(histories)
    return time.perf_counter() - started, dict(model.params_), float(model.log_likelihood_)


def fit_lifetimes(name: str, histories) -> tuple[float, dict[str, float]]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from lifetimes import BetaGeoFitter, ModifiedBetaGeoFitter, ParetoNBDFitter

        fitter = {"bgnbd": BetaGeoFitter, "mbgnbd": ModifiedBetaGeoFitter, "paretonbd": ParetoNBDFitter}[name]()
        frequency, recency, age = histories.unique_arrays()
        np.random.seed(0)  # ParetoNBDFitter draws its start from the global generator
        started = time.perf_counter()
        fitter.fit(frequency, recency, age, weights=histories.counts)
        seconds = time.perf_counter() - started
    return seconds, {key: float(value) for key, value in fitter.params_.items()}


def total_log_likelihood(name: str, params: dict[str, float], histories) -> float:
    from models import PURCHASE_MODELS
    from models._lifetimes_compat import total_log_likelihood as lifetimes_total

    names = PURCHASE_MODELS[name].parameter_names
    return float(lifetimes_total(name, np.array([params[key] for key in names]), *histories.unique_arrays(),
                                 histories.counts))


def bench_size(rows: int, seed: int, models: list[str], repeats: int, lifetimes_repeats: int) -> list[dict[str, Any]]:
    log = ensure_log(rows, seed)
    started = time.perf_counter()
    histories = calibration_histories(log)
    customers = int(histories.counts.sum())
    print(f"{format_count(rows)}: {customers:,} calibration customers, {len(histories.counts):,} distinct histories "
          f"(features and grouping {time.perf_counter() - started:.1f} s, not timed)", file=sys.stderr, flush=True)
    results = []
    for name in models:
        ours, theirs = [], []
        for repeat in range(max(repeats, lifetimes_repeats)):
            if repeat < repeats:
                seconds, params, log_likelihood = fit_ours(name, histories)
                ours.append(seconds)
                print(f"  {name} ours      repeat {repeat + 1}: {seconds:8.2f} s", file=sys.stderr, flush=True)
            if repeat < lifetimes_repeats:
                seconds, reference = fit_lifetimes(name, histories)
                theirs.append(seconds)
                print(f"  {name} lifetimes repeat {repeat + 1}: {seconds:8.2f} s", file=sys.stderr, flush=True)
        row: dict[str, Any] = {"rows": rows, "customers": customers, "histories": len(histories.counts), "model": name,
                               "ours_seconds": ours, "lifetimes_seconds": theirs, "params": params}
        if theirs:
            reference_ll = total_log_likelihood(name, reference, histories)
            row |= {
                "lifetimes_params": reference,
                "log_likelihood": log_likelihood,
                "lifetimes_log_likelihood": reference_ll,
                "log_likelihood_relative_difference": (log_likelihood - reference_ll) / abs(reference_ll),
                "largest_parameter_relative_difference": max(abs(params[k] / reference[k] - 1) for k in params),
            }
        results.append(row)
    return results


def _median_and_range(values: list[float]) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.2f} (1 run)"
    return f"{statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f})"


def print_table(results: list[dict[str, Any]]) -> None:
    print("| rows | customers | distinct histories | model | ours s (median, range) | lifetimes s (median, range) "
          "| ratio (lifetimes / ours) | LL ours − lifetimes (relative) | largest parameter difference | target |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for row in results:
        ours, theirs = row["ours_seconds"], row["lifetimes_seconds"]
        ratio = f"{statistics.median(theirs) / statistics.median(ours):.1f}x" if theirs else "-"
        ll = f"{row['log_likelihood_relative_difference']:+.1e}" if theirs else "-"
        params = f"{row['largest_parameter_relative_difference']:.1e}" if theirs else "-"
        target = "-"
        if row["model"] in TARGET_SECONDS and row["customers"] >= TARGET_CUSTOMERS * 0.99:
            met = statistics.median(ours) <= TARGET_SECONDS[row["model"]]
            target = f"≤ {TARGET_SECONDS[row['model']]:.0f} s: {'yes' if met else '**NO**'}"
        print(f"| {format_count(row['rows'])} | {row['customers']:,} | {row['histories']:,} | {row['model']} "
              f"| {_median_and_range(ours)} | {_median_and_range(theirs)} | {ratio} | {ll} | {params} | {target} |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=parse_size_list, default=[10**6, 10**7, 5 * 10**7], help="e.g. 1M,10M,50M")
    parser.add_argument("--repeats", type=int, default=3, help="repeats of our fit per model and size")
    parser.add_argument("--lifetimes-repeats", type=int, default=1,
                        help="repeats of lifetimes' fit (its Pareto/NBD takes a minute at 50M rows; 0 skips it)")
    parser.add_argument("--models", type=lambda text: [part.strip() for part in text.split(",") if part.strip()],
                        default=list(MODELS))
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)
    results = []
    for rows in args.rows:
        results.extend(bench_size(rows, args.seed, args.models, args.repeats, args.lifetimes_repeats))
    print(f"\npurchase-model fits, ours vs lifetimes on the same distinct histories ({machine_description()})\n")
    print_table(results)
    stamp = dt.datetime.now().strftime("%Y%m%d_%H%M%S")
    write_json(RESULTS_DIRECTORY / f"fits_{stamp}.json", {"machine": machine_description(), "results": results})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
