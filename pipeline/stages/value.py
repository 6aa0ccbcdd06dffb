"""Value stage and the scoring core: per-customer churn, expected purchases and spend, predicted
and historical CLV, tiers.

``CustomerValueScorer`` is the trained artefact: fitted models plus the value settings and the
tier cuts frozen as amounts, so a customer scored later (batch export, the MLflow pyfunc)
gets exactly the numbers the run wrote to ``customers.parquet``.

The scoring core, which every command and engine goes through, is two functions:

* :func:`history_figures`: the purchase model's figures (P(alive), churn, expected and
  discounted purchases, P(no purchase)) of a table of unique histories ``(frequency, recency,
  T)``. A customer's purchase figures depend on nothing else, and 18M customers share well
  under a million histories, so the models are evaluated once per history.
* :func:`score_customers`: the one join back to customers: each customer's history figures,
  then the customer-level terms (expected spend, margin rate, acquisition cost, historical
  CLV), predicted CLV, tier and action: :data:`SCORE_COLUMNS`, in that order.

The value stage (:func:`build_scorer`) calls them on all customers at once; ``clv score`` on
DuckDB (``pipeline/batch.py``) finds the histories in SQL, evaluates them once and joins each
batch to them by row number; on Spark (``pipeline/spark/scoring.py``) the driver evaluates the
distinct histories once and each ``mapInPandas`` batch takes its customers' by row on the executors; ``CustomerValueScorer.score`` (the MLflow model, the monitor) is the
same call on any frame. A new per-customer figure is computed in one of the two functions and
placed in :data:`FIGURE_COLUMNS`; every output then has it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Iterator
from typing import Any, Literal, NamedTuple

import numpy as np
import pandas as pd

from models import CustomerHistories, group_histories
from models.discounting import (
    DAYS_PER_YEAR,
    acquisition_cost_per_customer,
    customer_margin_rate,
    discount_rate_per_period,
    discounted_expected_purchases,
    predicted_clv,
)
from models.historical import (
    HistoricalCLV,
    HistoricalTotals,
    historical_clv,
    historical_clv_over_horizon,
    historical_totals,
)
from models.tiers import (
    Tier,
    assign_tiers,
    finish_tier_summary,
    merge_tier_partials,
    tier_partial,
    tier_summary,
    tier_thresholds,
)
from models.uncertainty import (
    bounds_from_log_distances,
    draw_parameters,
    history_intervals,
    log_distances,
    point_parameters,
    purchase_spread,
    spend_draws,
)
from pipeline.config import PeriodSettings, SegmentSettings, ValueSettings
from pipeline.errors import InputDataError
from pipeline.stages.acquisition import acquisition_partial, new_customer_value, unprofitable_groups
from pipeline.stages.backtest import customer_ids, rank_correlation, rank_sample
from pipeline.stages.partials import GroupedSums, grouped_sums

DAYS_PER_MONTH = DAYS_PER_YEAR / 12

# Every per-customer figure, in the order of customers.parquet and the exports (tier and action follow).
# Intervals of predicted_clv, expected purchases and P(alive) from the parameters' uncertainty
# (empty when value.intervals.draws is 0).
INTERVAL_COLUMNS = ["clv_lower", "clv_upper", "expected_purchases_lower", "expected_purchases_upper",
                    "probability_alive_lower", "probability_alive_upper"]
# Those and the spread of the number of purchases in the horizon at the point estimate, held as
# float32 (7 significant digits, plenty for a bound or a count of purchases): eight more columns
# of 18M customers are 576 MB so, not 1.15 GB.
FLOAT32_COLUMNS = [*INTERVAL_COLUMNS, "purchases_p10", "purchases_p90"]
FIGURE_COLUMNS = [
    "probability_alive",
    "churn_probability",
    "expected_purchases",
    "probability_no_purchases",
    "expected_spend",
    "margin_rate",
    "acquisition_cost",
    "discounted_expected_purchases",
    "dert",
    "clv_horizon",
    "clv_lifetime",
    "predicted_clv",
    "historical_clv",
    "historical_clv_horizon",
    "realised_margin",
    *FLOAT32_COLUMNS,
]
# Per-history columns history_figures hands to score_customers that no output carries: how far
# the value figure's bounds lie from it on the log scale (models.uncertainty.log_distances).
VALUE_LOG_DISTANCES = ("value_log_below", "value_log_above")
# Above this many (distinct history, draw) evaluations, each history's bounds are the draws'
# limit, the delta method (models.uncertainty.history_intervals): every draw is evaluated up to
# about 20,000 histories at 100 draws, where the parameters' errors are also the largest.
DELTA_ABOVE = 2_000_000
SCORE_COLUMNS = [*FIGURE_COLUMNS, "tier", "action"]


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
    # With a covariate model: the raw covariate columns a customer needs (beside the features)
    # and their encoding (models.CovariateEncoder.to_dict), which the models' design columns
    # come from. Class-level defaults, so scorers pickled before covariates load as plain ones.
    covariates: tuple[str, ...] = ()
    covariate_encoding: dict[str, Any] | None = None
    # value.horizon: lifetime makes predicted_clv the lifetime value (clv_lifetime) rather than
    # the horizon's (clv_horizon); both are always computed.
    lifetime: bool = False
    # value.intervals: the parameter draws every scoring of this model evaluates (drawn once,
    # seeded, so an export and the pyfunc give the run's bounds); None without intervals, with
    # intervals_unavailable saying why when they were asked for.
    interval_level: float = 0.9
    interval_method: str = "draws"  # "delta" on many histories (DELTA_ABOVE); frozen at the run
    purchase_parameter_draws: pd.DataFrame | None = None
    spend_parameter_draws: pd.DataFrame | None = None
    intervals_unavailable: str | None = None

    @property
    def has_intervals(self) -> bool:
        return self.purchase_parameter_draws is not None and self.spend_parameter_draws is not None

    @property
    def discount_rate_continuous(self) -> float:
        """The per-period discount rate as a continuous rate: e^(-rate) = 1 / (1 + discrete rate),
        so the lifetime value's discounting agrees with the horizon's at every period's end."""
        return float(np.log1p(self.discount_rate_per_period))

    @property
    def horizon_years(self) -> float:
        return self.horizon_periods * self.days_per_unit / DAYS_PER_YEAR

    @property
    def design_columns(self) -> list[str]:
        """The models' design columns ([] without covariates)."""
        return [] if self.covariate_encoding is None else list(self.encoder().design_columns_)

    def encoder(self) -> Any:
        from models.covariates import CovariateEncoder

        if self.covariate_encoding is None:
            raise ValueError("this scorer's models use no covariates")
        return CovariateEncoder.from_dict(self.covariate_encoding)

    def with_design(self, features: pd.DataFrame) -> pd.DataFrame:
        """``features`` (holding the raw covariate columns) with the models' design columns
        added; unchanged without covariates. A missing column or value, or a level the model
        never saw, is one line naming it."""
        if self.covariate_encoding is None:
            return features
        missing = [name for name in self.covariates if name not in features.columns]
        if missing:
            raise InputDataError(f"features: no column {missing}: this model uses the covariates "
                                 f"{list(self.covariates)}, one value per customer")
        try:
            design = self.encoder().transform(features[list(self.covariates)])
        except ValueError as exc:
            raise InputDataError(f"covariates: {str(exc).splitlines()[0]}") from None
        return features.assign(**{name: design[name].to_numpy() for name in design.columns})

    @property
    def tiers(self) -> list[Tier]:
        return [Tier(n, c, a) for n, c, a in zip(self.tier_names, self.tier_cuts, self.tier_actions)]

    def score(self, features: pd.DataFrame) -> pd.DataFrame:
        """One row per customer of ``features`` with every figure of :data:`SCORE_COLUMNS`: :func:`score_customers`."""
        return score_customers(self, features)

    def settings_summary(self) -> dict[str, Any]:
        return {
            "purchase_model": self.purchase_model_name,
            "period_unit": self.period_unit,
            "period_resolution": self.period_resolution,
            "horizon_periods": self.horizon_periods,
            "predicted_clv_covers": "lifetime" if self.lifetime else "horizon",
            "discount_rate_per_period": self.discount_rate_per_period,
            "default_margin_rate": self.default_margin_rate,
            "acquisition_cost_constant": self.acquisition_cost_constant,
            "acquisition_cost_per_channel": self.acquisition_cost_per_channel,
            "lifespan_years": self.lifespan_years,
            "covariates": list(self.covariates),
            "intervals": ({"level": self.interval_level, "draws": len(self.purchase_parameter_draws)}
                          if self.has_intervals and self.purchase_parameter_draws is not None
                          else {"unavailable": self.intervals_unavailable or "not asked for"}),
            "tiers": [
                {"name": n, "min_predicted_clv": (None if math.isinf(c) else c), "action": a}
                for n, c, a in zip(self.tier_names, self.tier_cuts, self.tier_actions)
            ],
        }


