"""Fit stage: the configured purchase-model candidates and the Gamma-Gamma spend model."""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any

import numpy as np
import pandas as pd
from sklearn.exceptions import ConvergenceWarning

from models import RELATIVE_GRADIENT_WARNING, ConvergenceError, CustomerHistories, group_histories
from models.purchase import PURCHASE_MODELS
from models.spend import GammaGammaModel
from pipeline.config import ModelSettings
from pipeline.errors import InputDataError

PURCHASE_MODEL_TITLES = {"bgnbd": "BG/NBD", "mbgnbd": "MBG/NBD", "paretonbd": "Pareto/NBD"}


class CandidateFailedError(InputDataError):
    """A purchase model could not be fitted on these features; the message is one line."""


@dataclasses.dataclass
class FittedModels:
    """Fitted estimators of one run: every purchase candidate that fitted, the spend model, and
    why the others did not (``failed``: name → one-line reason)."""

    purchase: dict[str, Any]
    spend: GammaGammaModel
    selected: str
    failed: dict[str, str] = dataclasses.field(default_factory=dict)

    @property
    def purchase_model(self) -> Any:
        return self.purchase[self.selected]

    def summary(self) -> dict[str, Any]:
        return {
            "selected_purchase_model": self.selected,
            "purchase_models": {name: model.summary() for name, model in self.purchase.items()},
            "failed_candidates": dict(self.failed),
            "spend_model": self.spend.summary(),
        }


def failure_reason(exc: BaseException) -> str:
    """One line for a fit that raised: the estimator's message, or the error's type when it has none."""
    text = str(exc).splitlines()[0].strip() if str(exc).strip() else ""
    if isinstance(exc, (ValueError, ConvergenceError, CandidateFailedError)) and text:
        return text
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def group_customers(features: pd.DataFrame) -> CustomerHistories:
    """The customers of ``features`` grouped into histories (``models.group_histories``), for a
    caller that fits or predicts on them more than once; bad features are one line.

    The grouping costs about 2 s at 18M customers and is 8 bytes a customer: the caller keeps
    it while it fits and predicts on these customers, and drops it as soon as it is done.
    """
    try:
        return group_histories(features)
    except ValueError as exc:
        raise InputDataError(str(exc)) from None


def fit_purchase_model(
    name: str, features: pd.DataFrame | CustomerHistories, settings: ModelSettings,
    initial_params: dict[str, float] | None = None,
) -> Any:
    """Fit purchase model ``name``; ``initial_params`` start the optimiser (default: a start from the data).

    ``features`` may be the customers already grouped (:func:`group_customers`).

    Raises :class:`CandidateFailedError` (one line, no traceback) when the model cannot be fitted:
    bad features, an optimiser that does not converge, a likelihood that is not finite. A fit
    that ends with a non-finite parameter or log-likelihood counts as failed too.
    """
    model = PURCHASE_MODELS[name](
        penalizer=settings.purchase.penalizer, tol=settings.purchase.tol, initial_params=initial_params,
        max_iter=settings.purchase.max_iter_of(name),
    )
    title = PURCHASE_MODEL_TITLES[name]
    try:
        # Numerical trouble inside a fit (overflow, a singular matrix, a NaN objective) is a
        # failed fit of this candidate, not a bug of the run: whatever it raises is one line.
        with np.errstate(all="ignore"), warnings.catch_warnings():
            # Whether a fit converged is recorded (convergence_) and gated on at release; as
            # warnings, one per candidate, they would bury a user error's one line.
            warnings.simplefilter("ignore", ConvergenceWarning)
            model.fit(features)
    except Exception as exc:  # noqa: BLE001 - see above
        # The estimators' messages name the model and their own arguments; here they are settings.
        reason = failure_reason(exc).removeprefix("features: ").removeprefix(f"{name}: ").replace(
            "try other initial_params, a larger max_iter or a small penalizer",
            "try a larger models.purchase.max_iter or a small models.purchase.penalizer",
        )
        raise CandidateFailedError(f"cannot fit {title}: {reason}") from None
    if not all(np.isfinite(value) for value in model.params_.values()) or not np.isfinite(model.log_likelihood_):
        raise CandidateFailedError(f"cannot fit {title}: the fit ended with a non-finite parameter or likelihood")
    problem = convergence_problem(model)
    if problem is not None:
        # A fit that reaches its iteration limit stops there (as scikit-learn's estimators do);
        # the check at the result is what catches a fit that stopped short.
        raise CandidateFailedError(f"cannot fit {title}: {problem}")
    return model


def convergence_problem(model: Any) -> str | None:
    """Why a fitted estimator is not at a proper maximum (from its ``convergence_``), or None."""
    convergence = model.convergence_
    if convergence.get("converged", False):
        return None
    gradient = convergence.get("relative_gradient")
    at = ", ".join(f"{name} {value:.3g}" for name, value in model.params_.items())
    if gradient is not None and not np.isfinite(gradient):
        return f"the likelihood is not finite around where the optimiser stopped ({at}): a parameter ran away"
    if gradient is not None and not gradient <= RELATIVE_GRADIENT_WARNING:
        return (f"the optimiser stopped where the likelihood is not flat (relative gradient {gradient:.2g} per "
                f"customer at {at}): it did not converge")
    if not convergence.get("hessian_negative_definite", True):
        return f"the Hessian is not negative definite at the fit ({at}): a ridge or a boundary, not a maximum"
    return "the fit did not converge"


