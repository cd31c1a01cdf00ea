"""HRNet1d: a causal high-resolution network over time, with EMA history attention blocks in every branch.

Sun, Xiao, Liu & Wang (2019), "Deep High-Resolution Representation Learning for Human Pose Estimation" (HRNet):
parallel branches at several resolutions are kept alive through the network and repeatedly exchange information
(multi-resolution fusion). Here the resolutions are time resolutions /1, /2, /4, ... of a lookback window.

Causal: yes. A coarse cell at stride s stands for the s steps it covers and is stamped at its last step:
- finer -> coarser: a strided convolution with kernel = stride (non-overlapping), so cell j sees steps ≤ s·j + s − 1;
- coarser -> finer: a projection, then each fine step receives the latest coarse cell that is complete at that
  step (repeat, then delay by s − 1), never the cell it sits in;
- attention blocks are causal within each branch.
So output t depends only on inputs ≤ t (tested by perturbation). The price is that coarse information reaches the
full-resolution branch up to s − 1 steps late. L need not be divisible by 2^(branches−1): the input is padded at
the end (future side, so causality keeps it out of every real output) and the output is cropped back to L.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from tsattn.layers.block import EMAAttentionBlock

__all__ = ["HRNet1d"]


class _Down(nn.Module):
    """Causal strided convolution (B, L, D) -> (B, L / r, D), kernel = stride = r."""

    def __init__(self, d_model: int, rate: int) -> None:
        super().__init__()
        self.conv = nn.Conv1d(d_model, d_model, kernel_size=rate, stride=rate)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x.transpose(1, 2)).transpose(1, 2)  # (B, D, L) -> (B, D, L / r) -> (B, L / r, D)


class _Up(nn.Module):
    """Projection, then causal upsampling (B, L, D) -> (B, L·r, D): step t gets cell ⌊(t + 1) / r⌋ − 1 (or 0)."""

    def __init__(self, d_model: int, rate: int) -> None:
        super().__init__()
        self.rate = rate
        self.proj = nn.Linear(d_model, d_model)

    def forward(self, x: Tensor) -> Tensor:
        r = self.rate
        up = self.proj(x).repeat_interleave(r, dim=1)  # (B, L·r, D): step t holds cell ⌊t / r⌋
        return F.pad(up, (0, 0, r - 1, 0))[:, : up.shape[1]]  # delay r − 1 steps: only complete cells


class _Stage(nn.Module):
    """Blocks in every branch, then each of the first `outputs` branches receives the sum of all others, resampled."""

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        window: int,
        branches: int,
        blocks: int,
        outputs: int,
        ff_mult: int,
        dropout: float,
        similarity: str,
    ) -> None:
        super().__init__()
        self.branches = nn.ModuleList(
            nn.ModuleList(
                EMAAttentionBlock(d_model, n_heads, window, ff_mult=ff_mult, dropout=dropout, similarity=similarity)
                for _ in range(blocks)
            )
            for _ in range(branches)
        )
        # fuse[k][i] maps branch i to branch k's resolution (Identity on the diagonal, unused)
        self.fuse = nn.ModuleList(
            nn.ModuleList(
                nn.Identity()
                if i == k
                else _Down(d_model, 2 ** (k - i))
                if i < k
                else _Up(d_model, 2 ** (i - k))
                for i in range(branches)
            )
            for k in range(outputs)
        )

    def forward(self, xs: list[Tensor]) -> list[Tensor]:
        for b, blocks in enumerate(self.branches):
            for block in blocks:
                xs[b] = block(xs[b])
        return [
            xs[k] + sum(fuse[i](xs[i]) for i in range(len(xs)) if i != k) for k, fuse in enumerate(self.fuse)
        ]


class HRNet1d(nn.Module):
    """Causal multi-resolution encoder: (B, L, D) -> (B, L, D), full-resolution features after fusion.

    Args:
        d_model: D (input and output width).
        n_heads: attention heads per block.
        window: attention history per block, in the branch's own steps (so coarse branches look further back).
        branches: number of resolutions, strides 1, 2, 4, ..., 2^(branches−1).
        blocks: EMAAttentionBlocks per branch per stage.
        stages: repetitions of (blocks in every branch, cross-resolution fusion).
        ff_mult, dropout, similarity: passed to every `EMAAttentionBlock`.
    """

    def __init__(
        self,
        d_model: int,
        n_heads: int = 4,
        window: int = 16,
        branches: int = 3,
        blocks: int = 1,
        stages: int = 2,
        ff_mult: int = 2,
        dropout: float = 0.0,
        similarity: str = "cosine",
    ) -> None:
        super().__init__()
        if branches < 1 or blocks < 1 or stages < 1:
            raise ValueError("branches, blocks and stages must be >= 1")
        self.n_branches = branches
        self.stride = 2 ** (branches - 1)
        self.stem = nn.ModuleList(_Down(d_model, 2**b) for b in range(1, branches))
        self.stages = nn.ModuleList(
            _Stage(
                d_model,
                n_heads,
                window,
                branches,
                blocks,
                outputs=1 if s == stages - 1 else branches,  # the last fusion only feeds the output branch
                ff_mult=ff_mult,
                dropout=dropout,
                similarity=similarity,
            )
            for s in range(stages)
        )
        self.norm = nn.LayerNorm(d_model)

    def forward(self, x: Tensor) -> Tensor:
        """x (B, L, D) -> (B, L, D)."""
        L = x.shape[1]
        pad = -L % self.stride
        x = F.pad(x, (0, 0, 0, pad))  # (B, Lp, D), future side
        xs = [x] + [down(x) for down in self.stem]  # branch b: (B, Lp / 2^b, D)
        for stage in self.stages:
            xs = stage(xs)
        return self.norm(xs[0][:, :L])
