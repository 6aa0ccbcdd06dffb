"""The data-quality report of every run: what was read, what was used and what was not, and
what in the log deserves a look before anyone trusts a model fitted on it.

Pure functions: :func:`sorted_log_counts` counts, in the log sorted by customer and date (the
features stage's input on DuckDB; Spark counts the same with aggregations), what no validation
rule refuses but a person should know — rows with a zero amount, rows on a day the customer
already bought (merged into one purchase), exact duplicates of another row; and
:func:`data_quality_report` turns the features summary into the report's rows, with a warning
for each figure above its threshold.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

# Above these shares a figure is a warning (printed, in summary.json and the model card).
WARN_ABOVE = {
    "dropped_rows": 0.05,  # of rows read: returns, future dates, after the observation end
    "duplicate_rows": 0.01,  # of rows used: the same customer, day, amount (and margin, channel) twice
    "zero_amount_rows": 0.01,  # of rows used
    "single_purchase_customers": 0.9,  # of customers: little repeat behaviour to learn from
    "new_in_holdout_customers": 0.5,  # of customers: most of them unseen by the calibration fit
}

QUALITY_COUNTS = ("zero_amount_rows", "same_day_rows_merged", "duplicate_rows")


def sorted_log_counts(sorted_log: pa.Table) -> dict[str, int]:
    """``zero_amount_rows``, ``same_day_rows_merged`` (rows on a customer's day after its first
    row) and ``duplicate_rows`` (rows equal in every column to the row before) of the log
    sorted by customer, date and then every other column, so that equal rows are adjacent."""
    rows = sorted_log.num_rows
    counts = {"zero_amount_rows": int(np.count_nonzero(sorted_log["amount_micro"].to_numpy() == 0))}
    if rows < 2:
        return counts | {"same_day_rows_merged": 0, "duplicate_rows": 0}

    def same_as_previous(name: str) -> np.ndarray:
        column = sorted_log[name]
        equal = pc.equal(column.slice(1), column.slice(0, rows - 1))
        # Two missing values (a channel, say) count as equal: a copied row copies its gaps.
        both_missing = pc.and_(pc.is_null(column.slice(1)), pc.is_null(column.slice(0, rows - 1)))
        return pc.or_kleene(pc.fill_null(equal, False), both_missing).to_numpy(zero_copy_only=False)

    same_day = same_as_previous("customer_id") & same_as_previous("order_date")
    counts["same_day_rows_merged"] = int(np.count_nonzero(same_day))
    duplicate = same_day
    for name in sorted_log.column_names:
        if name not in ("customer_id", "order_date"):
            duplicate = duplicate & same_as_previous(name)
    counts["duplicate_rows"] = int(np.count_nonzero(duplicate))
    return counts


def _share(count: float | None, total: float | None) -> float | None:
    if count is None or not total:
        return None
    return float(count) / float(total)


def data_quality_report(features: dict[str, Any]) -> dict[str, Any]:
    """The report's rows (``check``, ``count``, ``share``, ``of``, ``warn_above``, ``warning``)
    and warning lines, from a features summary (``summary.json``'s ``features``)."""
    read, used = features["rows_read"], features["rows_used"]
    customers = features.get("customers")
    dropped = {
        "negative amounts (returns) dropped": features.get("negative_amount_rows_dropped", 0),
        "dated in the future, dropped": features.get("future_rows_dropped", 0),
        "after the observation end, not used": features.get("rows_after_observation_end", 0),
    }
    new_in_holdout = (None if features.get("calibration_customers") is None or customers is None
                      else customers - features["calibration_customers"])
    rows: list[dict[str, Any]] = [
        {"check": "rows read", "count": read, "of": None},
        {"check": "rows used", "count": used, "of": "rows read"},
        {"check": "rows not used", "key": "dropped_rows", "count": read - used, "of": "rows read"},
        *({"check": why, "count": count, "of": "rows read"} for why, count in dropped.items() if count),
        {"check": "exact duplicate rows (kept)", "key": "duplicate_rows", "count": features.get("duplicate_rows"),
         "of": "rows used"},
        {"check": "zero amounts", "key": "zero_amount_rows", "count": features.get("zero_amount_rows"),
         "of": "rows used"},
        {"check": "same-day purchases merged into one", "count": features.get("same_day_rows_merged"),
         "of": "rows used"},
        {"check": "customers", "count": customers, "of": None},
        {"check": "customers with a single purchase", "key": "single_purchase_customers",
         "count": None if customers is None else customers - features["repeat_customers"], "of": "customers"},
        {"check": "customers first seen in the holdout", "key": "new_in_holdout_customers",
         "count": new_in_holdout, "of": "customers"},
    ]
    totals = {"rows read": read, "rows used": used, "customers": customers, None: None}
    warnings = []
    for row in rows:
        row["share"] = _share(row["count"], totals[row["of"]])
        threshold = WARN_ABOVE.get(row.pop("key", ""))
        row["warn_above"] = threshold
        row["warning"] = bool(threshold is not None and row["share"] is not None and row["share"] > threshold)
        if row["warning"]:
            warnings.append(f"{row['check']}: {row['count']:,} ({row['share']:.1%} of {row['of']}), "
                            f"above {threshold:.0%}")
    return {"first_date": features.get("first_date"), "last_date": features.get("last_date"),
            "rows": rows, "warnings": warnings}
