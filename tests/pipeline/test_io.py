"""IO helpers: atomic Parquet writes, and writes in the background that never half-land."""

import threading

import pandas as pd
import pyarrow as pa
import pytest

from pipeline.io import BackgroundWrites, write_parquet


def test_background_writes_land_before_the_block_ends(tmp_path):
    table = pa.table({"customer_id": ["a", "b"], "frequency": [0, 3]})
    with BackgroundWrites() as writes:
        writes.submit(write_parquet, table, tmp_path / "one.parquet")
        writes.submit(write_parquet, table, tmp_path / "two.parquet")
    for name in ("one.parquet", "two.parquet"):
        assert pd.read_parquet(tmp_path / name).equals(table.to_pandas())


def test_a_failed_background_write_fails_the_block_and_leaves_no_file(tmp_path):
    not_a_table = object()  # write_parquet cannot write this
    with pytest.raises(Exception):
        with BackgroundWrites() as writes:
            writes.submit(write_parquet, not_a_table, tmp_path / "bad.parquet")
    assert list(tmp_path.iterdir()) == []


def test_an_error_in_the_block_wins_and_pending_writes_finish_first(tmp_path):
    release = threading.Event()
    finished = []

    def slow_write():
        release.wait(5)
        finished.append(True)

    with pytest.raises(KeyError, match="stage failed"):
        with BackgroundWrites() as writes:
            writes.submit(slow_write)
            release.set()
            raise KeyError("stage failed")
    # The block's error is the one raised, after the write thread was done with the files.
    assert finished == [True]
