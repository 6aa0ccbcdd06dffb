"""Release gates: what a new model version must pass to become ``challenger`` and, in
``clv retrain``, to be promoted — absolute checks that hold whatever the champion does.

A retrain on a log that stopped weeks ago, or with a candidate whose parameters ran away,
can still beat a naive baseline; these gates catch what a relative comparison cannot. Pure
functions of the fit, the value summary and the settings: tracking only records the result
(``check.*`` tags on the version) and retrain acts on it.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from pipeline.config import ReleaseSettings
from pipeline.stages.backtest import SELECTION_KEYS
from pipeline.stages.fit import convergence_problem


@dataclasses.dataclass(frozen=True)
class Check:
    """One gate's verdict and, whether it passed or not, the figure behind it."""

    passed: bool
    detail: str


# Gamma-Gamma's scale is in the log's currency (a mean spend of 200,000 pesos puts it near
# 1e6): only its shapes are held to the bounds, as every purchase-model parameter is.
_CURRENCY_SCALED = {"gamma"}


def _parameters_inside(model: Any, bounds: tuple[float, float]) -> tuple[bool, str]:
    low, high = bounds
    outside = {
        name: value for name, value in model.params_.items()
        if name not in _CURRENCY_SCALED and not (math.isfinite(value) and low < value < high)
    }
    if outside:
        names = ", ".join(f"{name} {value:.3g}" for name, value in outside.items())
        return False, f"{model.model_name}: {names} outside ({low:g}, {high:g}): the parameter ran away"
    return True, f"{model.model_name}: every bounded parameter inside ({low:g}, {high:g})"


def _converged(role: str, model: Any, bounds: tuple[float, float]) -> Check:
    problem = convergence_problem(model)
    if problem is not None:
        return Check(False, f"{role} model {model.model_name}: {problem}")
    inside, detail = _parameters_inside(model, bounds)
    return Check(inside, detail)


def release_checks(
    fit: Any,
    value_summary: dict[str, Any],
    settings: ReleaseSettings,
    selection_metric: str,
    clv_total: float | None = None,
    champion_clv_total: float | None = None,
) -> dict[str, Check]:
    """Every gate that applies to this run, by name.

    Parameters
    ----------
    fit : FitOutputs
        The run's fit: production models and the backtest (empty without a holdout).
    value_summary : dict
        The value stage's summary (``mean_probability_alive``).
    settings : ReleaseSettings
    selection_metric : str
        The config's selection metric, for the baseline comparison.
    clv_total, champion_clv_total : float, optional
        Predicted CLV total of the challenger and of the champion on the same customers and
        as-of date (retrain only); the ratio gate applies when both are given.
    """
    checks: dict[str, Check] = {}
    if settings.require_converged:
        checks["purchase_model_converged"] = _converged("purchase", fit.purchase_model, settings.parameter_bounds)
        checks["spend_model_converged"] = _converged("spend", fit.spend_model, settings.parameter_bounds)
    backtest = fit.backtest.get(fit.selected) if fit.backtest else None
    if backtest is not None and settings.beat_baseline:
        key = SELECTION_KEYS[selection_metric]
        ours, baseline = abs(backtest[key]), abs(fit.backtest["historical_baseline"][key])
        checks["beats_historical_baseline"] = Check(
            bool(ours < baseline), f"holdout {selection_metric} {ours:.4g} vs historical baseline {baseline:.4g}"
        )
    if backtest is not None and settings.max_total_error_pct is not None:
        error = backtest["purchases_total_error_pct"]
        checks["holdout_total_purchases_error"] = Check(
            bool(math.isfinite(error) and abs(error) <= settings.max_total_error_pct),
            f"holdout total purchases error {error:+.1f}% (gate ±{settings.max_total_error_pct:g}%)",
        )
    if settings.probability_alive_mean is not None:
        low, high = settings.probability_alive_mean
        mean = float(value_summary["mean_probability_alive"])
        checks["mean_probability_alive"] = Check(
            bool(low < mean < high), f"mean P(alive) {mean:.3f} (gate {low:g} < mean < {high:g})"
        )
    if settings.clv_ratio_to_champion is not None and clv_total is not None and champion_clv_total is not None:
        low, high = settings.clv_ratio_to_champion
        if champion_clv_total > 0:
            ratio = clv_total / champion_clv_total
            checks["clv_total_vs_champion"] = Check(
                bool(low <= ratio <= high),
                f"predicted CLV total {clv_total:,.2f} is {ratio:.3g}x the champion's {champion_clv_total:,.2f} on the "
                f"same customers (gate {low:g}-{high:g}x; --accept-shift to accept)",
            )
        else:
            # A non-positive total (CAC above the margin) has no meaningful ratio.
            checks["clv_total_vs_champion"] = Check(
                True, f"champion's CLV total {champion_clv_total:,.2f} is not positive: no ratio to compare"
            )
    return checks


def failed_checks(checks: dict[str, Check]) -> dict[str, str]:
    """The gates that failed, name → what failed."""
    return {name: check.detail for name, check in checks.items() if not check.passed}
