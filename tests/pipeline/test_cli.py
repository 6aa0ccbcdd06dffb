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


def test_progress_on_a_terminal_keeps_each_finished_step_with_its_time(monkeypatch):
    import io

    from rich.console import Console

    from pipeline import cli

    screen = io.StringIO()
    monkeypatch.setattr(cli, "error_console", Console(file=screen, force_terminal=True, width=100))
    progress = cli._progress_printer()
    assert isinstance(progress, cli.StepProgress)
    progress("computing features")
    progress("fitting [BG/NBD]")  # markup-like text is shown as it is
    cli._close(progress)
    cli._close(progress)  # twice is harmless (the exit hook closes it again)
    lines = [line for line in screen.getvalue().splitlines() if "✓" in line]
    assert len(lines) == 2 and "computing features (" in lines[0] and "fitting [BG/NBD] (" in lines[1]
    assert cli._progress_printer(quiet=True) is None


def test_progress_off_a_terminal_is_one_plain_line_per_step(monkeypatch):
    import io

    from rich.console import Console

    from pipeline import cli

    log = io.StringIO()
    monkeypatch.setattr(cli, "error_console", Console(file=log, force_terminal=False, width=100))
    progress = cli._progress_printer()
    progress("computing features")
    assert log.getvalue() == "… computing features\n"


def test_progress_ended_by_an_error_does_not_tick_off_the_failed_step(monkeypatch):
    import io

    from rich.console import Console

    from pipeline import cli

    screen = io.StringIO()
    monkeypatch.setattr(cli, "error_console", Console(file=screen, force_terminal=True, width=100))
    progress = cli._progress_printer()
    progress("computing features")
    progress("fitting BG/NBD")
    progress.close(finished=False)  # what the exit hook does when a command failed
    ticked = [line for line in screen.getvalue().splitlines() if "✓" in line]
    assert len(ticked) == 1 and "computing features" in ticked[0]
