"""A one-page model card per run (``model_card.md``): what the model was fitted on, why it was
chosen, how well it fits and predicts, whether it passed the release gates, and what it cannot
tell. A pure function of ``summary.json`` (:func:`pipeline.stages.report.run_summary`), so the
card says nothing the summary does not hold, and the MLflow run shows it as its description.
"""

from __future__ import annotations

import math
from typing import Any

from pipeline.stages.fit import model_title

BASELINE = "historical_baseline"

# The holdout figures the card shows per candidate: key, column, format.
_HOLDOUT_COLUMNS = [
    ("purchases_rmse", "RMSE purchases", "{:.3f}"),
    ("purchases_total_error_pct", "total purchases error", "{:+.1f} %"),
    ("any_purchase_brier", "Brier", "{:.3f}"),
    ("any_purchase_log_loss", "log loss", "{:.3f}"),
    ("revenue_gini", "Gini (revenue)", "{:.3f}"),
    ("purchases_spearman", "Spearman", "{:.3f}"),
    ("purchases_spearman_repeat_customers", "Spearman, repeat customers", "{:.3f}"),
    ("top_decile_revenue_capture", "top-10 % capture", "{:.1%}"),
]


def _number(value: Any, fmt: str = "{:.4g}") -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        return "—"
    return "∞" if math.isinf(value) else fmt.format(value)


def _title(name: str) -> str:
    return "naive baseline (historical rates carried forward)" if name == BASELINE else model_title(name)


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * len(header)) + "|"]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def spend_independence(correlation: float, threshold: float) -> dict[str, Any]:
    """The Gamma-Gamma independence check: the repeat customers' frequency–mean spend correlation
    against ``threshold`` (|r| above it: a warning line, else None)."""
    warning = None
    if math.isfinite(correlation) and abs(correlation) > threshold:
        warning = (f"frequency and mean spend of repeat customers correlate at {correlation:.2f} (|r| above "
                   f"{threshold:g}): Gamma-Gamma assumes they are independent, so its spend figures lean "
                   f"{'up' if correlation > 0 else 'down'} for frequent buyers; check the spend model before "
                   "trusting CLV by customer")
    return {"correlation": float(correlation), "warning_above": float(threshold), "warning": warning}


def run_paragraph(summary: dict[str, Any]) -> str:
    """The run in one paragraph: data, model and why, the value predicted, how it backtested."""
    features, model, value = summary["features"], summary["model"], summary["value"]
    settings = summary.get("value_settings", {})
    selected = model["selected_purchase_model"]
    text = (f"{_title(selected)} fitted on {features['customers']:,} customers' purchases from "
            f"{features.get('first_date', '?')} to {features['observation_end']}, selected by "
            f"{model['selection_reason']}. It predicts a total CLV of {value['predicted_clv_total']:,.2f}")
    intervals = value.get("intervals") or {}
    interval = intervals.get("predicted_clv_total")
    if interval:
        text += f" ({intervals['level']:.0%} interval {interval['lower']:,.2f} – {interval['upper']:,.2f})"
    if settings:
        text += f" over {settings['horizon_periods']} {settings['period_unit']}s"
    text += (f", {value['predicted_clv_mean']:,.2f} per customer on average against "
             f"{value['historical_clv_company']:,.2f} by the business formula (average purchase value × "
             "purchase frequency × average lifespan, on margin, minus acquisition cost).")
    backtest = summary.get("backtest") or {}
    if selected in backtest and BASELINE in backtest:
        ours, baseline = backtest[selected], backtest[BASELINE]
        text += (f" On the holdout from {features['calibration_end']} its total purchases were off by "
                 f"{ours['purchases_total_error_pct']:+.1f} % (baseline {baseline['purchases_total_error_pct']:+.1f} %)")
        if "any_purchase_brier" in ours:
            text += (f", its churn probability scored a Brier of {ours['any_purchase_brier']:.3f} "
                     f"(baseline {baseline['any_purchase_brier']:.3f})")
        text += "."
    return text


