"""The value stage's summary: computed whole, and from partial sums of batches merged."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from models.tiers import finish_tier_summary, merge_tier_partials, tier_partial
from pipeline.stages.partials import merge_partials
from pipeline.stages.value import (
    finish_value_summary,
    tier_table,
    value_order_statistics,
    value_partial,
    value_summary,
)
from tests.conftest import random_batches

# value_summary reads these attributes of models.historical.HistoricalCLV only.
HISTORICAL = SimpleNamespace(
    clv=39.75, method="by hand", lifespan_years=0.51, churn_rate_annual=1.94,
    average_purchase_value=35.28, purchases_per_year=7.3,
)
SCORER = SimpleNamespace(
    tier_names=["high", "medium", "low"], tier_actions=["call", "mail", "nothing"], tier_cuts=[20.0, 5.0, -np.inf]
)


def scored_customers(rows: int = 700, seed: int = 9) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    predicted = np.round(rng.lognormal(1.0, 1.5, size=rows) - 2.0, 2)
    position = np.searchsorted(-np.array(SCORER.tier_cuts), -predicted, side="left")
    customers = pd.DataFrame(
        {
            "customer_id": [f"c{i}" for i in range(rows)],
            "probability_alive": rng.random(rows),
            "expected_purchases": rng.gamma(1.0, 2.0, size=rows),
            "predicted_clv": predicted,
            "historical_clv": rng.normal(10.0, 20.0, size=rows),
            "tier": np.array(SCORER.tier_names)[position],
            "action": np.array(SCORER.tier_actions)[position],
            "dert": rng.gamma(2.0, 3.0, size=rows),
            "clv_horizon": predicted,
            "clv_lifetime": predicted * 2.5,
            "historical_clv_horizon": rng.normal(5.0, 10.0, size=rows),
            "realised_margin": rng.gamma(2.0, 10.0, size=rows),
            "first_channel": rng.choice(["web", "store", None], size=rows),
        }
    )
    # pandas' means skip missing values; the partials' counts must too.
    customers.loc[[3, 50], "probability_alive"] = np.nan
    return customers


def test_value_summary_by_hand():
    customers = pd.DataFrame(
        {
            "probability_alive": [0.2, np.nan, 0.8, 0.5],
            "expected_purchases": [1.0, 2.0, 3.0, 4.0],
            "predicted_clv": [1.0, 30.0, 8.0, 3.0],
            "historical_clv": [2.0, 10.0, 4.0, 0.0],
            "tier": ["low", "high", "medium", "low"],
            "action": ["nothing", "call", "mail", "nothing"],
            "dert": [1.0, 9.0, 4.0, 2.0],
            "clv_horizon": [1.0, 30.0, 8.0, 3.0],
            "clv_lifetime": [2.0, 50.0, 12.0, 4.0],
            "historical_clv_horizon": [1.0, 6.0, 2.0, -1.0],
            "realised_margin": [3.0, 20.0, 5.0, 1.0],
        }
    )
    summary = value_summary(customers, HISTORICAL, tier_table(customers, SCORER))
    # Like for like, by hand: the horizon pair's means, and realised + lifetime vs the formula.
    company = summary["like_for_like"]["company"]
    assert company["customers"] == 4
    assert company["horizon"] == pytest.approx({"predicted_mean": 10.5, "historical_mean": 2.0, "difference_mean": 8.5})
    assert company["lifetime"] == pytest.approx({"predicted_mean": 7.25 + 17.0, "historical_mean": 4.0,
                                                 "difference_mean": 20.25})
    low = summary["like_for_like"]["by_tier"]["low"]
    assert low["customers"] == 2 and low["lifetime"]["predicted_mean"] == pytest.approx(2.0 + 3.0)
    assert "by_channel" not in summary["like_for_like"]  # no first_channel column
    assert summary["clv_lifetime_total"] == 68.0 and summary["dert_mean"] == 4.0
    assert summary["customers"] == 4 and type(summary["customers"]) is int
    assert summary["predicted_clv_total"] == 42.0
    assert summary["predicted_clv_mean"] == 10.5 and summary["historical_clv_customer_mean"] == 4.0
    assert summary["predicted_minus_historical_mean"] == 6.5
    assert summary["predicted_clv_median"] == 5.5 and summary["historical_clv_customer_median"] == 3.0
    assert summary["predicted_historical_spearman"] == pytest.approx(0.8)
    assert summary["mean_probability_alive"] == pytest.approx(0.5)  # the missing one skipped
    assert summary["expected_purchases_total"] == 10.0
    assert summary["tiers"]["low"] == pytest.approx(
        {"action": "nothing", "n_customers": 2.0, "share_of_customers": 0.5, "total_predicted_clv": 4.0,
         "mean_predicted_clv": 2.0, "share_of_predicted_clv": 4 / 42, "mean_historical_clv": 1.0}
    )


@pytest.mark.parametrize("batches", [1, 3, 7])
def test_value_partials_of_batches_merge_to_the_whole_tables_summary(batches):
    customers = scored_customers()
    whole = value_summary(customers, HISTORICAL, tier_table(customers, SCORER), seed=5)

    tier_partials, partials = [], []
    for rows in random_batches(len(customers), batches, seed=batches):
        batch = customers.iloc[rows]
        partials.append(value_partial(batch))
        tier_frame = batch[["tier", "action"]].assign(
            tier=pd.Categorical(batch["tier"], categories=SCORER.tier_names, ordered=True)
        )
        tier_partials.append(tier_partial(batch["predicted_clv"], tier_frame, batch["historical_clv"]))
    tiers = finish_tier_summary(merge_tier_partials(tier_partials), dict(zip(SCORER.tier_names, SCORER.tier_actions)))
    merged = finish_value_summary(
        merge_partials(partials), value_order_statistics(customers, seed=5), HISTORICAL, tiers
    )

    assert list(merged) == list(whole)
    assert {key: type(value) for key, value in merged.items()} == {key: type(value) for key, value in whole.items()}
    assert merged["customers"] == whole["customers"] == len(customers)
    numbers = {key: value for key, value in whole.items() if isinstance(value, float)}
    assert {key: merged[key] for key in numbers} == pytest.approx(numbers, rel=1e-12)
    assert merged["historical_method"] == whole["historical_method"]
    # The grouped sums merge to the whole table's, tier by tier and channel by channel.
    for kind in ("company", "by_tier", "by_channel"):
        assert json_numbers(merged["like_for_like"][kind]) == pytest.approx(json_numbers(whole["like_for_like"][kind]),
                                                                          rel=1e-12)
    assert set(whole["like_for_like"]["by_channel"]) == {"web", "store", "(none)"}
    assert list(merged["tiers"]) == list(whole["tiers"])
    for name, row in whole["tiers"].items():
        merged_row = dict(merged["tiers"][name])
        assert merged_row.pop("action") == row["action"]
        assert merged_row["n_customers"] == row["n_customers"]
        assert merged_row == pytest.approx({key: value for key, value in row.items() if key != "action"}, rel=1e-12)


def json_numbers(nested) -> dict:
    """A nested dict of numbers flattened to dotted keys (for approx comparisons)."""
    flat = {}
    for key, value in nested.items():
        if isinstance(value, dict):
            flat |= {f"{key}.{inner}": number for inner, number in json_numbers(value).items()}
        else:
            flat[key] = value
    return flat


def test_a_value_partial_of_no_customers_merges_as_the_identity():
    customers = scored_customers()
    partial = value_partial(customers)
    empty = value_partial(customers.iloc[:0])
    assert empty["customers"] == 0 and empty["probability_alive_count"] == 0
    assert partial["probability_alive_count"] == len(customers) - 2
    assert merge_partials([empty, partial]) == partial == merge_partials([partial, empty])
    summary = finish_value_summary(empty, value_order_statistics(customers.iloc[:0]), HISTORICAL, pd.DataFrame())
    assert summary["customers"] == 0 and np.isnan(summary["predicted_clv_mean"])
    assert np.isnan(summary["predicted_clv_median"]) and np.isnan(summary["predicted_historical_spearman"])
