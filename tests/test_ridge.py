"""Closed-form ridge forecasters: exact against numpy, the seasonal cycle, and the blocked-CV penalty."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from tsattn.data import SeriesDataModule, time_index
from tsattn.models.ridge import (
    ALPHA_GRID,
    PhaseMeans,
    Ridge,
    RidgeCycle,
    RidgeStats,
    ridge_solve,
)

LOOKBACK, HORIZON = 24, 6



def _train_windows(dm: SeriesDataModule) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All training windows in order: past (N, L, C), future (N, H, C), time_idx (N,)."""
    batches = list(dm._loader("train", shuffle=False))
    past = torch.cat([b["past"] for b in batches]).double().numpy()
    future = torch.cat([b["future"] for b in batches]).double().numpy()
    tidx = torch.cat([b["time_idx"] for b in batches]).numpy()
    return past, future, tidx


def _reference_ridge(past: np.ndarray, future: np.ndarray, alpha: float) -> np.ndarray:
    """numpy ridge on (window, channel) rows: last value subtracted, penalty alpha * mean diag(XᵀX)."""
    last = past[:, -1:, :]
    x = (past - last).transpose(0, 2, 1).reshape(-1, past.shape[1])
    y = (future - last).transpose(0, 2, 1).reshape(-1, future.shape[1])
    xtx = x.T @ x
    return np.linalg.solve(xtx + alpha * np.trace(xtx) / len(xtx) * np.eye(len(xtx)), x.T @ y)


def test_ridge_matches_numpy(wide_frame) -> None:
    dm = SeriesDataModule(
        frame=wide_frame(n=400, channels=3), lookback=LOOKBACK, horizon=HORIZON, batch_size=32
    )
    model = Ridge(dm.n_channels, LOOKBACK, HORIZON, alpha=0.05)
    model.fit_closed_form(dm.train_dataloader())  # shuffled: the statistics do not depend on the order
    past, future, _ = _train_windows(dm)
    expected = _reference_ridge(past, future, 0.05)
    np.testing.assert_allclose(model.weight.double().numpy(), expected, rtol=1e-4, atol=1e-5)

    batch = next(iter(dm.test_dataloader()))
    with torch.no_grad():
        pred = model(batch["past"], batch["time_idx"]).double().numpy()
    p = batch["past"].double().numpy()
    ref = np.einsum("blc,lh->bhc", p - p[:, -1:], expected) + p[:, -1:]
    np.testing.assert_allclose(pred, ref, rtol=1e-4, atol=1e-4)


def test_ridge_stats_cv_matches_explicit_folds() -> None:
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((500, 8)), rng.standard_normal((500, 3))
    y += x[:, :3] * 0.5
    group = np.arange(500) // 20
    stats = RidgeStats(8, 3)
    stats.update(torch.from_numpy(x), torch.from_numpy(y), torch.from_numpy(group))
    errors = stats.cv_errors([0.1]).numpy()
    fold = group % stats.n_folds
    sse = 0.0
    for k in range(stats.n_folds):
        tr, te = fold != k, fold == k
        xtx = x[tr].T @ x[tr]
        w = np.linalg.solve(xtx + 0.1 * np.trace(xtx) / 8 * np.eye(8), x[tr].T @ y[tr])
        sse += ((y[te] - x[te] @ w) ** 2).sum()
    np.testing.assert_allclose(errors[0], sse / y.size, rtol=1e-8)
    w, alpha = stats.solve()
    assert alpha in ALPHA_GRID and w.shape == (8, 3)
    torch.testing.assert_close(w, ridge_solve(stats.xtx.sum(0), stats.xty.sum(0), alpha))


