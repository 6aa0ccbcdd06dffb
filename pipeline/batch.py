"""`clv score`: batch scoring of every customer with a registered model (the IO edge of stages/score)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pipeline.config import Config, FeatureSettings, PeriodSettings
from pipeline.duckdb_engine import compute_features
from pipeline.errors import InputDataError
from pipeline.io import arrow_batches, connect, duckdb_identifier, file_sha256, first_line
from pipeline.stages.score import (
    BATCH_ROWS,
    HISTORY_ROW,
    OPTIONAL_FEATURES,
    REQUIRED_FEATURES,
    check_feature_columns,
    output_format,
    write_scores,
)
from pipeline.stages.value import history_figures


def _features_file_query(con, path: Path) -> str:
    if not path.is_file():
        raise InputDataError(f"{path}: features file not found")
    reader = "read_parquet" if path.suffix.lower() in (".parquet", ".pq") else "read_csv"
    quoted = "'" + str(path).replace("'", "''") + "'"
    try:
        columns = [row[0] for row in con.execute(f"DESCRIBE SELECT * FROM {reader}({quoted})").fetchall()]
    except Exception as exc:  # noqa: BLE001 - any reader failure is a bad file to the user
        raise InputDataError(f"{path}: cannot read features: {first_line(exc)}") from None
    check_feature_columns(columns, str(path))
    wanted = REQUIRED_FEATURES + [c for c in OPTIONAL_FEATURES if c in columns]
    select = ", ".join(duckdb_identifier(c) for c in wanted)
    return f"SELECT {select} FROM {reader}({quoted})"


def _joined_batches(con, features_query: str, scorer: Any, batch_rows: int, on_total=None, materialize: bool = True):
    """Features (the result of ``features_query``) as record batches, each row with its
    :data:`HISTORY_ROW` among the unique histories, and the purchase figures of those histories.

    The purchase figures (P(alive), expected purchases, discounted purchases) depend only on
    (frequency, recency, T); evaluated per batch they would be recomputed for the same
    histories in every batch, which dominated scoring time at 18M customers. They are
    evaluated once here and each batch takes its rows' by position
    (:func:`pipeline.stages.value.score_customers`); the join and sort carry that one integer
    rather than the figures.
    """
    import numpy as np

    # Read twice (histories, then the join): a file is loaded once into a table; an Arrow table
    # already in memory (``materialize=False``) is scanned where it is, not copied into
    # DuckDB (1.2 GB at 18M customers).
    kind = "TABLE" if materialize else "VIEW"
    con.execute(f"CREATE OR REPLACE TEMP {kind} score_features AS {features_query}")
    if on_total:
        on_total(con.execute("SELECT count(*) FROM score_features").fetchall()[0][0])
    if getattr(scorer, "covariate_encoding", None) is not None:
        # A covariate model's figures depend on the customer's design row too: each batch is
        # grouped and evaluated on its own (score_customers).
        return arrow_batches(con, "SELECT * FROM score_features ORDER BY customer_id", batch_rows), None
    histories = con.sql("SELECT DISTINCT frequency, recency, T FROM score_features").df()
    per_history = history_figures(scorer, histories)
    con.register("histories", histories.assign(**{HISTORY_ROW: np.arange(len(histories), dtype=np.int32)}))
    batches = arrow_batches(
        con,
        f"""SELECT f.*, h.{HISTORY_ROW}
            FROM score_features f JOIN histories h USING (frequency, recency, T)
            ORDER BY f.customer_id""",
        batch_rows,
    )
    return batches, per_history


def _with_attributes(con, features_query: str, config: Config, scorer: Any) -> str:
    """``features_query`` with the customer attributes a covariate model uses, joined by id from
    the config's ``input.customers`` as a run joins them
    (:func:`pipeline.stages.covariates.join_attributes`: the same id matching, and a customer
    without a row is the same one-line error)."""
    import pandas as pd

    from pipeline.runner import CustomerCovariates
    from pipeline.stages.covariates import attribute_columns, join_attributes

    # The run's reader of the attribute file, with its check that the config gives the columns.
    covariates = CustomerCovariates.read(config, list(getattr(scorer, "covariates", ())))
    wanted = attribute_columns(covariates.names)
    if not wanted:
        return features_query
    ids = con.execute(f"SELECT customer_id FROM ({features_query}) q").df()
    aligned = join_attributes(ids, covariates.attributes, covariates.settings, wanted, str(covariates.settings.path))
    # Keyed by the features' own ids (same type), so the join below is exact.
    con.register("customer_attributes", pd.DataFrame(aligned, copy=False))
    selected = ", ".join(f"a.{duckdb_identifier(name)}" for name in wanted)
    return (f"SELECT f.*, {selected} FROM ({features_query}) f JOIN customer_attributes a "
            f"ON f.customer_id = a.customer_id")


def _score_on_spark(config, scorer, identity, output: Path, as_of, input_path, features_path, scored_at):
    """Features and scores on Spark, written as a Parquet dataset directory plus its manifest."""
    import hashlib

    import pyarrow.dataset as ds

    from pipeline import spark as spark_engine
    from pipeline.io import write_json

    if output_format(output) != "parquet":
        raise InputDataError(f"{output}: the Spark engine writes a Parquet dataset; name the export *.parquet")
    if features_path is not None:
        raise InputDataError("--features is not supported with engine: spark; give the raw log with --input")
    session = spark_engine.spark_session(config.spark)
    period = PeriodSettings(unit=scorer.period_unit, resolution=scorer.period_resolution)
    computed = spark_engine.compute_features(
        session, input_path or config.input.path, config.input,
        FeatureSettings(period=period, observation_end=as_of), config.validation,
    )
    as_of = computed.observation_end
    constants = {"model_name": identity.name, "model_version": identity.version, "model_run_id": identity.run_id,
                 "as_of_date": as_of, "scored_at": scored_at}
    directory = spark_engine.score(computed.features, scorer, output, constant_columns=constants)
    dataset = ds.dataset(directory, format="parquet")
    parts = sorted(p for p in Path(directory).rglob("*.parquet"))
    digest = hashlib.sha256()
    for part in parts:
        digest.update(f"{part.relative_to(directory)} {file_sha256(part)}\n".encode())
    manifest = {
        "file": Path(directory).name, "format": "parquet dataset", "parts": len(parts),
        "rows": dataset.count_rows(), "columns": dataset.schema.names,
        "sha256": digest.hexdigest(), "sha256_of": "part names and their SHA-256, sorted",
        "model_uri": identity.uri, "model_name": identity.name, "model_version": identity.version,
        "model_run_id": identity.run_id, "as_of_date": as_of.isoformat(), "scored_at": scored_at.isoformat(),
        "input": computed.log.source, "input_kind": "transactions", "input_rows": computed.log.rows_used,
        "engine": "spark",
    }
    write_json(manifest, Path(directory).with_name(Path(directory).name + ".manifest.json"))
    return manifest


def score_log(
    config: Config,
    model_uri: str,
    output: Path,
    as_of: dt.date | None = None,
    input_path: str | None = None,
    features_path: Path | None = None,
    scored_at: dt.datetime | None = None,
    batch_rows: int = BATCH_ROWS,
    on_batch: Callable[[int], None] | None = None,
    on_total: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Score every customer of a raw log (features at ``as_of``) or of a features file."""
    from pipeline import tracking
    from pipeline.stages.score import check_writable

    output_format(Path(output))
    check_writable(Path(output).parent)
    scorer, identity = tracking.load_scorer(config, model_uri)
    scored_at = scored_at or dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
    if config.engine == "spark":
        return _score_on_spark(config, scorer, identity, Path(output), as_of, input_path, features_path, scored_at)
    if features_path is None:
        # The model's own period settings, so features mean what they meant in training.
        period = PeriodSettings(unit=scorer.period_unit, resolution=scorer.period_resolution)
        # The features stage closes its DuckDB connection (which keeps the sort's memory, 1.7 GB
        # at 50M rows) before the numpy reductions; the join below gets a fresh one.
        computed = compute_features(
            input_path or config.input.path, config.input, FeatureSettings(period=period, observation_end=as_of),
            config.validation,
        )
        features, log, as_of = computed.features, computed.log, computed.observation_end
        del computed
    con = connect()
    try:
        if features_path is not None:
            query = _features_file_query(con, Path(features_path))
            batches, per_history = _joined_batches(con, _with_attributes(con, query, config, scorer), scorer, batch_rows)
            if as_of is None:
                raise InputDataError("--as-of is required with --features (the date the features describe)")
            extra = {"input": str(features_path), "input_kind": "features"}
        else:
            con.register("computed_features", features)
            # Only what scoring reads: every column carried through the join is sorted with it.
            wanted = REQUIRED_FEATURES + [c for c in OPTIONAL_FEATURES if c in features.column_names]
            select = ", ".join(duckdb_identifier(c) for c in wanted)
            batches, per_history = _joined_batches(
                con, _with_attributes(con, f"SELECT {select} FROM computed_features", config, scorer), scorer,
                batch_rows, on_total, materialize=False,
            )
            extra = {"input": log.source, "input_kind": "transactions", "input_rows": log.rows_used}
        resolved = Path(str(extra["input"]))
        if resolved.is_file():
            extra["input_sha256"] = file_sha256(resolved)
        return write_scores(
            batches, scorer, identity, as_of, scored_at, Path(output), extra, on_batch=on_batch, per_history=per_history
        )
    finally:
        con.close()
