"""Grouping customers into unique histories: same groups as a plain groupby, reused only when safe."""

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from models import _validation
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


def test_read_only_columns_reuse_their_grouping():
    # Arrow-backed pandas columns, as the pipeline's features frames have.
    table = pa.table({str(i): c for i, c in enumerate(columns_of(np.random.default_rng(2)))})
    frame = table.to_pandas(split_blocks=True)
    arrays = [frame[name].to_numpy() for name in frame.columns]
    assert not any(a.flags.writeable for a in arrays)
    first = unique_rows(arrays)
    again = unique_rows([frame[name].to_numpy() for name in frame.columns])
    assert again[1] is first[1]  # the same inverse: reused, not recomputed
    with pytest.raises(ValueError):
        again[1][0] = 5  # shared results are read-only


def test_writable_columns_are_regrouped_after_a_change():
    columns = columns_of(np.random.default_rng(3))
    first = unique_rows(columns)
    columns[0][:] = 0.0  # every customer now has frequency 0
    second = unique_rows(columns)
    assert second[1] is not first[1]
    np.testing.assert_array_equal(second[0][0][second[1]], columns[0])


def test_columns_over_writable_memory_are_not_reused():
    # A read-only view of a writable block (what pandas gives for a multi-chunk Arrow column)
    # can change under the view, so it must not be trusted.
    block = np.vstack(columns_of(np.random.default_rng(4)))
    views = [row.view() for row in block]
    for view in views:
        view.flags.writeable = False
    first = unique_rows(views)
    block[0, :] = 0.0
    second = unique_rows(views)
    assert second[1] is not first[1]
    np.testing.assert_array_equal(second[0][0][second[1]], block[0])


def test_only_a_few_groupings_are_kept():
    frames = [
        pa.table({"a": columns_of(np.random.default_rng(seed))[2]}).to_pandas(split_blocks=True) for seed in range(5)
    ]
    for frame in frames:
        unique_rows([frame["a"].to_numpy()])
    assert len(_validation._groupings) <= _validation._GROUPINGS_KEPT
