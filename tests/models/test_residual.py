"""Lifetime value: DERT, a new customer's discounted purchases, and the payback period.

References are independent computations: ``scipy.integrate.quad`` of the discounted increments
of each model's own ``expected_purchases`` (lifetimes' closed forms) or
``expected_purchases_new_customer``, the published Pareto/NBD closed form with scipy's own
``hyperu``, and nested ``quad`` over the dropout distribution where lifetimes' 2F1 fails.
"""

import numpy as np
import pandas as pd
import pytest
from scipy import integrate
from scipy.special import betaln, hyperu
from sklearn.exceptions import NotFittedError

from models import PURCHASE_MODELS, _residual, group_histories
from models.discounting import continuous_discount_rate, discount_rate_per_period, payback_period
from tests.models.test_covariate_fit import COVARIATES, SIGNS, _own, simulated_purchases

# The references ask quad for 1e-12, below what it can promise on some pieces; the asserted
# tolerances are what is checked.
pytestmark = pytest.mark.filterwarnings("ignore::scipy.integrate.IntegrationWarning")

# The published CDNOW estimates (weeks): Fader, Hardie & Lee (2005) and Batislam et al. (2007).
PUBLISHED = {
    "bgnbd": {"r": 0.243, "alpha": 4.414, "a": 0.793, "b": 2.426},
    "mbgnbd": {"r": 0.525, "alpha": 6.183, "a": 0.891, "b": 1.614},
    "paretonbd": {"r": 0.553, "alpha": 10.578, "s": 0.606, "beta": 11.669},
}
MODEL_NAMES = list(PURCHASE_MODELS)
WEEKLY = continuous_discount_rate(0.10, 7)  # 10 % a year, per week
T_CAL = 38.857142857142854
# x = 0, recency == T (lifetimes' NaN case for Pareto/NBD), a large x, in between. (x = 200
# is beyond lifetimes: its MBG/NBD expectation is NaN past a few hundred weeks there.)
HISTORIES = pd.DataFrame(
    {"frequency": [0.0, 1.0, 5.0, 3.0, 40.0, 100.0],
     "recency": [0.0, 10.0, 30.0, T_CAL, T_CAL, 38.0],
     "T": [T_CAL, T_CAL, T_CAL, T_CAL, T_CAL, T_CAL]},
    index=pd.Index(list("abcdef"), name="customer_id"),
)
# Breakpoints for quad over (0, inf): the models change on a scale of weeks, discounting on
# hundreds.
BREAKS = [0.0, 1.0, 5.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0, 5000.0, 10000.0, 20000.0, 40000.0]


def with_params(name, params):
    model = PURCHASE_MODELS[name]()
    model.params_ = dict(params)
    return model


def discounted_increments(cumulative, delta, horizon=np.inf):
    """integral_0^h exp(-delta t) dE(t) = exp(-delta h) E(h) + delta integral_0^h exp(-delta t) E(t) dt."""
    breaks = [b for b in BREAKS if b < horizon] + ([horizon] if np.isfinite(horizon) else [])
    total = sum(integrate.quad(lambda t: delta * np.exp(-delta * t) * cumulative(t), low, high,
                               epsabs=0, epsrel=1e-12, limit=200)[0]
                for low, high in zip(breaks[:-1], breaks[1:]))
    # Beyond 40,000 periods exp(-delta t) < e^-70 at the rates used (and lifetimes' MBG/NBD
    # expectation overflows there for large x).
    return total + (np.exp(-delta * horizon) * cumulative(horizon) if np.isfinite(horizon) else 0.0)


# --- DERT ------------------------------------------------------------------


@pytest.mark.parametrize("name", MODEL_NAMES)
@pytest.mark.parametrize("delta", [WEEKLY, continuous_discount_rate(0.5, 7)])
def test_dert_equals_the_discounted_integral_of_the_models_own_expectation(name, delta):
    model = with_params(name, PUBLISHED[name])
    dert = model.discounted_expected_residual_purchases(HISTORIES, delta)
    assert list(dert.index) == list(HISTORIES.index)
    for customer in HISTORIES.index:
        one = group_histories(HISTORIES.loc[[customer]])
        reference = discounted_increments(lambda t: model.expected_purchases(one, t).iloc[0], delta)
        assert dert[customer] == pytest.approx(reference, rel=1e-9)


