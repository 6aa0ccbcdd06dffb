"""Backtest stage: predict the holdout from calibration-period models and score the predictions.

Pure functions of tables; the naive baseline (the business formula's historical rates projected
over the holdout) is scored with the same metrics so every run says how much the models add.

Beyond the errors, every row says how the model's probability of at least one purchase in the
holdout scores against what happened (Brier, log loss: P(alive) itself is never observed, this
is), how much realised value its ranking captures (normalised Gini, with equal predictions
ranked as a block), Spearman's rho without the customers who never repeated (among whom the
models' order is nearly noise, and the baseline's tie a free advantage: see the README), and the
holdout's purchases by calibration frequency against the model's conditional expectations. The
tables behind the plots (reliability, value by decile, the gains curve) are
:func:`holdout_tables`.

The metrics are mergeable (:mod:`pipeline.stages.partials`): :func:`holdout_partial` of any batch
of customers, merged, then :func:`finish_holdout_metrics` with the
:func:`holdout_order_statistics` (rank correlations, top decile); :func:`holdout_metrics` is that
on the whole table.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
import pandas as pd
from scipy.stats import rankdata

from models import CustomerHistories
from models.diagnostics import (
    LARGEST_BIN,
    conditional_expectation_test,
    decile_groups,
    gains_curve,
    gini_coefficient,
    normalized_gini,
    probability_score_sums,
    probability_scores_from_sums,
    purchase_count_bins,
    reliability_table,
)

TOP_SHARE = 0.10
# Spearman's rho needs two full sorts; on tens of millions of customers a seeded sample of
# about this size estimates it to about ±0.001 in a fraction of the time.
RANK_SAMPLE = 1_000_000


def rank_sample(customer_ids: Any, customers: int, seed: int = 0) -> np.ndarray:
    """Which of these customers Spearman's rho is estimated on (a boolean mask).

    Every customer up to :data:`RANK_SAMPLE` customers in all (``customers``); above, those
    whose id, hashed with ``seed``, falls in the lowest ``RANK_SAMPLE / customers`` of the hash
    range: about :data:`RANK_SAMPLE` customers, chosen by id alone. So an engine that sees the
    customers a batch at a time draws the same sample as one that holds them all, and the
    DuckDB and Spark engines report the same figure. Integer ids hash by value (whatever their
    width), any other id by its text.
    """
    ids = pd.Series(customer_ids)
    if customers <= RANK_SAMPLE:
        return np.ones(len(ids), dtype=bool)
    if pd.api.types.is_integer_dtype(ids.dtype):
        values = ids.to_numpy(dtype=np.int64)
    else:
        values = ids.astype(str).to_numpy(dtype=object)
    # pandas' hash is fixed across processes and versions' releases of the same algorithm
    # (SipHash for text, a 64-bit mixer for integers); the seed is mixed in by a second pass.
    salt = pd.util.hash_array(np.array([seed], dtype=np.int64))[0]
    hashed = pd.util.hash_array(pd.util.hash_array(values) ^ salt)
    return hashed < np.uint64(int(RANK_SAMPLE / customers * 2.0**64))


def ranks(values: np.ndarray) -> np.ndarray:
    """Average ranks (ties share the mean of their positions), the ranks Spearman's rho correlates."""
    return rankdata(np.asarray(values, dtype=float))


def rank_correlation(first: np.ndarray, second: np.ndarray, first_ranks: np.ndarray | None = None) -> float:
    """Spearman's rho of two columns (NaN for fewer than two rows, or where a column is constant);
    see :func:`rank_sample` for the rows it is given at scale.

    ``first_ranks``: :func:`ranks` of ``first``, when the caller correlates one column with
    several (the holdout's actual purchases with every candidate's predictions): ranking is a
    sort, most of the cost.
    """
    first, second = np.asarray(first, dtype=float), np.asarray(second, dtype=float)
    if len(first) < 2:
        return float("nan")
    if first_ranks is None:
        first_ranks = ranks(first)
    # Pearson's r of the average ranks: Spearman's rho with ties, as scipy's spearmanr computes it.
    with np.errstate(invalid="ignore", divide="ignore"):
        return float(np.corrcoef(first_ranks, ranks(second))[0, 1])