# ---------------------------------------------------------------------------------------------
# The scoring core


def unique_histories(features: pd.DataFrame, covariates: list[str] | None = None) -> tuple[pd.DataFrame, np.ndarray]:
    """The unique histories ``(frequency, recency, T)`` of ``features`` (with the design columns
    ``covariates``: the unique rows of both) and each customer's row among them."""
    histories = group_histories(features, covariates=covariates)
    return histories.unique, histories.inverse


def history_figures(scorer: CustomerValueScorer, histories: pd.DataFrame, intervals: bool = True) -> pd.DataFrame:
    """The purchase model's figures for each row of ``histories``: P(alive), churn, expected
    purchases and P(no purchase) over the horizon, discounted expected purchases, DERT, the
    10th and 90th percentiles of the number of purchases and, when the scorer has parameter
    draws and ``intervals`` is true, the intervals of P(alive) and expected purchases and the
    log distances of the value figure's bounds (:data:`VALUE_LOG_DISTANCES`); NaN otherwise.

    Parameters
    ----------
    scorer : CustomerValueScorer
        Its purchase model, horizon and discount rate are used.
    histories : pandas.DataFrame
        Columns ``frequency``, ``recency``, ``T``; call it on unique rows (:func:`unique_histories`):
        every figure here depends on nothing else.

    Returns
    -------
    pandas.DataFrame
        Indexed like ``histories``.
    """
    model = scorer.purchase_model
    horizon = float(scorer.horizon_periods)
    # Checked and grouped once for the four figures (the rows are usually distinct already).
    grouped = group_histories(histories, covariates=scorer.design_columns)
    probability_alive = model.probability_alive(grouped)
    figures = pd.DataFrame(
        {
            "probability_alive": probability_alive,
            "churn_probability": 1.0 - probability_alive,
            "expected_purchases": model.expected_purchases(grouped, horizon),
            "probability_no_purchases": model.probability_of_purchases(grouped, 0, horizon),
            "discounted_expected_purchases": discounted_expected_purchases(
                model, grouped, scorer.horizon_periods, 1.0, scorer.discount_rate_per_period
            ),
            "dert": model.discounted_expected_residual_purchases(grouped, scorer.discount_rate_continuous),
        },
        index=histories.index,
    )
    spread = purchase_spread(model, grouped, horizon)
    figures["purchases_p10"] = spread["purchases_p10"].to_numpy(dtype=np.float32)
    figures["purchases_p90"] = spread["purchases_p90"].to_numpy(dtype=np.float32)
    bounds, _ = history_interval_figures(scorer, grouped, figures, with_draws=intervals)
    return figures.assign(**{str(name): values.to_numpy() for name, values in bounds.items()})


def value_figure_name(scorer: CustomerValueScorer) -> str:
    """The per-history figure predicted CLV multiplies by spend and margin: DERT for a lifetime
    value, the horizon's discounted expected purchases otherwise."""
    return "dert" if scorer.lifetime else "discounted_expected_purchases"


