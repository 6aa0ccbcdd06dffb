"""Report stage: what the run's plots draw and what ``summary.json`` says, from the other
stages' outputs (drawing and writing them is the runner's, through the run catalog)."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pandas as pd

from pipeline.config import Config
from pipeline.release import release_checks
from pipeline.stages.data_quality import data_quality_report
from pipeline.stages.fit import PURCHASE_MODEL_TITLES, FitOutputs
from pipeline.stages.model_card import spend_independence
from pipeline.stages.value import ValueOutputs


def backtest_plot_data(
    model: Any,
    calibration: pd.DataFrame,
    first_purchase_date: pd.Series,
    repeat_purchases: pd.DataFrame,
    days_per_unit: float,
    observation_end: dt.date,
    calibration_end: dt.date,
    histories: Any = None,
) -> dict[str, Any]:
    """The small tables the two backtest plots draw for the purchase ``model`` fitted on the
    calibration period (a whole run computes them right after the backtest, so the calibration
    features can go). ``histories``: ``calibration`` grouped, when the caller has them."""
    from pipeline import plots

    horizon = float(calibration["duration_holdout"].iloc[0])
    return {
        "calibration_vs_holdout": plots.calibration_vs_holdout_data(
            calibration, model.expected_purchases(calibration if histories is None else histories, horizon)
        ),
        "cumulative_tracking": plots.cumulative_tracking_data(
            repeat_purchases, first_purchase_date, model, days_per_unit, observation_end
        ),
        "calibration_end": calibration_end,
        "title": f"{PURCHASE_MODEL_TITLES[model.model_name]} (calibration fit)",
    }


def covariates_summary(config: Config, fit: FitOutputs) -> dict[str, Any] | None:
    """With ``models.covariates``: the final models' coefficients (with standard errors, z and
    p-values; empty when the holdout preferred the models without them) and, with a holdout,
    each model's likelihood-ratio test of the covariates on the calibration period."""
    if not config.models.covariates:
        return None
    coefficients = [
        {"model": role, **row}
        for role, model in (("purchase", fit.purchase_model), ("spend", fit.spend_model))
        for row in model.summary().get("coefficients", [])
    ]
    calibration = fit.calibration_models
    return {
        "columns": list(config.models.covariates),
        "used_by_selected_model": bool(fit.covariates),
        "coefficients": coefficients,
        "likelihood_ratio_tests": {} if calibration is None else dict(calibration.covariate_tests),
    }


def diagnostics_summary(tables: dict[str, dict[str, pd.DataFrame]]) -> dict[str, dict[str, list[dict]]]:
    """The backtest's diagnostic tables (per model: reliability, revenue deciles, gains, the
    calibration histogram) as rows, for ``summary.json``."""
    def rows(name: str, table: pd.DataFrame) -> list[dict]:
        if name == "calibration_histogram":  # indexed by the bins 0, 1, ..., "7+"
            table = table.rename_axis("repeat_purchases").reset_index().astype({"repeat_purchases": str})
        return [{key: value.item() if hasattr(value, "item") else value for key, value in row.items()}
                for row in table.to_dict(orient="records")]

    return {model: {name: rows(name, table) for name, table in model_tables.items()}
            for model, model_tables in tables.items()}


def run_summary(
    config: Config, features_summary: dict[str, Any], fit: FitOutputs, value: ValueOutputs,
    plot_paths: dict[str, str],
) -> dict[str, Any]:
    """``summary.json``: the features, the model and why it was selected, predicted vs
    historical CLV side by side, tiers, backtest, and where the plots are."""
    purchase = fit.purchase_model.summary()
    return {
        "features": features_summary,
        "data_quality": data_quality_report(features_summary),
        "model": {
            "selected_purchase_model": fit.selected,
            "selection_metric": config.models.selection_metric,
            "selection_reason": fit.selection_reason,
            "failed_candidates": dict(fit.failed_candidates),
            "purchase_params": purchase["params"],
            "purchase_standard_errors": purchase["standard_errors"],
            "purchase_log_likelihood": purchase["log_likelihood"],
            "spend_params": fit.spend_model.summary()["params"],
            "spend_frequency_monetary_correlation": float(fit.spend_model.frequency_monetary_correlation_),
            "spend_independence": spend_independence(float(fit.spend_model.frequency_monetary_correlation_),
                                                     config.models.spend.independence_warning_above),
            "covariates": covariates_summary(config, fit),
        },
        "value_settings": value.scorer.settings_summary(),
        "value": value.summary,
        "backtest": fit.backtest,
        "diagnostics": diagnostics_summary(fit.diagnostics),
        # The run's own release gates (clv retrain adds the comparison with the champion).
        "release": {name: {"passed": check.passed, "detail": check.detail} for name, check in release_checks(
            fit, value.summary, config.release, config.models.selection_metric,
            clv_total=value.summary["predicted_clv_total"]).items()},
        "plots": dict(plot_paths),
    }