def customer_ids(table: pd.DataFrame) -> pd.Series | pd.Index:
    """A customers table's ids: its ``customer_id`` column, or its index."""
    return table["customer_id"] if "customer_id" in table.columns else table.index


# Lower is better for every selection metric; the total error is compared in absolute value.
SELECTION_KEYS = {
    "purchases_rmse": "purchases_rmse",
    "purchases_mae": "purchases_mae",
    "total_purchases_error": "purchases_total_error_pct",
    "revenue_rmse": "revenue_rmse",
    "revenue_mae": "revenue_mae",
}


class _HoldoutColumns(NamedTuple):
    customer_ids: Any
    actual_purchases: np.ndarray
    predicted_purchases: np.ndarray
    actual_revenue: np.ndarray
    predicted_revenue: np.ndarray
    predicted_spend: np.ndarray | None
    # Each customer's calibration frequency group (frequency_groups), when the table has the
    # frequency: the groups of the conditional-expectation test; group 0 never repeated.
    frequency_group: np.ndarray | None = None
    # P(at least one purchase in the holdout), when the predictions come with it.
    predicted_probability: np.ndarray | None = None


def _holdout_columns(
    calibration: pd.DataFrame, predicted_purchases: pd.Series, predicted_revenue: pd.Series,
    predicted_spend: pd.Series | None, predicted_probability: pd.Series | None = None,
    groups: np.ndarray | None = None,
) -> _HoldoutColumns:
    index = calibration.index
    if groups is None and "frequency" in calibration.columns:
        groups = frequency_groups(calibration["frequency"].to_numpy(dtype=float))

    def column(values: pd.Series | None) -> np.ndarray | None:
        return None if values is None else values.reindex(index).to_numpy(dtype=float)

    return _HoldoutColumns(
        customer_ids(calibration),
        calibration["frequency_holdout"].to_numpy(dtype=float),
        predicted_purchases.reindex(index).to_numpy(dtype=float),
        calibration["revenue_holdout"].to_numpy(dtype=float),
        predicted_revenue.reindex(index).to_numpy(dtype=float),
        column(predicted_spend),
        groups,
        column(predicted_probability),
    )


def frequency_groups(calibration_frequency: np.ndarray) -> np.ndarray:
    """Each customer's group by calibration repeat purchases: 0, 1, ..., 7 for 7 or more
    (the bins of the calibration histogram, of the calibration-vs-holdout plot and of the
    conditional-expectation test)."""
    return purchase_count_bins(calibration_frequency, LARGEST_BIN)


def _error_sums(actual: np.ndarray, predicted: np.ndarray, prefix: str) -> dict[str, float]:
    difference = predicted - actual
    sums = {f"{prefix}_actual_sum": float(actual.sum()), f"{prefix}_predicted_sum": float(predicted.sum())}
    # In place: at 18M customers each temporary is 144 MB, at the run's memory peak.
    sums[f"{prefix}_absolute_error_sum"] = float(np.abs(difference, out=difference).sum())
    sums[f"{prefix}_squared_error_sum"] = float(np.square(difference, out=difference).sum())
    return sums


def _partial(columns: _HoldoutColumns) -> dict[str, Any]:
    partial: dict[str, Any] = {"customers": len(columns.actual_purchases)}
    partial |= _error_sums(columns.actual_purchases, columns.predicted_purchases, "purchases")
    partial |= _error_sums(columns.actual_revenue, columns.predicted_revenue, "revenue")
    if columns.predicted_spend is not None:
        buyers = columns.actual_purchases > 0
        actual_spend = columns.actual_revenue[buyers] / columns.actual_purchases[buyers]
        spend_error = columns.predicted_spend[buyers] - actual_spend
        partial["spend_customers"] = int(buyers.sum())
        partial["spend_absolute_error_sum"] = float(np.abs(spend_error).sum())
        partial["spend_squared_error_sum"] = float((spend_error**2).sum())
    if columns.frequency_group is not None:
        # Arrays of the LARGEST_BIN + 1 groups: they add elementwise when partials merge.
        groups = columns.frequency_group
        partial["by_frequency_actual_sum"] = np.bincount(groups, columns.actual_purchases, LARGEST_BIN + 1)
        partial["by_frequency_predicted_sum"] = np.bincount(groups, columns.predicted_purchases, LARGEST_BIN + 1)
    if columns.predicted_probability is not None:
        sums = probability_score_sums(columns.predicted_probability, columns.actual_purchases > 0)
        partial |= {f"any_purchase_{key}": value for key, value in sums.items()}
    return partial


