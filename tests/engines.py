"""What "the Spark run equals the DuckDB run" means, for every test that compares the engines.

The purchase fits are bit-identical (same distinct histories, same order). Gamma-Gamma is fitted
on the repeat customers' distinct (frequency, spend) pairs on Spark, whose sums are taken in
another order than DuckDB's per-customer sums: its parameters, and so every spend and CLV
figure, agree to about 1e-12 relative; the issue's bound is 1e-9. Sums merged from the
executors' batches (totals, tier sums) likewise. Tiers, texts and counts are exact.

Rank correlations (``*_spearman``) agree to :data:`RANK_ABSOLUTE`: they are computed on the
same customers (``pipeline.stages.backtest.rank_sample`` chooses them by id on either engine),
but two values a few units in the last place apart on one engine can tie on the other (the
company lifespan, a sum over every customer, differs in its last bit when it is added up in
another order), which moves their average ranks: about 1e-7 on CDNOW.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

RELATIVE = 1e-9
RANK_ABSOLUTE = 1e-6


def run_dir(root: Path) -> Path:
    (found,) = [path for path in Path(root).iterdir() if path.is_dir() and not path.name.startswith(".")]
    return found


def customers(directory: Path) -> pd.DataFrame:
    """A run's customers table in customer order (Spark writes it as a dataset of part files)."""
    table = pd.read_parquet(Path(directory) / "customers.parquet")
    return table.sort_values("customer_id", kind="stable").reset_index(drop=True)


def assert_close(ours, theirs, where: str = "") -> None:
    """Equal structure; numbers to :data:`RELATIVE`; everything else exactly."""
    if isinstance(theirs, dict):
        assert isinstance(ours, dict) and list(ours) == list(theirs), where
        for key in theirs:
            assert_close(ours[key], theirs[key], f"{where}.{key}")
    elif isinstance(theirs, list):
        assert isinstance(ours, list) and len(ours) == len(theirs), where
        for position, (mine, other) in enumerate(zip(ours, theirs)):
            assert_close(mine, other, f"{where}[{position}]")
    elif isinstance(theirs, float) and not isinstance(ours, bool) and ("_spearman" in where or "_gini" in where):
        assert np.isclose(ours, theirs, rtol=0.0, atol=RANK_ABSOLUTE, equal_nan=True), (where, ours, theirs)
    elif isinstance(theirs, float) and not isinstance(ours, bool):
        assert np.isclose(ours, theirs, rtol=RELATIVE, atol=0.0, equal_nan=True), (where, ours, theirs)
    else:
        assert ours == theirs, (where, ours, theirs)


def assert_same_runs(spark_dir: Path, duckdb_dir: Path) -> None:
    """The customers, the fits, the backtest and the value summary of two runs agree (see the module)."""
    ours, theirs = customers(spark_dir), customers(duckdb_dir)
    assert list(ours.columns) == list(theirs.columns)
    assert ours.dtypes.equals(theirs.dtypes)
    for column in theirs.columns:
        if theirs[column].dtype.kind == "f":
            np.testing.assert_allclose(ours[column], theirs[column], rtol=RELATIVE, atol=0.0, err_msg=column)
        else:
            assert ours[column].equals(theirs[column]), column
    summaries = [json.loads((Path(d) / "summary.json").read_text()) for d in (spark_dir, duckdb_dir)]
    spark_model, duckdb_model = (summary["model"] for summary in summaries)
    for key in ("selected_purchase_model", "selection_reason", "failed_candidates", "purchase_params",
                "purchase_standard_errors", "purchase_log_likelihood"):
        assert spark_model[key] == duckdb_model[key], key  # the same distinct histories: bit for bit
    assert_close(spark_model, duckdb_model, "model")
    assert_close(summaries[0]["backtest"], summaries[1]["backtest"], "backtest")
    assert summaries[0]["data_quality"] == summaries[1]["data_quality"]  # counts: exact
    assert summaries[1]["diagnostics"]  # the reliability, decile and gains tables, and histograms
    assert_close(summaries[0]["diagnostics"], summaries[1]["diagnostics"], "diagnostics")
    assert summaries[1]["value"]["intervals"]["draws"] > 0  # the company interval, on both engines alike
    assert_close(summaries[0]["value"], summaries[1]["value"], "value")
