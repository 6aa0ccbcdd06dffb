"""``clv run`` with ``engine: spark``: every per-customer step on the cluster, the driver holding
only what stays small at any scale.

What crosses to the driver (nothing else does; every figure is computed by the functions the
DuckDB engine uses, on each partition's batches, and merged here):

* counts of the written tables, and the repeat purchases per calendar day (one row a day);
* the distinct ``(frequency, recency, T)`` histories with their number of customers, for the
  purchase models' fits (``models.CustomerHistories.from_counts``);
* for Gamma-Gamma, the distinct ``(frequency, monetary_value)`` pairs of repeat customers with
  their counts (``models.SpendStatistics``) — or, above :data:`SPEND_PAIRS_LIMIT` pairs, a
  seeded uniform sample of repeat customers (the fit says which, in its summary);
* sums and counts per batch: holdout errors, historical CLV totals, value and tier sums;
* order statistics: the tier cuts, the medians and the top decile's threshold exactly at any
  size, from the few values Spark's approximate quantiles bracket (:func:`values_at_ranks`);
  Spearman's rho from every customer up to :data:`EXACT_LIMIT` customers (DuckDB's figure),
  above that from a seeded sample of :data:`~pipeline.stages.backtest.RANK_SAMPLE` (DuckDB
  samples too, another sample);
* what the plots draw: per-frequency sums, customers per first-purchase day, the extent of the
  histories, and a seeded sample of predicted CLV.

The features, calibration and customers tables go from the executors straight into the run
catalog as Parquet datasets.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import operator
import pickle
import re
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pandas as pd
from pyspark import StorageLevel
from pyspark.errors import PySparkException, PythonException
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from models import CustomerHistories, SpendStatistics, group_histories, historical_clv_from_totals, spend_statistics
from models.historical import DEFAULT_MIN_EXPOSURE_YEARS
from models.tiers import quantile_ranks, quantiles_from_ranks, tier_thresholds
from pipeline.catalog import (
    CALIBRATION_FILE,
    CUSTOMERS_FILE,
    FEATURES_FILE,
    FEATURES_SUMMARY_FILE,
    REPEAT_PURCHASES_FILE,
    RunCatalog,
)
from pipeline.config import Config
from pipeline.errors import EngineError, InputDataError
from pipeline.io import write_parquet
from pipeline.spark.feature_tables import SparkFeatures, features_from_config, unique_statistics
from pipeline.spark.scoring import HISTORY_KEYS, HistoryLookup, _broadcast, _user_error, score
from pipeline.spark.session import spark_session
from pipeline.stages import backtest as backtest_stage
from pipeline.stages.acquisition import acquisition_partial
from pipeline.stages.fit import (
    PURCHASE_MODEL_TITLES,
    Backtest,
    FittedModels,
    all_candidates_failed,
    failure_reason,
    fit_purchase_model,
    fit_spend_model,
    fit_stage,
    refitted_models,
)
from pipeline.stages.partials import merge_partials
from pipeline.stages.score import HISTORY_ROW
from pipeline.stages.value import (
    HISTORY_SUM_TERMS,
    HistorySums,
    ValueOutputs,
    company_history_figures,
    configured_tiers,
    finish_value_summary,
    freeze_interval_method,
    freeze_tiers,
    history_sum_terms,
    lifespan_totals,
    new_customer_summary,
    new_scorer,
    score_customers,
    tier_table_of_partials,
    tier_table_partial,
    value_errors,
    value_order_statistics,
    value_partial,
)

# Distinct (frequency, monetary value) pairs sent to the driver for Gamma-Gamma; above it a
# seeded uniform sample of this many repeat customers is (16 bytes each: 32 MB).
SPEND_PAIRS_LIMIT = 2_000_000
# Up to this many customers the order statistics use every customer's value, as DuckDB does
# (a few columns of 8 bytes: tens of megabytes at most).
EXACT_LIMIT = backtest_stage.RANK_SAMPLE
# Relative rank error of the approximate quantiles that bracket an exact order statistic: at
# 18M customers each bracket holds about 7,200 values, which come to the driver.
QUANTILE_ERROR = 1e-4
# Predicted CLV values drawn for the distribution plot.
PLOT_SAMPLE = 200_000


def _progress(callback, message: str) -> None:
    if callback is not None:
        callback(message)


@contextlib.contextmanager
def spark_failures(master: str) -> Iterator[None]:
    """Around every Spark path of a command (the runner puts it there): a user error raised on
    an executor becomes its one line (exit 2), and Spark failing under the run, not because of
    the input, one line with exit code 5 (:class:`EngineError`): a lost executor, an
    unreachable or unparsable master, a job out of memory. ``--debug`` shows the whole trace."""
    from py4j.protocol import Py4JError

    try:
        yield
    except (PySparkException, Py4JError) as exc:
        if isinstance(exc, PythonException) and _user_error(exc) is not None:
            raise InputDataError(_user_error(exc) or "") from None
        raise EngineError(f"Spark failed: {_first_line(exc)} (spark.master {master}; the Spark logs above "
                          "say more)") from exc
    except KeyboardInterrupt:
        _cancel_jobs()
        raise
    except ConnectionError as exc:
        # py4j's socket to the JVM: the driver JVM died under the run (out of memory, killed).
        raise EngineError(f"Spark failed: the driver JVM stopped answering ({exc}); it may have run out of "
                          f"memory: raise spark.driver.memory (spark.master {master}; the Spark logs above say "
                          "more)") from exc


def _cancel_jobs() -> None:
    """Cancel the running session's jobs, if any (Ctrl-C: the executors stop at once rather
    than when the driver's JVM exits with this process)."""
    from pyspark import SparkContext

    context = SparkContext._active_spark_context
    if context is None:
        return
    with contextlib.suppress(Exception):
        context.cancelAllJobs()


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if isinstance(exc, PythonException):
        # The worker's traceback as text: its last "SomeError: ..." line says what went wrong.
        raised = [line for line in lines if re.match(r"^[\w.]+(Error|Exception): ", line)]
        if raised:
            return raised[-1][:500]
    for line in lines:
        # py4j puts its own preamble first; the Java exception follows.
        if not line.startswith(("An error occurred while calling", "An exception was thrown from")):
            return line[:500]
    return type(exc).__name__


