"""Fit stage: the configured purchase-model candidates and the Gamma-Gamma spend model."""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any

import numpy as np
import pandas as pd
from sklearn.exceptions import ConvergenceWarning

from models import RELATIVE_GRADIENT_WARNING, ConvergenceError, CustomerHistories, group_histories
from models.covariates import CovariateEncoder, likelihood_ratio_test
from models.purchase import PURCHASE_MODELS
from models.spend import GammaGammaModel
from pipeline.config import ModelSettings
from pipeline.errors import InputDataError

PURCHASE_MODEL_TITLES = {"bgnbd": "BG/NBD", "mbgnbd": "MBG/NBD", "paretonbd": "Pareto/NBD"}
# A candidate fitted with the configured covariates is named after its model with this suffix
# (MLflow keys allow letters, digits and _ - . / space only).
COVARIATES_SUFFIX = "_cov"


def base_model(name: str) -> str:
    """The purchase model of candidate ``name`` (``bgnbd_cov`` → ``bgnbd``)."""
    return name.removesuffix(COVARIATES_SUFFIX)


def uses_covariates(name: str) -> bool:
    return name.endswith(COVARIATES_SUFFIX)


def model_title(name: str) -> str:
    """How a candidate is named to people: ``BG/NBD``, ``BG/NBD with covariates``."""
    return PURCHASE_MODEL_TITLES[base_model(name)] + (" with covariates" if uses_covariates(name) else "")


def candidate_names(settings: ModelSettings) -> list[str]:
    """The purchase candidates of a run: each configured model, and with ``models.covariates``
    each one again with them (the holdout decides whether they help)."""
    names: list[str] = list(settings.purchase.candidates)
    return names + [name + COVARIATES_SUFFIX for name in names] if settings.covariates else names


@dataclasses.dataclass
class Design:
    """Customers with their covariates encoded (``models.CovariateEncoder``, fitted on them):
    the features with the design columns added, and those customers grouped with them."""

    encoder: CovariateEncoder
    features: pd.DataFrame
    histories: CustomerHistories

    @property
    def columns(self) -> list[str]:
        return list(self.encoder.design_columns_)

    def __getstate__(self) -> dict[str, Any]:
        # Saved with the fitted models, the encoding alone: the customers are the run's files.
        return {"encoder": self.encoder, "features": None, "histories": None}


def encode_covariates(features: pd.DataFrame, covariates: list[str],
                      encoder: CovariateEncoder | None = None) -> Design:
    """Fit the covariates' encoding on ``features`` (which hold the raw covariate columns), or
    use ``encoder``, and add the design columns; a covariate that cannot be encoded (a single
    level, a constant, missing values, a level ``encoder`` never saw) is one line naming it."""
    try:
        if encoder is None:
            encoder = CovariateEncoder(covariates).fit(features[covariates])
        design = encoder.transform(features[covariates])
    except ValueError as exc:
        raise InputDataError(f"models.covariates: {failure_reason(exc)}") from None
    with_design = features.assign(**{name: design[name].to_numpy() for name in design.columns})
    return Design(encoder, with_design, group_customers(with_design, list(encoder.design_columns_)))


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
    # With models.covariates: the customers encoded, Gamma-Gamma with the covariates, and each
    # model's likelihood-ratio test against itself without them.
    design: Design | None = None
    spend_with_covariates: GammaGammaModel | None = None
    covariate_tests: dict[str, dict[str, float]] = dataclasses.field(default_factory=dict)

    @property
    def purchase_model(self) -> Any:
        return self.purchase[self.selected]

    def spend_for(self, name: str) -> GammaGammaModel:
        """The spend model that goes with purchase candidate ``name``."""
        if uses_covariates(name) and self.spend_with_covariates is not None:
            return self.spend_with_covariates
        return self.spend

    def summary(self) -> dict[str, Any]:
        summary = {
            "selected_purchase_model": self.selected,
            "purchase_models": {name: model.summary() for name, model in self.purchase.items()},
            "failed_candidates": dict(self.failed),
            "spend_model": self.spend.summary(),
        }
        if self.design is not None:
            summary["covariates"] = {
                "encoding": self.design.encoder.to_dict(),
                "spend_model": None if self.spend_with_covariates is None else self.spend_with_covariates.summary(),
                "likelihood_ratio_tests": self.covariate_tests,
            }
        return summary