def test_pareto_dert_equals_the_published_closed_form():
    # Fader, Hardie & Lee (2005), "RFM and CLV", eq. 2, with scipy's own hyperu; written as
    # P(alive) (r + x) / (alpha + T) (beta + T)^s delta^(s - 1) U(s, s, delta (beta + T)),
    # the likelihood folded into P(alive). scipy's hyperu is good to about 1e-7 here.
    params = PUBLISHED["paretonbd"]
    model = with_params("paretonbd", params)
    r, alpha, s, beta = (params[k] for k in ("r", "alpha", "s", "beta"))
    x, recency, age = (HISTORIES[c].to_numpy() for c in ("frequency", "recency", "T"))
    alive = model.probability_alive(HISTORIES).to_numpy()
    for delta in (WEEKLY, 0.02, 0.3):
        closed = alive * (r + x) / (alpha + age) * np.exp(
            s * np.log(beta + age) + (s - 1) * np.log(delta) + np.log(hyperu(s, s, delta * (beta + age))))
        np.testing.assert_allclose(model.discounted_expected_residual_purchases(HISTORIES, delta), closed, rtol=1e-6)


def test_pareto_dert_is_exact_where_the_last_purchase_is_at_T():
    model = with_params("paretonbd", PUBLISHED["paretonbd"])
    at_t = HISTORIES[HISTORIES["recency"] == HISTORIES["T"]]
    dert = model.discounted_expected_residual_purchases(at_t, WEEKLY)
    # P(alive) is 1 there, so DERT is the alive customer's: (r + x) / (alpha + T) E[1 / (mu + delta)].
    alive = _residual.alive_parameters("paretonbd", model.params_, at_t["frequency"], at_t["T"])
    expected = _residual.discounted_when_alive("paretonbd", alive, WEEKLY)
    np.testing.assert_array_equal(dert.to_numpy(), expected)
    assert np.all(np.isfinite(dert))


@pytest.mark.parametrize("name", ["bgnbd", "mbgnbd"])
def test_the_quadrature_over_dropout_agrees_with_hyp2f1_where_that_is_trusted(name):
    params = PUBLISHED[name]
    alive = _residual.alive_parameters(name, params, HISTORIES["frequency"], HISTORIES["T"])
    assert not _residual._needs_quadrature(alive).any()
    fast = _residual.discounted_when_alive(name, alive, WEEKLY, fallback=False)
    slow = _residual.discounted_when_alive(name, alive, WEEKLY, fallback=True)
    np.testing.assert_allclose(slow, fast, rtol=1e-10)
    for horizon in (3.0, 52.0):
        np.testing.assert_allclose(_residual.discounted_when_alive(name, alive, WEEKLY, horizon, fallback=True),
                                   _residual.discounted_when_alive(name, alive, WEEKLY, horizon, fallback=False),
                                   rtol=1e-10)


