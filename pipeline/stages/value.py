"""Value stage: per-customer churn, expected purchases and spend, predicted and historical CLV, tiers.

``CustomerValueScorer`` is the trained artefact: fitted models plus the value settings and the
tier cuts frozen as amounts, so a customer scored later (batch export, the MLflow pyfunc)
gets exactly the numbers the run wrote to ``customers.parquet``.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
import pandas as pd

from models._validation import PURCHASE_COLUMNS, check_features, unique_rows
from models.discounting import (
    DAYS_PER_YEAR,
    acquisition_cost_per_customer,
    customer_margin_rate,
    discount_rate_per_period,
    discounted_expected_purchases,
    predicted_clv,
)
from models.historical import HistoricalCLV, historical_clv
from models.tiers import Tier, assign_tiers, tier_summary, tier_thresholds
from pipeline.config import PeriodSettings, SegmentSettings, ValueSettings
from pipeline.errors import InputDataError
from pipeline.stages.backtest import rank_correlation

DAYS_PER_MONTH = DAYS_PER_YEAR / 12
HISTORY_COLUMNS = list(PURCHASE_COLUMNS)

SCORE_COLUMNS = [
    "probability_alive",
    "churn_probability",
    "expected_purchases",
    "probability_no_purchases",
    "expected_spend",
    "margin_rate",
    "acquisition_cost",
    "discounted_expected_purchases",
    "predicted_clv",
    "historical_clv",
    "tier",
    "action",
]


def _one_for_everyone(value: float, index: pd.Index) -> pd.Series:
    # A read-only view of one number rather than 144 MB at 18M customers. Only ever placed
    # in the scorer's frames, which copy a column before anyone writes to it.
    return pd.Series(np.broadcast_to(np.float64(value), (len(index),)), index=index, copy=False)


def horizon_periods(settings: ValueSettings, period: PeriodSettings) -> int:
    """The CLV horizon in whole model periods (12 months = 52 weeks)."""
    return max(1, round(settings.horizon_months * DAYS_PER_MONTH / period.days_per_unit))


@dataclasses.dataclass
class CustomerValueScorer:
    """Fitted purchase and spend models with everything needed to value a customer."""

    purchase_model: Any
    purchase_model_name: str
    spend_model: Any
    period_unit: str
    period_resolution: str
    days_per_unit: float
    horizon_periods: int
    discount_rate_per_period: float
    default_margin_rate: float
    acquisition_cost_constant: float
    acquisition_cost_per_channel: dict[str, float] | None
    lifespan_years: float
    churn_inactivity_days: float
    tier_names: list[str]
    tier_cuts: list[float]
    tier_actions: list[str]

    @property
    def tiers(self) -> list[Tier]:
        return [Tier(n, c, a) for n, c, a in zip(self.tier_names, self.tier_cuts, self.tier_actions)]

    def _margin_rate(self, features: pd.DataFrame) -> pd.Series:
        if "total_margin" in features.columns:
            return customer_margin_rate(
                features["total_margin"], features["total_amount"], self.default_margin_rate
            )
        return _one_for_everyone(self.default_margin_rate, features.index)

    def _acquisition_cost(self, features: pd.DataFrame) -> pd.Series:
        if "acquisition_cost" in features.columns:
            return acquisition_cost_per_customer(
                features.index, column=features["acquisition_cost"].fillna(self.acquisition_cost_constant)
            )
        if self.acquisition_cost_per_channel is not None:
            if "first_channel" not in features.columns:
                raise InputDataError(
                    "value.acquisition_cost.per_channel needs a channel: set input.columns.channel"
                )
            try:
                return acquisition_cost_per_customer(
                    features.index, per_channel=self.acquisition_cost_per_channel, channel=features["first_channel"]
                )
            except ValueError as exc:
                raise InputDataError(f"value.acquisition_cost.per_channel: {exc}") from None
        # The checks any CAC gets (finite, not negative), made on one row.
        acquisition_cost_per_customer(features.index[:1], constant=self.acquisition_cost_constant)
        return _one_for_everyone(self.acquisition_cost_constant, features.index)

    def _historical(self, features: pd.DataFrame, margin, cost, lifespan_years: float | None = None):
        """Historical CLV of ``features``; the lifespan is estimated from them unless given."""
        return historical_clv(
            features,
            self.days_per_unit,
            churn_inactivity_days=self.churn_inactivity_days,
            margin_rate=margin,
            acquisition_cost=cost,
            lifespan_years=lifespan_years,
        )

    def purchase_figures(self, histories: pd.DataFrame) -> pd.DataFrame:
        """The purchase model's figures for each row of ``histories`` (frequency, recency, T).

        Call it on unique histories: everything here depends on nothing else, and at scale
        18M customers share well under a million histories.
        """
        model = self.purchase_model
        horizon = float(self.horizon_periods)
        return pd.DataFrame(
            {
                "probability_alive": model.probability_alive(histories),
                "expected_purchases": model.expected_purchases(histories, horizon),
                "probability_no_purchases": model.probability_of_purchases(histories, 0, horizon),
                "discounted_expected_purchases": discounted_expected_purchases(
                    model, histories, self.horizon_periods, 1.0, self.discount_rate_per_period
                ),
            },
            index=histories.index,
        )

    def figures(
        self, features: pd.DataFrame, purchase: pd.DataFrame | None = None, customer_terms: tuple | None = None
    ) -> pd.DataFrame:
        """Every per-customer figure except the tier (which needs the frozen cuts).

        ``purchase`` may carry :meth:`purchase_figures` already joined to ``features`` (as
        batch scoring does in SQL); otherwise they are computed once per unique history.
        ``customer_terms`` are this scorer's margin rates, acquisition costs and historical CLV
        of ``features`` when the caller has them already (:func:`build_scorer`).
        """
        if purchase is None:
            # check_features gives the float columns the fit grouped, so that grouping is reused.
            columns = check_features(features, HISTORY_COLUMNS)
            unique, inverse, _ = unique_rows([columns[name] for name in HISTORY_COLUMNS])
            per_history = self.purchase_figures(pd.DataFrame(dict(zip(HISTORY_COLUMNS, unique))))
            # Column by column, without copies: at 18M customers each is 144 MB.
            purchase = pd.DataFrame(
                {name: per_history[name].to_numpy()[inverse] for name in per_history.columns},
                index=features.index, copy=False,
            )
        probability_alive = purchase["probability_alive"]
        discounted = purchase["discounted_expected_purchases"]
        spend = self.spend_model.expected_spend(features)
        if customer_terms is None:
            margin, cost = self._margin_rate(features), self._acquisition_cost(features)
            historical = self._historical(features, margin, cost, self.lifespan_years).per_customer
        else:
            margin, cost, historical = customer_terms
        return pd.DataFrame(
            {
                "probability_alive": probability_alive,
                "churn_probability": 1.0 - probability_alive,
                "expected_purchases": purchase["expected_purchases"],
                "probability_no_purchases": purchase["probability_no_purchases"],
                "expected_spend": spend,
                "margin_rate": margin,
                "acquisition_cost": cost,
                "discounted_expected_purchases": discounted,
                "predicted_clv": predicted_clv(discounted, spend, margin, cost),
                "historical_clv": historical,
            },
            index=features.index,
            copy=False,
        )

    def with_tiers(self, figures: pd.DataFrame, as_text: bool = True) -> pd.DataFrame:
        """``figures`` plus ``tier`` and ``action``: text, or (``as_text=False``) categoricals."""
        tiers_frame = assign_tiers(figures["predicted_clv"], self.tiers, method="absolute")
        if not as_text:
            return figures.assign(tier=tiers_frame["tier"], action=tiers_frame["action"])
        return figures.assign(tier=tiers_frame["tier"].astype(str), action=tiers_frame["action"].astype(str))

    def score(self, features: pd.DataFrame) -> pd.DataFrame:
        """One row per customer of ``features`` with every figure of :data:`SCORE_COLUMNS`."""
        return self.with_tiers(self.figures(features))

    def settings_summary(self) -> dict[str, Any]:
        return {
            "purchase_model": self.purchase_model_name,
            "period_unit": self.period_unit,
            "period_resolution": self.period_resolution,
            "horizon_periods": self.horizon_periods,
            "discount_rate_per_period": self.discount_rate_per_period,
            "default_margin_rate": self.default_margin_rate,
            "acquisition_cost_constant": self.acquisition_cost_constant,
            "acquisition_cost_per_channel": self.acquisition_cost_per_channel,
            "lifespan_years": self.lifespan_years,
            "tiers": [
                {"name": n, "min_predicted_clv": (None if math.isinf(c) else c), "action": a}
                for n, c, a in zip(self.tier_names, self.tier_cuts, self.tier_actions)
            ],
        }


def build_scorer(
    features: pd.DataFrame,
    purchase_model: Any,
    purchase_model_name: str,
    spend_model: Any,
    value: ValueSettings,
    segments: SegmentSettings,
    period: PeriodSettings,
) -> tuple[CustomerValueScorer, HistoricalCLV, pd.DataFrame]:
    """Freeze the value settings and tier cuts (as CLV amounts) learned on ``features``.

    Returns the scorer, the historical CLV and the scores of ``features`` (computed once; tier
    and action as categoricals, which at 18M customers are far cheaper than text).
    """
    scorer = CustomerValueScorer(
        purchase_model=purchase_model,
        purchase_model_name=purchase_model_name,
        spend_model=spend_model,
        period_unit=period.unit,
        period_resolution=period.resolution,
        days_per_unit=period.days_per_unit,
        horizon_periods=horizon_periods(value, period),
        discount_rate_per_period=discount_rate_per_period(value.discount_rate_annual, period.days_per_unit),
        default_margin_rate=value.margin_rate,
        acquisition_cost_constant=value.acquisition_cost.constant,
        acquisition_cost_per_channel=value.acquisition_cost.per_channel,
        lifespan_years=float("nan"),
        churn_inactivity_days=value.churn_inactivity_days,
        tier_names=[], tier_cuts=[], tier_actions=[],
    )
    try:
        margin, cost = scorer._margin_rate(features), scorer._acquisition_cost(features)
        historical = scorer._historical(features, margin, cost)
        scorer.lifespan_years = historical.lifespan_years
        configured = [Tier(t.name, t.cut, t.action) for t in segments.tiers]
        # The per-customer historical CLV above used the lifespan it estimated, the one now frozen.
        figures = scorer.figures(features, customer_terms=(margin, cost, historical.per_customer))
        thresholds = tier_thresholds(figures["predicted_clv"], configured, method=segments.method)
    except ValueError as exc:
        # The models' messages name their own arguments; here the setting is value.churn_inactivity_days.
        message = str(exc).replace("shorten churn_inactivity_days or give lifespan_years",
                                   "lower value.churn_inactivity_days")
        raise InputDataError(f"value: {message}") from None
    cuts = [float(thresholds[t.name]) for t in configured]
    # Customers scored later may fall below every customer seen here: the lowest tier is open.
    cuts[-1] = -math.inf
    scorer.tier_names = [t.name for t in configured]
    scorer.tier_cuts = cuts
    scorer.tier_actions = [t.action for t in configured]
    return scorer, historical, scorer.with_tiers(figures, as_text=False)


def tier_table(customers: pd.DataFrame, scorer: CustomerValueScorer) -> pd.DataFrame:
    """Customers, predicted and historical CLV per tier, in the scorer's tier order."""
    tiers_frame = customers[["tier", "action"]].assign(
        tier=pd.Categorical(customers["tier"], categories=scorer.tier_names, ordered=True)
    )
    return tier_summary(customers["predicted_clv"], tiers_frame, historical=customers["historical_clv"])


