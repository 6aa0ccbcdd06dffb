"""How well a purchase model fits and predicts: goodness of fit, calibration and ranking figures.

Pure functions of model predictions and what happened (issue 20 builds the run's diagnostics on
them):

* :func:`purchase_count_distribution` and :func:`chi_square_test`: the histogram of repeat
  purchases 0, 1, ..., 7+ in each customer's calibration period, actual against expected under
  the model, and Pearson's chi-square test of the two (Fader, Hardie & Lee 2005 report it for
  BG/NBD on CDNOW).
* :func:`conditional_expectation_test`: the holdout's purchases by calibration frequency,
  actual against the model's conditional expectations.
* :func:`probability_scores`: the Brier score and log loss of a predicted probability (e.g. of at
  least one purchase in the holdout, which unlike P(alive) can be observed) and its reliability
  table by decile of prediction.
* :func:`gains_curve` and :func:`normalized_gini`: how much of the realised value the customers
  ranked first by a prediction hold. Customers with equal predictions (many share one history)
  are ranked as a block: each holds the block's mean, which is the expectation over every order
  of the block, so no arbitrary tie-break (row order, id) moves the figure.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
from scipy import stats

from ._validation import check_positive_int
from .histories import group_histories

# The histogram's last bin holds this many repeat purchases and more (7+, as FHL 2005).
LARGEST_BIN = 7


def purchase_count_distribution(model, ages, largest=LARGEST_BIN, counts=None) -> pd.Series:
    """Expected number of customers with 0, 1, ..., ``largest - 1`` and ``largest`` or more
    repeat purchases in their own calibration period, under a fitted purchase model.

    A customer observed for T periods since their first purchase makes X(T) repeat purchases
    with the model's unconditional distribution (a new customer's: the conditional one given
    the empty history (0, 0, 0)); the expected histogram sums it over the customers' T, once
    per distinct T.

    Parameters
    ----------
    model : fitted purchase model
        Without covariates (a covariate model's customers differ beyond T).
    ages : array_like
        Each customer's T (model periods), or the distinct ones with ``counts``.
    largest : int, default 7
        The last bin: this many purchases or more.
    counts : array_like, optional
        Customers with each entry of ``ages`` (distinct histories' ages and their counts);
        one each by default.

    Returns
    -------
    pandas.Series
        Indexed ``0, 1, ..., largest - 1, "largest+"`` (e.g. ``"7+"``); sums to the customers.
    """
    largest = check_positive_int(largest, "largest")
    if getattr(model, "covariates_", ()):
        raise ValueError("purchase_count_distribution: a model with covariates needs each customer's design")
    ages = np.asarray(ages, dtype=np.float64)
    weights = np.ones(len(ages)) if counts is None else np.asarray(counts, dtype=np.float64)
    if weights.shape != ages.shape:
        raise ValueError(f"counts: {len(weights)} for {len(ages)} ages")
    distinct, position = np.unique(ages, return_inverse=True)
    counts = np.bincount(position, weights=weights, minlength=len(distinct))
    if len(distinct) and (not np.all(np.isfinite(distinct)) or distinct.min() < 0):
        raise ValueError("ages must be finite and not negative")
    expected = np.zeros(largest + 1)
    # Grouped once: a call per age and count on a plain frame spent 2.7 ms grouping its one row
    # (4.7 s for three models at 18M customers with 252 distinct ages).
    empty = group_histories(pd.DataFrame({"frequency": [0.0], "recency": [0.0], "T": [0.0]}))
    for age, count in zip(distinct, counts):
        masses = [float(model.probability_of_purchases(empty, n, float(age)).iloc[0]) for n in range(largest)]
        expected[:largest] += count * np.array(masses)
        expected[largest] += count * max(0.0, 1.0 - sum(masses))
    return pd.Series(expected, index=[*range(largest), f"{largest}+"], name="expected")


def purchase_count_bins(frequency, largest=LARGEST_BIN) -> np.ndarray:
    """Each customer's bin 0, 1, ..., ``largest`` (``largest`` or more) by repeat purchases."""
    # Truncation is the floor of counts, which are never negative: two passes over 18M, not three.
    return np.minimum(np.asarray(frequency, dtype=np.float64), largest).astype(np.intp)


def observed_purchase_counts(frequency, largest=LARGEST_BIN, counts=None) -> pd.Series:
    """Customers with 0, 1, ..., ``largest - 1`` and ``largest`` or more repeat purchases
    (``counts``: customers with each entry of ``frequency``, one each by default)."""
    largest = check_positive_int(largest, "largest")
    binned = purchase_count_bins(frequency, largest)
    counts = np.bincount(binned, weights=None if counts is None else np.asarray(counts, dtype=np.float64),
                         minlength=largest + 1).astype(np.float64)
    return pd.Series(counts, index=[*range(largest), f"{largest}+"], name="observed")


@dataclasses.dataclass(frozen=True)
class ChiSquareTest:
    """Pearson's chi-square test of observed against expected counts."""

    statistic: float
    degrees_of_freedom: int
    p_value: float


def chi_square_test(observed, expected, fitted_parameters) -> ChiSquareTest:
    """Pearson's statistic sum (O - E)^2 / E over the bins, with bins - 1 - ``fitted_parameters``
    degrees of freedom (the expected counts come from a model fitted on the same customers).

    Raises
    ------
    ValueError
        If the two differ in length or totals, an expected count is not positive, or no
        degree of freedom is left.
    """
    observed = np.asarray(observed, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    if observed.shape != expected.shape or observed.ndim != 1:
        raise ValueError(f"observed and expected must be 1-d and alike, got {observed.shape} and {expected.shape}")
    if not np.all(expected > 0):
        raise ValueError("every expected count must be positive")
    if not np.isclose(observed.sum(), expected.sum(), rtol=1e-6):
        raise ValueError(f"observed ({observed.sum():g}) and expected ({expected.sum():g}) count different customers")
    degrees = len(observed) - 1 - int(fitted_parameters)
    if degrees < 1:
        raise ValueError(f"{len(observed)} bins leave no degree of freedom for {fitted_parameters} fitted parameters")
    statistic = float(np.sum((observed - expected) ** 2 / expected))
    return ChiSquareTest(statistic, degrees, float(stats.chi2.sf(statistic, degrees)))


def conditional_expectation_test(actual, expected) -> ChiSquareTest:
    """Pearson's statistic of the holdout's purchases per group of customers (e.g. by their
    calibration frequency 0, 1, ..., 7+), actual against the model's conditional expectations.

    Nothing is fitted on the holdout and the totals need not agree, so every group with a
    positive expectation is a degree of freedom. The statistic treats each group's purchases as
    Poisson counts; under the purchase models they are over-dispersed (each customer's rate is
    uncertain and they may have dropped out), so the p-value is a lower bound on the true one:
    a p-value near 1 is good news, a small one from a large group is a hint, not a verdict.
    A group with no expected purchases counts only if it made some: then the statistic is
    infinite (the naive baseline says customers who never repeated never will).
    """
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    if actual.shape != expected.shape or actual.ndim != 1:
        raise ValueError(f"actual and expected must be 1-d and alike, got {actual.shape} and {expected.shape}")
    if np.any(expected < 0) or np.any(actual < 0):
        raise ValueError("counts must not be negative")
    used = (expected > 0) | (actual > 0)
    if not used.any():
        raise ValueError("no group has a purchase, expected or actual")
    with np.errstate(divide="ignore"):
        statistic = float(np.sum((actual[used] - expected[used]) ** 2 / expected[used]))
    degrees = int(used.sum())
    return ChiSquareTest(statistic, degrees, float(stats.chi2.sf(statistic, degrees)))


# Probabilities are clipped this far from 0 and 1 for log loss (scikit-learn's habit): a
# confident miss costs about 34.5 nats instead of infinity.
LOG_LOSS_CLIP = 1e-15


def probability_score_sums(predicted, happened) -> dict[str, float]:
    """The sums :func:`probability_scores` divides by the customers, of any batch of them
    (they add across batches): ``customers``, ``events``, ``squared_error_sum``, ``log_loss_sum``."""
    predicted = np.asarray(predicted, dtype=np.float64)
    happened = np.asarray(happened, dtype=bool)
    if predicted.shape != happened.shape or predicted.ndim != 1:
        raise ValueError("predicted and happened must be 1-d and alike")
    if not np.all((predicted >= 0) & (predicted <= 1)):
        raise ValueError("predicted must be probabilities in [0, 1]")
    # The probability given to what happened, clipped, in one buffer: at 18M customers each
    # temporary is 144 MB and a masked copy of a column cost more than its logarithm.
    given = np.where(happened, predicted, 1.0 - predicted)
    np.clip(given, LOG_LOSS_CLIP, 1 - LOG_LOSS_CLIP, out=given)
    log_loss_sum = -float(np.log(given, out=given).sum())
    error = np.subtract(predicted, happened, out=given)
    return {
        "customers": float(len(predicted)),
        "events": float(happened.sum()),
        "squared_error_sum": float(np.square(error, out=error).sum()),
        "log_loss_sum": log_loss_sum,
    }


def probability_scores_from_sums(sums: dict[str, float]) -> dict[str, float]:
    """``brier``, ``log_loss`` and ``base_rate`` from (merged) :func:`probability_score_sums`."""
    customers = sums["customers"]
    if not customers:
        return {"brier": float("nan"), "log_loss": float("nan"), "base_rate": float("nan")}
    return {"brier": sums["squared_error_sum"] / customers, "log_loss": sums["log_loss_sum"] / customers,
            "base_rate": sums["events"] / customers}


def decile_groups(predicted, bins=10) -> np.ndarray:
    """Each prediction's group 0..``bins - 1`` by its average rank: equal predictions share a
    rank and so a group (which may then hold more or fewer than a tenth of the customers)."""
    predicted = np.asarray(predicted, dtype=np.float64)
    bins = check_positive_int(bins, "bins")
    if len(predicted) == 0:
        return np.zeros(0, dtype=int)
    return np.minimum((stats.rankdata(predicted, method="average") - 1) * bins // len(predicted), bins - 1).astype(int)


def probability_scores(predicted, happened, bins=10) -> tuple[dict[str, float], pd.DataFrame]:
    """Brier score, log loss and the reliability table of predicted probabilities of an event.

    Parameters
    ----------
    predicted : array_like
        Probabilities in [0, 1].
    happened : array_like of bool
        Whether the event happened, one per prediction.
    bins : int, default 10
        Groups of the reliability table: deciles of the prediction (customers with equal
        predictions stay in one group, so a group may hold more or fewer than a tenth).

    Returns
    -------
    (dict, pandas.DataFrame)
        ``brier``, ``log_loss`` (probabilities clipped to [1e-15, 1 - 1e-15]) and ``base_rate``;
        and per group ``customers``, ``mean_predicted``, ``observed_rate``.
    """
    predicted = np.asarray(predicted, dtype=np.float64)
    happened = np.asarray(happened, dtype=bool)
    if len(predicted) == 0:
        raise ValueError("predicted and happened must not be empty")
    scores = probability_scores_from_sums(probability_score_sums(predicted, happened))
    return scores, reliability_table(predicted, happened, bins)


def reliability_table(predicted, happened, bins=10) -> pd.DataFrame:
    """Per group of :func:`decile_groups`: ``customers``, ``mean_predicted``, ``observed_rate``
    (the reliability table of :func:`probability_scores`)."""
    predicted = np.asarray(predicted, dtype=np.float64)
    outcome = np.asarray(happened, dtype=bool).astype(np.float64)
    return pd.DataFrame({"group": decile_groups(predicted, bins), "predicted": predicted, "outcome": outcome}).groupby(
        "group").agg(customers=("outcome", "size"), mean_predicted=("predicted", "mean"),
                     observed_rate=("outcome", "mean"))


def gains_curve(predicted, realised) -> pd.DataFrame:
    """The cumulative share of ``realised`` value held by the customers ranked first by ``predicted``.

    One point per block of equal predictions (highest first) and the origin: ``customers_share``
    and ``value_share``; between two points the curve is straight, which is the mean over every
    order of the block's customers.
    """
    predicted = np.asarray(predicted, dtype=np.float64)
    realised = np.asarray(realised, dtype=np.float64)
    if predicted.shape != realised.shape or predicted.ndim != 1 or len(predicted) == 0:
        raise ValueError("predicted and realised must be 1-d, alike and not empty")
    if not (np.all(np.isfinite(predicted)) and np.all(np.isfinite(realised))):
        raise ValueError("predicted and realised must be finite")
    blocks = pd.DataFrame({"predicted": predicted, "realised": realised}).groupby("predicted", sort=True).agg(
        customers=("realised", "size"), value=("realised", "sum")).iloc[::-1]
    total = realised.sum()
    customers = np.concatenate([[0.0], np.cumsum(blocks["customers"].to_numpy())]) / len(predicted)
    value = np.concatenate([[0.0], np.cumsum(blocks["value"].to_numpy())]) / (total if total else 1.0)
    return pd.DataFrame({"customers_share": customers, "value_share": value})


def gini_coefficient(order_by, realised) -> float:
    """Twice the area under the gains curve of ``realised`` ranked by ``order_by``, minus one."""
    curve = gains_curve(order_by, realised)
    return float(2.0 * np.trapezoid(curve["value_share"], curve["customers_share"]) - 1.0)


def normalized_gini(predicted, realised, best=None) -> float:
    """The Gini of ``realised`` ranked by ``predicted`` over that of ``realised`` ranked by
    itself: 1 for the best order, 0 for no information (every prediction equal), negative
    for worse than none. NaN when every realised value is equal (no order to find).

    ``best``: ``gini_coefficient(realised, realised)``, when the caller scores several
    predictions of the same values."""
    realised = np.asarray(realised, dtype=np.float64)
    if best is None:
        best = gini_coefficient(realised, realised)
    return float(gini_coefficient(predicted, realised) / best) if best > 0 else float("nan")
