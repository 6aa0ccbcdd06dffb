"""The run's orchestration: each stage's inputs come from, and its outputs go to, the run
catalog (``pipeline/catalog.py``); the stages themselves (``pipeline/stages``) take and return tables.

:func:`run_pipeline` runs every stage into a new run. :func:`features_alone` is the features
stage into a new run; :func:`fit_alone`, :func:`value_alone` and :func:`report_alone` rerun one
stage on a finished run, which the catalog updates as a whole or not at all.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from pathlib import Path
from typing import Any

from pipeline.catalog import BACKTEST_COLUMNS, FEATURES_FILE, RunCatalog
from pipeline.config import Config
from pipeline.stages.data_quality import QUALITY_COUNTS
from pipeline.stages.features import FeaturesResult
from pipeline.stages.fit import (
    Backtest,
    FitOutputs,
    backtest_candidates,
    encode_covariates,
    fit_models,
    fit_stage,
    group_customers,
    uses_covariates,
)
from pipeline.stages.report import backtest_plot_data, run_summary
from pipeline.stages.stability import Origin
from pipeline.stages.value import ValueOutputs, value_stage

__all__ = [
    "FitOutputs", "OriginsBacktest", "PipelineResult", "backtest_origins", "features_alone", "fit_alone",
    "report_alone", "run_pipeline", "value_alone", "write_backtest_origins",
]


def _progress(callback, message: str) -> None:
    if callback is not None:
        callback(message)


def features_summary(
    log: Any, counts: dict[str, int | None], observation_end: dt.date, calibration_end: dt.date | None,
    config: Config, output: Path,
) -> dict[str, Any]:
    """What a person wants to see about a features run (also logged as run metadata).

    ``log``: the :class:`pipeline.transactions.LogSummary`; ``counts``: ``customers``,
    ``repeat_customers``, ``calibration_customers`` and ``calibration_repeat_customers`` (the
    last two None without a holdout), however the engine counted them.
    """
    return {
        "source": log.source,
        "rows_read": log.rows_read,
        "rows_used": log.rows_used,
        "rows_after_observation_end": log.rows_after_observation_end,
        "negative_amount_rows_dropped": log.negative_amount_rows_dropped,
        "future_rows_dropped": log.future_rows_dropped,
        "margin_above_amount_rows": log.margin_above_amount_rows,
        "first_date": log.first_date.isoformat(),
        "last_date": log.last_date.isoformat(),
        "customers": counts["customers"],
        "repeat_customers": counts["repeat_customers"],
        "period_unit": config.features.period.unit,
        "period_resolution": config.features.period.resolution,
        "observation_end": observation_end.isoformat(),
        "calibration_end": calibration_end.isoformat() if calibration_end else None,
        "calibration_customers": counts["calibration_customers"],
        "calibration_repeat_customers": counts["calibration_repeat_customers"],
        # pipeline.stages.data_quality.QUALITY_COUNTS, however the engine counted them.
        **{key: counts.get(key) for key in QUALITY_COUNTS},
        "output": str(output),
    }


def _counts(result: FeaturesResult) -> dict[str, int | None]:
    calibration_customers, calibration_repeaters = result.calibration_counts() or (None, None)
    return {
        "customers": result.features.num_rows,
        "repeat_customers": int((result.features.column("frequency").to_numpy() > 0).sum()),
        "calibration_customers": calibration_customers,
        "calibration_repeat_customers": calibration_repeaters,
        **result.quality,
    }


def warn_data_quality(summary_of_features: dict[str, Any]) -> None:
    """One ``warning:`` line per data-quality figure above its threshold, as soon as the features
    are counted (the whole report closes the run)."""
    import warnings

    from pipeline.errors import DataQualityWarning
    from pipeline.stages.data_quality import data_quality_report

    for line in data_quality_report(summary_of_features)["warnings"]:
        warnings.warn(f"data quality: {line}", DataQualityWarning, stacklevel=2)


def run_features(config: Config, catalog: RunCatalog, source=None) -> tuple[FeaturesResult, dict[str, Any]]:
    """The features stage on DuckDB on ``config``'s log (or ``source``), its tables handed to ``catalog``."""
    from pipeline.duckdb_engine import features_from_config

    # The calibration features go to their file as they are computed: whole, beside the
    # features at the observation end, they were the run's memory peak (1.7 GB at 18M customers).
    with catalog.calibration_writer() as writer:
        result = features_from_config(config, source, calibration_writer=writer)
    summary = features_summary(result.log, _counts(result), result.observation_end, result.calibration_end, config,
                               catalog.final_path(FEATURES_FILE))
    catalog.write_features(result, summary)
    return result, summary


