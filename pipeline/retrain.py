"""`clv retrain`: what a scheduler runs. Features at the as-of date → candidates → backtest →
register a challenger → promote it to champion only if it does at least as well as the champion.

The gate is fair: the champion's model (its type and settings) is refitted on the *same*
calibration window and scored on the *same* holdout as the challenger, so neither has seen the
holdout. Ties go to the challenger, because with equal holdout error the model trained on the
newer data should serve. A rerun for an as-of date the champion was already trained on, with
the same data and config, keeps the champion: retries never double-promote. A failure anywhere
leaves the champion alias untouched — promotion is the very last step.

Exit codes: 0 promoted or kept; 2 bad input or config; 3 tracking unreachable; 75 another
retrain holds the lock (try later).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
from pathlib import Path
from typing import Any

from pipeline.config import Config, config_digest
from pipeline.errors import LockHeldError, TrackingError

LOCK_FILE = ".retrain.lock"
_METRIC_KEYS = {
    "purchases_rmse": "purchases_rmse",
    "purchases_mae": "purchases_mae",
    "total_purchases_error": "purchases_total_error_pct",
    "revenue_rmse": "revenue_rmse",
    "revenue_mae": "revenue_mae",
}


@dataclasses.dataclass
class RetrainDecision:
    as_of: str
    promoted: bool
    reason: str
    metric: str
    challenger_metric: float | None
    champion_metric: float | None
    challenger_version: str | None
    champion_version_before: str | None
    run_id: str | None
    run_dir: str | None


def _champion_metric_on_window(champion_scorer: Any, calibration, config: Config) -> float:
    from pipeline.stages.backtest import backtest_model

    purchase = type(champion_scorer.purchase_model)(**champion_scorer.purchase_model.get_params()).fit(calibration)
    spend = type(champion_scorer.spend_model)(**champion_scorer.spend_model.get_params()).fit(calibration)
    return abs(backtest_model(calibration, purchase, spend)[_METRIC_KEYS[config.models.selection_metric]])


def decide(
    config: Config, tracker: Any, result: Any, fingerprint: str, digest: str, as_of: dt.date,
    checks_passed: bool = True,
) -> dict[str, Any]:
    """Compare the new challenger with the champion on the same holdout window."""
    from pipeline import tracking

    name = config.tracking.registered_model
    champion = tracking.champion_version(tracker.client, name)
    metric = config.models.selection_metric
    fit = result.fit
    challenger_metric = None
    if fit.backtest:
        challenger_metric = abs(fit.backtest[fit.selected][_METRIC_KEYS[metric]])
    decision = {"metric": metric, "challenger_metric": challenger_metric, "champion_metric": None,
                "champion_version_before": None if champion is None else str(champion.version)}
    if not checks_passed:
        return decision | {"promoted": False, "reason": "the challenger failed its release checks "
                                                         "(see the version's check.* tags): champion kept"}
    if champion is None:
        return decision | {"promoted": True, "reason": "no champion yet"}
    champion_tags = tracker.client.get_run(champion.run_id).data.tags
    if (champion_tags.get("clv.as_of") == as_of.isoformat()
            and champion_tags.get("data.sha256") == fingerprint
            and champion_tags.get("clv.config_sha256") == digest):
        return decision | {"promoted": False, "reason": (
            f"champion (version {champion.version}) was already trained on as-of {as_of} with the same data "
            "and config: kept (a rerun never double-promotes)")}
    if challenger_metric is None:
        return decision | {"promoted": False, "reason": "no holdout to compare on (set features.calibration_end "
                                                         "or holdout_periods): the champion is kept"}
    champion_scorer, _ = tracking.load_scorer(config, f"models:/{name}@{tracking.CHAMPION}")
    calibration = result.calibration_frame()
    champion_metric = _champion_metric_on_window(champion_scorer, calibration, config)
    decision["champion_metric"] = champion_metric
    described = (f"holdout {metric}: challenger {challenger_metric:.6g} vs champion {champion_metric:.6g} "
                 f"(champion's {champion_scorer.purchase_model_name} refitted on the same calibration window)")
    if challenger_metric <= champion_metric * (1 + 1e-9):
        return decision | {"promoted": True, "reason": described + ": challenger is at least as good"}
    return decision | {"promoted": False, "reason": described + ": champion kept"}


def retrain(
    config: Config, config_path: Path | None = None, as_of: dt.date | None = None, progress=None
) -> RetrainDecision:
    """One scheduled retrain, under a file lock so two runs never overlap."""
    from filelock import FileLock, Timeout

    from pipeline import tracking
    from pipeline.runner import run_pipeline
    from pipeline.runs import staged_run_dir

    if not config.tracking.enabled:
        raise TrackingError("retrain needs tracking (the registry holds the champion): set tracking.enabled: true")
    as_of = as_of or dt.datetime.now(dt.timezone.utc).date()
    config = config.model_copy(update={"features": config.features.model_copy(update={"observation_end": as_of})})
    Path(config.output_dir).mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(Path(config.output_dir) / LOCK_FILE))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise LockHeldError(f"another retrain holds {lock.lock_file}; try again later") from None
    try:
        digest = config_digest(config)
        with tracking.tracked_run(config, "pipeline", run_name=f"retrain {as_of}") as tracker:
            if tracker is None:
                raise TrackingError("retrain needs a reachable tracking store to compare with the champion")
            import mlflow

            mlflow.set_tag("clv.trigger", "retrain")
            with staged_run_dir(config.output_dir) as paths:
                result = run_pipeline(config, paths.staging, final_dir=paths.final, progress=progress)
            result.run_dir = paths.final
            registered = tracking.log_pipeline_run(tracker, config, config_path, result)
            fingerprint = tracker.client.get_run(tracker.run_id).data.tags["data.sha256"]
            decision = decide(config, tracker, result, fingerprint, digest, as_of, registered["checks_passed"])
            mlflow.set_tags({"clv.retrain.promoted": str(decision["promoted"]).lower(),
                             "clv.retrain.reason": decision["reason"][:500]})
            for key in ("challenger_metric", "champion_metric"):
                if decision[key] is not None and math.isfinite(decision[key]):
                    mlflow.log_metric(f"retrain.{key}", decision[key])
            if decision["promoted"]:
                tracker.client.set_registered_model_alias(
                    config.tracking.registered_model, tracking.CHAMPION, registered["version"]
                )
        return RetrainDecision(
            as_of=as_of.isoformat(),
            promoted=decision["promoted"],
            reason=decision["reason"],
            metric=decision["metric"],
            challenger_metric=decision["challenger_metric"],
            champion_metric=decision["champion_metric"],
            challenger_version=registered["version"],
            champion_version_before=decision["champion_version_before"],
            run_id=tracker.run_id,
            run_dir=str(result.run_dir),
        )
    finally:
        lock.release()