def fit_spend_model(features: pd.DataFrame, settings: ModelSettings) -> GammaGammaModel:
    model = GammaGammaModel(
        penalizer=settings.spend.penalizer, min_repeat_customers=settings.spend.min_repeat_customers
    )
    try:
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)  # as for the purchase models
            return model.fit(features)
    except Exception as exc:  # noqa: BLE001 - as for the purchase models: one line, never a traceback
        raise InputDataError(
            f"features: cannot fit Gamma-Gamma: {failure_reason(exc).removeprefix('features: ')}"
        ) from None


def fit_models(
    features: pd.DataFrame, settings: ModelSettings, progress: Any = None, histories: CustomerHistories | None = None,
) -> FittedModels:
    """Fit every purchase candidate and the spend model on calibration features.

    ``histories``: ``features`` grouped (:func:`group_customers`), when the caller has them; the
    purchase candidates are fitted on them. ``progress`` is an optional callable
    ``progress(message)`` for long fits. A candidate that
    cannot be fitted is left out with its reason (``FittedModels.failed``); only when every
    candidate fails is that an error, one line listing each reason. The first candidate that
    fitted is the provisional selection; the backtest picks the winner.
    """
    purchase: dict[str, Any] = {}
    failed: dict[str, str] = {}
    for name in settings.purchase.candidates:
        if progress:
            progress(f"fitting {PURCHASE_MODEL_TITLES[name]}")
        try:
            purchase[name] = fit_purchase_model(name, features if histories is None else histories, settings)
        except CandidateFailedError as exc:
            failed[name] = str(exc)
            if progress:
                progress(f"skipped {PURCHASE_MODEL_TITLES[name]}: {exc}")
    if not purchase:
        raise all_candidates_failed(failed)
    if progress:
        progress("fitting Gamma-Gamma")
    spend = fit_spend_model(features, settings)
    return FittedModels(purchase=purchase, spend=spend, selected=next(iter(purchase)), failed=failed)


def all_candidates_failed(failed: dict[str, str]) -> InputDataError:
    """The run-stopping error when no purchase model could be fitted: each one's reason, on one line."""
    def cause(reason: str) -> str:  # the reason without where and which model
        for prefix in ("calibration fit: ", "all-data fit: "):
            reason = reason.removeprefix(prefix)
        return reason.split(": ", 1)[1] if reason.startswith("cannot fit ") else reason

    causes = {cause(reason) for reason in failed.values()}
    if len(causes) == 1:  # a problem of the data, not of one model: said once
        return InputDataError(f"features: no purchase model can be fitted ({', '.join(failed)}): {causes.pop()}")
    reasons = "; ".join(f"{name}: {reason}" for name, reason in failed.items())
    return InputDataError(f"features: every purchase model failed to fit ({reasons})")


@dataclasses.dataclass
class FitOutputs:
    """The fit stage's result: calibration fits with their backtest, and the production models.

    ``failed_candidates``: purchase models left out, name → one line saying where (calibration
    or all data) and why.
    """

    selected: str
    selection_reason: str
    calibration_models: FittedModels | None  # None without a holdout
    backtest: dict[str, dict[str, float]]
    purchase_model: Any
    spend_model: Any
    failed_candidates: dict[str, str] = dataclasses.field(default_factory=dict)
    # Which customers the final Gamma-Gamma fit saw, where that is not simply all of them.
    spend_fitted_on: str = "every repeat customer"

    def summary(self) -> dict[str, Any]:
        return {
            "selected_purchase_model": self.selected,
            "selection_reason": self.selection_reason,
            "failed_candidates": dict(self.failed_candidates),
            "spend_fitted_on": self.spend_fitted_on,
            "final": {"purchase": self.purchase_model.summary(), "spend": self.spend_model.summary()},
            "calibration": None if self.calibration_models is None else self.calibration_models.summary(),
        }


@dataclasses.dataclass
class Backtest:
    """The candidates fitted on the calibration period, scored on the holdout (with the naive
    baseline's ``historical_baseline`` row), and the one selected."""

    fitted: FittedModels
    metrics: dict[str, dict[str, float]]
    selected: str
    reason: str