def run_backtest(calibration, config: Config, progress=None, histories=None) -> Backtest:
    """Fit every candidate on the calibration period and score them (and the naive baseline) on the holdout.

    ``histories``: ``calibration`` grouped (:func:`pipeline.stages.fit.group_customers`), when
    the caller has them; else they are grouped here, once for every fit and prediction.
    """
    if histories is None:
        histories = group_customers(calibration)
    fitted = fit_models(calibration, config.models, progress=lambda m: _progress(progress, m + " (calibration)"),
                        histories=histories)
    RunCatalog.release_memory()  # the fits' work arrays, before the backtest's per-customer ones
    return backtest_candidates(calibration, fitted, config.models, config.seed, histories)


def draw_plots(
    catalog: RunCatalog, config: Config, fit: FitOutputs, value: ValueOutputs, backtest_data: dict[str, Any] | None,
) -> dict[str, str]:
    """The run's PNGs into ``catalog``; the backtest plots only with a holdout (``backtest_data``,
    see :func:`pipeline.stages.report.backtest_plot_data`). Returns name → final path."""
    from pipeline import plots
    from pipeline.stages.fit import model_title

    written: dict[str, Path] = {}
    title = model_title(fit.selected)
    customers = value.customers
    if backtest_data is not None:
        row = fit.backtest.get(fit.selected, {})
        test = None if "holdout_chi_square" not in row else (
            f"χ² {row['holdout_chi_square']:.1f}, {row['holdout_chi_square_dof']:.0f} df, "
            f"p {row['holdout_chi_square_p_value']:.2g} (Poisson approximation: a lower bound on p)")
        written["calibration_vs_holdout"] = plots.plot_calibration_vs_holdout(
            backtest_data["calibration_vs_holdout"], catalog.plot_path("calibration_vs_holdout"),
            backtest_data["title"], test,
        )
        written["cumulative_tracking"] = plots.plot_cumulative_tracking(
            backtest_data["cumulative_tracking"], catalog.plot_path("cumulative_tracking"),
            backtest_data["calibration_end"], backtest_data["title"],
        )
    written |= _diagnostic_plots(catalog, fit)
    matrix = plots.probability_alive_matrix_data(
        fit.purchase_model, int(min(value.max_frequency, 30)), value.max_age, value.max_age
    )
    written["probability_alive_matrix"] = plots.plot_probability_alive_matrix(
        matrix, catalog.plot_path("probability_alive_matrix"), title, time_unit=config.features.period.unit + "s"
    )
    cuts = {name: cut for name, cut in zip(value.scorer.tier_names, value.scorer.tier_cuts) if cut != float("-inf")}
    written["clv_distribution"] = plots.plot_clv_distribution(
        customers["predicted_clv"], cuts, catalog.plot_path("clv_distribution")
    )
    written["clv_by_tier"] = plots.plot_clv_by_tier(value.tier_table, catalog.plot_path("clv_by_tier"))
    written["like_for_like"] = plots.plot_like_for_like(
        value.summary["like_for_like"], catalog.plot_path("like_for_like"),
        f"{value.scorer.horizon_periods} {config.features.period.unit}s",
    )
    return {name: str(catalog.final / path.relative_to(catalog.directory)) for name, path in written.items()}


def _diagnostic_plots(catalog: RunCatalog, fit: FitOutputs) -> dict[str, Path]:
    """The backtest's diagnostic PNGs (none without a holdout): goodness of fit, reliability,
    gains, and value by decile for the selected model beside the baseline."""
    from pipeline import plots
    from pipeline.stages.fit import model_title

    tables = fit.diagnostics
    if not tables:
        return {}
    titles = {name: "naive baseline" if name == "historical_baseline" else model_title(name) for name in tables}

    def each(kind: str) -> dict[str, Any]:
        return {name: model_tables[kind] for name, model_tables in tables.items() if kind in model_tables}

    written = {}
    if each("calibration_histogram"):
        written["purchase_histogram"] = plots.plot_purchase_histogram(
            each("calibration_histogram"), fit.backtest, catalog.plot_path("purchase_histogram"), titles)
    if each("reliability"):
        written["reliability"] = plots.plot_reliability(each("reliability"), fit.backtest,
                                                        catalog.plot_path("reliability"), titles)
    if each("gains"):
        written["gains"] = plots.plot_gains(each("gains"), fit.backtest, catalog.plot_path("gains"), titles)
    deciles = {name: table for name, table in each("revenue_deciles").items()
               if name in (fit.selected, "historical_baseline")}
    if deciles:
        written["revenue_deciles"] = plots.plot_revenue_deciles(deciles, catalog.plot_path("revenue_deciles"), titles)
    return written