def history_interval_figures(
    scorer: CustomerValueScorer, grouped: CustomerHistories, figures: pd.DataFrame, with_draws: bool = True,
    purchase_weights: np.ndarray | None = None, value_weights: Any = None,
) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """The interval columns of :func:`history_figures` (``figures``: its point figures of
    ``grouped``), and with weights the draws' totals (``models.uncertainty.history_intervals``)."""
    names = ["expected_purchases_lower", "expected_purchases_upper", "probability_alive_lower",
             "probability_alive_upper", *VALUE_LOG_DISTANCES]
    if not (with_draws and scorer.has_intervals and len(figures)):
        return pd.DataFrame({name: np.full(len(figures), np.nan, dtype=np.float32) for name in names},
                            index=figures.index), None
    model = scorer.purchase_model
    value_name = value_figure_name(scorer)
    if scorer.lifetime:
        def value(drawn: Any, standing: CustomerHistories) -> np.ndarray:
            return drawn.discounted_expected_residual_purchases(standing, scorer.discount_rate_continuous).to_numpy()
    else:
        def value(drawn: Any, standing: CustomerHistories) -> np.ndarray:
            return discounted_expected_purchases(drawn, standing, scorer.horizon_periods, 1.0,
                                                 scorer.discount_rate_per_period).to_numpy()
    result = history_intervals(
        model, scorer.purchase_parameter_draws, grouped, float(scorer.horizon_periods), value,
        level=scorer.interval_level, purchase_weights=purchase_weights, value_weights=value_weights,
        # The horizon's discounting held at the point estimate: a year's discount factor moves
        # far less between draws than the purchases (models.uncertainty.history_intervals).
        value_at_point_ratio=not scorer.lifetime,
        method=scorer.interval_method,
    )
    table = result.per_history
    below, above = log_distances(figures[value_name].to_numpy(), table["value_lower"].to_numpy(),
                                 table["value_upper"].to_numpy())
    columns = {name: table[name].to_numpy(dtype=np.float32) for name in names[:4]}
    columns.update(zip(VALUE_LOG_DISTANCES, (below.astype(np.float32), above.astype(np.float32))))
    return pd.DataFrame(columns, index=figures.index), result.totals


class CustomerTerms(NamedTuple):
    """What a customer's value takes beyond the models: margin rate, acquisition cost and the
    historical CLV (whose ``per_customer`` is each customer's)."""

    margin_rate: pd.Series
    acquisition_cost: pd.Series
    historical: HistoricalCLV


def customer_terms(
    scorer: CustomerValueScorer, features: pd.DataFrame, lifespan_years: float | None = None
) -> CustomerTerms:
    """The :class:`CustomerTerms` of ``features``; the lifespan is estimated from them unless given."""
    margin, cost = _margin_rate(scorer, features), _acquisition_cost(scorer, features)
    historical = historical_clv(
        features,
        scorer.days_per_unit,
        churn_inactivity_days=scorer.churn_inactivity_days,
        margin_rate=margin,
        acquisition_cost=cost,
        lifespan_years=lifespan_years,
    )
    return CustomerTerms(margin, cost, historical)


def score_customers(
    scorer: CustomerValueScorer,
    features: pd.DataFrame,
    per_history: pd.DataFrame | None = None,
    history_of: np.ndarray | None = None,
    terms: CustomerTerms | None = None,
    tiers: Literal["text", "categories"] | None = "text",
    histories: CustomerHistories | None = None,
    intervals: bool = True,
) -> pd.DataFrame:
    """Every figure of :data:`SCORE_COLUMNS` for each customer of ``features``, indexed like it.

    Parameters
    ----------
    scorer : CustomerValueScorer
    features : pandas.DataFrame
        One row per customer: ``frequency``, ``recency``, ``T``, ``monetary_value``,
        ``n_transactions``, ``total_amount`` and, when the log has them, ``total_margin``,
        ``acquisition_cost``, ``first_channel``.
    per_history, history_of : pandas.DataFrame and numpy.ndarray, optional
        :func:`history_figures` of unique histories and, for each customer, the position of
        theirs among them, when the caller has them (batch scoring finds the histories of
        every batch at once); by default the histories of ``features``: ``histories`` when
        given, else grouped here.
    terms : CustomerTerms, optional
        The customers' :func:`customer_terms`, when the caller has them; by default with the
        scorer's frozen lifespan.
    tiers : {"text", "categories"} or None
        Tier and action as text, as categoricals (far cheaper at 18M customers), or left out
        (when the cuts are not known yet).
    histories : models.CustomerHistories, optional
        ``features`` grouped (``models.group_histories``), when the caller has them (the value
        stage has them from the all-data fit).
    intervals : bool, default True
        Compute the interval columns when the scorer has parameter draws (NaN otherwise, and
        when false: for callers that read only the point figures).
    """
    if scorer.covariate_encoding is not None:
        features = scorer.with_design(features)
        design = scorer.design_columns
        if histories is not None and list(histories.covariates) != design:
            histories = None  # grouped without the design: grouped again below
    if per_history is None:
        if histories is None:
            histories = group_histories(features, covariates=scorer.design_columns)
        elif len(histories) != len(features):
            raise ValueError(f"histories has {len(histories)} customers, features {len(features)}")
        per_history = history_figures(scorer, histories.unique, intervals=intervals)
        history_of = histories.inverse
    if history_of is None:
        raise ValueError("per_history needs history_of, each customer's row among the histories")
    # Each customer's history figures, column by column without copies: at 18M customers each is
    # 144 MB. np.take rather than indexing (half the time for float64), with a writeable copy of
    # the positions: from the read-only array CustomerHistories holds, each take took 4 times as
    # long (0.24 s against 0.06 s a column at 18M customers, numpy 2).
    history_of = np.array(history_of, dtype=np.intp)
    columns = {
        name: pd.Series(np.take(values.to_numpy(), history_of), index=features.index, copy=False)
        for name, values in per_history.items()
    }
    spend = scorer.spend_model.expected_spend(features)
    if terms is None:
        terms = customer_terms(scorer, features, scorer.lifespan_years)
    clv_horizon = predicted_clv(columns["discounted_expected_purchases"], spend, terms.margin_rate,
                                terms.acquisition_cost)
    clv_lifetime = predicted_clv(columns["dert"], spend, terms.margin_rate, terms.acquisition_cost)
    columns.update(
        expected_spend=spend,
        margin_rate=terms.margin_rate,
        acquisition_cost=terms.acquisition_cost,
        clv_horizon=clv_horizon,
        clv_lifetime=clv_lifetime,
        predicted_clv=clv_lifetime if scorer.lifetime else clv_horizon,
        historical_clv=terms.historical.per_customer,
        # The like-for-like partners: the business formula over the horizon, and the margin
        # already earned (which with clv_lifetime makes a whole lifetime, as historical_clv is).
        historical_clv_horizon=historical_clv_over_horizon(
            features, scorer.days_per_unit, scorer.horizon_years, scorer.churn_inactivity_days,
            terms.margin_rate, terms.acquisition_cost,
        ),
        realised_margin=pd.Series(features["total_amount"].to_numpy() * terms.margin_rate.to_numpy(),
                                  index=features.index),
    )
    log_below, log_above = (columns.pop(name).to_numpy() for name in VALUE_LOG_DISTANCES)
    columns["clv_lower"], columns["clv_upper"] = _clv_bounds(
        scorer, features, columns[value_figure_name(scorer)].to_numpy(), spend.to_numpy(), log_below, log_above,
        terms, with_draws=intervals,
    )
    figures = pd.DataFrame({name: columns[name] for name in FIGURE_COLUMNS}, index=features.index, copy=False)
    return figures if tiers is None else with_tiers(scorer, figures, as_text=tiers == "text")


