"""The run's diagnostic plots as PNG files.

Each plot is two functions: a pure ``*_data`` function that turns model outputs
into the small table the plot shows (what the tests check), and a ``plot_*``
function that draws that table into a PNG at a given path and returns the path.
Figures are built with ``matplotlib.figure.Figure`` on the Agg canvas, never
through ``pyplot``, so nothing is registered in pyplot's global figure list
and drawing is safe from worker threads and in headless runs.

References
----------
.. [1] Fader, P. S., Hardie, B. G. S. and Lee, K. L. (2005), "Counting your
   customers the easy way: an alternative to the Pareto/NBD model",
   Marketing Science 24(2), 275-284. Fig. 2 (cumulative repeat
   transactions) and Fig. 4 (conditional expectations in the holdout).
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from pipeline.io import atomic_path

_DPI = 120
_UNIT_NAMES = {1.0: "days", 7.0: "weeks", 365.25 / 12: "months"}


def _new_figure(width: float = 8.0, height: float = 5.0) -> Figure:
    figure = Figure(figsize=(width, height), dpi=_DPI)
    FigureCanvasAgg(figure)
    return figure


def _figure_for(ax):
    """``(figure, axes)``: a new figure and its axes, or ``(None, ax)`` when drawing on the
    caller's axes (a notebook's), where nothing is written."""
    if ax is not None:
        return None, ax
    figure = _new_figure()
    return figure, figure.add_subplot()


def _save(figure: Figure, path: str | Path) -> Path:
    path = Path(path)
    figure.tight_layout()
    # The temp name ends in .tmp, so the format is given rather than inferred from the suffix.
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=_DPI)
    return path


def _unit_name(days_per_period: float) -> str:
    for days, name in _UNIT_NAMES.items():
        if np.isclose(days_per_period, days):
            return name
    return f"periods of {days_per_period:g} days"


def calibration_vs_holdout_data(
    calibration: pd.DataFrame, predicted_holdout: pd.Series, max_frequency: int = 7
) -> pd.DataFrame:
    """Mean actual and predicted holdout purchases per calibration frequency.

    Parameters
    ----------
    calibration : pandas.DataFrame
        Calibration features indexed by customer id, with ``frequency``
        (repeat purchases in calibration) and ``frequency_holdout`` (repeat
        purchases in the holdout).
    predicted_holdout : pandas.Series
        Predicted purchases in the holdout per customer, indexed like
        ``calibration`` (e.g. ``model.expected_purchases(calibration, duration_holdout)``).
    max_frequency : int, default 7
        Calibration frequencies at or above this share the last bin, labelled ``"7+"``.

    Returns
    -------
    pandas.DataFrame
        Indexed by ``calibration_frequency`` (labels ``"0"`` … ``"7+"``, every
        bin present) with columns ``customers``, ``actual_holdout_purchases``
        and ``predicted_holdout_purchases`` (means per customer; NaN for an
        empty bin).

    References
    ----------
    Fader, Hardie & Lee (2005), Fig. 4.
    """
    if max_frequency < 1:
        raise ValueError(f"max_frequency must be at least 1, got {max_frequency}")
    missing = calibration.index.difference(predicted_holdout.index)
    if len(missing):
        raise ValueError(
            f"predicted_holdout has no value for {len(missing)} of {len(calibration)} customers "
            f"(first: {missing[0]!r})"
        )
    frame = pd.DataFrame(
        {
            "bin": np.minimum(calibration["frequency"].to_numpy(), max_frequency).astype(np.int64),
            "actual": calibration["frequency_holdout"].to_numpy(dtype=np.float64),
            "predicted": predicted_holdout.reindex(calibration.index).to_numpy(dtype=np.float64),
        },
        copy=False,
    )
    sums = frame.groupby("bin").agg(customers=("actual", "size"), actual=("actual", "sum"),
                                    predicted=("predicted", "sum"))
    return calibration_vs_holdout_from_sums(sums, max_frequency)


def calibration_vs_holdout_from_sums(sums: pd.DataFrame, max_frequency: int = 7) -> pd.DataFrame:
    """:func:`calibration_vs_holdout_data` from per-bin sums (what an engine adds up where the
    customers are): indexed by the bin (calibration frequency capped at ``max_frequency``),
    columns ``customers``, ``actual`` and ``predicted`` (sums of holdout purchases)."""
    labels = [str(n) for n in range(max_frequency)] + [f"{max_frequency}+"]
    sums = sums.reindex(range(max_frequency + 1))
    result = pd.DataFrame(
        {
            "customers": sums["customers"].fillna(0).astype(np.int64),
            "actual_holdout_purchases": sums["actual"] / sums["customers"],
            "predicted_holdout_purchases": sums["predicted"] / sums["customers"],
        }
    )
    result.index = pd.Index(labels, name="calibration_frequency")
    return result


def plot_calibration_vs_holdout(data: pd.DataFrame, path: str | Path, model_title: str,
                                test: str | None = None) -> Path:
    """Draw actual vs predicted mean holdout purchases by calibration frequency as a PNG.

    Parameters
    ----------
    data : pandas.DataFrame
        Output of :func:`calibration_vs_holdout_data`.
    path : str or pathlib.Path
        Where to write the PNG (written atomically).
    model_title : str
        Model name shown in the legend and title, e.g. ``"BG/NBD"``.
    test : str, optional
        The conditional-expectation chi-square test in words, under the title.

    Returns
    -------
    pathlib.Path
        ``path``.
    """
    figure = _new_figure()
    axes = figure.add_subplot()
    positions = np.arange(len(data))
    axes.plot(positions, data["actual_holdout_purchases"], marker="o", color="black", label="actual")
    axes.plot(
        positions,
        data["predicted_holdout_purchases"],
        marker="s",
        linestyle="--",
        color="tab:blue",
        label=f"{model_title} prediction",
    )
    axes.set_xticks(positions)
    axes.set_xticklabels([f"{label}\n(n={count:,})" for label, count in zip(data.index, data["customers"])])
    axes.set_xlabel("repeat purchases in the calibration period (n = customers)")
    axes.set_ylabel("mean repeat purchases per customer in the holdout period")
    axes.set_ylim(bottom=0)
    axes.grid(alpha=0.3)
    axes.legend()
    axes.set_title(f"Conditional expectations in the holdout: actual vs {model_title}"
                   + (f"\n{test}" if test else ""))
    return _save(figure, path)


def cumulative_tracking_data(
    repeat_purchases: pd.DataFrame,
    first_purchase_dates: pd.Series,
    purchase_model,
    days_per_period: float,
    observation_end: dt.date,
) -> pd.DataFrame:
    """Actual and predicted cumulative repeat purchases of the whole customer base, week by week.

    The prediction is unconditional: each cohort of customers who made their
    first purchase on the same day contributes its size times the model's
    expected repeat purchases of a new customer at the cohort's age, as in
    Fader, Hardie & Lee (2005), Fig. 2.

    Parameters
    ----------
    repeat_purchases : pandas.DataFrame
        Columns ``date`` and ``repeat_purchases``: repeat purchases per
        calendar day (the features stage's ``repeat_purchases`` table).
    first_purchase_dates : pandas.Series
        First purchase date of every customer in the log (e.g. the
        ``first_purchase_date`` column of the full-period features).
    purchase_model : fitted purchase model
        Anything with ``expected_purchases_new_customer(ages)`` taking an
        array of ages in model periods.
    days_per_period : float
        Days in one model period (7 for weeks; 365.25 / 12 for months),
        whatever the resolution (``PeriodSettings.days_per_unit``).
    observation_end : datetime.date
        Last day to track. It is the last row even when it is not a whole
        number of weeks after the first purchase.

    Returns
    -------
    pandas.DataFrame
        One row per 7-day step from the first purchase date, plus
        ``observation_end``, with columns ``date`` (end of that day included),
        ``periods_since_start`` (days since the first purchase date /
        ``days_per_period``), ``actual_cumulative`` and ``predicted_cumulative``.

    References
    ----------
    Fader, Hardie & Lee (2005), Fig. 2.
    """
    if not days_per_period > 0:
        raise ValueError(f"days_per_period must be positive, got {days_per_period!r}")
    if len(first_purchase_dates) == 0:
        raise ValueError("first_purchase_dates is empty")
    first_days = pd.to_datetime(pd.Series(first_purchase_dates)).to_numpy().astype("datetime64[D]")
    start = first_days.min()
    # Cohorts by first purchase day: a count per day (a few hundred days), where np.unique
    # sorted every customer (18M of them at 50M rows). Same days, same order, same sizes.
    sizes_by_day = np.bincount((first_days - start).astype(np.int64))
    present = np.flatnonzero(sizes_by_day)
    return cumulative_tracking_from_cohorts(
        repeat_purchases, start + present.astype("timedelta64[D]"), sizes_by_day[present], purchase_model,
        days_per_period, observation_end,
    )


def cumulative_tracking_from_cohorts(
    repeat_purchases: pd.DataFrame,
    cohort_days: np.ndarray,
    cohort_sizes: np.ndarray,
    purchase_model,
    days_per_period: float,
    observation_end: dt.date,
) -> pd.DataFrame:
    """:func:`cumulative_tracking_data` from the cohorts: each first purchase day (ascending,
    ``datetime64[D]``) and its number of customers (what an engine counts where the customers are)."""
    if not days_per_period > 0:
        raise ValueError(f"days_per_period must be positive, got {days_per_period!r}")
    if len(cohort_days) == 0:
        raise ValueError("no cohorts: there are no customers")
    cohort_days = np.asarray(cohort_days).astype("datetime64[D]")
    start = cohort_days.min()
    end = np.datetime64(observation_end, "D")
    if end < start:
        raise ValueError(f"observation_end {observation_end} is before the first purchase {start}")

    grid = np.arange(start, end + 1, np.timedelta64(7, "D"))
    if grid[-1] != end:
        grid = np.append(grid, end)

    purchase_days = pd.to_datetime(repeat_purchases["date"]).to_numpy().astype("datetime64[D]")
    order = np.argsort(purchase_days, kind="stable")
    purchase_days = purchase_days[order]
    cumulative = np.concatenate([[0], np.cumsum(repeat_purchases["repeat_purchases"].to_numpy()[order])])
    actual = cumulative[np.searchsorted(purchase_days, grid, side="right")]

    # Ages of every cohort at every grid day (weeks × cohorts); cohorts not yet
    # acquired get age 0, where expected repeat purchases are 0.
    age_days = (grid[:, None] - cohort_days[None, :]).astype(np.float64)
    ages = np.clip(age_days, 0.0, None) / days_per_period
    expected = np.asarray(purchase_model.expected_purchases_new_customer(ages), dtype=np.float64).reshape(ages.shape)
    predicted = expected @ np.asarray(cohort_sizes).astype(np.float64)

    return pd.DataFrame(
        {
            "date": [day.item() for day in grid],
            "periods_since_start": (grid - start).astype(np.float64) / days_per_period,
            "actual_cumulative": actual.astype(np.int64),
            "predicted_cumulative": predicted,
        }
    )


def plot_cumulative_tracking(
    data: pd.DataFrame, path: str | Path, calibration_end: dt.date | None, model_title: str
) -> Path:
    """Draw actual vs predicted cumulative repeat purchases with the calibration end marked, as a PNG.

    Parameters
    ----------
    data : pandas.DataFrame
        Output of :func:`cumulative_tracking_data`.
    path : str or pathlib.Path
        Where to write the PNG (written atomically).
    calibration_end : datetime.date or None
        Last day of calibration, drawn as a vertical line; None draws none.
    model_title : str
        Model name shown in the legend and title, e.g. ``"BG/NBD"``.

    Returns
    -------
    pathlib.Path
        ``path``.
    """
    start = pd.Timestamp(data["date"].iloc[0])
    days = (pd.to_datetime(data["date"]) - start).dt.days.to_numpy(dtype=np.float64)
    periods = data["periods_since_start"].to_numpy(dtype=np.float64)
    days_per_period = days[-1] / periods[-1] if periods[-1] > 0 else 7.0
    unit = _unit_name(days_per_period)

    figure = _new_figure()
    axes = figure.add_subplot()
    axes.plot(periods, data["actual_cumulative"], color="black", label="actual")
    axes.plot(
        periods, data["predicted_cumulative"], color="tab:blue", linestyle="--", label=f"{model_title} prediction"
    )
    if calibration_end is not None:
        calibration_periods = (pd.Timestamp(calibration_end) - start).days / days_per_period
        axes.axvline(calibration_periods, color="grey", linestyle=":", label=f"end of calibration ({calibration_end})")
    axes.set_xlabel(f"{unit} since {start.date()}")
    axes.set_ylabel("cumulative repeat purchases")
    axes.set_xlim(0, periods[-1])
    axes.set_ylim(bottom=0)
    axes.grid(alpha=0.3)
    axes.legend(loc="upper left")
    axes.set_title(f"Tracking cumulative repeat purchases: actual vs {model_title}")
    return _save(figure, path)


def probability_alive_matrix_data(
    purchase_model, max_frequency: int, max_recency: float, T: float, steps: int = 40
) -> pd.DataFrame:
    """P(alive) of a customer of age ``T`` for every (frequency, recency) on a grid.

    Parameters
    ----------
    purchase_model : fitted purchase model
        Anything with ``probability_alive(features)``.
    max_frequency : int
        Rows are frequencies 0 … ``max_frequency``.
    max_recency : float
        Columns are ``steps`` recencies evenly spaced over [0, ``max_recency``],
        in model periods.
    T : float
        Age of the customers, in model periods.
    steps : int, default 40
        Number of recency columns.

    Returns
    -------
    pandas.DataFrame
        Index ``frequency``, columns ``recency``. Impossible histories are
        NaN: recency above ``T``, and recency above 0 with no repeat
        purchase. ``attrs["T"]`` holds ``T``.
    """
    if max_frequency < 0 or steps < 2 or not (max_recency > 0) or not (T >= 0):
        raise ValueError(
            "need max_frequency >= 0, steps >= 2, max_recency > 0 and T >= 0; got "
            f"{max_frequency}, {steps}, {max_recency}, {T}"
        )
    frequencies = np.arange(max_frequency + 1)
    recencies = np.linspace(0.0, float(max_recency), steps)
    frequency_grid, recency_grid = np.meshgrid(frequencies, recencies, indexing="ij")
    possible = (recency_grid <= T) & ((frequency_grid > 0) | (recency_grid == 0))
    histories = pd.DataFrame(
        {
            "frequency": frequency_grid[possible],
            "recency": recency_grid[possible],
            "T": np.full(int(possible.sum()), float(T)),
        }
    )
    # A covariate model's baseline customer (reference levels, mean numerics: design row 0).
    for name in getattr(purchase_model, "covariates", None) or ():
        histories[name] = 0.0
    values = np.full(frequency_grid.shape, np.nan)
    values[possible] = purchase_model.probability_alive(histories).to_numpy()
    data = pd.DataFrame(
        values, index=pd.Index(frequencies, name="frequency"), columns=pd.Index(recencies, name="recency")
    )
    data.attrs["T"] = float(T)
    return data


def plot_probability_alive_matrix(
    data: pd.DataFrame, path: str | Path, model_title: str, time_unit: str = "weeks"
) -> Path:
    """Draw the P(alive) matrix as a heatmap with a colour bar, as a PNG.

    Parameters
    ----------
    data : pandas.DataFrame
        Output of :func:`probability_alive_matrix_data`.
    path : str or pathlib.Path
        Where to write the PNG (written atomically).
    model_title : str
        Model name shown in the title, e.g. ``"BG/NBD"``.
    time_unit : str, default "weeks"
        Name of the model period, for the axis label.

    Returns
    -------
    pathlib.Path
        ``path``.
    """
    recencies = data.columns.to_numpy(dtype=np.float64)
    frequencies = data.index.to_numpy(dtype=np.float64)
    half_step = (recencies[1] - recencies[0]) / 2 if len(recencies) > 1 else 0.5
    figure = _new_figure(8.0, 6.0)
    axes = figure.add_subplot()
    image = axes.imshow(
        np.ma.masked_invalid(data.to_numpy(dtype=np.float64)),
        origin="lower",
        aspect="auto",
        cmap=colormaps["viridis"].with_extremes(bad="lightgrey"),
        vmin=0.0,
        vmax=1.0,
        interpolation="nearest",
        extent=(recencies[0] - half_step, recencies[-1] + half_step, frequencies[0] - 0.5, frequencies[-1] + 0.5),
    )
    colorbar = figure.colorbar(image, ax=axes)
    colorbar.set_label("probability the customer is alive")
    axes.set_xlabel(f"recency: age at the last repeat purchase ({time_unit} since the first purchase)")
    axes.set_ylabel("frequency: repeat purchases")
    T = data.attrs.get("T")
    age = f" at age T = {T:.4g} {time_unit}" if T is not None else ""
    axes.set_title(
        f"{model_title}: probability a customer is alive{age},\nby frequency and recency (grey: impossible history)"
    )
    return _save(figure, path)


def plot_clv_distribution(clv: pd.Series, cuts: dict[str, float], path: str | Path) -> Path:
    """Draw the histogram of predicted CLV with the tier cut values marked, as a PNG.

    Values above the 99.5th percentile (or the highest cut, if higher) are
    clipped into the last bin so that a few very large customers do not hide
    the rest; the title says where and how many.

    Parameters
    ----------
    clv : pandas.Series
        Predicted CLV per customer (NaN values are left out).
    cuts : dict of str to float
        Tier name to the CLV value where that tier starts.
    path : str or pathlib.Path
        Where to write the PNG (written atomically).

    Returns
    -------
    pathlib.Path
        ``path``.
    """
    values = pd.Series(clv, dtype=np.float64).dropna().to_numpy()
    if len(values) == 0:
        raise ValueError("clv has no non-missing values to plot")
    percentile = float(np.percentile(values, 99.5))
    highest_cut = max((float(cut) for cut in cuts.values()), default=-np.inf)
    low = min(float(values.min()), 0.0)
    upper = max(percentile, highest_cut)
    if not upper > low:
        upper = low + 1.0
    clipped = int((values > upper).sum())
    clip_reason = "the 99.5th percentile" if upper == percentile else "the highest tier cut"

    figure = _new_figure()
    axes = figure.add_subplot()
    # Counted by numpy and drawn as steps: Axes.hist on every customer's value spent a second
    # per 3.6M customers in its own bookkeeping for the same 60 counts.
    counts, edges = np.histogram(np.clip(values, low, upper), bins=60, range=(low, upper))
    axes.stairs(counts, edges, fill=True, color="tab:blue", alpha=0.8)
    axes.set_yscale("log")
    axes.set_xlim(low, upper)
    colors = ["tab:red", "tab:orange", "tab:green", "tab:purple", "tab:brown", "tab:pink"]
    for i, (tier, cut) in enumerate(sorted(cuts.items(), key=lambda item: item[1])):
        color = colors[i % len(colors)]
        axes.axvline(cut, color=color, linestyle="--", linewidth=1.5, label=f"{tier} from {cut:,.2f}")
    axes.set_xlabel("predicted CLV per customer (currency of the input amounts)")
    axes.set_ylabel("customers (log scale)")
    axes.grid(alpha=0.3, axis="y")
    if cuts:
        axes.legend(title="tier cuts", loc="upper right")
    axes.set_title(
        f"Predicted CLV of {len(values):,} customers\n"
        f"clipped at {upper:,.2f} ({clip_reason}): the {clipped:,} customers above it are in the last bin"
    )
    return _save(figure, path)


def plot_clv_by_tier(tier_summary: pd.DataFrame, path: str | Path) -> Path:
    """Draw grouped bars of mean predicted and mean historical CLV per tier, as a PNG.

    Parameters
    ----------
    tier_summary : pandas.DataFrame
        Indexed by tier name (in the order to draw), with columns
        ``mean_predicted_clv`` and ``mean_historical_clv``; other columns are ignored.
    path : str or pathlib.Path
        Where to write the PNG (written atomically).

    Returns
    -------
    pathlib.Path
        ``path``.
    """
    missing = [c for c in ("mean_predicted_clv", "mean_historical_clv") if c not in tier_summary.columns]
    if missing:
        raise ValueError(f"tier_summary: missing columns {missing}")
    positions = np.arange(len(tier_summary))
    width = 0.38
    figure = _new_figure()
    axes = figure.add_subplot()
    predicted = axes.bar(
        positions - width / 2, tier_summary["mean_predicted_clv"], width, color="tab:blue", label="mean predicted CLV"
    )
    historical = axes.bar(
        positions + width / 2, tier_summary["mean_historical_clv"], width, color="tab:gray", label="mean historical CLV"
    )
    largest = np.nanmax(tier_summary[["mean_predicted_clv", "mean_historical_clv"]].to_numpy(dtype=np.float64))
    label_format = "{:,.0f}" if largest >= 100 else "{:,.2f}"
    for bars in (predicted, historical):
        axes.bar_label(bars, fmt=label_format, fontsize=8, padding=2)
    axes.set_xticks(positions)
    axes.set_xticklabels([str(tier) for tier in tier_summary.index])
    axes.set_xlabel("value tier")
    axes.set_ylabel("mean CLV per customer (currency of the input amounts)")
    axes.grid(alpha=0.3, axis="y")
    axes.legend()
    axes.set_title("Mean predicted vs historical CLV by tier")
    return _save(figure, path)


def plot_like_for_like(comparisons: dict, path: str | Path, horizon_label: str) -> Path:
    """Draw predicted vs historical CLV like for like, per tier, as a PNG: the horizon pair (the
    predicted horizon CLV and the business formula over the same horizon) and the lifetime pair
    (margin realised to date + predicted lifetime value, and the formula over the lifespan).

    Parameters
    ----------
    comparisons : dict
        ``summary.json``'s ``value.like_for_like``: ``by_tier`` maps each tier (in drawing order)
        to ``{"horizon": {...}, "lifetime": {...}}`` with ``predicted_mean`` and ``historical_mean``.
    path : str or pathlib.Path
        Where to write the PNG (written atomically).
    horizon_label : str
        The horizon in words, e.g. ``"52 weeks"``.
    """
    tiers = list(comparisons["by_tier"])
    positions = np.arange(len(tiers))
    width = 0.38
    figure = _new_figure(11.0, 4.8)
    panels = (("horizon", f"over the horizon ({horizon_label})"), ("lifetime", "over a whole lifetime"))
    for number, (key, title) in enumerate(panels, start=1):
        axes = figure.add_subplot(1, 2, number)
        predicted = [comparisons["by_tier"][tier][key]["predicted_mean"] for tier in tiers]
        historical = [comparisons["by_tier"][tier][key]["historical_mean"] for tier in tiers]
        axes.bar(positions - width / 2, predicted, width, color="tab:blue",
                 label="predicted" if key == "horizon" else "realised margin + predicted lifetime value")
        axes.bar(positions + width / 2, historical, width, color="tab:gray",
                 label="business formula over the horizon" if key == "horizon" else "business formula (lifespan)")
        axes.set_xticks(positions)
        axes.set_xticklabels(tiers)
        axes.set_xlabel("value tier")
        axes.set_ylabel("mean CLV per customer")
        axes.grid(alpha=0.3, axis="y")
        axes.legend(fontsize=8)
        axes.set_title(f"Predicted vs historical CLV {title}", fontsize=10)
    return _save(figure, path)


def plot_champion_forecast(data: pd.DataFrame, path: str | Path, model_title: str, ax=None) -> Path | None:
    """Draw the champion's predicted vs the actual cumulative purchases since its as-of date, as a PNG.

    Parameters
    ----------
    data : pandas.DataFrame
        Output of :func:`pipeline.stages.monitor.cumulative_forecast_data`.
    path : str or pathlib.Path
        Where to write the PNG (written atomically); ignored when ``ax`` is given.
    model_title : str
        The champion, e.g. ``"clv version 3 (Pareto/NBD)"``.
    ax : matplotlib.axes.Axes, optional
        Draw on these axes (a notebook's) instead of a new figure; nothing is written.

    Returns
    -------
    pathlib.Path or None
        ``path``, or None when drawing on ``ax``.
    """
    figure, ax = _figure_for(ax)
    start = data["date"].iloc[0]
    ax.plot(data["days_since_as_of"], data["actual_cumulative"], color="black", label="actual")
    ax.plot(data["days_since_as_of"], data["predicted_cumulative"], color="tab:blue", linestyle="--",
            label=f"{model_title} forecast")
    ax.set_xlabel(f"days since the champion's as-of date ({start})")
    ax.set_ylabel("cumulative purchases of its customers")
    ax.set_xlim(0, max(float(data["days_since_as_of"].iloc[-1]), 1.0))
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left")
    ax.set_title("Champion's forecast vs what happened")
    return None if figure is None else _save(figure, path)


# ---------------------------------------------------------------------------------------------
# The backtest's diagnostics (pipeline.stages.backtest.holdout_tables and the calibration
# histogram), one line or bar group per candidate and the naive baseline.

_BASELINE = "historical_baseline"


def _series_style(name: str, position: int) -> dict:
    if name == _BASELINE:
        return {"color": "tab:gray", "linestyle": ":", "marker": "x"}
    return {"color": colormaps["tab10"](position), "marker": "o"}


def plot_purchase_histogram(histograms: dict[str, pd.DataFrame], statistics: dict[str, dict], path: str | Path,
                            titles: dict[str, str]) -> Path:
    """Customers by repeat purchases in the calibration period, observed and expected under
    each candidate (FHL 2005's Fig. 3), with each one's chi-square test in the legend.

    ``histograms``: model → ``observed``/``expected`` indexed 0..7+; ``statistics``: model →
    its backtest row (``calibration_chi_square``, ``_dof``, ``_p_value``); ``titles``: model →
    its name in the legend."""
    names = list(histograms)
    first = histograms[names[0]]
    positions = np.arange(len(first))
    width = 0.8 / (len(names) + 1)
    figure = _new_figure(9.0, 5.0)
    axes = figure.add_subplot()
    axes.bar(positions - 0.4 + width / 2, first["observed"], width, color="black", label="actual")
    for number, name in enumerate(names, start=1):
        row = statistics.get(name, {})
        test = (f"χ² {row['calibration_chi_square']:.1f}, {row['calibration_chi_square_dof']:.0f} df, "
                f"p {row['calibration_chi_square_p_value']:.2g}") if "calibration_chi_square" in row else ""
        axes.bar(positions - 0.4 + width / 2 + number * width, histograms[name]["expected"], width,
                 color=colormaps["tab10"](number - 1), label=f"{titles.get(name, name)} ({test})")
    axes.set_xticks(positions)
    axes.set_xticklabels([str(label) for label in first.index])
    axes.set_xlabel("repeat purchases in the calibration period")
    axes.set_ylabel("customers")
    axes.grid(alpha=0.3, axis="y")
    axes.legend(fontsize=8)
    axes.set_title("Goodness of fit: repeat purchases in the calibration period, actual vs expected")
    return _save(figure, path)


def _unit_square(axes, xlabel: str, ylabel: str, legend_location: str, title: str) -> None:
    """Axes of two shares, 0 to 1 each, labelled, with a grid and the legend."""
    axes.set_xlim(0, 1)
    axes.set_ylim(0, 1)
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8, loc=legend_location)
    axes.set_title(title)


def plot_reliability(reliability: dict[str, pd.DataFrame], statistics: dict[str, dict], path: str | Path,
                     titles: dict[str, str]) -> Path:
    """Predicted probability of at least one purchase in the holdout against the share who did
    buy, by decile of the prediction: on the diagonal is calibrated. Brier score and log loss
    in the legend."""
    figure = _new_figure(7.0, 6.0)
    axes = figure.add_subplot()
    axes.plot([0, 1], [0, 1], color="lightgray", linewidth=1, label="perfectly calibrated")
    for position, (name, table) in enumerate(reliability.items()):
        row = statistics.get(name, {})
        scores = (f"Brier {row['any_purchase_brier']:.3f}, log loss {row['any_purchase_log_loss']:.3f}"
                  if "any_purchase_brier" in row else "")
        axes.plot(table["mean_predicted"], table["observed_rate"], **_series_style(name, position),
                  label=f"{titles.get(name, name)} ({scores})")
    _unit_square(axes, "predicted P(at least one purchase in the holdout), decile mean",
                 "share of the decile who bought in the holdout", "upper left",
                 "Reliability of the churn probability (its observable side)")
    return _save(figure, path)


def plot_gains(gains: dict[str, pd.DataFrame], statistics: dict[str, dict], path: str | Path,
               titles: dict[str, str]) -> Path:
    """Cumulative share of realised holdout revenue held by the customers ranked first by each
    prediction, with the best possible order and no order (the diagonal); normalised Gini in
    the legend."""
    figure = _new_figure(7.0, 6.0)
    axes = figure.add_subplot()
    first = next(iter(gains.values()))
    axes.plot(first["customers_share"], first["best_value_share"], color="black", linewidth=1,
              label="best order (by realised revenue)")
    axes.plot([0, 1], [0, 1], color="lightgray", linewidth=1, label="no order")
    for position, (name, table) in enumerate(gains.items()):
        gini = statistics.get(name, {}).get("revenue_gini", float("nan"))
        style = _series_style(name, position) | {"marker": None}
        axes.plot(table["customers_share"], table["value_share"], **style,
                  label=f"{titles.get(name, name)} (Gini {gini:.3f})")
    _unit_square(axes, "share of customers, highest predicted holdout revenue first",
                 "share of realised holdout revenue", "lower right",
                 "Gains: how much of the holdout's revenue the ranking finds")
    return _save(figure, path)


def plot_revenue_deciles(deciles: dict[str, pd.DataFrame], path: str | Path, titles: dict[str, str]) -> Path:
    """Mean predicted and realised holdout revenue per decile of the prediction, one panel per
    model (the selected one and the baseline, say)."""
    figure = _new_figure(5.5 * len(deciles), 4.8)
    for number, (name, table) in enumerate(deciles.items(), start=1):
        axes = figure.add_subplot(1, len(deciles), number)
        positions = np.arange(len(table))
        axes.bar(positions - 0.2, table["mean_predicted"], 0.4, color="tab:blue", label="predicted")
        axes.bar(positions + 0.2, table["mean_realised"], 0.4, color="black", label="realised")
        axes.set_xticks(positions)
        axes.set_xticklabels([str(decile) for decile in table["decile"]])
        axes.set_xlabel("decile of predicted holdout revenue (equal predictions share one)")
        axes.set_ylabel("mean holdout revenue per customer")
        axes.grid(alpha=0.3, axis="y")
        axes.legend(fontsize=8)
        axes.set_title(titles.get(name, name), fontsize=10)
    return _save(figure, path)


def selection_metric_by_origin_data(long_table: pd.DataFrame, key: str) -> pd.DataFrame:
    """Each model's selection metric at each origin, as the selection compares it (absolute).

    Parameters
    ----------
    long_table : pandas.DataFrame
        :func:`pipeline.stages.stability.long_table` of ``clv backtest``'s origins.
    key : str
        The metric's key in the backtest rows (``pipeline.stages.backtest.SELECTION_KEYS``).

    Returns
    -------
    pandas.DataFrame
        Indexed by ``calibration_end``, oldest first; a column per model in the table's order;
        NaN where a model has no value at an origin (it failed there).
    """
    rows = long_table[long_table["metric"] == key]
    wide = rows.assign(value=rows["value"].abs()).pivot(index="calibration_end", columns="model", values="value")
    return wide.reindex(columns=list(dict.fromkeys(rows["model"]))).sort_index()


def plot_selection_metric_by_origin(
    data: pd.DataFrame, path: str | Path, metric: str, winners: dict | None = None, ax=None,
) -> Path | None:
    """Draw each model's selection metric across the origins, as a PNG.

    Parameters
    ----------
    data : pandas.DataFrame
        Output of :func:`selection_metric_by_origin_data`.
    path : str or pathlib.Path
        Where to write the PNG (written atomically); ignored when ``ax`` is given.
    metric : str
        The selection metric's name, for the axis label.
    winners : dict, optional
        Calibration end → the model selected there, ringed on its line.
    ax : matplotlib.axes.Axes, optional
        Draw on these axes instead of a new figure; nothing is written.

    Returns
    -------
    pathlib.Path or None
        ``path``, or None when drawing on ``ax``.
    """
    figure, ax = _figure_for(ax)
    dates = pd.to_datetime(pd.Index(data.index))
    colours = colormaps["tab10"]
    for i, model in enumerate(data.columns):
        # The naive baseline is the yardstick, not a candidate: grey and dashed.
        baseline = model == "historical_baseline"
        ax.plot(dates, data[model], marker="o", color="grey" if baseline else colours(i % 10),
                linestyle="--" if baseline else "-", label=model)
    for end, model in (winners or {}).items():
        value = data[model].get(end) if model in data.columns else None
        if value is not None and np.isfinite(value):
            ax.plot([pd.Timestamp(end)], [value], marker="o", markersize=13, markerfacecolor="none",
                    markeredgecolor="black", linestyle="none")
    ax.set_xlabel("calibration end of the origin (ringed: the model selected there)")
    ax.set_ylabel(f"holdout {metric} (lower is better)")
    ax.grid(alpha=0.3)
    ax.legend(loc="best")
    ax.set_title(f"{metric} across {len(data)} origins")
    if figure is not None:
        figure.autofmt_xdate()
    return None if figure is None else _save(figure, path)
