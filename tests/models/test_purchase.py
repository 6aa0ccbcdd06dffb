"""Purchase models against published CDNOW estimates, plain lifetimes, and simulation."""

import json
import os
import pickle
import subprocess
import sys
import warnings
from pathlib import Path

import joblib
import numpy as np
import pandas as pd
import pytest
from scipy.special import betaln, gammaln
from sklearn.base import clone
from sklearn.exceptions import ConvergenceWarning, NotFittedError

from models import (
    PURCHASE_MODELS,
    BetaGeoModel,
    ConvergenceError,
    ModifiedBetaGeoModel,
    ParetoNBDModel,
    group_histories,
)

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from lifetimes import BetaGeoFitter, ModifiedBetaGeoFitter, ParetoNBDFitter

# CDNOW sample, calibration to 1997-09-30, weeks. BG/NBD: Fader, Hardie & Lee
# (2005) report r=0.243, alpha=4.414, a=0.793, b=2.426, LL=-9582.4. Pareto/NBD:
# r=0.553, alpha=10.578, s=0.606, beta=11.669, LL=-9595.0 (same paper). MBG/NBD:
# BTYDplus's estimate on the same data. The four-digit values are the same
# estimates to more digits.
PUBLISHED = {
    "bgnbd": ({"r": 0.2426, "alpha": 4.4136, "a": 0.7929, "b": 2.4259}, -9582.4),
    "mbgnbd": ({"r": 0.5248, "alpha": 6.183, "a": 0.8914, "b": 1.614}, None),
    "paretonbd": ({"r": 0.5533, "alpha": 10.578, "s": 0.6062, "beta": 11.668}, -9595.0),
}
PUBLISHED_TO_THREE_DIGITS = {
    "bgnbd": {"r": 0.243, "alpha": 4.414, "a": 0.793, "b": 2.426},
    "mbgnbd": {"r": 0.525, "alpha": 6.183, "a": 0.891, "b": 1.614},
    "paretonbd": {"r": 0.553, "alpha": 10.578, "s": 0.606, "beta": 11.669},
}
MODEL_NAMES = list(PURCHASE_MODELS)


@pytest.fixture(scope="module")
def features(cdnow_sample_calibration_features):
    return cdnow_sample_calibration_features


@pytest.fixture(scope="module")
def fitted(features):
    return {name: PURCHASE_MODELS[name]().fit(features) for name in MODEL_NAMES}


def with_params(name, params):
    """An estimator carrying given parameters, as if fitted (e.g. published values)."""
    model = PURCHASE_MODELS[name]()
    model.params_ = dict(params)
    return model


# --- published numbers -----------------------------------------------------


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_fit_reproduces_published_cdnow_estimates(fitted, name):
    expected_params, expected_log_likelihood = PUBLISHED[name]
    model = fitted[name]
    for parameter, value in expected_params.items():
        assert model.params_[parameter] == pytest.approx(value, rel=1e-3), parameter
    if expected_log_likelihood is not None:
        assert model.log_likelihood_ == pytest.approx(expected_log_likelihood, abs=0.1)
    assert model.n_customers_ == 2357
    assert model.n_unique_rows_ < model.n_customers_
    assert model.convergence_["converged"]


def _bgnbd_log_likelihood(params, frequency, recency, age, modified):
    """Total log-likelihood written out independently of lifetimes.

    BG/NBD: Fader, Hardie & Lee (2005) eq. 6; MBG/NBD: Batislam et al. (2007)
    eq. 4 (alive after x + 1 survived dropout chances, or dropped right after
    the last purchase, which for MBG/NBD may be the first one).
    """
    r, alpha, a, b = (params[name] for name in ("r", "alpha", "a", "b"))
    x = frequency
    rate_part = gammaln(r + x) - gammaln(r) + r * np.log(alpha)
    survived = x + 1 if modified else x
    alive = betaln(a, b + survived) - betaln(a, b) - (r + x) * np.log(alpha + age)
    dropped_b = b + x if modified else np.maximum(b + x - 1, 1e-300)
    dropped = betaln(a + 1, dropped_b) - betaln(a, b) - (r + x) * np.log(alpha + recency)
    can_drop = (x > 0) | modified
    combined = np.where(can_drop, np.logaddexp(alive, np.where(can_drop, dropped, -np.inf)), alive)
    return float(np.sum(rate_part + combined))


