"""Forecast plots: history, forecast, actual and an optional quantile band, one panel per channel.

Figures are built with :class:`matplotlib.figure.Figure` directly rather than ``pyplot``, so the CLI can draw many
of them without a display or global figure state; in a notebook a returned figure renders as usual.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import matplotlib.dates as mdates
import matplotlib.ticker as mticker
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

__all__ = ["plot_forecast"]

_COLORS = {"history": "0.35", "actual": "tab:green", "forecast": "tab:blue"}


def _as_2d(values: Any, name: str) -> np.ndarray:
    """(T,) or (T, C) array-like (numpy, torch, pandas) -> float (T, C)."""
    if hasattr(values, "detach"):  # torch tensor, without importing torch here
        values = values.detach().cpu().numpy()
    arr = np.asarray(values, dtype=float)
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim != 2:
        raise ValueError(f"{name} must have shape (time,) or (time, channels), got {arr.shape}")
    return arr


def plot_forecast(
    history: Any,
    forecast: Any,
    actual: Any | None = None,
    *,
    history_index: Sequence[Any] | None = None,
    forecast_index: Sequence[Any] | None = None,
    quantiles: Sequence[float] | None = None,
    lower: Any | None = None,
    upper: Any | None = None,
    channel_names: Sequence[str] | None = None,
    title: str | None = None,
    axes: Sequence[Axes] | None = None,
) -> Figure:
    """Plot one forecast window, one panel per channel.

    Args:
        history: past values (L,) or (L, C).
        forecast: point forecast (H,) or (H, C); or quantile forecasts (H, C, Q) with ``quantiles`` given, drawn
            as the median (the level closest to 0.5) inside a band from the lowest to the highest level.
        actual: observed values over the horizon (H,) or (H, C), or None.
        history_index, forecast_index: x positions (timestamps or numbers) of length L and H; by default the steps
            ``0..L-1`` and ``L..L+H-1``.
        quantiles: levels of the last axis of a 3-d ``forecast``.
        lower, upper: an explicit band (H,) or (H, C); overrides the band taken from quantiles.
        channel_names: one panel title per channel.
        title: figure title.
        axes: draw into these axes (one per channel) instead of a new figure.

    Returns:
        The figure; each panel holds the lines ``history``, ``forecast`` and (if given) ``actual``, in that order,
        and the band as a filled area.
    """
    hist = _as_2d(history, "history")
    fc = forecast.detach().cpu().numpy() if hasattr(forecast, "detach") else np.asarray(forecast, dtype=float)
    band_label = None
    if fc.ndim == 3:
        if quantiles is None or len(quantiles) != fc.shape[-1]:
            raise ValueError("a 3-d forecast (H, C, Q) needs `quantiles` with one level per Q")
        levels = list(quantiles)
        median = min(range(len(levels)), key=lambda i: abs(levels[i] - 0.5))
        lo, hi = int(np.argmin(levels)), int(np.argmax(levels))
        if lower is None and upper is None and lo != hi:
            lower, upper = fc[..., lo], fc[..., hi]
            band_label = f"q{levels[lo]:g}–q{levels[hi]:g}"
        fc = fc[..., median]
    fc = _as_2d(fc, "forecast")
    n_steps, n_channels = fc.shape
    if hist.shape[1] != n_channels:
        raise ValueError(f"history has {hist.shape[1]} channels but forecast has {n_channels}")
    act = _as_2d(actual, "actual") if actual is not None else None
    if act is not None and act.shape != fc.shape:
        raise ValueError(f"actual has shape {act.shape} but forecast has {fc.shape}")
    if (lower is None) != (upper is None):
        raise ValueError("give both `lower` and `upper`, or neither")
    if lower is not None:
        lower, upper = _as_2d(lower, "lower"), _as_2d(upper, "upper")
        for name, band in (("lower", lower), ("upper", upper)):
            if band.shape != fc.shape:
                raise ValueError(f"{name} has shape {band.shape} but forecast has {fc.shape}")
        band_label = band_label or "interval"
    if channel_names is not None and len(channel_names) != n_channels:
        raise ValueError(f"channel_names has {len(channel_names)} names for {n_channels} channels")

    x_hist = np.arange(len(hist)) if history_index is None else history_index
    x_fc = np.arange(len(hist), len(hist) + n_steps) if forecast_index is None else forecast_index
    if len(x_hist) != len(hist) or len(x_fc) != n_steps:
        raise ValueError("history_index and forecast_index must match the lengths of history and forecast")

    if axes is None:
        fig = Figure(figsize=(9, 2.4 * n_channels + 0.6), layout="constrained")
        axes = fig.subplots(n_channels, 1, sharex=True, squeeze=False)[:, 0]
    else:
        axes = list(axes)
        if len(axes) != n_channels:
            raise ValueError(f"got {len(axes)} axes for {n_channels} channels")
        fig = axes[0].figure
    names = list(channel_names) if channel_names is not None else [f"channel {c}" for c in range(n_channels)]

    for c, ax in enumerate(axes):
        ax.plot(x_hist, hist[:, c], color=_COLORS["history"], lw=1.0, label="history")
        ax.plot(x_fc, fc[:, c], color=_COLORS["forecast"], lw=1.6, label="forecast")
        if act is not None:
            ax.plot(x_fc, act[:, c], color=_COLORS["actual"], lw=1.2, label="actual")
        if lower is not None:
            ax.fill_between(x_fc, lower[:, c], upper[:, c], color=_COLORS["forecast"], alpha=0.2, lw=0,
                            label=band_label)
        ax.set_title(names[c], fontsize=9, loc="left")
        ax.grid(alpha=0.3)
        if np.issubdtype(np.asarray(x_hist).dtype, np.datetime64):
            # Short tick labels whatever the step (days for prices, milliseconds for 50 Hz sensors).
            ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(ax.xaxis.get_major_locator()))
    axes[0].legend(loc="upper left", fontsize=8, ncol=4)
    if title:
        fig.suptitle(title)
    return fig


# ----------------------------------------------------------------------------------------------------------------
# Analysis plots (attention maps, memory lengths, the EMA decay trade-off, model comparisons); the measurements
# they draw come from :mod:`tsattn.analysis`.

__all__ += [
    "plot_attention",
    "plot_decay_tradeoff",
    "plot_memory_lengths",
    "plot_memory_over_time",
    "plot_model_comparison",
]


def _as_array(values: Any) -> np.ndarray:
    if hasattr(values, "detach"):  # torch tensor, without importing torch here
        values = values.detach().cpu().numpy()
    return np.asarray(values, dtype=float)


def plot_attention(
    weights: Any,
    *,
    row_labels: Sequence[Any] | None = None,
    panel_titles: Sequence[str] | None = None,
    max_offset: int | None = None,
    xlabel: str = "steps back (history offset d)",
    ylabel: str | None = None,
    cbar_label: str = "attention weight",
    title: str | None = None,
    cmap: str = "viridis",
    vmin: float | None = 0.0,
    vmax: float | None = None,
    axes: Sequence[Axes] | None = None,
) -> Figure:
    """Heatmaps of attention weights over a history window, one panel per head.

    Args:
        weights: (W,), (R, W) or (P, R, W) weights by history offset d = 0..W-1 (d = 0 is the current step): R rows
            (forecasts, steps, or heads) in each of P panels (heads, models). Any non-negative map works, e.g. gates.
        row_labels: R labels for the rows (e.g. forecast dates); at most about 12 are shown.
        panel_titles: P titles; default "head p".
        max_offset: show offsets 0..max_offset only.
        vmin, vmax: colour range shared by the panels; default 0 to the largest weight (None for vmin: the smallest
            value, e.g. to see the structure of gates that stay near 0.5).
        axes: draw into these P axes instead of a new figure.

    Returns:
        The figure: P heatmap panels (one image each, offsets along x, rows along y, row 0 at the top) sharing one
        colour scale, and a colorbar labelled ``cbar_label``.
    """
    w = _as_array(weights)
    if w.ndim == 1:
        w = w[None, None]
    elif w.ndim == 2:
        w = w[None]
    if w.ndim != 3 or w.shape[-1] == 0:
        raise ValueError(f"weights must have shape (W,), (R, W) or (P, R, W), got {w.shape}")
    if max_offset is not None:
        w = w[..., : int(max_offset) + 1]
    n_panels, n_rows, n_offsets = w.shape
    if row_labels is not None and len(row_labels) != n_rows:
        raise ValueError(f"got {len(row_labels)} row labels for {n_rows} rows")
    titles = list(panel_titles) if panel_titles is not None else [f"head {p}" for p in range(n_panels)]
    if len(titles) != n_panels:
        raise ValueError(f"got {len(titles)} panel titles for {n_panels} panels")
    if axes is None:
        ncols = min(n_panels, 4)
        nrows = -(-n_panels // ncols)
        fig = Figure(figsize=(3.2 * ncols + 1.0, (0.22 * n_rows + 1.6) * nrows + 0.4), layout="constrained")
        grid = fig.subplots(nrows, ncols, squeeze=False, sharey=True)
        for ax in grid.ravel()[n_panels:]:
            ax.remove()
        axes = list(grid.ravel()[:n_panels])
    else:
        axes = list(axes)
        if len(axes) != n_panels:
            raise ValueError(f"got {len(axes)} axes for {n_panels} panels")
        fig = axes[0].figure
    finite = np.isfinite(w).any()
    lo = vmin if vmin is not None else (float(np.nanmin(w)) if finite else 0.0)
    hi = vmax if vmax is not None else (float(np.nanmax(w)) if finite else 1.0)
    if hi <= lo:
        hi = lo + 1.0
    image = None
    ticks = np.unique(np.linspace(0, n_rows - 1, min(n_rows, 12)).round().astype(int))
    for p, ax in enumerate(axes):
        image = ax.imshow(
            w[p], aspect="auto", origin="upper", cmap=cmap, vmin=lo, vmax=hi, interpolation="nearest",
            extent=(-0.5, n_offsets - 0.5, n_rows - 0.5, -0.5),
        )
        ax.set_title(titles[p], fontsize=9, loc="left")
        ax.set_xlabel(xlabel)
        if row_labels is not None:
            ax.set_yticks(ticks, [str(row_labels[i]) for i in ticks], fontsize=7)
        else:
            ax.set_yticks(ticks)
        if p == 0 and ylabel:
            ax.set_ylabel(ylabel)
    fig.colorbar(image, ax=axes, label=cbar_label, shrink=0.9)
    if title:
        fig.suptitle(title)
    return fig


def plot_decay_tradeoff(
    table: Any,
    *,
    learned: Any | None = None,
    learned_labels: Sequence[str] | None = None,
    theory: bool = True,
    title: str | None = None,
    ax: Axes | None = None,
) -> Figure:
    """The EMA trade-off curve: lag after a step change (x) against residual noise variance (y), one point per decay.

    Args:
        table: DataFrame with columns ``decay``, ``lag``, ``noise_var`` (as from `tsattn.analysis.decay_tradeoff`);
            with ``lag_theory`` and ``noise_var_theory`` too and ``theory=True`` the closed form is drawn dashed.
        learned: a second such table (e.g. the learned decays of a model), drawn as labelled markers on the curve.
        learned_labels: one label per row of ``learned`` (default "λ=…").

    Returns:
        The figure: a log-scaled noise axis, the measured curve as a line with markers labelled "measured", the
        closed form (if drawn, as markers) labelled "closed form", and the learned points labelled "learned".
    """
    if ax is None:
        fig = Figure(figsize=(7, 4.6), layout="constrained")
        ax = fig.subplots()
    else:
        fig = ax.figure
    order = np.argsort(_as_array(table["decay"]))
    lag, var, lam = (_as_array(table[c])[order] for c in ("lag", "noise_var", "decay"))
    ax.plot(lag, var, "o-", color="tab:blue", ms=4, lw=1.4, label="measured")
    if theory and {"lag_theory", "noise_var_theory"} <= set(table.columns):
        # markers, not a line: the clean lag is a whole number of steps, a line would draw a staircase
        ax.plot(_as_array(table["lag_theory"])[order], _as_array(table["noise_var_theory"])[order], "x",
                color="0.35", ms=5, ls="none", label="closed form")
    for i in np.unique(np.linspace(0, len(lam) - 1, min(len(lam), 6)).round().astype(int)):
        ax.annotate(f"λ={lam[i]:.3g}", (lag[i], var[i]), textcoords="offset points", xytext=(4, 4), fontsize=7,
                    color="tab:blue")
    if learned is not None:
        l_lag, l_var, l_lam = (_as_array(learned[c]) for c in ("lag", "noise_var", "decay"))
        labels = list(learned_labels) if learned_labels is not None else [f"λ={v:.3g}" for v in l_lam]
        if len(labels) != len(l_lam):
            raise ValueError(f"got {len(labels)} labels for {len(l_lam)} learned decays")
        ax.plot(l_lag, l_var, "*", color="tab:red", ms=13, mec="k", mew=0.6, ls="none", label="learned")
        for i, (x, y, text) in enumerate(zip(l_lag, l_var, labels, strict=True)):
            ax.annotate(text, (x, y), textcoords="offset points", xytext=(7, -12 if i % 2 == 0 else 5), fontsize=8,
                        color="tab:red")
    ax.set_xscale("symlog", linthresh=1.0)
    ax.set_yscale("log")
    ax.set_xlabel("lag: steps to cover 50 % of a step change")
    ax.set_ylabel("residual noise variance")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title)
    return fig


def _frame_like(values: Any, index_name: str, column_name: str) -> Any:
    import pandas as pd  # plotting needs pandas only for these helpers

    if isinstance(values, pd.DataFrame):
        return values
    if isinstance(values, pd.Series):
        return values.to_frame()
    if isinstance(values, dict):
        return pd.DataFrame({k: _as_array(v) for k, v in values.items()})
    arr = _as_array(values)
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim != 2:
        raise ValueError(f"expected a DataFrame, a dict of 1-d arrays or a 1-d/2-d array, got shape {arr.shape}")
    frame = pd.DataFrame(arr)
    frame.index.name, frame.columns.name = index_name, column_name
    return frame


def plot_memory_lengths(
    lengths: Any,
    *,
    reference: Any | None = None,
    reference_label: str = "EMA prior",
    ylabel: str = "memory length (steps)",
    title: str | None = None,
    ax: Axes | None = None,
) -> Figure:
    """Grouped bars of a memory length per head, one bar colour per group (e.g. "before" / "after" a break).

    Args:
        lengths: DataFrame (rows: heads, columns: groups), a dict group -> (H,), or an array (H,) / (H, G).
        reference: optional (H,) values drawn as a black tick over each head's bars (e.g. the EMA prior's length).

    Returns:
        The figure: one bar container per group (legend entries = group names), x ticks = row labels.
    """
    frame = _frame_like(lengths, "head", "group")
    n_heads, n_groups = frame.shape
    if ax is None:
        fig = Figure(figsize=(1.1 * n_heads * max(n_groups, 1) ** 0.5 + 3.0, 3.8), layout="constrained")
        ax = fig.subplots()
    else:
        fig = ax.figure
    x = np.arange(n_heads)
    width = 0.8 / max(n_groups, 1)
    for g, column in enumerate(frame.columns):
        ax.bar(x - 0.4 + width * (g + 0.5), _as_array(frame[column]), width, label=str(column))
    if reference is not None:
        ref = _as_array(reference).ravel()
        if len(ref) != n_heads:
            raise ValueError(f"reference has {len(ref)} values for {n_heads} heads")
        ax.hlines(ref, x - 0.45, x + 0.45, colors="k", lw=2.0, label=reference_label)
    ax.set_xticks(x, [str(i) for i in frame.index])
    ax.set_xlabel(str(frame.index.name or "head"))
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title)
    return fig


def plot_memory_over_time(
    lengths: Any,
    *,
    event: Any | None = None,
    event_label: str = "break",
    ylabel: str = "memory length (steps)",
    title: str | None = None,
    ax: Axes | None = None,
) -> Figure:
    """Memory length per head along the forecast origins, with an optional vertical line at an event.

    Args:
        lengths: DataFrame indexed by forecast origin (timestamps or steps), one column per head.
        event: x position of an event (e.g. a regime change date), drawn as a dashed vertical line.

    Returns:
        The figure: one line per column (legend = column names), plus the event line if given.
    """
    frame = _frame_like(lengths, "origin", "head")
    if ax is None:
        fig = Figure(figsize=(9, 3.8), layout="constrained")
        ax = fig.subplots()
    else:
        fig = ax.figure
    for column in frame.columns:
        ax.plot(frame.index, _as_array(frame[column]), lw=1.2, label=str(column))
    if event is not None:
        ax.axvline(event, color="k", ls="--", lw=1.0, label=event_label)
    ax.set_xlabel(str(frame.index.name or "forecast origin"))
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, ncol=min(len(frame.columns) + 1, 6))
    if title:
        ax.set_title(title)
    return fig


def plot_model_comparison(
    table: Any,
    *,
    columns: Sequence[str] | None = None,
    log_columns: Sequence[str] = (),
    title: str | None = None,
) -> Figure:
    """Bar panels comparing models, one panel per column of ``table`` (rows: models, e.g. test MSE, parameters).

    Args:
        table: DataFrame indexed by model name (optionally a (dataset, model) MultiIndex: one bar per row, labelled
            "dataset/model").
        columns: numeric columns to draw (default: all numeric columns).
        log_columns: columns drawn on a log scale (e.g. parameter counts).

    Returns:
        The figure: one axes per column, titled with the column name, one bar per row.
    """
    cols = list(columns) if columns is not None else [c for c in table.columns if np.issubdtype(
        np.asarray(table[c]).dtype, np.number)]
    if not cols:
        raise ValueError("no numeric columns to plot")
    labels = ["/".join(map(str, i)) if isinstance(i, tuple) else str(i) for i in table.index]
    fig = Figure(figsize=(3.2 * len(cols) + 0.5, 0.18 * len(labels) + 2.6), layout="constrained")
    axes = fig.subplots(1, len(cols), squeeze=False)[0]
    y = np.arange(len(labels))
    colors = [f"C{i % 10}" for i in range(len(labels))]
    for ax, column in zip(axes, cols, strict=True):
        values = _as_array(table[column])
        ax.barh(y, values, color=colors)
        ax.set_yticks(y, labels if ax is axes[0] else [""] * len(labels), fontsize=8)
        ax.invert_yaxis()
        ax.set_title(str(column), fontsize=9)
        if column in log_columns:
            ax.set_xscale("log")
            # plain labels: at 1, 2 and 5 times powers of ten, or three evenly spaced ones within a decade
            positive = values[values > 0]
            narrow = positive.size and positive.max() < 10 * positive.min()
            ax.xaxis.set_major_locator(
                mticker.MaxNLocator(nbins=3) if narrow else mticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0))
            )
            ax.xaxis.set_major_formatter(mticker.FuncFormatter(lambda v, _: f"{v:g}"))
            ax.xaxis.set_minor_formatter(mticker.NullFormatter())
        ax.grid(alpha=0.3, axis="x")
    if title:
        fig.suptitle(title)
    return fig
