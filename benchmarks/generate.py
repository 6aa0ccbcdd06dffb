"""Seeded synthetic transaction logs, CDNOW-like, from a BG/NBD + Gamma-Gamma process.

The log has the shape of CDNOW's (Fader, Hardie & Lee 2005): customers acquired over the
first 12 weeks of 1997-01-01..1998-06-30 (78 weeks), purchases at daily resolution,
about 2.77 rows per customer. Because the true parameters are known and stored in the
file's metadata, the same file serves both the speed benchmarks and checks that the fitted
models recover them.

The process, per customer (time in weeks from the customer's first purchase):

* purchase rate ``lambda ~ Gamma(r, rate alpha)``, dropout probability ``p ~ Beta(a, b)``;
* repeat purchases follow a Poisson process of rate ``lambda``; after each *repeat*
  purchase the customer drops out with probability ``p`` (BG/NBD: no dropout at time 0);
* spend: ``nu ~ Gamma(q, rate gamma)``, each transaction's amount ``~ Gamma(p_spend, rate nu)``.

Usage::

    python -m benchmarks.generate --rows 1000000 --seed 7 --out benchmarks/data/log_1M.parquet
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from scipy.special import hyp2f1

# The Parquet key-value metadata key that holds the true parameters (JSON).
METADATA_KEY = b"clv.synthetic"

SCHEMA = pa.schema([("customer_id", pa.int64()), ("date", pa.date32()), ("amount", pa.float64())])

# A fixed number of customers per chunk, each chunk with its own child seed, so that a file
# depends only on (seed, rows) and not on how much memory the generating machine has.
CUSTOMERS_PER_CHUNK = 1_000_000

_EPOCH = dt.date(1970, 1, 1)


@dataclasses.dataclass(frozen=True)
class TrueParameters:
    """The generating process: BG/NBD in weeks, Gamma-Gamma in dollars, and the calendar.

    Defaults are the published CDNOW estimates: BG/NBD from Fader, Hardie & Lee (2005),
    "Counting Your Customers the Easy Way", Marketing Science 24(2), Table 1; Gamma-Gamma
    from Fader, Hardie & Lee (2005), "RFM and CLV", JMR 42(4) / Fader & Hardie's note
    "The Gamma-Gamma Model of Monetary Value" (2013).
    """

    r: float = 0.243
    alpha: float = 4.414
    a: float = 0.793
    b: float = 2.426
    p: float = 6.25
    q: float = 3.74
    gamma: float = 15.44
    start: dt.date = dt.date(1997, 1, 1)
    end: dt.date = dt.date(1998, 6, 30)
    acquisition_days: int = 84

    @property
    def observation_days(self) -> int:
        """Days from ``start`` to the end of ``end`` (both inclusive)."""
        return (self.end - self.start).days + 1

    def to_metadata(self, seed: int, customers: int, rows: int) -> dict:
        return {
            "bgnbd": {"r": self.r, "alpha": self.alpha, "a": self.a, "b": self.b},
            "gamma_gamma": {"p": self.p, "q": self.q, "v": self.gamma},
            "time_unit": "week",
            "resolution": "daily",
            "start": self.start.isoformat(),
            "observation_end": self.end.isoformat(),
            "acquisition_days": self.acquisition_days,
            "seed": seed,
            "customers": customers,
            "rows": rows,
            "note": (
                "Purchases happen in continuous time and are recorded by day; same-day purchases of a "
                "customer are separate rows, which daily-resolution features merge into one period. "
                "That merging makes fitted rates slightly lower than the true ones."
            ),
        }


def expected_rows_per_customer(parameters: TrueParameters) -> float:
    """Expected log rows per customer: 1 + E[X(T)], averaged over acquisition dates.

    E[X(t)] is the BG/NBD expected number of repeat purchases in (0, t], Fader, Hardie &
    Lee (2005), equation (9). Acquisition times are uniform over ``acquisition_days``, so the
    average is taken on a fine grid of the observation length T.
    """
    r, alpha, a, b = parameters.r, parameters.alpha, parameters.a, parameters.b
    offsets_days = (np.arange(10_000) + 0.5) * parameters.acquisition_days / 10_000
    t = (parameters.observation_days - offsets_days) / 7.0
    expected = (a + b - 1) / (a - 1) * (
        1 - (alpha / (alpha + t)) ** r * hyp2f1(r, b, a + b - 1, t / (alpha + t))
    )
    return 1.0 + float(expected.mean())


def customers_for_rows(rows: int, parameters: TrueParameters) -> int:
    """The customer count whose expected number of log rows is ``rows``."""
    return max(1, round(rows / expected_rows_per_customer(parameters)))


def simulate_chunk(
    rng: np.random.Generator, first_customer_id: int, customers: int, parameters: TrueParameters
) -> pa.Table:
    """One chunk of customers' transactions, grouped by customer and in date order."""
    rate = rng.gamma(parameters.r, 1.0 / parameters.alpha, customers)
    dropout = rng.beta(parameters.a, parameters.b, customers)
    acquisition_day = rng.uniform(0.0, parameters.acquisition_days, customers)
    observed_weeks = (parameters.observation_days - acquisition_day) / 7.0

    # Poisson events in (0, T] and the geometric number of repeats until dropout: the
    # customer makes the first min(J, K) of the K events, i.e. their first order statistics.
    events = rng.poisson(rate * observed_weeks)
    repeats_until_dropout = rng.geometric(dropout)
    repeats = np.minimum(events, repeats_until_dropout)

    # The first m of K sorted uniforms on (0, T) are T * S_i / (S_m + G) with S_i the partial
    # sums of m standard exponentials and G ~ Gamma(K + 1 - m): no per-customer sort needed.
    total_repeats = int(repeats.sum())
    owner = np.repeat(np.arange(customers), repeats)
    group_start = np.cumsum(repeats) - repeats
    partial_sums = np.cumsum(rng.standard_exponential(total_repeats))
    before_group = np.zeros(customers)
    has_repeats = repeats > 0
    before_group[has_repeats] = np.concatenate(([0.0], partial_sums))[group_start[has_repeats]]
    partial_sums -= before_group[owner]
    last_index = group_start + repeats - 1
    last_sum = np.zeros(customers)
    last_sum[has_repeats] = partial_sums[last_index[has_repeats]]
    normaliser = last_sum + rng.gamma((events + 1 - repeats).astype(np.float64), 1.0)
    repeat_weeks = observed_weeks[owner] * partial_sums / normaliser[owner]

    # Row order: each customer's first purchase, then their repeats in time order.
    rows_per_customer = repeats + 1
    row_owner = np.repeat(np.arange(customers), rows_per_customer)
    first_row = np.cumsum(rows_per_customer) - rows_per_customer
    is_repeat = np.ones(row_owner.size, dtype=bool)
    is_repeat[first_row] = False
    event_days = np.empty(row_owner.size)
    event_days[first_row] = acquisition_day
    event_days[is_repeat] = acquisition_day[owner] + 7.0 * repeat_weeks
    day_index = np.floor(event_days).astype(np.int32) + np.int32((parameters.start - _EPOCH).days)

    spend_rate = rng.gamma(parameters.q, 1.0 / parameters.gamma, customers)
    amount = rng.gamma(parameters.p, 1.0, row_owner.size) / spend_rate[row_owner]
    # Cents, as in a real log; a floor of one cent keeps every amount a purchase.
    amount = np.maximum(np.round(amount, 2), 0.01)

    return pa.Table.from_arrays(
        [
            pa.array(row_owner.astype(np.int64) + first_customer_id),
            pa.array(day_index).cast(pa.date32()),
            pa.array(amount),
        ],
        schema=SCHEMA,
    )