def holdout_partial(
    calibration: pd.DataFrame,
    predicted_purchases: pd.Series,
    predicted_revenue: pd.Series,
    predicted_spend: pd.Series | None = None,
    predicted_probability: pd.Series | None = None,
) -> dict[str, float]:
    """The sums and counts :func:`holdout_metrics` needs, of any batch of customers.

    Partials of batches merge by :func:`pipeline.stages.partials.merge_partials` (a batch of no
    customers is the identity) and end in :func:`finish_holdout_metrics`.

    Parameters
    ----------
    calibration, predicted_purchases, predicted_revenue, predicted_spend
        As :func:`holdout_metrics`, for the batch's customers.

    Returns
    -------
    dict
        ``customers``; for ``purchases`` and ``revenue``: ``*_actual_sum``,
        ``*_predicted_sum``, ``*_absolute_error_sum`` and ``*_squared_error_sum``; with
        ``predicted_spend``: ``spend_customers`` (holdout buyers), ``spend_absolute_error_sum``,
        ``spend_squared_error_sum``; with a ``frequency`` column, ``by_frequency_actual_sum`` and
        ``by_frequency_predicted_sum`` (arrays, one per :func:`frequency_groups` group); with
        ``predicted_probability``, the ``any_purchase_*`` sums of
        :func:`models.diagnostics.probability_score_sums`. Counts are ints, sums floats.
    """
    return _partial(_holdout_columns(calibration, predicted_purchases, predicted_revenue, predicted_spend,
                                     predicted_probability))


_KINDS = ("purchases", "revenue")
_SUBSETS = ("repeat_customers", "one_time_customers")


class HoldoutActuals(NamedTuple):
    """What every model's holdout figures share, computed once per backtest
    (:func:`holdout_actuals`) instead of once per candidate: which customers the rank figures
    are estimated on (``sample``), their actual holdout purchases and revenue (``actual``, by
    kind) and those figures' ranks, over the sample and within its repeat and one-time
    customers (``subset_ranks``), the best possible Gini of each kind (``best_gini``), and every
    customer's calibration frequency group (``frequency_group``, None without a frequency
    column; then ``repeated`` and ``subset_ranks`` are None and empty)."""

    sample: np.ndarray
    purchases_ranks: np.ndarray
    revenue_ranks: np.ndarray
    actual: dict[str, np.ndarray]
    best_gini: dict[str, float]
    best_gains: np.ndarray
    frequency_group: np.ndarray | None
    repeated: np.ndarray | None
    subset_ranks: dict[tuple[str, str], np.ndarray]


def holdout_actuals(calibration: pd.DataFrame, seed: int = 0, drawn_from: int | None = None) -> HoldoutActuals:
    """The :class:`HoldoutActuals` of a calibration table's customers (``seed``, ``drawn_from``:
    see :func:`holdout_order_statistics`)."""
    groups = (frequency_groups(calibration["frequency"].to_numpy(dtype=float))
              if "frequency" in calibration.columns else None)
    return _actuals(customer_ids(calibration), calibration["frequency_holdout"].to_numpy(dtype=float),
                    calibration["revenue_holdout"].to_numpy(dtype=float), seed, drawn_from, groups)


def _subsets(repeated: np.ndarray) -> dict[str, np.ndarray]:
    return {"repeat_customers": repeated, "one_time_customers": ~repeated}


def _actuals(ids: Any, actual_purchases: np.ndarray, actual_revenue: np.ndarray, seed: int,
             drawn_from: int | None, groups: np.ndarray | None = None) -> HoldoutActuals:
    customers = len(actual_purchases) if drawn_from is None else drawn_from
    sample = rank_sample(ids, customers, seed)
    actual = {"purchases": actual_purchases[sample], "revenue": actual_revenue[sample]}
    best = {kind: (gini_coefficient(values, values) if len(values) else float("nan")) for kind, values in actual.items()}
    best_gains = gains_at_shares(actual["revenue"], actual["revenue"]) if len(sample) and sample.any() else np.zeros(0)
    repeated = None if groups is None else groups[sample] > 0
    subset_ranks = {} if repeated is None else {
        (kind, who): ranks(actual[kind][rows]) for who, rows in _subsets(repeated).items() for kind in _KINDS}
    return HoldoutActuals(sample, ranks(actual["purchases"]), ranks(actual["revenue"]), actual, best, best_gains,
                          groups, repeated, subset_ranks)


