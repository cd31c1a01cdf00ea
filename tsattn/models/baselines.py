"""Baseline forecasters: the yardsticks every learned model in tsattn is compared with.

- ``Naive``: the last observed value, repeated over the horizon.
- ``SeasonalNaive``: the last season, repeated over the horizon.
- ``EMASmoother``: simple exponential smoothing (Brown 1956; Hyndman & Athanasopoulos, *Forecasting: Principles
  and Practice*, 3rd ed., §8.1): the flat forecast at the last EMA level, with the decay fitted on train.
- ``Linear``: DLinear (Zeng et al. 2023, "Are Transformers Effective for Time Series Forecasting?", AAAI): a
  moving-average trend/remainder split and one linear map lookback -> horizon for each part, shared across
  channels (channel-independent).

The first three have no trainable parameters: they go through the base's closed-form path (``fit_closed_form``,
no optimizer, ``training_step`` returns None), so ``Trainer.fit`` fits them in one pass over the training data.
Their quantile forecasts (``quantiles=[...]``) are the point rule plus empirical quantiles of its residuals on the
training windows, per horizon step and channel, in the units the rule sees (window-normalised when ``revin``), so
the intervals widen with the horizon and scale with each window. Before ``fit`` those residual quantiles are zero.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn

from tsattn.layers.ema import ema
from tsattn.models.base import Forecaster, window_stats

__all__ = ["DecompLinear", "EMASmoother", "Linear", "Naive", "SeasonalNaive", "moving_average"]

log = logging.getLogger(__name__)

# Residual quantiles are estimated from at most this many training windows (the train loader is shuffled, so the
# first windows are a random sample); enough for the 1% quantile, bounded in memory on long series.
_MAX_RESIDUAL_WINDOWS = 65_536


class _RuleForecaster(Forecaster):
    """A parameter-free point rule plus empirical residual quantiles.

    Subclasses implement ``point_forecast(past (B, L, C), time_idx) -> (B, H, C)`` and, if the rule has a fitted
    part, ``fit_rule(loader)``.
    """

    def __init__(
        self,
        n_channels: int,
        lookback: int,
        horizon: int,
        quantiles: Sequence[float] | None,
        revin: bool,
        loss: nn.Module | None,
        optimizer: OptimizerCallable,
        lr_scheduler: LRSchedulerCallable | None,
    ) -> None:
        super().__init__(n_channels, lookback, horizon, quantiles, revin, loss, optimizer, lr_scheduler)
        # (H, C, Q) offsets added to the point rule; zeros for point forecasts and before fitting.
        self.register_buffer("residual_quantiles", torch.zeros(self.horizon, self.n_channels, self.n_outputs))

    def point_forecast(self, past: Tensor, time_idx: Tensor | None) -> Tensor:
        """past (B, L, C) -> point forecast (B, H, C)."""
        raise NotImplementedError

    def fit_rule(self, loader: Iterable[dict[str, Tensor]]) -> None:
        """Fit the rule's own statistics from training batches (none by default)."""

    def forecast(self, past: Tensor, time_idx: Tensor | None) -> Tensor:
        """past (B, L, C) -> (B, H, C, Q): the point rule plus the residual quantiles."""
        return self.point_forecast(past, time_idx).unsqueeze(-1) + self.residual_quantiles

    def fit_closed_form(self, loader: Iterable[dict[str, Tensor]]) -> None:
        self.fit_rule(loader)
        if self.quantiles:
            self._fit_residual_quantiles(loader)

    def _normalised(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """(past, future) in the units ``forecast`` sees."""
        past, future = batch["past"], batch["future"]
        if self.revin:
            loc, scale = window_stats(past)
            past, future = (past - loc) / scale, (future - loc) / scale
        return past, future

    @torch.no_grad()
    def _fit_residual_quantiles(self, loader: Iterable[dict[str, Tensor]]) -> None:
        residuals, n = [], 0
        for batch in loader:
            past, future = self._normalised(batch)
            residuals.append((future - self.point_forecast(past, batch.get("time_idx"))).cpu())  # (B, H, C)
            n += past.shape[0]
            if n >= _MAX_RESIDUAL_WINDOWS:
                break
        if not residuals:
            raise ValueError(f"{type(self).__name__}: no training windows to fit the residual quantiles on")
        res = torch.cat(residuals).double().numpy()  # (N, H, C)
        q = np.quantile(res, self.quantiles, axis=0)  # (Q, H, C)
        self.residual_quantiles.copy_(torch.from_numpy(q).permute(1, 2, 0))  # (H, C, Q)
        log.info("%s: residual quantiles fitted on %d training windows", type(self).__name__, res.shape[0])


class Naive(_RuleForecaster):
    """Last observed value repeated over the horizon: past (B, L, C) -> (B, H, C).

    Quantile forecasts add empirical residual quantiles fitted on train (see the module docstring).
    """

    def __init__(
        self,
        n_channels: int,
        lookback: int,
        horizon: int,
        quantiles: Sequence[float] | None = None,
        revin: bool = True,
        loss: nn.Module | None = None,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        lr_scheduler: LRSchedulerCallable | None = None,
    ) -> None:
        super().__init__(n_channels, lookback, horizon, quantiles, revin, loss, optimizer, lr_scheduler)

    def point_forecast(self, past: Tensor, time_idx: Tensor | None) -> Tensor:
        return past[:, -1:, :].expand(-1, self.horizon, -1)  # (B, H, C)


class SeasonalNaive(_RuleForecaster):
    """The last ``season`` steps repeated over the horizon: past (B, L, C) -> (B, H, C).

    Args:
        period: seasonal period of the data (linked from the DataModule); the default season.
        season: season length in steps; defaults to ``period``, then to 1 (which is ``Naive``). Must not exceed
            ``lookback``.

    Quantile forecasts add empirical residual quantiles fitted on train (see the module docstring).
    """

    def __init__(
        self,
        n_channels: int,
        lookback: int,
        horizon: int,
        period: int | None = None,
        season: int | None = None,
        quantiles: Sequence[float] | None = None,
        revin: bool = True,
        loss: nn.Module | None = None,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        lr_scheduler: LRSchedulerCallable | None = None,
    ) -> None:
        super().__init__(n_channels, lookback, horizon, quantiles, revin, loss, optimizer, lr_scheduler)
        resolved = season if season is not None else period if period is not None else 1
        if int(resolved) < 1:
            raise ValueError(f"season must be a positive integer, got {resolved!r}")
        if int(resolved) > self.lookback:
            raise ValueError(
                f"SeasonalNaive needs the season ({resolved}) to fit in the lookback ({self.lookback}); "
                "raise the lookback or pass a shorter season"
            )
        self.season = int(resolved)
        # Position in the last season of every horizon step: L - s + (h mod s).
        index = self.lookback - self.season + torch.arange(self.horizon) % self.season
        self.register_buffer("index", index, persistent=False)

    def point_forecast(self, past: Tensor, time_idx: Tensor | None) -> Tensor:
        return past[:, self.index, :]  # (B, H, C)


class EMASmoother(_RuleForecaster):
    """Simple exponential smoothing: the flat forecast at the last EMA level of each channel.

    ``level_t = decay * level_{t-1} + (1 - decay) * x_t`` over the lookback window, started with pandas'
    ``adjust=True`` rule (weights ``decay**k`` normalised over the window, so a decay near 1 gives the window
    mean); the forecast repeats the last level: past (B, L, C) -> (B, H, C).

    Args:
        decay: fixed decay in [0, 1) for every channel; None (default) fits one decay per channel on the
            training windows by grid search over half-lives from 0.5 steps to the lookback (plus decay 0, the
            naive forecast), minimising the MSE of the flat forecast over the horizon.

    Quantile forecasts add empirical residual quantiles fitted on train (see the module docstring).
    """

    def __init__(
        self,
        n_channels: int,
        lookback: int,
        horizon: int,
        decay: float | None = None,
        quantiles: Sequence[float] | None = None,
        revin: bool = True,
        loss: nn.Module | None = None,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        lr_scheduler: LRSchedulerCallable | None = None,
    ) -> None:
        super().__init__(n_channels, lookback, horizon, quantiles, revin, loss, optimizer, lr_scheduler)
        if decay is not None and not 0.0 <= float(decay) < 1.0:
            raise ValueError(f"decay must be in [0, 1), got {decay!r}")
        self.fit_decay = decay is None
        # (C,) per-channel decay; a half-life of a quarter of the lookback until fitted.
        start = float(decay) if decay is not None else 0.5 ** (4.0 / self.lookback)
        self.register_buffer("decays", torch.full((self.n_channels,), start))

    def decay_grid(self) -> Tensor:
        """Candidate decays (G,): 0 (naive) and half-lives geometric over 0.5 .. lookback steps."""
        half_lives = torch.logspace(
            math.log10(0.5), math.log10(max(self.lookback, 1)), 23, dtype=torch.float64
        )
        return torch.cat([torch.zeros(1, dtype=torch.float64), 0.5 ** (1.0 / half_lives)]).float()

    def point_forecast(self, past: Tensor, time_idx: Tensor | None) -> Tensor:
        level = ema(past, self.decays.to(past.dtype), adjust=True)[:, -1:, :]  # (B, 1, C)
        return level.expand(-1, self.horizon, -1)  # (B, H, C)

    @torch.no_grad()
    def fit_rule(self, loader: Iterable[dict[str, Tensor]]) -> None:
        if not self.fit_decay:
            return
        grid = self.decay_grid().to(self.decays.device)  # (G,)
        g, c = grid.numel(), self.n_channels
        sse = torch.zeros(g, c, dtype=torch.float64, device=self.decays.device)
        for batch in loader:
            past, future = self._normalised(batch)
            # Every candidate at once: channels become (G * C) with the decay repeated per channel.
            tiled = past.repeat(1, 1, g)  # (B, L, G * C)
            level = ema(tiled, grid.repeat_interleave(c).to(past.dtype), adjust=True)[:, -1, :]  # (B, G * C)
            err = future.unsqueeze(2) - level.view(-1, 1, g, c)  # (B, H, G, C)
            sse += err.double().pow(2).sum(dim=(0, 1))
        if not sse.any():
            log.warning("EMASmoother: no training windows; keeping the initial decay")
            return
        self.decays.copy_(grid[sse.argmin(dim=0)])
        log.info("EMASmoother: fitted decays %s", [round(float(d), 4) for d in self.decays])


def moving_average(x: Tensor, kernel_size: int) -> Tensor:
    """Centred moving average along time with replicate padding: (B, L, C) -> (B, L, C)."""
    if kernel_size <= 1:
        return x
    front = (kernel_size - 1) // 2
    padded = F.pad(x.transpose(1, 2), (front, kernel_size - 1 - front), mode="replicate")  # (B, C, L + k - 1)
    return F.avg_pool1d(padded, kernel_size, stride=1).transpose(1, 2)  # (B, L, C)


class DecompLinear(nn.Module):
    """DLinear network: x (B, L, C) -> (B, H, C, Q).

    A moving-average trend and the remainder each get one linear map over time, lookback L -> H * Q, shared
    across channels (channel-independent). Initialised to the window mean, as in DLinear.
    """

    def __init__(self, lookback: int, horizon: int, n_outputs: int = 1, kernel_size: int = 25) -> None:
        super().__init__()
        if kernel_size < 1:
            raise ValueError(f"kernel_size must be a positive integer, got {kernel_size!r}")
        self.horizon, self.n_outputs, self.kernel_size = horizon, n_outputs, kernel_size
        self.trend = nn.Linear(lookback, horizon * n_outputs)
        self.remainder = nn.Linear(lookback, horizon * n_outputs)
        for lin in (self.trend, self.remainder):
            nn.init.constant_(lin.weight, 1.0 / lookback)
            nn.init.zeros_(lin.bias)

    def forward(self, x: Tensor) -> Tensor:
        b, _, c = x.shape
        trend = moving_average(x, self.kernel_size)  # (B, L, C)
        out = self.trend(trend.transpose(1, 2)) + self.remainder((x - trend).transpose(1, 2))  # (B, C, H * Q)
        return out.view(b, c, self.horizon, self.n_outputs).transpose(1, 2)  # (B, H, C, Q)


class Linear(Forecaster):
    """DLinear forecaster (Zeng et al. 2023): past (B, L, C) -> (B, H, C[, Q]), trained by gradient.

    Args:
        trend_kernel: moving-average window of the trend/remainder split (25 in the paper).
    """

    def __init__(
        self,
        n_channels: int,
        lookback: int,
        horizon: int,
        trend_kernel: int = 25,
        quantiles: Sequence[float] | None = None,
        revin: bool = True,
        loss: nn.Module | None = None,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        lr_scheduler: LRSchedulerCallable | None = None,
    ) -> None:
        super().__init__(n_channels, lookback, horizon, quantiles, revin, loss, optimizer, lr_scheduler)
        self.net = DecompLinear(self.lookback, self.horizon, self.n_outputs, trend_kernel)

    def forecast(self, past: Tensor, time_idx: Tensor | None) -> Tensor:
        return self.net(past)  # (B, H, C, Q)
