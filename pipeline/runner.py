"""Stages with their IO: each reads its inputs from the run directory and writes its outputs there.

The pure logic lives in ``pipeline/stages``; this module is the edge that touches files, so
the same stage runs alone (``clv features``) and inside the whole pipeline (``clv run``).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.config import Config
from pipeline.errors import InputDataError
from pipeline.io import (
    BackgroundWrites,
    atomic_path,
    read_features,
    release_freed_memory,
    write_json,
    write_parquet,
)
from pipeline.stages.features import FeaturesResult, features_from_config, read_features_frame

FEATURES_FILE = "features.parquet"
CALIBRATION_FILE = "calibration.parquet"
REPEAT_PURCHASES_FILE = "repeat_purchases.parquet"
FEATURES_SUMMARY_FILE = "features_summary.json"
# The calibration features the backtest and its plots read (not first purchase dates, counts
# of transactions or the holdout's mean transaction value): at 18M customers each column is 144 MB.
BACKTEST_COLUMNS = [
    "frequency", "recency", "T", "monetary_value", "total_amount",
    "frequency_holdout", "revenue_holdout", "duration_holdout",
]


def features_summary(result: FeaturesResult, config: Config, output: Path) -> dict[str, Any]:
    """What a person wants to see about a features run (also logged as run metadata)."""
    table = result.features
    frequency = table.column("frequency").to_numpy()
    calibration_customers, calibration_repeaters = result.calibration_counts() or (None, None)
    return {
        "source": result.log.source,
        "rows_read": result.log.rows_read,
        "rows_used": result.log.rows_used,
        "rows_after_observation_end": result.log.rows_after_observation_end,
        "negative_amount_rows_dropped": result.log.negative_amount_rows_dropped,
        "future_rows_dropped": result.log.future_rows_dropped,
        "margin_above_amount_rows": result.log.margin_above_amount_rows,
        "first_date": result.log.first_date.isoformat(),
        "last_date": result.log.last_date.isoformat(),
        "customers": table.num_rows,
        "repeat_customers": int((frequency > 0).sum()),
        "period_unit": config.features.period.unit,
        "period_resolution": config.features.period.resolution,
        "observation_end": result.observation_end.isoformat(),
        "calibration_end": result.calibration_end.isoformat() if result.calibration_end else None,
        "calibration_customers": calibration_customers,
        "calibration_repeat_customers": calibration_repeaters,
        "output": str(output),
    }


def run_features(
    config: Config, run_dir: Path, source=None, final_dir: Path | None = None, writes: BackgroundWrites | None = None,
    keep_calibration_columns: list[str] = (),
) -> tuple[FeaturesResult, dict[str, Any]]:
    """Compute features for ``config`` and write them (atomically) into ``run_dir``.

    ``final_dir`` is where ``run_dir`` will be moved once the whole run succeeds; the summary
    names the file there. With ``writes`` the tables are written in the background (the caller
    waits for them before committing the run). ``keep_calibration_columns`` are held in memory
    besides the calibration file (what a whole run's backtest reads); the stage alone keeps none.
    """
    if config.engine == "spark":
        # Optional extra: imported only when asked for. The features come back to the driver
        # (a few hundred bytes a customer); the fit runs here on them as with DuckDB.
        from pipeline import spark as spark_engine

        session = spark_engine.spark_session(config.spark)
        result = spark_engine.features_from_config(session, config, source).collect()
    else:
        # The calibration features go to their file as they are computed: whole, beside the
        # features at the observation end, they were the run's memory peak (1.7 GB at 18M customers).
        result = features_from_config(
            config, source, calibration_path=Path(run_dir) / CALIBRATION_FILE,
            keep_calibration_columns=keep_calibration_columns,
        )
    tables = [(result.features, FEATURES_FILE), (result.repeat_purchases, REPEAT_PURCHASES_FILE)]
    if result.calibration is not None:
        tables.append((result.calibration, CALIBRATION_FILE))
    for table, name in tables:
        if writes is None:
            write_parquet(table, Path(run_dir) / name)
        else:
            writes.submit(write_parquet, table, Path(run_dir) / name)
    summary = features_summary(result, config, Path(final_dir or run_dir) / FEATURES_FILE)
    write_json(summary, Path(run_dir) / FEATURES_SUMMARY_FILE)
    return result, summary


CUSTOMERS_FILE = "customers.parquet"
SUMMARY_FILE = "summary.json"
BACKTEST_FILE = "backtest.json"
VALUE_FILE = "value.json"
MODEL_DIR = "model"
SCORER_FILE = "model/scorer.joblib"
FITTED_FILE = "model/fitted.joblib"
MODELS_FILE = "model/models.json"
PLOTS_DIR = "plots"


def _progress(callback, message: str) -> None:
    if callback is not None:
        callback(message)


def _dump(obj: Any, target: Path) -> Path:
    import joblib

    with atomic_path(target) as tmp:
        joblib.dump(obj, tmp)
    return target


def _load(target: Path, stage: str) -> Any:
    import joblib

    if not target.is_file():
        raise InputDataError(f"{target}: not found; run `clv {stage}` for this run directory first")
    return joblib.load(target)


@dataclasses.dataclass
class FitOutputs:
    """The fit stage's result: calibration fits with their backtest, and the production models.

    ``failed_candidates``: purchase models left out, name → one line saying where (calibration
    or all data) and why.
    """

    selected: str
    selection_reason: str
    calibration_models: Any  # FittedModels on the calibration period, or None without a holdout
    backtest: dict[str, dict[str, float]]
    purchase_model: Any
    spend_model: Any
    failed_candidates: dict[str, str] = dataclasses.field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        return {
            "selected_purchase_model": self.selected,
            "selection_reason": self.selection_reason,
            "failed_candidates": dict(self.failed_candidates),
            "final": {"purchase": self.purchase_model.summary(), "spend": self.spend_model.summary()},
            "calibration": None if self.calibration_models is None else self.calibration_models.summary(),
        }


def run_backtest(calibration, config: Config, progress=None, histories=None):
    """Fit every candidate on the calibration period and score them (and the naive baseline) on the holdout.

    ``histories``: ``calibration`` grouped (``pipeline.stages.fit.group_customers``), when the
    caller has them; else they are grouped here, once for every fit and prediction.
    """
    from models.historical import naive_holdout_forecast
    from pipeline.stages.backtest import backtest_model, holdout_metrics, select_model
    from pipeline.stages.fit import all_candidates_failed, failure_reason, fit_models, group_customers

    if histories is None:
        histories = group_customers(calibration)
    fitted = fit_models(
        calibration, config.models, progress=lambda m: _progress(progress, m + " (calibration)"), histories=histories
    )
    release_freed_memory()  # the fits' work arrays, before the backtest's per-customer ones
    metrics = {}
    for name, model in list(fitted.purchase.items()):
        try:
            with np.errstate(all="ignore"):
                metrics[name] = backtest_model(calibration, model, fitted.spend, histories)
        except Exception as exc:  # noqa: BLE001 - a candidate that cannot predict is left out, as one that cannot fit
            fitted.failed[name] = f"cannot predict the holdout: {failure_reason(exc)}"
            del fitted.purchase[name]
    if not metrics:
        raise all_candidates_failed(fitted.failed)
    selected, reason = select_model(metrics, config.models.selection_metric)
    fitted.selected = selected
    naive = naive_holdout_forecast(calibration, float(calibration["duration_holdout"].iloc[0]))
    metrics["historical_baseline"] = holdout_metrics(
        calibration, naive["predicted_purchases"], naive["predicted_revenue"]
    )
    return fitted, metrics, selected, reason


def stage_fit(
    config: Config, run_dir: Path, full=None, calibration=None, progress=None, backtest_result: tuple | None = None,
    histories=None,
) -> FitOutputs:
    """Backtest the candidates (with a holdout), pick one, refit it and Gamma-Gamma on all data.

    ``backtest_result``: what :func:`run_backtest` returned, when the caller ran it already.
    ``histories``: ``full`` grouped (``pipeline.stages.fit.group_customers``), when the caller has them.
    """
    from pipeline.stages.backtest import rank_models
    from pipeline.stages.fit import (
        PURCHASE_MODEL_TITLES,
        CandidateFailedError,
        all_candidates_failed,
        fit_purchase_model,
        fit_spend_model,
        group_customers,
    )

    run_dir = Path(run_dir)
    if full is None:
        full = read_features(run_dir / FEATURES_FILE, indexed=False)
        if (run_dir / CALIBRATION_FILE).is_file():
            calibration = read_features(run_dir / CALIBRATION_FILE, indexed=False, columns=BACKTEST_COLUMNS)
    calibration_models, backtest = None, {}
    selected = config.models.purchase.candidates[0]
    reason = "no holdout (no calibration_end): the first candidate is used"
    if backtest_result is not None:
        calibration_models, backtest, selected, reason = backtest_result
    elif calibration is not None:
        calibration_models, backtest, selected, reason = run_backtest(calibration, config, progress)
    failed = {} if calibration_models is None else {
        name: f"calibration fit: {why}" for name, why in calibration_models.failed.items()
    }
    # The production models are refitted on everything up to the observation end: the selected
    # one, else the next best that fits (a model can fail on all data and not on calibration).
    if calibration_models is None:
        order = list(config.models.purchase.candidates)
    else:
        ranked = rank_models({name: backtest[name] for name in calibration_models.purchase},
                             config.models.selection_metric)
        order = [selected] + [name for name in ranked if name != selected]
    if histories is None:
        histories = group_customers(full)
    purchase_model = None
    for name in order:
        _progress(progress, f"fitting {PURCHASE_MODEL_TITLES[name]} on all data")
        try:
            # Started from the calibration fit's maximum, which lies close to the all-data one:
            # fewer optimiser steps (the refit took twice as long as the calibration fit).
            purchase_model = fit_purchase_model(
                name, histories, config.models,
                initial_params=None if calibration_models is None else dict(calibration_models.purchase[name].params_),
            )
        except CandidateFailedError as exc:
            failed[name] = f"all-data fit: {exc}"
            _progress(progress, f"skipped {PURCHASE_MODEL_TITLES[name]}: {exc}")
            continue
        if name != selected:
            next_one = "the next best" if calibration_models is not None else "the next candidate"
            reason += f"; {selected} failed ({failed[selected]}), so {name}, {next_one}, is used"
            selected = name
        break
    if purchase_model is None:
        raise all_candidates_failed(failed)
    _progress(progress, "fitting Gamma-Gamma on all data")
    outputs = FitOutputs(
        selected=selected,
        selection_reason=reason,
        calibration_models=calibration_models,
        backtest=backtest,
        purchase_model=purchase_model,
        spend_model=fit_spend_model(full, config.models),
        failed_candidates=failed,
    )
    _dump(outputs, run_dir / FITTED_FILE)
    write_json(outputs.summary(), run_dir / MODELS_FILE)
    write_json(backtest, run_dir / BACKTEST_FILE)
    return outputs


@dataclasses.dataclass
class ValueOutputs:
    scorer: Any
    historical: Any
    customers: Any
    tier_table: Any
    summary: dict[str, Any]


def stage_value(
    config: Config, run_dir: Path, full=None, fit: FitOutputs | None = None, progress=None,
    writes: BackgroundWrites | None = None, histories=None,
) -> ValueOutputs:
    """Value every customer with the fitted models; freeze the scorer used for later scoring.

    With ``writes`` the customers table is written in the background. ``histories``: ``full``
    grouped (``pipeline.stages.fit.group_customers``), when the caller has them; dropped here
    once the customers are scored, so a caller that keeps no reference has it freed then.
    """
    import pandas as pd

    from pipeline.stages.value import build_scorer, tier_table, value_summary

    run_dir = Path(run_dir)
    if full is None:
        full = read_features(run_dir / FEATURES_FILE, indexed=False)
    if fit is None:
        fit = _load(run_dir / FITTED_FILE, "fit")
    _progress(progress, "valuing customers")
    release_freed_memory()  # the refit's work arrays, before the value stage's per-customer ones
    scorer, historical, scores = build_scorer(
        full, fit.purchase_model, fit.selected, fit.spend_model, config.value, config.segments, config.features.period,
        histories,
    )
    # Every per-customer model figure is computed: the grouping of these customers (144 MB at
    # 18M) would otherwise sit under the summaries, the export and the plots.
    del histories
    release_freed_memory()
    # Rows of ``scores`` are those of ``full`` in order (positional frames, customer_id a column).
    customers = pd.concat([full[["customer_id", "frequency", "recency", "T", "monetary_value"]], scores], axis=1)
    tiers = tier_table(customers, scorer)
    summary = value_summary(customers, historical, tiers)
    if writes is None:
        _write_customers(customers, run_dir / CUSTOMERS_FILE)
    else:
        writes.submit(_write_customers, customers, run_dir / CUSTOMERS_FILE)
    _dump(scorer, run_dir / SCORER_FILE)
    write_json({"settings": scorer.settings_summary(), **summary}, run_dir / VALUE_FILE)
    return ValueOutputs(scorer=scorer, historical=historical, customers=customers, tier_table=tiers, summary=summary)


CUSTOMER_ROWS_PER_WRITE = 1 << 20


def _write_customers(customers, target: Path) -> Path:
    import pyarrow as pa

    from pipeline.io import ParquetChunks

    # Converted to Arrow and tier and action decoded to text (as every export has them) a
    # slice at a time, on the writer thread when there is one: the whole table's text was
    # 1.7 GB at 18M customers, and constant columns (one margin rate, one CAC) are views of
    # one number that Arrow would copy whole.
    with ParquetChunks(target) as file:
        for start in range(0, max(len(customers), 1), CUSTOMER_ROWS_PER_WRITE):
            part = pa.Table.from_pandas(customers.iloc[start:start + CUSTOMER_ROWS_PER_WRITE], preserve_index=False)
            for name in ("tier", "action"):
                part = part.set_column(part.schema.get_field_index(name), name, part[name].cast(pa.string()))
            file.write(part)
    return Path(target)


def backtest_plot_data(
    run_dir: Path, config: Config, model: Any, calibration=None, first_purchase_date=None, repeat_purchases=None,
    histories=None,
) -> dict[str, Any]:
    """The small tables the two backtest plots draw for the purchase ``model`` fitted on the calibration period.

    The pipeline computes them right after the backtest so that the calibration features
    can go; run alone they are read back from ``run_dir``. ``histories``: ``calibration``
    grouped, when the caller has them.
    """
    import pandas as pd

    from pipeline import plots

    run_dir = Path(run_dir)
    if calibration is None:
        calibration = read_features(run_dir / CALIBRATION_FILE, indexed=False, columns=BACKTEST_COLUMNS)
    if first_purchase_date is None:
        first_purchase_date = read_features(
            run_dir / FEATURES_FILE, indexed=False, columns=["first_purchase_date"]
        )["first_purchase_date"]
    if repeat_purchases is None:
        repeat_purchases = pd.read_parquet(run_dir / REPEAT_PURCHASES_FILE)
    horizon = float(calibration["duration_holdout"].iloc[0])
    info = json.loads((run_dir / FEATURES_SUMMARY_FILE).read_text())
    return {
        "calibration_vs_holdout": plots.calibration_vs_holdout_data(
            calibration, model.expected_purchases(calibration if histories is None else histories, horizon)
        ),
        "cumulative_tracking": plots.cumulative_tracking_data(
            repeat_purchases, first_purchase_date, model, config.features.period.days_per_unit,
            dt.date.fromisoformat(info["observation_end"]),
        ),
        "calibration_end": dt.date.fromisoformat(info["calibration_end"]),
    }


def write_plots(
    run_dir: Path, config: Config, fit: FitOutputs, value: ValueOutputs, backtest_data: dict[str, Any] | None = None,
) -> dict[str, Path]:
    """The run's PNGs; the backtest plots only when there is a holdout (``backtest_data``:
    :func:`backtest_plot_data`'s tables when the caller has them)."""
    from pipeline import plots
    from pipeline.stages.fit import PURCHASE_MODEL_TITLES

    run_dir = Path(run_dir)
    out = run_dir / PLOTS_DIR
    written: dict[str, Path] = {}
    period = config.features.period
    title = PURCHASE_MODEL_TITLES[fit.selected]
    full = value.customers
    if backtest_data is None and fit.calibration_models is not None:
        backtest_data = backtest_plot_data(run_dir, config, fit.calibration_models.purchase[fit.selected])
    if backtest_data is not None:
        written["calibration_vs_holdout"] = plots.plot_calibration_vs_holdout(
            backtest_data["calibration_vs_holdout"], out / "calibration_vs_holdout.png", f"{title} (calibration fit)"
        )
        written["cumulative_tracking"] = plots.plot_cumulative_tracking(
            backtest_data["cumulative_tracking"], out / "cumulative_tracking.png", backtest_data["calibration_end"],
            f"{title} (calibration fit)",
        )
    matrix = plots.probability_alive_matrix_data(
        fit.purchase_model, int(min(full["frequency"].max(), 30)), float(full["T"].max()), float(full["T"].max())
    )
    written["probability_alive_matrix"] = plots.plot_probability_alive_matrix(
        matrix, out / "probability_alive_matrix.png", title, time_unit=period.unit + "s"
    )
    cuts = {name: cut for name, cut in zip(value.scorer.tier_names, value.scorer.tier_cuts) if cut != float("-inf")}
    written["clv_distribution"] = plots.plot_clv_distribution(full["predicted_clv"], cuts, out / "clv_distribution.png")
    written["clv_by_tier"] = plots.plot_clv_by_tier(value.tier_table, out / "clv_by_tier.png")
    return written


def stage_report(
    config: Config, run_dir: Path, final_dir: Path | None = None, fit=None, value=None, progress=None,
    backtest_data: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Plots and ``summary.json``: predicted vs historical CLV side by side, tiers, backtest."""
    run_dir = Path(run_dir)
    final_dir = Path(final_dir or run_dir)
    if fit is None:
        fit = _load(run_dir / FITTED_FILE, "fit")
    if value is None:
        value = stage_value(config, run_dir, fit=fit, progress=progress)
    _progress(progress, "drawing plots")
    plots = write_plots(run_dir, config, fit, value, backtest_data)
    summary = {
        "features": json.loads((run_dir / FEATURES_SUMMARY_FILE).read_text()),
        "model": {
            "selected_purchase_model": fit.selected,
            "selection_metric": config.models.selection_metric,
            "selection_reason": fit.selection_reason,
            "failed_candidates": dict(fit.failed_candidates),
            "purchase_params": fit.purchase_model.summary()["params"],
            "purchase_standard_errors": fit.purchase_model.summary()["standard_errors"],
            "purchase_log_likelihood": fit.purchase_model.summary()["log_likelihood"],
            "spend_params": fit.spend_model.summary()["params"],
            "spend_frequency_monetary_correlation": float(fit.spend_model.frequency_monetary_correlation_),
        },
        "value_settings": value.scorer.settings_summary(),
        "value": value.summary,
        "backtest": fit.backtest,
        "plots": {name: str(final_dir / path.relative_to(run_dir)) for name, path in plots.items()},
    }
    write_json(summary, run_dir / SUMMARY_FILE)
    return summary


@dataclasses.dataclass
class PipelineResult:
    """Everything a run produced, for printing and for tracking."""

    run_dir: Path
    summary: dict[str, Any]
    features: Any  # pandas: features at the observation end
    fit: FitOutputs
    value: ValueOutputs

    def calibration_frame(self):
        """The calibration features with the holdout columns (read back: the run does not keep them), or None."""
        path = Path(self.run_dir) / CALIBRATION_FILE
        return read_features(path, indexed=False) if path.is_file() else None


def run_pipeline(
    config: Config, run_dir: Path, final_dir: Path | None = None, source=None, progress=None, on_fit=None,
    on_scorer=None,
) -> PipelineResult:
    """features → fit (backtest, selection, refit) → value → report, all written into ``run_dir``.

    ``on_fit(fit)`` and ``on_scorer(scorer, features)``, when given, are called as soon as the
    fit stage's outputs, then the frozen scorer and the customers' features, exist (the CLI's
    tracking process logs them while the run goes on).
    """
    from pipeline.stages.fit import group_customers

    run_dir = Path(run_dir)
    _progress(progress, "computing features")
    with BackgroundWrites() as writes:
        features_result, _ = run_features(
            config, run_dir, source, final_dir=final_dir, writes=writes, keep_calibration_columns=BACKTEST_COLUMNS
        )
        full = calibration = None
        if features_result.has_calibration:
            calibration = features_result.calibration_frame(indexed=False, columns=BACKTEST_COLUMNS)
            first_purchase_date = features_result.features.column("first_purchase_date").to_pandas(
                date_as_object=False
            )
        else:
            full = features_result.features_frame(indexed=False)
        # In memory, as the files may still be being written.
        repeat_purchases = features_result.repeat_purchases.to_pandas()
        # The writer thread holds the Arrow tables until they are on disk; at 18M customers
        # each is a gigabyte or so.
        del features_result
        release_freed_memory()
        backtest_result, backtest_data = None, None
        if calibration is not None:
            # The features at the observation end are not held meanwhile (read back below):
            # beside the calibration features and the backtest's per-customer figures they
            # made the run's memory peak (4.0 GB at 18M customers).
            # The calibration customers grouped into histories once, for every fit and prediction on them.
            calibration_histories = group_customers(calibration)
            backtest_result = run_backtest(calibration, config, progress, calibration_histories)
            # The backtest plots' tables now, with the calibration customers' grouping; then the
            # calibration period is done with, so the refit and the value stage run without it
            # in memory (1.2 GB at 18M customers).
            fitted, _, selected, _ = backtest_result
            backtest_data = backtest_plot_data(
                run_dir, config, fitted.purchase[selected], calibration, first_purchase_date, repeat_purchases,
                calibration_histories,
            )
            del calibration, calibration_histories, fitted, first_purchase_date
            release_freed_memory()
            writes.wait()  # the features file is complete
            # First purchase dates were for the backtest plots only.
            full = read_features_frame(run_dir / FEATURES_FILE, without=("first_purchase_date",))
        # The customers grouped into histories once, for the all-data fit and the value stage,
        # which is handed the only reference (popped) so that it frees them as soon as the
        # customers are scored (8 bytes a customer: 144 MB at 18M).
        histories = [group_customers(full)]
        fit = stage_fit(
            config, run_dir, full=full, progress=progress, backtest_result=backtest_result, histories=histories[0]
        )
        if on_fit is not None:
            on_fit(fit)
        value = stage_value(
            config, run_dir, full=full, fit=fit, progress=progress, writes=writes, histories=histories.pop()
        )
        if on_scorer is not None:
            on_scorer(value.scorer, full)
        summary = stage_report(
            config, run_dir, final_dir=final_dir, fit=fit, value=value, progress=progress, backtest_data=backtest_data
        )
    return PipelineResult(run_dir=Path(final_dir or run_dir), summary=summary, features=full, fit=fit, value=value)
