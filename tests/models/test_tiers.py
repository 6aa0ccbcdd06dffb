"""CLV tiers: thresholds, assignment and the per-tier summary, by hand."""

import numpy as np
import pandas as pd
import pytest

from models.tiers import DEFAULT_TIERS, assign_tiers, tier_summary, tier_thresholds


@pytest.fixture
def ten_customers():
    return pd.Series(np.arange(1.0, 11.0), index=[f"c{i}" for i in range(1, 11)], name="clv")


def test_quantile_tiers_by_hand(ten_customers):
    # Linear quantiles of 1..10: 0.8 -> 8.2, 0.5 -> 5.5, 0 -> 1.
    assert tier_thresholds(ten_customers).to_dict() == pytest.approx({"high": 8.2, "medium": 5.5, "low": 1.0})
    tiers = assign_tiers(ten_customers)
    assert tiers.index.equals(ten_customers.index)
    assert tiers["tier"].tolist() == ["low"] * 5 + ["medium"] * 3 + ["high"] * 2
    assert tiers["tier"].cat.ordered and list(tiers["tier"].cat.categories) == ["low", "medium", "high"]
    assert tiers.loc["c10", "action"] == DEFAULT_TIERS[0].action
    assert "loyalty" in DEFAULT_TIERS[0].action and "nurture" in DEFAULT_TIERS[-1].action


def test_absolute_tiers_put_a_value_at_a_bound_in_the_tier_above(ten_customers):
    tiers = [("gold", 8.0, "call"), ("silver", 3.0, "mail"), ("rest", -np.inf, "nothing")]
    assigned = assign_tiers(ten_customers, tiers, method="absolute")
    assert assigned["tier"].tolist() == ["rest"] * 2 + ["silver"] * 5 + ["gold"] * 3
    assert assigned.loc["c8", "action"] == "call"


@pytest.mark.parametrize(
    ("tiers", "method", "message"),
    [
        ([("high", 0.5, ""), ("low", 0.8, "")], "quantile", "must decrease.*'low' \\(0.8\\) is not below 'high'"),
        ([("high", 0.8, ""), ("low", 0.1, "")], "quantile", "lowest tier 'low' must have quantile cut 0"),
        ([("high", 0.8, ""), ("high", 0.0, "")], "quantile", "repeated: 'high'"),
        ([("high", 1.5, ""), ("low", 0.0, "")], "quantile", r"\[0, 1\].*'high'"),
        ([("high", 8.0, ""), ("low", 2.0, "")], "absolute", "'low' starts at 2, above the lowest CLV 1"),
        ([("high", 8.0, "")], "median", "method must be one of"),
        ([], "quantile", "non-empty"),
    ],
)
def test_bad_tiers_are_named(ten_customers, tiers, method, message):
    with pytest.raises(ValueError, match=message):
        assign_tiers(ten_customers, tiers, method=method)


def test_tier_summary_by_hand(ten_customers):
    tiers = assign_tiers(ten_customers)
    historical = ten_customers * 2
    summary = tier_summary(ten_customers, tiers, historical=historical)
    assert list(summary.index) == ["high", "medium", "low"]
    assert summary["n_customers"].tolist() == [2, 3, 5]
    assert summary["share_of_customers"].tolist() == pytest.approx([0.2, 0.3, 0.5])
    # high: 9 + 10; medium: 6 + 7 + 8; low: 1..5; total 55.
    assert summary["total_predicted_clv"].tolist() == pytest.approx([19.0, 21.0, 15.0])
    assert summary["mean_predicted_clv"].tolist() == pytest.approx([9.5, 7.0, 3.0])
    assert summary["share_of_predicted_clv"].tolist() == pytest.approx([19 / 55, 21 / 55, 15 / 55])
    assert summary["mean_historical_clv"].tolist() == pytest.approx([19.0, 14.0, 6.0])
    assert summary.loc["low", "action"] == DEFAULT_TIERS[-1].action

    # A frame that lost its attrs (e.g. read back from Parquet) still names the actions.
    tiers.attrs = {}
    assert tier_summary(ten_customers, tiers)["action"].tolist() == [tier.action for tier in DEFAULT_TIERS]


def test_tier_summary_keeps_empty_tiers(ten_customers):
    tiers = [("top", 100.0, "call"), ("rest", -np.inf, "nothing")]
    summary = tier_summary(ten_customers, assign_tiers(ten_customers, tiers, method="absolute"))
    assert summary.loc["top", "n_customers"] == 0
    assert summary.loc["top", "action"] == "call"
    assert "mean_historical_clv" not in summary.columns