def value_summary(customers: pd.DataFrame, historical: HistoricalCLV, tiers: pd.DataFrame) -> dict[str, Any]:
    """Predicted vs historical CLV, side by side, and the tiers (:func:`tier_table`)."""
    predicted = customers["predicted_clv"]
    per_customer_historical = customers["historical_clv"]
    return {
        "customers": int(len(customers)),
        "predicted_clv_total": float(predicted.sum()),
        "predicted_clv_mean": float(predicted.mean()),
        "predicted_clv_median": float(predicted.median()),
        "historical_clv_company": float(historical.clv),
        "historical_clv_customer_mean": float(per_customer_historical.mean()),
        "historical_clv_customer_median": float(per_customer_historical.median()),
        "predicted_minus_historical_mean": float(predicted.mean() - per_customer_historical.mean()),
        "predicted_historical_spearman": rank_correlation(predicted.to_numpy(), per_customer_historical.to_numpy()),
        "historical_method": historical.method,
        "historical_lifespan_years": float(historical.lifespan_years),
        "historical_churn_rate_annual": float(historical.churn_rate_annual),
        "historical_average_purchase_value": float(historical.average_purchase_value),
        "historical_purchases_per_year": float(historical.purchases_per_year),
        "mean_probability_alive": float(customers["probability_alive"].mean()),
        "expected_purchases_total": float(customers["expected_purchases"].sum()),
        "tiers": {
            str(name): {key: (float(v) if isinstance(v, (int, float, np.floating, np.integer)) else str(v)) for key, v in row.items()}
            for name, row in tiers.iterrows()
        },
    }
