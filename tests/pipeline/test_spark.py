"""The Spark engine gives exactly the DuckDB engine's features and the scorer's own scores.

One real local SparkSession for the module (stopped at the end); the references are the
DuckDB engine (features) and ``CustomerValueScorer.score`` run in pandas (scores).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import re

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

pytest.importorskip("pyspark")

from pyspark.sql import functions as F  # noqa: E402

from pipeline import spark as spark_engine  # noqa: E402
from pipeline.config import (  # noqa: E402
    ColumnMap,
    FeatureSettings,
    InputSettings,
    PeriodSettings,
    SparkSettings,
    ValidationSettings,
    config_from_dict,
    load_config,
)
from pipeline.duckdb_engine import compute_features, features_from_config  # noqa: E402
from pipeline.errors import ConfigError, InputDataError  # noqa: E402
from pipeline.stages.features import FEATURE_COLUMNS, resolve_calibration_end  # noqa: E402
from pipeline.stages.fit import fit_purchase_model, fit_spend_model  # noqa: E402
from pipeline.stages.value import SCORE_COLUMNS, build_scorer  # noqa: E402
from tests.conftest import DATA, sample_config  # noqa: E402
from tests.pipeline.test_bad_input import BAD, write_config  # noqa: E402
from tests.pipeline.test_bad_input import CASES as BAD_INPUT_CASES  # noqa: E402

# End to end (runs, Spark, notebooks or servers): `pytest -m "not slow"` skips them.
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def spark():
    session = spark_engine.spark_session(
        SparkSettings(
            master="local[2]",
            app_name="clv-tests",
            conf={"spark.ui.enabled": "false", "spark.sql.shuffle.partitions": "2"},
        )
    )
    yield session
    session.stop()


def assert_same_tables(ours: pa.Table, reference: pa.Table) -> None:
    """Same columns in the same order, same types, same values bit for bit, rows by customer id."""
    assert ours.schema == reference.schema
    key = "customer_id" if "customer_id" in reference.column_names else reference.column_names[0]
    ours, reference = ours.sort_by(key), reference.sort_by(key)
    for name in reference.column_names:
        assert ours.column(name).to_pylist() == reference.column(name).to_pylist(), name


@pytest.fixture(scope="module")
def sample_log(spark):
    """The CDNOW sample read and validated once by Spark (cached), and its DuckDB twin."""
    transactions, log = spark_engine.read_transactions(
        spark, sample_config().input.path, sample_config().input, sample_config().validation
    )
    transactions.cache()
    yield transactions, log
    transactions.unpersist()


def spark_features(transactions, log, settings: FeatureSettings) -> spark_engine.SparkFeatures:
    calibration_end = resolve_calibration_end(settings, log.first_date, log.observation_end)
    full, calibration = spark_engine.features(transactions, settings, log.observation_end, calibration_end)
    return spark_engine.SparkFeatures(
        transactions, full, calibration, spark_engine.repeat_purchases(transactions, settings.period),
        log, log.observation_end, calibration_end,
    )


@pytest.mark.parametrize("overrides", [(), ("period=W",)], ids=["weeks-daily", "weeks-calendar"])
def test_cdnow_sample_features_equal_duckdb(sample_log, overrides):
    config = sample_config(*overrides)
    ours = spark_features(*sample_log, config.features).collect()
    reference = features_from_config(config)
    assert ours.features.num_rows == 2357
    assert_same_tables(ours.features, reference.features)
    assert_same_tables(ours.calibration, reference.calibration)
    assert_same_tables(ours.repeat_purchases, reference.repeat_purchases)
    assert ours.log == reference.log
    assert (ours.observation_end, ours.calibration_end) == (dt.date(1998, 6, 30), dt.date(1997, 9, 30))


# Amounts whose DECIMAL(18, 6) value depends on how the cast rounds: DuckDB rounds x * 1e6 in
# double arithmetic, Spark's own cast would round the decimal string (133.253292, not ...291).
HALFWAY_AMOUNTS = [133.2532915, 525.1309425, 521.0850125, 65.5900485, 0.0000025, 2.0000025]


@pytest.fixture(scope="module")
def rich_log(tmp_path_factory):
    """A Parquet log with every optional column, awkward amounts, NULL and tied channels."""
    rng = np.random.default_rng(8)
    n = 400
    customers = [f"c{i:03d}" for i in rng.integers(0, 60, n)]
    dates = [dt.date(2024, 1, 1) + dt.timedelta(days=int(d)) for d in rng.integers(0, 190, n)]
    amounts = np.round(rng.uniform(0, 300, n), 7)
    amounts[: len(HALFWAY_AMOUNTS)] = HALFWAY_AMOUNTS
    frame = pd.DataFrame(
        {
            "customer_id": customers,
            "date": dates,
            "amount": amounts,
            "cost": np.round(amounts * rng.uniform(0.2, 0.9, n), 7),
            "channel": rng.choice(np.array(["web", "app", "store", None], dtype=object), n),
            "cac": np.where(rng.random(n) < 0.5, np.nan, np.round(rng.uniform(0, 40, n), 2)),
        }
    )
    extra = pd.DataFrame(
        {
            # Same first day, two channels: the name breaks the tie (app). A NULL channel first:
            # skipped (web). Only NULLs: no channel. A negative amount (dropped) and a row after
            # the observation end (ignored).
            "customer_id": ["tie", "tie", "tie", "late", "late", "none", "neg", "neg", "c001"],
            "date": [dt.date(2024, 2, 1), dt.date(2024, 2, 1), dt.date(2024, 3, 1), dt.date(2024, 1, 5),
                     dt.date(2024, 4, 5), dt.date(2024, 3, 3), dt.date(2024, 3, 3), dt.date(2024, 5, 3),
                     dt.date(2024, 9, 1)],
            "amount": [10.0, 20.0, 0.0, 5.5, 6.25, 7.0, -3.0, 4.0, 99.0],
            "cost": [1.0, 2.0, 0.0, 1.5, 1.25, 1.0, 0.0, 1.0, 9.0],
            "channel": ["web", "app", "store", None, "web", None, "store", "web", "app"],
            "cac": [np.nan, 12.0, np.nan, np.nan, np.nan, 3.0, np.nan, np.nan, 1.0],
        }
    )
    path = tmp_path_factory.mktemp("rich") / "log.parquet"
    pq.write_table(pa.Table.from_pandas(pd.concat([frame, extra], ignore_index=True), preserve_index=False), path)
    settings = InputSettings(
        path=str(path),
        columns=ColumnMap(customer_id="customer_id", date="date", amount="amount", cost="cost",
                          channel="channel", acquisition_cost="cac"),
        date_format=None,
    )
    return path, settings


def test_optional_columns_and_halfway_amounts_equal_duckdb(spark, rich_log):
    path, settings = rich_log
    validation = ValidationSettings(negative_amounts="drop")
    # The split dates are given, so one read serves every period setting.
    observation_end, calibration_end = dt.date(2024, 7, 15), dt.date(2024, 4, 30)
    transactions, log = spark_engine.read_transactions(spark, str(path), settings, validation, observation_end)
    assert log.negative_amount_rows_dropped == 1 and log.rows_after_observation_end == 1
    for resolution in ["calendar", "daily"]:
        period = PeriodSettings(unit="month", resolution=resolution)
        features = FeatureSettings(period=period, observation_end=observation_end, calibration_end=calibration_end)
        reference = compute_features(path, settings, features, validation)
        full, calibration = spark_engine.features(
            transactions, features, observation_end, calibration_end,
            with_margin=True, with_channel=True, with_acquisition_cost=True,
        )
        ours = spark_engine.SparkFeatures(
            transactions, full, calibration, spark_engine.repeat_purchases(transactions, period),
            log, observation_end, calibration_end,
        ).collect()
        assert {"total_margin", "first_channel", "acquisition_cost"} <= set(ours.features.column_names)
        assert_same_tables(ours.features, reference.features)
        assert_same_tables(ours.calibration, reference.calibration)
        assert_same_tables(ours.repeat_purchases, reference.repeat_purchases)
        assert ours.log == reference.log
    channels = dict(zip(*ours.features.select(["customer_id", "first_channel"]).to_pydict().values()))
    assert (channels["tie"], channels["late"], channels["none"]) == ("app", "web", None)


@pytest.fixture(scope="module")
def fitted(sample_log):
    """BG/NBD and Gamma-Gamma fitted on the DuckDB features of the whole sample, the scorer, and
    the same features from Spark (cached)."""
    config = sample_config("models.purchase.candidates=[bgnbd]")
    full = features_from_config(config).features_frame()
    purchase = fit_purchase_model("bgnbd", full, config.models)
    spend = fit_spend_model(full, config.models)
    scorer = build_scorer(full, purchase, "bgnbd", spend, config.value, config.segments, config.features.period)[0]
    ours = spark_features(*sample_log, config.features).features.cache()
    yield config, full, purchase, spend, scorer, ours
    ours.unpersist()


def test_fit_on_collected_statistics_is_bit_identical(fitted):
    config, full, purchase, spend, _, ours = fitted
    statistics = spark_engine.unique_statistics(ours)
    assert statistics["customers"].sum() == len(full)
    assert len(statistics) == len(full[["frequency", "recency", "T"]].drop_duplicates())
    refitted = fit_purchase_model("bgnbd", spark_engine.purchase_fit_frame(statistics), config.models)
    assert refitted.params_ == purchase.params_
    assert fit_spend_model(spark_engine.spend_fit_frame(ours), config.models).params_ == spend.params_


def test_scores_equal_the_scorer_in_pandas(fitted, tmp_path):
    _, full, _, _, scorer, ours = fitted
    reference = full[FEATURE_COLUMNS].join(scorer.score(full))
    # One partition: one batch holding what the pandas call holds, so every figure is identical.
    out = spark_engine.score(ours.coalesce(1), scorer, tmp_path / "one", constant_columns={"model_version": "7"})
    single = pd.read_parquet(out)
    assert list(single.columns) == ["customer_id", *FEATURE_COLUMNS, *SCORE_COLUMNS, "model_version"]
    assert set(single["model_version"]) == {"7"}
    single = single.drop(columns="model_version").set_index("customer_id").sort_index()
    pd.testing.assert_frame_equal(single, reference, check_exact=True, check_dtype=False)
    assert (single.dtypes.drop(["tier", "action"]) == reference.dtypes.drop(["tier", "action"])).all()

    # Several partitions: customers scored in separate batches.
    scored = pd.read_parquet(spark_engine.score(ours.repartition(3), scorer, tmp_path / "three"))
    scored = scored.set_index("customer_id").sort_index()
    # Every figure is computed row by row (no batch-shaped summation), so the split does not matter.
    pd.testing.assert_frame_equal(scored, reference, check_exact=True, check_dtype=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one", "three"]


def test_a_failed_scoring_leaves_nothing(fitted, tmp_path):
    *_, scorer, ours = fitted
    # Per-channel CACs need a channel the sample does not have: the scorer refuses on the executors.
    broken = dataclasses.replace(scorer, acquisition_cost_per_channel={"web": 10.0})
    with pytest.raises(InputDataError, match=r"per_channel needs a channel"):
        spark_engine.score(ours, broken, tmp_path / "scores")
    assert list(tmp_path.iterdir()) == []


def test_bad_input_is_one_line_naming_file_column_and_value(spark):
    config = config_from_dict(
        {"input": {"path": str(DATA / "bad" / "bad_date.csv")}, "features": {"calibration_end": None}}
    )
    with pytest.raises(InputDataError) as caught:
        spark_engine.features_from_config(spark, config)
    assert str(caught.value) == (
        f"{DATA / 'bad' / 'bad_date.csv'}: column 'date': '2024-13-01' is not a date (format %Y-%m-%d)"
    )


def test_date_formats_read_what_duckdb_reads(spark):
    cases = [
        ("19970101", "%Y%m%d"), ("19971301", "%Y%m%d"), ("2024-1-5", "%Y-%m-%d"), ("2024-01-05", "%Y-%m-%d"),
        ("2024-02-30", "%Y-%m-%d"), ("05/01/2024", "%d/%m/%Y"), ("5.1.24", "%d.%m.%y"), ("29.2.96", "%d.%m.%y"),
        ("1.1.68", "%d.%m.%y"), ("1.1.69", "%d.%m.%y"),
        ("05/Jan/2024:10:11:12", "%d/%b/%Y:%H:%M:%S"), ("2024-01-05T10:11", "%Y-%m-%dT%H:%M"),
        ("2024-01-05 10:11:12", "%Y-%m-%d"), ("2024-01-05 it's", "%Y-%m-%d it's"),
    ]
    parsed = spark.range(1).select(*[spark_engine.parse_date(F.lit(text), fmt) for text, fmt in cases]).head()
    with duckdb.connect() as con:
        expected = [con.execute("SELECT CAST(try_strptime(?, ?) AS DATE)", list(case)).fetchone()[0] for case in cases]
    assert list(parsed) == expected
    assert spark_engine.spark_date_pattern("%Y%m%d") == "yyyyMMdd"
    with pytest.raises(ConfigError, match=r"%Z has no Spark equivalent"):
        spark_engine.spark_date_pattern("%Y-%m-%d %Z")


# Files whose Spark message differs for a reason outside the rules, with Spark's message.
READER_DIFFERENCES = {
    # DuckDB's sniffer finds no well-formed quoting and reads the stray quote as data; a Spark
    # read needs its quote character named ('"', so quoted fields read right), and reads from the
    # open quote to the end of the file as one field. Same rule, same column, another value.
    "unterminated_quote.csv": "column 'date': '2024-01-03,4.00' is not a date (format %Y-%m-%d)",
}


def test_every_bad_file_is_compared():
    assert {path.name for path in BAD.iterdir()} <= {file_name for file_name, _, _ in BAD_INPUT_CASES}


@pytest.mark.parametrize("file_name, sections", [case[:2] for case in BAD_INPUT_CASES],
                         ids=[case[0] + str(i) for i, case in enumerate(BAD_INPUT_CASES)])
def test_every_bad_file_gives_duckdbs_message(spark, tmp_path, file_name, sections):
    """One table of rules, two engines: the same first problem in the same words.

    Spark tracks no line numbers: the DuckDB message without its ", line N" is Spark's.
    """
    config = load_config(write_config(tmp_path, BAD / file_name, **sections))
    with pytest.raises(InputDataError) as on_duckdb:
        features_from_config(config)
    with pytest.raises(InputDataError) as on_spark:
        spark_engine.features_from_config(spark, config)
    if file_name in READER_DIFFERENCES:
        assert str(on_spark.value) == f"{BAD / file_name}: {READER_DIFFERENCES[file_name]}"
        return
    without_line = re.sub(r"[,:] line \d+: ", ": ", str(on_duckdb.value), count=1)
    assert str(on_spark.value) == without_line


def test_future_rows_dropped_and_margins_counted_as_duckdb_does(spark):
    from pipeline.duckdb_engine import features_from_config as duckdb_features

    config = config_from_dict({"input": {"path": str(DATA / "bad" / "future_date.csv")},
                               "features": {"calibration_end": None}, "validation": {"future_dates": "drop"}})
    ours = spark_engine.features_from_config(spark, config).collect()
    reference = duckdb_features(config)
    assert ours.log.future_rows_dropped == reference.log.future_rows_dropped == 1
    assert ours.observation_end == reference.observation_end == dt.date(2024, 2, 3)
    assert ours.log.rows_used == reference.log.rows_used == 3


def test_features_written_by_the_executors_equal_duckdb(sample_log, tmp_path):
    from pipeline.catalog import RunCatalog
    from pipeline.spark.run import write_features

    config = sample_config()
    with RunCatalog.create(tmp_path) as catalog:
        counts = write_features(spark_features(*sample_log, config.features), catalog)
        # Row order is Spark's (no global sort): compared in customer order.
        written = pq.read_table(catalog.path("features.parquet")).sort_by("customer_id")
        calibration = pq.read_table(catalog.path("calibration.parquet")).sort_by("customer_id")
        from_catalog = catalog.features()
    reference = features_from_config(config)
    assert (catalog.final / "features.parquet").is_dir()  # a dataset, not a file the driver wrote
    for ours, theirs in ((written, reference.features), (calibration, reference.calibration)):
        assert ours.column_names == theirs.column_names
        assert ours.column("customer_id").to_pylist() == theirs.column("customer_id").to_pylist()
        for name in theirs.column_names:
            assert ours.column(name).to_pylist() == theirs.column(name).to_pylist(), name
    frequency = reference.features.column("frequency").to_numpy()
    calibration_frequency = reference.calibration.column("frequency").to_numpy()
    assert counts == {
        "customers": reference.features.num_rows, "repeat_customers": int((frequency > 0).sum()),
        "calibration_customers": reference.calibration.num_rows,
        "calibration_repeat_customers": int((calibration_frequency > 0).sum()),
        # The data-quality counts by aggregations: the DuckDB engine's, from its sorted log.
        **reference.quality,
    }
    assert reference.quality["duplicate_rows"] > 0 and reference.quality["zero_amount_rows"] > 0
    assert sorted(from_catalog["frequency"].tolist()) == sorted(frequency.tolist())


def test_order_statistics_on_the_cluster_are_numpys_exactly(spark):
    from pipeline.spark.run import exact_medians, exact_quantiles, values_at_ranks

    rng = np.random.default_rng(11)
    values = np.round(rng.lognormal(size=30_001), 2)  # many ties, odd count
    other = rng.normal(size=30_001)
    table = spark.createDataFrame(pd.DataFrame({"x": values, "y": other})).repartition(3)
    n = len(values)
    ranks = [0, 1, n // 2, n - 3001, n - 1]
    found = values_at_ranks(table, {"x": ranks, "y": ranks[:2]}, n)
    assert found == {"x": {rank: np.sort(values)[rank] for rank in ranks},
                     "y": {rank: np.sort(other)[rank] for rank in ranks[:2]}}
    probabilities = [0.8, 0.5, 0.0, 0.123]
    assert exact_quantiles(table, "x", probabilities, n).tolist() == np.quantile(values, probabilities).tolist()
    assert exact_medians(table, ["x", "y"], n) == {"x": pd.Series(values).median(), "y": pd.Series(other).median()}
    even = spark.createDataFrame(pd.DataFrame({"x": values[:-1]})).repartition(2)
    assert exact_medians(even, ["x"], n - 1) == {"x": pd.Series(values[:-1]).median()}