def test_all_zero_features_give_a_zero_map_at_every_penalty() -> None:
    """Constant training rows leave XᵀX = 0: every penalty of the grid must solve to zeros, not NaN."""
    stats = RidgeStats(4, 2)
    stats.update(torch.zeros(60, 4), torch.zeros(60, 2), torch.arange(60) // 6)
    zero = torch.zeros(4, 2, dtype=torch.float64)
    for alpha in ALPHA_GRID:
        assert torch.equal(ridge_solve(stats.xtx.sum(0), stats.xty.sum(0), alpha), zero)
    assert torch.equal(stats.solve()[0], zero)


def test_ridge_stats_do_not_depend_on_how_rows_are_batched_or_the_product_precision() -> None:
    """Statistics added batch by batch equal those of one update; float32 products (for features in [-1, 1])
    agree with float64 ones to float32 accuracy, and the targets' sum of squares stays exact."""
    rng = np.random.default_rng(1)
    x = torch.from_numpy(np.cos(rng.standard_normal((3000, 64)) * 3))
    y = torch.from_numpy(rng.standard_normal((3000, 4)))
    group = torch.from_numpy(rng.integers(0, 50, 3000))
    whole, pieces, single = RidgeStats(64, 4), RidgeStats(64, 4), RidgeStats(64, 4, product_dtype=torch.float32)
    whole.update(x, y, group)
    for sel in np.array_split(rng.permutation(3000), 7):
        pieces.update(x[sel], y[sel], group[sel])
    single.update(x.float(), y.float(), group)
    for a, b, tol in ((pieces, whole, 1e-10), (single, whole, 1e-5)):
        for name in ("xtx", "xty", "yty", "count"):
            torch.testing.assert_close(getattr(a, name), getattr(b, name), rtol=tol, atol=tol * 3000)
    assert single.xtx.dtype == torch.float64
    torch.testing.assert_close(single.cv_errors([0.1]), whole.cv_errors([0.1]), rtol=1e-5, atol=0)


def test_cv_shrinks_to_the_last_value_on_a_random_walk() -> None:
    """Nothing in a random walk's window predicts its change: the CV must pick a penalty that gives ~`Naive`."""
    rng = np.random.default_rng(3)
    n = 1500
    frame = pd.DataFrame(
        {"date": pd.date_range("2020-01-01", periods=n, freq="D"), "a": rng.standard_normal(n).cumsum()}
    )
    dm = SeriesDataModule(frame=frame, lookback=48, horizon=12, batch_size=256)
    model = Ridge(1, 48, 12)
    model.fit_closed_form(dm.train_dataloader())
    assert float(model.fitted_alpha) >= 1e3
    batch = next(iter(dm.test_dataloader()))
    with torch.no_grad():
        pred = model(batch["past"])
    last = batch["past"][:, -1:, :].expand_as(pred)
    assert float((pred - last).abs().max()) < 0.05 * float(batch["past"].std())


def _periodic_frame(n: int = 360, period: int = 24) -> pd.DataFrame:
    t = np.arange(n)
    rng = np.random.default_rng(1)
    pattern = rng.standard_normal((period, 2))
    return pd.DataFrame(
        {
            "date": pd.date_range("2024-01-01", periods=n, freq="h"),
            "a": 5.0 + pattern[t % period, 0],
            "b": -2.0 + 3.0 * pattern[t % period, 1],
        }
    )


def test_ridge_cycle_recovers_a_periodic_signal() -> None:
    dm = SeriesDataModule(frame=_periodic_frame(), lookback=LOOKBACK, horizon=HORIZON, batch_size=32)
    assert dm.period == 24
    model = RidgeCycle(dm.n_channels, LOOKBACK, HORIZON, period=dm.period)
    model.fit_closed_form(dm.train_dataloader())
    for batch in dm.test_dataloader():
        with torch.no_grad():
            pred = model(batch["past"], batch["time_idx"])
        torch.testing.assert_close(pred, batch["future"], atol=1e-4, rtol=0)
    # the plain ridge cannot do it from a 24-step window minus its last value as well
    ridge = Ridge(dm.n_channels, LOOKBACK, HORIZON)
    ridge.fit_closed_form(dm.train_dataloader())
    batch = next(iter(dm.test_dataloader()))
    with torch.no_grad():
        assert torch.isfinite(ridge(batch["past"], batch["time_idx"])).all()


def test_cycle_counts_each_training_row_once(wide_frame) -> None:
    frame = wide_frame(n=300, channels=2)
    dm = SeriesDataModule(frame=frame, lookback=LOOKBACK, horizon=HORIZON, batch_size=16)
    model = RidgeCycle(dm.n_channels, LOOKBACK, HORIZON, period=24)
    model.fit_closed_form(dm.train_dataloader())
    train_end = dm.borders[0].train_end
    values = frame[["x0", "x1"]].to_numpy()[:train_end]
    scaled = (values - dm.loc[0]) / dm.scale[0]
    phase = time_index(pd.DatetimeIndex(frame["date"]), "h")[:train_end] % 24
    expected = pd.DataFrame(scaled).groupby(phase).mean().to_numpy()
    np.testing.assert_allclose(model.cycle.double().numpy(), expected, rtol=1e-5, atol=1e-6)


def test_cycle_recency_weights(wide_frame) -> None:
    """cycle_half_life: row weights halve every half_life x training rows back from the last, against a loop."""
    frame = wide_frame(n=300, channels=2)
    dm = SeriesDataModule(frame=frame, lookback=LOOKBACK, horizon=HORIZON, batch_size=16)
    train_end = dm.borders[0].train_end
    scaled = (frame[["x0", "x1"]].to_numpy()[:train_end] - dm.loc[0]) / dm.scale[0]
    phase = time_index(pd.DatetimeIndex(frame["date"]), "h")[:train_end] % 24
    plain = RidgeCycle(dm.n_channels, LOOKBACK, HORIZON, period=24)
    plain.fit_closed_form(dm.train_dataloader())
    for half_life in (0.25, 2.0):
        model = RidgeCycle(dm.n_channels, LOOKBACK, HORIZON, period=24, cycle_half_life=half_life)
        model.fit_closed_form(dm.train_dataloader())
        sums, weights = np.zeros((24, 2)), np.zeros(24)
        for row in range(train_end):
            w = 0.5 ** ((train_end - 1 - row) / (half_life * train_end))
            sums[phase[row]] += w * scaled[row]
            weights[phase[row]] += w
        expected = sums / weights[:, None]
        np.testing.assert_allclose(model.cycle.double().numpy(), expected, rtol=1e-5, atol=1e-6)
        assert not np.allclose(plain.cycle.double().numpy(), expected, atol=1e-3)
    with pytest.raises(ValueError, match="cycle_half_life"):
        RidgeCycle(2, LOOKBACK, HORIZON, period=24, cycle_half_life=0.0)


def test_phase_means_grow_and_dedupe() -> None:
    pm = PhaseMeans(1)
    steps = torch.tensor([[10, 11, 12], [11, 12, 13]])
    pm.update(steps[..., None].double(), steps)  # value = step: overlapping rows written once
    pm.update(torch.tensor([[[3.0], [4.0]]]), torch.tensor([[3, 4]]))  # grows to the left
    assert pm.n_rows == 6
    np.testing.assert_allclose(pm.means(2).numpy().ravel(), [(4 + 10 + 12) / 3, (3 + 11 + 13) / 3])
    # recency weights per series: ages 0..10 steps back from step 13, over 6 rows
    w = {step: 0.5 ** ((13 - step) / (0.5 * 6)) for step in (3, 4, 10, 11, 12, 13)}
    even = (4 * w[4] + 10 * w[10] + 12 * w[12]) / (w[4] + w[10] + w[12])
    odd = (3 * w[3] + 11 * w[11] + 13 * w[13]) / (w[3] + w[11] + w[13])
    np.testing.assert_allclose(pm.means(2, half_life=0.5).numpy().ravel(), [even, odd])


def test_ridge_quantiles_and_bad_arguments(wide_frame) -> None:
    dm = SeriesDataModule(
        frame=wide_frame(n=300, channels=2), lookback=LOOKBACK, horizon=HORIZON, batch_size=32
    )
    model = RidgeCycle(dm.n_channels, LOOKBACK, HORIZON, period=dm.period, quantiles=[0.1, 0.5, 0.9])
    model.fit_closed_form(dm.train_dataloader())
    batch = next(iter(dm.val_dataloader()))
    with torch.no_grad():
        pred = model(batch["past"], batch["time_idx"])
    assert pred.shape == (batch["past"].shape[0], HORIZON, 2, 3)
    assert (pred.diff(dim=-1) >= 0).all() and (pred[..., 2] > pred[..., 0]).all()
    assert not any(p.requires_grad for p in model.parameters())
    with pytest.raises(ValueError, match="alpha"):
        Ridge(2, LOOKBACK, HORIZON, alpha=0.0)
    with pytest.raises(ValueError, match="revin"):
        RidgeCycle(2, LOOKBACK, HORIZON, period=24, revin=True)
    with pytest.raises(ValueError, match="time_idx"):
        model(batch["past"], None)
