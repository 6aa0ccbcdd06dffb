"""`clv retrain`: what a scheduler runs. Features at the as-of date → candidates → backtest →
register a challenger → promote it to champion only if it passes the release gates and does at
least as well as the champion.

Safe unattended:

* The log is checked first: a log whose last transaction is more than
  ``validation.max_staleness_days`` before the as-of date (an export that stopped) is refused
  (exit 2), as are future-dated rows.
* The holdout rolls with the as-of date (``features.holdout_periods``); a fixed
  ``calibration_end`` would make it grow week by week, so it is refused, as is a holdout longer
  than ``validation.max_holdout_share`` (default here 0.5) of the observed history.
* Absolute release gates (``release:``, :mod:`pipeline.release`): a version that fails one is
  registered with the failed checks as tags, gets no alias, and the command exits 4.
* The comparison with the champion is fair: the champion's model (its type and settings) is
  refitted on the *same* calibration window and scored on the *same* holdout as the challenger,
  so neither has seen the holdout. Ties go to the challenger, because with equal holdout error
  the model trained on the newer data should serve. A rerun for an as-of date the champion was
  already trained on, with the same data and config, keeps the champion: retries never
  double-promote. A failure anywhere leaves the champion alias untouched — promotion is the
  very last step.
* Before deciding, the champion's own forecast (made at its as-of date) is compared with what
  the log shows since (:mod:`pipeline.stages.monitor`): ``monitor.*`` metrics, a plot, and a
  warning line and tag when it missed by more than ``monitor.alert_error_pct``.

Exit codes: 0 promoted or kept; 2 bad input or config (stale log, fixed calibration end…); 3
tracking unreachable; 4 challenger rejected by the release gates; 75 another retrain holds the
lock (try later).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from pathlib import Path
from typing import Any

from pipeline.catalog import RunCatalog
from pipeline.config import Config, FeatureSettings, PeriodSettings, config_digest
from pipeline.errors import ConfigError, EngineError, LockHeldError, ReleaseRejectedError, TrackingError

LOCK_FILE = ".retrain.lock"
MONITOR_PLOT = "champion_forecast"
# A retrain's holdout may take at most this share of the observed history unless the config says otherwise.
DEFAULT_MAX_HOLDOUT_SHARE = 0.5


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
    failed_checks: dict[str, str] = dataclasses.field(default_factory=dict)
    monitor: dict[str, Any] | None = None


def rolling_config(config: Config, as_of: dt.date) -> Config:
    """The config a retrain as of ``as_of`` runs: observation end at the as-of date, and a holdout
    of the last ``features.holdout_periods`` before it (refused: a fixed calibration end, no holdout)."""
    features = config.features
    if features.calibration_end is not None:
        raise ConfigError(
            f"clv retrain needs a rolling holdout, but features.calibration_end is fixed at {features.calibration_end}: "
            "the holdout would grow with every retrain; set features.calibration_end: null and "
            "features.holdout_periods (configs/retrain.yaml does)"
        )
    if features.holdout_periods is None:
        raise ConfigError(
            "clv retrain needs a holdout to judge the challenger on: set features.holdout_periods "
            "(configs/retrain.yaml does)"
        )
    validation = config.validation
    if validation.max_holdout_share is None:
        validation = validation.model_copy(update={"max_holdout_share": DEFAULT_MAX_HOLDOUT_SHARE})
    return config.model_copy(update={
        "features": features.model_copy(update={"observation_end": as_of}), "validation": validation,
    })


def decide(
    config: Config, tracker: Any, result: Any, fingerprint: str, digest: str, as_of: dt.date,
    checks_passed: bool = True, champion_view: ChampionView | None = None,
) -> dict[str, Any]:
    """Compare the new challenger with the champion on the same holdout window."""
    from pipeline.stages.backtest import SELECTION_KEYS

    champion = tracker.champion()
    metric = config.models.selection_metric
    fit = result.fit
    challenger_metric = None
    if fit.backtest:
        challenger_metric = abs(fit.backtest[fit.selected][SELECTION_KEYS[metric]])
    decision = {"metric": metric, "challenger_metric": challenger_metric, "champion_metric": None,
                "champion_version_before": None if champion is None else str(champion.version)}
    if not checks_passed:
        return decision | {"promoted": False, "reason": "the challenger failed the release gates "
                                                         "(see the version's check.* tags): champion kept"}
    if champion is None:
        return decision | {"promoted": True, "reason": "no champion yet"}
    champion_tags = tracker.champion_tags(champion)
    if (champion_tags.get("clv.as_of") == as_of.isoformat()
            and champion_tags.get("data.sha256") == fingerprint
            and champion_tags.get("clv.config_sha256") == digest):
        return decision | {"promoted": False, "reason": (
            f"champion (version {champion.version}) was already trained on as-of {as_of} with the same data "
            "and config: kept (a rerun never double-promotes)")}
    if challenger_metric is None:
        return decision | {"promoted": False, "reason": "no holdout to compare on (set features.calibration_end "
                                                         "or holdout_periods): the champion is kept"}
    champion_scorer = champion_view.scorer if champion_view is not None else None
    if champion_scorer is None:
        return decision | {"promoted": True, "reason": (
            f"the champion (version {champion.version}) could not be loaded "
            f"({champion_view.note if champion_view else 'no detail'}): the challenger, which passed the release gates, "
            "replaces it")}
    try:
        champion_metric = result.refitted_holdout_metric(champion_scorer, config)
    except EngineError:
        raise  # the engine failed, not the champion's model: no verdict either way
    except Exception as exc:  # noqa: BLE001 - the champion's model not fitting this window is a verdict, not a crash
        from pipeline.stages.fit import failure_reason

        return decision | {"promoted": True, "reason": (
            f"the champion's {champion_scorer.purchase_model_name} cannot be refitted on this calibration window "
            f"({failure_reason(exc)}): the challenger, which passed the release gates, replaces it")}
    if champion_metric is None:  # the run wrote no calibration table (cannot happen with a challenger metric)
        return decision | {"promoted": False, "reason": "no holdout to compare on: the champion is kept"}
    decision["champion_metric"] = champion_metric
    described = (f"holdout {metric}: challenger {challenger_metric:.6g} vs champion {champion_metric:.6g} "
                 f"(champion's {champion_scorer.purchase_model_name} refitted on the same calibration window)")
    if challenger_metric <= champion_metric * (1 + 1e-9):
        return decision | {"promoted": True, "reason": described + ": challenger is at least as good"}
    return decision | {"promoted": False, "reason": described + ": champion kept"}


@dataclasses.dataclass
class ChampionView:
    """The champion as a retrain sees it: its scorer (None if it could not be loaded), its
    predicted CLV total on the retrain's customers, and its forecast checked against the log."""

    version: str
    as_of: dt.date | None
    scorer: Any = None
    clv_total: float | None = None
    monitor: dict[str, Any] | None = None
    note: str | None = None  # what could not be done, or the monitor's alert