@pytest.mark.parametrize("name", ["bgnbd", "mbgnbd"])
def test_log_likelihood_matches_an_independent_formula(fitted, features, name):
    model = fitted[name]
    independent = _bgnbd_log_likelihood(
        model.params_,
        features["frequency"].to_numpy(float),
        features["recency"].to_numpy(float),
        features["T"].to_numpy(float),
        modified=name == "mbgnbd",
    )
    assert model.log_likelihood_ == pytest.approx(independent, rel=1e-10)


def test_bgnbd_conditional_expectation_matches_hardies_worked_example():
    # Fader, Hardie & Lee's spreadsheet: with the published parameters, a
    # customer with x=2, t_x=30.43, T=38.86 weeks is expected to make 1.226
    # purchases in the next 39 weeks.
    model = with_params("bgnbd", PUBLISHED_TO_THREE_DIGITS["bgnbd"])
    customer = pd.DataFrame({"frequency": [2], "recency": [30.43], "T": [38.86]}, index=["c1"])
    assert model.expected_purchases(customer, 39).loc["c1"] == pytest.approx(1.226, abs=5e-4)


# --- standard errors -------------------------------------------------------


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_standard_errors_positive_and_finite(fitted, name):
    model = fitted[name]
    errors = np.array([model.standard_errors_[parameter] for parameter in model.parameter_names])
    assert np.all(np.isfinite(errors)) and np.all(errors > 0)
    # Each standard error is the square root of the covariance diagonal.
    assert np.allclose(np.sqrt(np.diag(model.covariance_.to_numpy())), errors)


@pytest.mark.parametrize(("name", "fitter_class"), [("bgnbd", BetaGeoFitter), ("mbgnbd", ModifiedBetaGeoFitter)])
def test_standard_errors_agree_with_lifetimes(fitted, features, name, fitter_class):
    # lifetimes takes an autograd Hessian on the log scale and maps it with the
    # delta method; at a maximum that equals the natural-scale inverse Hessian.
    reference = fitter_class().fit(features["frequency"], features["recency"], features["T"])
    for parameter, error in fitted[name].standard_errors_.items():
        assert error == pytest.approx(reference.standard_errors_[parameter], rel=1e-3), parameter


@pytest.mark.parametrize(("name", "fitter_class"), [("bgnbd", BetaGeoFitter), ("mbgnbd", ModifiedBetaGeoFitter)])
def test_fitters_without_their_hessian_reach_the_same_maximum(features, name, fitter_class):
    # Workaround 11 skips only the fitter's own Hessian: the optimiser's path is lifetimes'.
    from models._lifetimes_compat import FITTERS

    columns = (features["frequency"], features["recency"], features["T"])
    ours, reference = FITTERS[name]().fit(*columns), fitter_class().fit(*columns)
    assert ours.params_.equals(reference.params_)
    assert ours._negative_log_likelihood_ == reference._negative_log_likelihood_


# --- sufficient statistics and determinism ---------------------------------


