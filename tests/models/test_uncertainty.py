"""Parameter draws, intervals and the spread of purchases (models/uncertainty.py).

References are independent of the code under test: the draws' moments against the fitted
covariance transformed by hand, predictions at drawn values against lifetimes' own fitter,
the purchase distribution by quadrature over the purchase rate, and coverage of the true
parameters on logs simulated from the model's story (tests/models/simulate.py).
"""

import warnings

import numpy as np
import pandas as pd
import pytest
from scipy import integrate
from scipy.special import betaln
from scipy.stats import binom, gamma, poisson

from models import (
    BetaGeoModel,
    CovariateEncoder,
    GammaGammaModel,
    ModifiedBetaGeoModel,
    ParetoNBDModel,
    group_histories,
)
from models.discounting import discounted_expected_purchases, predicted_clv
from models.uncertainty import (
    _discounted_expected_purchases,
    customer_intervals,
    draw_parameters,
    history_intervals,
    purchase_spread,
    spend_draws,
    standing_histories,
    value_bounds,
)
from tests.models.simulate import beta_geometric, customers_with_covariates, gamma_gamma

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from lifetimes import BetaGeoFitter

# CDNOW's published BG/NBD (Fader, Hardie & Lee 2005) and Gamma-Gamma (note 025) estimates.
TRUE_PURCHASE = {"r": 0.243, "alpha": 4.414, "a": 0.793, "b": 2.426}
TRUE_SPEND = {"p": 6.25, "q": 3.74, "gamma": 15.44}
N_STEPS, RATE = 52, 0.0018


def simulated(seed, n):
    rng = np.random.default_rng(seed)
    age = np.round(rng.uniform(30.0, 78.0, n), 1)
    features = beta_geometric(rng, age, **TRUE_PURCHASE)
    features["monetary_value"] = gamma_gamma(rng, features["frequency"], **TRUE_SPEND)
    features.index = pd.Index([f"c{i}" for i in range(n)], name="customer_id")
    return features


@pytest.fixture(scope="module")
def features():
    return simulated(11, 3000)


@pytest.fixture(scope="module")
def models(features):
    return BetaGeoModel().fit(features), GammaGammaModel().fit(features)


@pytest.fixture(scope="module")
def intervals(features, models):
    purchase, spend = models
    return customer_intervals(purchase, spend, features, N_STEPS, RATE, margin_rate=0.3, acquisition_cost=2.0,
                              n_draws=200, seed=5)


def log_scale_covariance(model):
    """Cov(log theta) = D^-1 Sigma D^-1 for the parameters, by hand."""
    theta = np.array([model.params_[name] for name in model.parameter_names])
    return model.covariance_.to_numpy() / np.outer(theta, theta)


# --- draws --------------------------------------------------------------------------------


def test_draws_are_reproducible_from_the_seed_and_leave_global_state_alone(models):
    purchase, _ = models
    state = np.random.get_state()[1].copy()
    first, again = draw_parameters(purchase, 50, seed=3), draw_parameters(purchase, 50, seed=3)
    pd.testing.assert_frame_equal(first, again)
    assert not np.allclose(first.to_numpy(), draw_parameters(purchase, 50, seed=4).to_numpy())
    assert list(first.columns) == list(purchase.parameter_names)
    assert (first.to_numpy() > 0).all()
    np.testing.assert_array_equal(np.random.get_state()[1], state)
    with pytest.raises(ValueError, match="seed"):
        draw_parameters(purchase, 50, seed=None)


@pytest.mark.parametrize("which", [0, 1])
def test_draws_have_the_models_covariance_on_the_log_scale(models, which):
    model = models[which]
    draws = np.log(draw_parameters(model, 40_000, seed=8).to_numpy())
    expected = log_scale_covariance(model)
    theta = np.array([model.params_[name] for name in model.parameter_names])
    sd = np.sqrt(np.diag(expected))
    # Sample means and covariances of 40,000 normal draws: within 4 standard errors.
    assert (np.abs(draws.mean(axis=0) - np.log(theta)) < 4 * sd / np.sqrt(len(draws))).all()
    correlation_scale = np.outer(sd, sd)
    assert np.max(np.abs(np.cov(draws, rowvar=False) - expected) / correlation_scale) < 4 * np.sqrt(2 / len(draws))


