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
import pandas as pd
import pyarrow as pa

from pipeline.config import Config, FeatureSettings, InputSettings, PeriodSettings, ValidationSettings
from pipeline.errors import InputDataError
from pipeline.io import connect, fetch_arrow
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

    def features_frame(self, indexed: bool = True) -> pd.DataFrame:
        """The features as pandas, indexed by customer id (``indexed=False``: a column, see ``_frame``)."""
        return _frame(self.features, indexed)

    def calibration_frame(self, indexed: bool = True) -> pd.DataFrame:
        if self.calibration is None:
            raise ValueError("no calibration_end was set, so there are no calibration features")
        return _frame(self.calibration, indexed)


def _frame(table: pa.Table, indexed: bool = True) -> pd.DataFrame:
    if not indexed:
        # The history columns as one contiguous chunk each, which pandas wraps without copying
        # (the copy happens here instead of in to_pandas): read-only, so the models can reuse
        # their grouping of customers into histories across a run's calls
        # (models._validation.unique_rows). Only these three: combining every column cost 6 s
        # at 18M customers.
        for name in HISTORY_COLUMNS:
            if name in table.column_names and table[name].num_chunks != 1:
                position = table.schema.get_field_index(name)
                table = table.set_column(position, name, pa.chunked_array([table[name].combine_chunks()]))
    # split_blocks avoids consolidating columns into one 2-D block (a second full copy);
    # dates as datetime64, not a Python date object per customer (about 1 GB at 18M).
    frame = table.to_pandas(split_blocks=True, date_as_object=False)
    # Unindexed, customer_id stays an Arrow-backed column and rows are aligned by position:
    # at 18M customers every join, reindex or difference on a string index converted it to
    # Python objects (gigabytes, seconds each). The pipeline works this way; people and tests
    # get the customer index.
    return frame.set_index("customer_id") if indexed else frame


def resolve_calibration_end(
    settings: FeatureSettings, first_date: dt.date, observation_end: dt.date
) -> dt.date | None:
    """The calibration end from the settings, checked to lie strictly inside the data."""
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
    sorted_log: pa.Table, log: LogSummary, period: PeriodSettings, calibration_end: dt.date | None
) -> FeaturesResult:
    """The stage's tables from the sorted log (see :func:`fetch_sorted_log`)."""
    features, calibration, repeat_purchases = summarize_sorted_log(
        sorted_log, period, log.observation_end, calibration_end
    )
    return FeaturesResult(
        features=features,
        calibration=calibration,
        repeat_purchases=repeat_purchases,
        log=dataclasses.replace(log, customers=features.num_rows),
        observation_end=log.observation_end,
        calibration_end=calibration_end,
    )


def compute_features(
    transactions: str | Path | pd.DataFrame,
    input_settings: InputSettings,
    settings: FeatureSettings,
    validation: ValidationSettings | None = None,
    threads: int | None = None,
) -> FeaturesResult:
    """Features of a log given as a path (CSV/Parquet/text) or a DataFrame: the Python API."""
    con = connect(threads=threads)
    try:
        log = load_transactions(
            con, transactions, input_settings, validation or ValidationSettings(), settings.observation_end
        )
        calibration_end = resolve_calibration_end(settings, log.first_date, log.observation_end)
        sorted_log = fetch_sorted_log(con, log)
    finally:
        # DuckDB keeps the sort's memory (1.7 GB at 50M rows) until its connection closes.
        con.close()
    # One chunk per column, so the numpy views need no copy; the chunked result is freed here.
    sorted_log = sorted_log.combine_chunks()
    return features_of_sorted_log(sorted_log, log, settings.period, calibration_end)


def features_from_config(config: Config, source: str | Path | pd.DataFrame | None = None) -> FeaturesResult:
    """Features for a whole config (its input unless ``source`` is given)."""
    return compute_features(
        source if source is not None else config.input.path,
        config.input,
        config.features,
        config.validation,
    )