@pytest.mark.parametrize(("a", "b", "x"), [(80.0, 300.0, 3.0), (1.243, 2.4, 0.0), (0.4, 2500.0, 600.0)])
def test_bgnbd_value_where_hyp2f1_is_not_trusted_matches_nested_quadrature(a, b, x):
    # Runaway dropout parameters, R + 1 == a (scipy's 2F1 loses its log terms there) and a
    # huge b. Independently of the module: the rate m(s) = R / A E_p[(1 + p s / A)^-(R + 1)]
    # by quad over p ~ Beta(a, B), then quad of exp(-delta s) m(s) over s.
    r, alpha, age = 0.243, 4.414, T_CAL
    alive = _residual.alive_parameters("bgnbd", {"r": r, "alpha": alpha, "a": a, "b": b}, np.array([x]),
                                       np.array([age]))
    assert _residual._needs_quadrature(alive).all()
    R, A, B = r + x, alpha + age, b + x
    mode = a / (a + B)

    def rate(s):
        def integrand(p):
            if not 0.0 < p < 1.0:
                return 0.0
            return np.exp((a - 1) * np.log(p) + (B - 1) * np.log1p(-p) - betaln(a, B)
                          - (R + 1) * np.log1p(p * s / A))
        pieces = sorted({0.0, mode / 100, mode / 10, mode, 10 * mode, min(A / (s + A), 0.5), 0.5, 1.0})
        return R / A * sum(integrate.quad(integrand, low, high, epsabs=0, epsrel=1e-12, limit=200)[0]
                           for low, high in zip(pieces[:-1], pieces[1:]))

    breaks = BREAKS
    reference = sum(integrate.quad(lambda s: np.exp(-WEEKLY * s) * rate(s), low, high, epsabs=0, epsrel=1e-11,
                                   limit=200)[0] for low, high in zip(breaks[:-1], breaks[1:]))
    assert _residual.discounted_when_alive("bgnbd", alive, WEEKLY)[0] == pytest.approx(reference, rel=1e-8)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_zero_rate_gives_all_future_purchases_finite_or_not(name):
    params = dict(PUBLISHED[name])
    model = with_params(name, params)
    x, age = HISTORIES["frequency"].to_numpy(), HISTORIES["T"].to_numpy()
    # As published (a < 1, s < 1) the expected number of future purchases diverges.
    assert np.all(np.isinf(model.discounted_expected_residual_purchases(HISTORIES, 0.0)))
    if name == "paretonbd":
        params["s"] = 2.5
        alive = with_params(name, params).probability_alive(HISTORIES).to_numpy()
        expected = alive * (params["r"] + x) / (params["alpha"] + age) * (params["beta"] + age) / (params["s"] - 1)
    else:
        params["a"] = 2.5
        alive = with_params(name, params).probability_alive(HISTORIES).to_numpy()
        offset = 1 if name == "mbgnbd" else 0
        expected = alive * (params["a"] + params["b"] + x + offset - 1) / (params["a"] - 1)
    model = with_params(name, params)
    zero = model.discounted_expected_residual_purchases(HISTORIES, 0.0)
    np.testing.assert_allclose(zero, expected, rtol=1e-12)
    # Falling rates approach it from below (slowly: like (alpha delta)^r for x = 0).
    rising = [model.discounted_expected_residual_purchases(HISTORIES, rate).to_numpy() for rate in (1e-2, 1e-3, 1e-5)]
    assert np.all(np.diff(rising, axis=0) > 0) and np.all(rising[-1] < zero.to_numpy())


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_dert_falls_as_the_rate_rises_and_tables_equal_grouped_histories(name):
    model = with_params(name, PUBLISHED[name])
    low, high = (model.discounted_expected_residual_purchases(HISTORIES, rate) for rate in (0.001, 0.01))
    assert np.all(high.to_numpy() < low.to_numpy())
    pd.testing.assert_series_equal(model.discounted_expected_residual_purchases(group_histories(HISTORIES), 0.01),
                                   high)
    # Each customer's value does not depend on who else is scored.
    alone = model.discounted_expected_residual_purchases(HISTORIES.iloc[[4]], 0.01)
    assert alone.iloc[0] == high.iloc[4]


@pytest.mark.parametrize("rate", [-0.1, float("nan"), float("inf")])
def test_bad_rates_are_refused_naming_the_argument(rate):
    with pytest.raises(ValueError, match="discount_rate_continuous"):
        with_params("bgnbd", PUBLISHED["bgnbd"]).discounted_expected_residual_purchases(HISTORIES, rate)
    with pytest.raises(ValueError, match="discount_rate_continuous"):
        with_params("bgnbd", PUBLISHED["bgnbd"]).discounted_expected_purchases_new_customer(rate)


