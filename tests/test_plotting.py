"""plot_forecast: one panel per channel with history, forecast, actual and an optional quantile band."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from matplotlib.figure import Figure

from tsattn.plotting import plot_forecast

L, H, C = 12, 4, 3


def _labels(ax) -> list[str]:
    return [line.get_label() for line in ax.get_lines()]


def test_point_forecast_panels_and_lines():
    rng = np.random.default_rng(0)
    hist, fc, act = rng.normal(size=(L, C)), rng.normal(size=(H, C)), rng.normal(size=(H, C))
    fig = plot_forecast(hist, fc, act, channel_names=["a", "b", "c"], title="t")
    assert isinstance(fig, Figure)
    assert len(fig.axes) == C
    for c, ax in enumerate(fig.axes):
        assert _labels(ax) == ["history", "forecast", "actual"]
        history, forecast, actual = ax.get_lines()
        np.testing.assert_allclose(history.get_ydata(), hist[:, c])
        np.testing.assert_allclose(forecast.get_ydata(), fc[:, c])
        np.testing.assert_allclose(actual.get_ydata(), act[:, c])
        np.testing.assert_array_equal(forecast.get_xdata(), np.arange(L, L + H))  # continues the history
        assert not ax.collections  # no band without quantiles
    assert [ax.get_title(loc="left") for ax in fig.axes] == ["a", "b", "c"]
    assert fig.get_suptitle() == "t"


def test_quantile_band_and_median():
    levels = [0.1, 0.5, 0.9]
    base = np.linspace(0, 1, H)[:, None, None] + np.array(levels)[None, None, :]  # (H, 1, Q)
    fc = np.repeat(base, 2, axis=1)  # (H, 2, Q)
    fig = plot_forecast(np.zeros((L, 2)), fc, quantiles=levels)
    for ax in fig.axes:
        assert _labels(ax) == ["history", "forecast"]  # no actual given
        np.testing.assert_allclose(ax.get_lines()[1].get_ydata(), fc[:, 0, 1])  # the median level
        (band,) = ax.collections
        assert band.get_label() == "q0.1–q0.9"
    with pytest.raises(ValueError, match="quantiles"):
        plot_forecast(np.zeros((L, 2)), fc)


def test_one_channel_timestamps_and_tensors():
    ds = pd.date_range("2024-01-01", periods=L + H, freq="D")
    fig = plot_forecast(torch.arange(L, dtype=torch.float32), torch.ones(H), torch.zeros(H),
                        history_index=ds[:L], forecast_index=ds[L:], lower=-torch.ones(H), upper=torch.ones(H))
    (ax,) = fig.axes
    assert len(ax.get_lines()) == 3 and len(ax.collections) == 1
    fig.canvas.draw()  # renders without a display


def test_draws_into_given_axes():
    fig = Figure()
    axes = fig.subplots(2, 1)
    assert plot_forecast(np.zeros((L, 2)), np.ones((H, 2)), axes=axes) is fig
    assert all(len(ax.get_lines()) == 2 for ax in axes)


@pytest.mark.parametrize(
    ("history", "forecast", "actual"),
    [((L, 2), (H, 3), None), ((L, 2), (H, 2), (H + 1, 2)), ((L, 2, 2, 2), (H, 2), None)],
)
def test_shape_errors(history, forecast, actual):
    with pytest.raises(ValueError):
        plot_forecast(np.zeros(history), np.zeros(forecast), None if actual is None else np.zeros(actual))


def test_band_and_names_must_match_the_channels():
    hist, fc = np.zeros((L, 2)), np.ones((H, 2))
    with pytest.raises(ValueError, match=r"lower has shape \(4, 1\) but forecast has \(4, 2\)"):
        plot_forecast(hist, fc, lower=np.zeros(H), upper=np.ones(H))
    with pytest.raises(ValueError, match="channel_names has 1 names for 2 channels"):
        plot_forecast(hist, fc, channel_names=["a"])
