"""Forecast losses and metrics.

All functions take tensors whose leading dimensions are (batch, horizon, channels); quantile forecasts carry a
trailing quantile dimension Q. Reductions are plain means over every element, which equals the benchmark
protocol's average over windows x steps x channels when all windows have the same shape.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

__all__ = ["PinballLoss", "block_bootstrap_se", "coverage", "mae", "mase", "mean_se", "mse", "pinball_loss", "smape"]


def mse(pred: Tensor, target: Tensor) -> Tensor:
    """Mean squared error over all elements."""
    return torch.mean((pred - target) ** 2)


def mae(pred: Tensor, target: Tensor) -> Tensor:
    """Mean absolute error over all elements."""
    return torch.mean(torch.abs(pred - target))


def smape(pred: Tensor, target: Tensor, eps: float = 1e-8) -> Tensor:
    """Symmetric MAPE in percent, 200·|e| / (|y| + |ŷ|); pairs where both are zero count as zero error."""
    denom = torch.abs(pred) + torch.abs(target)
    ratio = torch.where(denom > eps, 2.0 * torch.abs(pred - target) / denom.clamp_min(eps), torch.zeros_like(denom))
    return 100.0 * ratio.mean()


def mase(pred: Tensor, target: Tensor, insample: Tensor, season: int = 1, eps: float = 1e-8) -> Tensor:
    """Mean absolute scaled error.

    pred, target: (..., H, C); insample: (..., T, C) history before the forecast origin. The scale is the
    in-sample MAE of the seasonal naive forecast with lag ``season``, per leading index and channel.
    """
    if insample.shape[-2] <= season:
        raise ValueError(f"mase needs more than season={season} in-sample steps, got {insample.shape[-2]}")
    scale = torch.mean(torch.abs(insample[..., season:, :] - insample[..., :-season, :]), dim=-2, keepdim=True)
    return torch.mean(torch.abs(pred - target) / scale.clamp_min(eps))


def pinball_loss(pred: Tensor, target: Tensor, quantiles: Sequence[float] | Tensor) -> Tensor:
    """Mean pinball (quantile) loss.

    pred: (..., Q) quantile forecasts; target: (...) observations; quantiles: Q levels in (0, 1).
    """
    q = torch.as_tensor(quantiles, dtype=pred.dtype, device=pred.device)
    err = target.unsqueeze(-1) - pred
    return torch.mean(torch.maximum(q * err, (q - 1.0) * err))


def coverage(lower: Tensor, upper: Tensor, target: Tensor) -> Tensor:
    """Fraction of observations inside [lower, upper]."""
    inside = (target >= lower) & (target <= upper)
    return inside.to(torch.float32).mean()


def block_bootstrap_se(values: Tensor, block: int, n_boot: int = 1000, seed: int = 0) -> float:
    """Standard error of the mean of a serially dependent sequence, values (N,), by the circular block bootstrap.

    Each of ``n_boot`` resamples joins blocks of ``block`` consecutive values (wrapping around the end) that start at
    uniformly drawn positions, up to N values (Politis & Romano 1992); the standard deviation of the resample means is
    returned. Blocks keep the dependence within them, so a block should span it: for the errors of overlapping
    forecast windows, at least the horizon (windows fewer steps apart share target steps). For a paired comparison
    of two models on the same windows, pass the differences of their per-window errors. ``seed`` fixes the draw.
    """
    values = torch.as_tensor(values).detach().flatten().double().cpu()
    n = values.numel()
    if isinstance(block, bool) or int(block) != block or not 1 <= block <= n:
        raise ValueError(f"block must be a whole number of values in [1, {n}] (the length of values), got {block!r}")
    if isinstance(n_boot, bool) or int(n_boot) != n_boot or n_boot < 2:
        raise ValueError(f"n_boot must be a whole number of resamples >= 2, got {n_boot!r}")
    if not torch.isfinite(values).all():
        raise ValueError("values contain NaN or inf; the standard error of their mean is undefined")
    block, n_blocks = int(block), -(-n // int(block))
    lengths = torch.full((n_blocks,), block)
    lengths[-1] = n - (n_blocks - 1) * block  # the last block is cut to make N values
    starts = torch.randint(0, n, (int(n_boot), n_blocks), generator=torch.Generator().manual_seed(seed))
    sums = torch.cat([values.new_zeros(1), torch.cat([values, values]).cumsum(0)])  # prefix sums, wrapping once
    means = (sums[starts + lengths] - sums[starts]).sum(1) / n  # (n_boot,) resample means
    return float(means.std())


def mean_se(values: Tensor, block: int, min_blocks: int = 2) -> float | None:
    """`block_bootstrap_se` of ``values``, or None when they hold fewer than ``min_blocks`` blocks (too few to tell)."""
    return None if len(values) < min_blocks * block else block_bootstrap_se(values, block)


class PinballLoss(nn.Module):
    """Pinball loss for fixed quantile levels; forward(pred (..., Q), target (...)) -> scalar."""

    def __init__(self, quantiles: Sequence[float]) -> None:
        super().__init__()
        self.register_buffer("quantiles", torch.as_tensor(list(quantiles), dtype=torch.float32), persistent=False)

    def forward(self, pred: Tensor, target: Tensor) -> Tensor:
        return pinball_loss(pred, target, self.quantiles.to(pred.dtype))
