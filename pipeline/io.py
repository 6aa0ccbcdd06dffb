"""Reading transaction logs into DuckDB and writing outputs atomically."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.config import CustomerAttributes, InputSettings, resolve_input_path
from pipeline.errors import InputDataError

RAW_VIEW = "raw_transactions"


def connect(threads: int | None = None, memory_limit: str | None = None) -> duckdb.DuckDBPyConnection:
    """A fresh in-memory DuckDB connection (spills to a temp dir when memory runs short)."""
    con = duckdb.connect(":memory:")
    if threads:
        con.execute(f"SET threads = {int(threads)}")
    if memory_limit:
        con.execute("SET memory_limit = ?", [memory_limit])
    return con


def _sql_string(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def detect_format(path: Path, declared: str) -> str:
    if declared != "auto":
        return declared
    suffix = path.suffix.lower()
    if suffix in (".parquet", ".pq"):
        return "parquet"
    if suffix in (".csv", ".tsv"):
        return "csv"
    raise InputDataError(
        f"{path}: cannot tell the format from the extension '{suffix}'; set input.format "
        "to csv, parquet or whitespace"
    )


def _whitespace_source(path: Path, settings: InputSettings) -> str:
    """SQL for a file of whitespace-separated columns (such as CDNOW's .txt files).

    DuckDB's CSV reader needs a single delimiter; these files pad with runs of spaces, so
    each line is read whole and split on whitespace — still a streaming scan.
    """
    names = settings.names
    if names is None:
        header = path.open().readline().split()
        if not header:
            raise InputDataError(f"{path}: the file is empty")
        names = header
    fields = ", ".join(
        f"parts[{i + 1}] AS {duckdb_identifier(name)}" for i, name in enumerate(names)
    )
    return (
        f"SELECT {fields}, len(parts) AS __field_count FROM ("
        f"SELECT string_split_regex(trim(line), '\\s+') AS parts FROM read_csv({_sql_string(str(path))}, "
        f"columns = {{'line': 'VARCHAR'}}, delim = '\\x1f', header = false, quote = '', escape = '', "
        f"skip = {1 if settings.header else 0}) WHERE trim(line) <> '')"
    )


def duckdb_identifier(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def register_transactions(
    con: duckdb.DuckDBPyConnection, source: str | Path | pd.DataFrame, settings: InputSettings
) -> str:
    """Expose the raw log as the view ``raw_transactions``; return a label for messages.

    Text files are read with every column as text so that one bad value late in a large
    file becomes a row-level error message instead of a failed type inference.
    """
    if isinstance(source, pd.DataFrame):
        con.register("__input_frame", source)
        con.execute(f"CREATE OR REPLACE TEMP VIEW {RAW_VIEW} AS SELECT * FROM __input_frame")
        return "input DataFrame"
    path = resolve_input_path(str(source)) if isinstance(source, str) else Path(source)
    if not path.exists():
        raise InputDataError(f"{path}: input file not found")
    if path.is_file() and path.stat().st_size == 0:
        raise InputDataError(f"{path}: the file is empty")
    # A folder is a dataset of Parquet files, as Spark and most lakes write them.
    fmt = "parquet" if settings.format == "auto" and path.is_dir() else detect_format(path, settings.format)
    quoted = _sql_string(str(path))
    if fmt == "parquet":
        if path.is_dir():
            quoted = _sql_string(str(path / "**" / "*.parquet"))
        sql = f"SELECT * FROM read_parquet({quoted})"
    elif fmt == "whitespace":
        sql = _whitespace_source(path, settings)
    else:
        options = ["all_varchar = true", f"header = {str(settings.header).lower()}"]
        if settings.delimiter:
            options.append(f"delim = {_sql_string(settings.delimiter)}")
        if settings.names:
            options.append("names = [" + ", ".join(_sql_string(n) for n in settings.names) + "]")
        sql = f"SELECT * FROM read_csv({quoted}, {', '.join(options)})"
    try:
        con.execute(f"CREATE OR REPLACE TEMP VIEW {RAW_VIEW} AS {sql}")
    except duckdb.Error as exc:
        raise InputDataError(f"{path}: cannot read as {fmt}: {first_line(exc)}") from None
    return str(path)


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    for prefix in ("Invalid Input Error: ", "Conversion Error: ", "IO Error: ", "Binder Error: "):
        text = text.removeprefix(prefix)
    return text.splitlines()[0] if text else type(exc).__name__


@contextlib.contextmanager
def atomic_path(target: Path) -> Iterator[Path]:
    """Yield a temp path beside ``target``; rename it into place only if the block succeeds.

    The temp file lives in the target's directory so the final rename is atomic on POSIX and
    an interrupted write never leaves a partial file under the real name.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _dictionary_columns(schema: pa.Schema) -> list[str]:
    # Dictionary pages only for text (repeated tiers, channels); on float columns the writer
    # would try them first and fall back, at twice the cost.
    text = [f.name for f in schema if pa.types.is_string(f.type) or pa.types.is_large_string(f.type)
            or pa.types.is_dictionary(f.type)]
    return [name for name in text if name != "customer_id"]  # unique per row: nothing repeats


def write_parquet(table: pa.Table | pd.DataFrame, target: Path) -> Path:
    if isinstance(table, pd.DataFrame):
        table = pa.Table.from_pandas(table, preserve_index=table.index.name is not None)
    with atomic_path(target) as tmp:
        pq.write_table(table, tmp, use_dictionary=_dictionary_columns(table.schema))
    return Path(target)


class ParquetChunks:
    """A Parquet file written a table chunk at a time (one row group each), atomically.

    For tables too large to hold whole beside everything else: at 18M customers the
    calibration features are 1.7 GB. Use as a context manager; the file appears under its
    name only when the block succeeds. ``rows`` counts the rows written. ``optional``: a block
    that wrote nothing leaves no file (else that is an error: an empty file is not Parquet).
    """

    def __init__(self, target: Path, optional: bool = False) -> None:
        self.target = Path(target)
        self.optional = optional
        self.rows = 0
        self._atomic = atomic_path(self.target)
        self._tmp: Path | None = None
        self._writer: pq.ParquetWriter | None = None

    def __enter__(self) -> "ParquetChunks":
        self._tmp = self._atomic.__enter__()
        return self

    def write(self, table: pa.Table) -> None:
        if self._writer is None:
            self._writer = pq.ParquetWriter(
                self._tmp, table.schema, use_dictionary=_dictionary_columns(table.schema)
            )
        self._writer.write_table(table)
        self.rows += table.num_rows

    def __exit__(self, kind, error, traceback) -> bool | None:
        if self._writer is not None:
            self._writer.close()
        elif kind is None and self.optional:
            self._atomic.__exit__(RuntimeError, RuntimeError("nothing written"), None)  # removes the temp file
            return None
        elif kind is None:  # an empty file would not even be Parquet
            kind, error = ValueError, ValueError(f"{self.target}: no table was written")
            self._atomic.__exit__(kind, error, None)
            raise error
        return self._atomic.__exit__(kind, error, traceback)


class BackgroundWrites:
    """Writes that run on a helper thread while the caller goes on; ``wait`` re-raises their errors.

    The Parquet writer releases the GIL, so at 18M customers writing a gigabyte-sized table
    (seconds) overlaps with the next stage's work on the other core. Used as a context manager,
    leaving the block waits for every write, so nothing is half-written when a run is committed;
    each write is atomic on its own (``write_parquet``).
    """

    def __init__(self) -> None:
        from concurrent.futures import ThreadPoolExecutor

        # One thread: writes stay in submission order and never compete with each other for disk.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="clv-write")
        self._pending: list = []

    def submit(self, function, *args) -> None:
        # The job list is emptied once written, so the tables are not kept alive by the
        # executor, and the Arrow pool hands the freed memory back (mimalloc keeps it otherwise:
        # gigabytes at 18M customers).
        self._pending.append(self._executor.submit(_run_and_release, [(function, args)]))

    def wait(self) -> None:
        pending, self._pending = self._pending, []
        for future in pending:
            future.result()

    def __enter__(self) -> "BackgroundWrites":
        return self

    def __exit__(self, kind, error, traceback) -> None:
        try:
            if kind is None:
                self.wait()
            else:  # already failing: let the writes finish (their temp files are cleaned), keep that error
                for future in self._pending:
                    future.exception()
        finally:
            self._executor.shutdown(wait=True)


def release_freed_memory() -> None:
    """Hand memory freed so far back to the OS, between stages of a big run.

    glibc keeps freed blocks below its mmap threshold in the heap, and a stage's many
    chunk-sized work arrays (megabytes each, freed between long-lived ones) leave holes it
    never returns on its own: about a gigabyte at 18M customers, on top of the next stage's
    live data. ``malloc_trim`` returns them (milliseconds); elsewhere this does nothing.
    """
    pa.default_memory_pool().release_unused()
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


def _run_and_release(job: list) -> Any:
    function, args = job.pop()
    try:
        return function(*args)
    finally:
        del function, args
        pa.default_memory_pool().release_unused()


def write_json(payload: Any, target: Path) -> Path:
    with atomic_path(target) as tmp:
        tmp.write_text(json.dumps(payload, indent=2, sort_keys=False, default=str) + "\n")
    return Path(target)


def fetch_arrow(con: duckdb.DuckDBPyConnection, sql: str) -> pa.Table:
    """Run ``sql`` and return the result as an Arrow table without an extra copy.

    DuckDB 2 renamed the relation's ``arrow()`` to ``to_arrow_table()``; accept both.
    """
    relation = con.sql(sql)
    method = getattr(relation, "to_arrow_table", None) or relation.arrow
    return method()


def file_sha256(path: Path, chunk_bytes: int = 1 << 20) -> str:
    """SHA-256 of a file's bytes, read in chunks (logs can be larger than memory)."""
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()


def arrow_batches(con: duckdb.DuckDBPyConnection, sql: str, batch_rows: int):
    """Stream a query's result as Arrow record batches (DuckDB 2 renamed fetch_record_batch)."""
    relation = con.sql(sql)
    method = getattr(relation, "to_arrow_reader", None) or relation.fetch_record_batch
    return method(batch_rows)


def read_customer_attributes(settings: CustomerAttributes) -> pd.DataFrame:
    """The attribute file of ``input.customers``: its id column and ``columns``, as read.

    A missing file or column, a repeated or missing id is an :class:`InputDataError` naming the
    file and the column (and a row's id).
    """
    path = resolve_input_path(settings.path)
    if not path.is_file():
        raise InputDataError(f"{path}: customer attribute file not found (input.customers.path)")
    fmt = detect_format(path, settings.format)
    reader = "read_parquet" if fmt == "parquet" else "read_csv"
    con = connect(threads=1)
    try:
        available = [row[0] for row in con.execute(f"DESCRIBE SELECT * FROM {reader}({_sql_string(str(path))})").fetchall()]
        wanted = [settings.customer_id, *settings.columns]
        missing = [name for name in wanted if name not in available]
        if missing:
            raise InputDataError(f"{path}: no column {', '.join(repr(m) for m in missing)} "
                                 f"(input.customers); the file has {available}")
        selected = ", ".join(duckdb_identifier(name) for name in wanted)
        frame = con.execute(f"SELECT {selected} FROM {reader}({_sql_string(str(path))})").fetchdf()
    except duckdb.Error as exc:
        raise InputDataError(f"{path}: cannot read the customer attribute file ({first_line(exc)})") from None
    finally:
        con.close()
    ids = frame[settings.customer_id]
    if ids.isna().any():
        row = int(ids.isna().to_numpy().argmax()) + 1
        raise InputDataError(f"{path}: column '{settings.customer_id}': data row {row} has no customer id")
    repeated = ids.duplicated()
    if repeated.any():
        raise InputDataError(f"{path}: column '{settings.customer_id}': customer {ids[repeated].iloc[0]!r} "
                             "has more than one row (one row per customer)")
    return frame