def test_unfitted_models_refuse():
    with pytest.raises(NotFittedError):
        PURCHASE_MODELS["paretonbd"]().discounted_expected_residual_purchases(HISTORIES, WEEKLY)
    with pytest.raises(NotFittedError):
        PURCHASE_MODELS["bgnbd"]().discounted_expected_purchases_new_customer(WEEKLY)


# --- the continuous rate -------------------------------------------------------


def test_continuous_rate_agrees_with_the_per_period_rate_at_period_ends():
    for days in (1, 7, 30.4375):
        delta = continuous_discount_rate(0.10, days)
        assert delta == pytest.approx(np.log(1.1) * days / 365.25, rel=1e-15)
        assert np.exp(-delta) == pytest.approx(1 / (1 + discount_rate_per_period(0.10, days)), rel=1e-14)
    with pytest.raises(ValueError, match="above -1"):
        continuous_discount_rate(-1.0, 7)
    with pytest.raises(ValueError, match="positive"):
        continuous_discount_rate(0.1, 0)


# --- a new customer --------------------------------------------------------------


@pytest.mark.parametrize("name", MODEL_NAMES)
@pytest.mark.parametrize("horizon", [np.inf, 52.0, 0.5])
def test_new_customer_value_equals_the_discounted_integral_of_the_models_expectation(name, horizon):
    model = with_params(name, PUBLISHED[name])
    value = model.discounted_expected_purchases_new_customer(WEEKLY, horizon)
    reference = discounted_increments(lambda t: float(model.expected_purchases_new_customer(t)), WEEKLY, horizon)
    assert value == pytest.approx(reference, rel=1e-9)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_new_customer_value_grows_with_the_horizon_to_its_lifetime_value(name):
    model = with_params(name, PUBLISHED[name])
    horizons = [0.0, 0.1, 1.0, 10.0, 100.0, 1000.0, 10000.0, np.inf]
    values = [model.discounted_expected_purchases_new_customer(WEEKLY, h) for h in horizons]
    assert values[0] == 0.0
    assert np.all(np.diff(values) > 0)
    assert values[-2] == pytest.approx(values[-1], rel=1e-7)
    # Undiscounted over a horizon: the model's own expectation.
    assert model.discounted_expected_purchases_new_customer(0.0, 52.0) == pytest.approx(
        float(model.expected_purchases_new_customer(52.0)), rel=1e-10)


def test_new_customer_lifetime_value_matches_simulation():
    # BG/NBD told as a story: lambda ~ Gamma(r, alpha), p ~ Beta(a, b), purchases at the
    # arrivals of a Poisson(lambda) process, dropout after each with probability p.
    params = {"r": 0.8, "alpha": 4.0, "a": 3.0, "b": 3.0}
    model = with_params("bgnbd", params)
    rng = np.random.default_rng(7)
    n = 100_000
    rate = rng.gamma(params["r"], 1 / params["alpha"], n)
    dropout = rng.beta(params["a"], params["b"], n)
    purchases = rng.geometric(dropout)
    delta = 0.01
    total = np.zeros(n)
    time = np.zeros(n)
    for k in range(1, int(purchases.max()) + 1):
        buying = purchases >= k
        if not buying.any():
            break
        time[buying] += rng.exponential(1 / rate[buying])
        total[buying] += np.exp(-delta * time[buying])
    standard_error = total.std() / np.sqrt(n)
    assert abs(total.mean() - model.discounted_expected_purchases_new_customer(delta)) < 4 * standard_error


# --- covariates ------------------------------------------------------------------


@pytest.fixture(scope="module")
def covariate_models():
    logs = {name: simulated_purchases(name, seed, n=1500) for seed, name in enumerate(MODEL_NAMES, start=60)}
    return {name: (PURCHASE_MODELS[name](covariates=COVARIATES).fit(logs[name]), logs[name]) for name in MODEL_NAMES}