def test_coefficients_are_drawn_on_their_own_scale_with_their_covariances():
    rng = np.random.default_rng(2)
    n = 3000
    customers = customers_with_covariates(rng, n)
    age = np.round(rng.uniform(30.0, 78.0, n), 1)
    alpha = TRUE_PURCHASE["alpha"] * np.exp(-0.5 * customers["channel[web]"].to_numpy())
    features = beta_geometric(rng, age, TRUE_PURCHASE["r"], alpha, TRUE_PURCHASE["a"], TRUE_PURCHASE["b"])
    features["monetary_value"] = gamma_gamma(rng, features["frequency"], **TRUE_SPEND)
    design = CovariateEncoder(["channel"]).fit_transform(customers)
    features = features.join(design)
    purchase = BetaGeoModel(covariates=["channel[web]"]).fit(features)
    spend = GammaGammaModel(covariates=["channel[web]"]).fit(features)
    names = list(purchase.covariance_.index)
    assert "alpha:channel[web]" in names
    draws = draw_parameters(purchase, 40_000, seed=1)
    positive = np.isin(names, purchase.parameter_names)
    point = np.array([purchase.params_.get(name, np.nan) for name in names])
    point[~positive] = purchase.coefficients_["coefficient"].to_numpy()
    scale = np.where(positive, point, 1.0)
    expected = purchase.covariance_.to_numpy() / np.outer(scale, scale)
    values = draws.to_numpy().copy()
    values[:, positive] = np.log(values[:, positive])
    sd = np.sqrt(np.diag(expected))
    assert np.max(np.abs(np.cov(values, rowvar=False) - expected) / np.outer(sd, sd)) < 4 * np.sqrt(2 / len(draws))
    # Drawn around the coefficient itself, not its logarithm.
    coefficient = float(purchase.coefficients_.set_index("parameter").loc["alpha", "coefficient"])
    assert abs(draws["alpha:channel[web]"].mean() - coefficient) < 4 * sd[names.index("alpha:channel[web]")] / 200

    result = customer_intervals(purchase, spend, features, 12, RATE, n_draws=40, seed=2)
    grouped = group_histories(features, covariates=purchase.covariates_)
    point_clv = predicted_clv(discounted_expected_purchases(purchase, grouped, 12, 1.0, RATE),
                              spend.expected_spend(features))
    inside = (result.per_customer["clv_lower"] <= point_clv) & (point_clv <= result.per_customer["clv_upper"])
    assert inside.mean() > 0.99


def test_with_params_predicts_as_lifetimes_at_those_values(models, features):
    purchase, spend = models
    values = {"r": 0.3, "alpha": 5.0, "a": 0.9, "b": 2.0}
    moved = purchase.with_params(values)
    fitter = BetaGeoFitter()
    fitter.params_ = pd.Series(values)
    head = features.iloc[:200]
    expected = fitter.conditional_expected_number_of_purchases_up_to_time(26, head["frequency"], head["recency"],
                                                                          head["T"])
    np.testing.assert_allclose(moved.expected_purchases(head, 26).to_numpy(), np.asarray(expected), rtol=1e-12)
    assert purchase.params_ != moved.params_  # the fitted model is left as it was
    assert moved.covariance_ is purchase.covariance_
    moved_spend = spend.with_params({"p": 5.0, "q": 3.0, "gamma": 10.0})
    assert moved_spend.population_mean_spend_ == pytest.approx(5.0 * 10.0 / 2.0)
    with pytest.raises(ValueError, match="missing"):
        purchase.with_params({"r": 0.3})
    with pytest.raises(ValueError, match="above 0"):
        purchase.with_params({**values, "a": -1.0})


