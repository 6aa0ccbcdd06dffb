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


def test_rank_correlation_is_spearmans_rho():
    from scipy.stats import spearmanr

    from pipeline.stages import backtest

    rng = np.random.default_rng(3)
    first = rng.normal(size=50_000)
    second = first + rng.normal(size=50_000)
    assert backtest.rank_correlation(first, second) == pytest.approx(spearmanr(first, second).statistic, abs=1e-12)
    assert np.isnan(backtest.rank_correlation(first[:1], second[:1]))
    # Ties (holdout purchases are small counts) and the first column's ranks given by the caller.
    counts = rng.poisson(0.7, size=50_000).astype(float)
    expected = spearmanr(counts, second).statistic
    assert backtest.rank_correlation(counts, second) == pytest.approx(expected, abs=1e-12)
    assert backtest.rank_correlation(counts, second, backtest.ranks(counts)) == pytest.approx(expected, abs=1e-12)


def test_holdout_metrics_are_the_same_with_shared_actuals(cdnow_sample_calibration_features):
    from models import BetaGeoModel
    from pipeline.stages import backtest

    calibration = cdnow_sample_calibration_features
    purchases = BetaGeoModel().fit(calibration).expected_purchases(calibration, 39.0)
    alone = backtest.holdout_metrics(calibration, purchases, purchases * 3.0, seed=7)
    shared = backtest.holdout_metrics(calibration, purchases, purchases * 3.0, seed=7,
                                      actuals=backtest.holdout_actuals(calibration, seed=7))
    assert shared == alone


@pytest.mark.parametrize("ids", [
    np.arange(40_000, dtype=np.int64) * 7 - 100_000,
    np.array([f"C{i:06d}" for i in range(40_000)], dtype=object),
])
def test_rank_sample_is_chosen_by_id_alone(monkeypatch, ids):
    from pipeline.stages import backtest

    monkeypatch.setattr(backtest, "RANK_SAMPLE", 4_000)
    whole = backtest.rank_sample(ids, len(ids), seed=42)
    # About RANK_SAMPLE customers (binomial: sd 60 here).
    assert abs(int(whole.sum()) - 4_000) < 400
    # A batch's mask is the whole mask's rows: engines that see batches draw the same sample.
    rng = np.random.default_rng(0)
    rows = np.sort(rng.choice(len(ids), 9_999, replace=False))
    np.testing.assert_array_equal(backtest.rank_sample(ids[rows], len(ids), seed=42), whole[rows])
    # Reversed order, same customers kept.
    np.testing.assert_array_equal(backtest.rank_sample(ids[::-1], len(ids), seed=42), whole[::-1])
    assert not np.array_equal(backtest.rank_sample(ids, len(ids), seed=7), whole)
    assert backtest.rank_sample(ids, 4_000, seed=42).all()


def test_rank_sample_hashes_integer_ids_by_value_whatever_their_width(monkeypatch):
    from pipeline.stages import backtest

    monkeypatch.setattr(backtest, "RANK_SAMPLE", 100)
    ids = np.arange(-5_000, 5_000)
    np.testing.assert_array_equal(
        backtest.rank_sample(ids.astype(np.int32), len(ids)), backtest.rank_sample(ids.astype(np.int64), len(ids))
    )


def test_order_statistics_of_the_sample_rows_equal_those_of_the_whole_table(monkeypatch):
    """An engine passing only the sampled rows (with the count they came from) gets the whole
    table's figure: what the Spark engine does above RANK_SAMPLE customers."""
    from pipeline.stages import backtest

    monkeypatch.setattr(backtest, "RANK_SAMPLE", 500)
    calibration, purchases, revenue, _ = holdout_with_ties(rows=6_000)
    whole = backtest.holdout_order_statistics(calibration, purchases, revenue, seed=9)
    kept = backtest.rank_sample(calibration.index, len(calibration), seed=9)
    sampled = backtest.holdout_order_statistics(
        calibration[kept], purchases[kept], revenue[kept], seed=9, drawn_from=len(calibration)
    )
    for key in ("purchases_spearman", "revenue_spearman"):
        assert sampled[key] == whole[key]
    exact = backtest.rank_correlation(calibration["frequency_holdout"], purchases)
    assert whole["purchases_spearman"] != exact and whole["purchases_spearman"] == pytest.approx(exact, abs=0.1)