def _order_statistics(columns: _HoldoutColumns, seed: int, drawn_from: int | None = None,
                      actuals: HoldoutActuals | None = None) -> dict[str, float]:
    if actuals is None:
        actuals = _actuals(columns.customer_ids, columns.actual_purchases, columns.actual_revenue, seed, drawn_from,
                           columns.frequency_group)
    sample = actuals.sample
    # Each column indexed by the sample once: a masked copy of 18M rows costs 50 ms.
    actual = actuals.actual
    predicted = {"purchases": columns.predicted_purchases[sample], "revenue": columns.predicted_revenue[sample]}
    statistics = {
        "purchases_spearman": rank_correlation(actual["purchases"], predicted["purchases"], actuals.purchases_ranks),
        "revenue_spearman": rank_correlation(actual["revenue"], predicted["revenue"], actuals.revenue_ranks),
        "top_decile_revenue_capture": top_share_capture(columns.actual_revenue, columns.predicted_revenue),
    }
    if len(actual["purchases"]):
        # The Gini ranks equal predictions as a block (the mean over their orders): unlike
        # Spearman's average ranks, a spread that carries no information neither helps nor hurts.
        for kind in _KINDS:
            statistics[f"{kind}_gini"] = normalized_gini(predicted[kind], actual[kind], actuals.best_gini[kind])
    if actuals.repeated is not None:
        for who, rows in _subsets(actuals.repeated).items():
            for kind in _KINDS:
                statistics[f"{kind}_spearman_{who}"] = rank_correlation(  # NaN if all tied
                    actual[kind][rows], predicted[kind][rows], actuals.subset_ranks[kind, who])
        repeated = actuals.repeated
        statistics["one_time_customer_share"] = float(np.mean(~repeated)) if len(repeated) else float("nan")
    return statistics


def holdout_order_statistics(
    calibration: pd.DataFrame, predicted_purchases: pd.Series, predicted_revenue: pd.Series, seed: int = 0,
    drawn_from: int | None = None, actuals: HoldoutActuals | None = None,
) -> dict[str, float]:
    """The figures of :func:`holdout_metrics` that are not sums, from every customer's columns.

    Each needs the whole columns, or an estimate from a sample or approximate quantiles:

    * ``purchases_spearman``, ``revenue_spearman``: Spearman's rho of actual and predicted
      purchases (revenue) in the holdout, on the customers :func:`rank_sample` keeps: every
      customer up to :data:`RANK_SAMPLE`, above that a sample chosen by id, so an engine may
      pass only the sample's rows, with ``drawn_from`` the number of customers they were drawn
      from.
    * ``top_decile_revenue_capture``: the share of actual holdout revenue held by the
      :data:`TOP_SHARE` of customers with the highest predicted revenue: :func:`top_share_capture`
      (exact, customers tied at the cut taken pro rata). It needs the predicted revenue of the
      ``top_share_count(customers)``-th customer from the top (the threshold) and the actual
      revenue above it and at it; with a threshold from approximate quantiles, an engine sums
      :func:`revenue_at_threshold` over batches and finishes with
      :func:`top_share_capture_from_sums`.

    ``actuals``: :func:`holdout_actuals` of the same rows, ``seed`` and ``drawn_from``, when
    several models' predictions are scored on them.
    """
    columns = _holdout_columns(calibration, predicted_purchases, predicted_revenue, None, None,
                               None if actuals is None else actuals.frequency_group)
    return _order_statistics(columns, seed, drawn_from, actuals)


def _mean(total: float, count: float) -> float:
    # numpy's mean is its sum divided by the count: the same bits when the sum is the whole array's.
    return total / count if count else float("nan")


# The holdout's purchases by calibration frequency against the conditional expectations.
HOLDOUT_TEST_KEYS = ("holdout_chi_square", "holdout_chi_square_dof", "holdout_chi_square_p_value")