@pytest.mark.parametrize("model_class", [BetaGeoModel, ModifiedBetaGeoModel, ParetoNBDModel])
@pytest.mark.parametrize("covariates", [None, ["channel[web]"]])
def test_discounting_one_history_per_frequency_and_age_equals_discounting_each(features, model_class, covariates):
    # Ages in whole weeks, as on a weekly grid: many histories share (frequency, T).
    data = features.assign(**{"T": np.ceil(features["T"]),
                              "channel[web]": (np.arange(len(features)) % 3 == 0).astype(float)})
    model = model_class(covariates=covariates).fit(data)
    grouped = group_histories(data, covariates=model.covariates_)
    unique = group_histories(grouped.unique, covariates=model.covariates_)
    assert len(standing_histories(unique, model.covariates_)[0].unique) < len(unique) / 2
    expected = model.expected_purchases_by_horizon(unique, [26.0])[:, 0]
    shortcut = _discounted_expected_purchases(model, standing_histories(unique, model.covariates_), expected,
                                              26, 1.0, RATE)
    direct = discounted_expected_purchases(model, unique, 26, 1.0, RATE).to_numpy()
    np.testing.assert_allclose(shortcut, direct, rtol=1e-12, atol=0)


# --- per-customer intervals -------------------------------------------------------------------


def test_intervals_contain_the_point_estimates(intervals, features, models):
    purchase, spend = models
    table = intervals.per_customer
    assert list(table.columns) == ["clv_lower", "clv_upper", "expected_purchases_lower", "expected_purchases_upper",
                                   "probability_alive_lower", "probability_alive_upper"]
    assert table.index.equals(features.index)
    horizon = float(N_STEPS)
    point = {
        "expected_purchases": purchase.expected_purchases(features, horizon),
        "probability_alive": purchase.probability_alive(features),
        "clv": predicted_clv(discounted_expected_purchases(purchase, features, N_STEPS, 1.0, RATE),
                             spend.expected_spend(features), 0.3, 2.0),
    }
    for figure, values in point.items():
        lower, upper = table[f"{figure}_lower"], table[f"{figure}_upper"]
        assert (lower <= upper).all(), figure
        # A 90 % interval of the parameters' uncertainty holds the point estimate for every
        # customer here (the point is near the draws' median); float32 sorting may round a bound.
        slack = 1e-6 * np.abs(values)
        assert ((lower - slack <= values) & (values <= upper + slack)).all(), figure
    assert (table["probability_alive_upper"] <= 1.0).all()
    assert (table["clv_upper"] - table["clv_lower"]).gt(0).mean() > 0.99


def test_the_company_total_is_the_sum_over_customers_at_each_draw(features, models, intervals):
    purchase, spend = models
    point_total = predicted_clv(discounted_expected_purchases(purchase, features, N_STEPS, 1.0, RATE),
                                spend.expected_spend(features), 0.3, 2.0).sum()
    company = intervals.company
    assert list(company.index) == ["clv", "expected_purchases"]
    assert company.loc["clv", "lower"] < point_total < company.loc["clv", "upper"]
    assert intervals.company_draws.shape == (200, 2)
    # With one draw every quantile is that draw: the total is then the sum of the customers'.
    one = customer_intervals(purchase, spend, features, N_STEPS, RATE, margin_rate=0.3, acquisition_cost=2.0,
                             n_draws=1, seed=9)
    table = one.per_customer
    np.testing.assert_allclose(table["clv_lower"], table["clv_upper"])
    assert one.company_draws["clv"].iloc[0] == pytest.approx(table["clv_lower"].sum(), rel=1e-6)
    assert one.company_draws["expected_purchases"].iloc[0] == pytest.approx(
        table["expected_purchases_lower"].sum(), rel=1e-6)
    # Summing first, the customers' errors partly cancel: the total's interval is narrower
    # than the sum of the customers' widths.
    width = company.loc["clv", "upper"] - company.loc["clv", "lower"]
    assert width < (intervals.per_customer["clv_upper"] - intervals.per_customer["clv_lower"]).sum()


