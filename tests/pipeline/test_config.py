from __future__ import annotations

import pytest

from pipeline.config import ConfigError, PeriodSettings, apply_overrides, config_from_dict
from tests.conftest import sample_config


@pytest.mark.parametrize(
    "period, expected",
    [
        (PeriodSettings(), ("D", 7.0)),
        (PeriodSettings(unit="day"), ("D", 1.0)),
        (PeriodSettings.model_validate("W"), ("W", 1.0)),
        (PeriodSettings.model_validate("m"), ("M", 1.0)),
    ],
)
def test_period_maps_to_lifetimes_frequency(period, expected):
    assert period.lifetimes_freq == expected


def test_overrides_parse_yaml_values_and_short_keys():
    raw = apply_overrides({"input": {"path": "x.csv"}}, ["period=W", "seed=7", "features.calibration_end=null"])
    assert raw["features"] == {"period": "W", "calibration_end": None}
    config = config_from_dict(raw)
    assert config.seed == 7
    assert config.features.period.resolution == "calendar"


def test_calibration_must_precede_observation_end():
    with pytest.raises(ConfigError, match="features: calibration_end 1998-01-01 must be before observation_end"):
        config_from_dict(
            {"input": {"path": "x"}, "features": {"calibration_end": "1998-01-01", "observation_end": "1997-01-01"}}
        )


def test_margin_and_cost_are_exclusive():
    with pytest.raises(ConfigError, match="input.columns: give either 'margin' or 'cost'"):
        config_from_dict({"input": {"path": "x", "columns": {"margin": "m", "cost": "c"}}})


def test_sample_config_is_the_published_setup():
    config = sample_config()
    assert str(config.features.calibration_end) == "1997-09-30"
    assert config.input.path == "builtin:CDNOW_sample.txt"


@pytest.mark.parametrize("overrides, message", [
    (["models.covariates=[first_channel]"], "first_channel needs the log's channel column"),
    (["models.covariates=[region]"], "'region' is neither first_channel nor a customer attribute"),
    (["input.customers={path: c.csv, columns: [age]}", "models.covariates=[region]"], r"input.customers.columns \['age'\]"),
    (["input.columns.channel=ch", "models.covariates=[first_channel]", "engine=spark"], "not supported on engine: spark"),
    (["models.covariates=[first_channel, first_channel]", "input.columns.channel=ch"], "must not repeat"),
])
def test_covariates_need_a_source(overrides, message):
    with pytest.raises(ConfigError, match=message):
        sample_config(*overrides)


def test_covariates_from_the_log_and_an_attribute_file_are_accepted():
    config = sample_config("input.columns.channel=ch", "input.customers={path: c.csv, customer_id: id, columns: [age]}",
                           "models.covariates=[first_channel, age]")
    assert config.models.covariates == ["first_channel", "age"]
    assert config.input.customers is not None and config.input.customers.customer_id == "id"


def test_origins_default_to_one_and_refuse_zero():
    assert sample_config().features.origins == 1
    with pytest.raises(ConfigError, match="features.origins: Input should be greater than or equal to 1"):
        sample_config("features.origins=0")


@pytest.mark.parametrize("overrides, days", [
    ([], 273),  # 1997-09-30 to 1998-06-30
    (["features.calibration_end=null", "features.holdout_periods=13"], 91),
    (["features.calibration_end=null", "features.holdout_periods=1.5", "features.period.unit=month"], 46),  # 45.66
    (["features.calibration_end=null"], None),
])
def test_holdout_length_in_days(overrides, days):
    import datetime as dt

    assert sample_config(*overrides).features.holdout_days(dt.date(1998, 6, 30)) == days


def test_origins_do_not_change_the_config_digest():
    from pipeline.config import config_digest

    assert config_digest(sample_config("features.origins=3")) == config_digest(sample_config())