def finish_holdout_metrics(partial: dict[str, float], order_statistics: dict[str, float]) -> dict[str, float]:
    """The figures of :func:`holdout_metrics` from merged :func:`holdout_partial` sums and the
    :func:`holdout_order_statistics` of the same customers."""
    customers = partial["customers"]
    metrics = {"customers": float(customers)}
    for prefix in ("purchases", "revenue"):
        total_actual = partial[f"{prefix}_actual_sum"]
        total_predicted = partial[f"{prefix}_predicted_sum"]
        metrics |= {
            f"{prefix}_mae": _mean(partial[f"{prefix}_absolute_error_sum"], customers),
            f"{prefix}_rmse": float(np.sqrt(_mean(partial[f"{prefix}_squared_error_sum"], customers))),
            f"{prefix}_total_actual": total_actual,
            f"{prefix}_total_predicted": total_predicted,
            f"{prefix}_total_error_pct": (
                100.0 * (total_predicted - total_actual) / total_actual if total_actual else float("nan")
            ),
            f"{prefix}_spearman": float(order_statistics[f"{prefix}_spearman"]),
        }
    metrics["top_decile_revenue_capture"] = float(order_statistics["top_decile_revenue_capture"])
    metrics |= {key: float(value) for key, value in order_statistics.items() if key not in metrics}
    if "by_frequency_actual_sum" in partial:
        try:
            test = conditional_expectation_test(partial["by_frequency_actual_sum"], partial["by_frequency_predicted_sum"])
            metrics |= dict(zip(HOLDOUT_TEST_KEYS, (test.statistic, float(test.degrees_of_freedom), test.p_value)))
        except ValueError:  # no group with an expected purchase
            metrics |= dict.fromkeys(HOLDOUT_TEST_KEYS, float("nan"))
    if "any_purchase_customers" in partial:
        scores = probability_scores_from_sums(
            {key.removeprefix("any_purchase_"): value for key, value in partial.items() if key.startswith("any_purchase_")})
        metrics |= {"any_purchase_brier": scores["brier"], "any_purchase_log_loss": scores["log_loss"],
                    "any_purchase_rate": scores["base_rate"]}
    if "spend_customers" in partial:
        buyers = partial["spend_customers"]
        metrics["spend_customers"] = float(buyers)
        metrics["spend_mae"] = _mean(partial["spend_absolute_error_sum"], buyers)
        metrics["spend_rmse"] = float(np.sqrt(_mean(partial["spend_squared_error_sum"], buyers)))
    return metrics


def top_share_count(customers: int, share: float = TOP_SHARE) -> int:
    """How many customers the top ``share`` of ``customers`` holds (at least one)."""
    return max(1, int(round(share * customers)))


def top_share_capture(actual_revenue: np.ndarray, predicted_value: np.ndarray, share: float = TOP_SHARE) -> float:
    """Share of actual holdout revenue that comes from the customers ranked in the predicted top ``share``.

    Exact, on every customer's values. Customers tied with the last one in the top (the
    ``top_share_count``-th largest prediction) are taken pro rata: each brings the same
    fraction of their revenue, the mean over every order of the ties. So the figure does not
    depend on how customers are numbered or partitioned, and an engine reducing batches
    (:func:`revenue_at_threshold`, :func:`top_share_capture_from_sums`) gets the same one.
    Many customers share one history, so ties are common: the naive baseline's predictions
    tie by the thousand at 18M customers.
    """
    if len(actual_revenue) == 0:
        return float("nan")
    count = top_share_count(len(actual_revenue), share)
    # The count-th largest value without sorting everyone (a stable argsort of 12M took 2.5 s).
    threshold = np.partition(predicted_value, len(predicted_value) - count)[len(predicted_value) - count]
    sums = revenue_at_threshold(actual_revenue, predicted_value, threshold)
    return top_share_capture_from_sums(sums, len(actual_revenue), float(actual_revenue.sum()), share)