@pytest.mark.parametrize("share", [0.01, 0.1, 0.37, 1.0])
def test_top_share_capture_shares_the_ties_at_the_cut_pro_rata(share):
    rng = np.random.default_rng(11)
    # Few distinct predictions, so the cut falls inside a run of ties.
    predicted = rng.integers(0, 7, size=5_000).astype(float)
    actual = rng.gamma(2.0, 10.0, size=5_000)
    count = max(1, int(round(share * len(actual))))
    # The mean over tie orders: of stable sorts of many shuffles, and in closed form.
    shuffled = [rng.permutation(len(actual)) for _ in range(400)]
    by_order = [actual[rows][np.argsort(-predicted[rows], kind="stable")[:count]].sum() / actual.sum()
                for rows in shuffled]
    cut = np.sort(predicted)[::-1][count - 1]
    above, tied = predicted > cut, predicted == cut
    closed_form = (actual[above].sum() + actual[tied].sum() * (count - above.sum()) / tied.sum()) / actual.sum()
    assert top_share_capture(actual, predicted, share) == pytest.approx(closed_form, rel=1e-12)
    assert top_share_capture(actual, predicted, share) == pytest.approx(np.mean(by_order), abs=3 * np.std(by_order) / 20 + 1e-12)
    # The customers' order does not matter.
    reversed_order = top_share_capture(actual[::-1], predicted[::-1], share)
    assert reversed_order == pytest.approx(top_share_capture(actual, predicted, share), rel=1e-12)


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


def holdout_with_ties(rows: int = 600, seed: int = 4):
    """A holdout with buyers and non-buyers, and predictions with ties (the top decile's cut falls in a run)."""
    rng = np.random.default_rng(seed)
    actual = rng.poisson(0.8, size=rows).astype(float)
    calibration = pd.DataFrame(
        {"frequency_holdout": actual, "revenue_holdout": actual * rng.gamma(2.0, 15.0, size=rows),
         # calibration repeat purchases: about half never repeated, some 7 or more
         "frequency": np.where(rng.random(rows) < 0.5, 0.0, rng.poisson(3.0, size=rows))},
        index=pd.Index([f"c{i}" for i in range(rows)], name="customer_id"),
    )
    purchases = pd.Series(np.round(rng.gamma(1.0, 1.0, size=rows), 1), index=calibration.index)
    spend = pd.Series(rng.gamma(2.0, 20.0, size=rows), index=calibration.index)
    return calibration, purchases, purchases * spend, spend


@pytest.mark.parametrize("batches", [1, 3, 7])
@pytest.mark.parametrize("with_spend", [True, False])
def test_holdout_partials_of_batches_merge_to_the_whole_tables_metrics(batches, with_spend):
    from pipeline.stages.backtest import finish_holdout_metrics, holdout_order_statistics, holdout_partial
    from pipeline.stages.partials import merge_partials
    from tests.conftest import random_batches

    calibration, purchases, revenue, spend = holdout_with_ties()
    spend = spend if with_spend else None
    probability = 1.0 - np.exp(-purchases)
    whole = holdout_metrics(calibration, purchases, revenue, spend, seed=3, predicted_probability=probability)
    partials = []
    for rows in random_batches(len(calibration), batches, seed=batches):
        batch = calibration.iloc[rows]
        # Each batch gets predictions for its own customers only.
        partials.append(holdout_partial(
            batch, purchases.loc[batch.index], revenue.loc[batch.index],
            None if spend is None else spend.loc[batch.index], probability.loc[batch.index],
        ))
    merged = finish_holdout_metrics(
        merge_partials(partials), holdout_order_statistics(calibration, purchases, revenue, seed=3)
    )
    assert list(merged) == list(whole)
    assert all(type(value) is float for value in merged.values())
    for key in ("customers", "spend_customers"):
        assert merged.get(key) == whole.get(key)
    assert merged == pytest.approx(whole, rel=1e-12, nan_ok=True)
    assert ("spend_mae" in whole) is with_spend
    assert {"any_purchase_brier", "holdout_chi_square", "revenue_gini"} <= set(whole)


