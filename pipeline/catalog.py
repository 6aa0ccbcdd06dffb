"""One run directory: the name and format of every output, reading a previous run's outputs,
and writing a run — new or updated — so that it appears whole or not at all.

Tables are single Parquet files, or dataset directories of part files under the same names
where the Spark engine wrote them on the cluster (pyarrow and pandas read both).

The stages (``pipeline/stages``) take and return tables; :mod:`pipeline.runner` moves them
between the stages and this catalog. Nothing else knows a file name of a run.

Writing always goes to a staging directory beside the run: a new run (:meth:`RunCatalog.create`)
is renamed into place and marked ``LATEST`` when every stage succeeded; a stage run alone on a
finished run (:meth:`RunCatalog.update`) works on a copy of it — hard links, so nothing is
copied, and every write replaces a file rather than writing into it, so the links never
change the original — which is exchanged with the run in one ``renameat2`` call. A failure
leaves the run as it was.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import datetime as dt
import json
import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.errors import InputDataError
from pipeline.io import BackgroundWrites, ParquetChunks, atomic_path, release_freed_memory, write_json, write_parquet

if TYPE_CHECKING:
    from pipeline.stages.features import FeaturesResult
    from pipeline.stages.fit import FitOutputs
    from pipeline.stages.value import ValueOutputs

LATEST_POINTER = "LATEST"

FEATURES_FILE = "features.parquet"
CALIBRATION_FILE = "calibration.parquet"
REPEAT_PURCHASES_FILE = "repeat_purchases.parquet"
FEATURES_SUMMARY_FILE = "features_summary.json"
CUSTOMERS_FILE = "customers.parquet"
SUMMARY_FILE = "summary.json"
BACKTEST_FILE = "backtest.json"
VALUE_FILE = "value.json"
MONITOR_FILE = "monitor.json"
# clv backtest: the origins' summary (spread, wins, every origin's table) and the long table.
BACKTEST_ORIGINS_FILE = "backtest_origins.json"
BACKTEST_ORIGINS_TABLE = "backtest_origins.csv"
SCORER_FILE = "model/scorer.joblib"
FITTED_FILE = "model/fitted.joblib"
MODELS_FILE = "model/models.json"
PLOTS_DIR = "plots"
# What a tracked run logs as artifacts (the model directory goes in as the MLflow model).
MODEL_CARD_FILE = "model_card.md"
ARTIFACT_FILES = (CUSTOMERS_FILE, SUMMARY_FILE, MODEL_CARD_FILE, FEATURES_SUMMARY_FILE, BACKTEST_FILE, VALUE_FILE, MONITOR_FILE,
                  BACKTEST_ORIGINS_FILE, BACKTEST_ORIGINS_TABLE)

# The calibration features the backtest and its plots read (not first purchase dates, counts
# of transactions or the holdout's mean transaction value): at 18M customers each column is 144 MB.
BACKTEST_COLUMNS = [
    # The id chooses the customers Spearman's rho is estimated on above a million (rank_sample).
    "customer_id",
    "frequency", "recency", "T", "monetary_value", "total_amount",
    "frequency_holdout", "revenue_holdout", "duration_holdout",
]
# The customers table is written a slice at a time (see _write_customers).
CUSTOMER_ROWS_PER_WRITE = 1 << 20


def new_run_name(name: str | None = None) -> str:
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    return f"{stamp}-{name or secrets.token_hex(3)}"


def mark_latest(run_dir: Path) -> None:
    """Record ``run_dir`` as the latest complete run (what stages run alone read)."""
    pointer = Path(run_dir).parent / LATEST_POINTER
    tmp = pointer.with_suffix(".tmp")
    tmp.write_text(Path(run_dir).name + "\n")
    tmp.replace(pointer)


def resolve_run_dir(output_dir: Path, run_dir: Path | None) -> Path:
    """The run directory a stage run alone reads: the given one, else the latest."""
    if run_dir is not None:
        if not Path(run_dir).is_dir():
            raise InputDataError(f"{run_dir}: run directory not found")
        return Path(run_dir)
    pointer = Path(output_dir) / LATEST_POINTER
    if not pointer.is_file():
        raise InputDataError(
            f"{output_dir}: no previous run found; run `clv run` or `clv features` first, or pass --run-dir"
        )
    found = Path(output_dir) / pointer.read_text().strip()
    if not found.is_dir():
        raise InputDataError(f"{pointer}: points at {found}, which does not exist")
    return found


def _exchange(first: Path, second: Path) -> None:
    """Swap two directories in one step (Linux ``renameat2(RENAME_EXCHANGE)``); elsewhere, or
    on a file system without it, by two renames with the old one set aside in between."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        renameat2 = None
    if renameat2 is not None:
        at_cwd, rename_exchange = -100, 2
        if renameat2(at_cwd, os.fsencode(first), at_cwd, os.fsencode(second), rename_exchange) == 0:
            return
    aside = second.with_name(f".{second.name}.{secrets.token_hex(3)}.old")
    second.rename(aside)
    first.rename(second)
    aside.rename(first)


