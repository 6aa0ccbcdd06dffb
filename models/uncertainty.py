"""How sure the models are: parameter draws, per-customer intervals, the spread of purchases.

Two kinds of uncertainty, reported apart because they answer different questions:

* **Parameter uncertainty** ("how sure are we of this customer's expected value?"). The
  fitted parameters are estimates; by the usual maximum-likelihood asymptotics they are
  normal around the truth with covariance ``covariance_`` (the inverse negative Hessian,
  natural scale). :func:`draw_parameters` draws parameter vectors from that normal, the
  positive parameters on the log scale (delta method: Cov(log theta) = D^-1 Sigma D^-1,
  D = diag(theta)) so that every draw is a valid model, the covariate coefficients on their
  own scale. :func:`customer_intervals` evaluates the models' own predictions at each draw
  (``with_params``: a copy of the fitted estimator at other values, no refit) and reports
  quantiles of the draws. It shrinks like 1 / sqrt(customers fitted on).
* **Predictive spread** ("how many purchases will this customer make?"). Even with the
  parameters known, the number of purchases in the horizon is random:
  :func:`purchase_spread` gives P(no purchase) and percentiles of that number from the
  model's conditional distribution at the point estimate. It does not shrink with more
  customers.

The purchase model (BG/NBD, MBG/NBD, Pareto/NBD) and Gamma-Gamma are fitted separately, by
separate likelihoods, so their estimates have no joint covariance here: their draws are
independent (two child seeds of ``seed``), and draw k of the CLV pairs the k-th purchase
draw with the k-th spend draw.

How the pipeline uses this
--------------------------
The scoring core evaluates once per distinct history (``pipeline.stages.value``):

* :func:`history_intervals`: bounds of P(alive), expected purchases and the value figure
  (discounted purchases over the horizon, or DERT) per history. Every figure of a history's
  future is P(alive) times a term of (design, frequency, T) (:func:`standing_histories`), so a
  draw costs one P(alive) per distinct history and the terms of the few pairs. On many
  histories (``method="delta"``) the draws are replaced by their limit, the delta method on the
  logit or log scale; the company totals still come from the draws.
* :func:`spend_draws`: Gamma-Gamma's expected spend at each draw is a line in the customer's
  mean spend, per (frequency, design); its log variance per customer.
* :func:`value_bounds` / :func:`bounds_from_log_distances`: the CLV bound adds the value's and
  the spend's spreads on the log scale (the two models are independent).
* :func:`purchase_spread`: P(no purchase) and percentiles of the number of purchases, from one
  table per (design, frequency, T) pair.

:func:`customer_intervals` is the full Monte Carlo of every customer's CLV at every pair of
draws: the reference the tests hold the pipeline's cheaper route to (within 15 % on the log
scale). On the 50M-row benchmark log (18.0M customers, 628k distinct histories, 8.9M
(history, spend pair) combinations) its 100 draws took 104 s.
"""

from __future__ import annotations

import dataclasses
import numbers

import numpy as np
import pandas as pd
from scipy import stats
from sklearn.utils.validation import check_is_fitted

from ._validation import (
    SPEND_COLUMNS,
    aligned,
    check_features,
    check_horizon,
    check_positive_int,
    check_positive_real,
    check_real,
    group_rows,
    rows,
)
from .covariates import design_matrix
from .discounting import discounted_expected_purchases
from .histories import CustomerHistories, as_histories, group_histories

# Distinct histories (or history-spend combinations) evaluated at once: each draw's figures
# of a block are (rows x n_draws) matrices, 50 MB for 65,536 rows and 100 draws.
ROWS_PER_BLOCK = 1 << 16
# history_intervals' blocks: fewer model calls per draw (each has a fixed cost) for matrices of
# 131,072 rows x draws, 105 MB at 100 draws.
HISTORY_ROWS_PER_BLOCK = 1 << 17

# Give up counting purchases for a history whose distribution has not reached the upper
# percentile by then (a rounding-deficient PMF would otherwise loop for ever).
MAX_PURCHASES = 10_000
# Step of the central differences of history_intervals' delta method, on the log scale of a
# positive parameter (a relative step) or the raw scale of a coefficient: small against a
# standard error, large against rounding (logits to ~1e-14: 1e-10 relative error).
DELTA_STEP = 1e-4
# Above every cumulative probability: marks where a pair's table of purchases ends unreached.
PAST = 1.5


# --- parameter draws ---------------------------------------------------------


def draw_parameters(model, n_draws, seed) -> pd.DataFrame:
    """Parameter vectors drawn from a fitted model's asymptotic normal distribution.

    Positive parameters are drawn on the log scale, log theta ~ N(log theta_hat,
    D^-1 Sigma D^-1) with D = diag(theta_hat) (the delta method), so every draw is positive;
    covariate coefficients on their own scale, with their covariances with the log-parameters
    (Sigma_ij / theta_i) kept.

    Parameters
    ----------
    model : fitted estimator
        Any of the models (``BetaGeoModel``, ..., ``GammaGammaModel``): ``params_``,
        ``covariance_`` and, with covariates, ``coefficients_``.
    n_draws : int
        Number of parameter vectors.
    seed : int, numpy.random.SeedSequence or numpy.random.Generator
        Seed of the draws (a Generator is used as it is, and moves); None is refused, so that
        every result can be reproduced.

    Returns
    -------
    pandas.DataFrame
        One row per draw (index ``draw``), one column per name of ``covariance_.index``, on
        the natural scale: each row goes to ``model.with_params``.

    Raises
    ------
    ValueError
        If ``covariance_`` is not finite (the Hessian was not negative definite at the fit),
        or an argument is out of range; the message names it.
    """
    check_is_fitted(model)
    n_draws = check_positive_int(n_draws, "n_draws")
    rng = _generator(seed)
    names = list(model.covariance_.index)
    point = _point(model, names)
    positive = np.isin(names, list(model.parameter_names))
    sigma = model.covariance_.to_numpy(dtype=np.float64)
    if not np.all(np.isfinite(sigma)):
        raise ValueError(
            f"{type(model).__name__}: covariance_ is not finite (the Hessian was not negative definite at the fit), "
            "so there is no parameter uncertainty to draw from; refit (another start, a small penalizer)"
        )
    scale = np.where(positive, point, 1.0)
    centre = point.copy()
    centre[positive] = np.log(point[positive])
    # The inverse of a Cholesky-factorised matrix, scaled on both sides: positive definite.
    factor = np.linalg.cholesky(sigma / np.outer(scale, scale))
    drawn = centre + rng.standard_normal((n_draws, len(names))) @ factor.T
    drawn[:, positive] = np.exp(drawn[:, positive])
    return pd.DataFrame(drawn, columns=names, index=pd.RangeIndex(n_draws, name="draw"))


