"""Analysis helpers (tsattn.analysis) and the analysis plots of tsattn.plotting, each on its own."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from matplotlib.figure import Figure

from tsattn.analysis import (
    attention_maps,
    decay_tradeoff,
    ema_prior_weights,
    expected_offset,
    gam_gates,
    half_life,
    mass_offset,
    settle_steps,
    step_lag,
    step_signal,
)
from tsattn.layers import EMAAttentionBlock, EMAHistoryAttention, GAM1d, ema
from tsattn.plotting import (
    plot_attention,
    plot_decay_tradeoff,
    plot_memory_lengths,
    plot_memory_over_time,
    plot_model_comparison,
)

# ------------------------------------------------------------------------------------------------- measurements


def test_half_life_and_settle_steps():
    np.testing.assert_allclose(half_life([0.5, 0.5**0.1]), [1.0, 10.0])
    assert int(settle_steps(0.5, tol=0.01)) == 7  # 0.5**7 < 0.01 <= 0.5**6
    with pytest.raises(ValueError, match="decays"):
        half_life(1.0)


def test_step_signal_shapes_and_level():
    noisy, level = step_signal(100, 40, before=2.0, after=-1.0, noise=0.0, repeats=3)
    assert noisy.shape == (3, 100) and level.shape == (100,)
    assert (level[:40] == 2.0).all() and (level[40:] == -1.0).all()
    np.testing.assert_array_equal(noisy[1], level)
    with pytest.raises(ValueError, match="step_at"):
        step_signal(10, 10)


@pytest.mark.parametrize("decay", [0.3, 0.5, 0.8, 0.95, 0.5 ** (1 / 2), 0.5 ** (1 / 3)])  # whole half-lives too
def test_step_lag_of_a_clean_ema_matches_the_half_life(decay):
    # clean unit step smoothed by an EMA: y = 1 - λ^(k+1) after the step, so it crosses 0.5 at k = ⌈hl⌉ - 1
    _, level = step_signal(400, 200, noise=0.0)
    y = ema(torch.tensor(level)[None, :, None], decay)[0, :, 0]
    expected = max(np.ceil(np.log(0.5) / np.log(decay) - 1e-9) - 1, 0)  # a whole half-life: exactly at 0.5
    assert step_lag(y, 200, 0.0, 1.0) == expected


def test_step_lag_direction_batch_and_never():
    y = np.array([[5.0, 5.0, 4.0, 2.0, 1.0], [5.0, 5.0, 5.0, 5.0, 5.0]])  # a downward step at index 2
    np.testing.assert_array_equal(step_lag(y, 2, before=5.0, after=1.0), [1.0, np.nan])
    assert step_lag(y[0], 2, 5.0, 1.0, level=0.9) == 2.0
    with pytest.raises(ValueError, match="step_at=5 must index a sample of the 5"):
        step_lag(y, 5, 5.0, 1.0)


def test_decay_tradeoff_matches_closed_forms():
    decays = [0.5, 0.9, 0.97]
    table = decay_tradeoff(decays, noise=0.5, repeats=32)
    assert list(table.columns) == ["decay", "half_life", "lag", "noise_var", "lag_theory", "noise_var_theory"]
    np.testing.assert_allclose(table["decay"], decays)
    # the measured noise variance is the steady-state σ²(1-λ)/(1+λ), within sampling error
    np.testing.assert_allclose(table["noise_var"], table["noise_var_theory"], rtol=0.15)
    # lag grows with the decay and is about the half-life
    assert table["lag"].is_monotonic_increasing
    assert (np.abs(table["lag"] - table["lag_theory"]) <= 1.5).all()
    # noise-free: the measured lag is exactly the clean step response
    clean = decay_tradeoff(decays, noise=0.0, repeats=1)
    np.testing.assert_array_equal(clean["lag"], clean["lag_theory"])
    np.testing.assert_allclose(clean["noise_var"], 0.0, atol=1e-4)  # transient below tol=1% of the step


def test_decay_tradeoff_rejects_bad_input():
    with pytest.raises(ValueError, match="decays"):
        decay_tradeoff([0.5, 1.0])
    with pytest.raises(ValueError, match="too short"):
        decay_tradeoff([0.99], length=200)


def test_ema_prior_weights_are_the_attention_without_content():
    window, decays = 8, torch.tensor([0.3, 0.9])
    attn = EMAHistoryAttention(d_model=4, n_heads=2, window=window, similarity="none")
    with torch.no_grad():
        attn.decay_logit.copy_(torch.logit(decays))
        _, weights = attn(torch.randn(1, 20, 4), return_weights=True)  # (1, H, L, W)
    prior = ema_prior_weights(decays, window)  # (H, W)
    assert prior.shape == (2, window)
    np.testing.assert_allclose(prior.sum(-1), 1.0)
    np.testing.assert_allclose(weights[0, :, -1].numpy(), prior, atol=1e-6)  # a step with a full history


def test_expected_and_mass_offset():
    w = np.array([[1.0, 0.0, 0.0, 0.0], [0.25, 0.25, 0.25, 0.25], [0.0, 0.0, 0.0, 2.0]])
    np.testing.assert_allclose(expected_offset(w), [0.0, 1.5, 3.0])
    np.testing.assert_array_equal(mass_offset(w, 0.9), [0.0, 3.0, 3.0])
    np.testing.assert_array_equal(mass_offset(w, 0.5), [0.0, 1.0, 3.0])
    batch = torch.rand(2, 3, 5, 6)  # (B, H, L, W) tensors work, over the last axis
    assert expected_offset(batch).shape == (2, 3, 5) and mass_offset(batch).shape == (2, 3, 5)
    assert np.isnan(expected_offset(np.zeros(4)))  # no weight at all
    with pytest.raises(ValueError, match="mass"):
        mass_offset(w, 0.0)


def test_memory_of_the_ema_prior_grows_with_the_decay():
    prior = ema_prior_weights([0.2, 0.7, 0.95], window=64)
    assert np.all(np.diff(expected_offset(prior)) > 0)
    assert np.all(np.diff(mass_offset(prior)) > 0)


def test_attention_maps_reads_every_attention_layer_without_changing_the_output():
    torch.manual_seed(0)
    net = torch.nn.Sequential(EMAAttentionBlock(8, 2, window=5), EMAAttentionBlock(8, 4, window=3)).eval()
    x = torch.randn(2, 11, 8)
    with torch.no_grad():
        before = net(x)
    maps = attention_maps(net, x)
    assert list(maps) == ["0.attn", "1.attn"]
    assert maps["0.attn"].shape == (2, 2, 11, 5) and maps["1.attn"].shape == (2, 4, 11, 3)
    with torch.no_grad():
        _, expected = net[0](x, return_weights=True)
        torch.testing.assert_close(net(x), before)  # hooks are removed afterwards
    torch.testing.assert_close(maps["0.attn"], expected)
    torch.testing.assert_close(maps["1.attn"].sum(-1), torch.ones(2, 4, 11))


def test_gam_gates_rebuild_the_layer_output():
    torch.manual_seed(0)
    gam = GAM1d(8, reduction=2).eval()
    x = torch.randn(3, 20, 8)
    ((name, (channel, temporal)),) = gam_gates(torch.nn.Sequential(gam), x).items()
    assert name == "0" and channel.shape == temporal.shape == (3, 20, 8)
    assert bool(((channel > 0) & (channel < 1)).all() and ((temporal > 0) & (temporal < 1)).all())
    with torch.no_grad():
        torch.testing.assert_close(x * channel * temporal, gam(x))


# ------------------------------------------------------------------------------------------------- plots


def _images(fig: Figure) -> list:
    return [im for ax in fig.axes for im in ax.get_images()]


def test_plot_attention_panels_rows_and_colorbar():
    rng = np.random.default_rng(0)
    w = rng.dirichlet(np.ones(10), size=(3, 5))  # (P=3, R=5, W=10)
    labels = [f"2022-0{i + 1}-01" for i in range(5)]
    fig = plot_attention(w, row_labels=labels, ylabel="forecast", title="maps")
    assert isinstance(fig, Figure)
    panels = [ax for ax in fig.axes if ax.get_images()]
    assert len(panels) == 3 and len(fig.axes) == 4  # three heads and one colorbar
    assert [ax.get_title(loc="left") for ax in panels] == ["head 0", "head 1", "head 2"]
    for p, ax in enumerate(panels):
        np.testing.assert_allclose(ax.get_images()[0].get_array(), w[p])
        assert ax.get_xlabel().startswith("steps back")
    assert panels[0].get_ylabel() == "forecast"
    assert [t.get_text() for t in panels[0].get_yticklabels()] == labels
    clims = {im.get_clim() for im in _images(fig)}
    assert clims == {(0.0, w.max())}  # one shared colour scale
    assert fig.axes[-1].get_ylabel() == "attention weight"
    assert fig.get_suptitle() == "maps"
    fig.canvas.draw()


def test_plot_attention_shapes_max_offset_and_axes():
    fig = plot_attention(torch.softmax(torch.randn(12), 0), max_offset=5)  # (W,) tensor
    (im,) = _images(fig)
    assert im.get_array().shape == (1, 6)
    host = Figure()
    axes = host.subplots(1, 2)
    out = plot_attention(np.ones((2, 3, 4)), axes=axes, panel_titles=["ema", "gam"], cbar_label="gate")
    assert out is host and [ax.get_title(loc="left") for ax in axes] == ["ema", "gam"]
    assert host.axes[-1].get_ylabel() == "gate"
    gates = 0.5 + 0.01 * np.random.default_rng(1).standard_normal((2, 7))
    (im,) = _images(plot_attention(gates, vmin=None))  # stretch the colours to the data
    assert im.get_clim() == (gates.min(), gates.max())
    with pytest.raises(ValueError, match="shape"):
        plot_attention(np.ones((1, 2, 3, 4)))
    with pytest.raises(ValueError, match="row labels"):
        plot_attention(np.ones((3, 4)), row_labels=["a"])


def test_plot_decay_tradeoff_curve_theory_and_learned():
    table = decay_tradeoff([0.5, 0.8, 0.9, 0.95], repeats=8)
    learned = decay_tradeoff([0.7, 0.93], repeats=8)
    fig = plot_decay_tradeoff(table, learned=learned, learned_labels=["head 0", "head 1"], title="t")
    (ax,) = fig.axes
    lines = {line.get_label(): line for line in ax.get_lines()}
    assert set(lines) == {"measured", "closed form", "learned"}
    np.testing.assert_allclose(lines["measured"].get_xdata(), table["lag"])
    np.testing.assert_allclose(lines["measured"].get_ydata(), table["noise_var"])
    np.testing.assert_allclose(lines["learned"].get_ydata(), learned["noise_var"])
    texts = [t.get_text() for t in ax.texts]
    assert "head 0" in texts and "head 1" in texts
    assert ax.get_yscale() == "log" and "lag" in ax.get_xlabel() and "noise" in ax.get_ylabel()
    fig.canvas.draw()
    bare = plot_decay_tradeoff(table[["decay", "lag", "noise_var"]], theory=True).axes[0]
    assert [line.get_label() for line in bare.get_lines()] == ["measured"]  # no closed-form columns


def test_plot_memory_lengths_groups_and_reference():
    lengths = pd.DataFrame({"before": [1.0, 4.0, 9.0], "after": [2.0, 3.0, 12.0]},
                           index=pd.Index(["h0", "h1", "h2"], name="head"))
    fig = plot_memory_lengths(lengths, reference=[1.5, 3.5, 10.0], title="memory")
    (ax,) = fig.axes
    assert len(ax.containers) == 2
    np.testing.assert_allclose([bar.get_height() for bar in ax.containers[1]], lengths["after"])
    assert [t.get_text() for t in ax.get_xticklabels()] == ["h0", "h1", "h2"]
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert sorted(legend) == ["EMA prior", "after", "before"]
    assert ax.get_title() == "memory"
    single = plot_memory_lengths(np.array([1.0, 2.0])).axes[0]  # a plain array works too
    assert len(single.containers) == 1
    with pytest.raises(ValueError, match="reference"):
        plot_memory_lengths(lengths, reference=[1.0])


def test_plot_memory_over_time_lines_and_event():
    idx = pd.date_range("2022-05-01", periods=20, freq="B")
    lengths = pd.DataFrame({"head 0": np.arange(20.0), "head 1": np.ones(20)}, index=idx)
    fig = plot_memory_over_time(lengths, event=pd.Timestamp("2022-05-16"), event_label="regime change")
    (ax,) = fig.axes
    labels = [line.get_label() for line in ax.get_lines()]
    assert labels == ["head 0", "head 1", "regime change"]
    np.testing.assert_allclose(ax.get_lines()[0].get_ydata(), np.arange(20.0))
    fig.canvas.draw()


def test_plot_model_comparison_panels():
    table = pd.DataFrame(
        {"model": ["ema", "gam", "naive"], "test_mse": [0.1, 0.2, 0.3], "params": [1e3, 1e4, 0.0]}
    ).set_index("model")
    fig = plot_model_comparison(table, log_columns=["params"], title="cmp")
    assert [ax.get_title() for ax in fig.axes] == ["test_mse", "params"]
    assert fig.axes[1].get_xscale() == "log"
    fig.canvas.draw()
    shown = [t.get_text() for t in fig.axes[1].get_xticklabels() if t.get_text()]
    assert shown and all("times" not in t and "^" not in t for t in shown)  # plain numbers, no 10^k mathtext
    narrow = plot_model_comparison(table.assign(us=[115.0, 262.0, 170.0]), columns=["us"], log_columns=["us"])
    narrow.canvas.draw()
    ax = narrow.axes[0]
    lo, hi = ax.get_xlim()
    shown = [t.get_text() for t in ax.get_xticklabels() if t.get_text() and lo <= t.get_position()[0] <= hi]
    assert 2 <= len(shown) <= 4 and all("^" not in t for t in shown)  # a few readable labels within a decade
    np.testing.assert_allclose([p.get_width() for p in fig.axes[0].patches], table["test_mse"])
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == ["ema", "gam", "naive"]
    multi = table.copy()
    multi.index = pd.MultiIndex.from_tuples([("market", m) for m in table.index])
    ax = plot_model_comparison(multi, columns=["test_mse"]).axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["market/ema", "market/gam", "market/naive"]
    with pytest.raises(ValueError, match="numeric"):
        plot_model_comparison(pd.DataFrame({"name": ["a"]}))