def _own_params(model, design_row):
    own = dict(model.params_)
    coefficients = model.coefficients_
    for parameter in coefficients["parameter"].unique():
        values = coefficients[coefficients["parameter"] == parameter]["coefficient"].to_numpy()
        own[parameter] = float(_own(own[parameter], values, design_row, SIGNS[parameter]))
    return own


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_covariate_dert_is_the_plain_models_with_each_customers_own_parameters(covariate_models, name):
    model, log = covariate_models[name]
    features = log.iloc[:200]
    dert = model.discounted_expected_residual_purchases(features, WEEKLY)
    design = features[COVARIATES].to_numpy()
    for row in range(0, 200, 23):
        single = with_params(name, _own_params(model, design[row]))
        expected = single.discounted_expected_residual_purchases(features.iloc[[row]], WEEKLY).iloc[0]
        assert dert.iloc[row] == pytest.approx(expected, rel=1e-12)
    pd.testing.assert_series_equal(
        model.discounted_expected_residual_purchases(group_histories(features, COVARIATES), WEEKLY), dert)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_covariate_new_customer_value_per_pattern(covariate_models, name):
    model, _ = covariate_models[name]
    table = pd.DataFrame({"channel[web]": [0.0, 1.0], "age": [0.0, 1.5]}, index=["store", "web"])
    by_table = model.discounted_expected_purchases_new_customer(WEEKLY, covariates=table)
    assert list(by_table.index) == ["store", "web"]
    assert by_table["store"] == pytest.approx(model.discounted_expected_purchases_new_customer(WEEKLY), rel=1e-14)
    web = {"channel[web]": 1.0, "age": 1.5}
    assert by_table["web"] == pytest.approx(model.discounted_expected_purchases_new_customer(WEEKLY, covariates=web),
                                            rel=1e-14)
    single = with_params(name, _own_params(model, np.array([1.0, 1.5])))
    assert by_table["web"] == pytest.approx(single.discounted_expected_purchases_new_customer(WEEKLY), rel=1e-12)
    horizon = model.discounted_expected_purchases_new_customer(WEEKLY, 26.0, covariates=table)
    assert np.all(horizon < by_table)


# --- payback -------------------------------------------------------------------


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_payback_is_where_the_discounted_margin_reaches_the_cost(name):
    model = with_params(name, PUBLISHED[name])
    margin, first, cost = 12.0, 5.0, 30.0
    periods = payback_period(model, WEEKLY, margin, first, cost)
    assert 0 < periods < np.inf
    reached = first + margin * model.discounted_expected_purchases_new_customer(WEEKLY, periods)
    assert reached == pytest.approx(cost, rel=1e-9)
    # Later costs take longer; a higher discount rate takes longer still.
    assert payback_period(model, WEEKLY, margin, first, cost * 1.2) > periods
    assert payback_period(model, 3 * WEEKLY, margin, first, cost) > periods


def test_payback_edge_cases():
    model = with_params("bgnbd", PUBLISHED["bgnbd"])
    lifetime = model.discounted_expected_purchases_new_customer(WEEKLY)
    assert payback_period(model, WEEKLY, 10.0, 40.0, 40.0) == 0.0
    assert payback_period(model, WEEKLY, 0.0, 5.0, 40.0) == np.inf
    # The lifetime value is only approached: a cost at or above it is never paid back.
    assert payback_period(model, WEEKLY, 10.0, 0.0, 10.0 * lifetime) == np.inf
    assert payback_period(model, WEEKLY, 10.0, 0.0, 10.0 * lifetime * 0.999) < np.inf
    with pytest.raises(ValueError, match="margin_per_purchase"):
        payback_period(model, WEEKLY, -1.0, 0.0, 10.0)


def test_payback_per_covariate_pattern(covariate_models):
    model, _ = covariate_models["paretonbd"]
    table = pd.DataFrame({"channel[web]": [0.0, 1.0], "age": [0.0, 0.0]}, index=["store", "web"])
    periods = payback_period(model, WEEKLY, 10.0, 2.0, 25.0, covariates=table)
    assert list(periods.index) == ["store", "web"]
    assert periods["store"] == payback_period(model, WEEKLY, 10.0, 2.0, 25.0)
    assert periods["web"] == payback_period(model, WEEKLY, 10.0, 2.0, 25.0, covariates=table.loc["web"].to_dict())

