"""Closed-form ridge forecasters: the references every learned tsattn model must beat in the same run.

- ``Ridge``: ridge regression (Hoerl & Kennard 1970) from the lookback window, its last value subtracted, to the
  horizon (the last value added back); one map shared by every channel (channel-independent, as in DLinear,
  Zeng et al. 2023), fit in closed form in float64.
- ``RidgeCycle``: the same ridge on the residual of a per-channel seasonal cycle, the mean of each phase
  ``time_idx % period`` on the training rows, added back to the forecast. A fitted, not learned, version of the
  cycle of CycleNet (Lin et al. 2024, "CycleNet: Enhancing Time Series Forecasting through Modeling Periodic
  Patterns").

Neither has a trainable parameter: ``Trainer.fit`` fits them in one pass over the training windows
(``fit_closed_form``), validates and checkpoints. The pieces (``PhaseMeans``, ``RidgeStats``, ``ridge_solve``,
``ridge_inputs``, ``fit_ridge_cycle``) are public so learned forecasters can start from the same solution.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Sequence

import numpy as np
import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn

from tsattn.models.baselines import _RuleForecaster

__all__ = [
    "ALPHA_GRID",
    "PhaseMeans",
    "Ridge",
    "RidgeCycle",
    "RidgeStats",
    "check_alpha",
    "check_half_life",
    "cv_group",
    "cycle_period",
    "fit_ridge_cycle",
    "phase_index",
    "ridge_cycle_stats",
    "ridge_inputs",
    "ridge_solve",
]

log = logging.getLogger(__name__)

# Relative ridge penalties tried by blocked cross-validation when ``alpha`` is None (see `RidgeStats.solve`). The
# large ones shrink the map to nearly zero, i.e. to the last value (plus the cycle): what the CV picks where nothing in
# the window predicts the change (a random walk), so that a closed form need not lose to `Naive` for want of a penalty.
ALPHA_GRID: tuple[float, ...] = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0, 1e2, 1e3, 1e4, 1e5)
_N_FOLDS = 5


def ridge_solve(xtx: Tensor, xty: Tensor, alpha: float) -> Tensor:
    """Ridge weights ``(XᵀX + α·tr(XᵀX)/F·I)⁻¹ XᵀY``: xtx (F, F), xty (F, H) float64 -> (F, H).

    ``alpha`` is relative to the mean diagonal of XᵀX (the mean squared feature), so one value suits any scale
    and any number of training windows.
    """
    f = xtx.shape[0]
    # clamped after the product: a subnormal penalty on an all-zero XᵀX (constant training rows) makes solve NaN
    ridge = (alpha * torch.trace(xtx) / f).clamp_min(torch.finfo(xtx.dtype).tiny)
    eye = torch.eye(f, dtype=xtx.dtype, device=xtx.device)
    return torch.linalg.solve(xtx + ridge * eye, xty)


class RidgeStats:
    """Sufficient statistics XᵀX, XᵀY, YᵀY of a ridge regression, kept per cross-validation fold, in float64.

    Rows are assigned to ``n_folds`` folds by a group key (the forecasters use blocks of ``lookback + horizon``
    consecutive window origins, dealt round-robin), so the penalty can be chosen by blocked K-fold
    cross-validation from the statistics alone, without a second pass over the data. ``product_dtype`` is the
    precision of each batch's products before they are added up in float64: float32 halves the cost for wide,
    well-conditioned features such as random Fourier features, whose entries lie in [-1, 1].
    """

    def __init__(
        self,
        n_features: int,
        n_targets: int,
        n_folds: int = _N_FOLDS,
        device=None,
        product_dtype: torch.dtype = torch.float64,
    ) -> None:
        kw = {"dtype": torch.float64, "device": device}
        self.n_folds = n_folds
        self.product_dtype = product_dtype
        self.xtx = torch.zeros(n_folds, n_features, n_features, **kw)
        self.xty = torch.zeros(n_folds, n_features, n_targets, **kw)
        self.yty = torch.zeros(n_folds, **kw)
        self.count = torch.zeros(n_folds, **kw)

    def update(self, x: Tensor, y: Tensor, group: Tensor) -> None:
        """Add rows x (N, F), y (N, H) with group keys (N,) int (fold = group mod n_folds)."""
        kw = {"dtype": self.product_dtype, "device": self.xtx.device}
        x, y = x.to(**kw), y.to(**kw)
        fold = group.to(self.xtx.device).long() % self.n_folds
        for k in fold.unique().tolist():
            sel = fold == k
            xk, yk = x[sel], y[sel]
            self.xtx[k] += xk.T @ xk
            self.xty[k] += xk.T @ yk
            self.yty[k] += (yk.double() * yk.double()).sum()
            self.count[k] += yk.numel()

    @property
    def n_rows(self) -> int:
        return int(self.count.sum().item() / max(self.xty.shape[-1], 1))

    def fold_weights(self, alpha: float) -> Tensor:
        """(n_folds, F, H) float64: the weights fitted without each fold."""
        xtx, xty = self.xtx.sum(0), self.xty.sum(0)
        return torch.stack([ridge_solve(xtx - self.xtx[k], xty - self.xty[k], alpha) for k in range(self.n_folds)])

    def cv_errors(self, grid: Sequence[float] = ALPHA_GRID) -> Tensor:
        """Blocked K-fold mean squared error of each penalty in ``grid``, (len(grid),)."""
        used = [k for k in range(self.n_folds) if self.count[k] > 0]
        errors = torch.zeros(len(grid), dtype=torch.float64)
        for i, alpha in enumerate(grid):
            sse = 0.0
            weights = self.fold_weights(alpha)
            for k in used:
                w = weights[k]  # fitted without fold k
                # ||Y_k - X_k W||² = YᵀY - 2 tr(Wᵀ XᵀY) + tr(Wᵀ XᵀX W), all from fold k's statistics
                sse += self.yty[k] - 2 * (w * self.xty[k]).sum() + (w * (self.xtx[k] @ w)).sum()
            errors[i] = sse / self.count[used].sum()
        return errors

    def solve(self, alpha: float | None = None, grid: Sequence[float] = ALPHA_GRID) -> tuple[Tensor, float]:
        """Weights (F, H) float64 on all rows, and the penalty used (chosen by blocked CV when None)."""
        if self.count.sum() == 0:
            raise ValueError("no training windows to fit the ridge regression on")
        if alpha is None:
            if int((self.count > 0).sum()) < 2:
                alpha = 1e-3  # one fold only (very short series): a mild default
            else:
                errors = self.cv_errors(grid)
                alpha = float(grid[int(errors.argmin())])
                log.info("ridge: blocked-CV MSE %s -> alpha=%g", [round(float(e), 5) for e in errors], alpha)
        log.info("ridge: fitted on %d rows, alpha=%g", self.n_rows, alpha)
        return ridge_solve(self.xtx.sum(0), self.xty.sum(0), alpha), alpha


class PhaseMeans:
    """Mean of every row of the training series per phase ``step % period`` and channel, each row counted once.

    Windows overlap (stride 1 repeats each row up to L + H times), so rows are first collected by their absolute
    step per series (a dense, growing array), then averaged per phase: every training row weighs the same,
    whatever the stride, shuffling or batch order. Series of a long file are pooled (a forecaster does not
    see which series a window comes from).
    """

    def __init__(self, n_channels: int) -> None:
        self.n_channels = n_channels
        self._rows: dict[int, tuple[int, np.ndarray, np.ndarray]] = {}  # series -> (first step, values, seen)

    def update(self, values: Tensor, steps: Tensor, series: Tensor | None = None) -> None:
        """values (B, T, C), steps (B, T) int absolute step of each value, series (B,) int or None."""
        values = values.detach().double().cpu().numpy()
        steps = steps.detach().cpu().numpy().astype(np.int64)
        series_np = np.zeros(len(values), np.int64) if series is None else series.detach().cpu().numpy()
        for s in np.unique(series_np):
            sel = series_np == s
            st, va = steps[sel].ravel(), values[sel].reshape(-1, self.n_channels)
            lo, hi = int(st.min()), int(st.max())
            first, rows, seen = self._rows.get(
                int(s), (lo, np.zeros((0, self.n_channels)), np.zeros(0, bool))
            )
            new_first, new_end = min(first, lo), max(first + len(rows), hi + 1)
            if new_first < first or new_end > first + len(rows):  # grow the dense store to cover this batch
                grown = np.zeros((new_end - new_first, self.n_channels))
                grown_seen = np.zeros(new_end - new_first, bool)
                grown[first - new_first : first - new_first + len(rows)] = rows
                grown_seen[first - new_first : first - new_first + len(rows)] = seen
                first, rows, seen = new_first, grown, grown_seen
            rows[st - first] = va  # overlapping windows write the same value to the same row
            seen[st - first] = True
            self._rows[int(s)] = (first, rows, seen)

    @property
    def n_rows(self) -> int:
        return int(sum(seen.sum() for _, _, seen in self._rows.values()))

    def means(self, period: int, half_life: float | None = None) -> Tensor:
        """(period, C) float64 per-phase means; a phase with no row gets the channel's overall mean.

        ``half_life`` None: every row weighs the same. Otherwise row weights halve every ``half_life * n`` steps
        back from the series' last row (n: that series' rows), so the cycle follows the newer seasons, as the
        exponentially smoothed seasonal indices of Holt-Winters do.
        """
        sums = np.zeros((period, self.n_channels))
        counts = np.zeros(period)
        for first, rows, seen in self._rows.values():
            steps = np.flatnonzero(seen) + first
            phase = steps % period
            weights = np.ones(len(steps))
            if half_life is not None and len(steps):
                weights = 0.5 ** ((steps[-1] - steps) / (half_life * len(steps)))
            np.add.at(sums, phase, rows[seen] * weights[:, None])
            np.add.at(counts, phase, weights)
        if counts.sum() == 0:
            raise ValueError("no training rows to fit the seasonal cycle on")
        overall = sums.sum(0) / counts.sum()
        means = np.where(counts[:, None] > 0, sums / np.maximum(counts, 1.0)[:, None], overall)
        return torch.from_numpy(means)


def cycle_period(owner: str, period: int | None, revin: bool) -> int:
    """Season length of a forecaster with a fitted cycle (1: no cycle); refuses RevIN and a period below 1."""
    if revin:
        raise ValueError(f"{owner} needs revin=False: its cycle is fitted on the scaled series, not per window")
    if period is not None and int(period) < 1:
        raise ValueError(f"period must be a positive integer or None, got {period!r}")
    return int(period) if period else 1


def check_alpha(alpha: float | None) -> float | None:
    """A ridge ``alpha`` as a float, or a ValueError naming the argument; None (cross-validation) stays None."""
    if alpha is None:
        return None
    if not (float(alpha) > 0 and math.isfinite(float(alpha))):
        raise ValueError(f"alpha must be a positive number or None (chosen by cross-validation), got {alpha!r}")
    return float(alpha)


def check_half_life(half_life: float | None) -> float | None:
    """``cycle_half_life`` as a float, or a ValueError naming the argument."""
    if half_life is None:
        return None
    if not (float(half_life) > 0 and math.isfinite(float(half_life))):
        raise ValueError(
            f"cycle_half_life must be a positive fraction of the training rows or None, got {half_life!r}"
        )
    return float(half_life)


def phase_index(time_idx: Tensor | None, lookback: int, horizon: int, period: int, device=None) -> Tensor:
    """Phase ``step % period`` of every past and future step: time_idx (B,) -> (B, L + H) int64.

    ``time_idx`` is the absolute step of the first future step (the DataModule's convention).
    """
    if period == 1:
        return torch.zeros(1, lookback + horizon, dtype=torch.long, device=device)
    if time_idx is None:
        raise ValueError(
            "a seasonal cycle needs time_idx (the absolute step of the first future step) in the batch"
        )
    offsets = torch.arange(-lookback, horizon, device=time_idx.device)
    return torch.remainder(time_idx.long()[:, None] + offsets, period)  # (B, L + H)


def ridge_inputs(past: Tensor, cycle: Tensor, phase: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Ridge features of a window.

    past (B, L, C), cycle (P, C), phase (B|1, L + H) -> ``x`` (B, C, L) the deseasonalised past minus its last
    value, ``level`` (B, 1, C) that last value, ``future_cycle`` (B|1, H, C); the forecast is
    ``(x @ W).transpose(1, 2) + level + future_cycle``.
    """
    lookback = past.shape[1]
    seasonal = cycle[phase]  # (B|1, L + H, C)
    rest = past - seasonal[:, :lookback]
    level = rest[:, -1:, :]  # (B, 1, C)
    x = (rest - level).transpose(1, 2)  # (B, L, C) -> (B, C, L)
    return x, level, seasonal[:, lookback:]


def cv_group(batch: dict[str, Tensor], block: int, seen: int) -> Tensor:
    """Cross-validation block of each window of a batch (B,): ``time_idx // block``; without a time_idx, the
    window's running number in the pass (``seen`` before this batch) // block."""
    if batch.get("time_idx") is not None:
        return torch.div(batch["time_idx"].long(), block, rounding_mode="floor")
    return torch.arange(seen, seen + batch["past"].shape[0], device=batch["past"].device) // block


@torch.no_grad()
def fit_ridge_cycle(
    loader: Iterable[dict[str, Tensor]],
    lookback: int,
    horizon: int,
    n_channels: int,
    period: int = 1,
    alpha: float | None = None,
    normalise=None,
    cycle_half_life: float | None = None,
) -> tuple[Tensor, Tensor, float]:
    """Fit the cycle, then the ridge on its residual, from training batches.

    Two passes: the per-phase means over the rows the windows cover (`PhaseMeans`; skipped for period 1), then
    the ridge statistics on the deseasonalised windows (`RidgeStats`). ``normalise(batch) -> (past, future)``
    optionally maps a batch to the units the forecaster sees (RevIN); it must be the identity when period > 1.
    ``cycle_half_life`` weighs newer training rows more in the cycle (see `PhaseMeans.means`).

    Returns the cycle (P, C) float64, the ridge weights (L, H) float64 and the penalty used.
    """
    cycle, stats = ridge_cycle_stats(loader, lookback, horizon, n_channels, period, normalise, cycle_half_life)
    weights, alpha = stats.solve(alpha)
    return cycle, weights, alpha


@torch.no_grad()
def ridge_cycle_stats(
    loader: Iterable[dict[str, Tensor]],
    lookback: int,
    horizon: int,
    n_channels: int,
    period: int = 1,
    normalise=None,
    cycle_half_life: float | None = None,
) -> tuple[Tensor, RidgeStats]:
    """The cycle (P, C) float64 and the ridge statistics of `fit_ridge_cycle` (windows in CV blocks of L + H)."""
    if period > 1:
        phases = PhaseMeans(n_channels)
        for batch in loader:
            past, future = batch["past"], batch["future"]
            steps = batch["time_idx"].long()[:, None] + torch.arange(-lookback, horizon, device=past.device)
            phases.update(torch.cat([past, future], dim=1), steps, batch.get("series_idx"))
        cycle = phases.means(period, cycle_half_life)
        log.info("cycle: %d phases from %d training rows", period, phases.n_rows)
    else:
        cycle = torch.zeros(1, n_channels, dtype=torch.float64)
    stats, cycle_dev, block = None, None, lookback + horizon
    seen = 0
    for batch in loader:
        past, future = normalise(batch) if normalise is not None else (batch["past"], batch["future"])
        if stats is None:
            stats = RidgeStats(lookback, horizon, device=past.device)
            cycle_dev = cycle.to(device=past.device, dtype=torch.float64)
        phase = phase_index(batch.get("time_idx"), lookback, horizon, period, past.device)
        x, level, future_cycle = ridge_inputs(past.double(), cycle_dev, phase)
        y = (future.double() - future_cycle - level).transpose(1, 2)  # (B, H, C) -> (B, C, H)
        group = cv_group(batch, block, seen)
        seen += past.shape[0]
        stats.update(x.reshape(-1, lookback), y.reshape(-1, horizon), group.repeat_interleave(n_channels))
    if stats is None:
        raise ValueError("no training windows to fit the ridge regression on")
    return cycle, stats


class Ridge(_RuleForecaster):
    """Closed-form ridge from the lookback window to the horizon: past (B, L, C) -> (B, H, C[, Q]).

    ``forecast = last + (past - last) @ W``, W (L, H) shared by every channel, fit on all training windows ×
    channels in float64. No trainable parameter, no gradient step. Quantile forecasts add empirical residual
    quantiles of the training windows (per horizon step and channel).

    Args:
        alpha: relative ridge penalty (times the mean squared input, see `ridge_solve`); None (default) picks it
            from `ALPHA_GRID` by blocked 5-fold cross-validation on the training windows, from the sufficient
            statistics alone.
        revin: per-window normalisation; off by default (the last-value subtraction already removes the level).
    """

    def __init__(
        self,
        n_channels: int,
        lookback: int,
        horizon: int,
        alpha: float | None = None,
        quantiles: Sequence[float] | None = None,
        revin: bool = False,
        loss: nn.Module | None = None,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        lr_scheduler: LRSchedulerCallable | None = None,
    ) -> None:
        super().__init__(n_channels, lookback, horizon, quantiles, revin, loss, optimizer, lr_scheduler)
        self.alpha = check_alpha(alpha)
        self.period = 1
        self.cycle_half_life: float | None = None
        self.register_buffer("weight", torch.zeros(self.lookback, self.horizon))  # (L, H)
        self.register_buffer("cycle", torch.zeros(1, self.n_channels))  # (P, C)
        self.register_buffer("fitted_alpha", torch.tensor(float("nan")))

    def point_forecast(self, past: Tensor, time_idx: Tensor | None) -> Tensor:
        phase = phase_index(time_idx, self.lookback, self.horizon, self.period, past.device)
        x, level, future_cycle = ridge_inputs(past, self.cycle.to(past.dtype), phase)
        return (
            (x @ self.weight.to(past.dtype)).transpose(1, 2) + level + future_cycle
        )  # (B, C, H) -> (B, H, C)

    def fit_rule(self, loader: Iterable[dict[str, Tensor]]) -> None:
        cycle, weights, alpha = fit_ridge_cycle(
            loader,
            self.lookback,
            self.horizon,
            self.n_channels,
            self.period,
            self.alpha,
            normalise=self._normalised if self.revin else None,
            cycle_half_life=self.cycle_half_life,
        )
        self.cycle.copy_(cycle)
        self.weight.copy_(weights)
        self.fitted_alpha.fill_(alpha)


class RidgeCycle(Ridge):
    """`Ridge` on the residual of a per-channel seasonal cycle: past (B, L, C), time_idx (B,) -> (B, H, C[, Q]).

    The cycle (P, C) is the mean of each phase ``step % period`` of every channel over the training rows the
    training windows cover (past and future steps, each row counted once, see `PhaseMeans`), in the scaled units
    of the data; it is subtracted from the window, the ridge forecasts the rest, and the cycle of the forecast
    steps is added back. With ``period`` None or 1 the cycle is constant and cancels: this is `Ridge`.

    Args:
        period: season length in steps (linked from the DataModule: 24 for hourly data, 7 daily, ...).
        alpha: relative ridge penalty, or None for blocked cross-validation (see `Ridge`).
        cycle_half_life: weigh newer training rows more in the cycle: weights halve every ``cycle_half_life``
            times the training rows, counted back from the last (see `PhaseMeans.means`); None (default): every
            row weighs the same, the plain phase means.
        revin: must stay False: the cycle lives in the units of the scaled series, not of each window.
    """

    def __init__(
        self,
        n_channels: int,
        lookback: int,
        horizon: int,
        period: int | None = None,
        alpha: float | None = None,
        cycle_half_life: float | None = None,
        quantiles: Sequence[float] | None = None,
        revin: bool = False,
        loss: nn.Module | None = None,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        lr_scheduler: LRSchedulerCallable | None = None,
    ) -> None:
        season = cycle_period("RidgeCycle", period, revin)  # a new name: the hparams keep `period` as given
        super().__init__(
            n_channels, lookback, horizon, alpha, quantiles, revin, loss, optimizer, lr_scheduler
        )
        self.period = season
        self.cycle_half_life = check_half_life(cycle_half_life)
        if self.period == 1:
            log.info("RidgeCycle: no period given; the cycle is constant and this equals Ridge")
        self.cycle = torch.zeros(self.period, self.n_channels)  # re-registered buffer (P, C)
