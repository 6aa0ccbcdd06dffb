"""`clv backtest --origins K` on the CDNOW sample: the origins, the report, the MLflow runs;
one origin is `clv run`'s backtest; impossible origins are one-line errors."""

from __future__ import annotations

import datetime as dt
import json
import math

import pandas as pd
import pytest
from mlflow import MlflowClient
from typer.testing import CliRunner

from pipeline.catalog import LATEST_POINTER, RunCatalog
from pipeline.cli import app
from pipeline.runner import backtest_origins, run_pipeline
from tests.conftest import CONFIGS, sample_config

runner = CliRunner()
SAMPLE = str(CONFIGS / "cdnow_sample.yaml")
# Two quick candidates; a 13-week holdout leaves room for three origins in the sample's 18 months.
CANDIDATES = "models.purchase.candidates=[bgnbd, mbgnbd]"
THIRTEEN_WEEKS = ["features.calibration_end=null", "features.holdout_periods=13"]


def sets(*overrides: str) -> list[str]:
    return [part for text in overrides for part in ("--set", text)]


@pytest.fixture(scope="module")
def three_origins(tmp_path_factory):
    """`clv backtest --origins 3` into its own outputs and MLflow store: (result, outputs, uri)."""
    tmp = tmp_path_factory.mktemp("origins")
    uri = f"sqlite:///{tmp}/mlflow.db"
    result = runner.invoke(app, ["backtest", "-q", "-c", SAMPLE, "--origins", "3",
                                 *sets(f"tracking.uri={uri}", f"output_dir={tmp / 'outputs'}", CANDIDATES,
                                       *THIRTEEN_WEEKS)])
    return result, tmp / "outputs", uri


def test_three_origins_one_holdout_apart(three_origins):
    result, outputs, _ = three_origins
    assert result.exit_code == 0, result.output
    (run_dir,) = [path for path in outputs.iterdir() if path.is_dir()]
    assert not (outputs / LATEST_POINTER).exists()  # no stage continues from a backtest's run
    summary = json.loads((run_dir / "backtest_origins.json").read_text())
    ends = [(dt.date.fromisoformat(o["calibration_end"]), dt.date.fromisoformat(o["observation_end"]))
            for o in summary["origins"]]
    # 13 weeks = 91 days back from the sample's last date, 1998-06-30, three times.
    assert ends == [(dt.date(1998, 3, 31), dt.date(1998, 6, 30)), (dt.date(1997, 12, 30), dt.date(1998, 3, 31)),
                    (dt.date(1997, 9, 30), dt.date(1997, 12, 30))]
    assert summary["wins"].keys() == {"bgnbd", "mbgnbd"} and sum(summary["wins"].values()) == 3
    assert [o["selected"] for o in summary["origins"]].count("bgnbd") == summary["wins"]["bgnbd"]
    for model in ("bgnbd", "mbgnbd", "historical_baseline"):
        for metric, figures in summary["stability"][model].items():
            values = [o["metrics"][model][metric] for o in summary["origins"]]
            finite = [v for v in values if v is not None]
            assert figures["origins"] == len(finite), (model, metric)
            if len(finite) == 3:  # an independent mean and sample sd of the three origins' values
                mean = sum(finite) / 3
                assert figures["mean"] == pytest.approx(mean, rel=1e-12, abs=1e-12)
                assert figures["sd"] == pytest.approx(math.sqrt(sum((v - mean) ** 2 for v in finite) / 2),
                                                      rel=1e-9, abs=1e-12)
        assert summary["stability"][model]["purchases_rmse"]["sd"] > 0
    table = pd.read_csv(run_dir / "backtest_origins.csv")
    assert sorted(table["origin"].unique()) == [1, 2, 3]
    assert len(table) == sum(len(row) for o in summary["origins"] for row in o["metrics"].values())
    assert (run_dir / "plots" / "selection_metric_by_origin.png").read_bytes()[:4] == b"\x89PNG"
    assert "Stability over 3 origins" in result.output and "origin" in result.output