def point_parameters(model) -> pd.DataFrame:
    """The fitted values as one row with :func:`draw_parameters`' columns (for ``with_params``)."""
    check_is_fitted(model)
    names = list(model.covariance_.index)
    return pd.DataFrame([_point(model, names)], columns=names, index=pd.RangeIndex(1, name="draw"))


def _point(model, names) -> np.ndarray:
    """The fitted values of ``names`` (``covariance_``'s): parameters, then coefficients."""
    values = dict(model.params_)
    coefficients = getattr(model, "coefficients_", None)
    if coefficients is not None:
        values.update({f"{parameter}:{covariate}": coefficient for parameter, covariate, coefficient
                       in zip(coefficients["parameter"], coefficients["covariate"], coefficients["coefficient"])})
    return np.array([values[name] for name in names], dtype=np.float64)


def _generator(seed) -> np.random.Generator:
    if seed is None:
        raise ValueError("seed must be given (an integer), so that the draws can be reproduced")
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral | np.random.SeedSequence | np.random.Generator):
        raise TypeError(f"seed must be an integer, a SeedSequence or a Generator, got {type(seed).__name__}")
    return np.random.default_rng(seed if isinstance(seed, np.random.SeedSequence | np.random.Generator) else int(seed))


def _check_level(level) -> float:
    level = check_real(level, "level")
    if not 0 < level < 1:
        raise ValueError(f"level must lie strictly between 0 and 1 (0.9 for a 90 % interval), got {level}")
    return level


def _row_quantiles(values, probabilities) -> list[np.ndarray]:
    """Each row's quantiles at ``probabilities``, interpolated linearly (numpy's default method).

    Sorted as float32: numpy sorts short float32 rows about 10 times faster than float64
    (0.03 s against 0.34 s for 65,536 rows of 200), and float32's 6e-8 relative rounding is
    far below the Monte Carlo error of a quantile of a few hundred draws.
    """
    ordered = np.sort(values.astype(np.float32, copy=False), axis=1)
    n = ordered.shape[1]
    result = []
    for probability in probabilities:
        position = (n - 1) * probability
        below = int(np.floor(position))
        above = min(below + 1, n - 1)
        weight = position - below
        low = ordered[:, below].astype(np.float64)
        # low + w (high - low) stays within [low, high]: a P(alive) never passes 1.
        result.append(low + weight * (ordered[:, above] - low))
    return result


def _finite_row_quantiles(values, probabilities, least_share=0.9) -> list[np.ndarray]:
    """:func:`_row_quantiles` over each row's finite values only; NaN for a row with fewer than
    ``least_share`` of them finite. A parameter draw far in a tail can put a model's formula
    where it does not evaluate (BG/NBD's expected purchases as a nears 1, say) for some
    histories: those draws leave those rows' quantiles, row by row, so a history gets the same
    bounds whichever other histories it is scored with."""
    values = values.astype(np.float32, copy=False)
    finite = np.isfinite(values)
    if finite.all():
        return _row_quantiles(values, probabilities)
    n_finite = finite.sum(axis=1)
    ordered = np.sort(np.where(finite, values, np.float32(np.inf)), axis=1)  # the others sort last
    result = []
    count = np.maximum(n_finite, 1)
    for probability in probabilities:
        position = (count - 1) * probability
        below = np.floor(position).astype(np.intp)
        above = np.minimum(below + 1, count - 1)
        weight = position - below
        low = np.take_along_axis(ordered, below[:, None], axis=1)[:, 0].astype(np.float64)
        high = np.take_along_axis(ordered, above[:, None], axis=1)[:, 0].astype(np.float64)
        bound = low + weight * (high - low)
        bound[n_finite < least_share * values.shape[1]] = np.nan
        result.append(bound)
    return result


def _finite(values, figure):
    bad = int(np.count_nonzero(~np.isfinite(values).all(axis=1)))
    if bad:
        raise ValueError(f"{figure}: {rows(bad)} with a NaN or infinite value at some parameter draw")
    return values


# --- intervals from parameter uncertainty -------------------------------------


@dataclasses.dataclass(frozen=True)
class CustomerIntervals:
    """Intervals from parameter uncertainty: per customer and for the whole customer base.

    Attributes
    ----------
    per_customer : pandas.DataFrame
        Indexed like the features: ``clv_lower``, ``clv_upper``, ``expected_purchases_lower``,
        ``expected_purchases_upper``, ``probability_alive_lower``, ``probability_alive_upper``.
    company : pandas.DataFrame
        Rows ``clv`` and ``expected_purchases`` (sums over the customers), columns ``lower``
        and ``upper``: quantiles over the draws of the sums.
    company_draws : pandas.DataFrame
        The sums at each draw (index ``draw``; columns ``clv``, ``expected_purchases``).
    level : float
        Probability between each lower and upper bound.
    n_draws : int
    """

    per_customer: pd.DataFrame = dataclasses.field(repr=False)
    company: pd.DataFrame
    company_draws: pd.DataFrame = dataclasses.field(repr=False)
    level: float
    n_draws: int