@pytest.mark.parametrize(
    ("name", "fitter_class", "penalizer"),
    [
        ("bgnbd", BetaGeoFitter, 0.0),
        ("mbgnbd", ModifiedBetaGeoFitter, 0.0),
        ("paretonbd", ParetoNBDFitter, 0.0),
        # lifetimes' Pareto objective divides by mean(weights): the compat layer
        # rescales the penalizer so a weighted fit still matches this one.
        ("paretonbd", ParetoNBDFitter, 0.05),
        ("bgnbd", BetaGeoFitter, 0.05),
    ],
)
def test_unique_row_fit_equals_plain_lifetimes_on_all_rows(features, name, fitter_class, penalizer):
    options = {"initial_params": np.ones(4), "tol": 1e-7} if name == "paretonbd" else {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = fitter_class(penalizer_coef=penalizer).fit(
            features["frequency"], features["recency"], features["T"], **options
        )
    model = PURCHASE_MODELS[name](penalizer=penalizer).fit(features)
    for parameter, value in model.params_.items():
        assert value == pytest.approx(reference.params_[parameter], rel=1e-5), parameter


def test_duplicating_every_customer_keeps_the_maximum_and_doubles_the_likelihood(features, fitted):
    doubled = pd.concat([features, features.set_axis(features.index + "_copy")])
    model = BetaGeoModel().fit(doubled)
    assert model.n_customers_ == 2 * fitted["bgnbd"].n_customers_
    assert model.n_unique_rows_ == fitted["bgnbd"].n_unique_rows_
    assert model.log_likelihood_ == pytest.approx(2 * fitted["bgnbd"].log_likelihood_, rel=1e-9)
    for parameter, value in model.params_.items():
        assert value == pytest.approx(fitted["bgnbd"].params_[parameter], rel=1e-5)


def test_pareto_fit_is_deterministic_and_leaves_global_random_state_alone(features):
    state_before = np.random.get_state()[1].copy()
    first = ParetoNBDModel().fit(features)
    second = ParetoNBDModel().fit(features)
    assert first.params_ == second.params_
    assert first.standard_errors_ == second.standard_errors_
    assert np.array_equal(np.random.get_state()[1], state_before)


def test_fitting_leaves_warning_filters_alone(features):
    filters_before = list(warnings.filters)
    for model_class in PURCHASE_MODELS.values():
        model_class().fit(features)
    assert list(warnings.filters) == filters_before


def test_importing_models_is_silent_and_leaves_warning_filters_alone():
    # lifetimes installs a process-wide FutureWarning filter and touches a
    # pandas option deprecated in pandas 3 when imported.
    script = (
        "import warnings, numpy, pandas, scipy.optimize, scipy.special, scipy.stats, sklearn.base\n"
        "before = list(warnings.filters)\n"
        "import models\n"
        "assert list(warnings.filters) == before, [f for f in warnings.filters if f not in before]\n"
    )
    completed = subprocess.run(
        [sys.executable, "-W", "error", "-c", script],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
        check=False,
    )
    assert completed.returncode == 0, completed.stderr


def test_lifetimes_precision_loss_is_retried_with_a_looser_tolerance(features, fitted):
    # The reference fit (_lifetimes_compat.fit_purchase_model, workaround 3): a gradient
    # tolerance of 1e-12 is below the objective's rounding noise, so BFGS ends at the BG/NBD
    # maximum with "precision loss", which lifetimes turns into an error.
    from models._lifetimes_compat import fit_purchase_model

    grouped = group_histories(features)
    params, tol_used = fit_purchase_model("bgnbd", *grouped.unique_arrays(), grouped.counts, 0.0, None, 1e-12, None)
    assert tol_used > 1e-12
    for parameter, value in params.items():
        assert value == pytest.approx(fitted["bgnbd"].params_[parameter], rel=1e-5)


@pytest.mark.parametrize("name", ["bgnbd", "mbgnbd"])
def test_a_tolerance_below_the_rounding_noise_still_ends_at_the_maximum(features, fitted, name):
    model = PURCHASE_MODELS[name](tol=1e-12).fit(features)
    assert model.convergence_["converged"]
    for parameter, value in model.params_.items():
        assert value == pytest.approx(fitted[name].params_[parameter], rel=1e-6)


def test_initial_params_are_in_the_features_time_unit(features, fitted):
    start = {"r": 0.3, "alpha": 5.0, "a": 0.5, "b": 2.0}
    model = BetaGeoModel(initial_params=start).fit(features)
    for parameter, value in model.params_.items():
        assert value == pytest.approx(fitted["bgnbd"].params_[parameter], rel=1e-4)


def test_lifetimes_failed_optimisation_raises_without_printing(features, capsys):
    # The reference fit (workaround 3): lifetimes prints scipy's result before raising.
    from models._lifetimes_compat import fit_purchase_model

    grouped = group_histories(features)
    with pytest.raises(ConvergenceError, match="bgnbd"):
        fit_purchase_model("bgnbd", *grouped.unique_arrays(), grouped.counts, 0.0, None, 1e-7, 1)
    assert capsys.readouterr().out == ""


@pytest.mark.parametrize(("name", "max_iter"), [("bgnbd", 1), ("mbgnbd", 1), ("paretonbd", 10)])
def test_stopping_short_of_the_maximum_warns(features, name, max_iter, capsys):
    # At its iteration limit a fit stops where it is, as scikit-learn's estimators do; the
    # gradient check at the returned point says so.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = PURCHASE_MODELS[name](max_iter=max_iter).fit(features)
    messages = [str(warning.message) for warning in caught if issubclass(warning.category, ConvergenceWarning)]
    assert any("not flat" in message for message in messages), messages
    assert not model.convergence_["converged"]
    assert capsys.readouterr().out == ""


# --- predictions -----------------------------------------------------------


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_predictions_keep_the_customer_index_and_match_per_row_lifetimes(fitted, features, name):
    model = fitted[name]
    shuffled = features.sample(frac=1.0, random_state=3)
    fitter = {"bgnbd": BetaGeoFitter, "mbgnbd": ModifiedBetaGeoFitter, "paretonbd": ParetoNBDFitter}[name]()
    fitter.params_ = pd.Series(model.params_)
    x, recency, age = (shuffled[column].to_numpy(float) for column in ("frequency", "recency", "T"))

    expected = model.expected_purchases(shuffled, 39)
    assert expected.index.equals(shuffled.index)
    np.testing.assert_allclose(
        expected.to_numpy(), fitter.conditional_expected_number_of_purchases_up_to_time(39, x, recency, age), rtol=1e-12
    )
    alive = model.probability_alive(shuffled)
    assert alive.index.equals(shuffled.index)
    np.testing.assert_allclose(alive.to_numpy(), fitter.conditional_probability_alive(x, recency, age), rtol=1e-12)
    churn = model.churn_probability(shuffled)
    np.testing.assert_allclose(churn.to_numpy(), 1 - alive.to_numpy())
    assert model.probability_of_purchases(shuffled, 0, 39).index.equals(shuffled.index)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_many_horizons_at_once_equal_lifetimes_horizon_by_horizon_to_the_bit(fitted, features, name):
    # The hypergeometric term is shared per (frequency, T); sharing it must not move a bit.
    model = fitted[name]
    fitter = {"bgnbd": BetaGeoFitter, "mbgnbd": ModifiedBetaGeoFitter, "paretonbd": ParetoNBDFitter}[name]()
    fitter.params_ = pd.Series(model.params_)
    shuffled = features.sample(frac=1.0, random_state=5)
    x, recency, age = (shuffled[column].to_numpy(float) for column in ("frequency", "recency", "T"))
    horizons = [0.0, 1.0, 4.345, 26.0, 52.0]
    by_horizon = model.expected_purchases_by_horizon(shuffled, horizons)
    assert by_horizon.shape == (len(shuffled), len(horizons))
    assert (by_horizon[:, 0] == 0).all()
    if name == "paretonbd":
        # lifetimes returns NaN where recency == T (see _pareto_probability_alive); compare the rest.
        inside = recency < age
        x, recency, age, by_horizon = x[inside], recency[inside], age[inside], by_horizon[inside]
    # BG/NBD and MBG/NBD use lifetimes' own expressions; Pareto/NBD's is note 009's closed form.
    rtol = 1e-12 if name == "paretonbd" else 0.0
    for position, horizon in enumerate(horizons[1:], start=1):
        np.testing.assert_allclose(
            by_horizon[:, position],
            fitter.conditional_expected_number_of_purchases_up_to_time(horizon, x, recency, age),
            rtol=rtol, atol=0,
        )
        np.testing.assert_array_equal(
            model.expected_purchases(shuffled, horizon).to_numpy()[inside if name == "paretonbd" else slice(None)],
            by_horizon[:, position],
        )


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_purchase_distribution_sums_to_one_and_has_the_expected_mean(fitted, features, name):
    model = fitted[name]
    # Light, typical and the heaviest buyers of the sample.
    chosen = features.sort_values(["frequency", "recency"]).iloc[[0, 1200, 2000, 2300, -2, -1]]
    horizon = 39
    counts = np.arange(160)
    distribution = np.column_stack(
        [model.probability_of_purchases(chosen, int(n), horizon).to_numpy() for n in counts]
    )
    assert np.all(distribution >= -1e-12)
    np.testing.assert_allclose(distribution.sum(axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(distribution @ counts, model.expected_purchases(chosen, horizon).to_numpy(), rtol=1e-4)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_zero_horizon(fitted, features, name):
    model = fitted[name]
    assert (model.expected_purchases(features, 0) == 0).all()
    assert (model.probability_of_purchases(features, 0, 0) == 1).all()
    assert (model.probability_of_purchases(features, 2, 0) == 0).all()
    assert model.expected_purchases_new_customer(0) == 0


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_expected_purchases_new_customer_shapes(fitted, name):
    model = fitted[name]
    horizons = np.array([1.0, 10.0, 39.0, 78.0])
    curve = model.expected_purchases_new_customer(horizons)
    assert curve.shape == horizons.shape
    assert np.all(np.diff(curve) > 0)
    assert model.expected_purchases_new_customer(39.0) == pytest.approx(curve[2])


def test_expected_purchases_new_customer_bgnbd_closed_form(fitted):
    # Fader, Hardie & Lee (2005) eq. 9 evaluated by hand with scipy.
    from scipy.special import hyp2f1

    r, alpha, a, b = (fitted["bgnbd"].params_[name] for name in ("r", "alpha", "a", "b"))
    t = 52.0
    by_hand = (a + b - 1) / (a - 1) * (1 - (alpha / (alpha + t)) ** r * hyp2f1(r, b, a + b - 1, t / (alpha + t)))
    assert fitted["bgnbd"].expected_purchases_new_customer(t) == pytest.approx(by_hand, rel=1e-12)


# --- Monte Carlo: predictions against draws from the model itself ----------


def simulate(name, params, ages, horizon, rng):
    """Draw purchase histories and the next ``horizon`` periods from a model.

    Returns the calibration features, the purchases in (T, T + horizon], and
    whether each customer was still active at T.
    """
    n = len(ages)
    end = ages + horizon
    rate = rng.gamma(params["r"], 1.0 / params["alpha"], n)
    if name == "paretonbd":
        lifetime = rng.exponential(1.0 / rng.gamma(params["s"], 1.0 / params["beta"], n))
        active_until = np.minimum(lifetime, end)
        counts = rng.poisson(rate * active_until)
        allowed = counts
        alive_at_age = lifetime > ages
    else:
        dropout = rng.beta(params["a"], params["b"], n)
        # Purchases made before dropping out: BG/NBD only drops out after a
        # repeat purchase (so at least one), MBG/NBD also right after the first.
        allowed = rng.geometric(dropout) - (1 if name == "mbgnbd" else 0)
        active_until = end
        counts = rng.poisson(rate * end)
    owner = np.repeat(np.arange(n), counts)
    times = rng.uniform(0.0, 1.0, len(owner)) * active_until[owner]
    order = np.lexsort((times, owner))
    owner, times = owner[order], times[order]
    rank = np.arange(len(owner)) - np.repeat(np.cumsum(counts) - counts, counts)
    made = rank < allowed[owner]
    in_calibration = made & (times <= ages[owner])
    frequency = np.bincount(owner[in_calibration], minlength=n)
    recency = np.zeros(n)
    np.maximum.at(recency, owner[in_calibration], times[in_calibration])
    future = np.bincount(owner[made & (times > ages[owner])], minlength=n)
    if name != "paretonbd":
        alive_at_age = frequency < allowed
    features = pd.DataFrame(
        {"frequency": frequency, "recency": recency, "T": ages}, index=[f"s{i}" for i in range(n)]
    )
    return features, future, alive_at_age


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_predictions_agree_with_simulation(name):
    # Conditional predictions must average, within any group defined by the
    # history, to what the model's own draws do next. Grouping by frequency
    # checks the dependence on x; a fixed seed makes the test repeatable.
    params = PUBLISHED_TO_THREE_DIGITS[name]
    rng = np.random.default_rng(20240501)
    # Long horizon and many customers: the BG/NBD pmf's dependence on b is
    # weak, and an off-by-one in the posterior of p must still show.
    horizon = 78.0
    ages = rng.uniform(27.0, 39.0, 200_000)
    features, future, alive_at_age = simulate(name, params, ages, horizon, rng)
    model = with_params(name, params)

    predicted = {
        "none": model.probability_of_purchases(features, 0, horizon).to_numpy(),
        "one": model.probability_of_purchases(features, 1, horizon).to_numpy(),
        "two": model.probability_of_purchases(features, 2, horizon).to_numpy(),
        "alive": model.probability_alive(features).to_numpy(),
        "count": model.expected_purchases(features, horizon).to_numpy(),
        "new": model.expected_purchases_new_customer(ages),
    }
    observed = {
        "none": future == 0,
        "one": future == 1,
        "two": future == 2,
        "alive": alive_at_age,
        "count": future,
        "new": features["frequency"].to_numpy(),
    }
    frequency = features["frequency"].to_numpy()
    groups = {
        "x=0": frequency == 0,
        "x=1": frequency == 1,
        "x=2": frequency == 2,
        "x=3-5": (frequency >= 3) & (frequency <= 5),
        "x>5": frequency > 5,
        "all": np.ones_like(frequency, bool),
    }
    failures = []
    for quantity, prediction in predicted.items():
        for group, members in groups.items():
            if quantity == "new" and group != "all":
                continue  # unconditional: only the whole population is comparable
            outcome = observed[quantity][members].astype(float)
            if quantity in ("count", "new"):
                standard_error = outcome.std(ddof=1) / np.sqrt(len(outcome))
            else:
                # Bernoulli outcomes with the predicted probabilities.
                standard_error = np.sqrt(np.sum(prediction[members] * (1 - prediction[members]))) / len(outcome)
            difference = prediction[members].mean() - outcome.mean()
            if abs(difference) > 4 * standard_error + 1e-9:
                failures.append(
                    f"{quantity} {group}: predicted {prediction[members].mean():.4f}, "
                    f"simulated {outcome.mean():.4f} (se {standard_error:.4f})"
                )
    assert not failures, failures


# --- input validation and the estimator contract -----------------------------

def set_first_rows(frame, column, count, value, among=None):
    """Copy of ``frame`` with ``column`` set to ``value`` on its first ``count`` rows (of ``among``)."""
    among = np.ones(len(frame), bool) if among is None else np.asarray(among)
    chosen = among & (np.cumsum(among) <= count)
    values = frame[column].to_numpy().astype(float)
    values[chosen] = value(frame[chosen]) if callable(value) else value
    return frame.assign(**{column: values})


BAD_FEATURES = [
    (lambda f: f.drop(columns=["recency"]), "missing column\\(s\\) 'recency'"),
    (lambda f: set_first_rows(f, "T", 1, np.nan), "column 'T': 1 row NaN"),
    (lambda f: set_first_rows(f, "T", 4, np.inf), "column 'T': 4 rows NaN or infinite"),
    (lambda f: set_first_rows(f, "recency", 2, -1.0), "column 'recency': 2 rows negative"),
    (
        lambda f: set_first_rows(f, "recency", 1, lambda rows: rows["T"] + 1),
        "column 'recency': 1 row with recency greater than T",
    ),
    (
        lambda f: set_first_rows(f, "recency", 3, 0.5, among=f["frequency"] == 0),
        "column 'recency': 3 rows with recency above 0 but frequency 0",
    ),
    (lambda f: set_first_rows(f, "frequency", 1, 1.5), "column 'frequency': 1 row not a whole number"),
    (lambda f: f.assign(frequency=f["frequency"].astype(str)), "column 'frequency' is not numeric"),
]


@pytest.mark.parametrize(("corrupt", "message"), BAD_FEATURES)
def test_bad_features_rejected_at_fit_and_predict(fitted, features, corrupt, message):
    bad = corrupt(features)
    with pytest.raises(ValueError, match=message):
        BetaGeoModel().fit(bad)
    with pytest.raises(ValueError, match=message):
        fitted["paretonbd"].expected_purchases(bad, 10)
    with pytest.raises(ValueError, match=message):
        fitted["mbgnbd"].probability_alive(bad)


def test_features_must_be_a_dataframe(features):
    with pytest.raises(TypeError, match="DataFrame"):
        BetaGeoModel().fit(features[["frequency", "recency", "T"]].to_numpy())


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"penalizer": -1.0}, "penalizer"),
        ({"tol": 0.0}, "tol"),
        ({"max_iter": 0}, "max_iter"),
        ({"initial_params": {"r": 1.0}}, "initial_params"),
        ({"initial_params": {"r": 1.0, "alpha": -1.0, "a": 1.0, "b": 1.0}}, "initial_params"),
    ],
)
def test_bad_settings_rejected_at_fit(features, settings, message):
    with pytest.raises(ValueError, match=message):
        BetaGeoModel(**settings).fit(features)


