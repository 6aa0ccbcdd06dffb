"""Every bad input gives one line naming file, column and row; exit 2; nothing written."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from pipeline.cli import app
from tests.conftest import DATA

BAD = DATA / "bad"
runner = CliRunner()


def write_config(tmp_path: Path, path: Path, **sections) -> Path:
    config = {
        "input": {"path": str(path), "columns": {"customer_id": "customer_id", "date": "date", "amount": "amount"}},
        "features": {"calibration_end": None},
        "output_dir": str(tmp_path / "outputs"),
    }
    for key, value in sections.items():
        config.setdefault(key, {}).update(value)
    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump(config))
    return config_path


CASES = [
    ("missing_column.csv", {}, r"missing_column\.csv: column 'date' \(input\.columns\.date\) not found; the file has: customer_id, order_date, amount"),
    ("bad_date.csv", {}, r"bad_date\.csv: column 'date', line 3: '2024-13-01' is not a date \(format %Y-%m-%d\)"),
    ("non_numeric_amount.csv", {}, r"non_numeric_amount\.csv: column 'amount', line 3: 'ten' is not a finite number"),
    ("nan_amount.csv", {}, r"nan_amount\.csv: column 'amount', line 3: 'NaN' is not a finite number"),
    ("empty_amount.csv", {}, r"empty_amount\.csv: column 'amount', line 3: amount is empty"),
    ("empty_customer_id.csv", {}, r"empty_customer_id\.csv: column 'customer_id', line 3: customer id is empty"),
    ("negative_amount.csv", {}, r"negative_amount\.csv: column 'amount', line 3: negative amount -4\.00"),
    (
        "after_observation_end.csv",
        {"features": {"observation_end": "2024-02-01"}, "validation": {"rows_after_observation_end": "fail"}},
        r"after_observation_end\.csv: column 'date', line 3: '2024-03-03' is after observation_end 2024-02-01",
    ),
    ("huge_amount.csv", {}, r"huge_amount\.csv: column 'amount', line 3: 2000000000000 is too large"),
    (
        "huge_margin.csv", {"input": {"columns": {"margin": "margin"}}},
        r"huge_margin\.csv: column 'margin', line 3: margin is too large \(margins must be below 1,000,000,000,000\)$",
    ),
    # The first rule in the table's order wins, not the first bad line: a margin that is not a
    # number (line 4) is reported before an amount too large (line 2) or negative (line 3).
    (
        "several_problems.csv", {"input": {"columns": {"margin": "margin"}}},
        r"several_problems\.csv: column 'margin', line 4: margin/cost is empty or not a finite number$",
    ),
    ("empty.csv", {}, r"empty\.csv: the file is empty"),
    ("header_only.csv", {}, r"header_only\.csv: the log has no rows"),
    (
        "missing_field.txt",
        {"input": {"format": "whitespace", "header": False, "names": ["customer_id", "date", "amount"], "date_format": "%Y%m%d"}},
        r"missing_field\.txt: line 2: has 2 fields, expected 3",
    ),
    # DuckDB's sniffer reads a stray quote as data; the row still fails with its line number.
    ("unterminated_quote.csv", {}, r"unterminated_quote\.csv: column 'date', line 3: '\"2024-01-03' is not a date"),
    ("does_not_exist.csv", {}, r"does_not_exist\.csv: input file not found"),
    (
        "../good.csv",
        {"features": {"calibration_end": "2030-01-01"}},
        r"calibration_end 2030-01-01 must be before observation_end|calibration_end 2030-01-01 is outside the data",
    ),
    (
        "../good.csv",
        {"features": {"observation_end": "2023-01-01"}},
        r"observation end \(as-of date\) 2023-01-01 is before the first transaction \(2024-01-02\)",
    ),
    # One typo row in the future would move the observation end (and every T) by years.
    (
        "future_date.csv", {},
        r"future_date\.csv: column 'date', line 4: '2031-01-05' is in the future \(after \d{4}-\d\d-\d\d, today's "
        r"date in the earliest time zone\); fix the row or set validation\.future_dates: drop",
    ),
    (
        "margin_above_amount.csv",
        {"input": {"columns": {"margin": "margin"}}, "validation": {"margin_above_amount": "fail"}},
        r"margin_above_amount\.csv: column 'margin', line 3: margin is above the amount .*\(2 such rows\)",
    ),
    (
        "negative_cost.csv",
        {"input": {"columns": {"cost": "cost"}}, "validation": {"margin_above_amount": "fail"}},
        r"negative_cost\.csv: column 'cost', line 3: cost is negative",
    ),
    # An export that stopped: the features would make every customer look dead.
    (
        "../good.csv",
        {"features": {"observation_end": "2024-03-01"}},
        r"good\.csv: stale data: the last transaction is on 2024-01-03, 58 days before the as-of date 2024-03-01 "
        r"\(validation\.max_staleness_days: 30\)",
    ),
    (
        "future_date.csv",
        {"features": {"holdout_periods": 3}, "validation": {"future_dates": "drop", "max_holdout_share": 0.25}},
        r"features\.holdout_periods 3 makes a holdout of 21 days, 65\.6% of the 32 days observed \(2024-01-02 to "
        r"2024-02-03\); at most 25\.0% is allowed",
    ),
]


@pytest.mark.parametrize("file_name, sections, message", CASES, ids=[c[0] + str(i) for i, c in enumerate(CASES)])
def test_bad_input_is_one_clear_line(tmp_path, file_name, sections, message):
    config = write_config(tmp_path, BAD / file_name, **sections)
    result = runner.invoke(app, ["features", "--config", str(config)])
    assert result.exit_code == 2, result.output
    output = result.stderr.strip()
    assert "Traceback" not in result.output + result.stderr
    assert len(output.splitlines()) == 1, output
    assert output.startswith("error: ")
    assert re.search(message, output), output
    outputs = tmp_path / "outputs"
    assert not outputs.exists() or not any(outputs.iterdir()), list(outputs.iterdir())


@pytest.mark.parametrize("file_name, validation, counted, expected", [
    ("negative_amount.csv", {"negative_amounts": "drop"}, "negative_amount_rows_dropped", {"rows_used": 2}),
    # The observation end is the last date that is not in the future, not 2031.
    ("future_date.csv", {"future_dates": "drop"}, "future_rows_dropped",
     {"rows_used": 3, "observation_end": "2024-02-03"}),
])
def test_rows_can_be_dropped_with_a_count(tmp_path, file_name, validation, counted, expected):
    config = write_config(tmp_path, BAD / file_name, validation=validation)
    result = runner.invoke(app, ["features", "--config", str(config)])
    assert result.exit_code == 0, result.output
    summary = json.loads(next((tmp_path / "outputs").glob("2*/features_summary.json")).read_text())
    assert summary[counted] == 1
    assert {key: summary[key] for key in expected} == expected


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["features.period.unti=week"], r"features\.period\.unti: unknown key"),
        (["features.period=fortnight"], r"features\.period: 'fortnight' is not one of D, W, M"),
        (["validation.negative_amounts=maybe"], r"validation\.negative_amounts: Input should be 'fail' or 'drop'"),
        (["features.calibration_end=not-a-date"], r"features\.calibration_end: Input should be a valid date"),
        (["nonsense"], r"--set 'nonsense': expected KEY=VALUE"),
    ],
)
def test_bad_config_names_the_key(tmp_path, overrides, message):
    config = write_config(tmp_path, DATA / "good.csv")
    args = ["features", "--config", str(config)]
    for item in overrides:
        args += ["--set", item]
    result = runner.invoke(app, args)
    assert result.exit_code == 2
    assert re.search(message, result.stderr), result.stderr


def test_missing_config_file(tmp_path):
    result = runner.invoke(app, ["features", "--config", str(tmp_path / "nope.yaml")])
    assert result.exit_code == 2
    assert "nope.yaml: config file not found" in result.stderr


@pytest.mark.parametrize("file_name, column, what", [
    ("margin_above_amount.csv", "margin", "a margin above their amount"),
    ("negative_cost.csv", "cost", "a negative cost"),
])
def test_margin_above_amount_is_a_counted_warning_by_default(tmp_path, file_name, column, what):
    config = write_config(tmp_path, BAD / file_name, input={"columns": {column: column}})
    result = runner.invoke(app, ["features", "--config", str(config)])
    assert result.exit_code == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1, result.stderr
    expected = 2 if column == "margin" else 1
    assert f"{expected} rows have {what}" in warnings[0]
    summary = json.loads(next((tmp_path / "outputs").glob("*/features_summary.json")).read_text())
    assert summary["margin_above_amount_rows"] == expected


def test_the_future_starts_after_today_in_the_earliest_time_zone(tmp_path):
    """A shop east of UTC can log tomorrow's UTC date today; a date two days ahead is in the future everywhere."""
    import datetime as dt

    from pipeline.transactions import latest_possible_date

    now = dt.datetime.now(dt.timezone.utc)
    latest = latest_possible_date()
    assert latest == (now + dt.timedelta(hours=14)).date() and latest >= now.date()
    log = tmp_path / "log.csv"
    rows = [f"1,{now.date() - dt.timedelta(days=10)},5.00", f"1,{latest},7.00"]
    log.write_text("customer_id,date,amount\n" + "\n".join(rows) + "\n")
    ok = runner.invoke(app, ["features", "--config", str(write_config(tmp_path, log))])
    assert ok.exit_code == 0, ok.stderr
    rows.append(f"2,{latest + dt.timedelta(days=1)},3.00")
    log.write_text("customer_id,date,amount\n" + "\n".join(rows) + "\n")
    future = runner.invoke(app, ["features", "--config", str(write_config(tmp_path, log))])
    assert future.exit_code == 2 and "line 4" in future.stderr and "is in the future" in future.stderr