def customer_intervals(
    purchase_model,
    spend_model,
    features,
    n_steps,
    discount_rate_per_step,
    margin_rate=1.0,
    acquisition_cost=0.0,
    step_periods=1.0,
    level=0.9,
    n_draws=100,
    seed=0,
    histories=None,
) -> CustomerIntervals:
    """Intervals of each customer's CLV, expected purchases and P(alive) from parameter uncertainty.

    Parameters
    ----------
    purchase_model : fitted purchase model
        ``BetaGeoModel``, ``ModifiedBetaGeoModel`` or ``ParetoNBDModel``.
    spend_model : fitted GammaGammaModel
    features : pandas.DataFrame
        One row per customer: ``frequency``, ``recency``, ``T`` (model periods),
        ``monetary_value`` and the design columns of models fitted with covariates.
    n_steps : int
        Steps of the CLV horizon, as in :func:`~models.discounting.discounted_expected_purchases`.
    discount_rate_per_step : float
        Discount rate per step, as a fraction (above -1).
    margin_rate : float or pandas.Series, default 1.0
        Profit as a fraction of revenue, one for all or per customer (indexed like ``features``).
    acquisition_cost : float or pandas.Series, default 0.0
        Subtracted once per customer, one for all or per customer.
    step_periods : float, default 1.0
        Length of a step in model periods; expected purchases are over ``n_steps * step_periods``.
    level : float, default 0.9
        Probability between the bounds: quantiles (1 - level) / 2 and (1 + level) / 2.
    n_draws : int, default 100
        Parameter draws of each model; the time grows linearly with it. With 100 draws a 90 %
        bound is between the 5th and 6th smallest draw, so it moves by a few per cent of the
        interval's width from one seed to another.
    seed : int, default 0
        Seed of the draws (purchase and spend models get independent child seeds).
    histories : CustomerHistories, optional
        ``features`` grouped for the purchase model (:func:`~models.histories.group_histories`
        with its ``covariates_``), when the caller has them; grouped here otherwise.

    Returns
    -------
    CustomerIntervals

    Raises
    ------
    ValueError
        If an argument is out of range, a model's covariance is not finite, some spend draw
        has q <= 1 (an infinite mean spend), or a figure is not finite at some draw; the
        message names the argument or figure.
    """
    check_is_fitted(purchase_model)
    check_is_fitted(spend_model)
    n_steps = check_positive_int(n_steps, "n_steps")
    step_periods = check_positive_real(step_periods, "step_periods")
    discount_rate_per_step = check_real(discount_rate_per_step, "discount_rate_per_step")
    if discount_rate_per_step <= -1:
        raise ValueError(f"discount_rate_per_step must be above -1, got {discount_rate_per_step}")
    level = _check_level(level)
    n_draws = check_positive_int(n_draws, "n_draws")
    if not isinstance(features, pd.DataFrame):
        raise TypeError(f"features must be a pandas DataFrame, got {type(features).__name__}")
    index = features.index
    purchase_covariates = tuple(getattr(purchase_model, "covariates_", ()))
    histories = as_histories(features if histories is None else histories, purchase_covariates)
    if len(histories) != len(features) or not histories.index.equals(index):
        raise ValueError(f"histories: {len(histories)} customers that are not those of features ({len(features)})")
    margin = aligned(margin_rate, index, "margin_rate")
    cost = aligned(acquisition_cost, index, "acquisition_cost")
    spend_pairs, pair_of = _spend_pairs(features, tuple(getattr(spend_model, "covariates_", ())))
    purchase_seed, spend_seed = np.random.SeedSequence(_seed_entropy(seed)).spawn(2)
    spend_draws = draw_parameters(spend_model, n_draws, spend_seed)
    infinite = int(np.count_nonzero(spend_draws["q"] <= 1))
    if infinite:
        raise ValueError(
            f"spend_model: q <= 1 in {infinite} of {n_draws} parameter draws, where the mean spend per purchase "
            "is infinite: the spend model is too uncertain for an interval (fit on more customers)"
        )
    spend = np.empty((len(spend_pairs), n_draws), dtype=np.float32)
    for draw, (_, values) in enumerate(spend_draws.iterrows()):
        spend[:, draw] = spend_model.with_params(values).expected_spend(spend_pairs).to_numpy()
    _finite(spend, "expected_spend")
    purchase_models = [purchase_model.with_params(values)
                       for _, values in draw_parameters(purchase_model, n_draws, purchase_seed).iterrows()]

    horizon = n_steps * step_periods
    lower, upper = (1.0 - level) / 2.0, (1.0 + level) / 2.0
    unique = histories.unique
    n_unique = len(unique)
    frequency, _, age = histories.unique_arrays()
    design = histories.unique_design(purchase_covariates)
    # Rows sharing (design, frequency, T) together: each block then evaluates few distinct
    # hypergeometric terms, which are computed once per such pair (not per history).
    order = np.lexsort([age, frequency, *design.T[::-1]])
    by_history = {name: np.empty(n_unique) for name in
                  ("expected_purchases_lower", "expected_purchases_upper",
                   "probability_alive_lower", "probability_alive_upper")}
    discounted = np.empty((n_unique, n_draws), dtype=np.float32)
    total_purchases = np.zeros(n_draws)
    counts = histories.counts.astype(np.float64)
    for start in range(0, n_unique, ROWS_PER_BLOCK):
        block = order[start:start + ROWS_PER_BLOCK]
        block_unique = unique.iloc[block].reset_index(drop=True)
        block_histories = CustomerHistories(block_unique, np.arange(len(block)), covariates=histories.covariates)
        standing = standing_histories(block_histories, purchase_covariates)
        alive = np.empty((len(block), n_draws))
        expected = np.empty((len(block), n_draws))
        for draw, model in enumerate(purchase_models):
            alive[:, draw] = model.probability_alive(block_histories).to_numpy()
            expected[:, draw] = model.expected_purchases_by_horizon(block_histories, [horizon])[:, 0]
            discounted[block, draw] = _discounted_expected_purchases(
                model, standing, expected[:, draw], n_steps, step_periods, discount_rate_per_step
            )
        total_purchases += counts[block] @ expected
        for figure, drawn in (("probability_alive", alive), ("expected_purchases", expected)):
            low, high = _row_quantiles(_finite(drawn, figure), (lower, upper))
            by_history[f"{figure}_lower"][block], by_history[f"{figure}_upper"][block] = low, high
    _finite(discounted, "discounted_expected_purchases")

    # CLV = discounted purchases x spend x margin - cost. The margin and cost are known per
    # customer, so the quantiles are those of the gross value (discounted purchases x spend)
    # of each distinct (history, spend pair), scaled: for a negative margin the bounds swap,
    # exactly, since the quantile positions are symmetric.
    # One integer key per customer, factorised once: group_rows would factorise each of the two
    # 18M-long columns first, though they are already small integers.
    n_pairs = len(spend_pairs)
    key = histories.inverse.astype(np.int64) * n_pairs + pair_of
    combo_of, combo_key = pd.factorize(key, sort=False)
    del key
    combo_history, combo_pair = np.divmod(combo_key, n_pairs)
    margin_by_combo = np.bincount(combo_of, weights=margin, minlength=len(combo_history))
    gross_lower, gross_upper = np.empty(len(combo_history)), np.empty(len(combo_history))
    total_clv = np.zeros(n_draws)
    for start in range(0, len(combo_history), ROWS_PER_BLOCK):
        rows_here = slice(start, start + ROWS_PER_BLOCK)
        gross = discounted[combo_history[rows_here]] * spend[combo_pair[rows_here]]
        total_clv += margin_by_combo[rows_here] @ gross.astype(np.float64)
        gross_lower[rows_here], gross_upper[rows_here] = _row_quantiles(gross, (lower, upper))
    total_clv -= cost.sum()
    low, high = gross_lower[combo_of], gross_upper[combo_of]
    clv_lower = np.where(margin >= 0, margin * low, margin * high) - cost
    clv_upper = np.where(margin >= 0, margin * high, margin * low) - cost

    inverse = histories.inverse
    per_customer = pd.DataFrame(
        {
            "clv_lower": clv_lower,
            "clv_upper": clv_upper,
            **{name: values[inverse] for name, values in by_history.items()},
        },
        index=index,
        copy=False,  # 18M customers: each column is 144 MB, not copied into one block
    )
    company_draws = pd.DataFrame({"clv": total_clv, "expected_purchases": total_purchases},
                                 index=pd.RangeIndex(n_draws, name="draw"))
    company = pd.DataFrame(
        np.quantile(company_draws.to_numpy(), [lower, upper], axis=0).T,
        index=company_draws.columns,
        columns=["lower", "upper"],
    )
    return CustomerIntervals(per_customer, company, company_draws, level, n_draws)


