"""Features stage: per-customer RFM summary (and calibration/holdout split) of a transaction log.

Definitions are exactly lifetimes' ``summary_data_from_transaction_data`` /
``calibration_and_holdout_data`` (Fader, Hardie & Lee 2005 conventions):

* purchases are counted at most once per period (a day at daily resolution, a calendar
  week/month otherwise); same-period amounts are summed;
* ``frequency`` = number of periods with a purchase after the first one;
* ``recency`` = age (in periods) at the last purchase; ``T`` = age at the observation end;
* ``monetary_value`` = mean of the repeat periods' totals (0 for one-time buyers).

In the holdout, ``frequency_holdout`` counts periods with a purchase and
``monetary_value_holdout`` is — as in lifetimes — the mean of the holdout *transactions*
(not of period totals); ``revenue_holdout / frequency_holdout`` gives the period-total mean
that is comparable with Gamma-Gamma's expected spend.

The features are sums over each customer's rows of the log, sorted by DuckDB (which spills to disk when
memory runs short) and reduced in numpy (``pipeline/stages/sorted_log.py``).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.config import Config, FeatureSettings, InputSettings, PeriodSettings, ValidationSettings
from pipeline.errors import InputDataError
from pipeline.io import ParquetChunks, connect, fetch_arrow, read_features, release_freed_memory
from pipeline.stages.sorted_log import MICRO_UNITS, summarize_sorted_log
from pipeline.transactions import TRANSACTIONS_VIEW, LogSummary, load_transactions

# The purchase models' inputs (models' PURCHASE_COLUMNS, not imported: that would load scikit-learn
# and lifetimes into every features run).
HISTORY_COLUMNS = ["frequency", "recency", "T"]
FEATURE_COLUMNS = [*HISTORY_COLUMNS, "monetary_value"]

# Amounts are summed as fixed-point decimals of this type (1e-6 resolution), as integer
# micro-units: exact, so a rerun or another engine cannot differ in the last bits.
EXACT = "DECIMAL(18, 6)"


def _date_literal(value: dt.date) -> str:
    return f"DATE '{value.isoformat()}'"


@dataclasses.dataclass(frozen=True)
class FeaturesResult:
    """The stage's tables plus what describes them.

    ``features`` are at the observation end (what the value stage and scoring use);
    ``calibration`` (when a calibration end is set) are at the calibration end with the
    holdout columns (what the backtest fits on); ``repeat_purchases`` counts repeat
    purchases per day over the whole log (for tracking plots).
    """

    features: pa.Table
    calibration: pa.Table | None
    repeat_purchases: pa.Table
    log: LogSummary
    observation_end: dt.date
    calibration_end: dt.date | None
    # Set instead of ``calibration`` when the calibration table went straight to a file.
    calibration_file: WrittenTable | None = None

    @property
    def has_calibration(self) -> bool:
        return self.calibration is not None or self.calibration_file is not None

    def calibration_counts(self) -> tuple[int, int] | None:
        """(customers, repeat customers) of the calibration features, or None without them."""
        if self.calibration_file is not None:
            return self.calibration_file.rows, self.calibration_file.repeat_customers
        if self.calibration is None:
            return None
        return self.calibration.num_rows, int((self.calibration.column("frequency").to_numpy() > 0).sum())

    def features_frame(self, indexed: bool = True) -> pd.DataFrame:
        """The features as pandas, indexed by customer id (``indexed=False``: a column, see ``_frame``)."""
        return _frame(self.features, indexed)

    def calibration_frame(self, indexed: bool = True, columns: list[str] | None = None) -> pd.DataFrame:
        """The calibration features (only ``columns`` when given, plus the id when indexed)."""
        if self.calibration_file is not None:
            kept = self.calibration_file.kept
            if not indexed and columns is not None and set(columns) <= set(kept):
                return pd.DataFrame({name: kept[name] for name in columns}, copy=False)
            return read_features(self.calibration_file.path, indexed=indexed, columns=columns)
        if self.calibration is None:
            raise ValueError("no calibration_end was set, so there are no calibration features")
        table = self.calibration
        if columns is not None:
            table = table.select([*(["customer_id"] if indexed and "customer_id" not in columns else []), *columns])
        return _frame(table, indexed)


@dataclasses.dataclass(frozen=True)
class WrittenTable:
    """A table the stage wrote to a file rather than kept whole (see :class:`pipeline.io.ParquetChunks`),
    with the few columns asked to be kept in memory."""

    path: Path
    rows: int
    repeat_customers: int
    kept: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)


def _read_columns(path: Path, names: list[str]) -> dict[str, np.ndarray]:
    """Columns of a Parquet file as numpy arrays, read one at a time (so the file's Arrow
    buffers are never there beside more than one copied column)."""
    file = pq.ParquetFile(path)
    arrays = {}
    for name in names:
        values = file.read(columns=[name]).column(0).to_numpy()
        if name == "duration_holdout" and len(values):
            # The holdout's length, the same for every customer: a read-only view of one
            # number rather than 144 MB at 18M customers.
            values = np.broadcast_to(values[0], len(values))
        # Read-only like the Arrow-backed columns: the frames built on them share them.
        values.flags.writeable = False
        arrays[name] = values
    return arrays


def _frame(table: pa.Table, indexed: bool = True) -> pd.DataFrame:
    # split_blocks avoids consolidating columns into one 2-D block (a second full copy);
    # dates as datetime64, not a Python date object per customer (about 1 GB at 18M).
    frame = table.to_pandas(split_blocks=True, date_as_object=False)
    # Unindexed, customer_id stays an Arrow-backed column and rows are aligned by position:
    # at 18M customers every join, reindex or difference on a string index converted it to
    # Python objects (gigabytes, seconds each). The pipeline works this way; people and tests
    # get the customer index.
    return frame.set_index("customer_id") if indexed else frame


def read_features_frame(path: Path, without: tuple[str, ...] = ()) -> pd.DataFrame:
    """A features file as the pipeline's frame (unindexed: see :func:`_frame`), without the
    columns named in ``without``."""
    if not Path(path).is_file():
        raise InputDataError(f"{path}: features file not found (run `clv features` first)")
    names = [name for name in pq.read_schema(path).names if name not in without]
    return _frame(pq.read_table(path, columns=names), indexed=False)


def resolve_calibration_end(
    settings: FeatureSettings, first_date: dt.date, observation_end: dt.date, max_holdout_share: float | None = None,
) -> dt.date | None:
    """The calibration end from the settings, checked to lie strictly inside the data and,
    with ``max_holdout_share``, to leave the holdout at most that share of the history."""
    calibration_end = settings.calibration_end
    if settings.holdout_periods is not None:
        days = settings.holdout_periods * settings.period.days_per_unit
        calibration_end = observation_end - dt.timedelta(days=round(days))
    if calibration_end is None:
        return None
    if not first_date <= calibration_end < observation_end:
        raise InputDataError(
            f"features.calibration_end {calibration_end} is outside the data: it must be on or after "
            f"the first transaction ({first_date}) and before observation_end ({observation_end})"
        )
    history_days = (observation_end - first_date).days
    holdout_days = (observation_end - calibration_end).days
    if max_holdout_share is not None and holdout_days > max_holdout_share * history_days:
        source = (f"features.holdout_periods {settings.holdout_periods:g}" if settings.holdout_periods is not None
                  else f"features.calibration_end {calibration_end}")
        raise InputDataError(
            f"{source} makes a holdout of {holdout_days:,} days, {holdout_days / history_days:.1%} of the "
            f"{history_days:,} days observed ({first_date} to {observation_end}); at most "
            f"{max_holdout_share:.1%} is allowed (validation.max_holdout_share): shorten the holdout"
        )
    return calibration_end


def sorted_log_sql(
    observation_end: dt.date,
    with_margin: bool = False,
    with_channel: bool = False,
    with_acquisition_cost: bool = False,
    source: str = TRANSACTIONS_VIEW,
) -> str:
    """SQL of the log up to ``observation_end`` sorted by customer and date, what
    :func:`pipeline.stages.sorted_log.summarize_sorted_log` reads.

    Amounts (and margins) become integer micro-units of :data:`EXACT`. Within a day rows sort
    by channel, missing ones last, so the first row with a channel is the first purchase's.
    """
    columns = ["customer_id", "order_date", f"CAST(CAST(amount AS {EXACT}) * {MICRO_UNITS} AS BIGINT) AS amount_micro"]
    order = ["customer_id", "order_date"]
    if with_margin:
        columns.append(f"CAST(CAST(margin AS {EXACT}) * {MICRO_UNITS} AS BIGINT) AS margin_micro")
    if with_channel:
        columns.append("channel")
        order.append("channel NULLS LAST")
    if with_acquisition_cost:
        columns.append("acquisition_cost")
    return (
        f"SELECT {', '.join(columns)} FROM {source} "
        f"WHERE order_date <= {_date_literal(observation_end)} ORDER BY {', '.join(order)}"
    )


def fetch_sorted_log(con: duckdb.DuckDBPyConnection, log: LogSummary) -> pa.Table:
    """The validated ``transactions`` view sorted by customer and date (see :func:`sorted_log_sql`)."""
    sql = sorted_log_sql(
        log.observation_end, with_margin=log.has_margin, with_channel=log.has_channel,
        with_acquisition_cost=log.has_acquisition_cost,
    )
    return fetch_arrow(con, sql)


def features_of_sorted_log(
    sorted_log: pa.Table, log: LogSummary, period: PeriodSettings, calibration_end: dt.date | None,
    calibration_path: Path | None = None, holdout_purchases: bool = False,
) -> FeaturesResult:
    """The stage's tables from the sorted log (see :func:`fetch_sorted_log`).

    With ``calibration_path`` the calibration table is written there as it is computed
    (atomically) and the result holds its :class:`WrittenTable` instead of the table.
    """
    written = None
    if calibration_path is not None and calibration_end is not None:
        repeat_customers = 0

        def sink(table: pa.Table) -> None:
            nonlocal repeat_customers
            file.write(table)
            repeat_customers += int(np.count_nonzero(table["frequency"].to_numpy() > 0))

        with ParquetChunks(calibration_path) as file:
            features, _, repeat_purchases = summarize_sorted_log(
                sorted_log, period, log.observation_end, calibration_end, calibration_sink=sink
            )
        calibration = None
        written = WrittenTable(Path(calibration_path), file.rows, repeat_customers)
    else:
        features, calibration, repeat_purchases = summarize_sorted_log(
            sorted_log, period, log.observation_end, calibration_end, holdout_purchases=holdout_purchases
        )
    return FeaturesResult(
        features=features,
        calibration=calibration,
        repeat_purchases=repeat_purchases,
        log=dataclasses.replace(log, customers=features.num_rows),
        observation_end=log.observation_end,
        calibration_end=calibration_end,
        calibration_file=written,
    )


def compute_features(
    transactions: str | Path | pd.DataFrame,
    input_settings: InputSettings,
    settings: FeatureSettings,
    validation: ValidationSettings | None = None,
    threads: int | None = None,
    calibration_path: Path | None = None,
    keep_calibration_columns: tuple[str, ...] | list[str] = (),
    holdout_purchases: bool = False,
) -> FeaturesResult:
    """Features of a log given as a path (CSV/Parquet/text) or a DataFrame: the Python API.

    ``calibration_path``: write the calibration features there instead of returning them,
    keeping ``keep_calibration_columns`` (see :func:`features_of_sorted_log`).
    ``holdout_purchases``: count the holdout purchases per day too (see
    :func:`pipeline.stages.sorted_log.summarize_sorted_log`).
    """
    con = connect(threads=threads)
    try:
        log = load_transactions(
            con, transactions, input_settings, validation or ValidationSettings(), settings.observation_end
        )
        calibration_end = resolve_calibration_end(
            settings, log.first_date, log.observation_end, (validation or ValidationSettings()).max_holdout_share
        )
        sorted_log = fetch_sorted_log(con, log)
    finally:
        # DuckDB keeps the sort's memory (1.7 GB at 50M rows) until its connection closes.
        con.close()
    # One chunk per column, so the numpy views need no copy; the chunked result is freed here.
    sorted_log = sorted_log.combine_chunks()
    result = features_of_sorted_log(
        sorted_log, log, settings.period, calibration_end, calibration_path, holdout_purchases=holdout_purchases
    )
    if result.calibration_file is not None and keep_calibration_columns:
        # Read back only now that the sorted log is gone: kept while it was there they made
        # the stage's peak (4.4 GB at 50M rows).
        del sorted_log
        release_freed_memory()
        kept = _read_columns(result.calibration_file.path, list(keep_calibration_columns))
        result = dataclasses.replace(result, calibration_file=dataclasses.replace(result.calibration_file, kept=kept))
    return result


def features_from_config(
    config: Config, source: str | Path | pd.DataFrame | None = None, calibration_path: Path | None = None,
    keep_calibration_columns: tuple[str, ...] | list[str] = (),
) -> FeaturesResult:
    """Features for a whole config (its input unless ``source`` is given)."""
    return compute_features(
        source if source is not None else config.input.path,
        config.input,
        config.features,
        config.validation,
        calibration_path=calibration_path,
        keep_calibration_columns=keep_calibration_columns,
    )