def covariate_test(plain: Any, full: Any) -> dict[str, float]:
    """The likelihood-ratio test of ``full`` (with covariates) against ``plain``, as numbers."""
    test = likelihood_ratio_test(plain, full)
    return {"statistic": float(test.statistic), "df": float(test.df), "p_value": float(test.p_value)}


def failure_reason(exc: BaseException) -> str:
    """One line for a fit that raised: the estimator's message, or the error's type when it has none."""
    text = str(exc).splitlines()[0].strip() if str(exc).strip() else ""
    if isinstance(exc, (ValueError, ConvergenceError, CandidateFailedError)) and text:
        return text
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def group_customers(features: pd.DataFrame, covariates: list[str] | None = None) -> CustomerHistories:
    """The customers of ``features`` grouped into histories (``models.group_histories``), for a
    caller that fits or predicts on them more than once; bad features are one line.

    The grouping costs about 2 s at 18M customers and is 8 bytes a customer: the caller keeps
    it while it fits and predicts on these customers, and drops it as soon as it is done.
    """
    try:
        return group_histories(features, covariates=covariates)
    except ValueError as exc:
        raise InputDataError(str(exc)) from None


def fit_purchase_model(
    name: str, features: pd.DataFrame | CustomerHistories, settings: ModelSettings,
    initial_params: dict[str, float] | None = None, covariates: list[str] | None = None,
) -> Any:
    """Fit purchase candidate ``name``; ``initial_params`` start the optimiser (default: a
    start from the data's moments).

    ``features`` may be the customers already grouped (:func:`group_customers`);
    ``covariates``: the design columns a ``*_cov`` candidate is fitted with (:class:`Design`).

    Raises :class:`CandidateFailedError` (one line, no traceback) when the model cannot be fitted:
    bad features, an optimiser that does not converge, a likelihood that is not finite. A fit
    that ends with a non-finite parameter or log-likelihood counts as failed too.
    """
    model = PURCHASE_MODELS[base_model(name)](
        penalizer=settings.purchase.penalizer, tol=settings.purchase.tol, initial_params=initial_params,
        max_iter=settings.purchase.max_iter_of(base_model(name)),
        covariates=covariates if uses_covariates(name) else None,
    )
    title = model_title(name)
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
        reason = failure_reason(exc).removeprefix("features: ").removeprefix(f"{base_model(name)}: ").replace(
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


def fit_spend_model(features: pd.DataFrame, settings: ModelSettings,
                    covariates: list[str] | None = None) -> GammaGammaModel:
    """Gamma-Gamma on ``features`` (with ``covariates``, design columns of them, on its spend scale)."""
    model = GammaGammaModel(
        penalizer=settings.spend.penalizer, min_repeat_customers=settings.spend.min_repeat_customers,
        covariates=covariates,
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
    # With covariates, ``features`` hold the raw covariate columns; encoded once for every fit.
    design = encode_covariates(features, settings.covariates) if settings.covariates else None
    for name in candidate_names(settings):
        if progress:
            progress(f"fitting {model_title(name)}")
        try:
            if uses_covariates(name):
                assert design is not None
                purchase[name] = fit_purchase_model(name, design.histories, settings, covariates=design.columns)
            else:
                purchase[name] = fit_purchase_model(name, features if histories is None else histories, settings)
        except CandidateFailedError as exc:
            failed[name] = str(exc)
            if progress:
                progress(f"skipped {model_title(name)}: {exc}")
    if not purchase:
        raise all_candidates_failed(failed)
    if progress:
        progress("fitting Gamma-Gamma")
    spend = fit_spend_model(features, settings)
    fitted = FittedModels(purchase=purchase, spend=spend, selected=next(iter(purchase)), failed=failed)
    if design is not None:
        if progress:
            progress("fitting Gamma-Gamma with covariates")
        fitted.design = design
        fitted.spend_with_covariates = fit_spend_model(design.features, settings, design.columns)
        fitted.covariate_tests = covariate_tests(fitted)
    return fitted


def covariate_tests(fitted: FittedModels) -> dict[str, dict[str, float]]:
    """Each model fitted both ways (and Gamma-Gamma): its likelihood-ratio test for the covariates."""
    tests = {}
    for name in list(fitted.purchase):
        with_them = fitted.purchase.get(name + COVARIATES_SUFFIX)
        if not uses_covariates(name) and with_them is not None:
            tests[name] = covariate_test(fitted.purchase[name], with_them)
    if fitted.spend_with_covariates is not None:
        tests["gammagamma"] = covariate_test(fitted.spend, fitted.spend_with_covariates)
    return tests


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
    # When the selected candidate uses covariates: their raw names and the encoding the final
    # models were fitted with (fitted on all customers), which scoring applies to anyone.
    covariates: list[str] = dataclasses.field(default_factory=list)
    covariate_encoder: CovariateEncoder | None = None
    # The backtest's diagnostic tables per model (Backtest.tables); empty without a holdout.
    diagnostics: dict[str, dict[str, pd.DataFrame]] = dataclasses.field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        return {
            "selected_purchase_model": self.selected,
            "selection_reason": self.selection_reason,
            "failed_candidates": dict(self.failed_candidates),
            "spend_fitted_on": self.spend_fitted_on,
            "covariates": None if self.covariate_encoder is None else {
                "columns": list(self.covariates), "encoding": self.covariate_encoder.to_dict(),
            },
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
    # Per model (and the baseline): the diagnostic tables (pipeline.stages.backtest.holdout_tables
    # and the calibration histogram), for the plots and the model card.
    tables: dict[str, dict[str, pd.DataFrame]] = dataclasses.field(default_factory=dict)


def backtest_candidates(calibration: pd.DataFrame, fitted: FittedModels, settings: ModelSettings,
                        seed: int = 0, histories: CustomerHistories | None = None) -> Backtest:
    """Score every candidate of ``fitted`` (see :func:`fit_models`) and the naive baseline on the
    holdout and pick the best on ``settings.selection_metric``; a candidate that cannot predict
    is left out as one that cannot fit. ``histories``: ``calibration`` grouped
    (:func:`group_customers`), when the caller has them."""
    from pipeline.stages.backtest import (
        calibration_fit,
        holdout_actuals,
        holdout_tables,
        model_holdout_predictions,
        naive_holdout_predictions,
        scored_predictions,
        select_model,
    )

    # One spend prediction and one ranking of the actual holdout for every candidate.
    actuals = holdout_actuals(calibration, seed)
    design = fitted.design

    def spend_prediction(model: GammaGammaModel, customers: pd.DataFrame) -> pd.Series | None:
        try:
            return model.expected_spend(customers)
        except Exception:  # noqa: BLE001 - each candidate then fails on it with its reason, below
            return None

    spend = spend_prediction(fitted.spend, calibration)
    spend_with_covariates = (None if design is None or fitted.spend_with_covariates is None
                             else spend_prediction(fitted.spend_with_covariates, design.features))
    metrics = {}
    tables: dict[str, dict[str, pd.DataFrame]] = {}
    if histories is None:  # once, for every candidate's calibration histogram
        histories = group_customers(calibration)
    for name, model in list(fitted.purchase.items()):
        try:
            with np.errstate(all="ignore"):
                if uses_covariates(name):
                    assert design is not None
                    customers, predictions = design.features, model_holdout_predictions(
                        design.features, model, fitted.spend_for(name), design.histories, spend_with_covariates)
                else:
                    customers, predictions = calibration, model_holdout_predictions(
                        calibration, model, fitted.spend, histories, spend)
                metrics[name] = scored_predictions(customers, predictions, seed, actuals)
            tables[name] = holdout_tables(customers, predictions.revenue, predictions.probability_any_purchase, seed,
                                          actuals=actuals)
            fit_figures, fit_tables = calibration_fit(model, histories)
            metrics[name].update(fit_figures)
            tables[name].update(fit_tables)
        except Exception as exc:  # noqa: BLE001 - see above
            fitted.failed[name] = f"cannot predict the holdout: {failure_reason(exc)}"
            del fitted.purchase[name]
            metrics.pop(name, None)  # scored before the step that failed: not a candidate any more
            tables.pop(name, None)
    if not metrics:
        raise all_candidates_failed(fitted.failed)
    selected, reason = select_model(metrics, settings.selection_metric)
    fitted.selected = selected
    naive = naive_holdout_predictions(calibration)
    metrics["historical_baseline"] = scored_predictions(calibration, naive, seed, actuals)
    tables["historical_baseline"] = holdout_tables(calibration, naive.revenue, naive.probability_any_purchase, seed,
                                                   actuals=actuals)
    return Backtest(fitted, metrics, selected, reason, tables)


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
        # Without a holdout nothing can say whether covariates help; configured, they are used.
        order = sorted(candidate_names(settings), key=lambda name: not uses_covariates(name))
        selected = order[0]
        reason = "no holdout (no calibration_end): the first candidate is used" + (
            ", with the configured covariates" if uses_covariates(selected) else "")
        failed: dict[str, str] = {}
    else:
        selected, reason = backtest.selected, backtest.reason
        ranked = rank_models({name: metrics[name] for name in backtest.fitted.purchase}, settings.selection_metric)
        order = [selected] + [name for name in ranked if name != selected]
        failed = {name: f"calibration fit: {why}" for name, why in backtest.fitted.failed.items()}
    purchase_model = None
    design: Design | None = None
    for name in order:
        say(f"fitting {model_title(name)} on all data")
        try:
            if uses_covariates(name) and design is None:
                # The encoding of every customer (levels first seen after the calibration end too).
                design = encode_covariates(features, settings.covariates)
            customers = (design.histories if uses_covariates(name) and design is not None
                         else features if histories is None else histories)
            # Started from the calibration fit's maximum, which lies close to the all-data one:
            # fewer optimiser steps (the refit took twice as long as the calibration fit).
            purchase_model = fit_purchase_model(
                name, customers, settings,
                initial_params=None if calibration_models is None else dict(calibration_models.purchase[name].params_),
                covariates=None if design is None else design.columns,
            )
        except CandidateFailedError as exc:
            failed[name] = f"all-data fit: {exc}"
            say(f"skipped {model_title(name)}: {exc}")
            continue
        if name != selected:
            next_one = "the next best" if calibration_models is not None else "the next candidate"
            reason += f"; {selected} failed ({failed[selected]}), so {name}, {next_one}, is used"
            selected = name
        break
    if purchase_model is None:
        raise all_candidates_failed(failed)
    with_covariates = uses_covariates(selected) and design is not None
    say("fitting Gamma-Gamma" + (" with covariates" if with_covariates else "") + " on all data")
    if with_covariates:
        assert design is not None
        spend_model = fit_spend_model(design.features, settings, design.columns)
    else:
        spend_model = fit_spend_model(features, settings)
    return FitOutputs(
        selected=selected,
        selection_reason=reason,
        calibration_models=calibration_models,
        backtest=metrics,
        purchase_model=purchase_model,
        spend_model=spend_model,
        failed_candidates=failed,
        covariates=list(settings.covariates) if with_covariates else [],
        covariate_encoder=design.encoder if with_covariates and design is not None else None,
        diagnostics={} if backtest is None else dict(backtest.tables),
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

    if getattr(scorer, "covariate_encoding", None) is not None:
        # The champion's own encoding (its models' design columns), on these customers' raw covariates.
        design = encode_covariates(calibration, list(scorer.covariates), scorer.encoder())
        calibration, histories = design.features, design.histories
    else:
        histories = group_customers(calibration)  # once, for the fit and the holdout prediction
    with np.errstate(all="ignore"):
        purchase, spend = refitted_models(scorer, histories, calibration)
        metrics = backtest_model(calibration, purchase, spend, histories, seed=seed)
    return abs(metrics[SELECTION_KEYS[metric]])
