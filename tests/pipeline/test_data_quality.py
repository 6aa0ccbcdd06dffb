"""The data-quality report (pipeline/stages/data_quality.py): counts in the sorted log, the
report's shares and warnings, and a run's report against the log counted by pandas."""

from __future__ import annotations

import datetime as dt

import pandas as pd
import pyarrow as pa
import pytest

from pipeline.stages.data_quality import WARN_ABOVE, data_quality_report, sorted_log_counts


def test_counts_in_the_sorted_log_by_hand():
    day = dt.date(2024, 1, 1)
    other = dt.date(2024, 1, 2)
    table = pa.table({
        # a: three rows on one day (two equal), one the next; b: a zero and two equal rows without a channel
        "customer_id": ["a", "a", "a", "a", "b", "b", "b"],
        "order_date": [day, day, day, other, day, day, other],
        "amount_micro": [10, 20, 20, 20, 0, 5_000_000, 5_000_000],
        "channel": ["web", "web", "web", "web", None, None, None],
    })
    counts = sorted_log_counts(table)
    # Same-day rows beyond each day's first: a's day 1 has two, b's day 1 one.
    assert counts == {"zero_amount_rows": 1, "same_day_rows_merged": 3, "duplicate_rows": 1}
    # Equal rows on different days are not duplicates; missing channels compare equal.
    table = table.set_column(3, "channel", pa.array([None] * 7, pa.string()))
    assert sorted_log_counts(table)["duplicate_rows"] == 1
    assert sorted_log_counts(table.slice(0, 1)) == {"zero_amount_rows": 0, "same_day_rows_merged": 0,
                                                    "duplicate_rows": 0}


def features_summary(**changes):
    summary = {"rows_read": 1000, "rows_used": 940, "negative_amount_rows_dropped": 50, "future_rows_dropped": 0,
               "rows_after_observation_end": 10, "duplicate_rows": 30, "zero_amount_rows": 2,
               "same_day_rows_merged": 40, "customers": 200, "repeat_customers": 10, "calibration_customers": 150,
               "first_date": "2024-01-01", "last_date": "2024-12-31"}
    return summary | changes


def test_the_report_shares_and_warnings():
    report = data_quality_report(features_summary())
    rows = {row["check"]: row for row in report["rows"]}
    assert rows["rows not used"]["count"] == 60 and rows["rows not used"]["share"] == pytest.approx(0.06)
    assert rows["negative amounts (returns) dropped"]["count"] == 50
    assert "dated in the future, dropped" not in rows  # nothing to say
    assert rows["exact duplicate rows (kept)"]["share"] == pytest.approx(30 / 940)
    assert rows["customers with a single purchase"]["count"] == 190
    assert rows["customers first seen in the holdout"]["count"] == 50
    # Above the thresholds: 6 % not used (> 5 %), 3.2 % duplicates (> 1 %), 95 % single purchase (> 90 %).
    warned = {row["check"] for row in report["rows"] if row["warning"]}
    assert warned == {"rows not used", "exact duplicate rows (kept)", "customers with a single purchase"}
    assert len(report["warnings"]) == 3 and "6.0% of rows read" in report["warnings"][0]
    quiet = data_quality_report(features_summary(rows_used=1000, negative_amount_rows_dropped=0,
                                                 rows_after_observation_end=0, duplicate_rows=0, repeat_customers=150))
    assert quiet["warnings"] == []
    assert set(WARN_ABOVE) == {"dropped_rows", "duplicate_rows", "zero_amount_rows", "single_purchase_customers",
                               "new_in_holdout_customers"}


def test_a_run_reports_what_pandas_counts_in_the_log(tmp_path):
    from pipeline.catalog import RunCatalog
    from pipeline.config import resolve_input_path
    from pipeline.runner import run_features
    from tests.conftest import sample_config

    config = sample_config()
    with RunCatalog.create(tmp_path) as catalog:
        _, summary = run_features(config, catalog)
    log = pd.read_csv(resolve_input_path("builtin:CDNOW_sample.txt"), sep=r"\s+", header=None,
                      names=["customer", "order", "date", "items", "amount"], dtype={"date": str, "customer": str})
    assert summary["zero_amount_rows"] == int((log["amount"] == 0).sum())
    assert summary["same_day_rows_merged"] == len(log) - len(log.drop_duplicates(["customer", "date"]))
    assert summary["duplicate_rows"] == int(log.duplicated(["customer", "date", "amount"]).sum())
    assert summary["duplicate_rows"] > 0 and summary["same_day_rows_merged"] > summary["duplicate_rows"]
