"""Tracking against real MLflow: a SQLite store in a temp dir and a live server on 127.0.0.1."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import requests
from mlflow import MlflowClient
from typer.testing import CliRunner

from pipeline.cli import app
from tests.conftest import CONFIGS

# End to end (runs, Spark, notebooks or servers): `pytest -m "not slow"` skips them.
pytestmark = pytest.mark.slow

runner = CliRunner()
SAMPLE = str(CONFIGS / "cdnow_sample.yaml")


def clv(*args: str):
    return runner.invoke(app, list(args))


def run_args(output_dir: Path, uri: str, *extra: str) -> list[str]:
    return ["run", "-q", "-c", SAMPLE, "--set", f"output_dir={output_dir}", "--set", f"tracking.uri={uri}", *extra]


@pytest.fixture(scope="module")
def sqlite_store(tmp_path_factory):
    """Two pipeline runs with different configs in a fresh SQLite store."""
    root = tmp_path_factory.mktemp("tracking")
    uri = f"sqlite:///{root}/mlflow.db"
    first = clv(*run_args(root / "outputs", uri, "--set", "models.purchase.candidates=[bgnbd, paretonbd]"))
    assert first.exit_code == 0, first.output + first.stderr
    second = clv(*run_args(root / "outputs", uri, "--set", "models.purchase.candidates=[bgnbd]",
                           "--set", "value.horizon=6"))
    assert second.exit_code == 0, second.output + second.stderr
    return root, uri


def pipeline_runs(client: MlflowClient):
    experiment = client.get_experiment_by_name("clv")
    return client.search_runs(
        [experiment.experiment_id], "tags.`clv.run_kind` = 'pipeline'", order_by=["attributes.start_time ASC"]
    )


def test_run_logs_config_data_models_metrics_and_artifacts(sqlite_store):
    root, uri = sqlite_store
    client = MlflowClient(uri)
    runs = pipeline_runs(client)
    assert len(runs) == 2
    # The MLflow UI opens the experiment on its training runs, not the GenAI overview.
    assert client.get_experiment_by_name("clv").tags["mlflow.experimentKind"] == "custom_model_development"
    run = runs[0]
    assert run.info.status == "FINISHED"
    params, metrics, tags = run.data.params, run.data.metrics, run.data.tags
    assert params["features.calibration_end"] == "1997-09-30"
    assert params["models.purchase.candidates"] == "[bgnbd, paretonbd]"
    assert params["data.rows"] == "6919"
    assert tags["data.sha256"] == __import__("hashlib").sha256(
        Path(tags["data.path"]).read_bytes()
    ).hexdigest()
    for key in ["holdout.purchases_rmse", "baseline.purchases_rmse", "holdout.any_purchase_brier",
                "baseline.any_purchase_brier", "holdout.revenue_gini", "holdout.calibration_chi_square",
                "holdout.holdout_chi_square", "holdout.purchases_spearman_repeat_customers", "clv.predicted_clv_mean",
                "clv.historical_clv_company", "tier.high.mean_predicted_clv", "purchase.log_likelihood",
                "spend.p", "spend.se.p", "spend.frequency_monetary_correlation"]:
        assert key in metrics, key
    assert metrics["data.customers"] == 2357
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"customers.parquet", "summary.json", "model_card.md", "plots", "config", "models.json",
            "data_quality.json"} <= artifacts
    assert metrics["data_quality.same_day_rows_merged"] > 0
    plots = {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
    assert {f"plots/{name}.png" for name in ("cumulative_tracking", "purchase_histogram", "reliability", "gains",
                                              "revenue_deciles")} <= plots
    # The model card is the run's description in the MLflow UI.
    card = Path(client.download_artifacts(run.info.run_id, "model_card.md", str(root))).read_text()
    assert tags["mlflow.note.content"] == card and card.startswith("# Model card: ")
    assert run.inputs.dataset_inputs and run.inputs.dataset_inputs[0].dataset.digest == tags["data.sha256"][:16]
    # Candidate purchase models are nested runs; the parent records the winner.
    children = client.search_runs(
        [run.info.experiment_id], f"tags.`mlflow.parentRunId` = '{run.info.run_id}'"
    )
    assert sorted(c.data.params["purchase.model"] for c in children) == ["bgnbd", "paretonbd"]
    winner = [c for c in children if c.data.tags["clv.selected"] == "true"]
    assert len(winner) == 1 and winner[0].data.params["purchase.model"] == tags["clv.selected_purchase_model"]
    # The run's metric equals the summary it wrote.
    summary = json.loads(Path(client.download_artifacts(run.info.run_id, "summary.json", str(root))).read_text())
    assert metrics["clv.predicted_clv_total"] == pytest.approx(summary["value"]["predicted_clv_total"])


def test_a_quiet_tracked_run_prints_nothing_on_stderr(tmp_path):
    # In a fresh process, as a scheduler runs it: MLflow warns past any warnings filter when a
    # logged model's predict has no type hints, and "once" per process, so only a new process shows it.
    command = [sys.executable, "-c", "from pipeline.cli import main; main()"]
    done = subprocess.run(
        [*command, *run_args(tmp_path / "outputs", f"sqlite:///{tmp_path}/mlflow.db",
                             "--set", "models.purchase.candidates=[bgnbd]")],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    assert "registered clv version 1" in done.stdout


def test_each_run_registers_a_challenger_version(sqlite_store):
    _, uri = sqlite_store
    client = MlflowClient(uri)
    versions = sorted(client.search_model_versions("name = 'clv'"), key=lambda v: int(v.version))
    assert [str(v.version) for v in versions] == ["1", "2"]
    assert str(client.get_model_version_by_alias("clv", "challenger").version) == "2"
    assert [v.run_id for v in versions] == [r.info.run_id for r in pipeline_runs(client)]
    # Each version passed its release checks (converged fits, better than the historical baseline).
    for version in versions:
        assert version.tags["checks_passed"] == "true"
        assert version.tags["check.beats_historical_baseline"] == "true"


def test_promote_and_compare(sqlite_store):
    root, uri = sqlite_store
    common = ["-c", SAMPLE, "--set", f"tracking.uri={uri}"]
    result = clv("promote", "1", *common)
    assert result.exit_code == 0, result.stderr
    client = MlflowClient(uri)
    first_run = pipeline_runs(client)[0].info.run_id
    assert client.get_model_version_by_alias("clv", "champion").run_id == first_run
    compared = clv("compare", *common)
    assert compared.exit_code == 0
    champion_line = next(line for line in compared.output.splitlines() if "★" in line)
    assert first_run[:8] in champion_line
    assert clv("promote", "99", *common).exit_code == 2
    # The diagnostics sit beside the errors, as each run logged them.
    from pipeline.config import load_config
    from pipeline.tracking.registry import compare_runs

    frame = compare_runs(load_config(Path(SAMPLE), [f"tracking.uri={uri}"])).set_index("run_id")
    logged = client.get_run(first_run).data.metrics
    for column, key in (("holdout_any_purchase_brier", "holdout.any_purchase_brier"),
                        ("baseline_any_purchase_brier", "baseline.any_purchase_brier"),
                        ("holdout_revenue_gini", "holdout.revenue_gini"),
                        ("calibration_chi_square_p_value", "holdout.calibration_chi_square_p_value")):
        assert frame.loc[first_run, column] == logged[key], column


def test_champion_loads_in_a_fresh_process_and_reproduces_the_run(sqlite_store, tmp_path):
    root, uri = sqlite_store
    assert clv("promote", "1", "-c", SAMPLE, "--set", f"tracking.uri={uri}").exit_code == 0
    client = MlflowClient(uri)
    run_id = client.get_model_version_by_alias("clv", "champion").run_id
    run_dir = Path(json.loads(Path(client.download_artifacts(run_id, "summary.json", str(tmp_path))).read_text())
                   ["features"]["output"]).parent
    script = f"""
