"""A newcomer's own log with no config: columns, date formats and a holdout recognised from the
file (pipeline/input_detection.py), and `clv run --input` / `clv init` from an empty folder."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.config import load_config, packaged_config
from pipeline.errors import InputDataError
from pipeline.input_detection import detect_input
from tests.conftest import CONFIGS

runner = CliRunner()


@pytest.fixture(scope="module")
def sample_log() -> pd.DataFrame:
    """The CDNOW sample as customer, date and amount (6,919 rows, 1997-01-01 to 1998-06-30)."""
    from pipeline.config import resolve_input_path

    raw = pd.read_csv(resolve_input_path("builtin:CDNOW_sample.txt"), sep=r"\s+", header=None,
                      names=["customer", "order", "date", "items", "amount"], dtype={"date": str})
    return pd.DataFrame({"customer": raw["customer"], "date": pd.to_datetime(raw["date"], format="%Y%m%d"),
                         "amount": raw["amount"]})


def write_csv(log: pd.DataFrame, path, customer: str, date: str, amount: str, date_format: str) -> None:
    pd.DataFrame({customer: log["customer"], date: log["date"].dt.strftime(date_format),
                  amount: log["amount"]}).to_csv(path, index=False)


def test_spanish_headers_and_iso_dates(sample_log, tmp_path):
    write_csv(sample_log, tmp_path / "ventas.csv", "cliente", "fecha", "importe", "%Y-%m-%d")
    detected = detect_input(tmp_path / "ventas.csv")
    assert detected.input["columns"] | {} == {"customer_id": "cliente", "date": "fecha", "amount": "importe",
                                              "margin": None, "cost": None, "channel": None,
                                              "acquisition_cost": None}
    assert (detected.input["format"], detected.input["date_format"]) == ("csv", "%Y-%m-%d")
    # 545 days = 77.9 weeks: a third of it, in whole weeks.
    assert detected.features == {"observation_end": None, "calibration_end": None, "holdout_periods": 25.0}
    assert any("a third of the 78-week history" in note for note in detected.notes)


def test_other_names_cases_and_day_first_dates(sample_log, tmp_path):
    write_csv(sample_log, tmp_path / "orders.csv", "Customer ID", "Invoice Date", "Revenue", "%d/%m/%Y")
    detected = detect_input(tmp_path / "orders.csv")
    assert [detected.input["columns"][role] for role in ("customer_id", "date", "amount")] == [
        "Customer ID", "Invoice Date", "Revenue"]
    # Days above 12 decide the order: day first.
    assert detected.input["date_format"] == "%d/%m/%Y"


def test_a_folder_of_parquet_files_with_typed_dates(sample_log, tmp_path):
    folder = tmp_path / "lake"
    folder.mkdir()
    frame = sample_log.rename(columns={"customer": "user_id", "date": "order_date", "amount": "total"})
    frame.iloc[:3000].to_parquet(folder / "part-0.parquet")
    frame.iloc[3000:].to_parquet(folder / "part-1.parquet")
    detected = detect_input(folder)
    assert detected.input["format"] == "parquet" and detected.input["date_format"] is None
    assert detected.input["columns"]["customer_id"] == "user_id"


@pytest.mark.parametrize("case, message", [
    ("ambiguous", "every date reads both as %d/%m/%Y and as %m/%d/%Y .* --date-format '%d/%m/%Y' or --date-format '%m/%d/%Y'"),
    ("two ids", "customer, client_id could each be the customer id column: pass --customer-col"),
    ("no amount", "no amount column recognised among customer_id, fecha, cantidad: pass --amount-col"),
    ("no date format", "column fecha: no common date format reads every value .*pass --date-format"),
])
def test_what_the_file_cannot_decide_is_one_error_naming_the_flag(sample_log, tmp_path, case, message):
    log = sample_log
    path = tmp_path / "log.csv"
    if case == "ambiguous":
        write_csv(log[log["date"].dt.day <= 12], path, "customer_id", "date", "amount", "%d/%m/%Y")
    elif case == "two ids":
        pd.DataFrame({"customer": log["customer"], "client_id": log["customer"], "date": log["date"].dt.date,
                      "amount": log["amount"]}).to_csv(path, index=False)
    elif case == "no amount":
        write_csv(log, path, "customer_id", "fecha", "cantidad", "%Y-%m-%d")
    else:
        write_csv(log, path, "customer_id", "fecha", "amount", "%Y-%m-%d week %W")
    with pytest.raises(InputDataError, match=message):
        detect_input(path)


def test_flags_settle_what_names_cannot(sample_log, tmp_path):
    path = tmp_path / "log.csv"
    write_csv(sample_log[sample_log["date"].dt.day <= 12], path, "who", "when", "how_much", "%m/%d/%Y")
    detected = detect_input(path, {"customer_id": "who", "date": "when", "amount": "how_much"}, "%m/%d/%Y")
    assert detected.input["columns"]["date"] == "when" and detected.input["date_format"] == "%m/%d/%Y"
    with pytest.raises(InputDataError, match="no column 'nope' .--amount-col.; the file's columns: who, when, how_much"):
        detect_input(path, {"amount": "nope"})


def test_the_packaged_default_config_is_configs_default_yaml():
    assert packaged_config().read_text() == (CONFIGS / "default.yaml").read_text()


def test_version():
    from importlib.metadata import version

    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.strip() == f"clv {version('clv-pipeline')}"


@pytest.mark.slow
def test_own_data_in_an_empty_folder(sample_log, tmp_path, monkeypatch):
    """The issue's "done when": `clv run --input ventas.csv`, `clv init` then `clv run -c clv.yaml`
    (the same numbers), and `clv run` with no arguments (the built-in demo), all from an empty folder."""
    monkeypatch.chdir(tmp_path)
    write_csv(sample_log, tmp_path / "ventas.csv", "cliente", "fecha", "importe", "%Y-%m-%d")
    quick = ["--set", "models.purchase.candidates=[bgnbd]", "--set", "value.intervals.draws=0"]
    first = runner.invoke(app, ["run", "-q", "--input", "ventas.csv", *quick])
    assert first.exit_code == 0, first.output + first.stderr
    assert "columns: customer_id = cliente, date = fecha, amount = importe" in first.output
    written = runner.invoke(app, ["init", "ventas.csv"])
    assert written.exit_code == 0, written.output + written.stderr
    assert runner.invoke(app, ["init", "ventas.csv"]).exit_code == 2  # never overwritten unasked
    config = load_config(tmp_path / "clv.yaml", quick[1::2])
    assert config.input.columns.amount == "importe" and config.features.holdout_periods == 25
    second = runner.invoke(app, ["run", "-q", "-c", "clv.yaml", *quick])
    assert second.exit_code == 0, second.output + second.stderr
    first_run, second_run = sorted((tmp_path / "outputs").glob("2*/summary.json"))
    totals = [json.loads(path.read_text())["value"]["predicted_clv_total"] for path in (first_run, second_run)]
    assert totals[0] == totals[1] > 0
    demo = runner.invoke(app, ["run", "-q", *quick])  # no configs/ here: the packaged built-in run
    assert demo.exit_code == 0, demo.output + demo.stderr
    newest = max((tmp_path / "outputs").glob("2*/summary.json"), key=lambda path: path.parent.name)
    assert json.loads(newest.read_text())["features"]["customers"] == 23_570


def test_datetimes_and_a_late_row_that_decides_the_day_order(sample_log, tmp_path, monkeypatch):
    from pipeline import input_detection

    write_csv(sample_log, tmp_path / "stamps.csv", "customer_id", "order_date", "amount", "%Y-%m-%dT%H:%M:%SZ")
    assert detect_input(tmp_path / "stamps.csv").input["date_format"] == "%Y-%m-%dT%H:%M:%SZ"
    # The first rows cannot tell day from month; a later one can: every format is tried on the
    # first rows only, the survivors on the whole column.
    monkeypatch.setattr(input_detection, "SNIFF_ROWS", 10)
    log = pd.concat([sample_log[sample_log["date"].dt.day <= 12].head(10), sample_log[sample_log["date"].dt.day > 12]])
    write_csv(log, tmp_path / "late.csv", "customer_id", "date", "amount", "%m/%d/%Y")
    assert detect_input(tmp_path / "late.csv").input["date_format"] == "%m/%d/%Y"
