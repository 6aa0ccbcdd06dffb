"""Fit stage: the configured purchase-model candidates and the Gamma-Gamma spend model."""

from __future__ import annotations

import dataclasses
from typing import Any

import pandas as pd

from models.purchase import PURCHASE_MODELS
from models.spend import GammaGammaModel
from pipeline.config import ModelSettings
from pipeline.errors import InputDataError

PURCHASE_MODEL_TITLES = {"bgnbd": "BG/NBD", "mbgnbd": "MBG/NBD", "paretonbd": "Pareto/NBD"}


@dataclasses.dataclass
class FittedModels:
    """Fitted estimators of one run: every purchase candidate and the spend model."""

    purchase: dict[str, Any]
    spend: GammaGammaModel
    selected: str

    @property
    def purchase_model(self) -> Any:
        return self.purchase[self.selected]

    def summary(self) -> dict[str, Any]:
        return {
            "selected_purchase_model": self.selected,
            "purchase_models": {name: model.summary() for name, model in self.purchase.items()},
            "spend_model": self.spend.summary(),
        }


def fit_purchase_model(
    name: str, features: pd.DataFrame, settings: ModelSettings, initial_params: dict[str, float] | None = None
) -> Any:
    """Fit purchase model ``name``; ``initial_params`` start the optimiser (default: lifetimes' start)."""
    model = PURCHASE_MODELS[name](
        penalizer=settings.purchase.penalizer, tol=settings.purchase.tol, initial_params=initial_params
    )
    try:
        return model.fit(features)
    except ValueError as exc:
        raise InputDataError(f"features: cannot fit {PURCHASE_MODEL_TITLES[name]}: {exc}") from None


def fit_spend_model(features: pd.DataFrame, settings: ModelSettings) -> GammaGammaModel:
    model = GammaGammaModel(
        penalizer=settings.spend.penalizer, min_repeat_customers=settings.spend.min_repeat_customers
    )
    try:
        return model.fit(features)
    except ValueError as exc:
        raise InputDataError(f"features: cannot fit Gamma-Gamma: {exc}") from None


def fit_models(
    features: pd.DataFrame, settings: ModelSettings, progress: Any = None
) -> FittedModels:
    """Fit every purchase candidate and the spend model on calibration features.

    ``progress`` is an optional callable ``progress(message)`` for long fits.
    The first candidate is the provisional selection; the backtest picks the winner.
    """
    purchase = {}
    for name in settings.purchase.candidates:
        if progress:
            progress(f"fitting {PURCHASE_MODEL_TITLES[name]}")
        purchase[name] = fit_purchase_model(name, features, settings)
    if progress:
        progress("fitting Gamma-Gamma")
    spend = fit_spend_model(features, settings)
    return FittedModels(purchase=purchase, spend=spend, selected=settings.purchase.candidates[0])