import mlflow, pandas as pd
mlflow.set_tracking_uri({uri!r})
model = mlflow.pyfunc.load_model("models:/clv@champion")
features = pd.read_parquet({str(run_dir / 'features.parquet')!r})
model.predict(features).to_parquet({str(tmp_path / 'scored.parquet')!r})
"""
    subprocess.run([sys.executable, "-c", script], check=True, cwd=tmp_path, timeout=300)
    scored = pd.read_parquet(tmp_path / "scored.parquet").set_index("customer_id")
    expected = pd.read_parquet(run_dir / "customers.parquet").set_index("customer_id")[scored.columns]
    pd.testing.assert_frame_equal(scored, expected)


def test_failed_stage_marks_the_run_failed_and_registers_nothing(sqlite_store):
    root, uri = sqlite_store
    client = MlflowClient(uri)
    before = len(client.search_model_versions("name = 'clv'"))
    result = clv(*run_args(root / "failed", uri, "--set", "models.spend.min_repeat_customers=5000",
                           "--set", "models.purchase.candidates=[bgnbd]"))
    assert result.exit_code == 2
    experiment = client.get_experiment_by_name("clv")
    failed = client.search_runs([experiment.experiment_id], "attributes.status = 'FAILED'")
    assert len(failed) == 1
    assert "cannot fit Gamma-Gamma" in failed[0].data.tags["clv.error"]
    assert len(client.search_model_versions("name = 'clv'")) == before
    assert not (root / "failed").exists() or not any((root / "failed").iterdir())


def test_a_run_failing_after_its_fit_was_logged_leaves_no_finished_candidate(tmp_path):
    """The fit (with its candidate runs) is logged as soon as it exists; a later failure ends them too."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    # No customer is inactive for 100,000 days: the historical lifespan cannot be estimated (value stage).
    result = clv(*run_args(tmp_path / "outputs", uri, "--set", "value.churn_inactivity_days=100000",
                           "--set", "models.purchase.candidates=[bgnbd, paretonbd]"))
    assert result.exit_code == 2, result.output
    assert "lower value.churn_inactivity_days" in result.stderr
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("clv").experiment_id])
    assert len(runs) == 3 and {run.info.status for run in runs} == {"FAILED"}
    candidates = [run for run in runs if run.data.tags.get("clv.run_kind") == "candidate"]
    assert all(run.data.tags["clv.error"].startswith("the run it belongs to failed: value:") for run in candidates)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_unreachable_server_fails_before_any_work(tmp_path):
    uri = f"http://127.0.0.1:{free_port()}"
    result = clv(*run_args(tmp_path / "outputs", uri))
    assert result.exit_code == 3
    assert result.stderr.strip().startswith(f"error: tracking server {uri} is unreachable")
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "outputs").exists()