def test_margin_and_cost_move_the_gross_interval_and_a_negative_margin_swaps_it(features, models):
    purchase, spend = models
    gross = customer_intervals(purchase, spend, features, 12, RATE, n_draws=30, seed=4).per_customer
    margin = pd.Series(np.where(np.arange(len(features)) % 3 == 0, -0.2, 0.4), index=features.index)
    cost = pd.Series(np.arange(len(features)) % 5, index=features.index, dtype=float)
    net = customer_intervals(purchase, spend, features, 12, RATE, margin_rate=margin, acquisition_cost=cost,
                             n_draws=30, seed=4).per_customer
    negative = margin < 0
    np.testing.assert_allclose(net["clv_lower"][~negative], 0.4 * gross["clv_lower"][~negative] - cost[~negative])
    np.testing.assert_allclose(net["clv_lower"][negative], -0.2 * gross["clv_upper"][negative] - cost[negative])
    np.testing.assert_allclose(net["clv_upper"][negative], -0.2 * gross["clv_lower"][negative] - cost[negative])
    pd.testing.assert_frame_equal(net.drop(columns=["clv_lower", "clv_upper"]),
                                  gross.drop(columns=["clv_lower", "clv_upper"]))


def test_intervals_narrow_when_fitted_on_four_times_the_customers(features):
    small = simulated(21, 2000)
    large = simulated(22, 8000)
    widths = {}
    for label, data in (("small", small), ("large", large)):
        purchase, spend = BetaGeoModel().fit(data), GammaGammaModel().fit(data)
        # Both evaluated on the same customers, so only the parameters' uncertainty differs.
        table = customer_intervals(purchase, spend, features, 12, RATE, n_draws=100, seed=1).per_customer
        widths[label] = {figure: (table[f"{figure}_upper"] - table[f"{figure}_lower"]).median()
                         for figure in ("clv", "expected_purchases")}
        widths[label]["probability_alive"] = (table["probability_alive_upper"]
                                              - table["probability_alive_lower"]).mean()
    for figure in widths["small"]:
        ratio = widths["large"][figure] / widths["small"][figure]
        # 1 / sqrt(4) = 0.5 in the limit; other simulated customers and 100 draws blur it.
        assert 0.3 < ratio < 0.75, (figure, ratio)


def test_intervals_take_grouped_histories_and_check_their_arguments(features, models):
    purchase, spend = models
    grouped = group_histories(features)
    with_groups = customer_intervals(purchase, spend, features, 12, RATE, n_draws=10, seed=1, histories=grouped)
    without = customer_intervals(purchase, spend, features, 12, RATE, n_draws=10, seed=1)
    pd.testing.assert_frame_equal(with_groups.per_customer, without.per_customer)
    for argument, value in (("level", 1.0), ("n_draws", 0), ("seed", None), ("n_steps", 0)):
        settings = {"level": 0.9, "n_draws": 10, "seed": 1, "n_steps": 12, argument: value}
        with pytest.raises(ValueError, match=argument):
            customer_intervals(purchase, spend, features, settings["n_steps"], RATE, level=settings["level"],
                               n_draws=settings["n_draws"], seed=settings["seed"])
    with pytest.raises(ValueError, match="margin_rate"):
        customer_intervals(purchase, spend, features, 12, RATE, margin_rate=pd.Series([0.3]), n_draws=2)


# --- predictive spread ------------------------------------------------------------------------


def bgnbd_distribution_by_quadrature(params, frequency, recency, age, horizon, largest):
    """P(X(T, T + horizon] = n | history), n = 0..largest, for BG/NBD, by hand.

    Given alive at T: lambda ~ Gamma(r + x, alpha + T), p ~ Beta(a, b + x), and the customer
    drops out after each future purchase with probability p, so X = min(N, J) with
    N ~ Poisson(lambda horizon) and J ~ Geometric(p) on {1, 2, ...}. The lambda integral is
    taken numerically, the p moments from the Beta function. P(alive) from Fader, Hardie &
    Lee's note 021.
    """
    r, alpha, a, b = (params[name] for name in ("r", "alpha", "a", "b"))
    x = frequency
    alive = 1.0 / (1.0 + (x > 0) * a / (b + x - 1) * ((alpha + age) / (alpha + recency)) ** (r + x))
    posterior = gamma(r + x, scale=1.0 / (alpha + age))

    def expected(function):
        return integrate.quad(lambda rate: function(rate * horizon) * posterior.pdf(rate), 0, np.inf,
                              epsabs=1e-13, epsrel=1e-11, limit=400)[0]

    masses = []
    for n in range(largest + 1):
        if n == 0:
            when_alive = expected(lambda mean: poisson.pmf(0, mean))
        else:
            survive = np.exp(betaln(a, b + x + n - 1) - betaln(a, b + x))       # E[(1 - p)^(n - 1)]
            drop = np.exp(betaln(a + 1, b + x + n - 1) - betaln(a, b + x))      # E[p (1 - p)^(n - 1)]
            when_alive = (survive * expected(lambda mean, n=n: poisson.pmf(n, mean))
                          + drop * expected(lambda mean, n=n: poisson.sf(n, mean)))
        masses.append((1.0 - alive) * (n == 0) + alive * when_alive)
    return np.array(masses)