def _clv_bounds(
    scorer: CustomerValueScorer, features: pd.DataFrame, value: np.ndarray, spend: np.ndarray,
    log_below: np.ndarray, log_above: np.ndarray, terms: CustomerTerms, with_draws: bool,
) -> tuple[pd.Series, pd.Series]:
    """Predicted CLV's bounds: the value figure's (per history) and the expected spend's (per
    customer) uncertainty added on the log scale (``models.uncertainty.value_bounds``), then
    margin and acquisition cost, which are known: a negative margin swaps the bounds."""
    if not (with_draws and scorer.has_intervals and len(features)):
        empty = np.full(len(features), np.nan, dtype=np.float32)
        return pd.Series(empty, index=features.index), pd.Series(empty.copy(), index=features.index)
    spend_log_variance = spend_draws(scorer.spend_model, scorer.spend_parameter_draws, features).log_variance()
    gross = (value * spend).astype(np.float32)
    lower, upper = bounds_from_log_distances(gross, log_below, log_above, spend_log_variance.astype(np.float32),
                                             scorer.interval_level)
    del gross, spend_log_variance
    margin = terms.margin_rate.to_numpy().astype(np.float32)
    cost = terms.acquisition_cost.to_numpy().astype(np.float32)
    low = np.where(margin >= 0, lower, upper)
    high = np.where(margin >= 0, upper, lower)
    low *= margin
    low -= cost
    high *= margin
    high -= cost
    return pd.Series(low, index=features.index), pd.Series(high, index=features.index)


def with_tiers(scorer: CustomerValueScorer, figures: pd.DataFrame, as_text: bool = True) -> pd.DataFrame:
    """``figures`` plus ``tier`` and ``action`` by the frozen cuts: text, or (``as_text=False``) categoricals."""
    tiers_frame = assign_tiers(figures["predicted_clv"], scorer.tiers, method="absolute")
    if not as_text:
        return figures.assign(tier=tiers_frame["tier"], action=tiers_frame["action"])
    return figures.assign(tier=tiers_frame["tier"].astype(str), action=tiers_frame["action"].astype(str))


def _margin_rate(scorer: CustomerValueScorer, features: pd.DataFrame) -> pd.Series:
    if "total_margin" in features.columns:
        return customer_margin_rate(
            features["total_margin"], features["total_amount"], scorer.default_margin_rate
        )
    return _one_for_everyone(scorer.default_margin_rate, features.index)


def _acquisition_cost(scorer: CustomerValueScorer, features: pd.DataFrame) -> pd.Series:
    if "acquisition_cost" in features.columns:
        return acquisition_cost_per_customer(
            features.index, column=features["acquisition_cost"].fillna(scorer.acquisition_cost_constant)
        )
    if scorer.acquisition_cost_per_channel is not None:
        if "first_channel" not in features.columns:
            raise InputDataError("value.acquisition_cost.per_channel needs a channel: set input.columns.channel")
        try:
            return acquisition_cost_per_customer(
                features.index, per_channel=scorer.acquisition_cost_per_channel, channel=features["first_channel"]
            )
        except ValueError as exc:
            raise InputDataError(f"value.acquisition_cost.per_channel: {exc}") from None
    # The checks any CAC gets (finite, not negative), made on one row.
    acquisition_cost_per_customer(features.index[:1], constant=scorer.acquisition_cost_constant)
    return _one_for_everyone(scorer.acquisition_cost_constant, features.index)


# ---------------------------------------------------------------------------------------------
# The value stage


def new_scorer(
    purchase_model: Any, purchase_model_name: str, spend_model: Any, value: ValueSettings, period: PeriodSettings,
    covariates: list[str] | None = None, covariate_encoding: dict[str, Any] | None = None, seed: int = 0,
) -> CustomerValueScorer:
    """A scorer with the value settings and the fitted models; the lifespan and the tier cuts,
    which are learned from the customers, are frozen next (:func:`build_scorer`, or the Spark
    engine from aggregates: :func:`lifespan_totals`, :func:`freeze_tiers`)."""
    return CustomerValueScorer(
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
        covariates=tuple(covariates or ()), covariate_encoding=covariate_encoding,
        lifetime=value.is_lifetime,
        interval_level=value.intervals.level,
        **parameter_draws(purchase_model, spend_model, value.intervals.draws, seed),
    )


