"""CustomerHistories: customers grouped once by the caller give the models' numbers to the bit."""

import numpy as np
import pandas as pd
import pytest

from models import PURCHASE_MODELS, BetaGeoModel, CustomerHistories, group_histories
from models.discounting import discounted_expected_purchases, expected_purchases_by_step

MODEL_NAMES = list(PURCHASE_MODELS)
HISTORY_COLUMNS = ["frequency", "recency", "T"]


@pytest.fixture(scope="module")
def features(cdnow_sample_calibration_features):
    # Shuffled, so that the customers' order is not that of their histories.
    return cdnow_sample_calibration_features.sample(frac=1.0, random_state=11)


@pytest.fixture(scope="module")
def histories(features):
    return group_histories(features)


@pytest.fixture(scope="module")
def fitted(features):
    return {name: PURCHASE_MODELS[name]().fit(features) for name in MODEL_NAMES}


def test_grouping_holds_each_customers_history(features, histories):
    unique = histories.unique
    assert list(unique.columns) == HISTORY_COLUMNS
    assert unique.index.equals(pd.RangeIndex(len(unique)))
    assert len(histories) == len(features) and histories.index.equals(features.index)
    assert len(unique) == len(features[HISTORY_COLUMNS].drop_duplicates()) < len(features)
    for name in HISTORY_COLUMNS:
        np.testing.assert_array_equal(unique[name].to_numpy()[histories.inverse], features[name].to_numpy(float))
    np.testing.assert_array_equal(histories.counts, np.bincount(histories.inverse))
    assert [array.dtype for array in histories.unique_arrays()] == [np.float64] * 3
    assert "customers=2357" in repr(histories)


def test_grouping_is_read_only_and_independent_of_the_features_afterwards(features):
    frame = features[HISTORY_COLUMNS].astype(float)
    histories = group_histories(frame)
    before = histories.unique.copy()
    for array in (*histories.unique_arrays(), histories.inverse, histories.counts):
        with pytest.raises(ValueError):
            array[0] = 1
    frame.loc[frame.index[0], "T"] = 1000.0
    pd.testing.assert_frame_equal(histories.unique, before)
    unique = histories.unique  # a new frame at each access, over read-only columns
    with pytest.raises(ValueError, match="read-only"):
        unique.loc[0, "T"] = 0.0
    unique["T"] = 0.0
    pd.testing.assert_frame_equal(histories.unique, before)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_fit_on_histories_equals_fit_on_features(features, histories, fitted, name):
    model = PURCHASE_MODELS[name]().fit(histories)
    reference = fitted[name]
    assert model.params_ == reference.params_
    assert model.log_likelihood_ == reference.log_likelihood_
    assert model.standard_errors_ == reference.standard_errors_
    assert (model.n_customers_, model.n_unique_rows_) == (reference.n_customers_, reference.n_unique_rows_)


@pytest.mark.parametrize("name", MODEL_NAMES)
@pytest.mark.parametrize(
    "predict",
    [
        lambda model, customers: model.expected_purchases(customers, 39),
        lambda model, customers: model.expected_purchases(customers, 0),
        lambda model, customers: model.probability_alive(customers),
        lambda model, customers: model.churn_probability(customers),
        lambda model, customers: model.probability_of_purchases(customers, 0, 39),
        lambda model, customers: model.probability_of_purchases(customers, 2, 13.5),
        lambda model, customers: model.probability_of_purchases(customers, 1, 0),
    ],
)
def test_predictions_on_histories_equal_predictions_on_features(features, histories, fitted, name, predict):
    model = fitted[name]
    expected = predict(model, features)
    got = predict(model, histories)
    pd.testing.assert_series_equal(got, expected, check_exact=True)
    assert got.index.equals(features.index)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_expected_purchases_by_horizon_on_histories_equals_on_features(features, histories, fitted, name):
    horizons = [0.0, 1.0, 4.345, 52.0]
    np.testing.assert_array_equal(
        fitted[name].expected_purchases_by_horizon(histories, horizons),
        fitted[name].expected_purchases_by_horizon(features, horizons),
    )


def test_discounting_on_histories_equals_on_features(features, histories, fitted):
    model = fitted["bgnbd"]
    pd.testing.assert_series_equal(
        discounted_expected_purchases(model, histories, 52, 1.0, 0.002),
        discounted_expected_purchases(model, features, 52, 1.0, 0.002),
        check_exact=True,
    )
    pd.testing.assert_frame_equal(
        expected_purchases_by_step(model, histories, 3, 13.0),
        expected_purchases_by_step(model, features, 3, 13.0),
        check_exact=True,
    )


