"""`engine: spark` through the CLI: the run and the export equal the DuckDB engine's exactly."""

from __future__ import annotations

import pandas as pd
import pytest
from typer.testing import CliRunner

from pipeline.cli import app
from tests.conftest import CONFIGS
from tests.engines import assert_same_runs, run_dir

# End to end (runs, Spark, notebooks or servers): `pytest -m "not slow"` skips them.
pytestmark = pytest.mark.slow

pytest.importorskip("pyspark")
runner = CliRunner()
SAMPLE = str(CONFIGS / "cdnow_sample.yaml")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("spark_cli")
    uri = f"sqlite:///{root}/mlflow.db"
    common = ["-c", SAMPLE, "--set", f"tracking.uri={uri}", "--set", "models.purchase.candidates=[bgnbd]"]
    for engine in ("duckdb", "spark"):
        result = runner.invoke(app, ["run", "-q", *common, "--set", f"output_dir={root / engine}",
                                     "--set", f"engine={engine}"])
        assert result.exit_code == 0, result.stderr
    assert runner.invoke(app, ["promote", "1", *common]).exit_code == 0
    yield root, common
    from pyspark.sql import SparkSession

    active = SparkSession.getActiveSession()
    if active is not None:
        active.stop()


def customers(root, engine):
    return pd.read_parquet(next((root / engine).glob("*/customers.parquet")))


def test_spark_run_equals_duckdb_run(runs):
    root, _ = runs
    assert_same_runs(run_dir(root / "spark"), run_dir(root / "duckdb"))


@pytest.fixture(scope="module")
def exports(runs, tmp_path_factory):
    """`clv score` of the champion (the DuckDB run's model) on each engine, as of the log's end."""
    _, common = runs
    out = tmp_path_factory.mktemp("spark_cli_scores")
    stamp = ["--as-of", "1998-06-30", "--scored-at", "2026-01-01T00:00:00+00:00"]
    for engine in ("duckdb", "spark"):
        result = runner.invoke(app, ["score", "-q", *common, "--set", f"engine={engine}", *stamp,
                                     "--out", str(out / engine / "scores.parquet")])
        assert result.exit_code == 0, result.stderr
    duck = pd.read_parquet(out / "duckdb" / "scores.parquet")
    duck = duck.astype({c: "str" for c in duck.select_dtypes("category").columns}).set_index("customer_id")
    spark = pd.read_parquet(out / "spark" / "scores.parquet").set_index("customer_id").sort_index()
    return out, duck, spark


def test_spark_scoring_equals_duckdb_scoring(exports):
    out, duck, spark = exports
    spark = spark[duck.columns]
    pd.testing.assert_frame_equal(spark.drop(columns=["as_of_date", "scored_at"]),
                                  duck.drop(columns=["as_of_date", "scored_at"]), check_exact=True, check_dtype=False)
    assert (out / "spark" / "scores.parquet.manifest.json").is_file()


def test_the_run_and_both_exports_give_identical_rows(runs, exports):
    # The three entry points of the scoring core: the value stage of `clv run` (customers.parquet),
    # `clv score` on DuckDB and `clv score` on Spark, with the same model, log and date.
    root, _ = runs
    _, duck, spark = exports
    run = customers(root, "duckdb").set_index("customer_id")
    assert len(run) == len(duck) == len(spark) == 2357
    for export in (duck, spark):
        rows = export[run.columns].sort_index()
        pd.testing.assert_frame_equal(rows, run.sort_index(), check_exact=True)


def test_spark_run_equals_duckdb_run_on_a_synthetic_log_with_numeric_ids(runs, tmp_path):
    """A generated CDNOW-like log (integer customer ids, Parquet, every candidate): the engines agree."""
    from benchmarks.generate import generate

    log = tmp_path / "log.parquet"
    generate(rows=40_000, seed=3, out=log)
    config = tmp_path / "synthetic.yaml"
    config.write_text(
        f"input: {{path: {log}, format: parquet, columns: {{customer_id: customer_id, date: date, amount: amount}},"
        " date_format: null}\n"
        "features: {period: {unit: week, resolution: daily}, holdout_periods: 39}\n"
        "tracking: {enabled: false}\n"
    )
    for engine in ("duckdb", "spark"):
        result = runner.invoke(app, ["run", "-q", "-c", str(config), "--set", f"output_dir={tmp_path / engine}",
                                     "--set", f"engine={engine}"])
        assert result.exit_code == 0, result.stderr
    assert_same_runs(run_dir(tmp_path / "spark"), run_dir(tmp_path / "duckdb"))


def test_a_retrain_on_spark_judges_the_champion_as_duckdb_does(runs, tmp_path):
    # The champion's model is refitted on the challenger's calibration window and scored on its
    # holdout on the cluster (pipeline.spark.run.refitted_holdout_metric_on_cluster): the same
    # figures and decisions as DuckDB's, with a worse challenger kept out.
    import numpy as np
    from mlflow import MlflowClient

    from tests.pipeline.test_retrain import ROLLING, WORSE

    metrics = {}
    for engine in ("duckdb", "spark"):
        uri = f"sqlite:///{tmp_path / engine}/mlflow.db"
        common = ["-c", SAMPLE, "--set", f"tracking.uri={uri}", "--set", f"output_dir={tmp_path / engine / 'out'}",
                  "--set", "models.purchase.candidates=[bgnbd]", *ROLLING, "--set", f"engine={engine}"]
        for extra in ([], WORSE):
            done = runner.invoke(app, ["retrain", "-q", *common, "--as-of", "1998-06-30", *extra])
            assert done.exit_code == 0, done.stderr
        assert "KEPT champion" in done.output, done.output
        client = MlflowClient(uri)
        run = client.get_run(client.get_model_version("clv", "2").run_id)
        assert run.data.tags["clv.retrain.promoted"] == "false"
        metrics[engine] = {key: run.data.metrics[key] for key in ("retrain.challenger_metric", "retrain.champion_metric")}
    for key, value in metrics["duckdb"].items():
        assert np.isclose(metrics["spark"][key], value, rtol=1e-9, atol=0.0), (key, metrics)
    assert metrics["spark"]["retrain.challenger_metric"] > metrics["spark"]["retrain.champion_metric"]
