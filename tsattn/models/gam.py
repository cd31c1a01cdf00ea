"""GAM forecaster: Global Attention Mechanism blocks over the lookback window, for comparison with EMA attention.

GAM: Liu, Shao & Hoffmann 2021, "Global Attention Mechanism: Retain Information to Enhance Channel-Spatial
Interactions" (arXiv:2112.05561); here in 1-D (:class:`tsattn.layers.GAM1d`: channel MLP, then causal temporal
convolutions, sigmoid gates). The linear skip is DLinear (Zeng et al. 2023).

Layout: each step's channels are embedded together into one d_model vector (channel mixing: GAM's channel
attention then acts across the embedded series), GAM blocks run over the window, and a head maps time
(L -> H, per feature) and then features (d_model -> C * Q, per step). The head's correction is added to a
channel-independent DLinear forecast of the same window and starts at zero, so training begins from the linear
forecast and the blocks only learn what it misses (the design notes report that residual learning over a linear
map beats training an attention model from scratch on the benchmark).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn

from tsattn.layers.gam import GAM1d
from tsattn.models.base import Forecaster
from tsattn.models.baselines import DecompLinear
from tsattn.models.readout import StepReadout

__all__ = ["GAMBlock", "GAMForecaster"]


class GAMBlock(nn.Module):
    """Pre-norm residual block: x + FF(GAM1d(norm(x))); (B, L, d) -> (B, L, d), causal."""

    def __init__(self, d_model: int, reduction: int = 4, kernel_size: int = 7, dropout: float = 0.0) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(d_model)
        self.gam = GAM1d(d_model, reduction=reduction, kernel_size=kernel_size)
        self.ff = nn.Sequential(
            nn.Linear(d_model, 2 * d_model), nn.GELU(), nn.Dropout(dropout), nn.Linear(2 * d_model, d_model)
        )
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.dropout(self.ff(self.gam(self.norm(x))))


class GAMForecaster(Forecaster):
    """GAM1d blocks over an embedding of the lookback window: past (B, L, C) -> (B, H, C[, Q]).

    Args:
        d_model: width of the step embedding.
        n_blocks: number of GAM blocks.
        reduction: channel-MLP reduction r of GAM1d.
        kernel_size: temporal convolution kernel of GAM1d (7 in the paper).
        dropout: dropout inside the blocks.
        trend_kernel: moving-average window of the DLinear skip's trend/remainder split.
    """

    def __init__(
        self,
        n_channels: int,
        lookback: int,
        horizon: int,
        d_model: int = 32,
        n_blocks: int = 2,
        reduction: int = 4,
        kernel_size: int = 7,
        dropout: float = 0.1,
        trend_kernel: int = 25,
        quantiles: Sequence[float] | None = None,
        revin: bool = True,
        loss: nn.Module | None = None,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        lr_scheduler: LRSchedulerCallable | None = None,
    ) -> None:
        super().__init__(n_channels, lookback, horizon, quantiles, revin, loss, optimizer, lr_scheduler)
        self.skip = DecompLinear(self.lookback, self.horizon, self.n_outputs, trend_kernel)
        self.embed = nn.Linear(self.n_channels, d_model)
        self.blocks = nn.ModuleList(
            GAMBlock(d_model, reduction, kernel_size, dropout) for _ in range(n_blocks)
        )
        self.norm = nn.LayerNorm(d_model)
        self.readout = StepReadout(self.lookback, self.horizon, d_model, self.n_channels, self.n_outputs)

    def forecast(self, past: Tensor, time_idx: Tensor | None) -> Tensor:
        """past (B, L, C) -> (B, H, C, Q)."""
        h = self.embed(past)  # (B, L, d)
        for block in self.blocks:
            h = block(h)
        return self.skip(past) + self.readout(self.norm(h))  # (B, H, C, Q)