def test_positional_features_give_positional_results(features, fitted):
    positional = features.reset_index(drop=True)
    histories = group_histories(positional)
    assert histories.index.equals(pd.RangeIndex(len(positional)))
    expected = fitted["bgnbd"].expected_purchases(positional, 39)
    pd.testing.assert_series_equal(fitted["bgnbd"].expected_purchases(histories, 39), expected, check_exact=True)
    np.testing.assert_array_equal(expected.to_numpy(), fitted["bgnbd"].expected_purchases(features, 39).to_numpy())


def test_no_customers(fitted):
    empty = pd.DataFrame({name: pd.Series([], dtype=float) for name in HISTORY_COLUMNS}, index=pd.Index([], name="id"))
    histories = group_histories(empty)
    assert len(histories) == 0 and len(histories.unique) == 0 and histories.index.name == "id"
    alive = fitted["bgnbd"].probability_alive(histories)
    assert len(alive) == 0 and alive.index.name == "id"
    assert fitted["paretonbd"].expected_purchases_by_horizon(histories, [1.0, 2.0]).shape == (0, 2)
    assert len(discounted_expected_purchases(fitted["bgnbd"], histories, 3, 1.0, 0.0)) == 0
    with pytest.raises(ValueError, match="no rows to fit on"):
        BetaGeoModel().fit(histories)


def set_first_row(frame, column, value):
    values = frame[column].to_numpy().astype(float)
    values[0] = value
    return frame.assign(**{column: values})


@pytest.mark.parametrize(
    ("corrupt", "message"),
    [
        (lambda f: f.drop(columns=["T"]), "missing column\\(s\\) 'T'"),
        (lambda f: set_first_row(f, "recency", np.nan), "column 'recency': 1 row NaN"),
        (lambda f: set_first_row(f, "T", -2.0), "column 'T': 1 row negative"),
        (lambda f: set_first_row(f, "frequency", 0.5), "column 'frequency': 1 row not a whole number"),
        (lambda f: set_first_row(f, "recency", 1e6), "column 'recency': 1 row with recency greater than T"),
        (lambda f: f.assign(T=f["T"].astype(str)), "column 'T' is not numeric"),
    ],
)
def test_bad_features_are_rejected_when_grouped(features, corrupt, message):
    with pytest.raises(ValueError, match=message):
        group_histories(corrupt(features))


def test_only_features_or_histories_are_accepted(features, fitted):
    with pytest.raises(TypeError, match="DataFrame"):
        group_histories(features[HISTORY_COLUMNS].to_numpy())
    for call in (
        lambda values: BetaGeoModel().fit(values),
        lambda values: fitted["bgnbd"].probability_alive(values),
        lambda values: discounted_expected_purchases(fitted["bgnbd"], values, 3, 1.0, 0.0),
    ):
        with pytest.raises(TypeError, match="DataFrame or CustomerHistories"):
            call(features[HISTORY_COLUMNS].to_numpy())


def test_construction_from_parts_checks_them():
    unique = pd.DataFrame({"frequency": [0.0, 2.0], "recency": [0.0, 3.0], "T": [5.0, 6.0]})
    histories = CustomerHistories(unique, [1, 0, 1], index=["a", "b", "c"])
    assert list(histories.counts) == [1, 2] and list(histories.index) == ["a", "b", "c"]
    assert CustomerHistories(unique, np.array([0, 1])).index.equals(pd.RangeIndex(2))
    with pytest.raises(ValueError, match="column 'recency': 1 row with recency greater than T"):
        CustomerHistories(unique.assign(recency=[0.0, 7.0]), [0, 1])
    with pytest.raises(TypeError, match="DataFrame"):
        CustomerHistories(unique.to_numpy(), [0, 1])
    with pytest.raises(TypeError, match="integers"):
        CustomerHistories(unique, [0.0, 1.0])
    with pytest.raises(TypeError, match="integers"):
        CustomerHistories(unique, [[0, 1]])
    with pytest.raises(ValueError, match="positions must lie in \\[0, 2\\)"):
        CustomerHistories(unique, [0, 2])
    with pytest.raises(ValueError, match="positions must lie"):
        CustomerHistories(unique, [-1, 1])  # would silently wrap around when indexing
    with pytest.raises(ValueError, match="1 of 2 rows are no customer's history"):
        CustomerHistories(unique, [1, 1])
    with pytest.raises(ValueError, match="index has 2 entries for 3 customers"):
        CustomerHistories(unique, [0, 1, 1], index=["a", "b"])


# --- histories from counts alone (what a cluster sends the driver) ----------------------