def reduce_batches(table: DataFrame, partial_of: Callable[[pd.DataFrame], Any]) -> list[Any]:
    """``partial_of`` applied to every Arrow batch of ``table`` on the executors; the partials
    (a few per partition, each small) come back to the driver. With no rows at all, the partial
    of an empty batch."""

    def run(batches):
        for batch in batches:
            if len(batch):
                yield pd.DataFrame({"partial": [pickle.dumps(partial_of(batch))]})

    rows = table.mapInPandas(run, "partial binary").collect()
    if not rows:
        return [partial_of(table.limit(0).toPandas())]
    return [pickle.loads(row["partial"]) for row in rows]


def rank_sample_rows(table: DataFrame, customers: int, seed: int) -> pd.DataFrame:
    """The rows of the customers :func:`pipeline.stages.backtest.rank_sample` keeps, on the
    driver in customer order: every row up to its ``RANK_SAMPLE`` customers, about that many
    above (chosen by id on the executors, so the same customers as on DuckDB)."""

    def keep(batches):
        for batch in batches:
            yield batch[backtest_stage.rank_sample(batch["customer_id"], customers, seed)]

    frame = table.mapInPandas(keep, table.schema).toPandas()
    return frame.sort_values("customer_id", kind="stable").reset_index(drop=True)


def values_at_ranks(table: DataFrame, ranks: dict[str, list[int]], customers: int) -> dict[str, dict[int, float]]:
    """For each column of ``ranks``, its values at those 0-based ranks in ascending order,
    exactly, without sorting or collecting the columns: Spark's approximate quantiles bracket
    each rank (rank error at most :data:`QUANTILE_ERROR` × customers, so a bracket holds about
    four times that many values); one pass counts the values below each bracket and one
    collects those inside, for every column at once."""
    slack = 2 * QUANTILE_ERROR
    wanted = {column: sorted(set(column_ranks)) for column, column_ranks in ranks.items()}
    columns = list(wanted)
    probabilities = {
        column: [p for rank in wanted[column]
                 for p in (max(0.0, rank / customers - slack), min(1.0, (rank + 1) / customers + slack))]
        for column in columns
    }
    # One job for every column (approxQuantile takes a list of columns, with one list of
    # probabilities for all: ask each column for the union and keep its own).
    union = sorted({p for column in columns for p in probabilities[column]})
    estimates = table.approxQuantile(columns, union, QUANTILE_ERROR)
    at = {column: dict(zip(union, estimates[i])) for i, column in enumerate(columns)}
    brackets = {
        (column, rank): (at[column][probabilities[column][2 * i]], at[column][probabilities[column][2 * i + 1]])
        for column in columns for i, rank in enumerate(wanted[column])
    }
    found: dict[str, dict[int, float]] = {column: {} for column in columns}
    while brackets:
        items = list(brackets.items())
        below = table.agg(*[
            F.count(F.when(F.col(column) < low, 1)).alias(f"below_{i}")
            for i, ((column, _), (low, _high)) in enumerate(items)
        ]).head()
        inside = functools.reduce(lambda a, b: a | b, [
            (F.col(column) >= low) & (F.col(column) <= high) for (column, _), (low, high) in items
        ])
        collected = table.where(inside).select(*columns).toPandas()
        retry = {}
        for i, ((column, rank), (low, high)) in enumerate(items):
            start = int(below[f"below_{i}"])
            values = collected[column].to_numpy()
            bracket = np.sort(values[(values >= low) & (values <= high)])
            if start <= rank < start + len(bracket):
                found[column][rank] = float(bracket[rank - start])
            else:  # outside the estimate's guarantee (never seen): widen to that side and look again
                retry[(column, rank)] = (-np.inf if rank < start else low,
                                         np.inf if rank >= start + len(bracket) else high)
        brackets = retry
    return found


def exact_quantiles(table: DataFrame, column: str, probabilities: list[float], customers: int) -> np.ndarray:
    """``np.quantile`` of a column on the cluster, bit for bit (see :func:`models.tiers.quantiles_from_ranks`)."""
    ranks = [rank for p in probabilities for rank in quantile_ranks(customers, p)[:2]]
    values = values_at_ranks(table, {column: ranks}, customers)[column]
    return quantiles_from_ranks(customers, probabilities, values.__getitem__)