# quad reports roundoff near its 1e-11 target on the sharply peaked posterior of the frequent buyer.
@pytest.mark.filterwarnings("ignore::scipy.integrate.IntegrationWarning")
def test_purchase_percentiles_match_the_distribution_computed_by_hand(models):
    purchase, _ = models
    histories = pd.DataFrame({"frequency": [0.0, 2.0, 7.0, 25.0, 25.0], "recency": [0.0, 30.0, 60.0, 70.0, 20.0],
                              "T": [40.0, 60.0, 65.0, 72.0, 72.0]}, index=list("vwxyz"))
    horizon = 52.0
    spread = purchase_spread(purchase, histories, horizon)
    assert list(spread.columns) == ["probability_no_purchases", "purchases_p10", "purchases_p90"]
    assert spread.index.equals(histories.index)
    for name, row in histories.iterrows():
        masses = bgnbd_distribution_by_quadrature(purchase.params_, row["frequency"], row["recency"], row["T"],
                                                  horizon, largest=150)
        cumulative = np.cumsum(masses)
        assert spread.loc[name, "probability_no_purchases"] == pytest.approx(masses[0], rel=1e-8)
        for column, probability in (("purchases_p10", 0.1), ("purchases_p90", 0.9)):
            assert spread.loc[name, column] == np.argmax(cumulative >= probability), (name, column)
    # The frequent, recent buyer has a 10th percentile above 0; the one gone quiet does not.
    assert spread.loc["y", "purchases_p10"] > 0 == spread.loc["z", "purchases_p10"]


def test_purchase_spread_takes_grouped_histories_and_other_percentiles(models, features):
    purchase, _ = models
    head = features.iloc[:300]
    plain = purchase_spread(purchase, head, 26.0, percentiles=(0.05, 0.5, 0.95))
    grouped = purchase_spread(purchase, group_histories(head), 26.0, percentiles=(0.05, 0.5, 0.95))
    pd.testing.assert_frame_equal(plain, grouped)
    assert list(plain.columns) == ["probability_no_purchases", "purchases_p5", "purchases_p50", "purchases_p95"]
    assert (plain["purchases_p5"] <= plain["purchases_p50"]).all()
    assert (plain["purchases_p50"] <= plain["purchases_p95"]).all()
    with pytest.raises(ValueError, match="percentiles"):
        purchase_spread(purchase, head, 26.0, percentiles=(0.9, 0.1))


def direct_spread(model, features, horizon, probabilities=(0.1, 0.9)):
    """Each history's percentiles from its own cumulative P(X <= n | history), n = 0, 1, ..."""
    out = {f"purchases_p{100 * p:g}": [] for p in probabilities}
    for position in range(len(features)):
        row = features.iloc[[position]]
        cumulative, n = 0.0, 0
        found = {}
        while len(found) < len(probabilities):
            cumulative += model.probability_of_purchases(row, n, horizon).iloc[0]
            for p in probabilities:
                if p not in found and cumulative >= p:
                    found[p] = n
            n += 1
        for p in probabilities:
            out[f"purchases_p{100 * p:g}"].append(float(found[p]))
    return pd.DataFrame(out, index=features.index)