def test_one_parent_run_with_a_nested_run_per_origin(three_origins):
    result, outputs, uri = three_origins
    assert result.exit_code == 0, result.output
    summary = json.loads(next(outputs.glob("*/backtest_origins.json")).read_text())
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("clv")
    runs = client.search_runs([experiment.experiment_id])
    (parent,) = [r for r in runs if r.data.tags.get("clv.run_kind") == "backtest"]
    assert parent.info.status == "FINISHED"
    assert parent.data.params["origins"] == "3" and parent.data.params["features.origins"] == "3"
    metrics = parent.data.metrics
    assert sum(metrics[f"wins.{model}"] for model in ("bgnbd", "mbgnbd")) == 3
    assert metrics["stability.bgnbd.purchases_rmse_mean"] == summary["stability"]["bgnbd"]["purchases_rmse"]["mean"]
    assert metrics["stability.mbgnbd.purchases_rmse_sd"] == summary["stability"]["mbgnbd"]["purchases_rmse"]["sd"]
    artifacts = {item.path for item in client.list_artifacts(parent.info.run_id)}
    assert {"backtest_origins.json", "backtest_origins.csv", "plots"} <= artifacts
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(children) == 3 and {r.data.tags["clv.run_kind"] for r in children} == {"origin"}
    for child in children:
        origin = summary["origins"][int(child.data.tags["clv.origin"]) - 1]
        assert child.data.tags["clv.calibration_end"] == origin["calibration_end"]
        assert child.data.tags["clv.observation_end"] == origin["observation_end"]
        assert child.data.tags["clv.selected_purchase_model"] == origin["selected"]
        assert child.data.metrics["bgnbd.purchases_rmse"] == origin["metrics"]["bgnbd"]["purchases_rmse"]
        assert child.info.status == "FINISHED"


def test_one_origin_is_the_backtest_of_clv_run(tmp_path):
    # The sample config's own split (1997-09-30): clv run's backtest against clv backtest's one origin.
    config = sample_config(CANDIDATES, "value.intervals.draws=0", "features.origins=1")
    with RunCatalog.create(tmp_path) as catalog:
        run = run_pipeline(config, catalog)
    (origin,) = backtest_origins(config).origins
    assert (origin.origin.calibration_end, origin.origin.observation_end) == (dt.date(1997, 9, 30), dt.date(1998, 6, 30))
    assert origin.selected == run.fit.selected
    assert origin.metrics.keys() == run.fit.backtest.keys()
    for model, row in run.fit.backtest.items():
        assert origin.metrics[model].keys() == row.keys()
        for metric, value in row.items():
            if isinstance(value, float) and math.isnan(value):
                assert math.isnan(origin.metrics[model][metric]), (model, metric)
            else:
                assert origin.metrics[model][metric] == pytest.approx(value, rel=1e-12, abs=1e-12), (model, metric)


@pytest.mark.parametrize("arguments, message", [
    (["--origins", "0"], "features.origins: Input should be greater than or equal to 1"),
    # Not even a week's holdout leaves room for 80 origins in the sample's 545 days.
    (["--origins", "80"], "features.origins 80: the data's 545 days from 1997-01-01"),
])
def test_impossible_origins_are_one_line_and_write_nothing(tmp_path, arguments, message):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    result = runner.invoke(app, ["backtest", "-q", "-c", SAMPLE, *arguments,
                                 *sets(f"tracking.uri={uri}", f"output_dir={tmp_path / 'outputs'}")])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert not (tmp_path / "outputs").exists()
    experiment = MlflowClient(uri).get_experiment_by_name("clv")
    assert experiment is None or not MlflowClient(uri).search_runs([experiment.experiment_id])


@pytest.mark.slow
def test_spark_origins_equal_duckdb_origins():
    pytest.importorskip("pyspark")
    overrides = (CANDIDATES, *THIRTEEN_WEEKS, "features.origins=2")
    duckdb = backtest_origins(sample_config(*overrides))
    spark_config = sample_config(*overrides, "engine=spark", "spark.master=local[2]",
                                 "spark.conf={spark.ui.enabled: 'false', spark.sql.shuffle.partitions: '2'}")
    try:
        spark = backtest_origins(spark_config)
    finally:
        from pyspark.sql import SparkSession

        session = SparkSession.getActiveSession()
        if session is not None:
            session.stop()
    assert [r.origin for r in spark.origins] == [r.origin for r in duckdb.origins]
    for ours, reference in zip(spark.origins, duckdb.origins):
        assert ours.selected == reference.selected and ours.metrics.keys() == reference.metrics.keys()
        for model, row in reference.metrics.items():
            for metric, value in row.items():
                # The cluster sums batches in another order: equal to rounding.
                assert ours.metrics[model][metric] == pytest.approx(value, rel=1e-9, nan_ok=True), (model, metric)