def _discounted_expected_purchases(model, standing, expected, n_steps, step_periods, discount_rate_per_step):
    """:func:`~models.discounting.discounted_expected_purchases` of each history
    :func:`standing_histories` grouped (``standing``: its result), from ``expected``, their
    expected purchases over the whole ``n_steps * step_periods``: P(alive) cancels from the ratio
    of the two, so the discounting is evaluated on the standing histories only."""
    histories, pair = standing

    def discounted(drawn, rows):
        return discounted_expected_purchases(drawn, rows, n_steps, step_periods, discount_rate_per_step).to_numpy()

    return expected * _point_ratio(model, histories, n_steps * step_periods, discounted)[pair]


def _seed_entropy(seed):
    """An integer seed for a SeedSequence (whose children seed the two models' draws)."""
    if seed is None or isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    return int(seed)


def _spend_pairs(features, covariates) -> tuple[pd.DataFrame, np.ndarray]:
    """The distinct (frequency, monetary_value, design) rows of ``features`` and each customer's."""
    columns = check_features(features, SPEND_COLUMNS)
    design = design_matrix(features, covariates)
    unique, inverse = group_rows([columns["frequency"], columns["monetary_value"], *design.T])
    pairs = pd.DataFrame(dict(zip([*SPEND_COLUMNS, *covariates], unique)), copy=False)
    return pairs, inverse


# --- predictive spread ---------------------------------------------------------


def purchase_spread(purchase_model, features, horizon, percentiles=(0.1, 0.9)) -> pd.DataFrame:
    """P(no purchase) and percentiles of each customer's number of purchases in the horizon.

    From the model's conditional distribution at its point estimate
    (``probability_of_purchases(features, n, horizon)`` for n = 0, 1, ...), once per distinct
    history: the spread a customer's own purchases will show even if the parameters were
    known exactly.

    Parameters
    ----------
    purchase_model : fitted purchase model
    features : pandas.DataFrame or CustomerHistories
        Columns ``frequency``, ``recency``, ``T`` (and a covariate model's design columns),
        or those customers grouped (:func:`~models.histories.group_histories`).
    horizon : float
        Length of the future period, in model periods.
    percentiles : sequence of float, default (0.1, 0.9)
        Probabilities strictly between 0 and 1, increasing.

    Returns
    -------
    pandas.DataFrame
        Indexed like ``features``: ``probability_no_purchases`` and one column per percentile
        p, ``purchases_p{100 p}`` (``purchases_p10``, ``purchases_p90``): the smallest n with
        P(X(T, T + horizon] <= n | history) >= p (NaN where the distribution does not reach p
        by :data:`MAX_PURCHASES`).
    """
    check_is_fitted(purchase_model)
    horizon = check_horizon(horizon)
    probabilities = [check_real(value, "percentiles") for value in percentiles]
    if not probabilities or any(not 0 < value < 1 for value in probabilities) or \
            any(b <= a for a, b in zip(probabilities, probabilities[1:])):
        raise ValueError(f"percentiles must be increasing probabilities strictly between 0 and 1, got {percentiles!r}")
    covariates = tuple(getattr(purchase_model, "covariates_", ()))
    histories = as_histories(features, covariates)
    inverse, index = histories.inverse, histories.index
    unique = group_histories(histories.unique, covariates=histories.covariates)
    standing, pair = standing_histories(histories, covariates)
    # P(X = n | history) = (1 - P(alive)) [n = 0] + P(alive) G(n), G the distribution of a
    # customer alive at T, which depends on (design, frequency, T) alone (standing_histories):
    # tabulated once per pair, then each history's percentile is looked up in its pair's table.
    alive = purchase_model.probability_alive(unique).to_numpy()
    standing_alive = purchase_model.probability_alive(standing).to_numpy()
    n_pairs = len(standing.unique)
    largest = probabilities[-1]
    cumulative = [np.zeros(n_pairs)]  # G's cumulative distribution, n = 0, 1, ... (a row per n)
    remaining = np.flatnonzero(standing_alive > 0)
    n_purchases = 0
    while len(remaining) and n_purchases <= MAX_PURCHASES:
        subset = CustomerHistories(standing.unique.iloc[remaining].reset_index(drop=True),
                                   np.arange(len(remaining)), covariates=standing.covariates)
        mass = purchase_model.probability_of_purchases(subset, n_purchases, horizon).to_numpy()
        if n_purchases == 0:
            mass = mass - (1.0 - standing_alive[remaining])
        row = cumulative[-1].copy()
        row[remaining] += np.maximum(mass, 0.0) / standing_alive[remaining]
        cumulative.append(row)
        remaining = remaining[row[remaining] < largest]
        n_purchases += 1
    # (pairs x counts) without the leading zeros; a pair never reaching the largest
    # percentile (by MAX_PURCHASES) is padded with PAST, above every target.
    table = np.vstack(cumulative[1:]).T if len(cumulative) > 1 else np.zeros((n_pairs, 0))
    table = np.concatenate([table, np.full((n_pairs, 1), PAST)], axis=1)
    width = table.shape[1]
    reached = np.flatnonzero(table[:, -2] >= largest) if width > 1 else np.empty(0, dtype=np.intp)
    unfinished = np.ones(n_pairs, dtype=bool)
    unfinished[reached] = False
    table[unfinished, :-1] = np.where(table[unfinished, :-1] >= largest, table[unfinished, :-1], PAST)
    # Rows laid end to end, row j shifted up by 2 j: one sorted array for every pair's lookup.
    flat = (table + 2.0 * np.arange(n_pairs)[:, None]).ravel()
    alive_and_none = table[pair, 0] if width > 1 else np.zeros(len(pair))
    no_purchases = 1.0 - alive + alive * np.where(alive_and_none < PAST, alive_and_none, 0.0)
    columns = {"probability_no_purchases": no_purchases[inverse]}
    for probability in probabilities:
        with np.errstate(divide="ignore", invalid="ignore"):
                target = (probability - (1.0 - alive)) / alive
        # Already reached by the mass at 0 of those gone (or P(alive) = 0): no purchase.
        gone = ~(target > 0)
        target[gone] = 0.0
        position = np.searchsorted(flat, 2.0 * pair + target, side="left") - pair * width
        position = np.clip(position, 0, width - 1)
        found = np.where(table[pair, position] >= PAST, np.nan, position.astype(np.float64))
        found[gone] = 0.0
        columns[f"purchases_p{100 * probability:g}"] = found[inverse]
    return pd.DataFrame(columns, index=index)


