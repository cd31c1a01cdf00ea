"""HRNet forecaster: a causal multi-resolution encoder with EMA history attention, for comparison.

HRNet: Sun, Xiao, Liu & Wang 2019, "Deep High-Resolution Representation Learning for Human Pose Estimation"
(CVPR); here :class:`tsattn.layers.HRNet1d`, branches at time resolutions /1, /2, /4, ... with EMA attention blocks
and repeated cross-resolution fusion. The EMA of the weights that goes with it in the source system is Lightning's
``EMAWeightAveraging`` callback, switched on by the trainer, not by this module. The linear skip is DLinear
(Zeng et al. 2023).

Layout (as :mod:`tsattn.models.gam`): each step's channels are embedded together into one d_model vector (channel
mixing), HRNet1d encodes the window at full resolution, and a head maps time (L -> H, per feature) and then
features (d_model -> C * Q, per step). The head's correction is added to a channel-independent DLinear forecast
and starts at zero, so training begins from the linear forecast.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn

from tsattn.layers.hrnet import HRNet1d
from tsattn.models.base import Forecaster
from tsattn.models.baselines import DecompLinear
from tsattn.models.readout import StepReadout

__all__ = ["HRNetForecaster"]


class HRNetForecaster(Forecaster):
    """HRNet1d encoder over an embedding of the lookback window: past (B, L, C) -> (B, H, C[, Q]).

    Args:
        d_model: width of the step embedding and of every branch (16: about the parameter count of
            ``GAMForecaster``'s default, and cheaper per step, since every branch runs attention blocks).
        n_heads: EMA attention heads per block.
        window: attention history per block, in each branch's own steps (coarse branches look further back).
        branches: resolutions /1, /2, ..., /2**(branches - 1).
        blocks: attention blocks per branch per stage.
        stages: repetitions of (blocks in every branch, cross-resolution fusion).
        dropout: dropout inside the blocks.
        similarity: attention score, "cosine" or "dot".
        trend_kernel: moving-average window of the DLinear skip's trend/remainder split.
    """

    def __init__(
        self,
        n_channels: int,
        lookback: int,
        horizon: int,
        d_model: int = 16,
        n_heads: int = 4,
        window: int = 16,
        branches: int = 3,
        blocks: int = 1,
        stages: int = 2,
        dropout: float = 0.1,
        similarity: str = "cosine",
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
        self.encoder = HRNet1d(
            d_model,
            n_heads=n_heads,
            window=window,
            branches=branches,
            blocks=blocks,
            stages=stages,
            dropout=dropout,
            similarity=similarity,
        )
        self.readout = StepReadout(self.lookback, self.horizon, d_model, self.n_channels, self.n_outputs)

    def forecast(self, past: Tensor, time_idx: Tensor | None) -> Tensor:
        """past (B, L, C) -> (B, H, C, Q)."""
        h = self.encoder(self.embed(past))  # (B, L, d), normalised by the encoder
        return self.skip(past) + self.readout(h)  # (B, H, C, Q)
