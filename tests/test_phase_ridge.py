"""PhaseRidge (SparseTSF in closed form) against numpy, and the flagship's cross-validated stack on it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tsattn.data import SeriesDataModule
from tsattn.models.ema_attention import EMAAttentionForecaster
from tsattn.models.phase_ridge import PhaseRidge, phase_inputs, stack_weight
from tsattn.models.ridge import RidgeCycle

LOOKBACK, PERIOD = 24, 6


def _reference_rows(past: np.ndarray, period: int) -> tuple[np.ndarray, np.ndarray]:
    """Python loop: (B, L, C) -> rows (B, C, P, K), level (B, 1, C)."""
    b, length, c = past.shape
    k = length // period
    seg = past[:, length - k * period :, :]
    level = seg.mean(1, keepdims=True)
    seg = seg - level
    half = period // 2
    rows = np.zeros((b, c, period, k))
    for i in range(b):
        for ch in range(c):
            for t in range(k * period):
                window = [seg[i, s, ch] for s in range(t - half, t + half + 1) if 0 <= s < k * period]
                rows[i, ch, t % period, t // period] = seg[i, t, ch] + sum(window) / (2 * half + 1)
    return rows, level


def _train_windows(dm: SeriesDataModule) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    batches = list(dm._loader("train", shuffle=False))
    cat = lambda key: torch.cat([b[key] for b in batches]).double().numpy()  # noqa: E731
    return cat("past"), cat("future"), cat("time_idx").astype(np.int64)


def _reference_weights(past, future, period, horizon, alpha, keep=None):
    """numpy ridge of PhaseRidge over the windows ``keep``: (K, ceil(H / P)), the partial period on its phases."""
    keep = np.ones(len(past), bool) if keep is None else keep
    rows, level = _reference_rows(past[keep], period)
    n_out = -(-horizon // period)
    target = np.zeros((keep.sum(), past.shape[2], n_out * period))
    target[..., :horizon] = (future[keep] - level).transpose(0, 2, 1)
    target = target.reshape(*target.shape[:2], n_out, period).transpose(0, 1, 3, 2)  # (N, C, P, M)
    out = []
    for m in range(n_out):
        phases = min(period, horizon - m * period)
        x = rows[:, :, :phases].reshape(-1, rows.shape[-1])
        y = target[:, :, :phases, m].reshape(-1)
        xtx = x.T @ x
        out.append(np.linalg.solve(xtx + alpha * np.trace(xtx) / len(xtx) * np.eye(len(xtx)), x.T @ y))
    # full periods share one solve: the same rows, so column by column is the same as the multi-output solve
    return np.stack(out, 1)


def test_phase_inputs_match_a_loop() -> None:
    past = torch.randn(3, 26, 2, dtype=torch.float64)  # 26 steps: the first 2 are dropped (4 periods of 6)
    rows, level = phase_inputs(past, PERIOD)
    ref_rows, ref_level = _reference_rows(past.numpy(), PERIOD)
    np.testing.assert_allclose(rows.numpy(), ref_rows, atol=1e-12)
    np.testing.assert_allclose(level.numpy(), ref_level, atol=1e-12)


@pytest.mark.parametrize("horizon", [12, 9], ids=["whole-periods", "partial-period"])
def test_phase_ridge_matches_numpy(wide_frame, horizon) -> None:
    dm = SeriesDataModule(frame=wide_frame(n=300, channels=2), lookback=LOOKBACK, horizon=horizon, batch_size=32)
    model = PhaseRidge(dm.n_channels, LOOKBACK, horizon, period=PERIOD, alpha=0.05)
    model.fit_closed_form(dm.train_dataloader())  # shuffled: the statistics do not depend on the order
    past, future, _ = _train_windows(dm)
    expected = _reference_weights(past, future, PERIOD, horizon, 0.05)
    np.testing.assert_allclose(model.weight.double().numpy(), expected, rtol=1e-6, atol=1e-8)

    batch = next(iter(dm.test_dataloader()))
    with torch.no_grad():
        pred = model(batch["past"], batch["time_idx"]).double().numpy()
    rows, level = _reference_rows(batch["past"].double().numpy(), PERIOD)
    ref = np.einsum("bcpk,km->bcmp", rows, expected).reshape(*rows.shape[:2], -1)[..., :horizon]
    np.testing.assert_allclose(pred, ref.transpose(0, 2, 1) + level, rtol=1e-4, atol=1e-4)


def test_constant_training_rows_give_finite_forecasts(wide_frame) -> None:
    """A sensor stuck on one value through the training rows: the map is zero and the forecast the level."""
    frame = wide_frame(n=300, channels=1)
    frame.loc[:219, "x0"] = 7.0
    dm = SeriesDataModule(frame=frame, lookback=LOOKBACK, horizon=12, batch_size=32)
    model = PhaseRidge(dm.n_channels, LOOKBACK, 12, period=PERIOD)
    model.fit_closed_form(dm.train_dataloader())
    assert torch.equal(model.weight, torch.zeros_like(model.weight))
    batch = next(iter(dm.test_dataloader()))
    with torch.no_grad():
        assert torch.isfinite(model(batch["past"], batch["time_idx"])).all()


def test_non_finite_forecasts_are_an_error(wide_frame) -> None:
    dm = SeriesDataModule(frame=wide_frame(n=300, channels=1), lookback=LOOKBACK, horizon=12, batch_size=32)
    model = PhaseRidge(dm.n_channels, LOOKBACK, 12, period=PERIOD)
    model.weight.fill_(float("nan"))
    batch = next(iter(dm.test_dataloader()))
    with pytest.raises(ValueError, match=r"PhaseRidge forecast NaN or inf on predict windows"), torch.no_grad():
        model.predict_step(batch, 0)


def test_phase_ridge_reads_whole_periods() -> None:
    with pytest.raises(ValueError, match=r"lookback \(12\) must be at least the period \(24\)"):
        PhaseRidge(2, 12, 6, period=24)
    with pytest.raises(ValueError, match="lookback"):
        EMAAttentionForecaster(2, 12, 6, period=24, phase_stack=True, random_features=0)


def test_stack_weight_is_the_least_squares_blend() -> None:
    gen = torch.Generator().manual_seed(0)
    y = torch.randn(40, 5, 2, generator=gen, dtype=torch.float64)
    a = y + 0.3 * torch.randn(40, 5, 2, generator=gen, dtype=torch.float64)
    b = y + 0.5 * torch.randn(40, 5, 2, generator=gen, dtype=torch.float64)
    idx = torch.arange(40)
    batches = [{"future": y[i : i + 8], "idx": idx[i : i + 8]} for i in range(0, 40, 8)]
    beta = stack_weight(batches, lambda batch, k: (a[batch["idx"]], b[batch["idx"]]), lambda batch: batch["idx"] % 3)
    gap, rest = (a - b).numpy().ravel(), (y - b).numpy().ravel()
    assert beta == pytest.approx(gap @ rest / (gap @ gap), rel=1e-10)
    assert 0.5 < beta < 1  # the less noisy forecast weighs more
    # clipped to [0, 1]: a forecast worse than useless gets no negative weight
    far = stack_weight(batches, lambda batch, k: (b[batch["idx"]] + 5, b[batch["idx"]]), lambda batch: batch["idx"] % 3)
    assert far == 0.0


def _ridge_cycle_forecast(past, future, tidx, cycle, keep, out, alpha):
    """numpy RidgeCycle fitted on the windows ``keep`` with a given cycle, forecasting the windows ``out``."""
    lookback, horizon = past.shape[1], future.shape[1]

    def parts(idx):
        seasonal = cycle[(tidx[idx, None] + np.arange(-lookback, horizon)) % len(cycle)]  # (N, L + H, C)
        rest = np.concatenate([past[idx], future[idx]], 1) - seasonal
        level = rest[:, lookback - 1 : lookback]
        x = (rest[:, :lookback] - level).transpose(0, 2, 1).reshape(-1, lookback)
        y = (rest[:, lookback:] - level).transpose(0, 2, 1).reshape(-1, horizon)
        return x, y, level, seasonal[:, lookback:]

    x, y, _, _ = parts(keep)
    xtx = x.T @ x
    w = np.linalg.solve(xtx + alpha * np.trace(xtx) / lookback * np.eye(lookback), x.T @ y)
    x, _, level, future_cycle = parts(out)
    return (x @ w).reshape(out.sum(), -1, horizon).transpose(0, 2, 1) + level + future_cycle


def test_flagship_stack_is_the_cross_validated_blend(wide_frame) -> None:
    horizon, alpha, period = 12, 0.05, 24
    dm = SeriesDataModule(frame=wide_frame(n=400, channels=2), lookback=LOOKBACK, horizon=horizon, batch_size=32)
    torch.manual_seed(0)
    kw = {"period": period, "alpha": alpha, "phase_stack": True, "random_features": 0, "d_model": 8, "n_heads": 2}
    model = EMAAttentionForecaster(dm.n_channels, LOOKBACK, horizon, **kw)
    model.fit_closed_form(dm.train_dataloader())
    past, future, tidx = _train_windows(dm)
    cycle = model.cycle_start.double().numpy()
    np.testing.assert_allclose(
        model.phase_weight.double().numpy(), _reference_weights(past, future, period, horizon, alpha), rtol=1e-6
    )

    # β from explicit out-of-fold refits: blocks of L + H window origins dealt round-robin to 5 folds
    fold = (tidx // (LOOKBACK + horizon)) % 5
    num = den = 0.0
    for k in np.unique(fold):
        out = fold == k
        a = _ridge_cycle_forecast(past, future, tidx, cycle, ~out, out, alpha)
        rows, level = _reference_rows(past[out], period)
        w = _reference_weights(past, future, period, horizon, alpha, keep=~out)
        b = np.einsum("bcpk,km->bcmp", rows, w).reshape(*rows.shape[:2], -1)[..., :horizon].transpose(0, 2, 1) + level
        gap, rest = (a - b).ravel(), (future[out] - b).ravel()
        num, den = num + gap @ rest, den + gap @ gap
    beta = float(model.stack_beta)
    assert 0.0 < beta < 1.0
    assert beta == pytest.approx(num / den, rel=1e-5)

    # the untrained flagship forecasts the blend of RidgeCycle and PhaseRidge
    ridge = RidgeCycle(dm.n_channels, LOOKBACK, horizon, period=period, alpha=alpha)
    phase = PhaseRidge(dm.n_channels, LOOKBACK, horizon, period=period, alpha=alpha)
    for closed_form in (ridge, phase):
        closed_form.fit_closed_form(dm.train_dataloader())
    model.eval()
    batch = next(iter(dm.test_dataloader()))
    # the stack is saved with the model
    loaded = EMAAttentionForecaster(dm.n_channels, LOOKBACK, horizon, **kw)
    loaded.load_state_dict(model.state_dict())
    loaded.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(batch["past"], batch["time_idx"]), model(batch["past"], batch["time_idx"]))
        expected = beta * ridge(batch["past"], batch["time_idx"]) + (1 - beta) * phase(batch["past"], batch["time_idx"])
        torch.testing.assert_close(model(batch["past"], batch["time_idx"]), expected, atol=1e-5, rtol=1e-5)


def test_flagship_stack_needs_time_idx(wide_frame) -> None:
    dm = SeriesDataModule(frame=wide_frame(n=300, channels=2), lookback=LOOKBACK, horizon=6, batch_size=32)
    model = EMAAttentionForecaster(
        dm.n_channels, LOOKBACK, 6, phase_stack=True, random_features=0, d_model=8, n_heads=2
    )
    batches = [{k: v for k, v in b.items() if k != "time_idx"} for b in dm._loader("train", shuffle=False)]
    with pytest.raises(ValueError, match="phase_stack needs time_idx"):
        model.fit_closed_form(batches)


@pytest.mark.parametrize("cls", [PhaseRidge, RidgeCycle, EMAAttentionForecaster])
@pytest.mark.parametrize("alpha", [0.0, -1.0, float("inf")])
def test_bad_alpha_is_named(cls, alpha) -> None:
    with pytest.raises(ValueError, match="alpha must be a positive number or None"):
        cls(2, LOOKBACK, 6, period=PERIOD, alpha=alpha)