@pytest.mark.parametrize("model_class", [BetaGeoModel, ModifiedBetaGeoModel, ParetoNBDModel])
@pytest.mark.parametrize("covariates", [None, ["channel[web]"]])
def test_purchase_spread_from_pair_tables_equals_each_historys_own_distribution(features, model_class, covariates):
    data = features.assign(**{"T": np.ceil(features["T"]),
                              "channel[web]": (np.arange(len(features)) % 3 == 0).astype(float)})
    model = model_class(covariates=covariates).fit(data)
    sample = data.iloc[::15]
    spread = purchase_spread(model, sample, 39.0)
    direct = direct_spread(model, sample, 39.0)
    pd.testing.assert_frame_equal(spread[direct.columns], direct)
    np.testing.assert_allclose(spread["probability_no_purchases"],
                               model.probability_of_purchases(sample, 0, 39.0), rtol=1e-10, atol=1e-13)
    assert spread["purchases_p90"].max() > 3  # frequent buyers reach past the first purchases


# --- intervals per distinct history (the pipeline's) ---------------------------------------------


@pytest.mark.parametrize("model_class", [BetaGeoModel, ModifiedBetaGeoModel, ParetoNBDModel])
def test_figures_are_p_alive_times_a_term_of_frequency_and_age(features, model_class):
    data = features.assign(T=np.ceil(features["T"]))
    model = model_class().fit(data)
    grouped = group_histories(data)
    standing, pair = standing_histories(grouped)
    assert len(standing.unique) < len(grouped.unique) / 2
    assert (standing.unique["recency"] == np.where(standing.unique["frequency"] > 0, standing.unique["T"], 0)).all()
    alive = model.probability_alive(grouped.unique).to_numpy()
    standing_alive = model.probability_alive(standing).to_numpy()
    for figure in (lambda m, h: m.expected_purchases(h, 30.0).to_numpy(),
                   lambda m, h: m.discounted_expected_residual_purchases(h, RATE).to_numpy(),
                   lambda m, h: m.probability_of_purchases(h, 2, 30.0).to_numpy()):
        term = figure(model, standing) / standing_alive
        np.testing.assert_allclose(alive * term[pair], figure(model, grouped.unique), rtol=1e-9, atol=1e-300)


@pytest.mark.parametrize("model_class", [BetaGeoModel, ParetoNBDModel])
def test_history_intervals_equal_the_quantiles_of_each_historys_own_figures(features, model_class):
    purchase = model_class().fit(features)
    # Distinct histories: the weights are per distinct history.
    sample = group_histories(features.iloc[:220]).unique.iloc[:200]
    draws = draw_parameters(purchase, 40, seed=3)

    def value(model, histories):
        return discounted_expected_purchases(model, histories, 26, 1.0, RATE).to_numpy()

    counts = np.arange(1, 201, dtype=float)
    weights = np.linspace(0.5, 2.0, 200)
    result = history_intervals(purchase, draws, sample, 26.0, value, level=0.8, purchase_weights=counts,
                               value_weights=lambda draw, rows: weights[rows] * (1 + draw))
    table = result.per_history
    assert table.index.equals(sample.index)
    by_draw = {"probability_alive": [], "expected_purchases": [], "value": []}
    for _, values in draws.iterrows():
        model = purchase.with_params(values)
        by_draw["probability_alive"].append(model.probability_alive(sample).to_numpy())
        by_draw["expected_purchases"].append(model.expected_purchases(sample, 26.0).to_numpy())
        by_draw["value"].append(value(model, sample))
    for figure, drawn in by_draw.items():
        drawn = np.array(drawn)  # draws x customers
        lower, upper = np.quantile(drawn, [0.1, 0.9], axis=0)
        np.testing.assert_allclose(table[f"{figure}_lower"], lower, rtol=1e-6, err_msg=figure)
        np.testing.assert_allclose(table[f"{figure}_upper"], upper, rtol=1e-6, err_msg=figure)
    np.testing.assert_allclose(result.totals["expected_purchases"], np.array(by_draw["expected_purchases"]) @ counts,
                               rtol=1e-9)
    np.testing.assert_allclose(result.totals["value"],
                               np.array(by_draw["value"]) @ weights * (1 + np.arange(40)), rtol=1e-9)


