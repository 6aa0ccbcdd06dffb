"""Batch scoring from the registered champion, against the real local MLflow store."""

from __future__ import annotations

import datetime as dt
import hashlib
import json

import pandas as pd
import pyarrow as pa
import pytest
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.stages.score import ModelIdentity, write_scores
from tests.conftest import CONFIGS

runner = CliRunner()
SAMPLE = str(CONFIGS / "cdnow_sample.yaml")


@pytest.fixture(scope="module")
def champion(tmp_path_factory):
    root = tmp_path_factory.mktemp("score")
    uri = f"sqlite:///{root}/mlflow.db"
    common = ["-c", SAMPLE, "--set", f"tracking.uri={uri}", "--set", f"output_dir={root / 'outputs'}"]
    result = runner.invoke(app, ["run", "-q", *common, "--set", "models.purchase.candidates=[bgnbd]"])
    assert result.exit_code == 0, result.stderr
    assert runner.invoke(app, ["promote", "1", *common]).exit_code == 0
    run_dir = next(p for p in (root / "outputs").iterdir() if p.is_dir())
    return root, common, run_dir


def plain(frame: pd.DataFrame) -> pd.DataFrame:
    """The export's dictionary-encoded text columns (tier, action, model) as plain strings."""
    categorical = frame.select_dtypes("category").columns
    return frame.astype({name: "str" for name in categorical})


def score(common, *args):
    return runner.invoke(app, ["score", "-q", *common, *args])


def test_export_equals_the_runs_customers(champion, tmp_path):
    _, common, run_dir = champion
    out = tmp_path / "scores.parquet"
    result = score(common, "--as-of", "1998-06-30", "--out", str(out))
    assert result.exit_code == 0, result.stderr
    exported = plain(pd.read_parquet(out)).set_index("customer_id")
    customers = pd.read_parquet(run_dir / "customers.parquet").set_index("customer_id")
    pd.testing.assert_frame_equal(exported[customers.columns], customers)
    assert set(exported["model_version"]) == {"1"} and set(exported["model_name"]) == {"clv"}
    assert set(exported["as_of_date"].astype(str)) == {"1998-06-30"}
    manifest = json.loads((tmp_path / "scores.parquet.manifest.json").read_text())
    assert manifest["rows"] == 2357 == len(exported)
    assert manifest["sha256"] == hashlib.sha256(out.read_bytes()).hexdigest()
    assert manifest["model_uri"] == "models:/clv@champion" and manifest["columns"] == list(pd.read_parquet(out).columns)
    assert manifest["input_sha256"]


def test_same_inputs_give_byte_identical_exports(champion, tmp_path):
    _, common, _ = champion
    stamp = ["--scored-at", "2026-01-01T00:00:00+00:00", "--as-of", "1998-06-30"]
    assert score(common, *stamp, "--out", str(tmp_path / "a.parquet")).exit_code == 0
    assert score(common, *stamp, "--out", str(tmp_path / "b.parquet")).exit_code == 0
    assert (tmp_path / "a.parquet").read_bytes() == (tmp_path / "b.parquet").read_bytes()


def test_csv_export_and_features_file_input(champion, tmp_path):
    _, common, run_dir = champion
    result = score(common, "--features", str(run_dir / "features.parquet"), "--as-of", "1998-06-30",
                   "--out", str(tmp_path / "scores.csv"))
    assert result.exit_code == 0, result.stderr
    exported = pd.read_csv(tmp_path / "scores.csv", dtype={"customer_id": str}).set_index("customer_id")
    customers = pd.read_parquet(run_dir / "customers.parquet").set_index("customer_id")
    pd.testing.assert_series_equal(exported["predicted_clv"], customers["predicted_clv"], rtol=1e-12)