def _backtest_plot_data(catalog: RunCatalog, config: Config, model: Any, calibration, first_purchase_date,
                        repeat_purchases, histories=None) -> dict[str, Any]:
    info = catalog.features_summary()
    return backtest_plot_data(
        model, calibration, first_purchase_date, repeat_purchases, config.features.period.days_per_unit,
        dt.date.fromisoformat(info["observation_end"]), dt.date.fromisoformat(info["calibration_end"]), histories,
    )


@dataclasses.dataclass
class PipelineResult:
    """Everything a run produced, for printing and for tracking."""

    run_dir: Path
    summary: dict[str, Any]
    features: Any  # pandas: features at the observation end
    fit: FitOutputs
    value: ValueOutputs
    # Spark: the features as a cluster DataFrame (``features`` is then a few rows, for examples).
    cluster_features: Any = None

    def predicted_clv_total(self, scorer: Any) -> float:
        """Every customer's predicted CLV under another ``scorer``, summed (retrain's champion
        on this run's customers), where the customers are."""
        if self.cluster_features is not None:
            from pipeline.spark.run import predicted_clv_total

            return predicted_clv_total(self.cluster_features, scorer)
        return float(scorer.score(self.features.set_index("customer_id"))["predicted_clv"].sum())

    def refitted_holdout_metric(self, scorer: Any, config: Config) -> float | None:
        """``scorer``'s models refitted on this run's calibration window and scored on its
        holdout (:func:`pipeline.stages.fit.refitted_holdout_metric`), where the customers are;
        None without a holdout."""
        from pipeline.catalog import CALIBRATION_FILE
        from pipeline.stages.fit import refitted_holdout_metric

        metric = config.models.selection_metric
        if self.cluster_features is not None:
            from pipeline.spark.run import refitted_holdout_metric_on_cluster, spark_failures

            path = Path(self.run_dir) / CALIBRATION_FILE
            if not path.exists():
                return None
            with spark_failures(config.spark.master):
                calibration = self.cluster_features.sparkSession.read.parquet(str(path))
                return refitted_holdout_metric_on_cluster(scorer, calibration, metric, config.seed)
        calibration = self.calibration_frame()
        if calibration is None:
            return None
        calibration = CustomerCovariates.read(config, list(getattr(scorer, "covariates", ()))).beside(calibration)
        return refitted_holdout_metric(scorer, calibration, metric, config.seed)

    def calibration_frame(self):
        """The calibration features with the holdout columns (read back: the run does not keep them), or None."""
        catalog = RunCatalog(Path(self.run_dir), Path(self.run_dir))
        return catalog.calibration(columns=None) if catalog.has_calibration() else None


@dataclasses.dataclass
class CustomerCovariates:
    """The configured covariates' raw values, put beside a features table by customer id:
    the attribute file read once (``input.customers``), ``first_channel`` from the features."""

    names: list[str]
    settings: Any = None
    attributes: Any = None
    source: dict[str, str] = dataclasses.field(default_factory=dict)

    @classmethod
    def read(cls, config: Config, names: list[str] | None = None) -> CustomerCovariates:
        """The covariates ``names`` (default: the config's ``models.covariates``; a frozen
        model's own, when it is judged or monitored on new data)."""
        from pipeline.config import FIRST_CHANNEL
        from pipeline.stages.covariates import attribute_columns

        names = list(config.models.covariates if names is None else names)
        settings = config.input.customers
        wanted = attribute_columns(names)
        attributes = None
        if wanted:
            from pipeline.errors import InputDataError
            from pipeline.io import read_customer_attributes

            if settings is None or any(name not in settings.columns for name in wanted):
                raise InputDataError(f"the model uses the customer attributes {wanted}: give the file in "
                                     "input.customers (path, customer_id, columns)")
            attributes = read_customer_attributes(settings)
        source = {name: ("the log's channel column (input.columns.channel)" if name == FIRST_CHANNEL
                         else str(settings.path if settings else "input.customers")) for name in names}
        return cls(names, settings, attributes, source)

    @property
    def log_columns(self) -> list[str]:
        """Feature columns the covariates read (``first_channel``)."""
        from pipeline.config import FIRST_CHANNEL

        return [FIRST_CHANNEL] if FIRST_CHANNEL in self.names else []

    def beside(self, features: Any) -> Any:
        """``features`` with every covariate's raw column, checked (a no-op without covariates)."""
        if not self.names:
            return features
        from pipeline.stages.covariates import attribute_columns, check_covariate_values, join_attributes

        wanted = attribute_columns(self.names)
        if wanted:
            features = join_attributes(features, self.attributes, self.settings, wanted, str(self.settings.path))
        check_covariate_values(features, self.names, self.source)
        return features


