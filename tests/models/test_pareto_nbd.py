"""Our Pareto/NBD likelihood and optimiser (models/_pareto_nbd.py) against lifetimes'."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

from models import ConvergenceError, ParetoNBDModel, group_histories
from models._lifetimes_compat import _ParetoNBDFitterExactAtRecencyT, fit_purchase_model
from models._pareto_nbd import ParetoNBDLikelihood, fallback_starts, maximise, starting_values


@pytest.fixture(scope="module")
def histories(cdnow_sample_calibration_features):
    grouped = group_histories(cdnow_sample_calibration_features)
    return (*grouped.unique_arrays(), grouped.counts.astype(float))


@pytest.mark.parametrize("params", [
    (0.5533, 10.578, 0.6062, 11.668),  # CDNOW's maximum: beta > alpha
    (0.5533, 10.578, 0.6062, 3.0),  # alpha > beta: the other form of A_0
    (2.0, 1.0, 0.1, 100.0),
    (0.2, 30.0, 3.0, 30.0),  # alpha == beta
])
def test_each_historys_log_likelihood_is_lifetimes(histories, params):
    frequency, recency, age, counts = histories
    # The sample has a customer whose last purchase is at T: lifetimes' term is 0 there (workaround 12).
    ours = ParetoNBDLikelihood(frequency, recency, age, counts).per_history(params)
    theirs = _ParetoNBDFitterExactAtRecencyT._conditional_log_likelihood(np.array(params), frequency, recency, age)
    np.testing.assert_allclose(ours, theirs, rtol=1e-12, atol=0)


def test_the_fit_reaches_lifetimes_maximum(histories):
    # Nelder-Mead from lifetimes' start, run until it stops moving; ours from the data's moments.
    frequency, recency, age, counts = histories
    likelihood = ParetoNBDLikelihood(frequency, recency, age, counts)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference, _ = fit_purchase_model("paretonbd", frequency, recency, age, counts, 0.0, None, 1e-12, 20_000)
    theirs = np.array([reference[name] for name in ("r", "alpha", "s", "beta")])
    ours = maximise(likelihood)
    assert likelihood(ours) >= likelihood(theirs) - 1e-8 * abs(likelihood(theirs))
    np.testing.assert_allclose(ours, theirs, rtol=1e-5)


def test_a_fit_is_deterministic_and_starts_where_the_data_say(histories):
    frequency, recency, age, counts = histories
    start = starting_values(frequency, recency, age, counts)
    np.testing.assert_array_equal(start, starting_values(frequency, recency, age, counts))
    assert start[1] == pytest.approx(np.dot(counts, age) / np.dot(counts, frequency))
    assert start[3] == pytest.approx(np.dot(counts, age) / counts.sum())
    assert len(fallback_starts(start, age)) == 3  # four starts at most
    likelihood = ParetoNBDLikelihood(frequency, recency, age, counts)
    np.testing.assert_array_equal(maximise(likelihood), maximise(likelihood))


@pytest.mark.parametrize("start", [
    {"r": 5.0, "alpha": 1.0, "s": 5.0, "beta": 1.0},
    {"r": 0.05, "alpha": 500.0, "s": 0.05, "beta": 500.0},
])
def test_far_starts_reach_the_same_maximum(cdnow_sample_calibration_features, start):
    reference = ParetoNBDModel().fit(cdnow_sample_calibration_features)
    model = ParetoNBDModel(initial_params=start).fit(cdnow_sample_calibration_features)
    assert model.convergence_["converged"]
    for name, value in reference.params_.items():
        assert model.params_[name] == pytest.approx(value, rel=1e-5), name


def test_nobody_stops_buying_is_a_one_line_reason_not_a_wrong_fit():
    # Every customer buys every week until T: no dropout is visible in the data, so s and beta
    # (the dropout process) are not identified and run away.
    rng = np.random.default_rng(0)
    age = rng.integers(10, 40, size=3_000).astype(float)
    features = pd.DataFrame({"frequency": age, "recency": age, "T": age})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ConvergenceError) as raised:
            ParetoNBDModel().fit(features)
    message = str(raised.value)
    assert message.startswith("paretonbd: ") and "\n" not in message
    assert "s ran away to" in message and "dropout process is not identified" in message, message
