"""IO helpers: atomic Parquet writes, and writes in the background that never half-land."""

import threading

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.io import BackgroundWrites, ParquetChunks, write_parquet


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


def test_a_table_written_in_chunks_is_one_file_with_a_row_group_per_chunk(tmp_path):
    target = tmp_path / "calibration.parquet"
    parts = [
        pa.table({"customer_id": [1, 2], "frequency": [0, 3], "channel": ["web", None]}),
        pa.table({"customer_id": [3], "frequency": [2], "channel": ["shop"]}),
    ]
    with ParquetChunks(target) as file:
        for part in parts:
            file.write(part)
        assert not target.exists()  # not under its name until complete
    assert file.rows == 3
    assert pq.ParquetFile(target).num_row_groups == 2
    assert pq.read_table(target).equals(pa.concat_tables(parts))


def test_an_optional_chunked_file_with_nothing_written_is_not_created(tmp_path):
    target = tmp_path / "calibration.parquet"
    with ParquetChunks(target, optional=True) as file:
        pass
    assert file.rows == 0 and not target.exists() and list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match="no table was written"), ParquetChunks(target):
        pass
    assert list(tmp_path.iterdir()) == []


def test_a_chunked_write_that_fails_or_gets_nothing_leaves_no_file(tmp_path):
    target = tmp_path / "calibration.parquet"
    with pytest.raises(RuntimeError, match="stage failed"):
        with ParquetChunks(target) as file:
            file.write(pa.table({"frequency": [1]}))
            raise RuntimeError("stage failed")
    with pytest.raises(ValueError, match="no table was written"):
        with ParquetChunks(target):
            pass
    assert list(tmp_path.iterdir()) == []
