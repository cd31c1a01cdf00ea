"""GAM1d: the Global Attention Mechanism for sequences, made causal.

Liu, Shao & Hoffmann (2021), "Global Attention Mechanism: Retain Information to Enhance Channel-Spatial
Interactions", arXiv:2112.05561. Channel attention (an MLP over channels with reduction r, sigmoid gate) followed
by spatial attention — here temporal: two convolutions with kernel 7 and a sigmoid gate.

Changes for forecasting: the convolutions are left-padded, so step t sees only steps ≤ t; BatchNorm (which mixes
samples and, over time, the future) is replaced by LayerNorm over channels at each step, which also works at batch
size 1; a width of one channel (few channels, or a reduction above half of them) is left unnormalised, as a
LayerNorm over one value is a constant and would make the gate ignore its input.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["GAM1d"]


class _CausalConv1d(nn.Conv1d):
    """Conv1d on (B, L, C) tensors, left-padded by kernel_size - 1 so that output t uses inputs ≤ t."""

    def forward(self, x: Tensor) -> Tensor:
        x = F.pad(x.transpose(1, 2), (self.kernel_size[0] - 1, 0))  # (B, L, C) -> (B, C, L + k - 1)
        return super().forward(x).transpose(1, 2)  # (B, C', L) -> (B, L, C')


def _norm(width: int) -> nn.Module:
    """LayerNorm over the last dimension; none for one value, whose LayerNorm output is its bias alone."""
    return nn.LayerNorm(width) if width > 1 else nn.Identity()


class GAM1d(nn.Module):
    """Causal global attention over (batch, time, channels): channel gate, then temporal gate.

    Args:
        channels: C.
        reduction: r; hidden width max(1, C // r) in both sub-modules.
        kernel_size: temporal convolution width (7 in the paper).
    """

    def __init__(self, channels: int, reduction: int = 4, kernel_size: int = 7) -> None:
        super().__init__()
        hidden = max(1, channels // reduction)
        self.channels, self.reduction, self.kernel_size = channels, reduction, kernel_size
        self.channel_mlp = nn.Sequential(
            nn.Linear(channels, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, channels)
        )
        self.temporal = nn.Sequential(
            _CausalConv1d(channels, hidden, kernel_size),
            _norm(hidden),
            nn.ReLU(inplace=True),
            _CausalConv1d(hidden, channels, kernel_size),
            _norm(channels),
        )

    def forward(self, x: Tensor) -> Tensor:
        """x (B, L, C) -> (B, L, C)."""
        x = x * torch.sigmoid(self.channel_mlp(x))  # per step, across channels
        return x * torch.sigmoid(self.temporal(x))  # across the last kernel_size steps

    def extra_repr(self) -> str:
        return f"channels={self.channels}, reduction={self.reduction}, kernel_size={self.kernel_size}"
