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

The features are sums over each customer's rows of the log, sorted by the engine (DuckDB, which
spills to disk when memory runs short: ``pipeline/duckdb_engine.py``) and reduced in numpy
(``pipeline/stages/sorted_log.py``). This module takes and returns tables.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from pipeline.config import FeatureSettings, PeriodSettings
from pipeline.errors import InputDataError
from pipeline.stages.sorted_log import summarize_sorted_log
from pipeline.transactions import LogSummary

# The purchase models' inputs (models' PURCHASE_COLUMNS, not imported: that would load scikit-learn
# and lifetimes into every features run).
HISTORY_COLUMNS = ["frequency", "recency", "T"]
FEATURE_COLUMNS = [*HISTORY_COLUMNS, "monetary_value"]


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
    # Set instead of ``calibration`` when the calibration table went straight to a writer.
    calibration_file: WrittenTable | None = None
    # pipeline.stages.data_quality.sorted_log_counts of the log the features came from.
    quality: dict[str, int] = dataclasses.field(default_factory=dict)

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
        return pipeline_frame(self.features, indexed)

    def calibration_frame(self, indexed: bool = True, columns: list[str] | None = None) -> pd.DataFrame:
        """The calibration features (only ``columns`` when given, plus the id when indexed)."""
        if self.calibration is None:
            raise ValueError("no calibration table in memory: no calibration_end was set, or it went to a writer")
        table = self.calibration
        if columns is not None:
            table = table.select([*(["customer_id"] if indexed and "customer_id" not in columns else []), *columns])
        return pipeline_frame(table, indexed)


@dataclasses.dataclass(frozen=True)
class WrittenTable:
    """A table the stage handed to a writer rather than kept whole (see
    :meth:`pipeline.catalog.RunCatalog.calibration_writer`)."""

    rows: int
    repeat_customers: int


def pipeline_frame(table: pa.Table, indexed: bool = True) -> pd.DataFrame:
    # split_blocks avoids consolidating columns into one 2-D block (a second full copy);
    # dates as datetime64, not a Python date object per customer (about 1 GB at 18M).
    frame = table.to_pandas(split_blocks=True, date_as_object=False)
    # Unindexed, customer_id stays an Arrow-backed column and rows are aligned by position:
    # at 18M customers every join, reindex or difference on a string index converted it to
    # Python objects (gigabytes, seconds each). The pipeline works this way; people and tests
    # get the customer index.
    return frame.set_index("customer_id") if indexed else frame


def resolve_calibration_end(
    settings: FeatureSettings, first_date: dt.date, observation_end: dt.date, max_holdout_share: float | None = None,
) -> dt.date | None:
    """The calibration end from the settings, checked to lie strictly inside the data and,
    with ``max_holdout_share``, to leave the holdout at most that share of the history."""
    calibration_end = settings.calibration_end
    if settings.holdout_periods is not None:
        days = settings.holdout_days(observation_end)
        assert days is not None  # a holdout in periods has a length
        calibration_end = observation_end - dt.timedelta(days=days)
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


def log_up_to(sorted_log: pa.Table, observation_end: dt.date) -> pa.Table:
    """The rows of a log sorted by customer and date (see
    :func:`pipeline.duckdb_engine.sorted_log_sql`) on or before ``observation_end``, still
    sorted and in one chunk per column: the log as observed at an earlier date."""
    import pyarrow.compute as pc

    dates = sorted_log.column("order_date")
    if len(dates) == 0 or pc.max(dates).as_py() <= observation_end:
        return sorted_log
    keep = pc.less_equal(dates, pa.scalar(observation_end, type=dates.type))
    return sorted_log.filter(keep).combine_chunks()


def features_of_sorted_log(
    sorted_log: pa.Table, log: LogSummary, period: PeriodSettings, calibration_end: dt.date | None,
    calibration_writer: Any = None, holdout_purchases: bool = False,
) -> FeaturesResult:
    """The stage's tables from the log sorted by customer and date (see
    :func:`pipeline.duckdb_engine.sorted_log_sql`).

    With ``calibration_writer`` (an open writer with ``write(table)``, from the run catalog) the
    calibration table goes to it as it is computed, and the result holds a :class:`WrittenTable`
    describing it instead of the table.
    """
    from pipeline.stages.data_quality import sorted_log_counts

    quality = sorted_log_counts(sorted_log)
    written = None
    if calibration_writer is not None and calibration_end is not None:
        rows = repeat_customers = 0

        def sink(table: pa.Table) -> None:
            nonlocal rows, repeat_customers
            calibration_writer.write(table)
            rows += table.num_rows
            repeat_customers += int(np.count_nonzero(table["frequency"].to_numpy() > 0))

        features, _, repeat_purchases = summarize_sorted_log(
            sorted_log, period, log.observation_end, calibration_end, calibration_sink=sink
        )
        calibration = None
        written = WrittenTable(rows, repeat_customers)
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
        quality=quality,
    )