def _linked_copy(source: Path, target: Path) -> None:
    """``source``'s tree at ``target`` as hard links (no data copied); copies where links fail."""
    def link(src: str, dst: str) -> None:
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)

    shutil.copytree(source, target, copy_function=link)


@dataclasses.dataclass
class RunCatalog:
    """The files of one run: ``directory`` is where they are written or read now, ``final``
    where they will be once the run is committed (the paths recorded in summaries)."""

    directory: Path
    final: Path
    writes: BackgroundWrites | None = None

    # -- opening -------------------------------------------------------------------------

    @classmethod
    @contextlib.contextmanager
    def create(cls, output_dir: Path, name: str | None = None, latest: bool = True) -> Iterator[RunCatalog]:
        """A new run under ``output_dir``, written in a hidden staging directory that becomes
        ``output_dir/<run name>`` (and ``LATEST``, unless ``latest`` is false: a run the stages
        cannot continue from, such as ``clv backtest``'s) only when the block succeeds.

        Tables handed to the ``write_*`` methods may be written on a helper thread meanwhile;
        the block's end waits for them, so nothing is committed half-written.
        """
        output_dir = Path(output_dir)
        run_name = new_run_name(name)
        staging = output_dir / f".{run_name}.partial"
        staging.mkdir(parents=True, exist_ok=False)
        try:
            with BackgroundWrites() as writes:
                yield cls(staging, output_dir / run_name, writes)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        staging.rename(output_dir / run_name)
        if latest:
            mark_latest(output_dir / run_name)

    @classmethod
    def previous(cls, output_dir: Path, run_dir: Path | None = None) -> RunCatalog:
        """A finished run to read: ``run_dir``, else the latest under ``output_dir``."""
        directory = resolve_run_dir(output_dir, run_dir)
        return cls(directory, directory)

    @contextlib.contextmanager
    def update(self) -> Iterator[RunCatalog]:
        """This finished run, rewritten by a stage run alone: the block writes into a linked
        copy, which replaces the run in one step when the block succeeds (see the module's doc)."""
        staging = self.directory.with_name(f".{self.directory.name}.{secrets.token_hex(3)}.update")
        _linked_copy(self.directory, staging)
        try:
            with BackgroundWrites() as writes:
                yield RunCatalog(staging, self.final, writes)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        _exchange(staging, self.directory)
        shutil.rmtree(staging, ignore_errors=True)  # now the previous version

    def path(self, name: str) -> Path:
        return self.directory / name

    def final_path(self, name: str) -> Path:
        return self.final / name

    def has(self, name: str) -> bool:
        return self.path(name).exists()

    # -- between stages --------------------------------------------------------------------

    def wait_for_writes(self) -> None:
        """Wait until every table handed over so far is on disk (to read one back)."""
        if self.writes is not None:
            self.writes.wait()

    @staticmethod
    def release_memory() -> None:
        """Hand memory the last stage freed back to the OS before the next one (see
        :func:`pipeline.io.release_freed_memory`)."""
        release_freed_memory()

    def _write(self, function, *args) -> None:
        if self.writes is None:
            function(*args)
        else:
            self.writes.submit(function, *args)

    def _require(self, name: str, stage: str) -> Path:
        path = self.path(name)
        if not path.exists():
            raise InputDataError(f"{path}: not found; run `clv {stage}` for this run directory first")
        return path

    # -- features ---------------------------------------------------------------------------

    def calibration_writer(self) -> ParquetChunks:
        """Where the features stage streams the calibration table as it computes it (at 18M
        customers, whole beside the features, it was the run's memory peak)."""
        return ParquetChunks(self.path(CALIBRATION_FILE), optional=True)  # no holdout: no file

    def write_features(self, result: FeaturesResult, summary: dict[str, Any]) -> None:
        tables = [(result.features, FEATURES_FILE), (result.repeat_purchases, REPEAT_PURCHASES_FILE)]
        if result.calibration is not None:
            tables.append((result.calibration, CALIBRATION_FILE))
        for table, name in tables:
            self._write(write_parquet, table, self.path(name))
        write_json(summary, self.path(FEATURES_SUMMARY_FILE))

    def features(self, without: tuple[str, ...] = ()) -> pd.DataFrame:
        """The features at the observation end, as the stages take them (see
        :func:`pipeline.stages.features.pipeline_frame`), without the columns in ``without``."""
        from pipeline.stages.features import pipeline_frame

        path = self._require(FEATURES_FILE, "features")
        names = [name for name in _schema(path).names if name not in without]
        return pipeline_frame(pq.read_table(path, columns=names), indexed=False)

    def features_column(self, name: str) -> pd.Series:
        path = self._require(FEATURES_FILE, "features")
        return pq.read_table(path, columns=[name]).column(0).to_pandas(date_as_object=False)

    def has_calibration(self) -> bool:
        return self.has(CALIBRATION_FILE)

    def calibration(self, columns: list[str] | None = BACKTEST_COLUMNS, indexed: bool = False) -> pd.DataFrame:
        """The calibration features with the holdout columns (only ``columns``; None: all)."""
        path = self._require(CALIBRATION_FILE, "features")
        if columns is not None and indexed and "customer_id" not in columns:
            columns = ["customer_id", *columns]
        # A column read from Parquet has a chunk per row group, so pandas gets a copy: self_destruct
        # frees each Arrow column once copied, so the table is never there twice (1.2 GB at 18M customers).
        frame = pq.read_table(path, columns=columns).to_pandas(split_blocks=True, self_destruct=True,
                                                              date_as_object=False)
        return frame.set_index("customer_id") if indexed else frame

    def calibration_columns(self, names: list[str]) -> dict[str, np.ndarray]:
        """Columns of the calibration file as numpy arrays, read one at a time (so the file's
        Arrow buffers are never there beside more than one copied column)."""
        path = self._require(CALIBRATION_FILE, "features")
        arrays = {}
        for name in names:
            values = pq.read_table(path, columns=[name]).column(0).to_numpy()
            if name == "duration_holdout" and len(values):
                # The holdout's length, the same for every customer: a read-only view of one
                # number rather than 144 MB at 18M customers.
                values = np.broadcast_to(values[0], len(values))
            values.flags.writeable = False
            arrays[name] = values
        return arrays

    def repeat_purchases(self) -> pd.DataFrame:
        return pd.read_parquet(self._require(REPEAT_PURCHASES_FILE, "features"))

    def features_summary(self) -> dict[str, Any]:
        return json.loads(self._require(FEATURES_SUMMARY_FILE, "features").read_text())

    # -- fit --------------------------------------------------------------------------------

    def write_fit(self, fit: FitOutputs) -> None:
        import joblib

        with atomic_path(self.path(FITTED_FILE)) as tmp:
            joblib.dump(fit, tmp)
        write_json(fit.summary(), self.path(MODELS_FILE))
        write_json(fit.backtest, self.path(BACKTEST_FILE))

    def fit(self) -> FitOutputs:
        import joblib

        return joblib.load(self._require(FITTED_FILE, "fit"))

    # -- value ------------------------------------------------------------------------------

    def write_value(self, value: ValueOutputs, customers_written: bool = False) -> None:
        """The value stage's outputs; ``customers_written``: the customers table is already in
        place (the Spark engine's executors wrote it), ``value.customers`` is not it."""
        import joblib

        if not customers_written:
            self._write(_write_customers, value.customers, self.path(CUSTOMERS_FILE))
        with atomic_path(self.path(SCORER_FILE)) as tmp:
            joblib.dump(value.scorer, tmp)
        write_json({"settings": value.scorer.settings_summary(), **value.summary}, self.path(VALUE_FILE))

    def value(self) -> ValueOutputs:
        """The value stage's outputs as it returned them: customers, frozen scorer, tiers, summary."""
        import joblib

        from pipeline.stages.value import ValueOutputs, tier_table

        scorer = joblib.load(self._require(SCORER_FILE, "value"))
        summary = json.loads(self._require(VALUE_FILE, "value").read_text())
        summary.pop("settings", None)
        customers = pd.read_parquet(self._require(CUSTOMERS_FILE, "value"))
        return ValueOutputs(scorer=scorer, customers=customers, tier_table=tier_table(customers, scorer),
                            summary=summary, max_frequency=float(customers["frequency"].max()),
                            max_age=float(customers["T"].max()))

    # -- report -----------------------------------------------------------------------------

    def plot_path(self, name: str) -> Path:
        return self.path(PLOTS_DIR) / f"{name}.png"

    def write_summary(self, summary: dict[str, Any]) -> None:
        """``summary.json`` and the model card made from it (the card holds nothing else)."""
        from pipeline.stages.model_card import model_card

        write_json(summary, self.path(SUMMARY_FILE))
        with atomic_path(self.path(MODEL_CARD_FILE)) as tmp:
            tmp.write_text(model_card(summary))

    def write_json(self, name: str, payload: Any) -> None:
        write_json(payload, self.path(name))

    def summary(self) -> dict[str, Any]:
        return json.loads(self._require(SUMMARY_FILE, "report").read_text())

    # -- backtest over several origins ------------------------------------------------------

    def write_backtest_origins(self, summary: dict[str, Any], table: pd.DataFrame) -> None:
        """``clv backtest``'s summary and its long table (a row per origin, model and metric)."""
        write_json(summary, self.path(BACKTEST_ORIGINS_FILE))
        with atomic_path(self.path(BACKTEST_ORIGINS_TABLE)) as tmp:
            table.to_csv(tmp, index=False)


def _schema(path: Path) -> pa.Schema:
    """The schema of a Parquet file, or of a dataset directory (the Spark engine writes those)."""
    import pyarrow.dataset as ds

    return pq.read_schema(path) if path.is_file() else ds.dataset(path, format="parquet").schema


def _write_customers(customers: pd.DataFrame, target: Path) -> Path:
    # Converted to Arrow and tier and action decoded to text (as every export has them) a
    # slice at a time, on the writer thread when there is one: the whole table's text was
    # 1.7 GB at 18M customers, and constant columns (one margin rate, one CAC) are views of
    # one number that Arrow would copy whole.
    with ParquetChunks(target) as file:
        for start in range(0, max(len(customers), 1), CUSTOMER_ROWS_PER_WRITE):
            part = pa.Table.from_pandas(customers.iloc[start:start + CUSTOMER_ROWS_PER_WRITE], preserve_index=False)
            for name in ("tier", "action"):
                part = part.set_column(part.schema.get_field_index(name), name, part[name].cast(pa.string()))
            file.write(part)
    return Path(target)
