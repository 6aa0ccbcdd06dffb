"""The whole pipeline on the CDNOW sample, and each stage run alone from disk."""

from __future__ import annotations

import json

import joblib
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from pipeline.catalog import RunCatalog
from pipeline.cli import app
from pipeline.runner import run_pipeline
from tests.conftest import CONFIGS, sample_config

runner = CliRunner()


def run_into(config, output_dir):
    """A whole run into a new run directory under ``output_dir``: (result, its directory)."""
    with RunCatalog.create(output_dir) as catalog:
        result = run_pipeline(config, catalog)
    return result, catalog.final


@pytest.fixture(scope="module")
def sample_run(tmp_path_factory):
    return run_into(sample_config("models.purchase.candidates=[bgnbd, paretonbd]"), tmp_path_factory.mktemp("run"))


def test_run_writes_every_output(sample_run):
    result, run_dir = sample_run
    for name in ["customers.parquet", "summary.json", "features.parquet", "calibration.parquet", "model/scorer.joblib"]:
        assert (run_dir / name).is_file(), name
    for plot in ["calibration_vs_holdout", "cumulative_tracking", "probability_alive_matrix", "clv_distribution", "clv_by_tier",
                 "purchase_histogram", "reliability", "gains", "revenue_deciles"]:
        assert (run_dir / "plots" / f"{plot}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert set(summary["backtest"]) == {"bgnbd", "paretonbd", "historical_baseline"}
    assert summary["model"]["selected_purchase_model"] in {"bgnbd", "paretonbd"}
    assert set(summary["diagnostics"]) == set(summary["backtest"])
    assert set(summary["diagnostics"]["bgnbd"]) == {"revenue_deciles", "gains", "reliability", "calibration_histogram"}


def test_the_model_card_is_made_of_the_summary(sample_run):
    from pipeline.stages.model_card import model_card

    _, run_dir = sample_run
    summary = json.loads((run_dir / "summary.json").read_text())
    card = (run_dir / "model_card.md").read_text()
    assert card == model_card(summary)
    for heading in ("## Data", "## Model", "## Fit on the calibration period", "## Holdout",
                    "## Gamma-Gamma independence", "## Release gates", "## Known limits"):
        assert heading in card, heading
    selected = summary["model"]["selected_purchase_model"]
    row = summary["backtest"][selected]
    assert f"| {row['any_purchase_brier']:.3f} |" in card
    assert f"{summary['model']['purchase_params']['r']:.4g}" in card
    assert all(name in card for name in summary["release"])
    assert "P(alive) is never observed" in card
    # The sample's repeat customers barely correlate frequency and spend: no warning; a card
    # of a summary whose check fired says so, as does one whose gate failed.
    assert "- no warning" in card and summary["model"]["spend_independence"]["warning"] is None
    summary["model"]["spend_independence"]["warning"] = "correlate at 0.62"
    first_gate = next(iter(summary["release"]))
    summary["release"][first_gate] = {"passed": False, "detail": "ran away"}
    changed = model_card(summary)
    assert "**warning**: correlate at 0.62" in changed and f"| {first_gate} | **no** | ran away |" in changed


def test_spend_independence_warns_only_above_the_threshold():
    from pipeline.stages.model_card import spend_independence

    assert spend_independence(0.2, 0.3)["warning"] is None
    assert "-0.45" in spend_independence(-0.45, 0.3)["warning"]
    assert spend_independence(float("nan"), 0.3)["warning"] is None


def test_customer_rows_are_consistent(sample_run):
    result, run_dir = sample_run
    customers = pd.read_parquet(run_dir / "customers.parquet").set_index("customer_id")
    assert len(customers) == 2357
    np.testing.assert_allclose(customers["churn_probability"], 1 - customers["probability_alive"])
    assert customers["probability_no_purchases"].between(0, 1).all()
    # Margin 0.30 and no CAC in the sample config: CLV = 0.3 x discounted purchases x spend.
    np.testing.assert_allclose(
        customers["predicted_clv"],
        0.3 * customers["discounted_expected_purchases"] * customers["expected_spend"],
        rtol=1e-12,
    )
    # Discounting only lowers the horizon's expected purchases.
    assert (customers["discounted_expected_purchases"] <= customers["expected_purchases"] + 1e-12).all()
    assert set(customers["tier"]) == {"high", "medium", "low"}
    assert customers.groupby("tier")["predicted_clv"].min()["high"] >= customers.groupby("tier")["predicted_clv"].max()["medium"]


def test_summary_tiers_add_up(sample_run):
    result, _ = sample_run
    tiers = result.summary["value"]["tiers"]
    assert sum(t["n_customers"] for t in tiers.values()) == 2357
    assert sum(t["share_of_predicted_clv"] for t in tiers.values()) == pytest.approx(1.0)
    # Quantile cuts 0.8 / 0.5: the high tier is about a fifth of customers (ties at the cut go up).
    assert 0.15 < tiers["high"]["share_of_customers"] < 0.25


def test_pickled_scorer_reproduces_customers(sample_run):
    result, run_dir = sample_run
    scorer = joblib.load(run_dir / "model/scorer.joblib")
    features = pd.read_parquet(run_dir / "features.parquet").set_index("customer_id")
    customers = pd.read_parquet(run_dir / "customers.parquet").set_index("customer_id")
    rescored = scorer.score(features)
    pd.testing.assert_frame_equal(rescored, customers[rescored.columns])


def test_a_second_run_gives_identical_numbers(sample_run, tmp_path):
    _, run_dir = sample_run
    _, second_dir = run_into(sample_config("models.purchase.candidates=[bgnbd, paretonbd]"), tmp_path)
    first = pd.read_parquet(run_dir / "customers.parquet")
    second = pd.read_parquet(second_dir / "customers.parquet")
    pd.testing.assert_frame_equal(first, second, check_exact=True)


def test_stages_alone_equal_the_whole_run(sample_run, tmp_path):
    _, run_dir = sample_run
    common = ["-c", str(CONFIGS / "cdnow_sample.yaml"), "--set", f"output_dir={tmp_path}",
              "--set", "models.purchase.candidates=[bgnbd, paretonbd]"]
    for command in ["features", "fit", "value", "report"]:
        result = runner.invoke(app, [command, *common])
        assert result.exit_code == 0, (command, result.output, result.stderr)
    stage_dir = next(p for p in tmp_path.iterdir() if p.is_dir())
    pd.testing.assert_frame_equal(
        pd.read_parquet(stage_dir / "customers.parquet"), pd.read_parquet(run_dir / "customers.parquet")
    )
    assert "Backtest on the holdout" in result.output


def test_calibration_file_is_the_calibration_features(sample_run):
    # The run writes the calibration split as it computes it; the file must be exactly the
    # table the features stage returns in memory.
    from pipeline.duckdb_engine import features_from_config

    result, run_dir = sample_run
    expected = features_from_config(sample_config()).calibration
    assert pq.read_table(run_dir / "calibration.parquet").equals(expected)
    # Counted as the chunks were written, they are the in-memory table's counts.
    summary = json.loads((run_dir / "features_summary.json").read_text())
    repeaters = int((expected["frequency"].to_numpy() > 0).sum())
    assert (summary["calibration_customers"], summary["calibration_repeat_customers"]) == (expected.num_rows, repeaters)
    assert 0 < repeaters < expected.num_rows
    pd.testing.assert_frame_equal(result.calibration_frame(), expected.to_pandas(date_as_object=False))


def test_too_few_repeat_customers_is_a_clear_error(tmp_path):
    result = runner.invoke(
        app,
        ["run", "-c", str(CONFIGS / "cdnow_sample.yaml"), "--set", f"output_dir={tmp_path}",
         "--set", "models.spend.min_repeat_customers=5000", "--set", "models.purchase.candidates=[bgnbd]"],
    )
    assert result.exit_code == 2
    assert "cannot fit Gamma-Gamma" in result.stderr and "5000" in result.stderr
    assert "Traceback" not in result.stderr
    assert not any(tmp_path.iterdir())


def _contents(directory):
    """Every file under ``directory``: relative path → (inode, bytes)."""
    return {
        str(path.relative_to(directory)): (path.stat().st_ino, path.read_bytes())
        for path in sorted(directory.rglob("*")) if path.is_file()
    }


@pytest.fixture()
def finished_run(sample_run, tmp_path):
    """A copy of the sample run in its own output directory, as `clv run` leaves it (LATEST set)."""
    import shutil

    from pipeline.catalog import mark_latest

    _, run_dir = sample_run
    copy = tmp_path / "outputs" / run_dir.name
    shutil.copytree(run_dir, copy)
    mark_latest(copy)
    return copy


def test_report_alone_reads_the_value_outputs_and_rewrites_neither(finished_run):
    before = _contents(finished_run)
    common = ["-c", str(CONFIGS / "cdnow_sample.yaml"), "--set", f"output_dir={finished_run.parent}"]
    result = runner.invoke(app, ["report", *common])
    assert result.exit_code == 0, result.output
    after = _contents(finished_run)
    for name in ("customers.parquet", "model/scorer.joblib", "model/fitted.joblib", "value.json", "features.parquet"):
        assert after[name] == before[name], name  # same bytes, and the same file (hard-linked through the update)
    assert after["summary.json"][0] != before["summary.json"][0]  # rewritten, by replacement
    assert [p.name for p in finished_run.parent.iterdir() if p.name.startswith(".")] == []


def test_a_failing_stage_alone_leaves_the_run_as_it_was(finished_run):
    before = _contents(finished_run)
    common = ["-c", str(CONFIGS / "cdnow_sample.yaml"), "--set", f"output_dir={finished_run.parent}"]
    result = runner.invoke(app, ["fit", *common, "--set", "models.spend.min_repeat_customers=5000"])
    assert result.exit_code == 2 and "cannot fit Gamma-Gamma" in result.stderr, result.output
    assert _contents(finished_run) == before
    assert sorted(p.name for p in finished_run.parent.iterdir()) == sorted(["LATEST", finished_run.name])


def test_a_stage_alone_replaces_its_own_outputs_and_keeps_the_others(finished_run):
    before = _contents(finished_run)
    common = ["-c", str(CONFIGS / "cdnow_sample.yaml"), "--set", f"output_dir={finished_run.parent}",
              "--set", "models.purchase.candidates=[bgnbd]"]
    result = runner.invoke(app, ["fit", *common])
    assert result.exit_code == 0, result.output
    after = _contents(finished_run)
    assert json.loads((finished_run / "model/models.json").read_text())["selected_purchase_model"] == "bgnbd"
    assert after["model/fitted.joblib"] != before["model/fitted.joblib"]
    assert after["customers.parquet"] == before["customers.parquet"]  # the value stage's, untouched
    assert sorted(after) == sorted(before)


def test_a_stage_alone_before_its_inputs_names_the_command_to_run(tmp_path):
    common = ["-c", str(CONFIGS / "cdnow_sample.yaml"), "--set", f"output_dir={tmp_path}"]
    assert runner.invoke(app, ["features", *common]).exit_code == 0
    (run_dir,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    before = _contents(run_dir)
    for command, needed in (("value", "fit"), ("report", "fit")):
        result = runner.invoke(app, [command, *common])
        assert result.exit_code == 2, result.output
        assert f"run `clv {needed}` for this run directory first" in result.stderr
        assert "Traceback" not in result.stderr
    assert _contents(run_dir) == before