def generate(
    rows: int,
    seed: int,
    out: Path,
    csv: bool = False,
    parameters: TrueParameters = TrueParameters(),
) -> dict:
    """Write a log of about ``rows`` rows to ``out`` (Parquet, and CSV beside it if asked).

    Returns the metadata written into the file. The row count is random around ``rows``
    (the customer count is what is fixed), within a fraction of a percent at 1M rows.
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    customers = customers_for_rows(rows, parameters)
    chunk_count = -(-customers // CUSTOMERS_PER_CHUNK)
    child_seeds = np.random.SeedSequence(seed).spawn(chunk_count)
    # Written under a temporary name so that an interrupted run never leaves a file that
    # looks complete.
    partial = out.with_name(out.name + ".partial")
    csv_path = out.with_suffix(".csv") if csv else None
    written = 0
    csv_writer = None
    metadata = parameters.to_metadata(seed, customers, rows=0)
    writer = pq.ParquetWriter(partial, SCHEMA, compression="snappy")
    try:
        if csv_path is not None:
            csv_writer = pacsv.CSVWriter(csv_path, SCHEMA)
        for index, child in enumerate(child_seeds):
            first = index * CUSTOMERS_PER_CHUNK
            count = min(CUSTOMERS_PER_CHUNK, customers - first)
            table = simulate_chunk(np.random.default_rng(child), first + 1, count, parameters)
            writer.write_table(table)
            if csv_writer is not None:
                csv_writer.write_table(table)
            written += table.num_rows
        metadata["rows"] = written
        # The footer is written on close, so metadata added now still lands in the file.
        writer.add_key_value_metadata({METADATA_KEY.decode(): json.dumps(metadata)})
    except BaseException:
        writer.close()
        partial.unlink(missing_ok=True)
        raise
    finally:
        if csv_writer is not None:
            csv_writer.close()
    writer.close()
    partial.replace(out)
    return metadata


def read_true_parameters(path: str | Path) -> dict:
    """The generating process's metadata of a file written by :func:`generate`."""
    stored = pq.read_metadata(path).metadata or {}
    if METADATA_KEY not in stored:
        raise ValueError(f"{path}: not a synthetic log (no '{METADATA_KEY.decode()}' metadata)")
    return json.loads(stored[METADATA_KEY])