def run_pipeline(
    config: Config, catalog: RunCatalog, source=None, progress=None, on_fit=None, on_scorer=None,
) -> PipelineResult:
    """features → fit (backtest, selection, refit) → value → report, all into ``catalog`` (a new run).

    ``on_fit(fit)`` and ``on_scorer(scorer, features)``, when given, are called as soon as the
    fit stage's outputs, then the frozen scorer and the customers' features, exist (the CLI's
    tracking process logs them while the run goes on).
    """
    if config.engine == "spark":
        # Optional extra, imported only when asked for; every per-customer step on the cluster.
        from pipeline.spark.run import run_pipeline_on_spark, spark_failures

        with spark_failures(config.spark.master):
            return run_pipeline_on_spark(config, catalog, source, progress, on_fit, on_scorer)
    # The attribute file first: a bad one fails before any work.
    covariates = CustomerCovariates.read(config)
    _progress(progress, "computing features")
    features_result, summary_of_features = run_features(config, catalog, source)
    warn_data_quality(summary_of_features)
    full = calibration = None
    if not features_result.has_calibration:
        full = features_result.features_frame(indexed=False)
    else:
        first_purchase_date = features_result.features.column("first_purchase_date").to_pandas(date_as_object=False)
        if features_result.calibration is not None:  # Spark: the table came back whole
            calibration = features_result.calibration_frame(indexed=False, columns=BACKTEST_COLUMNS)
    # In memory, as the files may still be being written.
    repeat_purchases = features_result.repeat_purchases.to_pandas()
    # The writer thread holds the Arrow tables until they are on disk; at 18M customers
    # each is a gigabyte or so.
    del features_result
    catalog.release_memory()
    backtest, backtest_data = None, None
    if full is None:
        if calibration is None:
            import pandas as pd

            # Only the backtest's columns, read back now that the sorted log is gone (kept while
            # it was there they made the features stage's peak: 4.4 GB at 50M rows).
            calibration = pd.DataFrame(catalog.calibration_columns(BACKTEST_COLUMNS + covariates.log_columns),
                                       copy=False)
        calibration = covariates.beside(calibration)
        # The features at the observation end are not held meanwhile (read back below):
        # beside the calibration features and the backtest's per-customer figures they
        # made the run's memory peak (4.0 GB at 18M customers). The calibration customers
        # are grouped into histories once, for every fit and prediction on them.
        calibration_histories = group_customers(calibration)
        backtest = run_backtest(calibration, config, progress, calibration_histories)
        # The backtest plots' tables now; then the calibration period is done with, so the
        # refit and the value stage run without it in memory (1.2 GB at 18M customers).
        design = backtest.fitted.design if uses_covariates(backtest.selected) else None
        backtest_data = _backtest_plot_data(
            catalog, config, backtest.fitted.purchase[backtest.selected],
            calibration if design is None else design.features, first_purchase_date,
            repeat_purchases, calibration_histories if design is None else design.histories,
        )
        del calibration, calibration_histories, first_purchase_date, design
        catalog.release_memory()
        catalog.wait_for_writes()  # the features file is complete
        # First purchase dates were for the backtest plots only.
        full = catalog.features(without=("first_purchase_date",))
    full = covariates.beside(full)
    # The customers grouped once for the all-data fit and the value stage, which is handed the
    # only reference (popped) so that it frees them as soon as the customers are scored.
    histories = [group_customers(full)]
    fit = fit_stage(full, config.models, backtest, progress, histories[0])
    catalog.write_fit(fit)
    if on_fit is not None:
        on_fit(fit)
    _progress(progress, "valuing customers")
    catalog.release_memory()  # the refit's work arrays, before the value stage's per-customer ones
    value = value_stage(full, fit, config, histories.pop())
    catalog.release_memory()
    catalog.write_value(value)
    if on_scorer is not None:
        on_scorer(value.scorer, full)
    _progress(progress, "drawing plots")
    plot_paths = draw_plots(catalog, config, fit, value, backtest_data)
    summary = run_summary(config, catalog.features_summary(), fit, value, plot_paths)
    catalog.write_summary(summary)
    return PipelineResult(run_dir=catalog.final, summary=summary, features=full, fit=fit, value=value)


