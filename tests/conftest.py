"""Shared fixtures: the CDNOW sample through our own features stage, and paths to configs."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from pipeline.config import Config, load_config, resolve_input_path
from pipeline.duckdb_engine import features_from_config

REPO_ROOT = Path(__file__).resolve().parents[1]
CONFIGS = REPO_ROOT / "configs"
DATA = Path(__file__).resolve().parent / "data"


def sample_config(*overrides: str) -> Config:
    """The CDNOW sample config (weeks at daily resolution, calibration end 1997-09-30)."""
    return load_config(CONFIGS / "cdnow_sample.yaml", list(overrides))


@pytest.fixture(scope="session", autouse=True)
def isolated_tracking_store(tmp_path_factory):
    """Commands that track without an explicit URI write to a temp store, never the checkout."""
    import os

    previous = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp_path_factory.mktemp('mlflow')}/mlflow.db"
    yield
    if previous is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = previous


@pytest.fixture(scope="session")
def cdnow_sample_path() -> Path:
    return resolve_input_path("builtin:CDNOW_sample.txt")


@pytest.fixture(scope="session")
def cdnow_sample_transactions(cdnow_sample_path) -> pd.DataFrame:
    """The raw sample log read independently of our pipeline (pandas), for reference checks."""
    frame = pd.read_csv(
        cdnow_sample_path,
        sep=r"\s+",
        header=None,
        names=["customer_id", "sample_id", "date", "quantity", "amount"],
        dtype={"customer_id": str, "date": str},
    )
    frame["date"] = pd.to_datetime(frame["date"], format="%Y%m%d")
    return frame


@pytest.fixture(scope="session")
def cdnow_sample_calibration_features() -> pd.DataFrame:
    """Calibration features of the CDNOW sample (to 1997-09-30) plus holdout columns."""
    return features_from_config(sample_config()).calibration_frame()


@pytest.fixture(scope="session")
def cdnow_sample_full_features() -> pd.DataFrame:
    """Features of the whole CDNOW sample (observation end 1998-06-30, no holdout)."""
    return features_from_config(sample_config()).features_frame()


@pytest.fixture(scope="session")
def spark_cluster(tmp_path_factory):
    """A Spark standalone master and one worker on 127.0.0.1 (see tests/spark_cluster.py),
    stopped at the end of the session; skipped without pyspark or java."""
    import os
    import shutil

    pytest.importorskip("pyspark")
    java_home = os.environ.get("JAVA_HOME")
    if not (shutil.which("java") or (java_home and Path(java_home, "bin", "java").is_file())):
        pytest.skip("a Spark cluster needs java (JAVA_HOME or java on the PATH)")
    from tests.spark_cluster import standalone_cluster

    try:
        with standalone_cluster(tmp_path_factory.mktemp("spark_cluster")) as cluster:
            yield cluster
            # A session of this process still on the cluster would lose its executors under it.
            from pyspark.sql import SparkSession

            active = SparkSession.getActiveSession()
            if active is not None:
                active.stop()
    except RuntimeError as exc:
        pytest.fail(str(exc), pytrace=False)


def random_batches(rows: int, batches: int, seed: int) -> list:
    """Positions ``0..rows-1`` dealt at random into ``batches`` batches, shuffled, plus an empty one.

    For the mergeable summaries: partials of these batches, merged in this order, must give the
    whole table's figures.
    """
    import numpy as np

    rng = np.random.default_rng(seed)
    batch_of = rng.integers(0, batches, size=rows)
    positions = [np.flatnonzero(batch_of == batch) for batch in range(batches)]
    positions.append(np.array([], dtype=np.int64))
    return [positions[i] for i in rng.permutation(len(positions))]