def revenue_at_threshold(actual_revenue: np.ndarray, predicted_value: np.ndarray, threshold: float) -> dict[str, float]:
    """Customers and actual revenue above and at a predicted-value ``threshold``, of any batch.

    A partial for :func:`top_share_capture_from_sums` (merged by
    :func:`pipeline.stages.partials.merge_partials`): ``above_customers``, ``above_revenue``
    (predicted value above ``threshold``), ``tied_customers``, ``tied_revenue`` (equal to it).
    """
    above = predicted_value > threshold
    tied = predicted_value == threshold
    return {
        "above_customers": int(above.sum()),
        "above_revenue": float(actual_revenue[above].sum()),
        "tied_customers": int(tied.sum()),
        "tied_revenue": float(actual_revenue[tied].sum()),
    }


def top_share_capture_from_sums(
    sums: dict[str, float], customers: int, total_revenue: float, share: float = TOP_SHARE
) -> float:
    """:func:`top_share_capture` from a threshold's merged :func:`revenue_at_threshold` sums.

    The customers at the threshold are taken pro rata (each tied customer counts for the same
    fraction of their revenue: the mean over random tie breaks). With the exact threshold (the
    ``top_share_count(customers, share)``-th largest predicted value) this is
    :func:`top_share_capture`; with an approximate one, the customers above it stand for the
    top ``share``, however many they are.
    """
    if total_revenue == 0 or customers == 0:
        return float("nan")
    tied = sums["tied_customers"]
    taken = min(max(top_share_count(customers, share) - sums["above_customers"], 0), tied)
    from_tied = sums["tied_revenue"] * taken / tied if tied else 0.0
    return float((sums["above_revenue"] + from_tied) / total_revenue)


def holdout_metrics(
    calibration: pd.DataFrame,
    predicted_purchases: pd.Series,
    predicted_revenue: pd.Series,
    predicted_spend: pd.Series | None = None,
    seed: int = 0,
    actuals: HoldoutActuals | None = None,
    predicted_probability: pd.Series | None = None,
) -> dict[str, float]:
    """Per-customer and aggregate errors of holdout predictions.

    The whole table's :func:`holdout_partial` finished with its exact
    :func:`holdout_order_statistics`: the formulas an engine that reduces batches goes through.

    Parameters
    ----------
    calibration : DataFrame
        Calibration features with ``frequency_holdout`` (repeat purchase periods in the holdout)
        and ``revenue_holdout`` (holdout spend).
    predicted_purchases, predicted_revenue : Series
        Predictions for the holdout, indexed like ``calibration``.
    predicted_spend : Series, optional
        Expected spend per purchase; scored against the holdout's mean period total
        (``revenue_holdout / frequency_holdout``) among customers who bought in the holdout.
    seed : int
        Seeds the sample Spearman's rho is estimated on at scale (:func:`rank_sample`; the
        pipeline passes the config's ``seed``).
    actuals : HoldoutActuals, optional
        :func:`holdout_actuals` of ``calibration`` with the same ``seed``, when several models
        are scored on it.
    predicted_probability : Series, optional
        Probability of at least one purchase in the holdout: scored by Brier and log loss.
    """
    columns = _holdout_columns(calibration, predicted_purchases, predicted_revenue, predicted_spend,
                               predicted_probability, None if actuals is None else actuals.frequency_group)
    order_statistics = _order_statistics(columns, seed, actuals=actuals)
    return finish_holdout_metrics(_partial(columns), order_statistics)


class HoldoutPredictions(NamedTuple):
    """One model's predictions of every calibration customer's holdout."""

    purchases: pd.Series
    revenue: pd.Series
    spend: pd.Series | None
    probability_any_purchase: pd.Series | None


def model_holdout_predictions(
    calibration: pd.DataFrame, purchase_model: Any, spend_model: Any, histories: CustomerHistories | None = None,
    expected_spend: pd.Series | None = None,
) -> HoldoutPredictions:
    """A purchase model's (with the spend model's) predictions of the holdout; arguments as
    :func:`backtest_model`."""
    horizon = float(calibration["duration_holdout"].iloc[0])
    customers = calibration if histories is None else histories
    purchases = purchase_model.expected_purchases(customers, horizon)
    spend = spend_model.expected_spend(calibration) if expected_spend is None else expected_spend
    # Per distinct history, as the expectation: the observable stand-in for P(alive).
    probability = 1.0 - purchase_model.probability_of_purchases(customers, 0, horizon)
    return HoldoutPredictions(purchases, purchases * spend, spend, probability.clip(0.0, 1.0))


