"""The ``clv`` command: one thin command per stage; user errors become one-line messages."""

from __future__ import annotations

import functools
import os
import sys


def _lean_memory_settings() -> None:
    """Memory settings for big runs; a user's own environment settings win.

    numpy asks the kernel for transparent huge pages on large arrays. On the 2-core VMs this
    runs on, first-touching them took twice as long as ordinary pages (0.19 vs 0.08 s per
    80 MB), and a run at 50M rows touches gigabytes: the features stage went 2.6 → 1.3 s at
    10M rows.

    Arrow's default pool (mimalloc) keeps what it frees for reuse: a run at 18M customers
    passes several gigabyte-sized tables through it (the sorted log, the features, the
    customers export), and the retained pages sat on top of the live data at the memory
    peak (4.8 GB against 3.8 GB with the system allocator, which returns large blocks at
    once; no slower).

    Both libraries read these variables when imported. When something imported them first (a
    caller embedding the CLI), the same settings are made at run time, but only partly: Arrow's
    C++ readers keep the pool chosen at import (at 50M rows, 3.6 GB with pyarrow imported
    first against 3.15 GB), so such a caller should set ``ARROW_DEFAULT_MEMORY_POOL=system``.
    """
    if os.environ.setdefault("NUMPY_MADVISE_HUGEPAGE", "0") == "0" and "numpy" in sys.modules:
        switch = getattr(getattr(sys.modules["numpy"], "_core", None), "multiarray", None)
        if switch is not None and hasattr(switch, "_set_madvise_hugepage"):
            switch._set_madvise_hugepage(False)
    if os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "system") == "system" and "pyarrow" in sys.modules:
        pyarrow = sys.modules["pyarrow"]
        pyarrow.set_memory_pool(pyarrow.system_memory_pool())


_lean_memory_settings()
from pathlib import Path
from typing import Annotated, Any, Callable

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from pipeline.config import Config, load_config
from pipeline.errors import ClvError
from pipeline.process import exit_now

