"""The covariate encoder and the likelihood-ratio test."""

import json

import numpy as np
import pandas as pd
import pytest
from scipy.stats import chi2
from sklearn.exceptions import NotFittedError

from models import CovariateEncoder, GammaGammaModel, ParetoNBDModel, likelihood_ratio_test
from tests.models import simulate


@pytest.fixture()
def customers():
    return pd.DataFrame(
        {
            "channel": ["web", "store", "web", "app", "web", "store"],
            "age": [20.0, 30.0, 40.0, 50.0, 60.0, 70.0],
            "member": [True, False, True, True, False, True],
            "region": pd.Categorical(["n", "s", "s", "n", "e", "e"]),
        },
        index=pd.Index([11, 12, 13, 14, 15, 16], name="customer_id"),
    )


# --- encoding --------------------------------------------------------------


def test_categoricals_are_one_hot_against_the_most_frequent_level(customers):
    encoder = CovariateEncoder(["channel", "age", "member"]).fit(customers)
    assert encoder.design_columns_ == ("channel[app]", "channel[store]", "age", "member[False]")
    design = encoder.transform(customers)
    assert list(design.columns) == list(encoder.design_columns_)
    assert design.index.equals(customers.index)
    # "web" is the commonest channel, so it is the reference: all zeros.
    np.testing.assert_array_equal(design["channel[app]"], [0, 0, 0, 1, 0, 0])
    np.testing.assert_array_equal(design["channel[store]"], [0, 1, 0, 0, 0, 1])
    np.testing.assert_array_equal(design["member[False]"], [0, 1, 0, 0, 1, 0])


def test_ties_for_the_reference_are_broken_by_sorted_level(customers):
    # n, s and e appear twice each: "e" sorts first.
    encoder = CovariateEncoder(["region"]).fit(customers)
    assert encoder.encodings_[0]["reference"] == "e"
    assert encoder.design_columns_ == ("region[n]", "region[s]")


def test_numerics_are_standardised_with_the_fitted_mean_and_sd(customers):
    encoder = CovariateEncoder(["age"]).fit(customers)
    design = encoder.transform(customers)
    assert design["age"].mean() == pytest.approx(0.0, abs=1e-12)
    assert design["age"].std(ddof=0) == pytest.approx(1.0)
    # New customers use the calibration's mean (45) and sd, not their own.
    new = encoder.transform(pd.DataFrame({"age": [45.0, 45.0 + np.std(customers["age"])]}))
    np.testing.assert_allclose(new["age"], [0.0, 1.0])


def test_round_trip_through_json_gives_the_same_design(customers):
    encoder = CovariateEncoder(["channel", "age", "member", "region"]).fit(customers)
    stored = json.loads(json.dumps(encoder.to_dict(), allow_nan=False))
    restored = CovariateEncoder.from_dict(stored)
    assert restored.design_columns_ == encoder.design_columns_
    pd.testing.assert_frame_equal(restored.transform(customers), encoder.transform(customers))
    assert restored.to_dict() == encoder.to_dict()


def test_from_dict_refuses_what_to_dict_did_not_write():
    with pytest.raises(ValueError, match="version"):
        CovariateEncoder.from_dict({"encodings": []})
    with pytest.raises(ValueError, match="unknown kind"):
        CovariateEncoder.from_dict({"version": 1, "encodings": [{"column": "x", "kind": "ordinal"}]})


@pytest.mark.parametrize(
    "column, values, message",
    [
        ("channel", ["web", None, "store", "web", "web", "store"], "column 'channel': 1 row missing"),
        ("age", [1.0, np.nan, np.nan, 2.0, 3.0, 4.0], "column 'age': 2 rows missing"),
        ("age", [5.0] * 6, "column 'age' is constant"),
        ("channel", ["web"] * 6, "column 'channel' has a single level"),
    ],
)
def test_fit_refuses_columns_that_cannot_be_covariates(customers, column, values, message):
    frame = customers.assign(**{column: values})
    with pytest.raises(ValueError, match=message):
        CovariateEncoder([column]).fit(frame)


def test_fit_names_a_missing_column(customers):
    with pytest.raises(ValueError, match="missing column.*'income'"):
        CovariateEncoder(["channel", "income"]).fit(customers)


def test_transform_refuses_a_level_it_was_not_fitted_on(customers):
    encoder = CovariateEncoder(["channel"]).fit(customers)
    new = pd.DataFrame({"channel": ["web", "phone", "phone", "fax"]})
    with pytest.raises(ValueError, match=r"column 'channel': 3 rows with level\(s\) 'fax', 'phone' not seen"):
        encoder.transform(new)


def test_unfitted_encoder_refuses_to_transform(customers):
    with pytest.raises(NotFittedError):
        CovariateEncoder(["channel"]).transform(customers)


# --- the likelihood-ratio test ---------------------------------------------


def _spend_log(rng, n, effect):
    covariates = simulate.customers_with_covariates(rng, n)
    frequency = rng.integers(1, 8, n)
    gamma = 15.0 * np.exp(effect * covariates["channel[web]"].to_numpy())
    spend = simulate.gamma_gamma(rng, frequency, 6.0, 4.0, gamma)
    return covariates.assign(frequency=frequency.astype(float), monetary_value=spend)


def test_likelihood_ratio_test_rejects_a_real_channel_effect():
    features = _spend_log(np.random.default_rng(5), 2000, effect=0.3)
    plain = GammaGammaModel().fit(features)
    full = GammaGammaModel(covariates=["channel[web]"]).fit(features)
    test = likelihood_ratio_test(plain, full)
    assert test.df == 1
    assert test.statistic == pytest.approx(2 * (full.log_likelihood_ - plain.log_likelihood_))
    assert test.p_value == pytest.approx(chi2.sf(test.statistic, 1))
    assert test.p_value < 1e-6


def test_likelihood_ratio_test_mostly_accepts_when_the_channel_does_nothing():
    rng = np.random.default_rng(6)
    p_values = []
    for _ in range(20):
        features = _spend_log(rng, 600, effect=0.0)
        plain = GammaGammaModel().fit(features)
        full = GammaGammaModel(covariates=["channel[web]", "age"]).fit(features)
        p_values.append(likelihood_ratio_test(plain, full).p_value)
    # At the 5 % level about one in twenty rejects by chance; 4 or more would be rare (1.6 %).
    assert sum(p < 0.05 for p in p_values) <= 3
    assert np.mean(p_values) > 0.3


def test_likelihood_ratio_test_refuses_models_that_are_not_nested():
    features = _spend_log(np.random.default_rng(7), 300, effect=0.0)
    plain = GammaGammaModel().fit(features)
    full = GammaGammaModel(covariates=["channel[web]"]).fit(features)
    with pytest.raises(ValueError, match="must include the plain model's and more"):
        likelihood_ratio_test(full, plain)
    with pytest.raises(ValueError, match="different customers"):
        likelihood_ratio_test(GammaGammaModel().fit(features.iloc[:200]), full)
    with pytest.raises(NotFittedError):
        likelihood_ratio_test(ParetoNBDModel(), full)
