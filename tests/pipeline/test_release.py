"""Release gates: each one can fail, and says with which figure."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from models import BetaGeoModel, GammaGammaModel
from pipeline.config import ReleaseSettings
from pipeline.release import failed_checks, release_checks


@pytest.fixture(scope="module")
def fit(cdnow_sample_calibration_features):
    purchase = BetaGeoModel().fit(cdnow_sample_calibration_features)
    spend = GammaGammaModel().fit(cdnow_sample_calibration_features)
    backtest = {
        "bgnbd": {"purchases_rmse": 1.5, "purchases_total_error_pct": -12.0},
        "historical_baseline": {"purchases_rmse": 2.0, "purchases_total_error_pct": 47.0},
    }
    return SimpleNamespace(purchase_model=purchase, spend_model=spend, backtest=backtest, selected="bgnbd")


VALUE = {"mean_probability_alive": 0.45}


def test_a_sane_fit_passes_every_gate(fit):
    checks = release_checks(fit, VALUE, ReleaseSettings(), "purchases_rmse", clv_total=100.0, champion_clv_total=90.0)
    assert set(checks) == {"purchase_model_converged", "spend_model_converged", "beats_historical_baseline",
                           "holdout_total_purchases_error", "mean_probability_alive", "clv_total_vs_champion"}
    assert failed_checks(checks) == {}


def test_a_parameter_outside_its_bounds_fails_and_is_named(fit):
    # BG/NBD's alpha is 4.41 on the CDNOW sample; Gamma-Gamma's p 6.25, q 3.74, gamma 15.4.
    checks = release_checks(fit, VALUE, ReleaseSettings(parameter_bounds=(1e-6, 10.0)), "purchases_rmse")
    assert checks["purchase_model_converged"].passed
    # Gamma-Gamma's gamma (15.4, in dollars) is beyond 10 but is a currency scale: not bounded.
    assert checks["spend_model_converged"].passed
    tight = release_checks(fit, VALUE, ReleaseSettings(parameter_bounds=(1e-6, 4.0)), "purchases_rmse")
    assert failed_checks(tight)["purchase_model_converged"].startswith("bgnbd: alpha 4.41 outside (1e-06, 4)")
    assert "p 6.25" in failed_checks(tight)["spend_model_converged"]


@pytest.mark.parametrize("error, passed", [(-12.0, True), (29.9, True), (30.1, False), (float("nan"), False)])
def test_holdout_total_error_gate(fit, error, passed):
    moved = SimpleNamespace(**{**vars(fit), "backtest": {
        **fit.backtest, "bgnbd": {**fit.backtest["bgnbd"], "purchases_total_error_pct": error}}})
    check = release_checks(moved, VALUE, ReleaseSettings(), "purchases_rmse")["holdout_total_purchases_error"]
    assert check.passed is passed
    assert "(gate ±30%)" in check.detail


def test_baseline_and_probability_alive_gates(fit):
    worse = SimpleNamespace(**{**vars(fit), "backtest": {
        **fit.backtest, "bgnbd": {**fit.backtest["bgnbd"], "purchases_rmse": 2.5}}})
    assert not release_checks(worse, VALUE, ReleaseSettings(), "purchases_rmse")["beats_historical_baseline"].passed
    for mean, passed in [(0.005, False), (0.5, True), (0.995, False)]:
        check = release_checks(fit, {"mean_probability_alive": mean}, ReleaseSettings(), "purchases_rmse")
        assert check["mean_probability_alive"].passed is passed


@pytest.mark.parametrize("total, champion, passed", [
    (10.0, 100.0, False), (49.0, 100.0, False), (50.0, 100.0, True), (200.0, 100.0, True), (201.0, 100.0, False),
    (10.0, 0.0, True),  # a champion total that is not positive has no ratio to compare
])
def test_clv_ratio_to_the_champion(fit, total, champion, passed):
    checks = release_checks(fit, VALUE, ReleaseSettings(), "purchases_rmse", clv_total=total, champion_clv_total=champion)
    assert checks["clv_total_vs_champion"].passed is passed


def test_gates_switched_off_are_not_checked(fit):
    settings = ReleaseSettings(require_converged=False, beat_baseline=False, max_total_error_pct=None,
                               probability_alive_mean=None, clv_ratio_to_champion=None)
    assert release_checks(fit, VALUE, settings, "purchases_rmse", clv_total=1.0, champion_clv_total=100.0) == {}