def test_spend_draws_are_the_spend_models_own_at_each_draw_and_give_its_log_variance(features, models):
    _, spend = models
    sample = features.iloc[:300]
    draws = draw_parameters(spend, 50, seed=8)
    result = spend_draws(spend, draws, sample)
    drawn = np.array([spend.with_params(values).expected_spend(sample).to_numpy() for _, values in draws.iterrows()])
    rebuilt = result.intercept[:, result.group] + result.slope[:, result.group] * sample["monetary_value"].to_numpy()
    np.testing.assert_allclose(rebuilt, drawn, rtol=1e-10)
    mean, variance = drawn.mean(axis=0), drawn.var(axis=0)
    np.testing.assert_allclose(result.log_variance(), np.log1p(variance / mean**2), rtol=1e-5)  # float32
    with pytest.raises(ValueError, match="q <= 1"):
        spend_draws(spend, draws.assign(q=0.5), sample)


def test_value_bounds_combine_independent_spreads_as_the_full_monte_carlo_does(features, models):
    """The pipeline's cheap CLV interval (per-history value quantiles and the spend's log
    variance, added on the log scale) against customer_intervals, which forms every
    customer's CLV at every pair of draws and takes its quantiles."""
    purchase, spend = models
    features = features.iloc[:1500]
    seed, n_draws = 5, 200
    reference = customer_intervals(purchase, spend, features, N_STEPS, RATE, n_draws=n_draws, seed=seed).per_customer
    purchase_seed, spend_seed = np.random.SeedSequence(seed).spawn(2)
    purchase_draws = draw_parameters(purchase, n_draws, purchase_seed)
    spend_parameter_draws = draw_parameters(spend, n_draws, spend_seed)
    value = history_intervals(purchase, purchase_draws, features, float(N_STEPS),
                              lambda m, h: discounted_expected_purchases(m, h, N_STEPS, 1.0, RATE).to_numpy()).per_history
    point_value = discounted_expected_purchases(purchase, features, N_STEPS, 1.0, RATE).to_numpy()
    lower, upper = value_bounds(point_value, value["value_lower"], value["value_upper"],
                                spend.expected_spend(features).to_numpy(),
                                spend_draws(spend, spend_parameter_draws, features).log_variance())
    point = point_value * spend.expected_spend(features).to_numpy()
    assert ((lower <= point * (1 + 1e-12)) & (point <= upper * (1 + 1e-12))).all()
    # On the log scale each bound's distance from the point within 15 % of the Monte Carlo's
    # (medians over customers: 400 draws' 5 % quantiles move by a few per cent themselves).
    for ours, theirs in ((lower, reference["clv_lower"]), (upper, reference["clv_upper"])):
        ratio = np.abs(np.log(ours / point)) / np.abs(np.log(theirs.to_numpy() / point))
        assert 0.85 < np.median(ratio) < 1.15, np.median(ratio)
    np.testing.assert_array_equal(value_bounds([0.0], [0.0], [0.0], [5.0], [0.1]), ([0.0], [0.0]))


# --- coverage -------------------------------------------------------------------------------


@pytest.mark.slow
def test_parameter_intervals_cover_the_true_parameters_about_as_often_as_they_say():
    """100 simulated logs, each fitted: the 90 % interval of each parameter from the draws
    (quantiles of 2,000 draws from the asymptotic normal on the log scale) should hold the
    true value in about 90 of the 100 (binomial: 80 to 98 has probability 0.9989)."""
    replications, level = 100, 0.9
    names = list(TRUE_PURCHASE)
    covered = np.zeros(len(names), dtype=int)
    for replication in range(replications):
        data = simulated(1000 + replication, 4000)
        model = BetaGeoModel().fit(data)
        draws = draw_parameters(model, 2000, seed=replication)
        lower, upper = np.quantile(draws.to_numpy(), [(1 - level) / 2, (1 + level) / 2], axis=0)
        truth = np.array([TRUE_PURCHASE[name] for name in names])
        covered += (lower <= truth) & (truth <= upper)
    figure = dict(zip(names, covered.tolist()))
    print(f"coverage of 90 % parameter intervals in {replications} replications: {figure}")
    assert binom.cdf(79, replications, level) + binom.sf(98, replications, level) < 0.002
    for name, count in figure.items():
        assert 80 <= count <= 98, (name, count)