def test_the_diagnostic_figures_by_definition():
    from scipy.stats import chi2, spearmanr

    from models.diagnostics import normalized_gini

    calibration, purchases, revenue, spend = holdout_with_ties()
    probability = 1.0 - np.exp(-purchases)
    metrics = holdout_metrics(calibration, purchases, revenue, spend, predicted_probability=probability)
    bought = (calibration["frequency_holdout"] > 0).to_numpy()
    assert metrics["any_purchase_rate"] == pytest.approx(bought.mean())
    assert metrics["any_purchase_brier"] == pytest.approx(np.mean((probability.to_numpy() - bought) ** 2))
    # Clipped at 1e-15 (a prediction of 0 rounds some customers' purchases to none).
    clipped = np.clip(probability.to_numpy(), 1e-15, 1 - 1e-15)
    assert metrics["any_purchase_log_loss"] == pytest.approx(
        -np.mean(np.where(bought, np.log(clipped), np.log1p(-clipped))))
    # The holdout's purchases by calibration frequency 0..7+ against the predictions' sums.
    groups = np.minimum(calibration["frequency"], 7)
    actual = calibration["frequency_holdout"].groupby(groups).sum()
    expected = purchases.groupby(groups).sum()
    statistic = float((((actual - expected) ** 2) / expected).sum())
    assert metrics["holdout_chi_square"] == pytest.approx(statistic)
    assert metrics["holdout_chi_square_dof"] == len(expected) == 8
    assert metrics["holdout_chi_square_p_value"] == pytest.approx(chi2.sf(statistic, 8))
    # Spearman with and without the customers who never repeated; the Gini of both predictions.
    repeated = calibration["frequency"] > 0
    assert metrics["purchases_spearman_repeat_customers"] == pytest.approx(
        spearmanr(calibration.loc[repeated, "frequency_holdout"], purchases[repeated])[0], abs=1e-12)
    assert metrics["revenue_spearman_one_time_customers"] == pytest.approx(
        spearmanr(calibration.loc[~repeated, "revenue_holdout"], revenue[~repeated])[0], abs=1e-12)
    assert metrics["one_time_customer_share"] == pytest.approx((~repeated).mean())
    assert metrics["revenue_gini"] == pytest.approx(normalized_gini(revenue, calibration["revenue_holdout"]))
    assert metrics["purchases_gini"] == pytest.approx(normalized_gini(purchases, calibration["frequency_holdout"]))


def test_a_prediction_that_ties_every_one_time_customer_gets_no_spearman_among_them():
    calibration, purchases, revenue, spend = holdout_with_ties()
    tied = purchases.where(calibration["frequency"] > 0, 0.0)
    metrics = holdout_metrics(calibration, tied, tied * spend, spend)
    assert np.isnan(metrics["purchases_spearman_one_time_customers"])
    assert np.isfinite(metrics["purchases_spearman_repeat_customers"])


def test_holdout_tables_cover_every_customer_once():
    from pipeline.stages.backtest import GAINS_POINTS, holdout_tables

    calibration, purchases, revenue, spend = holdout_with_ties()
    tables = holdout_tables(calibration, revenue, 1.0 - np.exp(-purchases))
    deciles, gains, reliability = tables["revenue_deciles"], tables["gains"], tables["reliability"]
    assert deciles["customers"].sum() == reliability["customers"].sum() == len(calibration)
    # Deciles in order of the prediction; their customers' revenue adds up to the holdout's.
    assert deciles["mean_predicted"].is_monotonic_increasing
    assert (deciles["customers"] * deciles["mean_realised"]).sum() == pytest.approx(calibration["revenue_holdout"].sum())
    assert len(gains) == GAINS_POINTS and gains.iloc[0].tolist() == [0.0, 0.0, 0.0]
    assert gains.iloc[-1, 1:].tolist() == pytest.approx([1.0, 1.0])
    assert (gains["best_value_share"] >= gains["value_share"] - 1e-12).all()
    bought = calibration["frequency_holdout"] > 0
    assert (reliability["customers"] * reliability["observed_rate"]).sum() == pytest.approx(bought.sum())
    assert "reliability" not in holdout_tables(calibration, revenue, None)


def test_a_holdout_partial_of_no_customers_merges_as_the_identity():
    from pipeline.stages.backtest import holdout_partial
    from pipeline.stages.partials import merge_partials

    calibration, purchases, revenue, spend = holdout_with_ties()
    partial = holdout_partial(calibration, purchases, revenue, spend)
    empty = holdout_partial(calibration.iloc[:0], purchases.iloc[:0], revenue.iloc[:0], spend.iloc[:0])
    assert empty["customers"] == 0 and empty["spend_customers"] == 0

    def same(first, second):  # the by-frequency sums are arrays
        return first.keys() == second.keys() and all(np.array_equal(first[k], second[k]) for k in first)

    assert same(merge_partials([empty, partial]), partial)
    assert same(merge_partials([partial, empty]), partial)
    with pytest.raises(ValueError, match="different keys"):
        merge_partials([partial, holdout_partial(calibration, purchases, revenue)])


def test_holdout_metrics_of_no_customers_are_nan_not_errors():
    calibration, purchases, revenue, spend = holdout_with_ties()
    metrics = holdout_metrics(calibration.iloc[:0], purchases, revenue, spend)
    assert metrics["customers"] == 0.0 and metrics["spend_customers"] == 0.0
    assert np.isnan(metrics["purchases_mae"]) and np.isnan(metrics["spend_rmse"])
    assert np.isnan(metrics["top_decile_revenue_capture"])