def naive_holdout_predictions(calibration: pd.DataFrame) -> HoldoutPredictions:
    """The naive baseline's predictions of the holdout (:func:`models.historical.naive_holdout_forecast`)."""
    from models.historical import naive_holdout_forecast

    naive = naive_holdout_forecast(calibration, float(calibration["duration_holdout"].iloc[0]))
    return HoldoutPredictions(naive["predicted_purchases"], naive["predicted_revenue"], None,
                              naive["probability_any_purchase"])


def backtest_model(
    calibration: pd.DataFrame, purchase_model: Any, spend_model: Any, histories: CustomerHistories | None = None,
    seed: int = 0, expected_spend: pd.Series | None = None, actuals: HoldoutActuals | None = None,
) -> dict[str, float]:
    """Metrics of a purchase model (with the spend model) fitted on ``calibration``.

    ``histories``: ``calibration`` grouped (``models.group_histories``), when the caller has
    them; ``seed``, ``actuals``: see :func:`holdout_metrics`; ``expected_spend``: the spend
    model's ``expected_spend(calibration)``, when the caller scores several purchase models
    with one spend model.
    """
    predictions = model_holdout_predictions(calibration, purchase_model, spend_model, histories, expected_spend)
    return scored_predictions(calibration, predictions, seed, actuals)


def scored_predictions(calibration: pd.DataFrame, predictions: HoldoutPredictions, seed: int = 0,
                       actuals: HoldoutActuals | None = None) -> dict[str, float]:
    """:func:`holdout_metrics` of one model's :class:`HoldoutPredictions`."""
    return holdout_metrics(calibration, predictions.purchases, predictions.revenue, predictions.spend, seed=seed,
                           actuals=actuals, predicted_probability=predictions.probability_any_purchase)


# How many points of the gains curve a run keeps (a straight line between them): the curve has
# a point per distinct prediction, up to one per customer.
GAINS_POINTS = 101
GAINS_SHARES = np.linspace(0.0, 1.0, GAINS_POINTS)


def gains_at_shares(order_by: np.ndarray, realised: np.ndarray) -> np.ndarray:
    """The gains curve of ``realised`` ranked by ``order_by`` at :data:`GAINS_SHARES`."""
    curve = gains_curve(order_by, realised)
    return np.interp(GAINS_SHARES, curve["customers_share"], curve["value_share"])


def holdout_tables(
    calibration: pd.DataFrame, predicted_revenue: pd.Series, predicted_probability: pd.Series | None,
    seed: int = 0, drawn_from: int | None = None, actuals: HoldoutActuals | None = None,
) -> dict[str, pd.DataFrame]:
    """The tables behind the diagnostic plots, from the customers :func:`rank_sample` keeps
    (every customer up to :data:`RANK_SAMPLE`; an engine may pass only those rows, with
    ``drawn_from`` the customers they were drawn from).

    * ``revenue_deciles``: per decile of predicted holdout revenue (highest last; equal
      predictions in one decile), the customers and their mean predicted and realised revenue.
    * ``gains``: the share of realised revenue held by the top share of customers ranked by
      the prediction (``value_share``; ties as a block) and by the realised revenue itself
      (``best_value_share``), at :data:`GAINS_POINTS` evenly spaced shares.
    * ``reliability`` (with ``predicted_probability``): per decile of P(at least one purchase
      in the holdout), the mean prediction and the share who did buy.

    ``actuals``: :func:`holdout_actuals` of ``calibration`` (same ``seed`` and ``drawn_from``),
    when the caller tables several models' predictions.
    """
    if actuals is None:
        actuals = holdout_actuals(calibration, seed, drawn_from)
    sample = actuals.sample
    realised = actuals.actual["revenue"]
    predicted = predicted_revenue.reindex(calibration.index).to_numpy(dtype=float)[sample]
    tables: dict[str, pd.DataFrame] = {}
    if len(realised) == 0:
        return tables
    deciles = pd.DataFrame({"decile": decile_groups(predicted) + 1, "predicted": predicted, "realised": realised})
    tables["revenue_deciles"] = deciles.groupby("decile").agg(
        customers=("realised", "size"), mean_predicted=("predicted", "mean"), mean_realised=("realised", "mean"),
    ).reset_index()
    # best_value_share: the customers ranked by what they did spend, the curve no model can beat.
    tables["gains"] = pd.DataFrame({"customers_share": GAINS_SHARES, "value_share": gains_at_shares(predicted, realised),
                                    "best_value_share": actuals.best_gains})
    if predicted_probability is not None:
        probability = predicted_probability.reindex(calibration.index).to_numpy(dtype=float)[sample]
        reliability = reliability_table(probability, actuals.actual["purchases"] > 0)
        tables["reliability"] = reliability.reset_index().assign(group=lambda t: t["group"] + 1).rename(
            columns={"group": "decile"})
    return tables