def parse_count(text: str) -> int:
    """``'1M'``, ``'10m'``, ``'500k'``, ``'1_000_000'`` or ``'2.5M'`` as an integer."""
    cleaned = text.strip().replace("_", "").replace(",", "")
    multipliers = {"k": 10**3, "m": 10**6, "g": 10**9, "b": 10**9}
    suffix = cleaned[-1:].lower()
    if suffix in multipliers:
        return round(float(cleaned[:-1]) * multipliers[suffix])
    return int(cleaned)


def format_count(count: int) -> str:
    """The short name of a row count used in file names and tables: 1M, 10M, 500k."""
    for suffix, size in (("M", 10**6), ("k", 10**3)):
        if count >= size and count % size == 0:
            return f"{count // size}{suffix}"
    if count >= 10**6:
        return f"{count / 10**6:.1f}M"
    return str(count)


def default_path(rows: int, seed: int = 7) -> Path:
    """Where the benchmarks keep the log of ``rows`` rows (benchmarks/data/ is git-ignored)."""
    suffix = "" if seed == 7 else f"_seed{seed}"
    return Path(__file__).resolve().parent / "data" / f"log_{format_count(rows)}{suffix}.parquet"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.generate", description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=parse_count, default=10**6, help="about this many rows (1M, 10M, 50M, ...)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--out", type=Path, help="Parquet path (default benchmarks/data/log_<rows>.parquet)")
    parser.add_argument("--csv", action="store_true", help="also write the same log as CSV beside it")
    args = parser.parse_args(argv)
    out = args.out or default_path(args.rows, args.seed)
    started = time.perf_counter()
    metadata = generate(args.rows, args.seed, out, csv=args.csv)
    seconds = time.perf_counter() - started
    print(
        f"{out}: {metadata['rows']:,} rows, {metadata['customers']:,} customers "
        f"({metadata['rows'] / metadata['customers']:.3f} rows per customer) in {seconds:.1f} s",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
