"""The table of input rules: which apply for a config, and the limit of exact sums.

That both engines give the same message for every bad file is tested with a Spark session, in
``tests/pipeline/test_spark.py``.
"""

from __future__ import annotations

import datetime as dt

import duckdb
import numpy as np
import pytest

from pipeline.config import ColumnMap, InputSettings, ValidationSettings
from pipeline.input_rules import MAX_AMOUNT, RuleContext, checks

LATEST = dt.date(2026, 1, 1)


def rules_for(columns: ColumnMap, counts_fields: bool = False, **validation) -> dict[str, str | None]:
    settings = InputSettings(path="log.csv", columns=columns)
    context = RuleContext.for_source(settings, ValidationSettings(**validation), LATEST, ["a", "b", "c"], counts_fields)
    return {check.name: check.column for check in checks(context)}


def test_which_rules_apply_follows_the_config():
    plain = ColumnMap(customer_id="id", date="day", amount="paid")
    assert rules_for(plain) == {
        "customer_id_empty": "id", "date_not_a_date": "day", "amount_not_finite": "paid",
        "amount_too_large": "paid", "negative_amount": "paid", "future_date": "day",
    }
    assert list(rules_for(plain, counts_fields=True))[0] == "field_count"
    relaxed = rules_for(plain, negative_amounts="drop", future_dates="drop")
    assert "negative_amount" not in relaxed and "future_date" not in relaxed
    # Margins from a cost column: the margin rules name the cost column, in the table's order.
    with_cost = rules_for(ColumnMap(customer_id="id", date="day", amount="paid", cost="cogs", acquisition_cost="cac"),
                          margin_above_amount="fail")
    assert list(with_cost.items()) == [
        ("customer_id_empty", "id"), ("date_not_a_date", "day"), ("amount_not_finite", "paid"),
        ("margin_not_finite", "cogs"), ("acquisition_cost_invalid", "cac"), ("amount_too_large", "paid"),
        ("margin_too_large", "cogs"), ("negative_amount", "paid"), ("margin_above_amount", "cogs"),
        ("future_date", "day"),
    ]


@pytest.mark.parametrize("amount, too_large", [(np.nextafter(MAX_AMOUNT, 0), False), (MAX_AMOUNT, True),
                                               (-np.nextafter(MAX_AMOUNT, 0), False), (-MAX_AMOUNT, True)])
def test_too_large_is_exactly_what_an_exact_sum_cannot_hold(amount, too_large):
    context = RuleContext(InputSettings(path="log.csv"), ValidationSettings(), LATEST)
    condition = next(check for check in checks(context) if check.name == "amount_too_large").duckdb_condition()
    with duckdb.connect() as con:
        con.execute("CREATE TABLE t AS SELECT ?::DOUBLE AS amount", [float(amount)])
        assert con.execute(f"SELECT {condition} FROM t").fetchone()[0] is too_large
        if too_large:
            with pytest.raises(duckdb.Error):
                con.execute("SELECT sum(CAST(amount AS DECIMAL(18, 6))) FROM t").fetchone()
        else:
            assert con.execute("SELECT sum(CAST(amount AS DECIMAL(18, 6))) FROM t").fetchone()[0] is not None
