"""The CLI on the built-in data, as the README's first command runs it."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
from typer.testing import CliRunner

from pipeline.cli import app
from tests.conftest import CONFIGS

runner = CliRunner()


def test_help_lists_the_stages():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("run", "features", "backtest", "init"):
        assert command in result.output


def test_features_on_the_builtin_master_log(tmp_path):
    result = runner.invoke(
        app, ["features", "--config", str(CONFIGS / "default.yaml"), "--set", f"output_dir={tmp_path}"]
    )
    assert result.exit_code == 0, result.output + result.stderr
    run_dirs = [p for p in tmp_path.iterdir() if p.is_dir()]
    assert len(run_dirs) == 1
    assert (tmp_path / "LATEST").read_text().strip() == run_dirs[0].name
    table = pq.read_table(run_dirs[0] / "features.parquet")
    assert pq.read_table(run_dirs[0] / "calibration.parquet").num_rows == 23_570
    # CDNOW master: 69,659 rows, 23,570 customers, all first purchases in 1997's first quarter.
    assert table.num_rows == 23_570
    summary = json.loads((run_dirs[0] / "features_summary.json").read_text())
    assert summary["rows_read"] == 69_659
    assert summary["calibration_end"] == "1997-09-30"
    assert summary["output"] == str(run_dirs[0] / "features.parquet")
    assert "23,570" in result.output


def test_set_overrides_the_period(tmp_path):
    result = runner.invoke(
        app,
        ["features", "-c", str(CONFIGS / "cdnow_sample.yaml"), "--set", f"output_dir={tmp_path}", "--set", "period=W"],
    )
    assert result.exit_code == 0, result.stderr
    summary = json.loads(next(tmp_path.glob("*/features_summary.json")).read_text())
    assert (summary["period_unit"], summary["period_resolution"]) == ("week", "calendar")


def test_the_console_script_flushes_its_output_and_keeps_exit_codes(tmp_path):
    # `clv` leaves through pipeline.cli.exit_now (no interpreter teardown): piped output
    # must still arrive whole, and a user error must still exit 2 with its one line.
    import subprocess
    import sys

    command = [sys.executable, "-c", "from pipeline.cli import main; main()"]
    config = ["-c", str(CONFIGS / "cdnow_sample.yaml"), "--set", f"output_dir={tmp_path}"]
    done = subprocess.run([*command, "features", *config], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "customers" in done.stdout and done.stdout.rstrip().endswith("┘")  # the table, to its last line
    failed = subprocess.run(
        [*command, "features", *config, "--set", "input.path=does/not/exist.csv"], capture_output=True, text=True,
        timeout=120,
    )
    assert failed.returncode == 2
    assert failed.stderr.startswith("error:") and "does/not/exist.csv" in failed.stderr
