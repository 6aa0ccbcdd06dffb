"""notebooks/compare_runs.ipynb runs top to bottom against a real SQLite store with two pipeline runs."""

from __future__ import annotations

import shutil
from pathlib import Path

import nbformat
import pytest
from mlflow import MlflowClient
from nbclient import NotebookClient
from typer.testing import CliRunner

from pipeline.cli import app

# End to end (runs, Spark, notebooks or servers): `pytest -m "not slow"` skips them.
pytestmark = pytest.mark.slow

REPO_ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO_ROOT / "notebooks" / "compare_runs.ipynb"
SAMPLE = str(REPO_ROOT / "configs" / "cdnow_sample.yaml")
KERNEL = "clv-notebook-test"

runner = CliRunner()


def clv(*args: str) -> None:
    result = runner.invoke(app, list(args))
    assert result.exit_code == 0, result.output + result.stderr


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """Two runs that differ only in the CLV horizon; a copy of the store is kept before promoting version 1."""
    root = tmp_path_factory.mktemp("notebook_store")
    uri = f"sqlite:///{root}/mlflow.db"
    common = ["-c", SAMPLE, "--set", f"tracking.uri={uri}"]
    run = ["run", "-q", *common, "--set", f"output_dir={root / 'outputs'}", "--set", "models.purchase.candidates=[bgnbd]"]
    clv(*run)
    clv(*run, "--set", "value.horizon=6")
    # Artifact locations are absolute, so the copy reads like the original.
    shutil.copy(root / "mlflow.db", root / "unpromoted.db")
    clv("promote", "1", *common)
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("clv")
    runs = client.search_runs([experiment.experiment_id], "tags.`clv.run_kind` = 'pipeline'",
                              order_by=["attributes.start_time ASC"])
    return root, [r.info.run_id for r in runs]


@pytest.fixture(scope="module")
def kernel_path(tmp_path_factory):
    """A kernelspec that starts this interpreter, whatever kernels the machine has installed."""
    from ipykernel.kernelspec import write_kernel_spec

    jupyter_path = tmp_path_factory.mktemp("jupyter")
    write_kernel_spec(str(jupyter_path / "kernels" / KERNEL))  # argv[0] is sys.executable
    return str(jupyter_path)


def execute(tracking_uri: str, cwd: Path, kernel_path: str):
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", tracking_uri)
        patch.setenv("JUPYTER_PATH", kernel_path)
        NotebookClient(
            notebook, timeout=120, kernel_name=KERNEL, resources={"metadata": {"path": str(cwd)}}
        ).execute()
    errors = [o for c in notebook.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors
    return notebook


def outputs(notebook, tag: str) -> list:
    (cell,) = [c for c in notebook.cells if tag in c.metadata.get("tags", [])]
    return cell.outputs


def text(cell_outputs: list, mime: str = "text/plain") -> str:
    return "\n".join(o.text if o.output_type == "stream" else o.data.get(mime, "") for o in cell_outputs)


def table_row(html: str, run_id: str) -> str:
    (row,) = [row for row in html.split("<tr>") if f"<th>{run_id[:8]}</th>" in row]
    return row


def test_committed_notebook_has_no_outputs_and_a_parameters_cell():
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(notebook)
    code = [c for c in notebook.cells if c.cell_type == "code"]
    assert "parameters" in code[0].metadata.get("tags", [])
    assert "MLFLOW_TRACKING_URI" in code[0].source
    assert all(c.outputs == [] and c.execution_count is None for c in code)


def test_runs_table_plots_and_champion(store, kernel_path):
    root, (first, second) = store
    notebook = execute(f"sqlite:///{root}/mlflow.db", root, kernel_path)

    runs = outputs(notebook, "runs-table")
    assert "2 pipeline runs" in text(runs)
    html = text(runs, "text/html")
    assert "★" in table_row(html, first) and "★" not in table_row(html, second)
    # Only the horizon was changed between the two runs.
    changed = text(outputs(notebook, "config-diff"))
    assert "1 of " in changed and "value.horizon" in changed
    diff_row = next(line for line in changed.splitlines() if line.startswith("value.horizon"))
    assert diff_row.split()[1:] == ["6.0", "12.0"]  # newest run first

    for tag, axes in (("plot-clv", 1), ("plot-holdout", 6), ("plot-diagnostics", 5), ("newest-diagnostics", 2)):
        figures = [o for o in outputs(notebook, tag) if "image/png" in o.get("data", {})]
        assert len(figures) == 1 and f"with {axes} Axes" in figures[0].data["text/plain"], tag

    shown = text(outputs(notebook, "newest-diagnostics"))
    assert f"plots/reliability.png of run {second[:8]}" in shown and "plots/gains.png" in shown
    candidates = text(outputs(notebook, "candidates"), "text/html")
    assert candidates.count("<th>bgnbd</th>") == 2 and candidates.count("<td>True</td>") == 2
    champion = text(outputs(notebook, "champion"))
    assert f"champion: clv version 1, run {first}" in champion
    assert "challenger v2" in champion


def test_without_a_champion(store, kernel_path):
    root, _ = store
    notebook = execute(f"sqlite:///{root}/unpromoted.db", root, kernel_path)
    assert "2 pipeline runs" in text(outputs(notebook, "runs-table"))
    assert "no champion yet" in text(outputs(notebook, "champion"))


def test_missing_store_is_a_clear_error_not_an_empty_store(tmp_path, kernel_path):
    with pytest.raises(Exception, match="no MLflow store at sqlite:///mlflow.db"):
        execute("sqlite:///mlflow.db", tmp_path, kernel_path)
    assert not (tmp_path / "mlflow.db").exists()