def backtest_candidates(calibration: pd.DataFrame, fitted: FittedModels, settings: ModelSettings,
                        seed: int = 0, histories: CustomerHistories | None = None) -> Backtest:
    """Score every candidate of ``fitted`` (see :func:`fit_models`) and the naive baseline on the
    holdout and pick the best on ``settings.selection_metric``; a candidate that cannot predict
    is left out as one that cannot fit. ``histories``: ``calibration`` grouped
    (:func:`group_customers`), when the caller has them."""
    from models.historical import naive_holdout_forecast
    from pipeline.stages.backtest import backtest_model, holdout_actuals, holdout_metrics, select_model

    # One spend prediction and one ranking of the actual holdout for every candidate.
    actuals = holdout_actuals(calibration, seed)
    try:
        spend = fitted.spend.expected_spend(calibration)
    except Exception:  # noqa: BLE001 - each candidate then fails on it with its reason, below
        spend = None
    metrics = {}
    for name, model in list(fitted.purchase.items()):
        try:
            with np.errstate(all="ignore"):
                metrics[name] = backtest_model(calibration, model, fitted.spend, histories, seed, spend, actuals)
        except Exception as exc:  # noqa: BLE001 - see above
            fitted.failed[name] = f"cannot predict the holdout: {failure_reason(exc)}"
            del fitted.purchase[name]
    if not metrics:
        raise all_candidates_failed(fitted.failed)
    selected, reason = select_model(metrics, settings.selection_metric)
    fitted.selected = selected
    naive = naive_holdout_forecast(calibration, float(calibration["duration_holdout"].iloc[0]))
    metrics["historical_baseline"] = holdout_metrics(
        calibration, naive["predicted_purchases"], naive["predicted_revenue"], seed=seed, actuals=actuals
    )
    return Backtest(fitted, metrics, selected, reason)


def fit_stage(features: pd.DataFrame, settings: ModelSettings, backtest: Backtest | None = None,
              progress: Any = None, histories: CustomerHistories | None = None) -> FitOutputs:
    """The production models: the backtest's selection (without one, the first candidate)
    refitted on all of ``features`` (``histories``: them grouped, when the caller has them),
    with Gamma-Gamma.

    A model can fail on all data and not on the calibration period: then the next best that
    fits is used, and the selection reason says so.
    """
    from pipeline.stages.backtest import rank_models

    def say(message: str) -> None:
        if progress is not None:
            progress(message)

    calibration_models, metrics = (None, {}) if backtest is None else (backtest.fitted, backtest.metrics)
    selected: str
    order: list[str]
    if backtest is None:
        selected, reason = settings.purchase.candidates[0], "no holdout (no calibration_end): the first candidate is used"
        order = list(settings.purchase.candidates)
        failed: dict[str, str] = {}
    else:
        selected, reason = backtest.selected, backtest.reason
        ranked = rank_models({name: metrics[name] for name in backtest.fitted.purchase}, settings.selection_metric)
        order = [selected] + [name for name in ranked if name != selected]
        failed = {name: f"calibration fit: {why}" for name, why in backtest.fitted.failed.items()}
    purchase_model = None
    for name in order:
        say(f"fitting {PURCHASE_MODEL_TITLES[name]} on all data")
        try:
            # Started from the calibration fit's maximum, which lies close to the all-data one:
            # fewer optimiser steps (the refit took twice as long as the calibration fit).
            purchase_model = fit_purchase_model(
                name, features if histories is None else histories, settings,
                initial_params=None if calibration_models is None else dict(calibration_models.purchase[name].params_),
            )
        except CandidateFailedError as exc:
            failed[name] = f"all-data fit: {exc}"
            say(f"skipped {PURCHASE_MODEL_TITLES[name]}: {exc}")
            continue
        if name != selected:
            next_one = "the next best" if calibration_models is not None else "the next candidate"
            reason += f"; {selected} failed ({failed[selected]}), so {name}, {next_one}, is used"
            selected = name
        break
    if purchase_model is None:
        raise all_candidates_failed(failed)
    say("fitting Gamma-Gamma on all data")
    return FitOutputs(
        selected=selected,
        selection_reason=reason,
        calibration_models=calibration_models,
        backtest=metrics,
        purchase_model=purchase_model,
        spend_model=fit_spend_model(features, settings),
        failed_candidates=failed,
    )


def refitted_models(scorer: Any, histories: Any, spend_input: Any) -> tuple[Any, Any]:
    """The purchase and spend models of a frozen ``scorer`` (their type and settings), fitted
    again on other customers: ``histories`` for the purchase model, ``spend_input`` (a
    customers table or ``models.SpendStatistics``) for Gamma-Gamma."""
    purchase = type(scorer.purchase_model)(**scorer.purchase_model.get_params()).fit(histories)
    spend = type(scorer.spend_model)(**scorer.spend_model.get_params()).fit(spend_input)
    return purchase, spend


def refitted_holdout_metric(scorer: Any, calibration: pd.DataFrame, metric: str, seed: int = 0) -> float:
    """``scorer``'s models refitted on ``calibration`` (a calibration window with its holdout)
    and scored on the holdout: the absolute value of the selection ``metric`` (a retrain's
    champion judged on the challenger's window)."""
    from pipeline.stages.backtest import SELECTION_KEYS, backtest_model

    histories = group_customers(calibration)  # once, for the fit and the holdout prediction
    with np.errstate(all="ignore"):
        purchase, spend = refitted_models(scorer, histories, calibration)
        metrics = backtest_model(calibration, purchase, spend, histories, seed=seed)
    return abs(metrics[SELECTION_KEYS[metric]])