@pytest.fixture(scope="module")
def counted(features):
    # As a cluster would: a group-by on the history columns and a count, nothing per customer.
    # sort=False keeps the groups in the order of their first customer, as group_histories does.
    sizes = features.groupby(HISTORY_COLUMNS, sort=False).size()
    return CustomerHistories.from_counts(sizes.index.to_frame(index=False), sizes.to_numpy())


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_fit_on_counts_equals_fit_on_features_bit_for_bit(counted, fitted, name):
    model = PURCHASE_MODELS[name]().fit(counted)
    reference = fitted[name]
    assert model.params_ == reference.params_
    assert model.log_likelihood_ == reference.log_likelihood_
    assert model.standard_errors_ == reference.standard_errors_
    pd.testing.assert_frame_equal(model.covariance_, reference.covariance_, check_exact=True)
    assert (model.n_customers_, model.n_unique_rows_) == (reference.n_customers_, reference.n_unique_rows_)


def test_counts_hold_the_grouping_without_customers(features, histories, counted):
    assert len(counted) == len(features) == int(counted.counts.sum())
    pd.testing.assert_frame_equal(counted.unique, histories.unique, check_exact=True)
    np.testing.assert_array_equal(counted.counts, histories.counts)
    assert counted.counts.dtype == np.int64
    with pytest.raises(ValueError):
        counted.counts[0] = 5
    assert "customers=2357" in repr(counted)


@pytest.mark.parametrize(
    "call",
    [
        lambda model, histories: model.expected_purchases(histories, 39),
        lambda model, histories: model.probability_alive(histories),
        lambda model, histories: model.churn_probability(histories),
        lambda model, histories: model.probability_of_purchases(histories, 1, 13.0),
        lambda model, histories: model.expected_purchases_by_horizon(histories, [1.0, 2.0]),
        lambda model, histories: discounted_expected_purchases(model, histories, 3, 1.0, 0.0),
        lambda model, histories: expected_purchases_by_step(model, histories, 3, 1.0),
        lambda model, histories: histories.inverse,
        lambda model, histories: histories.index,
    ],
)
def test_counts_refuse_per_customer_answers_and_point_to_unique(counted, fitted, call):
    with pytest.raises(ValueError, match="from_counts.*predict on histories.unique instead"):
        call(fitted["bgnbd"], counted)


def test_predicting_on_unique_is_the_way_round(counted, histories, fitted):
    model = fitted["paretonbd"]
    per_history = model.probability_alive(counted.unique)
    per_customer = model.probability_alive(histories)
    np.testing.assert_array_equal(per_history.to_numpy()[histories.inverse], per_customer.to_numpy())


def test_from_counts_checks_its_arguments():
    unique = pd.DataFrame({"frequency": [0.0, 2.0], "recency": [0.0, 3.0], "T": [5.0, 6.0]})
    assert list(CustomerHistories.from_counts(unique, [3, 1]).counts) == [3, 1]
    assert list(CustomerHistories.from_counts(unique, np.array([3.0, 1.0])).counts) == [3, 1]
    assert list(CustomerHistories.from_counts(unique, pd.array([3, 1], dtype="Int64")).counts) == [3, 1]
    empty = CustomerHistories.from_counts(unique.iloc[:0], np.array([], dtype=np.int64))
    assert len(empty) == 0
    with pytest.raises(ValueError, match="no rows to fit on"):
        BetaGeoModel().fit(empty)
    for counts, message in [
        ([3, -1], "counts: 1 row below 1"),
        ([0, 1], "counts: 1 row below 1"),
        ([3], "counts has 1 entries for 2 rows of unique"),
        ([3, 1, 1], "counts has 3 entries for 2 rows of unique"),
        ([[3, 1]], "counts must be 1-d"),
        ([1.5, 1.0], "counts: 1 row not a whole number"),
        ([np.nan, 1.0], "counts: 1 row not a whole number"),
    ]:
        with pytest.raises(ValueError, match=message):
            CustomerHistories.from_counts(unique, counts)
    for counts in ([True, True], ["3", "1"]):
        with pytest.raises(TypeError, match="counts must be an array of whole numbers"):
            CustomerHistories.from_counts(unique, counts)
    with pytest.raises(ValueError, match="unique: 1 row with a history an earlier row already has"):
        CustomerHistories.from_counts(pd.concat([unique, unique.iloc[[1]]]), [3, 1, 2])
    with pytest.raises(ValueError, match="column 'recency': 1 row with recency greater than T"):
        CustomerHistories.from_counts(unique.assign(recency=[0.0, 7.0]), [1, 1])