def parameter_draws(purchase_model: Any, spend_model: Any, n_draws: int, seed: int) -> dict[str, Any]:
    """The scorer's parameter draws (``models.uncertainty.draw_parameters``, the two models from
    independent child seeds of ``seed``), or none with the reason: intervals are a part a run
    can do without, so a model without a usable covariance degrades them, not the run."""
    if n_draws == 0:
        return {"intervals_unavailable": "value.intervals.draws is 0"}
    purchase_seed, spend_seed = np.random.SeedSequence(seed).spawn(2)
    try:
        purchase = draw_parameters(purchase_model, n_draws, purchase_seed)
        spend = draw_parameters(spend_model, n_draws, spend_seed)
        if (spend["q"] <= 1).any():
            raise ValueError("Gamma-Gamma's q is at or below 1 in some draws (an infinite mean spend): "
                             "the spend model is too uncertain for an interval")
    except ValueError as exc:
        return {"intervals_unavailable": str(exc).splitlines()[0]}
    return {"purchase_parameter_draws": purchase, "spend_parameter_draws": spend}


def lifespan_totals(scorer: CustomerValueScorer, features: pd.DataFrame) -> HistoricalTotals:
    """The historical CLV's sums over a batch of customers (``models.historical_totals`` with
    the scorer's margin rate, acquisition cost and churn rule); the batches' totals add up to
    the company figures, the lifespan among them (``models.historical_clv_from_totals``)."""
    with value_errors():
        return historical_totals(
            features, scorer.days_per_unit, churn_inactivity_days=scorer.churn_inactivity_days,
            margin_rate=_margin_rate(scorer, features), acquisition_cost=_acquisition_cost(scorer, features),
        )


@contextlib.contextmanager
def value_errors() -> Iterator[None]:
    """The models' ValueErrors as the value stage's one-line InputDataError, naming settings."""
    try:
        yield
    except ValueError as exc:
        # The models' messages name their own arguments; here the setting is value.churn_inactivity_days.
        message = str(exc).replace("shorten churn_inactivity_days or give lifespan_years",
                                   "lower value.churn_inactivity_days")
        raise InputDataError(f"value: {message}") from None


def configured_tiers(segments: SegmentSettings) -> list[Tier]:
    return [Tier(t.name, t.cut, t.action) for t in segments.tiers]


def freeze_tiers(scorer: CustomerValueScorer, segments: SegmentSettings, thresholds: dict[str, float]) -> None:
    """Freeze the tier cuts as CLV amounts (``thresholds``: ``models.tier_thresholds`` of the
    customers' predicted CLV, or the same quantiles estimated by an engine)."""
    configured = configured_tiers(segments)
    cuts = [float(thresholds[t.name]) for t in configured]
    # Customers scored later may fall below every customer seen here: the lowest tier is open.
    cuts[-1] = -math.inf
    scorer.tier_names = [t.name for t in configured]
    scorer.tier_cuts = cuts
    scorer.tier_actions = [t.action for t in configured]


def build_scorer(
    features: pd.DataFrame,
    purchase_model: Any,
    purchase_model_name: str,
    spend_model: Any,
    value: ValueSettings,
    segments: SegmentSettings,
    period: PeriodSettings,
    histories: CustomerHistories | None = None,
    covariates: list[str] | None = None,
    covariate_encoding: dict[str, Any] | None = None,
    seed: int = 0,
) -> tuple[CustomerValueScorer, HistoricalCLV, pd.DataFrame, dict[str, Any]]:
    """Freeze the value settings and tier cuts (as CLV amounts) learned on ``features``.

    Returns the scorer, the historical CLV, the scores of ``features`` (computed once; tier
    and action as categoricals, which at 18M customers are far cheaper than text) and the
    company totals' interval (:func:`company_interval`).
    ``histories``: ``features`` grouped (``models.group_histories``), when the caller has them;
    ``seed``: of the parameter draws behind the intervals.
    """
    scorer = new_scorer(purchase_model, purchase_model_name, spend_model, value, period, covariates,
                        covariate_encoding, seed)
    with value_errors():
        terms = customer_terms(scorer, features)
        scorer.lifespan_years = terms.historical.lifespan_years
        design_features = scorer.with_design(features)
        if histories is None or list(histories.covariates) != scorer.design_columns:
            histories = group_histories(design_features, covariates=scorer.design_columns)
        freeze_interval_method(scorer, len(histories.counts))
        # The per-customer historical CLV above used the lifespan it estimated, the one now frozen.
        per_history, company = company_history_figures(scorer, histories.unique,
                                                       history_sums(histories, design_features, terms))
        figures = score_customers(scorer, features, per_history, histories.inverse, terms=terms, tiers=None)
        thresholds = tier_thresholds(figures["predicted_clv"], configured_tiers(segments), method=segments.method)
    freeze_tiers(scorer, segments, thresholds)
    return scorer, terms.historical, with_tiers(scorer, figures, as_text=False), company


def freeze_interval_method(scorer: CustomerValueScorer, n_histories: int) -> None:
    """How every scoring of this model finds each history's bounds (:data:`DELTA_ABOVE`),
    decided on the run's distinct histories and frozen, so an export of a few customers gets
    the run's bounds."""
    if scorer.purchase_parameter_draws is not None:
        evaluations = n_histories * len(scorer.purchase_parameter_draws)
        scorer.interval_method = "delta" if evaluations > DELTA_ABOVE else "draws"


class HistorySums(NamedTuple):
    """What the company totals' interval needs of the customers, per distinct history: how
    many, the sum of their margin rates and of margin rate x mean spend; and the acquisition
    costs' total. Sums, so an engine can add them up where the customers are."""

    customers: np.ndarray
    margin: np.ndarray
    margin_spend: np.ndarray
    acquisition_cost: float