def _champion_view(config: Config, tracker: Any, as_of: dt.date, result: Any, catalog: RunCatalog,
                   accept_shift: bool, progress=None) -> ChampionView | None:
    """Load the champion and judge it: each part that fails is a stated note, never the end of the run."""
    from pipeline import tracking
    from pipeline.stages.fit import failure_reason

    name = config.tracking.registered_model
    champion = tracker.champion()
    if champion is None:
        return None
    champion_as_of = tracker.champion_tags(champion).get("clv.as_of")
    view = ChampionView(version=str(champion.version),
                        as_of=dt.date.fromisoformat(champion_as_of) if champion_as_of else None)
    try:
        view.scorer, _ = tracking.load_scorer(config, f"models:/{name}@{tracking.CHAMPION}")
    except Exception as exc:  # noqa: BLE001 - a champion that does not load is reported, not a crash
        view.note = failure_reason(exc)
        return view
    notes = []
    if not accept_shift and config.release.clv_ratio_to_champion is not None:
        try:
            view.clv_total = result.predicted_clv_total(view.scorer)
        except Exception as exc:  # noqa: BLE001
            notes.append(f"the champion could not score this run's customers ({failure_reason(exc)}): no CLV ratio gate")
    if progress:
        progress("checking the champion's forecast against the log since its as-of date")
    try:
        view.monitor, note = _monitor(config, view, as_of, catalog)
        if note:
            notes.append(note)
    except Exception as exc:  # noqa: BLE001
        notes.append(f"the champion's forecast could not be checked: {failure_reason(exc)}")
    view.note = "; ".join(notes) or None
    return view