def exact_medians(table: DataFrame, columns: list[str], customers: int) -> dict[str, float]:
    """``pandas.Series.median`` of columns on the cluster: the middle value, or the mean of the two."""
    middle = [(customers - 1) // 2, customers // 2]
    found = values_at_ranks(table, {column: middle for column in columns}, customers)
    medians = {}
    for column in columns:
        lower, upper = found[column][middle[0]], found[column][middle[1]]
        medians[column] = lower if middle[0] == middle[1] else float(np.mean([lower, upper]))
    return medians


# ---------------------------------------------------------------------------------------------
# Features


def _customer_counts(table: DataFrame) -> tuple[int, int]:
    """(customers, repeat customers) of a features table, counted on the cluster."""
    row = table.agg(F.count(F.lit(1)).alias("customers"),
                    F.count(F.when(F.col("frequency") > 0, 1)).alias("repeat_customers")).head()
    return (int(row["customers"]), int(row["repeat_customers"])) if row is not None else (0, 0)


def write_features(computed: SparkFeatures, catalog: RunCatalog) -> dict[str, int | None]:
    """Write ``computed``'s tables into ``catalog`` (features and calibration as datasets, by
    the executors) and return the counts the features summary reports.

    The log is read once for the three tables (kept on the executors' memory and disk while
    they are written); each written table is counted from its files, not recomputed.
    """
    spark = computed.features.sparkSession
    cached_here = computed.transactions.storageLevel == StorageLevel.NONE
    if cached_here:
        # On disk only: a memory-cached partition is serialised whole in the heap first, and at
        # 50M rows (17M a partition) that overran the default 1g driver heap of local mode.
        computed.transactions.persist(StorageLevel.DISK_ONLY)
    try:
        computed.features.write.mode("errorifexists").parquet(str(catalog.path(FEATURES_FILE)))
        if computed.calibration is not None:
            computed.calibration.write.mode("errorifexists").parquet(str(catalog.path(CALIBRATION_FILE)))
        write_parquet(computed.repeat_purchases.toPandas(), catalog.path(REPEAT_PURCHASES_FILE))
        quality = quality_counts_on_cluster(computed.transactions, computed.log)  # while the log is cached
    finally:
        if cached_here:
            computed.transactions.unpersist()
    customers, repeaters = _customer_counts(spark.read.parquet(str(catalog.path(FEATURES_FILE))))
    calibration_customers = calibration_repeaters = None
    if computed.calibration is not None:
        calibration_customers, calibration_repeaters = _customer_counts(
            spark.read.parquet(str(catalog.path(CALIBRATION_FILE)))
        )
    return {
        "customers": customers,
        "repeat_customers": repeaters,
        "calibration_customers": calibration_customers,
        "calibration_repeat_customers": calibration_repeaters,
        **quality,
    }


def quality_counts_on_cluster(transactions: DataFrame, log: Any) -> dict[str, int]:
    """:func:`pipeline.stages.data_quality.sorted_log_counts` by aggregations: the log up to the
    observation end with DuckDB's columns (amounts in micro-units; margin, channel and CAC only
    where the log has them); rows of one customer and day beyond the first are merged purchases,
    rows equal in every column beyond the first are duplicates (missing values group together,
    as they compare equal on DuckDB)."""
    from pipeline.spark.feature_tables import _micros

    columns = [F.col("customer_id"), F.col("order_date"), _micros(F.col("amount")).alias("amount_micro")]
    if log.has_margin:
        columns.append(_micros(F.col("margin")).alias("margin_micro"))
    if log.has_channel:
        columns.append(F.col("channel"))
    if log.has_acquisition_cost:
        columns.append(F.col("acquisition_cost"))
    rows = transactions.where(F.col("order_date") <= F.lit(log.observation_end)).select(*columns)
    days = rows.groupBy("customer_id", "order_date").agg(
        F.count(F.lit(1)).alias("rows"), F.count(F.when(F.col("amount_micro") == 0, 1)).alias("zero")
    ).agg(F.sum(F.col("rows") - 1).alias("merged"), F.sum("zero").alias("zero")).head()
    duplicates = rows.groupBy(*rows.columns).count().agg(F.sum(F.col("count") - 1).alias("duplicates")).head()
    return {"zero_amount_rows": int(days["zero"] or 0), "same_day_rows_merged": int(days["merged"] or 0),
            "duplicate_rows": int(duplicates["duplicates"] or 0)}


# ---------------------------------------------------------------------------------------------
# What the fits take


def histories_of(table: DataFrame) -> CustomerHistories:
    """The distinct histories of ``table``'s customers with their counts, in the order of their
    first customer by id (the order a fit on the per-customer table meets them: bit-identical fits)."""
    statistics = unique_statistics(table)
    return CustomerHistories.from_counts(statistics[HISTORY_KEYS], statistics["customers"].to_numpy())


def spend_statistics_of(table: DataFrame, seed: int, limit: int = SPEND_PAIRS_LIMIT) -> tuple[SpendStatistics, str]:
    """What Gamma-Gamma is fitted on, and a sentence saying which: every distinct pair of the
    repeat customers with its count, or above ``limit`` pairs a seeded uniform sample of
    ``limit`` repeat customers."""
    repeaters = table.where((F.col("frequency") > 0) & (F.col("monetary_value") > 0))
    pairs = repeaters.groupBy("frequency", "monetary_value").agg(
        F.count(F.lit(1)).alias("customers"), F.min("customer_id").alias("first_customer")
    )
    counts = pairs.agg(F.count(F.lit(1)).alias("pairs"), F.sum("customers").alias("customers")).head()
    n_pairs, n_repeaters = int(counts["pairs"]), int(counts["customers"] or 0)
    if n_pairs <= limit:
        frame = pairs.orderBy("first_customer").select("frequency", "monetary_value", "customers").toPandas()
        statistics = SpendStatistics(
            frame["frequency"].to_numpy(dtype=np.float64), frame["monetary_value"].to_numpy(),
            frame["customers"].to_numpy(),
        )
        return statistics, f"every repeat customer ({n_repeaters:,}, {n_pairs:,} distinct pairs)"
    fraction = min(1.0, limit / n_repeaters)
    sample = repeaters.sample(withReplacement=False, fraction=fraction, seed=seed).select(
        "customer_id", "frequency", "monetary_value"
    ).orderBy("customer_id").toPandas()
    return spend_statistics(sample), (
        f"a seeded uniform sample of {len(sample):,} of the {n_repeaters:,} repeat customers "
        f"({n_pairs:,} distinct pairs, above the {limit:,} sent whole)"
    )


# ---------------------------------------------------------------------------------------------
# Backtest


def _prediction_columns(name: str) -> tuple[str, str]:
    return f"{name}__purchases", f"{name}__revenue"


def _probability_column(name: str) -> str:
    return f"{name}__any_purchase"


def holdout_predictions(calibration: DataFrame, models: dict[str, Any], spend_model: Any, horizon: float) -> DataFrame:
    """Every calibration customer's holdout figures and each model's (and the naive
    baseline's) predictions, computed on the executors by the models themselves."""
    names = [*models, "historical_baseline"]
    kept = ["customer_id", "frequency", "frequency_holdout", "revenue_holdout"]
    # The customer id and counts keep the log's types (an id may be text or a number).
    schema = T.StructType([calibration.schema[name] for name in kept] + [T.StructField("spend", T.DoubleType())] + [
        T.StructField(column, T.DoubleType())
        for name in names for column in (*_prediction_columns(name), _probability_column(name))
    ])

    def predict(batches):
        for batch in batches:
            if not len(batch):
                continue
            batch = batch.assign(duration_holdout=horizon)
            spend = spend_model.expected_spend(batch)
            out = {"customer_id": batch["customer_id"], "frequency": batch["frequency"],
                   "frequency_holdout": batch["frequency_holdout"], "revenue_holdout": batch["revenue_holdout"],
                   "spend": spend}
            # The DuckDB engine's functions, batch by batch: the same figures. The batch's
            # customers grouped into histories once, for every model's two predictions.
            grouped = group_histories(batch)
            predictions = {name: backtest_stage.model_holdout_predictions(batch, model, spend_model, grouped, spend)
                           for name, model in models.items()}
            predictions["historical_baseline"] = backtest_stage.naive_holdout_predictions(batch)
            for name, predicted in predictions.items():
                purchases, revenue = _prediction_columns(name)
                out[purchases], out[revenue] = predicted.purchases, predicted.revenue
                out[_probability_column(name)] = predicted.probability_any_purchase
            yield pd.DataFrame(out)

    needed = calibration.select("customer_id", "frequency", "recency", "T", "monetary_value", "total_amount",
                                "frequency_holdout", "revenue_holdout")
    return needed.mapInPandas(predict, schema)


def _actual(batch: pd.DataFrame) -> pd.DataFrame:
    return batch[["frequency", "frequency_holdout", "revenue_holdout"]]


def holdout_metrics_on_cluster(predictions: DataFrame, names: list[str], customers: int,
                               seed: int) -> tuple[dict[str, dict], dict[str, dict]]:
    """:func:`pipeline.stages.backtest.holdout_metrics` of every model in ``names`` (and the
    naive baseline, without spend), from per-batch sums and the order statistics; and each
    one's :func:`pipeline.stages.backtest.holdout_tables`, from the rank sample's rows."""

    def partial_of(batch):
        partials = {}
        for name in names:
            purchases, revenue = (batch[column] for column in _prediction_columns(name))
            spend = None if name == "historical_baseline" else batch["spend"]
            partials[name] = backtest_stage.holdout_partial(_actual(batch), purchases, revenue, spend,
                                                            batch[_probability_column(name)])
        return partials

    batches = reduce_batches(predictions, partial_of)
    partials = {name: merge_partials(batch[name] for batch in batches) for name in names}
    order, tables = _holdout_order_statistics(predictions, names, customers, seed, partials)
    return ({name: backtest_stage.finish_holdout_metrics(partials[name], order[name]) for name in names}, tables)


def _holdout_order_statistics(predictions: DataFrame, names: list[str], customers: int, seed: int,
                              partials: dict[str, dict]) -> tuple[dict[str, dict], dict[str, dict]]:
    columns = ["customer_id", "frequency", "frequency_holdout", "revenue_holdout"]
    actual = columns[:]
    columns += [column for name in names for column in (*_prediction_columns(name), _probability_column(name))]
    # Spearman's rho on the customers rank_sample keeps (the ones DuckDB keeps: the same figure).
    sample = rank_sample_rows(predictions.select(*columns), customers, seed)
    # What every model's figures share, once (as the DuckDB engine does).
    actuals = backtest_stage.holdout_actuals(sample[actual], seed, drawn_from=customers)
    # The plots' tables from the same customers as DuckDB's (all of them up to RANK_SAMPLE).
    tables = {
        name: backtest_stage.holdout_tables(sample[actual], sample[_prediction_columns(name)[1]],
                                            sample[_probability_column(name)], seed, drawn_from=customers,
                                            actuals=actuals)
        for name in names
    }
    if customers <= EXACT_LIMIT:
        # Every customer's values, in customer order: exactly DuckDB's figures, top decile too.
        return {
            name: backtest_stage.holdout_order_statistics(
                sample[actual], *(sample[column] for column in _prediction_columns(name)), seed=seed,
                actuals=actuals,
            )
            for name in names
        }, tables
    # The top decile from the exact threshold and the revenue above it.
    share = backtest_stage.TOP_SHARE
    revenues = {name: _prediction_columns(name)[1] for name in names}
    # The top_share_count-th largest predicted revenue of each model, exactly; ties at it are
    # shared pro rata, as top_share_capture does. Every model's threshold, then every model's
    # sums, in one pass each.
    top_rank = customers - backtest_stage.top_share_count(customers, share)
    found = values_at_ranks(predictions, {column: [top_rank] for column in revenues.values()}, customers)
    thresholds = {name: found[column][top_rank] for name, column in revenues.items()}

    def sums_of(batch):
        actual = batch["revenue_holdout"].to_numpy()
        return {name: backtest_stage.revenue_at_threshold(actual, batch[column].to_numpy(), thresholds[name])
                for name, column in revenues.items()}

    batches = reduce_batches(predictions.select("revenue_holdout", *revenues.values()), sums_of)
    order = {}
    for name in names:
        purchases, revenue = _prediction_columns(name)
        statistics = backtest_stage.holdout_order_statistics(
            sample[actual], sample[purchases], sample[revenue],
            seed=seed, drawn_from=customers, actuals=actuals,
        )
        statistics["top_decile_revenue_capture"] = backtest_stage.top_share_capture_from_sums(
            merge_partials(batch[name] for batch in batches), customers, partials[name]["revenue_actual_sum"], share
        )
        order[name] = statistics
    return order, tables


def run_backtest_on_cluster(calibration: DataFrame, config: Config, customers: int, progress=None) -> tuple[Backtest, DataFrame]:
    """Fit every candidate on the calibration period's histories and pairs, score each (and the
    naive baseline) on the holdout on the cluster, select one. Returns the backtest and the
    (persisted) per-customer predictions, for the plots; the caller unpersists them."""
    histories = histories_of(calibration)
    spend_input, _ = spend_statistics_of(calibration, config.seed)
    purchase: dict[str, Any] = {}
    failed: dict[str, str] = {}
    for name in config.models.purchase.candidates:
        _progress(progress, f"fitting {PURCHASE_MODEL_TITLES[name]} (calibration)")
        try:
            purchase[name] = fit_purchase_model(name, histories, config.models)
        except InputDataError as exc:
            failed[name] = str(exc)
            _progress(progress, f"skipped {PURCHASE_MODEL_TITLES[name]}: {exc}")
    if not purchase:
        raise all_candidates_failed(failed)
    _progress(progress, "fitting Gamma-Gamma (calibration)")
    fitted = FittedModels(purchase=purchase, spend=fit_spend_model(spend_input, config.models),
                          selected=next(iter(purchase)), failed=failed)
    horizon = float(calibration.select("duration_holdout").head()["duration_holdout"])
    # A model's holdout prediction depends on a customer only through the history: one that
    # predicts every distinct history (here, on the driver) predicts every customer.
    for name, model in list(fitted.purchase.items()):
        try:
            with np.errstate(all="ignore"):
                model.expected_purchases(histories.unique, horizon)
        except Exception as exc:  # noqa: BLE001 - as on DuckDB: left out, as one that cannot fit
            fitted.failed[name] = f"cannot predict the holdout: {failure_reason(exc)}"
            del fitted.purchase[name]
    if not fitted.purchase:
        raise all_candidates_failed(fitted.failed)
    # On disk (see write_features): a dozen columns for every calibration customer.
    predictions = holdout_predictions(calibration, fitted.purchase, fitted.spend, horizon).persist(
        StorageLevel.DISK_ONLY
    )
    names = [*fitted.purchase, "historical_baseline"]
    metrics, tables = holdout_metrics_on_cluster(predictions, names, customers, config.seed)
    for name, model in fitted.purchase.items():
        fit_figures, fit_tables = backtest_stage.calibration_fit(model, histories)
        metrics[name].update(fit_figures)
        tables[name].update(fit_tables)
    models_only = {name: metrics[name] for name in fitted.purchase}
    selected, reason = backtest_stage.select_model(models_only, config.models.selection_metric)
    fitted.selected = selected
    ordered = {name: metrics[name] for name in [*fitted.purchase, "historical_baseline"]}
    return Backtest(fitted, ordered, selected, reason, tables), predictions


def backtest_plot_data_on_cluster(
    predictions: DataFrame, features: DataFrame, model: Any, name: str, repeat_purchases: pd.DataFrame,
    config: Config, observation_end: dt.date, calibration_end: dt.date,
) -> dict[str, Any]:
    """The two backtest plots' tables from sums on the cluster (see
    :func:`pipeline.stages.report.backtest_plot_data` for DuckDB's)."""
    from pipeline import plots

    purchases, _ = _prediction_columns(name)
    max_frequency = 7
    sums = (
        predictions.groupBy(F.least(F.col("frequency"), F.lit(max_frequency)).alias("bin"))
        .agg(F.count(F.lit(1)).alias("customers"), F.sum(F.col("frequency_holdout").cast("double")).alias("actual"),
             F.sum(purchases).alias("predicted"))
        .toPandas().set_index("bin")
    )
    cohorts = features.groupBy("first_purchase_date").count().orderBy("first_purchase_date").toPandas()
    return {
        "calibration_vs_holdout": plots.calibration_vs_holdout_from_sums(sums, max_frequency),
        "cumulative_tracking": plots.cumulative_tracking_from_cohorts(
            repeat_purchases, pd.to_datetime(cohorts["first_purchase_date"]).to_numpy().astype("datetime64[D]"),
            cohorts["count"].to_numpy(), model, config.features.period.days_per_unit, observation_end,
        ),
        "calibration_end": calibration_end,
        "title": f"{PURCHASE_MODEL_TITLES[name]} (calibration fit)",
    }


# ---------------------------------------------------------------------------------------------
# Value


def history_sums_on_cluster(features: DataFrame, scorer: Any) -> pd.DataFrame:
    """``pipeline.stages.value.HistorySums`` of ``features``' customers, added up by history on
    the cluster: one row per distinct (frequency, recency, T), sorted, with ``customers`` and
    the sums of :data:`~pipeline.stages.value.HISTORY_SUM_TERMS` (each customer's terms made by
    the executors with the scorer's margin and acquisition cost)."""

    def terms(batches):
        for batch in batches:
            if len(batch):
                yield pd.concat([batch[HISTORY_KEYS].reset_index(drop=True).astype(np.float64),
                                 history_sum_terms(scorer, batch).reset_index(drop=True)], axis=1)

    schema = ", ".join(f"`{name}` double" for name in [*HISTORY_KEYS, *HISTORY_SUM_TERMS])
    grouped = features.mapInPandas(terms, schema).groupBy(*HISTORY_KEYS).agg(
        F.count(F.lit(1)).alias("customers"), *[F.sum(name).alias(name) for name in HISTORY_SUM_TERMS]
    )
    frame = grouped.toPandas()
    return frame.sort_values(HISTORY_KEYS, kind="stable").reset_index(drop=True)


def value_on_cluster(features: DataFrame, fit: Any, config: Config, customers: int, catalog: RunCatalog,
                     progress=None) -> ValueOutputs:
    """The value stage on the cluster: the lifespan from summed totals, the tier cuts from the
    customers' predicted CLV, ``customers.parquet`` written by the executors, and the summary
    from per-batch sums and order statistics."""
    spark = features.sparkSession
    scorer = new_scorer(fit.purchase_model, fit.selected, fit.spend_model, config.value, config.features.period,
                        seed=config.seed)
    totals = sum(reduce_batches(features, lambda batch: lifespan_totals(scorer, batch)))
    with value_errors():
        # Each customer's historical CLV is then their own, with this lifespan (score_customers).
        historical = historical_clv_from_totals(totals, per_customer_min_exposure_years=DEFAULT_MIN_EXPOSURE_YEARS)
    scorer.lifespan_years = historical.lifespan_years
    segments = config.segments
    # Every distinct history's figures once, on the driver, with the company totals' interval
    # from the per-history sums the cluster adds up; the executors look their customers' up.
    sums = history_sums_on_cluster(features, scorer)
    freeze_interval_method(scorer, len(sums))
    with value_errors():
        figures_of_histories, company = company_history_figures(scorer, sums[HISTORY_KEYS], HistorySums(
            customers=sums["customers"].to_numpy(dtype=np.float64), margin=sums["margin"].to_numpy(),
            margin_spend=sums["margin_spend"].to_numpy(), acquisition_cost=float(sums["acquisition_cost"].sum()),
        ))
    lookup = HistoryLookup(sums[HISTORY_KEYS], figures_of_histories)
    figures_value, release_figures = _broadcast(spark, figures_of_histories)
    untiered = lookup.join(features).mapInPandas(
        lambda batches: (score_customers(scorer, batch, figures_value(), batch[HISTORY_ROW].to_numpy(),
                                         tiers=None)[["predicted_clv"]] for batch in batches if len(batch)),
        "predicted_clv double",
    )
    if segments.method == "absolute":
        # Only the lowest CLV is checked against the lowest tier's bound.
        lowest = untiered.agg(F.min("predicted_clv")).head()[0]
        with value_errors():
            thresholds = tier_thresholds(pd.Series([lowest], dtype=float), configured_tiers(segments),
                                         method="absolute")
    else:
        # The customers' quantiles, exactly (np.quantile's), from the values at a few ranks.
        tiers_ = configured_tiers(segments)
        untiered = untiered.persist(StorageLevel.DISK_ONLY)
        try:
            values = exact_quantiles(untiered, "predicted_clv", [tier.cut for tier in tiers_], customers)
        finally:
            untiered.unpersist()
        thresholds = dict(zip([tier.name for tier in tiers_], values))
    release_figures()
    freeze_tiers(scorer, segments, thresholds)
    _progress(progress, "writing customers")
    score(features, scorer, catalog.path(CUSTOMERS_FILE), lookup=lookup)
    written = spark.read.parquet(str(catalog.path(CUSTOMERS_FILE)))
    # The summaries also read the features the customers table leaves out: the first channel
    # (like for like per channel, as DuckDB's) and the total amount (a new customer's first purchase).
    extra = [name for name in ("total_amount", "first_channel") if name in features.columns]
    summarised = written.join(features.select("customer_id", *extra), "customer_id", "left")
    batches = reduce_batches(summarised, lambda batch: {
        "value": value_partial(batch), "tiers": tier_table_partial(batch, scorer),
        "acquisition": acquisition_partial(batch, batch["margin_rate"], batch["acquisition_cost"]),
    })
    tiers = tier_table_of_partials([batch["tiers"] for batch in batches], scorer)
    value_sums = merge_partials(batch["value"] for batch in batches)
    # Each batch's acquisition partial is itself a GroupedSums (group -> sums): added, not merged key by key.
    acquisition_sums = functools.reduce(operator.add, (batch["acquisition"] for batch in batches))
    figures = written.select("customer_id", "predicted_clv", "historical_clv")
    # Every customer up to EXACT_LIMIT; above, the customers rank_sample keeps for Spearman's
    # rho (the ones DuckDB keeps: the same figure), with the medians exact from the whole column.
    sample = rank_sample_rows(figures, customers, config.seed)
    order = value_order_statistics(sample, config.seed, drawn_from=customers)
    if customers > EXACT_LIMIT:
        medians = exact_medians(written, ["predicted_clv", "historical_clv"], customers)
        order["predicted_clv_median"] = medians["predicted_clv"]
        order["historical_clv_customer_median"] = medians["historical_clv"]
    plotted = sample["predicted_clv"]
    if len(plotted) > PLOT_SAMPLE:
        plotted = plotted.sample(PLOT_SAMPLE, random_state=config.seed)
    extent = written.agg(F.max("frequency").alias("frequency"), F.max("T").alias("T")).head()
    summary = finish_value_summary(value_sums, order, historical, tiers)
    summary["intervals"] = company  # in the DuckDB summary's order
    summary["new_customer"] = new_customer_summary(scorer, acquisition_sums)
    return ValueOutputs(
        scorer=scorer,
        customers=pd.DataFrame({"predicted_clv": plotted.to_numpy()}),
        tier_table=tiers,
        summary=summary,
        max_frequency=float(extent["frequency"]),
        max_age=float(extent["T"]),
    )


# ---------------------------------------------------------------------------------------------
# The whole run


def features_on_cluster(config: Config, catalog: RunCatalog, source=None) -> tuple[SparkFeatures, dict[str, Any]]:
    """The features stage on Spark into ``catalog`` (``clv features`` and the first step of a
    run): the tables written by the executors, the features summary by the driver."""
    from pipeline.runner import features_summary

    spark: SparkSession = spark_session(config.spark)
    computed = features_from_config(spark, config, source)
    counts = write_features(computed, catalog)
    summary = features_summary(
        computed.log, counts, computed.observation_end, computed.calibration_end, config,
        catalog.final_path(FEATURES_FILE),
    )
    catalog.write_json(FEATURES_SUMMARY_FILE, summary)
    return computed, summary


def run_pipeline_on_spark(config: Config, catalog: RunCatalog, source=None, progress=None, on_fit=None,
                          on_scorer=None):
    """:func:`pipeline.runner.run_pipeline` with ``engine: spark`` (see the module's doc)."""
    from pipeline.runner import PipelineResult, draw_plots, warn_data_quality
    from pipeline.stages.report import run_summary

    _progress(progress, "computing features")
    computed, summary_of_features = features_on_cluster(config, catalog, source)
    warn_data_quality(summary_of_features)
    spark = computed.features.sparkSession
    features = spark.read.parquet(str(catalog.path(FEATURES_FILE)))
    backtest, backtest_data = None, None
    if computed.calibration is not None:
        calibration = spark.read.parquet(str(catalog.path(CALIBRATION_FILE)))
        backtest, predictions = run_backtest_on_cluster(
            calibration, config, int(summary_of_features["calibration_customers"] or 0), progress
        )
        try:
            backtest_data = backtest_plot_data_on_cluster(
                predictions, features, backtest.fitted.purchase[backtest.selected], backtest.selected,
                catalog.repeat_purchases(), config, computed.observation_end, computed.calibration_end,
            )
        finally:
            predictions.unpersist()
    histories = histories_of(features)
    spend_input, spend_source = spend_statistics_of(features, config.seed)
    fit = fit_stage(spend_input, config.models, backtest, progress, histories)
    fit.spend_fitted_on = spend_source
    catalog.write_fit(fit)
    if on_fit is not None:
        on_fit(fit)
    _progress(progress, "valuing customers")
    value = value_on_cluster(features, fit, config, int(summary_of_features["customers"] or 0), catalog,
                             progress)
    catalog.write_value(value, customers_written=True)
    example = features.limit(5).toPandas()
    if on_scorer is not None:
        on_scorer(value.scorer, example)
    _progress(progress, "drawing plots")
    plot_paths = draw_plots(catalog, config, fit, value, backtest_data)
    summary = run_summary(config, summary_of_features, fit, value, plot_paths)
    catalog.write_summary(summary)
    return PipelineResult(run_dir=catalog.final, summary=summary, features=example, fit=fit, value=value,
                          cluster_features=features)


def refitted_holdout_metric_on_cluster(scorer: Any, calibration: DataFrame, metric: str, seed: int) -> float:
    """:func:`pipeline.stages.fit.refitted_holdout_metric` on the cluster: fitted on the
    calibration window's histories and spend pairs, scored on the executors."""
    histories = histories_of(calibration)
    spend_input, _ = spend_statistics_of(calibration, seed)
    with np.errstate(all="ignore"):
        purchase, spend = refitted_models(scorer, histories, spend_input)
    horizon = float(calibration.select("duration_holdout").head()["duration_holdout"])
    predictions = holdout_predictions(calibration, {"refitted": purchase}, spend, horizon).persist(
        StorageLevel.DISK_ONLY
    )
    try:
        metrics, _ = holdout_metrics_on_cluster(predictions, ["refitted"], calibration.count(), seed)
    finally:
        predictions.unpersist()
    return abs(metrics["refitted"][backtest_stage.SELECTION_KEYS[metric]])


def predicted_clv_total(features: DataFrame, scorer: Any) -> float:
    """Every customer's predicted CLV under ``scorer``, summed on the cluster."""
    return float(sum(reduce_batches(
        features, lambda batch: float(score_customers(scorer, batch, tiers=None, intervals=False)["predicted_clv"].sum())
    )))


# ---------------------------------------------------------------------------------------------
# clv backtest: the backtest at several origins


def backtest_origins_on_spark(config: Config, source=None, progress=None):
    """:func:`pipeline.runner.backtest_origins` with ``engine: spark``: the log read and
    validated once (and kept on the executors' disks, partitioned by customer), each origin's
    calibration features computed by the executors from its rows up to that origin's
    observation end, and backtested as ``clv run`` backtests (:func:`run_backtest_on_cluster`)."""
    from pipeline.runner import OriginBacktest, OriginsBacktest
    from pipeline.spark.feature_tables import features as feature_tables
    from pipeline.spark.reading import read_transactions
    from pipeline.stages.stability import origin_windows

    spark = spark_session(config.spark)
    _progress(progress, "reading the log")
    frame, log = read_transactions(spark, source if source is not None else config.input.path, config.input,
                                   config.validation, config.features.observation_end)
    windows = origin_windows(config.features, log.first_date, log.observation_end,
                             max_holdout_share=config.validation.max_holdout_share)
    # On disk only, as in write_features; partitioned by customer once for every origin's tables.
    frame = frame.repartition("customer_id").persist(StorageLevel.DISK_ONLY)
    results = []
    try:
        for origin in windows:
            _progress(progress, f"origin {origin.number}/{len(windows)}: calibration ends {origin.calibration_end}, "
                                f"holdout to {origin.observation_end}")
            _, calibration = feature_tables(
                frame.where(F.col("order_date") <= F.lit(origin.observation_end)), config.features,
                origin.observation_end, origin.calibration_end, with_margin=log.has_margin,
                with_channel=log.has_channel, with_acquisition_cost=log.has_acquisition_cost,
            )
            # Read by every fit and by the holdout predictions: computed once.
            calibration = calibration.persist(StorageLevel.DISK_ONLY)
            try:
                customers = calibration.count()
                say = None if progress is None else (
                    lambda message, number=origin.number: progress(f"origin {number}/{len(windows)}: {message}"))
                backtest, predictions = run_backtest_on_cluster(calibration, config, customers, say)
                predictions.unpersist()
            finally:
                calibration.unpersist()
            results.append(OriginBacktest(origin, backtest.metrics, backtest.selected, backtest.reason,
                                          dict(backtest.fitted.failed), customers))
    finally:
        frame.unpersist()
    data = {"source": log.source, "first_date": log.first_date.isoformat(), "last_date": log.last_date.isoformat(),
            "observation_end": log.observation_end.isoformat(), "rows_used": log.rows_used}
    return OriginsBacktest(results, list(config.models.purchase.candidates), config.models.selection_metric, data)
