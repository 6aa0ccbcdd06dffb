"""Typed settings for every stage: the only module that knows the keys of configs/*.yaml.

Every model forbids unknown keys, so a typo such as ``period.unti`` is an error naming its
key path instead of a silently ignored setting.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from pipeline.errors import ConfigError

BUILTIN_PREFIX = "builtin:"


class _Settings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ColumnMap(_Settings):
    """Names of the transaction log's columns, as they appear in the file."""

    customer_id: str = "customer_id"
    date: str = "date"
    amount: str = "amount"
    margin: str | None = Field(None, description="Per-transaction margin (profit) amount.")
    cost: str | None = Field(None, description="Per-transaction cost; margin = amount - cost.")
    channel: str | None = Field(None, description="Acquisition/sales channel of the transaction.")
    acquisition_cost: str | None = Field(
        None, description="The customer's acquisition cost (CAC), repeated on their rows; the largest is used."
    )

    @model_validator(mode="after")
    def _margin_or_cost(self) -> ColumnMap:
        if self.margin and self.cost:
            raise ValueError("give either 'margin' or 'cost', not both")
        return self


class CustomerAttributes(_Settings):
    """A file with one row per customer whose columns can be covariates (``models.covariates``)."""

    path: str = Field(description="CSV or Parquet file, one row per customer.")
    format: Literal["auto", "csv", "parquet"] = "auto"
    customer_id: str = Field("customer_id", description="The column holding the log's customer ids.")
    columns: list[str] = Field(min_length=1, description="Attribute columns to read.")

    @field_validator("columns")
    @classmethod
    def _distinct(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError("columns must not repeat a column")
        return value


class InputSettings(_Settings):
    """Where the transaction log is and how to read it."""

    path: str = Field(description="File path (CSV, Parquet, whitespace text) or 'builtin:<file>'.")
    format: Literal["auto", "csv", "parquet", "whitespace"] = "auto"
    header: bool = True
    names: list[str] | None = Field(None, description="Column names for a file without header.")
    delimiter: str | None = None
    columns: ColumnMap = ColumnMap()
    date_format: str | None = Field(
        "%Y-%m-%d", description="strptime format of text dates; null for typed date columns."
    )
    customers: CustomerAttributes | None = Field(
        None, description="Per-customer attributes joined by id, for models.covariates."
    )

    @model_validator(mode="after")
    def _names_need_no_header(self) -> InputSettings:
        if self.names is not None and self.header:
            raise ValueError("'names' is for files without a header: set header: false")
        return self


class ValidationSettings(_Settings):
    """What to do with rows that are usable but questionable, and with data too old to trust."""

    negative_amounts: Literal["fail", "drop"] = "fail"
    rows_after_observation_end: Literal["ignore", "fail"] = "ignore"
    future_dates: Literal["fail", "drop"] = Field(
        "fail", description="Rows dated after today (UTC): a typo or a clock error, never a purchase."
    )
    margin_above_amount: Literal["warn", "fail"] = Field(
        "warn", description="Rows whose margin exceeds their amount (or whose cost is negative)."
    )
    max_staleness_days: int | None = Field(
        30, ge=0, description="Most days between the last transaction and the as-of date; null: no limit."
    )
    max_holdout_share: float | None = Field(
        None, gt=0, lt=1,
        description="Longest holdout as a share of the observed history; null: no limit (clv retrain: 0.5).",
    )


TimeUnit = Literal["day", "week", "month"]

# Average days per month, used only for months at daily resolution.
DAYS_PER_MONTH = 365.25 / 12
_DAYS_PER_UNIT = {"day": 1.0, "week": 7.0, "month": DAYS_PER_MONTH}
_SHORTHAND = {"D": "day", "W": "week", "M": "month"}


class PeriodSettings(_Settings):
    """The model's time unit and the resolution at which purchases are counted.

    ``resolution: daily`` counts at most one purchase per day and expresses ages in ``unit``
    (lifetimes' ``freq='D', freq_multiplier=7`` for weeks) — the convention of the published
    CDNOW results. ``resolution: calendar`` counts at most one purchase per calendar period
    (lifetimes' ``freq='W'``: purchases in the same Monday–Sunday week merge).
    """

    unit: TimeUnit = "week"
    resolution: Literal["daily", "calendar"] = "daily"

    @model_validator(mode="before")
    @classmethod
    def _from_shorthand(cls, value: Any) -> Any:
        # 'D', 'W', 'M' mean what they mean to pandas/lifetimes: calendar periods.
        if isinstance(value, str):
            key = value.strip().upper()
            if key not in _SHORTHAND:
                raise ValueError(f"'{value}' is not one of D, W, M (or a mapping with unit/resolution)")
            return {"unit": _SHORTHAND[key], "resolution": "calendar"}
        return value

    @property
    def days_per_unit(self) -> float:
        """Days in one model period (a month counts 365.25 / 12 days), whatever the resolution."""
        return _DAYS_PER_UNIT[self.unit]

    @property
    def index_divisor(self) -> float:
        """What differences of the period index are divided by to be in model periods.

        At daily resolution the index counts days (divide by days per unit); at calendar
        resolution it already counts periods.
        """
        return _DAYS_PER_UNIT[self.unit] if self.resolution == "daily" else 1.0

    @property
    def lifetimes_freq(self) -> tuple[str, float]:
        """The equivalent ``(freq, freq_multiplier)`` of lifetimes' summary helpers."""
        if self.resolution == "daily" or self.unit == "day":
            return "D", _DAYS_PER_UNIT[self.unit]
        return {"week": "W", "month": "M"}[self.unit], 1.0


class FeatureSettings(_Settings):
    """Everything the features stage needs: period, observation and calibration dates."""

    period: PeriodSettings = PeriodSettings()
    observation_end: dt.date | None = Field(None, description="Default: last date in the data.")
    calibration_end: dt.date | None = None
    holdout_periods: float | None = Field(
        None, gt=0, description="Holdout length in periods, instead of calibration_end."
    )
    origins: int = Field(
        1, ge=1,
        description="clv backtest: refit every candidate at this many calibration ends, each one holdout "
        "length before the next (the first is the configured split), and report each metric's mean and "
        "spread; needs calibration_end or holdout_periods when above 1. clv run uses the configured split only.",
    )

    @model_validator(mode="after")
    def _one_split(self) -> FeatureSettings:
        if self.calibration_end is not None and self.holdout_periods is not None:
            raise ValueError("give calibration_end or holdout_periods, not both")
        if (
            self.calibration_end is not None
            and self.observation_end is not None
            and self.calibration_end >= self.observation_end
        ):
            raise ValueError(
                f"calibration_end {self.calibration_end} must be before observation_end {self.observation_end}"
            )
        return self

    def holdout_days(self, observation_end: dt.date) -> int | None:
        """The holdout's length in days ending at ``observation_end`` (None without a holdout):
        ``holdout_periods`` rounded to whole days as the features stage rounds it, or the days
        from ``calibration_end`` to ``observation_end``."""
        if self.holdout_periods is not None:
            return round(self.holdout_periods * self.period.days_per_unit)
        if self.calibration_end is not None:
            return (observation_end - self.calibration_end).days
        return None


PurchaseModelName = Literal["bgnbd", "mbgnbd", "paretonbd"]
SelectionMetric = Literal["purchases_rmse", "purchases_mae", "total_purchases_error", "revenue_rmse", "revenue_mae"]


class PurchaseModelSettings(_Settings):
    """Candidate purchase models; with a holdout the best on ``selection_metric`` is kept."""

    candidates: list[PurchaseModelName] = Field(["bgnbd", "mbgnbd", "paretonbd"], min_length=1)
    penalizer: float = Field(0.0, ge=0)
    tol: float = Field(1e-7, gt=0)
    max_iter: int | dict[PurchaseModelName, int] | None = Field(
        None, description="Optimiser iteration limit, for every candidate or per model; null: lifetimes' default."
    )

    @field_validator("max_iter")
    @classmethod
    def _positive(cls, value: int | dict[str, int] | None) -> int | dict[str, int] | None:
        limits = value.values() if isinstance(value, dict) else [] if value is None else [value]
        if any(limit < 1 for limit in limits):
            raise ValueError("iteration limits must be at least 1")
        return value

    def max_iter_of(self, name: str) -> int | None:
        """The iteration limit of candidate ``name``."""
        if isinstance(self.max_iter, dict):
            return self.max_iter.get(name)  # type: ignore[call-overload]  # a str names a model here
        return self.max_iter

    @field_validator("candidates")
    @classmethod
    def _unique(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError("candidates must not repeat a model")
        return value


class SpendModelSettings(_Settings):
    penalizer: float = Field(0.0, ge=0)
    min_repeat_customers: int = Field(30, ge=2)
    independence_warning_above: float = Field(
        0.3, gt=0, le=1, description="Warn (printed, summary, model card) when the repeat customers' frequency and "
        "mean spend correlate above this in absolute value: Gamma-Gamma assumes they are independent.")


# The covariate the log itself gives: the channel of each customer's first purchase.
FIRST_CHANNEL = "first_channel"


class ModelSettings(_Settings):
    purchase: PurchaseModelSettings = PurchaseModelSettings()
    spend: SpendModelSettings = SpendModelSettings()
    selection_metric: SelectionMetric = "purchases_rmse"
    covariates: list[str] = Field(
        default_factory=list,
        description=(
            "Static covariates of every model: 'first_channel' (needs input.columns.channel) or columns "
            "of input.customers. Each candidate is then fitted with and without them, and the holdout picks."
        ),
    )

    @field_validator("covariates")
    @classmethod
    def _distinct_covariates(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError("covariates must not repeat a column")
        return value


class AcquisitionCostSettings(_Settings):
    """Customer acquisition cost (CAC). A CAC column of the log, when configured, wins."""

    constant: float = Field(0.0, ge=0)
    per_channel: dict[str, float] | None = Field(
        None, description="CAC by the customer's first channel (needs input.columns.channel)."
    )

    @field_validator("per_channel")
    @classmethod
    def _non_negative(cls, value: dict[str, float] | None) -> dict[str, float] | None:
        if value is not None:
            bad = [name for name, cost in value.items() if not cost >= 0]
            if bad:
                raise ValueError(f"costs must be non-negative; check {', '.join(bad)}")
        return value


class IntervalSettings(_Settings):
    """Per-customer and company intervals from the fitted parameters' uncertainty (seeded by ``seed``)."""

    level: float = Field(0.9, gt=0, lt=1, description="Probability between each lower and upper bound.")
    draws: int = Field(
        100, ge=0, le=10_000,
        description="Parameter draws of each model; 0 turns the intervals off (their columns are then empty).",
    )

    @field_validator("draws")
    @classmethod
    def _enough_draws(cls, value: int) -> int:
        if 0 < value < 20:
            raise ValueError("0 (no intervals) or at least 20 draws: fewer cannot place a 90 % bound")
        return value


class ValueSettings(_Settings):
    """Predicted CLV = discounted expected margin over the horizon (or the whole lifetime), minus CAC."""

    horizon: float | Literal["lifetime"] = Field(
        12, description="Months of future the predicted CLV covers, or 'lifetime' (every future purchase, discounted)."
    )
    discount_rate_annual: float = Field(0.10, ge=0, le=1)
    margin_rate: float = Field(
        1.0, gt=0, le=1, description="Margin as a share of revenue where the log gives no margin/cost."
    )
    acquisition_cost: AcquisitionCostSettings = AcquisitionCostSettings()
    churn_inactivity_days: float = Field(
        180, gt=0, description="Historical CLV: a customer inactive this long before the end counts as churned."
    )
    intervals: IntervalSettings = IntervalSettings()

    @model_validator(mode="before")
    @classmethod
    def _horizon_months_is_the_old_name(cls, value: Any) -> Any:
        # Configs written before value.horizon took 'lifetime' name it horizon_months.
        if isinstance(value, dict) and "horizon_months" in value:
            value = dict(value)
            months = value.pop("horizon_months")
            if "horizon" in value and value["horizon"] != months:
                raise ValueError("give value.horizon or its old name horizon_months, not both")
            value["horizon"] = months
        return value

    @field_validator("horizon", mode="before")
    @classmethod
    def _months_in_range(cls, value: Any) -> Any:
        if isinstance(value, str) and value.strip().lower() == "lifetime":
            return "lifetime"
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"a number of months or 'lifetime', got {value!r}")
        if not 0 < value <= 240:
            raise ValueError("horizon: a number of months in (0, 240], or 'lifetime'")
        return float(value)

    @property
    def is_lifetime(self) -> bool:
        return self.horizon == "lifetime"

    @property
    def horizon_months(self) -> float:
        """The horizon in months of the horizon CLV: the configured one, or 12 months beside a
        lifetime value (every run reports a horizon figure to compare like for like)."""
        return 12.0 if isinstance(self.horizon, str) else float(self.horizon)


class TierSettings(_Settings):
    name: str = Field(min_length=1)
    cut: float
    action: str


class SegmentSettings(_Settings):
    """CLV tiers, highest first: with ``quantile`` a cut is a quantile of predicted CLV, with
    ``absolute`` an amount; each customer gets the first tier whose cut it reaches."""

    method: Literal["quantile", "absolute"] = "quantile"
    tiers: list[TierSettings] = Field(
        default_factory=lambda: [
            TierSettings(name="high", cut=0.8, action="loyalty programme, premium support and exclusive offers"),
            TierSettings(name="medium", cut=0.5, action="personalised recommendations and upselling"),
            TierSettings(name="low", cut=0.0, action="automated nurture campaigns"),
        ],
        min_length=1,
    )


class ReleaseSettings(_Settings):
    """Absolute gates a registered version must pass to get the challenger alias (and, in
    ``clv retrain``, to be promoted), whatever the champion does."""

    require_converged: bool = Field(True, description="Fits converged, parameters inside parameter_bounds.")
    parameter_bounds: tuple[float, float] = Field(
        (1e-6, 1e6), description="Every fitted parameter strictly inside; outside means it ran away."
    )
    beat_baseline: bool = Field(True, description="Lower holdout error than the historical-CLV baseline.")
    max_total_error_pct: float | None = Field(
        30.0, gt=0, description="Holdout total purchases error within +-this percentage; null: no gate."
    )
    probability_alive_mean: tuple[float, float] | None = Field(
        (0.01, 0.99), description="Open interval the mean P(alive) must lie in; null: no gate."
    )
    clv_ratio_to_champion: tuple[float, float] | None = Field(
        (0.5, 2.0), description="clv retrain: challenger's CLV total / champion's on the same customers; "
        "null: no gate (or --accept-shift)."
    )

    @field_validator("parameter_bounds", "probability_alive_mean", "clv_ratio_to_champion")
    @classmethod
    def _ordered(cls, value: tuple[float, float] | None) -> tuple[float, float] | None:
        if value is not None and not 0 <= value[0] < value[1]:
            raise ValueError("give [low, high] with 0 <= low < high")
        return value


class MonitorSettings(_Settings):
    """How ``clv retrain`` judges the champion's forecast against what happened since its as-of."""

    alert_error_pct: float | None = Field(
        30.0, gt=0, description="Warn (line and tag) when the realised purchases or revenue miss the "
        "champion's forecast by more than this percentage; null: never."
    )
    min_days: int = Field(7, ge=1, description="Skip the comparison when fewer days have passed.")


class TrackingSettings(_Settings):
    """MLflow tracking and registry. Without a URI: $MLFLOW_TRACKING_URI, else ./mlflow.db."""

    enabled: bool = True
    uri: str | None = None
    experiment: str = "clv"
    registered_model: str = "clv"
    required: bool = Field(
        True, description="If false, an unreachable tracking server is a warning and outputs stay local."
    )


class SparkSettings(_Settings):
    """Where Spark runs when ``engine: spark``: every per-customer step of ``clv run`` and ``clv
    score`` (the README's Spark section says what runs where)."""

    master: str = "local[*]"
    app_name: str = "clv-pipeline"
    conf: dict[str, str] = Field(default_factory=dict, description="Extra spark.* settings.")


class Config(_Settings):
    """A whole run's settings (configs/*.yaml)."""

    input: InputSettings
    validation: ValidationSettings = ValidationSettings()
    features: FeatureSettings = FeatureSettings()
    models: ModelSettings = ModelSettings()
    value: ValueSettings = ValueSettings()
    segments: SegmentSettings = SegmentSettings()
    output_dir: Path = Path("outputs")
    seed: int = 42
    engine: Literal["duckdb", "spark"] = "duckdb"
    release: ReleaseSettings = ReleaseSettings()
    monitor: MonitorSettings = MonitorSettings()
    tracking: TrackingSettings = TrackingSettings()
    spark: SparkSettings = SparkSettings()

    @model_validator(mode="after")
    def _covariates_have_a_source(self) -> Config:
        attributes = self.input.customers.columns if self.input.customers is not None else []
        for name in self.models.covariates:
            if name == FIRST_CHANNEL:
                if self.input.columns.channel is None:
                    raise ValueError("models.covariates: first_channel needs the log's channel column "
                                     "(input.columns.channel)")
            elif name not in attributes:
                where = (f"input.customers.columns {attributes}" if self.input.customers is not None
                         else "no input.customers file is configured")
                raise ValueError(f"models.covariates: '{name}' is neither first_channel nor a customer attribute "
                                 f"({where})")
        if self.models.covariates and self.engine == "spark":
            raise ValueError("models.covariates: not supported on engine: spark yet; run with engine: duckdb")
        return self

    @field_validator("output_dir")
    @classmethod
    def _not_empty(cls, value: Path) -> Path:
        if str(value).strip() in ("", "."):
            raise ValueError("output_dir must name a directory for run outputs")
        return value


def _format_validation_error(error: ValidationError, source: str) -> str:
    parts = []
    for item in error.errors():
        key = ".".join(str(p) for p in item["loc"]) or "<root>"
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            message = "unknown key"
        # A check of the whole config names its keys itself.
        parts.append(message if key == "<root>" else f"{key}: {message}")
    return f"{source}: " + "; ".join(parts)


def _parse_override(text: str) -> tuple[list[str], Any]:
    key, sep, raw_value = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {text!r}: expected KEY=VALUE, e.g. --set period.unit=week")
    try:
        value = yaml.safe_load(raw_value) if raw_value.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {text!r}: value is not valid YAML ({exc.problem})") from None
    return key.strip().split("."), value


# Overrides may name the period the short way, as the issue tracker and lifetimes users do.
_OVERRIDE_ALIASES = {"period": "features.period", "observation_end": "features.observation_end",
                     "calibration_end": "features.calibration_end",
                     "holdout_periods": "features.holdout_periods"}


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Return a copy of ``raw`` with ``a.b.c=value`` overrides applied (values parsed as YAML)."""
    result = _deep_copy(raw)
    for text in overrides:
        path, value = _parse_override(text)
        head = _OVERRIDE_ALIASES.get(path[0])
        if head is not None:
            path = head.split(".") + path[1:]
        node = result
        for part in path[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"--set {text!r}: '{part}' is a value, not a section")
            node = child
        node[path[-1]] = value
    return result


def _deep_copy(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _deep_copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_deep_copy(v) for v in value]
    return value


def packaged_config() -> Path:
    """The default config shipped inside the package (``configs/default.yaml``'s copy): the
    built-in CDNOW run, used from any folder that has no ``configs/default.yaml``."""
    from importlib.resources import files

    return Path(str(files("pipeline").joinpath("default.yaml")))


def merged(raw: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """``raw`` with ``changes`` laid over it section by section (a copy)."""
    result = _deep_copy(raw)
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(result.get(key), dict):
            result[key] = merged(result[key], value)
        else:
            result[key] = _deep_copy(value)
    return result


def load_config(path: str | Path, overrides: list[str] | None = None,
                changes: dict[str, Any] | None = None) -> Config:
    """Read, override and validate a YAML config; errors name the file and key path.

    ``changes``: settings laid over the file before the ``overrides`` (what ``clv run --input``
    detected in a log), so a ``--set`` still wins."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config ({exc.strerror})") from None
    try:
        raw = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}:{where} not valid YAML ({getattr(exc, 'problem', exc)})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of settings at the top level")
    return config_from_dict(apply_overrides(merged(raw, changes or {}), overrides or []), source=str(path))


def config_from_dict(raw: dict[str, Any], source: str = "config") -> Config:
    """Validate a plain dict as a :class:`Config` (the Python API's entry point)."""
    try:
        return Config.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(exc, source)) from None


def resolve_input_path(path: str) -> Path:
    """Turn ``builtin:<file>`` into the data file shipped inside the lifetimes package."""
    if path.startswith(BUILTIN_PREFIX):
        from importlib.resources import files

        name = path[len(BUILTIN_PREFIX):]
        # Read the file through the package, never via lifetimes.datasets, which imports
        # pkg_resources (removed from recent setuptools).
        candidate = Path(str(files("lifetimes").joinpath("datasets", name)))
        if not candidate.is_file():
            raise ConfigError(f"input.path: no built-in dataset '{name}' in lifetimes/datasets")
        return candidate
    return Path(path).expanduser()


def config_digest(config: Config) -> str:
    """Hash of the settings that shape the model (not where outputs, runs or Spark go)."""
    import hashlib

    # features.origins and the spend independence warning say how runs report on the settings,
    # not what a model is.
    data = config.model_dump(mode="json", exclude={"output_dir": True, "tracking": True, "spark": True, "engine": True,
                                                   "release": True, "monitor": True, "features": {"origins"},
                                                   "models": {"spend": {"independence_warning_above"}}})
    return hashlib.sha256(yaml.safe_dump(data, sort_keys=True).encode()).hexdigest()
