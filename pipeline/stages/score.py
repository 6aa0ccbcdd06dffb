"""Batch scoring: features at an as-of date → scores from a registered model, streamed to Parquet/CSV.

Features come out of DuckDB as Arrow record batches and each batch is scored and written
before the next is read, so memory stays flat however many customers there are. The export is
written to a temp file beside the target and renamed at the end, with a manifest that makes it
traceable (model URI and version, input fingerprint, SHA-256 of the file).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from pipeline.errors import InputDataError
from pipeline.io import atomic_path, write_json
from pipeline.stages.value import score_customers

FEATURE_COLUMNS = ["frequency", "recency", "T", "monetary_value"]
REQUIRED_FEATURES = ["customer_id", *FEATURE_COLUMNS, "n_transactions", "total_amount"]
OPTIONAL_FEATURES = ["total_margin", "acquisition_cost", "first_channel"]
BATCH_ROWS = 1 << 20
# Each row's position among the unique histories whose figures the batches share (see pipeline.batch).
HISTORY_ROW = "history_row"


@dataclasses.dataclass(frozen=True)
class ModelIdentity:
    """Which model scored the rows: carried on every row and in the manifest."""

    uri: str
    name: str | None
    version: str | None
    run_id: str | None


def check_feature_columns(columns: list[str], label: str) -> None:
    missing = [c for c in REQUIRED_FEATURES if c not in columns]
    if missing:
        raise InputDataError(
            f"{label}: column(s) {', '.join(missing)} needed by the model are missing "
            f"(the file has: {', '.join(columns)})"
        )


def score_batch(
    batch: pa.RecordBatch, scorer: Any, model: ModelIdentity, as_of: dt.date, scored_at: dt.datetime,
    per_history: pd.DataFrame | None = None,
) -> pa.Table:
    """Score one batch of features; the row order and customer ids are kept.

    With ``per_history`` (:func:`pipeline.stages.value.history_figures` of unique histories)
    each row's column :data:`HISTORY_ROW` says which of them is its own; without it the
    batch's histories are evaluated here.
    """
    features = batch.to_pandas().set_index("customer_id")
    history_of = None if per_history is None else features[HISTORY_ROW].to_numpy()
    scores = score_customers(scorer, features, per_history, history_of)
    frame = features[FEATURE_COLUMNS].join(scores).reset_index()
    frame["model_name"] = model.name
    frame["model_version"] = model.version
    frame["model_run_id"] = model.run_id
    frame["as_of_date"] = as_of
    frame["scored_at"] = pd.Timestamp(scored_at).tz_convert("UTC")
    table = pa.Table.from_pandas(frame, preserve_index=False).replace_schema_metadata(None)
    # A handful of distinct strings repeated on every row (tier, its action text, the model):
    # written as dictionaries with a fixed vocabulary, the Parquet writer need not hash 18M
    # strings per column (it was a quarter of scoring time), and every batch has one schema.
    vocabularies = {
        "tier": list(scorer.tier_names),
        "action": list(dict.fromkeys(scorer.tier_actions)),
        "model_name": [str(model.name)],
        "model_version": [str(model.version)],
        "model_run_id": [str(model.run_id)],
    }
    for name, vocabulary in vocabularies.items():
        if fmt_is_text(table.schema.field(name).type):
            dictionary = pa.array(vocabulary, pa.string())
            indices = pc.index_in(table[name], value_set=dictionary).cast(pa.int8())
            column = pa.DictionaryArray.from_arrays(indices.combine_chunks(), dictionary)
            table = table.set_column(table.schema.get_field_index(name), name, column)
    return table


def fmt_is_text(arrow_type: pa.DataType) -> bool:
    return pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type)


def _writer(path: Path, schema: pa.Schema, fmt: str):
    if fmt == "parquet":
        # Dictionary pages only where values repeat (tier, action, model); trying them on the
        # float columns first and falling back halves the write speed for nothing.
        repeated = [f.name for f in schema if pa.types.is_dictionary(f.type)]
        return pq.ParquetWriter(path, schema, use_dictionary=repeated)
    return pacsv.CSVWriter(path, schema)


def output_format(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix in (".parquet", ".pq"):
        return "parquet"
    if suffix == ".csv":
        return "csv"
    raise InputDataError(f"{path}: the export must end in .parquet or .csv")


def write_scores(
    batches: Iterator[pa.RecordBatch],
    scorer: Any,
    model: ModelIdentity,
    as_of: dt.date,
    scored_at: dt.datetime,
    output: Path,
    manifest_extra: dict[str, Any],
    on_batch: Callable[[int], None] | None = None,
    per_history: pd.DataFrame | None = None,
) -> dict[str, Any]:
    """Score every batch into ``output`` (atomically) and write ``<output>.manifest.json``.

    ``per_history``: the figures of the histories the batches' :data:`HISTORY_ROW` points to
    (see :func:`score_batch`).
    """
    output = Path(output)
    fmt = output_format(output)
    manifest_path = output.with_name(output.name + ".manifest.json")
    check_writable(output.parent)
    rows = 0
    columns: list[str] = []
    digest = hashlib.sha256()
    with atomic_path(output) as tmp:
        writer = None
        try:
            for batch in batches:
                table = score_batch(batch, scorer, model, as_of, scored_at, per_history)
                if writer is None:
                    columns = table.column_names
                    writer = _writer(tmp, table.schema, fmt)
                writer.write_table(table)
                rows += table.num_rows
                if on_batch:
                    on_batch(table.num_rows)
        finally:
            if writer is not None:
                writer.close()
        if writer is None:
            raise InputDataError("no customers to score")
        with open(tmp, "rb") as handle:
            while chunk := handle.read(1 << 20):
                digest.update(chunk)
    manifest = {
        "file": output.name,
        "format": fmt,
        "rows": rows,
        "columns": columns,
        "sha256": digest.hexdigest(),
        "model_uri": model.uri,
        "model_name": model.name,
        "model_version": model.version,
        "model_run_id": model.run_id,
        "as_of_date": as_of.isoformat(),
        "scored_at": scored_at.isoformat(),
        **manifest_extra,
    }
    try:
        write_json(manifest, manifest_path)
    except BaseException:
        # An export without its manifest is half an output: take the file back too.
        output.unlink(missing_ok=True)
        raise
    return manifest


def check_writable(directory: Path) -> None:
    """Fail before any work when the export's directory cannot take a file."""
    import tempfile

    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".clv-write-check-"):
            pass
    except OSError as exc:
        raise InputDataError(f"{directory}: cannot write the export here ({exc.strerror})") from None