def rank_models(metrics_by_model: dict[str, dict[str, float]], metric: str) -> list[str]:
    """Candidates from best to worst on holdout ``metric`` (ties and non-finite scores keep the
    candidates' order, non-finite ones last)."""
    key = SELECTION_KEYS[metric]
    scores = {name: abs(values[key]) for name, values in metrics_by_model.items()}
    return sorted(scores, key=lambda name: (not np.isfinite(scores[name]), scores[name] if np.isfinite(scores[name]) else 0.0))


def select_model(metrics_by_model: dict[str, dict[str, float]], metric: str) -> tuple[str, str]:
    """The candidate with the lowest holdout ``metric``, and a sentence saying why."""
    key = SELECTION_KEYS[metric]
    ranked = rank_models(metrics_by_model, metric)
    finite = [name for name in ranked if np.isfinite(abs(metrics_by_model[name][key]))]
    if not finite:
        name = next(iter(metrics_by_model))
        return name, f"no candidate has a finite {metric}; kept the first candidate, {name}"
    ranking = ", ".join(f"{name} {abs(metrics_by_model[name][key]):.4g}" for name in finite)
    return finite[0], f"lowest holdout {metric} ({ranking})"


# The calibration histogram's test, one per candidate (models.diagnostics): the figures each
# candidate's backtest row gains, on both engines.
GOODNESS_OF_FIT_KEYS = ("calibration_chi_square", "calibration_chi_square_dof", "calibration_chi_square_p_value")


def calibration_histogram(model: Any, histories: Any) -> pd.DataFrame | None:
    """Customers with 0, 1, ..., 7+ repeat purchases in the calibration period, ``observed``
    and ``expected`` under ``model`` (fitted on those ``histories``: distinct, with counts);
    None for a model with covariates (its expected histogram needs each customer's design)."""
    from models.diagnostics import observed_purchase_counts, purchase_count_distribution

    if getattr(model, "covariates_", ()):
        return None
    frequency, _, age = histories.unique_arrays()
    counts = histories.counts
    with np.errstate(all="ignore"):
        expected = purchase_count_distribution(model, age, counts=counts)
    return pd.DataFrame({"observed": observed_purchase_counts(frequency, counts=counts), "expected": expected})


def goodness_of_fit(model: Any, histories: Any, histogram: pd.DataFrame | None = None) -> dict[str, float]:
    """Pearson's chi-square test of :func:`calibration_histogram` (``histogram``, when the
    caller has it). NaN for a model with covariates or where a bin's expectation is not positive."""
    from models.diagnostics import chi_square_test

    empty = dict.fromkeys(GOODNESS_OF_FIT_KEYS, float("nan"))
    try:
        if histogram is None:
            histogram = calibration_histogram(model, histories)
        if histogram is None:
            return empty
        test = chi_square_test(histogram["observed"], histogram["expected"], fitted_parameters=len(model.params_))
    except ValueError:
        return empty
    return dict(zip(GOODNESS_OF_FIT_KEYS, (test.statistic, float(test.degrees_of_freedom), test.p_value)))


def calibration_fit(model: Any, histories: Any) -> tuple[dict[str, float], dict[str, pd.DataFrame]]:
    """A candidate's fit on its calibration ``histories``, as both engines record it: the
    :func:`goodness_of_fit` figures for its backtest row, and its :func:`calibration_histogram`
    as the table ``calibration_histogram`` (none for a model with covariates)."""
    histogram = calibration_histogram(model, histories)
    tables = {} if histogram is None else {"calibration_histogram": histogram}
    return goodness_of_fit(model, histories, histogram), tables