# The per-customer terms HistorySums adds up by history (an engine groups and sums them).
HISTORY_SUM_TERMS = ("margin", "margin_spend", "acquisition_cost")


def history_sum_terms(scorer: CustomerValueScorer, features: pd.DataFrame) -> pd.DataFrame:
    """Each customer's terms of :class:`HistorySums` (:data:`HISTORY_SUM_TERMS`), indexed like ``features``."""
    margin = _margin_rate(scorer, features).to_numpy()
    return pd.DataFrame({"margin": margin, "margin_spend": margin * features["monetary_value"].to_numpy(),
                         "acquisition_cost": _acquisition_cost(scorer, features).to_numpy()}, index=features.index)


def history_sums(histories: CustomerHistories, features: pd.DataFrame, terms: CustomerTerms) -> HistorySums:
    """:class:`HistorySums` of the customers ``histories`` groups (``features``: theirs)."""
    inverse, n_unique = histories.inverse, len(histories.counts)
    margin = terms.margin_rate.to_numpy()
    return HistorySums(
        customers=histories.counts.astype(np.float64),
        margin=np.bincount(inverse, weights=margin, minlength=n_unique),
        margin_spend=np.bincount(inverse, weights=margin * features["monetary_value"].to_numpy(), minlength=n_unique),
        acquisition_cost=float(terms.acquisition_cost.sum()),
    )


