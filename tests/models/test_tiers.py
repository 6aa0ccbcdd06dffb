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


def customers_with_tiers(rows=500, seed=6):
    rng = np.random.default_rng(seed)
    clv = pd.Series(np.round(rng.lognormal(1.0, 1.5, size=rows) - 2.0, 2), index=[f"c{i}" for i in range(rows)])
    historical = pd.Series(rng.normal(10.0, 20.0, size=rows), index=clv.index)
    # A top tier no one reaches: empty tiers must survive the merge.
    tiers = [("top", 1e9, "call"), ("high", 0.8, "a"), ("medium", 0.5, "b"), ("low", 0.0, "c")]
    bounds = tier_thresholds(clv, tiers[1:]).tolist()
    absolute = [("top", 1e9, "call")] + [(t[0], b, t[2]) for t, b in zip(tiers[1:], bounds)]
    absolute[-1] = ("low", -np.inf, "c")
    return clv, historical, assign_tiers(clv, absolute, method="absolute")


@pytest.mark.parametrize("batches", [1, 3, 7])
@pytest.mark.parametrize("with_historical", [True, False])
def test_tier_partials_of_batches_merge_to_the_whole_tables_summary(batches, with_historical):
    from models.tiers import finish_tier_summary, merge_tier_partials, tier_partial
    from tests.conftest import random_batches

    clv, historical, tiers = customers_with_tiers()
    historical = historical if with_historical else None
    whole = tier_summary(clv, tiers, historical=historical)
    partials = [
        tier_partial(clv.iloc[rows], tiers.iloc[rows], None if historical is None else historical.iloc[rows])
        for rows in random_batches(len(clv), batches, seed=batches)
    ]
    actions = {tier.name: tier.action for tier in tiers.attrs["tiers"]}
    merged = finish_tier_summary(merge_tier_partials(partials), actions)
    assert merged.index.equals(whole.index) and merged.index.dtype == whole.index.dtype
    assert list(merged.columns) == list(whole.columns) and (merged.dtypes == whole.dtypes).all()
    assert merged["action"].tolist() == whole["action"].tolist()
    assert merged["n_customers"].tolist() == whole["n_customers"].tolist()
    assert merged.loc["top", "n_customers"] == 0 and np.isnan(merged.loc["top", "mean_predicted_clv"])
    numbers = whole.columns.drop(["action", "n_customers"])
    pd.testing.assert_frame_equal(merged[numbers], whole[numbers], rtol=1e-12, atol=0)


def test_a_tier_partial_of_no_customers_merges_as_the_identity():
    from models.tiers import merge_tier_partials, tier_partial

    clv, historical, tiers = customers_with_tiers()
    partial = tier_partial(clv, tiers, historical)
    empty = tier_partial(clv.iloc[:0], tiers.iloc[:0], historical.iloc[:0])
    assert empty["predicted_clv_total"] == 0 and empty["per_tier"]["n_customers"].tolist() == [0, 0, 0, 0]
    for merged in (merge_tier_partials([empty, partial]), merge_tier_partials([partial, empty])):
        assert merged["predicted_clv_total"] == partial["predicted_clv_total"]
        pd.testing.assert_frame_equal(merged["per_tier"], partial["per_tier"], check_exact=True)
    with pytest.raises(ValueError, match="different tiers or columns"):
        merge_tier_partials([partial, tier_partial(clv, tiers)])


@pytest.mark.parametrize("n", [1, 2, 3, 10, 997, 20_000])
def test_quantiles_from_ranks_are_numpys_bit_for_bit(n):
    from models.tiers import quantiles_from_ranks

    rng = np.random.default_rng(n)
    values = np.round(rng.lognormal(size=n), 3)  # ties included
    ordered = np.sort(values)
    probabilities = [0.0, 0.1, 0.25, 0.5, 0.8, 0.9, 0.999, 1.0, *rng.uniform(size=20)]
    ours = quantiles_from_ranks(n, probabilities, lambda rank: ordered[rank])
    assert ours.tolist() == np.quantile(values, probabilities).tolist()