def model_card(summary: dict[str, Any]) -> str:
    """``model_card.md`` of a run, from its ``summary.json``."""
    features, model = summary["features"], summary["model"]
    selected = model["selected_purchase_model"]
    lines = [f"# Model card: {_title(selected)}, as of {features['observation_end']}", "", run_paragraph(summary), ""]

    lines += ["## Data", ""]
    lines += [f"- source: `{features.get('source', '?')}`; {features.get('rows_used', 0):,} rows used of "
              f"{features.get('rows_read', 0):,} read",
              f"- window: {features.get('first_date', '?')} to {features['observation_end']}; time unit "
              f"{features['period_unit']} ({features['period_resolution']} resolution)",
              f"- customers: {features['customers']:,}, of whom {features['repeat_customers']:,} bought again"]
    if features.get("calibration_end"):
        lines.append(f"- calibration to {features['calibration_end']}, holdout to {features['observation_end']} "
                     f"({features.get('calibration_customers', 0):,} customers in the calibration period)")
    quality = summary.get("data_quality")
    if quality:
        lines.append("- data quality: " + ("; ".join(f"**{line}**" for line in quality["warnings"])
                                           if quality["warnings"] else "no figure above its warning threshold"))
    lines.append("")

    lines += ["## Model", "", f"- purchase model: **{_title(selected)}**; why: {model['selection_reason']}"]
    for name, why in (model.get("failed_candidates") or {}).items():
        lines.append(f"- left out: {_title(name)}: {why}")
    errors = model.get("purchase_standard_errors") or {}
    lines += ["", *_table(["parameter", "value", "standard error"],
                          [[name, _number(value), _number(errors.get(name))]
                           for name, value in model["purchase_params"].items()])]
    lines += ["", "- spend model: Gamma-Gamma (" + ", ".join(
        f"{name} {_number(value)}" for name, value in model["spend_params"].items()) + ")", ""]

    backtest = summary.get("backtest") or {}
    if backtest:
        candidates = [name for name in backtest if name != BASELINE]
        lines += ["## Fit on the calibration period", "",
                  "Repeat purchases 0, 1, …, 7+ per customer, actual against expected (Pearson's chi-square; "
                  "a small p says the model misfits the histogram).", ""]
        lines += _table(["model", "χ²", "degrees of freedom", "p"], [
            [_title(name), _number(backtest[name].get("calibration_chi_square"), "{:.1f}"),
             _number(backtest[name].get("calibration_chi_square_dof"), "{:.0f}"),
             _number(backtest[name].get("calibration_chi_square_p_value"), "{:.2g}")] for name in candidates])
        lines += ["", "## Holdout", "",
                  "Brier and log loss score P(at least one purchase in the holdout), the observable side of "
                  "P(alive); Gini ranks equal predictions as a block; Spearman, repeat customers leaves out "
                  "those who never repeated (among whom the naive baseline's tie ranks for free).", ""]
        lines += _table(["model", *[label for _, label, _ in _HOLDOUT_COLUMNS]], [
            [_title(name) + (" ✓" if name == selected else ""),
             *[_number(backtest[name].get(key), fmt) for key, _, fmt in _HOLDOUT_COLUMNS]] for name in backtest])
        lines.append("")

    independence = model.get("spend_independence")
    if independence:
        lines += ["## Gamma-Gamma independence", "",
                  f"- frequency–mean spend correlation of repeat customers: {independence['correlation']:.3f} "
                  f"(warning above {independence['warning_above']:g} in absolute value)",
                  f"- **warning**: {independence['warning']}" if independence["warning"] else "- no warning", ""]

    release = summary.get("release")
    if release is not None:
        lines += ["## Release gates", ""]
        lines += _table(["gate", "passed", "figure"], [
            [name, "yes" if check["passed"] else "**no**", check["detail"]] for name, check in release.items()]
        ) if release else ["- no gate applies"]
        lines.append("")

    lines += ["## Known limits", "",
              "- P(alive) is never observed: a customer who stopped buying and one between purchases look the "
              "same. The churn figures are judged through P(at least one purchase in the holdout) above.",
              "- The models assume each customer's purchase rate and dropout chance stay constant, with no "
              "seasonality or marketing effects; spend per purchase is independent of how often one buys.",
              "- Expected CLV is per customer on average: single customers' futures spread widely "
              "(see `purchases_p10`/`purchases_p90` and the CLV intervals in the customers table).",
              "- The holdout chi-square treats each group's purchases as Poisson counts, so its p-value is a "
              "lower bound."]
    share = backtest.get(selected, {}).get("one_time_customer_share") if backtest else None
    if isinstance(share, float) and share > 0.5:
        lines.append(f"- {share:.0%} of calibration customers never repeated: their order among themselves "
                     "rests on their age alone, so rank figures over everyone understate the models' ranking "
                     "of repeat customers.")
    return "\n".join(lines) + "\n"