def features_alone(config: Config, output_dir: Path, source=None) -> tuple[Path, dict[str, Any]]:
    """The features stage into a new run under ``output_dir``: (its directory, the summary)."""
    with RunCatalog.create(output_dir) as catalog:
        if config.engine == "spark":
            from pipeline.spark.run import features_on_cluster, spark_failures

            with spark_failures(config.spark.master):
                summary = features_on_cluster(config, catalog, source)[1]
        else:
            summary = run_features(config, catalog, source)[1]
    return catalog.final, summary


def fit_alone(config: Config, run: RunCatalog, progress=None) -> FitOutputs:
    """The fit stage (backtest when the run has a holdout, selection, refit) on a finished run's features."""
    with run.update() as catalog:
        backtest = None
        covariates = CustomerCovariates.read(config)
        if catalog.has_calibration():
            calibration = covariates.beside(catalog.calibration(BACKTEST_COLUMNS + covariates.log_columns))
            backtest = run_backtest(calibration, config, progress)
            del calibration
            catalog.release_memory()
        full = covariates.beside(catalog.features(without=("first_purchase_date",)))
        fit = fit_stage(full, config.models, backtest, progress, group_customers(full))
        catalog.write_fit(fit)
    return fit


def value_alone(config: Config, run: RunCatalog, progress=None) -> ValueOutputs:
    """The value stage on a finished run's features and fitted models."""
    with run.update() as catalog:
        fit = catalog.fit()
        _progress(progress, "valuing customers")
        features = CustomerCovariates.read(config).beside(catalog.features(without=("first_purchase_date",)))
        value = value_stage(features, fit, config)
        catalog.write_value(value)
    return value


def report_alone(config: Config, run: RunCatalog, progress=None) -> dict[str, Any]:
    """Plots and ``summary.json`` of a finished run, from its fit and value outputs (read only)."""
    with run.update() as catalog:
        fit, value = catalog.fit(), catalog.value()
        backtest_data = None
        if fit.calibration_models is not None:
            calibration, histories = catalog.calibration(), None
            design = fit.calibration_models.design
            if uses_covariates(fit.selected) and design is not None:
                covariates = CustomerCovariates.read(config)
                calibration = covariates.beside(catalog.calibration(BACKTEST_COLUMNS + covariates.log_columns))
                encoded = encode_covariates(calibration, covariates.names, design.encoder)
                calibration, histories = encoded.features, encoded.histories
            backtest_data = _backtest_plot_data(
                catalog, config, fit.calibration_models.purchase[fit.selected], calibration,
                catalog.features_column("first_purchase_date"), catalog.repeat_purchases(), histories,
            )
        _progress(progress, "drawing plots")
        plot_paths = draw_plots(catalog, config, fit, value, backtest_data)
        summary = run_summary(config, catalog.features_summary(), fit, value, plot_paths)
        catalog.write_summary(summary)
    return summary


# ---------------------------------------------------------------------------------------------
# clv backtest: the backtest at several origins


@dataclasses.dataclass
class OriginBacktest:
    """One origin's backtest: every candidate's (and the naive baseline's) holdout metrics,
    the candidate selected and why, the candidates left out and why."""

    origin: Origin
    metrics: dict[str, dict[str, float]]
    selected: str
    reason: str
    failed: dict[str, str]
    calibration_customers: int