# --- intervals per distinct history (the scoring core's) ------------------------------------


def standing_histories(histories, covariates=()) -> tuple[CustomerHistories, np.ndarray]:
    """One history per distinct (design, frequency, T) of the unique rows of ``histories``, and
    each unique row's position among them.

    In every purchase model a figure of a history's future (expected purchases over any
    horizon, their discounted sum, DERT, P(n purchases) for n >= 1) is P(alive | history)
    times a term of (design, frequency, T) alone: given that the customer is alive at T, the
    posterior of their rates depends on the number of purchases and T, not on when the last
    one was. A standing history carries the pair's term: the one most surely alive, with its
    last purchase at T (recency = T; 0 without repeat purchases), so that dividing by its
    P(alive) loses no precision. Far fewer than the histories (6,497 pairs for 628k histories
    at 18M customers on a weekly grid).
    """
    covariates = tuple(covariates)
    frequency, _, age = histories.unique_arrays()
    design = histories.unique_design(covariates)
    (*design_values, pair_frequency, pair_age), pair = group_rows([*design.T, frequency, age])
    unique = pd.DataFrame({"frequency": pair_frequency, "recency": np.where(pair_frequency > 0, pair_age, 0.0),
                           "T": pair_age, **dict(zip(covariates, design_values))}, copy=False)
    return CustomerHistories(unique, np.arange(len(unique)), covariates=covariates), pair


def per_alive(model, standing, figure) -> np.ndarray:
    """``figure`` (one value per standing history) divided by their P(alive): the pair term of
    :func:`standing_histories` (0 where P(alive) underflows to 0, as the figure does)."""
    alive = model.probability_alive(standing).to_numpy()
    return np.divide(figure, alive, out=np.zeros(len(alive)), where=alive > 0)


@dataclasses.dataclass(frozen=True)
class HistoryIntervals:
    """Intervals of a purchase model's figures of each history from its parameter draws.

    Attributes
    ----------
    per_history : pandas.DataFrame
        Indexed like the histories given: ``probability_alive_lower``, ``probability_alive_upper``,
        ``expected_purchases_lower``, ``expected_purchases_upper``, ``value_lower``,
        ``value_upper`` (the ``value_figure``'s bounds): quantiles over the draws where the
        history's figure is finite, NaN where fewer than 9 in 10 are.
    totals : pandas.DataFrame or None
        With weights: one row per draw (index ``draw``), ``expected_purchases`` (the
        ``purchase_weights``-weighted sum over the distinct histories) and ``value`` (the
        ``value_weights``-weighted one); NaN at a draw where some history's figure is not finite.
    """

    per_history: pd.DataFrame = dataclasses.field(repr=False)
    totals: pd.DataFrame | None = dataclasses.field(repr=False)