def _monitor(config: Config, view: ChampionView, as_of: dt.date, catalog: RunCatalog) -> tuple[dict | None, str | None]:
    """The champion's forecast vs the log since its as-of date: written to ``catalog``; (report, note)."""
    from pipeline import plots
    from pipeline.catalog import MONITOR_FILE
    from pipeline.duckdb_engine import compute_features
    from pipeline.stages import monitor

    if view.as_of is None:
        return None, "the champion has no as-of date (clv.as_of tag): its forecast cannot be checked"
    days = (as_of - view.as_of).days
    if days < config.monitor.min_days:
        return None, (f"only {days} days since the champion's as-of date {view.as_of} "
                      f"(monitor.min_days: {config.monitor.min_days}): its forecast is not checked yet")
    scorer = view.scorer
    period = PeriodSettings(unit=scorer.period_unit, resolution=scorer.period_resolution)
    # The champion's customers at its own as-of date, with what they did since as the holdout.
    computed = compute_features(
        config.input.path, config.input,
        FeatureSettings(period=period, observation_end=as_of, calibration_end=view.as_of),
        config.validation.model_copy(update={"max_holdout_share": None}),
        holdout_purchases=True,
    )
    from pipeline.runner import CustomerCovariates

    # A covariate champion reads each customer's raw covariates (its own, from this config's sources).
    calibration = scorer.with_design(
        CustomerCovariates.read(config, list(scorer.covariates)).beside(computed.calibration_frame())
    )
    report = monitor.forecast_vs_actual(calibration, scorer)
    curve = monitor.cumulative_forecast_data(
        calibration, scorer.purchase_model, computed.repeat_purchases.to_pandas(), view.as_of, as_of,
        scorer.days_per_unit,
    )
    report |= {"champion_version": view.version, "champion_as_of": view.as_of.isoformat(), "as_of": as_of.isoformat()}
    alert = monitor.alert(report, config.monitor.alert_error_pct)
    report["alert"] = alert
    catalog.write_json(MONITOR_FILE, report)
    plots.plot_champion_forecast(
        curve, catalog.plot_path(MONITOR_PLOT), f"champion v{view.version} ({scorer.purchase_model_name})"
    )
    return report, alert


def retrain(
    config: Config, config_path: Path | None = None, as_of: dt.date | None = None, progress=None,
    accept_shift: bool = False,
) -> RetrainDecision:
    """One scheduled retrain, under a file lock so two runs never overlap.

    Raises :class:`ReleaseRejectedError` (exit 4) after logging and registering when the
    challenger fails a release gate; the champion is then untouched.
    """
    import warnings

    from filelock import FileLock, Timeout

    from pipeline import tracking
    from pipeline.errors import DataQualityWarning
    from pipeline.release import release_checks
    from pipeline.runner import run_pipeline
    from pipeline.stages import monitor
    from pipeline.transactions import today_utc

    if not config.tracking.enabled:
        raise TrackingError("retrain needs tracking (the registry holds the champion): set tracking.enabled: true")
    as_of = as_of or today_utc()
    config = rolling_config(config, as_of)
    Path(config.output_dir).mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(Path(config.output_dir) / LOCK_FILE))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise LockHeldError(f"another retrain holds {lock.lock_file}; try again later") from None
    try:
        digest = config_digest(config)
        with tracking.tracked_run(config, "pipeline", run_name=f"retrain {as_of}", config_path=config_path) as tracker:
            if tracker is None:
                raise TrackingError("retrain needs a reachable tracking store to compare with the champion")
            tracker.set_tags({"clv.trigger": "retrain", "clv.retrain.accept_shift": str(accept_shift).lower()})
            tracker.log_config()
            with RunCatalog.create(config.output_dir) as catalog:
                result = run_pipeline(config, catalog, progress=progress,
                                      on_fit=tracker.log_fit, on_scorer=tracker.log_model)
                champion_view = _champion_view(config, tracker, as_of, result, catalog, accept_shift, progress)
            value = result.summary["value"]
            checks = release_checks(
                result.fit, value, config.release, config.models.selection_metric,
                clv_total=value["predicted_clv_total"],
                champion_clv_total=None if champion_view is None else champion_view.clv_total,
            )
            registered = tracker.finish(catalog.final, result.summary, checks)
            if champion_view is not None and champion_view.monitor is not None:
                tracker.log_monitor(monitor.monitor_metrics(champion_view.monitor), champion_view.monitor["alert"])
            if champion_view is not None and champion_view.note:
                tracker.set_tags({"clv.retrain.champion_note": champion_view.note[:500]})
                warnings.warn(champion_view.note, DataQualityWarning, stacklevel=2)
            decision = decide(config, tracker, result, tracker.tag("data.sha256"), digest, as_of,
                              registered["checks_passed"], champion_view)
            tracker.set_tags({"clv.retrain.promoted": str(decision["promoted"]).lower(),
                              "clv.retrain.reason": decision["reason"][:500]})
            tracker.log_metrics({f"retrain.{key}": decision[key] for key in ("challenger_metric", "champion_metric")
                                 if decision[key] is not None})
            if decision["promoted"]:
                tracker.set_champion(registered["version"])
        outcome = RetrainDecision(
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
            failed_checks=registered["failed_checks"],
            monitor=None if champion_view is None else champion_view.monitor,
        )
    finally:
        lock.release()
    if outcome.failed_checks:
        kept = (f"champion version {outcome.champion_version_before} kept" if outcome.champion_version_before
                else "no champion set")
        rejected = ReleaseRejectedError(
            f"challenger rejected by the release gates: version {outcome.challenger_version} registered without an "
            f"alias ({'; '.join(outcome.failed_checks.values())}); {kept} (run {outcome.run_id})"
        )
        rejected.decision = outcome
        raise rejected
    return outcome