@pytest.mark.parametrize("name", MODEL_NAMES)
@pytest.mark.parametrize(
    "predict",
    [
        lambda model, features: model.expected_purchases(features, 10),
        lambda model, features: model.probability_alive(features),
        lambda model, features: model.churn_probability(features),
        lambda model, features: model.probability_of_purchases(features, 0, 10),
        lambda model, features: model.expected_purchases_new_customer(10),
        lambda model, features: model.summary(),
    ],
)
def test_unfitted_model_refuses_to_predict(features, name, predict):
    with pytest.raises(NotFittedError):
        predict(PURCHASE_MODELS[name](), features)


def test_get_params_set_params_and_clone_round_trip():
    model = ParetoNBDModel(penalizer=0.1, tol=1e-6, max_iter=500)
    params = model.get_params()
    assert params == {"penalizer": 0.1, "initial_params": None, "tol": 1e-6, "max_iter": 500, "covariates": None}
    copy = ParetoNBDModel().set_params(**params)
    assert copy.get_params() == params
    assert clone(model).get_params() == params


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_joblib_round_trip_gives_identical_predictions_and_no_training_data(fitted, features, name, tmp_path):
    model = fitted[name]
    path = tmp_path / "model.joblib"
    joblib.dump(model, path)
    loaded = joblib.load(path)
    pd.testing.assert_series_equal(loaded.expected_purchases(features, 39), model.expected_purchases(features, 39))
    pd.testing.assert_series_equal(loaded.probability_alive(features), model.probability_alive(features))
    assert loaded.params_ == model.params_
    # One row per customer would take tens of kilobytes; a model is a few numbers.
    assert len(pickle.dumps(model)) < 5_000


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_summary_is_json_and_complete(fitted, name):
    summary = json.loads(json.dumps(fitted[name].summary(), allow_nan=False))
    assert summary["model"] == name
    assert set(summary["params"]) == set(PURCHASE_MODELS[name].parameter_names)
    assert set(summary["standard_errors"]) == set(summary["params"])
    assert summary["n_customers"] == 2357
    assert summary["log_likelihood"] == fitted[name].log_likelihood_
    assert summary["convergence"]["converged"] is True
    assert summary["settings"] == fitted[name].get_params()