def history_intervals(
    purchase_model,
    parameter_draws,
    histories,
    horizon,
    value_figure,
    level=0.9,
    purchase_weights=None,
    value_weights=None,
    value_at_point_ratio=False,
    method="draws",
) -> HistoryIntervals:
    """Intervals of P(alive), expected purchases and a value figure per history, from parameter draws.

    Each draw's figures come from its P(alive) of every distinct history and the pair terms of
    :func:`standing_histories` (the figure of the standing history over its P(alive)), so a
    draw costs one P(alive) per distinct history and the figures of the few standing ones.

    Parameters
    ----------
    purchase_model : fitted purchase model
    parameter_draws : pandas.DataFrame
        :func:`draw_parameters` of ``purchase_model``: each row goes to ``with_params``.
    histories : pandas.DataFrame or CustomerHistories
        Columns ``frequency``, ``recency``, ``T`` (and the model's design columns), or those
        customers grouped; evaluated once per distinct row.
    horizon : float
        Of the expected purchases, in model periods.
    value_figure : callable
        ``value_figure(model, standing)``: a figure of the form P(alive) x pair term for each
        standing history (a CustomerHistories), e.g. discounted expected purchases or DERT.
    level : float, default 0.9
        Probability between each lower and upper bound.
    purchase_weights : numpy.ndarray, optional
        One weight per distinct history (in the order of the grouped ``histories.unique``):
        the draws' weighted sums of expected purchases go to ``totals``.
    value_weights : callable, optional
        ``value_weights(draw, rows)``: the weights of the distinct histories ``rows`` (a
        slice) at that draw (``None``: at the point estimate), for the value figure's weighted sums.
    value_at_point_ratio : bool, default False
        Evaluate ``value_figure`` at the point estimate only and take each draw's value as its
        expected purchases times the point's ratio of the two (per pair). For a value that is
        the expected purchases discounted over the same horizon this ratio is an average
        discount factor, which moves far less between draws than the purchases do (a year of
        weeks at 10 % a year: bounds within 1 % of the interval's width, 0.1 % of the value);
        the exact route costs a discounted sum (52 expected purchases for a year of weeks) per
        pair and draw: 6 s of 10 s at 10M rows.
    method : {"draws", "delta"}, default "draws"
        ``draws``: each history's figures at every draw, and their quantiles. ``delta``: their
        limit for many customers, without evaluating each draw: each figure is normal around
        the point on the logit (P(alive)) or log scale (the others), with the variance g' S g
        of its gradient g in the draws' coordinates (log parameters, raw coefficients; central
        differences: 2 evaluations of P(alive) per parameter instead of one per draw) and S
        their covariance (``draw_parameters``'). Its error shrinks with the square of the
        parameters' standard errors, so it suits many customers (628k histories: 100 exact
        draws of Pareto/NBD's P(alive) took 44 s). The totals still come from the draws, to
        first order in the purchase parameters and exactly in the spend weights.

    Returns
    -------
    HistoryIntervals
    """
    check_is_fitted(purchase_model)
    horizon = check_horizon(horizon)
    level = _check_level(level)
    if method not in ("draws", "delta"):
        raise ValueError(f"method must be 'draws' or 'delta', got {method!r}")
    if len(parameter_draws) == 0:
        raise ValueError("parameter_draws: no draws")
    covariates = tuple(getattr(purchase_model, "covariates_", ()))
    histories = as_histories(histories, covariates)
    inverse, index = histories.inverse, histories.index
    standing, pair = standing_histories(histories, covariates)
    lower, upper = (1.0 - level) / 2.0, (1.0 + level) / 2.0
    run = _intervals_by_draws if method == "draws" else _intervals_by_delta
    bounds, totals = run(purchase_model, parameter_draws, histories, standing, pair, horizon, value_figure,
                         (lower, upper), purchase_weights, value_weights, value_at_point_ratio)
    per_history = pd.DataFrame({name: values[inverse] for name, values in bounds.items()}, index=index, copy=False)
    table = None
    if purchase_weights is not None or value_weights is not None:
        table = pd.DataFrame(totals, index=pd.RangeIndex(len(parameter_draws), name="draw"))
    return HistoryIntervals(per_history, table)


_FIGURES = ("probability_alive", "expected_purchases", "value")


def _intervals_by_draws(purchase_model, parameter_draws, histories, standing, pair, horizon, value_figure,
                        probabilities, purchase_weights, value_weights, value_at_point_ratio):
    models = [purchase_model.with_params(values) for _, values in parameter_draws.iterrows()]
    n_draws = len(models)
    # Pair terms at each draw (draws x pairs): few pairs, so cheap whatever the customers.
    purchase_term = np.empty((n_draws, len(standing.unique)))
    value_term = np.empty_like(purchase_term)
    for draw, model in enumerate(models):
        purchase_term[draw] = per_alive(model, standing, model.expected_purchases(standing, horizon).to_numpy())
        if not value_at_point_ratio:
            value_term[draw] = per_alive(model, standing, np.asarray(value_figure(model, standing), dtype=np.float64))
    if value_at_point_ratio:
        value_term = purchase_term * _point_ratio(purchase_model, standing, horizon, value_figure)
    unique = histories.unique
    n_unique = len(unique)
    bounds = {f"{name}_{side}": np.empty(n_unique) for name in _FIGURES for side in ("lower", "upper")}
    totals = {"expected_purchases": np.zeros(n_draws), "value": np.zeros(n_draws)}
    # Pairs x draws, so that each block's rows gather contiguous rows.
    purchase_term_t = np.ascontiguousarray(purchase_term.T)
    value_term_t = np.ascontiguousarray(value_term.T)
    for start in range(0, n_unique, HISTORY_ROWS_PER_BLOCK):
        rows_here = slice(start, start + HISTORY_ROWS_PER_BLOCK)
        block = CustomerHistories(unique.iloc[rows_here].reset_index(drop=True),
                                  np.arange(len(unique.iloc[rows_here])), covariates=histories.covariates)
        drawn_alive = np.empty((len(block.unique), n_draws))
        for draw, model in enumerate(models):
            drawn_alive[:, draw] = model.probability_alive(block).to_numpy()
        block_pair = pair[rows_here]
        for name, drawn in (("probability_alive", drawn_alive),
                            ("expected_purchases", drawn_alive * purchase_term_t[block_pair]),
                            ("value", drawn_alive * value_term_t[block_pair])):
            bounds[f"{name}_lower"][rows_here], bounds[f"{name}_upper"][rows_here] = _finite_row_quantiles(
                drawn, probabilities)
            # A draw with a non-finite figure anywhere leaves the totals (their sums are NaN).
            if name == "expected_purchases" and purchase_weights is not None:
                totals[name] += np.asarray(purchase_weights, dtype=np.float64)[rows_here] @ drawn
            if name == "value" and value_weights is not None:
                for draw in range(n_draws):
                    totals[name][draw] += drawn[:, draw] @ value_weights(draw, rows_here)
    return bounds, totals