def test_earlier_as_of_date_scores_fewer_customers(champion, tmp_path):
    _, common, _ = champion
    result = score(common, "--as-of", "1997-01-31", "--out", str(tmp_path / "early.parquet"))
    assert result.exit_code == 0, result.stderr
    early = pd.read_parquet(tmp_path / "early.parquet")
    assert 0 < len(early) < 2357
    assert early["T"].max() == pytest.approx(30 / 7)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--model", "models:/nope@champion"], "model models:/nope@champion: not found"),
        (["--as-of", "1990-01-01"], "1990-01-01 is before the first transaction"),
        (["--as-of", "yesterday"], "--as-of 'yesterday' is not a date"),
        # Scoring as of today a log that ended in 1998 would export CLV ≈ 0 for everyone.
        (["--as-of", "1998-09-01"], "stale data: the last transaction is on 1998-06-30, 63 days before the as-of date"),
        (["--features", "MISSING_COLUMNS", "--as-of", "1998-06-30"], "needed by the model are missing"),
        (["--out-dir-unwritable"], "cannot write the export here"),
        (["--out", "scores.txt"], "must end in .parquet or .csv"),
    ],
)
def test_bad_requests_write_nothing(champion, tmp_path, args, message):
    _, common, _ = champion
    out = tmp_path / "out" / "scores.parquet"
    if args == ["--out-dir-unwritable"]:
        blocker = tmp_path / "file"
        blocker.write_text("not a directory")
        args, out = [], blocker / "scores.parquet"
    if "MISSING_COLUMNS" in args:
        bad = tmp_path / "bad_features.parquet"
        pd.DataFrame({"customer_id": ["a"], "frequency": [1]}).to_parquet(bad)
        args = [str(bad) if a == "MISSING_COLUMNS" else a for a in args]
    if "--out" not in args:
        args = [*args, "--out", str(out)]
    result = score(common, *args)
    assert result.exit_code == 2, result.output + result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not out.exists() and not out.with_name(out.name + ".manifest.json").exists()


def test_interrupted_scoring_leaves_nothing(champion, tmp_path):
    import joblib

    _, _, run_dir = champion
    scorer = joblib.load(run_dir / "model" / "scorer.joblib")
    features = pa.Table.from_pandas(pd.read_parquet(run_dir / "features.parquet"), preserve_index=False)

    def batches():
        yield from features.to_batches(max_chunksize=500)[:2]
        raise KeyboardInterrupt

    out = tmp_path / "scores.parquet"
    identity = ModelIdentity("models:/clv@champion", "clv", "1", "run")
    with pytest.raises(KeyboardInterrupt):
        write_scores(batches(), scorer, identity, dt.date(1998, 6, 30), dt.datetime.now(dt.timezone.utc), out, {})
    assert list(tmp_path.iterdir()) == []


def test_shared_history_figures_give_what_each_batch_computes_alone(champion):
    # Batch scoring evaluates every history once and hands each batch its rows' positions;
    # a batch of customers must get exactly what scoring it on its own gives.
    import joblib
    import numpy as np

    from pipeline.stages.value import history_figures, score_customers, unique_histories

    _, _, run_dir = champion
    scorer = joblib.load(run_dir / "model" / "scorer.joblib")
    features = pd.read_parquet(run_dir / "features.parquet").set_index("customer_id")
    histories, _ = unique_histories(features)
    # In another order than any batch meets them, as SELECT DISTINCT gives them.
    histories = histories.sample(frac=1.0, random_state=1).reset_index(drop=True)
    per_history = history_figures(scorer, histories)
    row = {key: i for i, key in enumerate(histories.itertuples(index=False, name=None))}
    batch = features.iloc[700:1400]
    history_of = np.array([row[key] for key in batch[["frequency", "recency", "T"]].itertuples(index=False, name=None)])
    shared = score_customers(scorer, batch, per_history, history_of)
    pd.testing.assert_frame_equal(shared, score_customers(scorer, batch), check_exact=True)
    assert len(per_history) > batch[["frequency", "recency", "T"]].drop_duplicates().shape[0]