def test_registry_names_each_model_class():
    assert PURCHASE_MODELS == {"bgnbd": BetaGeoModel, "mbgnbd": ModifiedBetaGeoModel, "paretonbd": ParetoNBDModel}


def test_expected_purchases_by_horizon_equals_one_horizon_at_a_time(cdnow_sample_calibration_features):
    from models.purchase import BetaGeoModel

    model = BetaGeoModel().fit(cdnow_sample_calibration_features)
    horizons = [1.0, 4.345, 39.0]
    together = model.expected_purchases_by_horizon(cdnow_sample_calibration_features, horizons)
    for position, horizon in enumerate(horizons):
        np.testing.assert_array_equal(
            together[:, position], model.expected_purchases(cdnow_sample_calibration_features, horizon).to_numpy()
        )


def test_pareto_handles_a_last_purchase_at_T(cdnow_sample_calibration_features):
    # lifetimes returns NaN for the likelihood and P(alive) of such a customer (CDNOW master
    # has one: x = 170, t_x = T); the fit must still converge and P(alive) be exactly 1.
    from models.purchase import ParetoNBDModel

    heavy = pd.DataFrame({"frequency": [170], "recency": [38.857142857142854], "T": [38.857142857142854]},
                         index=pd.Index(["heavy"], name="customer_id"))
    features = pd.concat([cdnow_sample_calibration_features[["frequency", "recency", "T"]], heavy])
    model = ParetoNBDModel().fit(features)
    assert np.isfinite(model.log_likelihood_)
    assert model.convergence_["converged"]
    assert model.probability_alive(heavy).iloc[0] == 1.0
    assert np.isfinite(model.expected_purchases(heavy, 39).iloc[0])