@dataclasses.dataclass
class OriginsBacktest:
    """The backtest at every origin (latest first), with what the stability report needs."""

    origins: list[OriginBacktest]
    candidates: list[str]
    selection_metric: str
    data: dict[str, Any]

    def summary(self) -> dict[str, Any]:
        """The JSON of the report (:func:`pipeline.stages.stability.stability_summary`), with the
        data's dates and each origin's selection reason and skipped candidates."""
        from pipeline.stages.stability import shortened_holdout_note, stability_summary

        summary = stability_summary(
            [result.origin for result in self.origins], [result.metrics for result in self.origins],
            [result.selected for result in self.origins], self.candidates, self.selection_metric,
        )
        for entry, result in zip(summary["origins"], self.origins):
            entry |= {"calibration_customers": result.calibration_customers, "selection_reason": result.reason,
                      "failed_candidates": dict(result.failed)}
        note = shortened_holdout_note([result.origin for result in self.origins])
        return {"data": self.data, **({"note": note} if note else {}), **summary}

    def long_table(self):
        """A row per origin, model and metric (:func:`pipeline.stages.stability.long_table`)."""
        from pipeline.stages.stability import long_table

        return long_table([result.origin for result in self.origins], [result.metrics for result in self.origins])


def _origin_progress(progress, origin: Origin, count: int):
    if progress is None:
        return None
    return lambda message: progress(f"origin {origin.number}/{count}: {message}")


def backtest_origins(config: Config, source=None, progress=None) -> OriginsBacktest:
    """The backtest (:func:`run_backtest`) at each of ``features.origins`` calibration ends,
    one holdout length apart (:func:`pipeline.stages.stability.origin_windows`); origin 1 is
    ``clv run``'s split, and gives its figures.

    DuckDB reads, validates and sorts the log once; each origin's calibration features come
    from the rows up to its observation end. Impossible origins fail before the sort.
    """
    from pipeline.stages.stability import origin_windows

    if config.engine == "spark":
        from pipeline.spark.run import backtest_origins_on_spark, spark_failures

        with spark_failures(config.spark.master):
            return backtest_origins_on_spark(config, source, progress)
    from pipeline.duckdb_engine import sorted_log_from_config
    from pipeline.stages.features import log_up_to, pipeline_frame
    from pipeline.stages.fit import candidate_names
    from pipeline.stages.sorted_log import summarize_sorted_log

    covariates = CustomerCovariates.read(config)  # a bad attribute file fails before any work
    windows: list[Origin] = []

    def place_origins(log: Any) -> None:
        windows.extend(origin_windows(config.features, log.first_date, log.observation_end,
                                      max_holdout_share=config.validation.max_holdout_share))

    _progress(progress, "reading the log")
    sorted_log, log = sorted_log_from_config(config, source, before_sort=place_origins)
    results = []
    for origin in windows:
        _progress(progress, f"origin {origin.number}/{len(windows)}: calibration ends {origin.calibration_end}, "
                            f"holdout to {origin.observation_end}")
        _, table, _ = summarize_sorted_log(
            log_up_to(sorted_log, origin.observation_end), config.features.period, origin.observation_end,
            origin.calibration_end,
        )
        assert table is not None  # every origin has a calibration end
        calibration = covariates.beside(
            pipeline_frame(table.select(BACKTEST_COLUMNS + covariates.log_columns), indexed=False))
        del table
        backtest = run_backtest(calibration, config, _origin_progress(progress, origin, len(windows)))
        results.append(OriginBacktest(origin, backtest.metrics, backtest.selected, backtest.reason,
                                      dict(backtest.fitted.failed), len(calibration)))
        del calibration, backtest
        RunCatalog.release_memory()
    data = {"source": log.source, "first_date": log.first_date.isoformat(), "last_date": log.last_date.isoformat(),
            "observation_end": log.observation_end.isoformat(), "rows_used": log.rows_used}
    return OriginsBacktest(results, candidate_names(config.models), config.models.selection_metric, data)


def write_backtest_origins(catalog: RunCatalog, result: OriginsBacktest) -> dict[str, Any]:
    """The report of :func:`backtest_origins` into ``catalog``: its JSON, its long table as CSV
    and the plot of the selection metric across the origins. Returns the summary."""
    from pipeline import plots
    from pipeline.stages.backtest import SELECTION_KEYS

    summary = result.summary()
    table = result.long_table()
    catalog.write_backtest_origins(summary, table)
    data = plots.selection_metric_by_origin_data(table, SELECTION_KEYS[result.selection_metric])
    plots.plot_selection_metric_by_origin(
        data, catalog.plot_path("selection_metric_by_origin"), result.selection_metric,
        {entry.origin.calibration_end: entry.selected for entry in result.origins},
    )
    return summary