def _point_ratio(model, standing, horizon, value_figure):
    """Per pair, the value figure over the expected purchases at the point estimate."""
    point_value = np.asarray(value_figure(model, standing), dtype=np.float64)
    point_purchases = model.expected_purchases(standing, horizon).to_numpy()
    return np.divide(point_value, point_purchases, out=np.zeros(len(point_value)), where=point_purchases > 0)


def _intervals_by_delta(purchase_model, parameter_draws, histories, standing, pair, horizon, value_figure,
                        probabilities, purchase_weights, value_weights, value_at_point_ratio):
    coordinates = list(parameter_draws.columns)
    positive = np.isin(coordinates, list(purchase_model.parameter_names))
    point = _point(purchase_model, coordinates)
    scale = np.where(positive, point, 1.0)
    sigma = purchase_model.covariance_.loc[coordinates, coordinates].to_numpy(dtype=np.float64)
    factor = np.linalg.cholesky(sigma / np.outer(scale, scale))  # the draws' covariance, as drawn
    # The draws as distances from the point, in those coordinates (draws x coordinates).
    shift = parameter_draws.to_numpy(dtype=np.float64).copy()
    shift[:, positive] = np.log(shift[:, positive] / point[positive])
    shift[:, ~positive] -= point[~positive]
    nudged = []
    for position in range(len(coordinates)):
        for sign in (1.0, -1.0):
            values = point.copy()
            values[position] = (point[position] * np.exp(sign * DELTA_STEP) if positive[position]
                                else point[position] + sign * DELTA_STEP)
            nudged.append(purchase_model.with_params(pd.Series(values, index=coordinates)))

    def differences(at):
        """Central differences of the nudged models' values (each a vector): rows x coordinates."""
        return np.column_stack([(at[2 * j] - at[2 * j + 1]) / (2.0 * DELTA_STEP) for j in range(len(coordinates))])

    ratio = _point_ratio(purchase_model, standing, horizon, value_figure) if value_at_point_ratio else None

    def terms_of(model):
        purchases = per_alive(model, standing, model.expected_purchases(standing, horizon).to_numpy())
        if ratio is not None:
            return purchases, purchases * ratio
        return purchases, per_alive(model, standing, np.asarray(value_figure(model, standing), dtype=np.float64))

    purchase_term, value_term = terms_of(purchase_model)
    nudged_terms = [terms_of(model) for model in nudged]
    term_gradients = [differences([_safe_log(terms[which]) for terms in nudged_terms]) for which in (0, 1)]
    unique = histories.unique
    alive = purchase_model.probability_alive(unique).to_numpy()
    logit_gradient = differences([_logit(model.probability_alive(unique).to_numpy()) for model in nudged])
    # d log P(alive) = (1 - P(alive)) d logit P(alive).
    log_alive_gradient = (1.0 - alive)[:, None] * logit_gradient

    def spread(gradients):
        return np.sqrt(np.square(gradients @ factor).sum(axis=1))

    z_values = {side: float(stats.norm.ppf(probability)) for side, probability in zip(("lower", "upper"), probabilities)}
    bounds = {}
    logit, alive_spread, certain = _logit(alive), spread(logit_gradient), alive == 1.0
    for side, z in z_values.items():
        drawn = 1.0 / (1.0 + np.exp(-(logit + z * alive_spread)))
        drawn[certain] = 1.0
        bounds[f"probability_alive_{side}"] = drawn
    totals = {"expected_purchases": np.zeros(len(shift)), "value": np.zeros(len(shift))}
    for name, term, term_gradient in (("expected_purchases", purchase_term, term_gradients[0]),
                                      ("value", value_term, term_gradients[1])):
        figure = alive * term[pair]
        figure_gradient = log_alive_gradient + term_gradient[pair]
        figure_spread = spread(figure_gradient)
        for side, z in z_values.items():
            bounds[f"{name}_{side}"] = figure * np.exp(z * figure_spread)
        # The totals at each draw: first order in the purchase parameters (the figures'
        # gradients times the draws' shifts), exactly in the spend weights the value carries.
        if name == "expected_purchases" and purchase_weights is not None:
            weighted = np.asarray(purchase_weights, dtype=np.float64) * figure
            totals[name] = weighted.sum() + shift @ (figure_gradient.T @ weighted)
        if name == "value" and value_weights is not None:
            everything = slice(0, len(figure))
            at_point = figure * value_weights(None, everything)
            by_draw = np.array([figure @ value_weights(draw, everything) for draw in range(len(shift))])
            totals[name] = by_draw + shift @ (figure_gradient.T @ at_point)
    return bounds, totals


def _safe_log(values):
    return np.log(np.maximum(values, 1e-300))


def _logit(probability):
    # Clipped so that certainty (P(alive) = 1 where the last purchase was at T) stays finite.
    clipped = np.clip(probability, 1e-300, 1.0 - 1e-16)
    return np.log(clipped) - np.log1p(-clipped)


@dataclasses.dataclass(frozen=True)
class SpendDraws:
    """Gamma-Gamma's expected spend at each parameter draw, for the customers it was built on.

    The expected spend is linear in the customer's mean spend m (weights (1 - w) and w on the
    population mean and m, w = p x / (p x + q - 1)), so at draw k it is
    ``intercept[k, g] + slope[k, g] * m`` for the customer's (frequency, design) group g.

    Attributes
    ----------
    intercept, slope : numpy.ndarray
        Draws x groups.
    group : numpy.ndarray
        Each customer's group.
    monetary_value : numpy.ndarray
        Each customer's mean spend.
    """

    intercept: np.ndarray = dataclasses.field(repr=False)
    slope: np.ndarray = dataclasses.field(repr=False)
    group: np.ndarray = dataclasses.field(repr=False)
    monetary_value: np.ndarray = dataclasses.field(repr=False)

    def log_variance(self) -> np.ndarray:
        """Each customer's variance of log expected spend over the draws, matched to a
        lognormal with the draws' mean and variance: log(1 + variance / mean^2)."""
        intercept, slope, m = self.intercept, self.slope, self.monetary_value
        mean_i, mean_s = intercept.mean(axis=0), slope.mean(axis=0)
        centred_i, centred_s = intercept - mean_i, slope - mean_s
        n = intercept.shape[0]
        var_i = (centred_i * centred_i).sum(axis=0) / n
        var_s = (centred_s * centred_s).sum(axis=0) / n
        cov = (centred_i * centred_s).sum(axis=0) / n
        # Per customer in float32 (a log variance to 7 digits; 18M customers are memory-bound):
        # (var_i + m (2 cov + var_s m)) / (mean_i + mean_s m)^2 from each group's coefficients.
        g = self.group
        m = m.astype(np.float32)
        mean = mean_s.astype(np.float32)[g]
        mean *= m
        mean += mean_i.astype(np.float32)[g]
        variance = var_s.astype(np.float32)[g]
        variance *= m
        variance += (2.0 * cov).astype(np.float32)[g]
        variance *= m
        variance += var_i.astype(np.float32)[g]
        mean *= mean
        ratio = np.divide(variance, mean, out=np.zeros(len(m), dtype=np.float32), where=mean != 0)
        return np.log1p(ratio, out=ratio)


