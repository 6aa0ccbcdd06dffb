from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipeline.stages.backtest import holdout_metrics, select_model, top_share_capture


def small_holdout() -> pd.DataFrame:
    return pd.DataFrame(
        {"frequency_holdout": [0, 1, 3, 0], "revenue_holdout": [0.0, 10.0, 60.0, 0.0]},
        index=pd.Index(["a", "b", "c", "d"], name="customer_id"),
    )


def test_holdout_metrics_by_hand():
    calibration = small_holdout()
    purchases = pd.Series([0.5, 1.0, 2.0, 0.5], index=calibration.index)
    spend = pd.Series([10.0, 12.0, 20.0, 10.0], index=calibration.index)
    metrics = holdout_metrics(calibration, purchases, purchases * spend, spend)
    # errors: +0.5, 0, -1, +0.5
    assert metrics["purchases_mae"] == pytest.approx(0.5)
    assert metrics["purchases_rmse"] == pytest.approx(np.sqrt(1.5 / 4))
    assert metrics["purchases_total_error_pct"] == pytest.approx(0.0)
    # predicted revenue 5, 12, 40, 5 against 0, 10, 60, 0: totals 62 vs 70
    assert metrics["revenue_total_error_pct"] == pytest.approx(100 * (62 - 70) / 70)
    assert metrics["revenue_mae"] == pytest.approx((5 + 2 + 20 + 5) / 4)
    # spend among holdout buyers b (10 per purchase) and c (20): predicted 12 and 20
    assert metrics["spend_mae"] == pytest.approx(1.0)
    assert metrics["spend_customers"] == 2


def test_top_decile_capture():
    actual = np.array([100.0] + [1.0] * 9 + [0.0] * 10)
    predicted = np.arange(20, 0, -1, dtype=float)  # customer 0 ranked first, then 1, ...
    # top 10% of 20 customers = 2: customers 0 and 1 hold 101 of 109
    assert top_share_capture(actual, predicted) == pytest.approx(101 / 109)


def test_select_model_picks_the_lowest_metric_and_says_why():
    metrics = {
        "bgnbd": {"purchases_rmse": 1.2, "purchases_total_error_pct": -3.0},
        "paretonbd": {"purchases_rmse": 1.1, "purchases_total_error_pct": 5.0},
    }
    assert select_model(metrics, "purchases_rmse")[0] == "paretonbd"
    name, reason = select_model(metrics, "total_purchases_error")
    assert name == "bgnbd"
    assert reason.startswith("lowest holdout total_purchases_error (bgnbd 3")


def test_rank_correlation_samples_large_inputs_close_to_the_exact_value():
    from scipy.stats import spearmanr

    from pipeline.stages import backtest

    rng = np.random.default_rng(3)
    first = rng.normal(size=50_000)
    second = first + rng.normal(size=50_000)
    exact = spearmanr(first, second).statistic
    assert backtest.rank_correlation(first, second) == pytest.approx(exact, abs=1e-12)
    original = backtest.RANK_SAMPLE
    backtest.RANK_SAMPLE = 5_000
    try:
        sampled = backtest.rank_correlation(first, second)
        assert sampled != exact and sampled == pytest.approx(exact, abs=0.03)
        assert backtest.rank_correlation(first, second) == sampled  # seeded: same sample every time
    finally:
        backtest.RANK_SAMPLE = original


@pytest.mark.parametrize("share", [0.01, 0.1, 0.37, 1.0])
def test_top_share_capture_equals_a_stable_sort_with_ties_broken_by_position(share):
    rng = np.random.default_rng(11)
    # Few distinct predictions, so the cut falls inside a run of ties.
    predicted = rng.integers(0, 7, size=5_000).astype(float)
    actual = rng.gamma(2.0, 10.0, size=5_000)
    count = max(1, int(round(share * len(actual))))
    reference = actual[np.argsort(-predicted, kind="stable")[:count]].sum() / actual.sum()
    assert top_share_capture(actual, predicted, share) == pytest.approx(reference, rel=1e-12)


def test_the_config_seed_chooses_the_rank_sample(monkeypatch):
    from pipeline.stages import backtest

    monkeypatch.setattr(backtest, "RANK_SAMPLE", 500)
    rng = np.random.default_rng(5)
    actual = rng.poisson(1.0, size=5_000).astype(float)
    calibration = pd.DataFrame({"frequency_holdout": actual, "revenue_holdout": actual * 20.0})
    predicted = pd.Series(actual + rng.normal(size=5_000))

    def spearman(seed):
        return holdout_metrics(calibration, predicted, predicted * 20.0, seed=seed)["purchases_spearman"]

    assert spearman(42) == spearman(42)
    assert spearman(42) != spearman(7)