def test_optional_tracking_warns_and_writes_locally(tmp_path):
    uri = f"http://127.0.0.1:{free_port()}"
    result = clv(*run_args(tmp_path / "outputs", uri, "--set", "tracking.required=false",
                           "--set", "models.purchase.candidates=[bgnbd]"))
    assert result.exit_code == 0, result.stderr
    assert list((tmp_path / "outputs").glob("*/customers.parquet"))


@pytest.fixture(scope="module")
def tracking_server(tmp_path_factory):
    """A real `mlflow server` on 127.0.0.1 with a SQLite backend and proxied artifacts."""
    root = tmp_path_factory.mktemp("server")
    port = free_port()
    mlflow_cli = Path(sys.executable).with_name("mlflow")
    process = subprocess.Popen(
        [str(mlflow_cli), "server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", f"sqlite:///{root}/server.db", "--artifacts-destination", str(root / "artifacts"),
         "--workers", "1"],
        stdout=subprocess.DEVNULL, stderr=open(root / "server.log", "wb"), cwd=root,
    )
    uri = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            if requests.get(f"{uri}/health", timeout=2).ok:
                break
        except requests.RequestException:
            time.sleep(0.5)
        if process.poll() is not None:
            pytest.fail("mlflow server exited: " + (root / "server.log").read_text()[-2000:])
    else:
        process.terminate()
        pytest.fail("mlflow server did not start in 120 s: " + (root / "server.log").read_text()[-2000:])
    yield uri, root
    process.terminate()
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()


def test_run_through_a_live_tracking_server(tracking_server, tmp_path):
    uri, _ = tracking_server
    result = clv(*run_args(tmp_path / "outputs", uri, "--set", "models.purchase.candidates=[bgnbd]"))
    assert result.exit_code == 0, result.stderr
    assert clv("promote", "1", "-c", SAMPLE, "--set", f"tracking.uri={uri}").exit_code == 0
    client = MlflowClient(uri)
    (run,) = pipeline_runs(client)
    assert run.data.params["purchase.model"] == "bgnbd"
    assert "plots" in {a.path for a in client.list_artifacts(run.info.run_id)}
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri}
    script = """
import mlflow, pandas as pd
model = mlflow.pyfunc.load_model("models:/clv@champion")
features = pd.read_parquet(__import__('sys').argv[1])
print(model.predict(features)["predicted_clv"].sum())
"""
    features = next((tmp_path / "outputs").glob("*/features.parquet"))
    out = subprocess.run([sys.executable, "-c", script, str(features)], env=env, capture_output=True, text=True,
                         check=True, timeout=300, cwd=tmp_path)
    expected = pd.read_parquet(features.parent / "customers.parquet")["predicted_clv"].sum()
    assert float(out.stdout.strip().splitlines()[-1]) == pytest.approx(expected, rel=1e-12)