def spend_draws(spend_model, parameter_draws, features) -> SpendDraws:
    """:class:`SpendDraws` of ``features`` (``frequency``, ``monetary_value`` and the spend
    model's design columns) at each row of ``parameter_draws`` (:func:`draw_parameters` of
    ``spend_model``); refuses draws with q <= 1, where the mean spend is infinite."""
    check_is_fitted(spend_model)
    covariates = tuple(getattr(spend_model, "covariates_", ()))
    columns = check_features(features, SPEND_COLUMNS)
    infinite = int(np.count_nonzero(parameter_draws["q"] <= 1))
    if infinite:
        raise ValueError(
            f"spend_model: q <= 1 in {infinite} of {len(parameter_draws)} parameter draws, where the mean spend "
            "per purchase is infinite: the spend model is too uncertain for an interval (fit on more customers)"
        )
    design = design_matrix(features, covariates)
    counts = np.asarray(columns["frequency"], dtype=np.float64)
    largest = float(counts.max()) if len(counts) else 0.0
    if not covariates and largest < 1e6 and np.array_equal(counts, np.floor(counts)):
        # Whole numbers of purchases are their own group numbers: no hashing of every customer
        # (a group of nobody costs nothing).
        group = counts.astype(np.intp)
        frequency, design_values = np.arange(int(largest) + 1, dtype=np.float64), []
    else:
        (frequency, *design_values), group = group_rows([counts, *design.T])
    # Two mean spends per group give the line's intercept and slope at each draw.
    probes = pd.DataFrame({"frequency": np.repeat(frequency, 2),
                           "monetary_value": np.tile([1.0, 2.0], len(frequency)),
                           **{name: np.repeat(values, 2) for name, values in zip(covariates, design_values)}})
    intercept = np.empty((len(parameter_draws), len(frequency)))
    slope = np.empty_like(intercept)
    for draw, (_, values) in enumerate(parameter_draws.iterrows()):
        spend = spend_model.with_params(values).expected_spend(probes).to_numpy().reshape(-1, 2)
        slope[draw] = spend[:, 1] - spend[:, 0]
        intercept[draw] = spend[:, 0] - slope[draw]
    _finite(intercept.T, "expected_spend")
    return SpendDraws(intercept, slope, group, np.asarray(columns["monetary_value"], dtype=np.float64))


def log_distances(point_value, value_lower, value_upper) -> tuple[np.ndarray, np.ndarray]:
    """How far below and above ``point_value`` its bounds lie on the log scale (both >= 0; 0
    where the point is 0, and the lower infinite where the lower bound is 0). They depend on
    the history alone: the pipeline computes them once per distinct history."""
    point_value = np.asarray(point_value, dtype=np.float64)
    safe = np.where(point_value > 0, point_value, 1.0)
    with np.errstate(divide="ignore"):  # a bound of 0 is -inf on the log scale: a lower bound of 0
        below = np.maximum(-np.log(np.maximum(np.asarray(value_lower, dtype=np.float64), 0.0) / safe), 0.0)
        above = np.maximum(np.log(np.maximum(np.asarray(value_upper, dtype=np.float64), 0.0) / safe), 0.0)
    zero = point_value <= 0
    below[zero], above[zero] = 0.0, 0.0
    return below, above


def value_bounds(point_value, value_lower, value_upper, point_spend, spend_log_variance, level=0.9):
    """Bounds of value x spend (discounted purchases x expected spend) from each factor's own
    uncertainty, the two being independent (separate models, separate likelihoods).

    On the log scale the two spreads add: each bound is the point product times
    exp(-/+ sqrt(d_value^2 + (z sigma_spend)^2)), where d_value is the distance on the log
    scale from the point value to the value's bound (its draws' quantile, so a skewed value
    keeps its skew; :func:`log_distances`) and sigma_spend^2 the spend's log variance over its
    draws (z the normal quantile of the level). Exact for lognormal factors; the point
    product always lies within. Where the point value is 0 the bounds are 0.
    """
    below, above = log_distances(point_value, value_lower, value_upper)
    gross = np.asarray(point_value, dtype=np.float64) * np.asarray(point_spend, dtype=np.float64)
    return bounds_from_log_distances(gross, below, above, spend_log_variance, level)


def bounds_from_log_distances(gross, below, above, spend_log_variance, level=0.9) -> tuple[np.ndarray, np.ndarray]:
    """:func:`value_bounds` from the point product ``gross`` and the value's :func:`log_distances`
    (per customer: each customer's history's)."""
    level = _check_level(level)
    z = float(stats.norm.ppf((1.0 + level) / 2.0))
    # In the inputs' precision (the pipeline passes float32: 18M customers' bounds are memory-bound).
    spend_term = np.asarray(spend_log_variance) * np.asarray(z * z, dtype=np.asarray(spend_log_variance).dtype)
    lower = np.multiply(below, below)
    lower += spend_term
    np.sqrt(lower, out=lower)
    np.negative(lower, out=lower)
    np.exp(lower, out=lower)
    lower *= gross
    upper = np.multiply(above, above)
    upper += spend_term
    np.sqrt(upper, out=upper)
    np.exp(upper, out=upper)
    upper *= gross
    return lower, upper