def company_history_figures(
    scorer: CustomerValueScorer, unique: pd.DataFrame, sums: HistorySums
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """:func:`history_figures` of the distinct histories ``unique`` (with the design columns of a
    covariate model) and the company totals' interval from the same parameter draws
    (:func:`company_interval`), in one pass.

    At draw k the company's predicted CLV is the sum over histories h of the value figure
    V_k(h) times sum over h's customers of margin x expected spend at draw k: Gamma-Gamma's
    expected spend is a line in the customer's mean spend (``models.uncertainty.SpendDraws``)
    whose intercept and slope depend on the history's frequency (and design), so that sum is
    intercept_k x (sum of margins) + slope_k x (sum of margin x mean spend): ``sums``. Minus
    the acquisition costs, which are known.
    """
    figures = history_figures(scorer, unique, intervals=False)
    if not (scorer.has_intervals and len(unique)):
        return figures, {"unavailable": scorer.intervals_unavailable or "no customers"}
    try:
        return _with_company_interval(scorer, unique, sums, figures)
    except ValueError as exc:
        # Intervals are a part a run can do without: the scorer drops its draws, so every later
        # scoring of this model leaves the columns empty too, and the summary says why.
        scorer.purchase_parameter_draws = scorer.spend_parameter_draws = None
        scorer.intervals_unavailable = str(exc).splitlines()[0]
        return figures, {"unavailable": scorer.intervals_unavailable}


def _with_company_interval(
    scorer: CustomerValueScorer, unique: pd.DataFrame, sums: HistorySums, figures: pd.DataFrame
) -> tuple[pd.DataFrame, dict[str, Any]]:
    design = scorer.design_columns
    spend_covariates = list(getattr(scorer.spend_model, "covariates_", ()))
    if any(name not in design for name in spend_covariates):
        # Not a configuration the pipeline makes (both models take the same covariates).
        raise ValueError(f"the spend model's covariates {spend_covariates} are not among the histories' design columns")
    # Any mean spend gives a history's line (the intercept and slope depend on its frequency and design).
    probes = unique.assign(monetary_value=np.where(unique["frequency"] > 0, 1.0, 0.0))
    lines = spend_draws(scorer.spend_model, scorer.spend_parameter_draws, probes)
    point = spend_draws(scorer.spend_model, point_parameters(scorer.spend_model), probes)
    margin_sums, margin_spend_sums = sums.margin, sums.margin_spend

    def value_weights(draw: int | None, rows: slice) -> np.ndarray:
        at = point if draw is None else lines
        k = 0 if draw is None else draw
        group = at.group[rows]
        return at.intercept[k, group] * margin_sums[rows] + at.slope[k, group] * margin_spend_sums[rows]

    grouped = group_histories(unique, covariates=design)
    bounds, totals = history_interval_figures(scorer, grouped, figures, True, sums.customers, value_weights)
    figures = figures.assign(**{str(name): values.to_numpy() for name, values in bounds.items()})
    assert totals is not None
    return figures, company_interval(totals, sums.acquisition_cost, scorer.interval_level)


def company_interval(totals: pd.DataFrame, acquisition_cost_total: float, level: float) -> dict[str, Any]:
    """``summary.json``'s ``value.intervals``: the quantiles over the draws of the company's
    predicted CLV (``totals["value"]`` less the acquisition costs) and expected purchases."""
    probabilities = [(1.0 - level) / 2.0, (1.0 + level) / 2.0]
    # A draw where some history's figures do not evaluate (a tail draw; its sums are NaN) leaves.
    usable = totals[np.isfinite(totals).all(axis=1)]
    if len(usable) < 0.9 * len(totals):
        return {"unavailable": f"the models' figures are not finite for some customer at {len(totals) - len(usable)} "
                               f"of {len(totals)} parameter draws"}
    clv = np.quantile(usable["value"].to_numpy() - acquisition_cost_total, probabilities)
    purchases = np.quantile(usable["expected_purchases"].to_numpy(), probabilities)
    return {"level": float(level), "draws": len(usable),
            "predicted_clv_total": {"lower": float(clv[0]), "upper": float(clv[1])},
            "expected_purchases_total": {"lower": float(purchases[0]), "upper": float(purchases[1])}}


def tier_table(customers: pd.DataFrame, scorer: CustomerValueScorer) -> pd.DataFrame:
    """Customers, predicted and historical CLV per tier, in the scorer's tier order."""
    tiers_frame = customers[["tier", "action"]].assign(
        tier=pd.Categorical(customers["tier"], categories=scorer.tier_names, ordered=True)
    )
    return tier_summary(customers["predicted_clv"], tiers_frame, historical=customers["historical_clv"])


def tier_table_partial(customers: pd.DataFrame, scorer: CustomerValueScorer) -> dict[str, Any]:
    """:func:`tier_table`'s sums over a batch of customers (``models.tiers.tier_partial``)."""
    tiers_frame = customers[["tier", "action"]].assign(
        tier=pd.Categorical(customers["tier"], categories=scorer.tier_names, ordered=True)
    )
    return tier_partial(customers["predicted_clv"], tiers_frame, historical=customers["historical_clv"])


def tier_table_of_partials(partials: list[dict[str, Any]], scorer: CustomerValueScorer) -> pd.DataFrame:
    """:func:`tier_table` from the :func:`tier_table_partial` of batches that make up the customers."""
    return finish_tier_summary(merge_tier_partials(partials), dict(zip(scorer.tier_names, scorer.tier_actions)))


# The per-customer columns value_summary reduces to sums: each one's sum and count (pandas'
# mean skips missing values, so the count is of the values present).
SUMMED_COLUMNS = ("predicted_clv", "historical_clv", "probability_alive", "expected_purchases", "dert",
                  "clv_horizon", "clv_lifetime", "historical_clv_horizon", "realised_margin")
# The like-for-like pairs summed per tier and, where customers carry it, per first channel.
LIKE_FOR_LIKE_COLUMNS = ("clv_horizon", "historical_clv_horizon", "clv_lifetime", "realised_margin", "historical_clv")


def value_partial(customers: pd.DataFrame) -> dict[str, float]:
    """The sums and counts :func:`value_summary` needs, of any batch of customers.

    Parameters
    ----------
    customers : pandas.DataFrame
        The batch's rows of the value stage's customers table (the columns of
        :data:`SUMMED_COLUMNS` are read).

    Returns
    -------
    dict
        ``customers`` and, for each column of :data:`SUMMED_COLUMNS`, ``<column>_sum`` (float,
        missing values skipped) and ``<column>_count`` (int, values present). Partials of batches
        merge by :func:`pipeline.stages.partials.merge_partials` (a batch of no customers is the
        identity) and end in :func:`finish_value_summary`.
    """
    partial: dict[str, Any] = {"customers": len(customers)}
    for column in SUMMED_COLUMNS:
        values = customers[column]
        partial[f"{column}_sum"] = float(values.sum())
        partial[f"{column}_count"] = int(values.count())
    partial["by_tier"] = _grouped_sums(customers, "tier")
    if "first_channel" in customers.columns:
        partial["by_channel"] = _grouped_sums(customers, "first_channel")
    return partial


def _grouped_sums(customers: pd.DataFrame, by: str) -> GroupedSums:
    return grouped_sums(customers[by], {name: customers[name] for name in LIKE_FOR_LIKE_COLUMNS})


def like_for_like(sums: dict[str, float]) -> dict[str, Any]:
    """The two like-for-like comparisons of predicted and historical CLV, as means per customer
    from summed columns (a company's, a tier's or a channel's): over the horizon (predicted
    horizon CLV vs the business formula over the same horizon) and over a whole lifetime (margin
    realised to date + predicted lifetime value vs the formula over the estimated lifespan)."""
    count = sums["customers"]

    def mean(name: str) -> float:
        return sums[name] / count if count else float("nan")

    horizon = {"predicted_mean": mean("clv_horizon"), "historical_mean": mean("historical_clv_horizon")}
    lifetime = {"predicted_mean": mean("realised_margin") + mean("clv_lifetime"),
                "historical_mean": mean("historical_clv")}
    for pair in (horizon, lifetime):
        pair["difference_mean"] = pair["predicted_mean"] - pair["historical_mean"]
    return {"customers": int(count), "horizon": horizon, "lifetime": lifetime}


def value_order_statistics(customers: pd.DataFrame, seed: int = 0, drawn_from: int | None = None) -> dict[str, float]:
    """The figures of :func:`value_summary` that are not sums, from every customer's columns.

    Each needs the whole columns, or an estimate from a sample or approximate quantiles:

    * ``predicted_clv_median``, ``historical_clv_customer_median``: the median of
      ``predicted_clv`` (``historical_clv``), missing values skipped, the mean of the two middle
      values for an even count (``pandas.Series.median``); an engine may supply the 0.5 quantile
      from approximate quantiles.
    * ``predicted_historical_spearman``: Spearman's rho of predicted and historical CLV:
      on the customers :func:`pipeline.stages.backtest.rank_sample` keeps (above its
      ``RANK_SAMPLE`` customers, a sample chosen by id), so an engine may pass only the
      sample's rows, with ``drawn_from`` the number of customers they were drawn from.
    """
    predicted = customers["predicted_clv"]
    historical = customers["historical_clv"]
    sample = rank_sample(customer_ids(customers), len(customers) if drawn_from is None else drawn_from, seed)
    return {
        "predicted_clv_median": float(predicted.median()),
        "historical_clv_customer_median": float(historical.median()),
        "predicted_historical_spearman": rank_correlation(predicted.to_numpy()[sample], historical.to_numpy()[sample]),
    }


def _mean(partial: dict[str, Any], column: str) -> float:
    # pandas' mean is its sum divided by the count: the same bits when the sum is the whole column's.
    count = partial[f"{column}_count"]
    return partial[f"{column}_sum"] / count if count else float("nan")


def finish_value_summary(
    partial: dict[str, Any], order_statistics: dict[str, float], historical: HistoricalCLV, tiers: pd.DataFrame
) -> dict[str, Any]:
    """The :func:`value_summary` of merged :func:`value_partial` sums, the
    :func:`value_order_statistics` of the same customers, the company's historical CLV and the
    tier table (:func:`tier_table`, or ``models.tiers.finish_tier_summary`` of merged partials)."""
    predicted_mean = _mean(partial, "predicted_clv")
    historical_mean = _mean(partial, "historical_clv")
    company = {"customers": partial["customers"],
               **{column: partial[f"{column}_sum"] for column in LIKE_FOR_LIKE_COLUMNS}}
    comparisons = {
        "company": like_for_like(company),
        # In the tier table's order, not the groups' sorted one.
        "by_tier": {str(tier): like_for_like(partial["by_tier"][str(tier)])
                    for tier in [*tiers.index, *sorted(set(partial["by_tier"]) - {str(t) for t in tiers.index})]
                    if str(tier) in partial["by_tier"]},
    }
    if "by_channel" in partial:
        comparisons["by_channel"] = {channel: like_for_like(sums) for channel, sums in partial["by_channel"].items()}
    return {
        "customers": int(partial["customers"]),
        "predicted_clv_total": float(partial["predicted_clv_sum"]),
        "predicted_clv_mean": predicted_mean,
        "predicted_clv_median": float(order_statistics["predicted_clv_median"]),
        "historical_clv_company": float(historical.clv),
        "historical_clv_customer_mean": historical_mean,
        "historical_clv_customer_median": float(order_statistics["historical_clv_customer_median"]),
        "predicted_minus_historical_mean": predicted_mean - historical_mean,
        "predicted_historical_spearman": float(order_statistics["predicted_historical_spearman"]),
        "historical_method": historical.method,
        "historical_lifespan_years": float(historical.lifespan_years),
        "historical_churn_rate_annual": float(historical.churn_rate_annual),
        "historical_average_purchase_value": float(historical.average_purchase_value),
        "historical_purchases_per_year": float(historical.purchases_per_year),
        "mean_probability_alive": _mean(partial, "probability_alive"),
        "expected_purchases_total": float(partial["expected_purchases_sum"]),
        "clv_horizon_total": float(partial["clv_horizon_sum"]),
        "clv_lifetime_total": float(partial["clv_lifetime_sum"]),
        "clv_lifetime_mean": _mean(partial, "clv_lifetime"),
        "dert_mean": _mean(partial, "dert"),
        "like_for_like": comparisons,
        "tiers": {
            str(name): {key: (float(v) if isinstance(v, (int, float, np.floating, np.integer)) else str(v)) for key, v in row.items()}
            for name, row in tiers.iterrows()
        },
    }


def value_summary(customers: pd.DataFrame, historical: HistoricalCLV, tiers: pd.DataFrame,
                  seed: int = 0) -> dict[str, Any]:
    """Predicted vs historical CLV, side by side, and the tiers (:func:`tier_table`); ``seed``:
    the sample their rank correlation is estimated on at scale (see
    :func:`pipeline.stages.backtest.rank_sample`).

    The whole table's :func:`value_partial` finished with its exact
    :func:`value_order_statistics`: the formulas an engine that reduces batches goes through.
    """
    return finish_value_summary(value_partial(customers), value_order_statistics(customers, seed), historical, tiers)


def _with_channel(customers: pd.DataFrame, features: pd.DataFrame) -> pd.DataFrame:
    # The summary compares predicted and historical CLV per first channel where the log has one.
    if "first_channel" not in features.columns:
        return customers
    return customers.assign(first_channel=features["first_channel"].to_numpy())


@dataclasses.dataclass
class ValueOutputs:
    """The value stage's result: the frozen scorer, the customers' figures (the features'
    history columns, then :data:`SCORE_COLUMNS`), the tier table, the summary, and the extent
    of the histories (for the P(alive) matrix plot).

    ``customers`` is every customer on one machine; the Spark engine, whose customers stay on
    the cluster (``customers.parquet`` written there), holds a seeded sample of them here, for
    the CLV distribution plot.
    """

    scorer: CustomerValueScorer
    customers: pd.DataFrame
    tier_table: pd.DataFrame
    summary: dict[str, Any]
    max_frequency: float
    max_age: float


def value_stage(features: pd.DataFrame, fit: Any, config: Any, histories: CustomerHistories | None = None) -> ValueOutputs:
    """Value every customer of ``features`` (positional rows, ``customer_id`` a column) with
    the fit stage's models (:class:`pipeline.stages.fit.FitOutputs`) and a run's settings.

    ``histories``: ``features`` grouped (``models.group_histories``), when the caller has them;
    dropped once the customers are scored, so a caller that hands over its only reference has
    them freed before the summaries (8 bytes a customer: 144 MB at 18M).
    """
    scorer, historical, scores, company = build_scorer(
        features, fit.purchase_model, fit.selected, fit.spend_model, config.value, config.segments,
        config.features.period, histories, fit.covariates,
        None if fit.covariate_encoder is None else fit.covariate_encoder.to_dict(), config.seed,
    )
    del histories
    # Rows of ``scores`` are those of ``features`` in order.
    customers = pd.concat([features[["customer_id", "frequency", "recency", "T", "monetary_value"]], scores], axis=1)
    tiers = tier_table(customers, scorer)
    summary = value_summary(_with_channel(customers, features), historical, tiers, config.seed)
    summary["intervals"] = company
    summary["new_customer"] = new_customer_summary(
        scorer, acquisition_partial(features, scores["margin_rate"], scores["acquisition_cost"])
    )
    return ValueOutputs(scorer=scorer, customers=customers, tier_table=tiers, summary=summary,
                        max_frequency=float(customers["frequency"].max()), max_age=float(customers["T"].max()))


def new_customer_summary(scorer: CustomerValueScorer, sums: dict[str, dict[str, float]]) -> dict[str, Any]:
    """``summary.json``'s ``value.new_customer``: :func:`pipeline.stages.acquisition.new_customer_value`
    per group, and a warning line for each group whose new customer does not pay back its cost."""
    with value_errors():
        table = new_customer_value(scorer, sums)
    return {"groups": {str(group): {key: (int(value) if key == "customers" else float(value))
                                    for key, value in row.items()} for group, row in table.iterrows()},
            "warnings": unprofitable_groups(table)}