def test_the_horizons_discounting_held_at_the_point_moves_the_value_bounds_by_little(features, models):
    purchase, _ = models
    draws = draw_parameters(purchase, 60, seed=12)

    def value(model, histories):
        return discounted_expected_purchases(model, histories, N_STEPS, 1.0, RATE).to_numpy()

    exact = history_intervals(purchase, draws, features, float(N_STEPS), value).per_history
    cheap = history_intervals(purchase, draws, features, float(N_STEPS), value, value_at_point_ratio=True).per_history
    width = exact["value_upper"] - exact["value_lower"]
    for side in ("value_lower", "value_upper"):
        # A year of weeks at 10 % a year: 0.7 % of the width, 0.09 % of the value at most here.
        assert (np.abs(cheap[side] - exact[side]) <= 0.01 * width + 1e-12).all(), side
        assert (np.abs(cheap[side] - exact[side]) <= 2e-3 * exact[side]).all(), side
    pd.testing.assert_frame_equal(cheap.drop(columns=["value_lower", "value_upper"]),
                                  exact.drop(columns=["value_lower", "value_upper"]))


@pytest.mark.parametrize("model_class", [BetaGeoModel, ModifiedBetaGeoModel, ParetoNBDModel])
def test_the_delta_method_gives_the_draws_bounds_on_many_customers(model_class):
    """On 20,000 customers the parameters' errors are small and the delta method is close to
    the quantiles of 2,000 exact draws: every bound within 10 % of its interval's width, most
    within 4 % (2,000 draws' 5 % quantile itself moves by about 2 % of the width), and
    P(alive) = 1 kept. The totals at each draw (first order in the purchase parameters) are
    close to the exact draws' totals."""
    data = simulated(31, 20_000)
    purchase = model_class().fit(data)
    sample = group_histories(data.iloc[:600]).unique
    draws = draw_parameters(purchase, 2000, seed=4)

    def value(model, histories):
        # A value of the form P(alive) x pair term over a longer horizon (DERT at 2,000 draws
        # would take minutes: BG/NBD's is a quadrature where 2F1 is not trusted).
        return model.expected_purchases(histories, 104.0).to_numpy()

    counts = np.arange(1.0, len(sample) + 1)
    weights = np.linspace(1.0, 3.0, len(sample))

    def value_weights(draw, rows):
        return weights[rows] * (1.0 if draw is None else 1.0 + 0.01 * np.sin(draw))

    exact = history_intervals(purchase, draws, sample, 26.0, value, purchase_weights=counts,
                              value_weights=value_weights)
    delta = history_intervals(purchase, draws, sample, 26.0, value, method="delta", purchase_weights=counts,
                              value_weights=value_weights)
    linear = delta.per_history
    for figure in ("probability_alive", "expected_purchases", "value"):
        width = exact.per_history[f"{figure}_upper"] - exact.per_history[f"{figure}_lower"]
        for side in ("lower", "upper"):
            gap = (linear[f"{figure}_{side}"] - exact.per_history[f"{figure}_{side}"]).abs()
            assert (gap <= 0.1 * width + 1e-12).all(), (figure, side, (gap / width).max())
            assert (gap / width).median() < 0.04, (figure, side, (gap / width).median())
    for total in ("expected_purchases", "value"):
        # First order in the parameters: the far tails move most; the 90 % bounds hardly.
        ours, theirs = (np.quantile(result.totals[total], [0.05, 0.95]) for result in (delta, exact))
        assert np.abs(ours - theirs).max() < 0.05 * (theirs[1] - theirs[0]), total
    certain = purchase.probability_alive(sample).to_numpy() == 1.0
    assert (linear["probability_alive_lower"][certain] == 1.0).all()
    with pytest.raises(ValueError, match="method must be"):
        history_intervals(purchase, draws, sample, 26.0, value, method="guess")