def test_top_share_capture_from_a_thresholds_sums():
    from pipeline.stages.backtest import (
        revenue_at_threshold,
        top_share_capture_from_sums,
        top_share_count,
    )
    from pipeline.stages.partials import merge_partials
    from tests.conftest import random_batches

    rng = np.random.default_rng(8)
    actual = rng.gamma(2.0, 10.0, size=1_000)
    distinct = rng.permutation(1_000).astype(float)  # no ties
    count = top_share_count(len(actual))
    threshold = np.sort(distinct)[-count]
    sums = merge_partials(
        revenue_at_threshold(actual[rows], distinct[rows], threshold) for rows in random_batches(1_000, 7, seed=1)
    )
    assert sums["above_customers"] == count - 1 and sums["tied_customers"] == 1
    assert top_share_capture_from_sums(sums, len(actual), actual.sum()) == pytest.approx(
        top_share_capture(actual, distinct), rel=1e-12
    )

    # Ties at the cut: 100 customers over the threshold, 2 more needed from 4 tied ones, taken pro rata.
    predicted = np.r_[np.full(100, 5.0), np.full(4, 3.0), np.zeros(916)]
    actual = np.r_[np.ones(100), [8.0, 0.0, 0.0, 0.0], np.ones(916)]
    sums = revenue_at_threshold(actual, predicted, 3.0)
    assert top_share_count(1_020) == 102
    assert top_share_capture_from_sums(sums, 1_020, actual.sum()) == pytest.approx((100 + 8 * 2 / 4) / 1_024)
    # The same on the full columns, whichever tied customer comes first.
    assert top_share_capture(actual, predicted) == pytest.approx((100 + 8 * 2 / 4) / 1_024)
    # An approximate threshold below the cut: everyone above it counts, however many.
    assert top_share_capture_from_sums(revenue_at_threshold(actual, predicted, 2.0), 1_020, actual.sum()) == (
        pytest.approx(108 / 1_024)
    )


def test_each_candidate_gets_its_calibration_histograms_chi_square(cdnow_sample_calibration_features):
    from models import BetaGeoModel, group_histories
    from models.diagnostics import chi_square_test, observed_purchase_counts, purchase_count_distribution
    from pipeline.stages.backtest import GOODNESS_OF_FIT_KEYS, goodness_of_fit

    calibration = cdnow_sample_calibration_features
    histories = group_histories(calibration[["frequency", "recency", "T"]])
    model = BetaGeoModel().fit(histories)
    figures = goodness_of_fit(model, histories)
    assert list(figures) == list(GOODNESS_OF_FIT_KEYS)
    by_customer = chi_square_test(observed_purchase_counts(calibration["frequency"]),
                                  purchase_count_distribution(model, calibration["T"]), 4)
    assert figures["calibration_chi_square"] == pytest.approx(by_customer.statistic, rel=1e-9)
    assert figures["calibration_chi_square_dof"] == 3 and 0 <= figures["calibration_chi_square_p_value"] <= 1
    with_covariates = BetaGeoModel(covariates=["web"]).fit(
        calibration.assign(web=(np.arange(len(calibration)) % 2).astype(float)))
    assert all(np.isnan(v) for v in goodness_of_fit(with_covariates, histories).values())


def test_every_candidate_and_the_baseline_get_the_diagnostics(cdnow_sample_calibration_features):
    from pipeline.config import ModelSettings
    from pipeline.stages.fit import backtest_candidates, fit_models, group_customers

    calibration = cdnow_sample_calibration_features
    settings = ModelSettings()
    histories = group_customers(calibration)
    backtest = backtest_candidates(calibration, fit_models(calibration, settings, histories=histories), settings,
                                   histories=histories)
    horizon = float(calibration["duration_holdout"].iloc[0])
    for name, row in backtest.metrics.items():
        for key in ("any_purchase_brier", "any_purchase_log_loss", "revenue_gini", "purchases_spearman_repeat_customers"):
            assert np.isfinite(row[key]), (name, key)
        tables = backtest.tables[name]
        assert {"revenue_deciles", "gains", "reliability"} <= set(tables)
        if name != "historical_baseline":
            # The probability scored is the model's own P(no purchase in the holdout), complemented.
            model = backtest.fitted.purchase[name]
            probability = 1.0 - model.probability_of_purchases(calibration, 0, horizon)
            bought = calibration["frequency_holdout"] > 0
            assert row["any_purchase_brier"] == pytest.approx(float(((probability - bought) ** 2).mean()), rel=1e-9)
            assert "calibration_histogram" in tables and np.isfinite(row["calibration_chi_square"])
    # The baseline says customers who never repeated never will: some of them did.
    assert backtest.metrics["historical_baseline"]["holdout_chi_square"] == np.inf
    assert all(backtest.metrics[name]["any_purchase_log_loss"] < backtest.metrics["historical_baseline"]["any_purchase_log_loss"]
               for name in backtest.fitted.purchase)