app = typer.Typer(
    help="Predictive customer lifetime value: features, models, value, tracking, scoring.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
# Off a terminal (CI logs, cron mail) rich would wrap tables at 80 columns; 160 keeps rows whole.
console = Console(width=None if sys.stdout.isatty() else 160)
error_console = Console(stderr=True, width=None if sys.stderr.isatty() else 160)

DEFAULT_CONFIG = Path("configs/default.yaml")


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            console.print(f"clv {version('clv-pipeline')}", highlight=False)
        except PackageNotFoundError:  # run from a source tree that was never installed
            console.print("clv (not installed: no version)", highlight=False)
        raise typer.Exit()


@app.callback()
def _options(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    """Predictive customer lifetime value: features, models, value, tracking, scoring."""


def _warnings_as_lines() -> None:
    """Our own warnings (data quality, local-only tracking) as one ``warning:`` line each, not
    Python's two-line file-and-source format; every other warning as Python prints it. Called
    inside a command's ``catch_warnings``, which restores the caller's settings afterwards."""
    import warnings

    from pipeline.errors import DataQualityWarning

    python_format = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, DataQualityWarning) or filename.startswith(str(Path(__file__).parent)):
            error_console.print(f"[yellow]warning:[/] {message}", highlight=False, soft_wrap=True)
        else:
            python_format(message, category, filename, lineno, file, line)

    warnings.showwarning = show
    warnings.simplefilter("always", DataQualityWarning)

ConfigOption = Annotated[Path, typer.Option("--config", "-c", help="YAML config file.")]
SetOption = Annotated[
    list[str] | None,
    typer.Option("--set", "-s", help="Override one key, e.g. --set features.period=W (repeatable)."),
]
RunDirOption = Annotated[
    Path | None, typer.Option("--run-dir", help="Existing run directory to read from (default: latest).")
]
DebugOption = Annotated[bool, typer.Option("--debug", help="Show tracebacks for errors.")]


def user_errors(command: Callable[..., Any]) -> Callable[..., Any]:
    """Print a ClvError as one line on stderr and exit with its code (tracebacks with --debug)."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        import warnings

        try:
            with warnings.catch_warnings():
                _warnings_as_lines()
                return command(*args, **kwargs)
        except ClvError as exc:
            if kwargs.get("debug"):
                raise
            error_console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            error_console.print("interrupted: nothing was written for the unfinished step")
            raise typer.Exit(130) from None

    return wrapper


def _config_file(config: Path) -> Path:
    """The config to read: the one given, or with none given and no ``configs/default.yaml``
    here, the packaged default (the built-in CDNOW run), so ``clv`` works from any folder."""
    if config == DEFAULT_CONFIG and not config.exists():
        from pipeline.config import packaged_config

        return packaged_config()
    return config


def _load(config: Path, overrides: list[str] | None, changes: dict[str, Any] | None = None) -> Config:
    return load_config(_config_file(config), overrides or [], changes)


InputOption = Annotated[Path | None, typer.Option(
    "--input", "-i", help="Your own log (CSV, Parquet or a folder of them, whitespace text): columns and date "
    "format are recognised, no config needed.")]
CustomerColumnOption = Annotated[str | None, typer.Option("--customer-col", help="With --input: the customer id column.")]
DateColumnOption = Annotated[str | None, typer.Option("--date-col", help="With --input: the date column.")]
AmountColumnOption = Annotated[str | None, typer.Option("--amount-col", help="With --input: the amount column.")]
MarginColumnOption = Annotated[str | None, typer.Option("--margin-col", help="With --input: a margin column.")]
CostColumnOption = Annotated[str | None, typer.Option("--cost-col", help="With --input: a cost column.")]
ChannelColumnOption = Annotated[str | None, typer.Option("--channel-col", help="With --input: a channel column.")]
DateFormatOption = Annotated[str | None, typer.Option(
    "--date-format", help="With --input: strptime format of text dates, e.g. '%d/%m/%Y'.")]


def _detect(path: Path, customer: str | None, date: str | None, amount: str | None, margin: str | None,
            cost: str | None, channel: str | None, date_format: str | None, period: Any) -> Any:
    """What ``path`` holds (``pipeline.input_detection``), its holdout in ``period``'s unit, said
    line by line."""
    from pipeline.input_detection import detect_input

    given = {"customer_id": customer, "date": date, "amount": amount, "margin": margin, "cost": cost,
             "channel": channel}
    detected = detect_input(path, given, date_format, period.days_per_unit, period.unit)
    for note in detected.notes:
        console.print(f"[dim]input[/] {escape(note)}", highlight=False)
    return detected


def _summary_table(title: str, rows: dict[str, Any]) -> Table:
    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    for key, value in rows.items():
        table.add_row(key.replace("_", " "), "—" if value is None else f"{value:,}" if isinstance(value, int) else str(value))
    return table


def _progress(callback, message: str) -> None:
    if callback is not None:
        callback(message)


class StepProgress:
    """Progress on a terminal: the current step with a spinner and its elapsed time, and each
    finished step left as a line with the time it took (Rich). Call it with each step's
    message; :meth:`close` (also at exit) ends the display."""

    def __init__(self) -> None:
        import atexit

        from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        self._display = Progress(SpinnerColumn(), TextColumn("[dim]{task.description}[/]"), TimeElapsedColumn(),
                                 console=error_console, transient=True)
        self._task: Any = None
        self._message = ""
        self._started = 0.0
        # At exit after an error: the display ends without ticking off the step that failed.
        atexit.register(self.close, finished=False)

    def _finish_step(self, finished: bool = True) -> None:
        import time

        if self._task is not None:
            self._display.remove_task(self._task)
            elapsed = time.monotonic() - self._started
            if finished:
                error_console.print(f"[dim]✓ {escape(self._message)} ({elapsed:.1f} s)[/]", highlight=False)
            self._task = None

    def __call__(self, message: str) -> None:
        import time

        if not self._display.live.is_started:
            self._display.start()
        self._finish_step()
        self._message, self._started = message, time.monotonic()
        self._task = self._display.add_task(escape(message), total=None)

    def close(self, finished: bool = True) -> None:
        """End the display; ``finished``: the current step is done (ticked off with its time)."""
        self._finish_step(finished)
        if self._display.live.is_started:
            self._display.stop()


def _progress_printer(quiet: bool = False):
    """A progress callback: nothing with ``--quiet``; on a terminal a live display
    (:class:`StepProgress`); elsewhere (logs, cron mail, the benchmarks) one dimmed line per step."""
    if quiet:
        return None
    if error_console.is_terminal:
        return StepProgress()
    return lambda message: error_console.print(f"[dim]… {message}[/]", highlight=False)


def _close(progress: Any) -> None:
    """End a live progress display before the report is printed."""
    if isinstance(progress, StepProgress):
        progress.close()


def _print_data_quality(report: dict[str, Any] | None) -> None:
    """The data-quality table (pipeline.stages.data_quality): counts, shares, ⚠ above a threshold."""
    if not report:
        return
    table = Table(title=f"Data quality ({report['first_date']} to {report['last_date']})", title_justify="left")
    for column, justify in (("check", "left"), ("count", "right"), ("share", "right"), ("warn above", "right")):
        table.add_column(column, justify=justify)
    for row in report["rows"]:
        share = "" if row["share"] is None else f"{row['share']:.1%} of {row['of']}"
        threshold = "" if row["warn_above"] is None else f"{row['warn_above']:.0%}"
        table.add_row(("⚠ " if row["warning"] else "") + row["check"],
                      "—" if row["count"] is None else f"{row['count']:,}", share, threshold)
    console.print(table)


def _money(value: float) -> str:
    return f"{value:,.2f}"


def _print_covariates(covariates: dict[str, Any] | None) -> None:
    """The covariates' coefficients and likelihood-ratio tests, when the run has covariates."""
    if not covariates:
        return
    if covariates["coefficients"]:
        table = Table(title=f"Covariates {covariates['columns']}: coefficients of the final models",
                      title_justify="left")
        for column in ("model", "process", "parameter", "covariate", "coefficient", "s.e.", "z", "p"):
            table.add_column(column, justify="right" if column in ("coefficient", "s.e.", "z", "p") else "left")
        for row in covariates["coefficients"]:
            numbers = [row.get(key) for key in ("coefficient", "standard_error", "z", "p_value")]
            # escape: a design column such as channel[web] would read as Rich markup.
            table.add_row(row["model"], row["process"], row["parameter"], escape(row["covariate"]),
                          *("—" if value is None else f"{value:.4g}" for value in numbers))
        console.print(table)
    else:
        console.print(f"Covariates {covariates['columns']}: the holdout preferred the models without them", highlight=False)
    for name, test in covariates["likelihood_ratio_tests"].items():
        console.print(f"likelihood-ratio test, {name} with vs without covariates (calibration): "
                      f"chi2 {test['statistic']:.2f} on {test['df']:.0f} df, p = {test['p_value']:.3g}", highlight=False)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and value == value  # not None (a NaN in JSON), not NaN


def _count(amount: float) -> str:
    return f"{amount:,.0f}"


def _interval_text(intervals: dict[str, Any] | None, total: str, fmt: Any = None) -> str:
    """`` (90 % interval a – b)`` after a company total, or why there is none."""
    fmt = fmt or _money
    if not intervals:
        return ""
    if "unavailable" in intervals:
        return f" (no interval: {intervals['unavailable']})"
    bounds = intervals[total]
    return f" ({intervals['level']:.0%} interval {fmt(bounds['lower'])} – {fmt(bounds['upper'])})"


def _print_like_for_like(comparisons: dict[str, Any] | None, settings: dict[str, Any]) -> None:
    """Predicted vs historical CLV like for like (means per customer): over the horizon, and over
    a whole lifetime; for the company, each tier and each first channel."""
    if not comparisons:
        return
    horizon = f"{settings['horizon_periods']} {settings['period_unit']}s"
    table = Table(title=f"Predicted vs historical CLV, like for like (means; horizon {horizon})",
                  title_justify="left")
    for column in ("customers", "predicted, horizon", "formula, horizon", "realised + predicted lifetime",
                   "formula, lifespan"):
        table.add_column(column, justify="right")
    table.add_column("", justify="left")
    rows = [("company", comparisons["company"])]
    rows += [(f"tier {name}", figures) for name, figures in comparisons.get("by_tier", {}).items()]
    rows += [(f"channel {name}", figures) for name, figures in comparisons.get("by_channel", {}).items()]
    for label, figures in rows:
        table.add_row(f"{figures['customers']:,}", _money(figures["horizon"]["predicted_mean"]),
                      _money(figures["horizon"]["historical_mean"]), _money(figures["lifetime"]["predicted_mean"]),
                      _money(figures["lifetime"]["historical_mean"]), escape(label))
    console.print(table)


def _print_new_customer(new_customer: dict[str, Any] | None) -> None:
    """A new customer's value at acquisition against its cost (LTV:CAC, payback), and a warning
    line for each group where acquiring does not pay."""
    if not new_customer:
        return
    table = Table(title="A new customer at acquisition: expected value against acquisition cost", title_justify="left")
    for column in ("customers", "first margin", "LTV (horizon)", "LTV (lifetime)", "CAC", "LTV:CAC", "payback"):
        table.add_column(column, justify="right")
    table.add_column("", justify="left")
    for group, row in new_customer["groups"].items():
        ratio = "—" if row["ltv_to_cac"] != row["ltv_to_cac"] else f"{row['ltv_to_cac']:.2f}"
        payback = "never" if row["payback_months"] == float("inf") else f"{row['payback_months']:.1f} months"
        table.add_row(f"{row['customers']:,}", _money(row["first_purchase_margin"]), _money(row["ltv_horizon"]),
                      _money(row["ltv_lifetime"]), _money(row["acquisition_cost"]), ratio, payback, escape(group))
    console.print(table)
    for line in new_customer["warnings"]:
        console.print(f"[bold yellow]warning:[/] {escape(line)}", highlight=False)


# The backtest as two tables: the errors the selection uses, and the diagnostics (issue 20).
BACKTEST_COLUMNS = [
    ("purchases_mae", "MAE purch.", "{:.3f}"), ("purchases_rmse", "RMSE purch.", "{:.3f}"),
    ("purchases_total_error_pct", "total purch. err", "{:+.1f}%"),
    ("revenue_total_error_pct", "total rev. err", "{:+.1f}%"), ("spend_rmse", "RMSE spend", "{:.2f}"),
    ("top_decile_revenue_capture", "top-10% capture", "{:.1%}"),
]
DIAGNOSTIC_COLUMNS = [
    # Pearson's test of the calibration histogram 0..7+ (small p: the model misfits it).
    ("calibration_chi_square", "χ² calib.", "{:.1f}"), ("calibration_chi_square_p_value", "p", "{:.2g}"),
    # The holdout by calibration frequency (Poisson approximation: p is a lower bound).
    ("holdout_chi_square", "χ² holdout", "{:.0f}"),
    # P(at least one purchase in the holdout) against what happened: lower is better.
    ("any_purchase_brier", "Brier", "{:.3f}"), ("any_purchase_log_loss", "log loss", "{:.3f}"),
    ("revenue_gini", "Gini rev.", "{:.3f}"),
    ("purchases_spearman", "Spearman", "{:.3f}"),
    ("purchases_spearman_repeat_customers", "Spearman repeaters", "{:.3f}"),
]


def _metrics_table(title: str, rows: dict[str, dict], columns: list, selected: str) -> Table:
    table = Table(title=title, title_justify="left")
    table.add_column("model")
    for _, label, _ in columns:
        table.add_column(label, justify="right")
    for name, metrics in rows.items():
        table.add_row(name + (" ✓" if name == selected else ""),
                      *[fmt.format(metrics[key]) if _is_number(metrics.get(key)) else "—" for key, _, fmt in columns])
    return table


def _print_backtest(summary: dict[str, Any], selected: str) -> None:
    rows = summary["backtest"]
    console.print(_metrics_table("Backtest on the holdout", rows, BACKTEST_COLUMNS, selected))
    console.print(_metrics_table("Diagnostics: fit, churn calibration, ranking", rows, DIAGNOSTIC_COLUMNS, selected))
    deciles = summary.get("diagnostics", {}).get(selected, {}).get("revenue_deciles")
    if deciles:
        table = Table(title=f"Holdout revenue by decile of prediction ({selected})", title_justify="left")
        for column in ("decile", "customers", "mean predicted", "mean realised"):
            table.add_column(column, justify="right")
        for row in deciles:
            table.add_row(str(row["decile"]), f"{row['customers']:,}", _money(row["mean_predicted"]),
                          _money(row["mean_realised"]))
        console.print(table)


def print_run_summary(summary: dict[str, Any], run_dir: Path) -> None:
    """Predicted vs historical CLV, tiers and the backtest, as the run's closing report."""
    features = summary["features"]
    value = summary["value"]
    model = summary["model"]
    console.print(_summary_table("Features", {
        "customers": features["customers"],
        "repeat customers": features["repeat_customers"],
        "period": f"{features['period_unit']} ({features['period_resolution']} resolution)",
        "observation end": features["observation_end"],
        "calibration end": features["calibration_end"],
    }))
    _print_data_quality(summary.get("data_quality"))
    params = ", ".join(f"{k} {v:.4g}" for k, v in model["purchase_params"].items())
    console.print(_summary_table("Model", {
        "purchase model": f"{model['selected_purchase_model']} ({params})",
        "why": model["selection_reason"],
        **({"skipped candidates": "; ".join(f"{name}: {why}" for name, why in model["failed_candidates"].items())}
           if model.get("failed_candidates") else {}),
        "spend model": "Gamma-Gamma (" + ", ".join(f"{k} {v:.4g}" for k, v in model["spend_params"].items()) + ")",
        "frequency–monetary correlation": f"{model['spend_frequency_monetary_correlation']:.3f} (Gamma-Gamma assumes ≈ 0)",
    }))
    independence = model.get("spend_independence") or {}
    if independence.get("warning"):
        console.print(f"[yellow]warning[/]: {escape(independence['warning'])}", highlight=False)
    _print_covariates(model.get("covariates"))
    settings = summary["value_settings"]
    console.print(_summary_table("CLV: predicted vs historical", {
        "horizon": f"{settings['horizon_periods']} {settings['period_unit']}s, discount {settings['discount_rate_per_period']:.4%} per {settings['period_unit']}",
        "predicted CLV total": _money(value["predicted_clv_total"]) + _interval_text(value.get("intervals"), "predicted_clv_total"),
        "expected purchases total": f"{value['expected_purchases_total']:,.0f}"
                                    + _interval_text(value.get("intervals"), "expected_purchases_total", _count),
        "predicted CLV mean / median": f"{_money(value['predicted_clv_mean'])} / {_money(value['predicted_clv_median'])}",
        "historical CLV (company)": _money(value["historical_clv_company"]),
        "historical CLV per customer mean / median": f"{_money(value['historical_clv_customer_mean'])} / {_money(value['historical_clv_customer_median'])}",
        "predicted − historical (mean)": _money(value["predicted_minus_historical_mean"]),
        "rank correlation predicted vs historical": f"{value['predicted_historical_spearman']:.3f}",
        "historical lifespan": f"{value['historical_lifespan_years']:.2f} years (churn {value['historical_churn_rate_annual']:.2f}/year)",
        "mean P(alive)": f"{value['mean_probability_alive']:.3f}",
    }))
    _print_like_for_like(value.get("like_for_like"), settings)
    _print_new_customer(value.get("new_customer"))
    tiers = Table(title="Tiers", title_justify="left")
    for column in ("tier", "customers", "share", "share of CLV", "mean CLV", "mean historical", "action"):
        tiers.add_column(column, overflow="fold")
    for name, row in value["tiers"].items():
        tiers.add_row(
            name, f"{int(row['n_customers']):,}", f"{row['share_of_customers']:.1%}",
            f"{row['share_of_predicted_clv']:.1%}", _money(row["mean_predicted_clv"]),
            _money(row["mean_historical_clv"]), row["action"],
        )
    console.print(tiers)
    if summary["backtest"]:
        _print_backtest(summary, model["selected_purchase_model"])
    console.print(f"outputs: [bold]{run_dir}[/] (customers.parquet, summary.json, model_card.md, plots/)",
                  highlight=False)


@app.command()
@user_errors
def features(config: ConfigOption = DEFAULT_CONFIG, set_: SetOption = None, debug: DebugOption = False) -> None:
    """Compute per-customer RFM features (and the calibration/holdout split) into a new run directory."""
    from pipeline import tracking
    from pipeline.runner import features_alone

    settings = _load(config, set_)
    with tracking.tracked_run(settings, "features", config_path=config) as tracker:
        directory, summary = features_alone(settings, settings.output_dir)
        if tracker:
            tracker.log_config()
            tracker.log_features(summary)
            tracker.log_outputs(directory)
    console.print(_summary_table("Features", summary))


def _run_stage_alone(config: Path, overrides: list[str] | None, run_dir: Path | None, kind: str, stage, log):
    """A stage on a finished run (staged, swapped in whole on success), as its own MLflow run;
    ``log(tracker, outputs, directory)`` logs it."""
    from pipeline import tracking
    from pipeline.catalog import RunCatalog

    settings = _load(config, overrides)
    run = RunCatalog.previous(settings.output_dir, run_dir)
    with tracking.tracked_run(settings, kind, config_path=config) as tracker:
        progress = _progress_printer()
        outputs = stage(settings, run, progress=progress)
        _close(progress)
        if tracker:
            tracker.log_config()
            log(tracker, outputs, run.directory)
    return outputs, run.directory


@app.command()
@user_errors
def fit(
    config: ConfigOption = DEFAULT_CONFIG, set_: SetOption = None, run_dir: RunDirOption = None, debug: DebugOption = False
) -> None:
    """Backtest the candidate purchase models, select one and fit it with Gamma-Gamma (reads a features run)."""
    from pipeline.runner import fit_alone

    def log(tracker, outputs, _):
        tracker.log_fit(outputs)

    outputs, directory = _run_stage_alone(config, set_, run_dir, "fit", fit_alone, log)
    console.print(f"selected {outputs.selected}: {outputs.selection_reason}; models in {directory / 'model'}")


@app.command()
@user_errors
def value(
    config: ConfigOption = DEFAULT_CONFIG, set_: SetOption = None, run_dir: RunDirOption = None, debug: DebugOption = False
) -> None:
    """Value every customer with the fitted models: CLV, churn, historical CLV, tiers (reads a fit run)."""
    from pipeline.catalog import CUSTOMERS_FILE
    from pipeline.runner import value_alone

    def log(tracker, outputs, directory):
        tracker.log_value(outputs.summary)
        tracker.log_outputs(directory)

    outputs, directory = _run_stage_alone(config, set_, run_dir, "value", value_alone, log)
    console.print(f"valued {outputs.summary['customers']:,} customers into {directory / CUSTOMERS_FILE}")


@app.command()
@user_errors
def report(
    config: ConfigOption = DEFAULT_CONFIG, set_: SetOption = None, run_dir: RunDirOption = None, debug: DebugOption = False
) -> None:
    """Draw the plots and write summary.json for a run (reads its fit and value outputs; changes neither)."""
    from pipeline.runner import report_alone

    summary, directory = _run_stage_alone(
        config, set_, run_dir, "report", report_alone, lambda tracker, _, d: tracker.log_outputs(d)
    )
    print_run_summary(summary, directory)


@app.command()
@user_errors
def run(
    config: ConfigOption = DEFAULT_CONFIG,
    set_: SetOption = None,
    input_: InputOption = None,
    customer_col: CustomerColumnOption = None,
    date_col: DateColumnOption = None,
    amount_col: AmountColumnOption = None,
    margin_col: MarginColumnOption = None,
    cost_col: CostColumnOption = None,
    channel_col: ChannelColumnOption = None,
    date_format: DateFormatOption = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress lines.")] = False,
    debug: DebugOption = False,
) -> None:
    """Run the whole pipeline (features → fit → value → report) on the configured log, or on --input."""
    from pipeline.catalog import RunCatalog
    from pipeline.release import release_checks
    from pipeline.runner import run_pipeline
    from pipeline.tracking.background import background_run

    detected = None if input_ is None else _detect(input_, customer_col, date_col, amount_col, margin_col, cost_col,
                                                   channel_col, date_format, _load(config, set_).features.period)
    settings = _load(config, set_, None if detected is None else detected.overrides())
    progress = _progress_printer(quiet)
    # MLflow works in a process of its own beside the run (see pipeline.tracking.background); an
    # unreachable server is found before any work, a store it cannot use at the next step.
    with background_run(settings, "pipeline", config_path=config) as tracker:

        def progress_and_tracking(message: str) -> None:
            if tracker:
                tracker.check()
            _progress(progress, message)

        with RunCatalog.create(settings.output_dir) as catalog:
            result = run_pipeline(
                settings, catalog, progress=progress_and_tracking,
                on_fit=tracker.log_fit if tracker else None, on_scorer=tracker.log_model if tracker else None,
            )
            if tracker:
                tracker.wait_until_started()  # a store found unusable only now still leaves nothing behind
        run_dir = catalog.final
        registered = None
        if tracker:
            _progress(progress, "logging to MLflow")
            value = result.summary["value"]
            checks = release_checks(result.fit, value, settings.release, settings.models.selection_metric,
                                    clv_total=value["predicted_clv_total"])
            tracker.send_finish(run_dir, result.summary, checks)
        # Printed while the tracking process finishes the MLflow run.
        _close(progress)
        print_run_summary(result.summary, run_dir)
        if tracker:
            registered = tracker.finish()
    if registered:
        failed = [k for k, ok in registered["checks"].items() if not ok]
        status = "alias challenger" if not failed else "no alias: failed " + ", ".join(failed)
        console.print(
            f"MLflow run [bold]{tracker.run_id}[/] → registered [bold]{registered['name']}[/] version "
            f"{registered['version']} ({status}); promote with `clv promote {registered['version']}`",
            highlight=False,
        )


# The backtest figures shown per origin and in the stability table (when the rows have them);
# every other metric is in backtest_origins.json/.csv and MLflow. The selection metric comes first.
_ORIGIN_COLUMNS = {
    "purchases_rmse": "RMSE purch.", "purchases_mae": "MAE purch.", "purchases_total_error_pct": "total purch. err %",
    "revenue_rmse": "RMSE rev.", "any_purchase_brier": "Brier", "revenue_gini": "Gini rev.",
    "purchases_spearman": "Spearman", "purchases_spearman_repeat_customers": "Spearman repeaters",
    "top_decile_revenue_capture": "top-10% capture",
}


def _figure(value: Any) -> str:
    return f"{value:.4g}" if _is_number(value) else "—"


def _origin_columns(summary: dict[str, Any]) -> list[str]:
    """The shown metric keys: the selection metric's, then the others the rows have."""
    from pipeline.stages.backtest import SELECTION_KEYS

    present = {metric for origin in summary["origins"] for row in origin["metrics"].values() for metric in row}
    first = SELECTION_KEYS[summary["selection_metric"]]
    return [first] + [key for key in _ORIGIN_COLUMNS if key != first and key in present]


def print_backtest_origins(summary: dict[str, Any], run_dir: Path) -> None:
    """Each origin's backtest (short), then each model's mean ± sd per metric and its wins."""
    keys = _origin_columns(summary)
    if summary.get("note"):
        console.print(f"[yellow]note[/]: {escape(summary['note'])}", highlight=False)
    for origin in summary["origins"]:
        table = Table(title=f"Origin {origin['origin']}: calibration to {origin['calibration_end']}, holdout to "
                            f"{origin['observation_end']} ({origin['calibration_customers']:,} customers)",
                      title_justify="left")
        table.add_column("model")
        for key in keys:
            table.add_column(_ORIGIN_COLUMNS.get(key, key), justify="right")
        for name, metrics in origin["metrics"].items():
            table.add_row(name + (" ✓" if name == origin["selected"] else ""), *[_figure(metrics.get(k)) for k in keys])
        console.print(table)
        for name, why in origin.get("failed_candidates", {}).items():
            console.print(f"[yellow]skipped[/] {name}: {escape(why)}", highlight=False)
    count = len(summary["origins"])
    table = Table(title=f"Stability over {count} origins: mean ± sd (wins on {summary['selection_metric']})",
                  title_justify="left")
    table.add_column("model")
    table.add_column("wins", justify="right")
    for key in keys:
        table.add_column(_ORIGIN_COLUMNS.get(key, key), justify="right")
    for name, metrics in summary["stability"].items():
        cells = []
        for key in keys:
            figures = metrics.get(key)
            if figures is None or figures["mean"] is None:
                cells.append("—")
            else:
                spread = "" if figures["sd"] is None else f" ± {figures['sd']:.2g}"
                cells.append(_figure(figures["mean"]) + spread)
        wins = summary["wins"].get(name)
        table.add_row(name, "—" if wins is None else f"{wins}/{count}", *cells)
    console.print(table)
    console.print(f"report in {run_dir}", highlight=False)


@app.command()
@user_errors
def backtest(
    config: ConfigOption = DEFAULT_CONFIG,
    set_: SetOption = None,
    origins: Annotated[int | None, typer.Option(
        "--origins", "-k", help="Calibration ends to backtest at, one holdout apart (default: features.origins).",
    )] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress lines.")] = False,
    debug: DebugOption = False,
) -> None:
    """Backtest every candidate at several calibration ends: each metric's mean and spread, and how often each model wins."""
    from pipeline import tracking
    from pipeline.catalog import RunCatalog
    from pipeline.errors import TrackingError
    from pipeline.runner import backtest_origins, write_backtest_origins

    settings = _load(config, [*(set_ or []), *([f"features.origins={origins}"] if origins is not None else [])])
    progress = _progress_printer(quiet)
    if settings.tracking.enabled and settings.tracking.required:
        # An unreachable server stops the command before the work, as it stops clv run.
        tracking.check_store(tracking.tracking_uri(settings.tracking))
    # The work first, logged once it is done: an impossible origin leaves no run anywhere.
    result = backtest_origins(settings, progress=progress)
    with tracking.tracked_run(settings, "backtest", config_path=config) as tracker:
        with RunCatalog.create(settings.output_dir, name="backtest", latest=False) as catalog:
            summary = write_backtest_origins(catalog, result)
            if tracker:
                _progress(progress, "logging to MLflow")
                try:
                    tracker.log_config()
                    tracker.log_backtest_origins(summary, catalog.directory)
                except Exception as exc:  # noqa: BLE001 - any store failure is one line; nothing is kept
                    raise TrackingError(f"tracking store {tracking.tracking_uri(settings.tracking)}: cannot log the "
                                        f"backtest ({tracking.error_line(exc)})") from None
    _close(progress)
    print_backtest_origins(summary, catalog.final)
    if tracker:
        console.print(f"MLflow run [bold]{tracker.run_id}[/] with {len(summary['origins'])} nested origin runs",
                      highlight=False)


@app.command()
@user_errors
def init(
    input_: Annotated[Path, typer.Argument(help="Your transaction log (CSV, Parquet or a folder of them, text).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Where to write the config.")] = Path("clv.yaml"),
    customer_col: CustomerColumnOption = None,
    date_col: DateColumnOption = None,
    amount_col: AmountColumnOption = None,
    margin_col: MarginColumnOption = None,
    cost_col: CostColumnOption = None,
    channel_col: ChannelColumnOption = None,
    date_format: DateFormatOption = None,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing file.")] = False,
    debug: DebugOption = False,
) -> None:
    """Write a commented config for your log (what was detected, every key with its default): then `clv run -c clv.yaml`."""
    from pipeline.config import packaged_config
    from pipeline.config_writer import commented_config
    from pipeline.errors import InputDataError
    from pipeline.io import atomic_path

    if out.exists() and not force:
        raise InputDataError(f"{out}: already exists: pass --force to replace it, or --out another.yaml")
    period = load_config(packaged_config()).features.period
    detected = _detect(input_, customer_col, date_col, amount_col, margin_col, cost_col, channel_col, date_format,
                       period)
    settings = load_config(packaged_config(), [], detected.overrides())
    header = [f"clv config for {input_}, written by `clv init` (clv run -c {out} runs it).", "Detected:",
              *[f"  {note}" for note in detected.notes],
              "Every key below is shown with its value; the comments say what each does."]
    with atomic_path(out) as tmp:
        tmp.write_text(commented_config(settings, header))
    console.print(f"wrote [bold]{out}[/]: run it with `clv run -c {out}`", highlight=False)


@app.command()
@user_errors
def promote(
    reference: Annotated[str, typer.Argument(help="Model version number, or the MLflow run id that registered it.")],
    config: ConfigOption = DEFAULT_CONFIG,
    set_: SetOption = None,
    debug: DebugOption = False,
) -> None:
    """Give the `champion` alias to a registered model version."""
    from pipeline import tracking

    result = tracking.promote(_load(config, set_), reference)
    before = f" (was version {result['previous']})" if result["previous"] else ""
    console.print(f"{result['name']} version {result['version']} (run {result['run_id']}) is now champion{before}")


@app.command()
@user_errors
def compare(
    config: ConfigOption = DEFAULT_CONFIG,
    set_: SetOption = None,
    experiment: Annotated[str | None, typer.Option("--experiment", "-e", help="Experiment name.")] = None,
    last: Annotated[int, typer.Option("--last", "-n", min=1, help="How many recent runs.")] = 10,
    debug: DebugOption = False,
) -> None:
    """Compare recent pipeline runs: data, model, key parameters, holdout metrics, CLV; ★ = champion."""
    from pipeline import tracking

    frame = tracking.compare_runs(_load(config, set_), experiment, last)
    if frame.empty:
        console.print("no pipeline runs yet: run `clv run` first")
        return
    for pair in ("horizon", "lifetime"):
        # One cell per like-for-like pair (runs before them have none): predicted / historical.
        frame[f"{pair}_pair"] = [
            "" if predicted is None or predicted != predicted else f"{predicted:,.2f} / {historical:,.2f}"
            for predicted, historical in zip(frame[f"{pair}_predicted_mean"], frame[f"{pair}_historical_mean"])
        ]
    frame["brier_pair"] = [
        "" if ours is None or ours != ours else f"{ours:.3f} / {baseline:.3f}"
        for ours, baseline in zip(frame["holdout_any_purchase_brier"], frame["baseline_any_purchase_brier"])
    ]
    table = Table(title="Runs (newest first)", title_justify="left")
    columns = [
        ("run_id", "run", lambda v: v[:8]), ("started", "started", str), ("data", "data sha", str),
        ("model", "model", str), ("params", "params", str),
        ("holdout_purchases_rmse", "holdout RMSE", "{:.3f}".format),
        ("holdout_purchases_total_error_pct", "total err", "{:+.1f}%".format),
        ("baseline_purchases_rmse", "baseline RMSE", "{:.3f}".format),
        ("brier_pair", "Brier / base", str), ("holdout_revenue_gini", "Gini rev.", "{:.3f}".format),
        ("calibration_chi_square_p_value", "χ² calib. p", "{:.2g}".format),
        ("predicted_clv_mean", "pred. CLV", "{:,.2f}".format), ("historical_clv_mean", "hist. CLV", "{:,.2f}".format),
        ("horizon_pair", "horizon pred/hist", str), ("lifetime_pair", "lifetime pred/hist", str),
        ("version", "version", str), ("skipped", "skipped", str),
    ]
    table.add_column("")
    for key, label, _ in columns:
        # The run id stays whole however narrow the terminal: it is what `clv promote` takes.
        table.add_column(label, overflow="fold", **({"min_width": 8, "no_wrap": True} if key == "run_id" else {}))
    for _, row in frame.iterrows():
        cells = []
        for key, _, fmt in columns:
            value = row[key]
            cells.append("—" if value is None or value == "" or (isinstance(value, float) and value != value) else fmt(value))
        table.add_row("★" if row["champion"] else "", *cells)
    console.print(table)


@app.command()
@user_errors
def score(
    model: Annotated[str, typer.Option("--model", "-m", help="Registered model URI, e.g. models:/clv@champion.")] = "models:/clv@champion",
    input_path: Annotated[str | None, typer.Option("--input", "-i", help="Transaction log (default: the config's input).")] = None,
    features_path: Annotated[Path | None, typer.Option("--features", help="A features Parquet/CSV instead of a raw log.")] = None,
    as_of: Annotated[str | None, typer.Option("--as-of", help="Features as of this date (default: last date in the log).")] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Export file: .parquet or .csv (+ .manifest.json beside it).")] = Path("scores.parquet"),
    scored_at: Annotated[str | None, typer.Option("--scored-at", help="Fix the scored-at timestamp (ISO) for a reproducible re-export.")] = None,
    config: ConfigOption = DEFAULT_CONFIG,
    set_: SetOption = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
    debug: DebugOption = False,
) -> None:
    """Score every customer with a registered model and export one row per customer."""
    import datetime as dt

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from pipeline.batch import score_log
    from pipeline.errors import InputDataError

    settings = _load(config, set_)
    try:
        as_of_date = dt.date.fromisoformat(as_of) if as_of else None
    except ValueError:
        raise InputDataError(f"--as-of {as_of!r} is not a date (YYYY-MM-DD)") from None
    try:
        stamp = dt.datetime.fromisoformat(scored_at) if scored_at else None
    except ValueError:
        raise InputDataError(f"--scored-at {scored_at!r} is not an ISO timestamp") from None
    if stamp is not None and stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=dt.timezone.utc)
    show = not quiet and sys.stderr.isatty()
    with Progress(
        TextColumn("scoring"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        console=error_console, disable=not show, transient=True,
    ) as progress:
        task = progress.add_task("customers", total=None)
        manifest = score_log(
            settings, model, out, as_of=as_of_date, input_path=input_path, features_path=features_path,
            scored_at=stamp, on_batch=lambda n: progress.advance(task, n),
            on_total=lambda total: progress.update(task, total=total),
        )
    console.print(
        f"scored {manifest['rows']:,} customers as of {manifest['as_of_date']} with {manifest['model_uri']} "
        f"(version {manifest['model_version']}) → {out} (sha256 {manifest['sha256'][:12]}…, manifest beside it)",
        highlight=False,
    )


@app.command()
@user_errors
def retrain(
    config: ConfigOption = DEFAULT_CONFIG,
    set_: SetOption = None,
    as_of: Annotated[str | None, typer.Option("--as-of", help="Train on data up to this date (default: today, UTC).")] = None,
    accept_shift: Annotated[bool, typer.Option(
        "--accept-shift", help="Skip the gate on the challenger's CLV total against the champion's (a known shift).",
    )] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress lines.")] = False,
    debug: DebugOption = False,
) -> None:
    """Scheduled retraining: fit, backtest, register a challenger, promote it only if it passes the
    release gates and does at least as well as the champion.

    Exit codes: 0 promoted or kept, 2 bad input/config (stale log, fixed calibration end…), 3 tracking
    unreachable, 4 challenger rejected by the release gates, 75 another retrain holds the lock.
    """
    import datetime as dt

    from pipeline.errors import InputDataError, ReleaseRejectedError
    from pipeline.retrain import retrain as run_retrain

    settings = _load(config, set_)
    try:
        as_of_date = dt.date.fromisoformat(as_of) if as_of else None
    except ValueError:
        raise InputDataError(f"--as-of {as_of!r} is not a date (YYYY-MM-DD)") from None
    try:
        progress = _progress_printer(quiet)
        decision = run_retrain(settings, config, as_of_date, progress=progress, accept_shift=accept_shift)
    except ReleaseRejectedError as rejected:
        _close(progress)
        _print_monitor(rejected.decision)
        raise
    _close(progress)
    _print_monitor(decision)
    verdict = "PROMOTED" if decision.promoted else "KEPT champion"
    console.print(
        f"retrain as of {decision.as_of}: challenger version {decision.challenger_version} — {verdict}: "
        f"{decision.reason} (run {decision.run_id})",
        highlight=False,
    )


def _print_monitor(decision) -> None:
    """The champion's forecast against what happened since its as-of date, when it was checked."""
    report = decision.monitor if decision is not None else None
    if not report:
        return
    table = Table(title=f"Champion version {report['champion_version']}: forecast made {report['champion_as_of']} "
                        f"vs the log to {report['as_of']}", title_justify="left")
    for column in ("", "customers", "purchases pred.", "purchases actual", "error", "revenue pred.", "revenue actual", "error"):
        table.add_column(column, justify="right")

    def row(label, values):
        table.add_row(label, f"{values['customers']:,.0f}", f"{values['purchases_predicted']:,.1f}",
                      f"{values['purchases_actual']:,.0f}", f"{values['purchases_error_pct']:+.1f}%",
                      _money(values["revenue_predicted"]), _money(values["revenue_actual"]),
                      f"{values['revenue_error_pct']:+.1f}%")

    row("total", report["total"])
    for tier, values in report["by_tier"].items():
        row(f"tier {tier}", values)
    console.print(table)
    console.print(
        f"customers predicted alive then who bought since: {report['alive_share_bought']:.1%} "
        f"(predicted churned who bought: {report['dead_share_bought']:.1%})", highlight=False,
    )


def main() -> None:
    """The ``clv`` console script: run the command, then leave without tearing the interpreter down."""
    try:
        app(prog_name="clv")
        code: Any = 0
    except SystemExit as exc:
        code = exc.code
    exit_now(code)


if __name__ == "__main__":  # pragma: no cover
    main()
