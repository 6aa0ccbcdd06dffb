"""Grouping customers into unique histories: same groups as a plain groupby, and nothing cached."""

import numpy as np
import pandas as pd

from models._validation import unique_rows


def columns_of(rng, n=20_000):
    age = rng.integers(0, 80, n)
    frequency = np.minimum(rng.geometric(0.4, n) - 1, 12).astype(float)
    recency = np.where(frequency > 0, np.floor(age * rng.random(n)), 0.0)
    return [frequency, recency / 7.0, age / 7.0]


def test_groups_equal_a_pandas_groupby_in_first_appearance_order():
    columns = columns_of(np.random.default_rng(1))
    unique, inverse, counts = unique_rows(columns)
    frame = pd.DataFrame(dict(enumerate(columns)))
    expected = frame.groupby([0, 1, 2], sort=False).ngroup().to_numpy()
    np.testing.assert_array_equal(inverse, expected)
    for column, values in zip(columns, unique):
        np.testing.assert_array_equal(values[inverse], column)
    assert counts.sum() == len(columns[0]) and len(counts) == len(unique[0]) == expected.max() + 1


def test_grouping_is_recomputed_from_the_columns_at_each_call():
    # Nothing is cached: the same arrays, changed in place, give the new grouping.
    columns = columns_of(np.random.default_rng(3))
    first = unique_rows(columns)
    columns[0][:] = 0.0  # every customer now has frequency 0
    second = unique_rows(columns)
    assert second[1] is not first[1]
    np.testing.assert_array_equal(second[0][0][second[1]], columns[0])

