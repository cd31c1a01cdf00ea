"""Random Fourier features of a window: a kernel ridge regression in closed form (Rahimi & Recht 2007).

``phi(x) = cos(x @ (scale * omega) + offset)`` with ``omega`` (L, D) standard normal and ``offset`` (D,) uniform on
[0, 2π): ``phi(x) · phi(x')`` approximates a Gaussian kernel of the windows ``x``, ``x'`` (up to a factor D / 2), with
length scale ``1 / scale``. A ridge map from ``phi(x)`` to the horizon is then a smooth, bounded nonlinear function
of the whole window, fitted like the linear ridge of `tsattn.models.ridge` (`RidgeStats`). The flagship fits it to
what its linear closed form leaves behind.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from tsattn.models.ridge import RidgeStats, ridge_solve

__all__ = ["FEATURE_ALPHA_GRID", "RandomFourierFeatures", "feature_candidates"]

# Relative penalties of the random-feature map tried on validation (see `EMAAttentionForecaster`, which also tries no
# map at all). On ETTh1 (lookback 96, 2048 features) validation picked 1 at H = 96, 192 and 336 and no map at 720.
FEATURE_ALPHA_GRID: tuple[float, ...] = (0.1, 1.0, 10.0, 100.0)


class RandomFourierFeatures(nn.Module):
    """x (N, L) -> cos(x Ω + b) (N, D); Ω, b drawn at construction, the length scale set from data (`set_scale`).

    The draw uses its own generator seeded with ``seed`` (default: torch's initial seed, which `seed_everything`
    sets), so one seed fixes it and building the features does not shift the random stream of other modules.
    """

    def __init__(self, n_inputs: int, n_features: int, bandwidth: float = 1.0, seed: int | None = None) -> None:
        super().__init__()
        if not math.isfinite(bandwidth) or bandwidth <= 0:
            raise ValueError(f"bandwidth must be a positive number, got {bandwidth!r}")
        self.bandwidth = float(bandwidth)
        gen = torch.Generator().manual_seed(torch.initial_seed() if seed is None else int(seed))
        self.register_buffer("omega", torch.randn(n_inputs, n_features, generator=gen))  # (L, D)
        self.register_buffer("offset", torch.rand(n_features, generator=gen) * (2 * math.pi))  # (D,)
        self.register_buffer("scale", torch.tensor(1.0))

    @property
    def n_features(self) -> int:
        return self.omega.shape[1]

    def set_scale(self, mean_square: float) -> None:
        """Length scale ``bandwidth * sqrt(L * mean_square)``: the RMS norm of a window whose entries have that mean
        square (the median-distance rule of kernel methods, up to a factor), so ``bandwidth`` is unit-free."""
        length = self.bandwidth * math.sqrt(max(mean_square, 1e-12) * self.omega.shape[0])
        self.scale.fill_(1.0 / length)

    def forward(self, x: Tensor) -> Tensor:
        """x (N, L) -> features (N, D) in the dtype of x."""
        omega = (self.omega * self.scale).to(x.dtype)
        return torch.cos(x @ omega + self.offset.to(x.dtype))


def feature_candidates(stats: RidgeStats, grid: Sequence[float] = FEATURE_ALPHA_GRID) -> list[Tensor]:
    """The random-feature ridge maps (D, H) float64 fitted on all training rows, one per penalty of ``grid``."""
    xtx, xty = stats.xtx.sum(0), stats.xty.sum(0)
    return [ridge_solve(xtx, xty, alpha) for alpha in grid]
