"""Random Fourier features of a window: a kernel ridge regression in closed form (Rahimi & Recht 2007).

``phi(x) = cos(x @ (scale * omega) + offset)`` with ``omega`` (L, D) standard normal and ``offset`` (D,) uniform on
[0, 2π): ``phi(x) · phi(x')`` approximates a Gaussian kernel of the windows ``x``, ``x'`` (up to a factor D / 2), with
length scale ``1 / scale``. A ridge map from ``phi(x)`` to the horizon is then a smooth, bounded nonlinear function
of the whole window, fitted like the linear ridge of `tsattn.models.ridge` (`RidgeStats`). The flagship fits it to
what its linear closed form leaves behind.

Windows of several channels (groups) can share the kernel partly: with ``group_similarity`` ρ < 1 each group adds
its own random phase ``ψ_g`` (D,) to the features, ``cos(x Ω + b + ψ_g)``, with ``ψ`` normal of variance ``-ln ρ``,
so the kernel of two windows is the Gaussian kernel times ρ when they come from different groups (a product with a
Gaussian kernel of the groups' one-hot codes). One ridge map then fits what the channels share and, shrunk toward it,
what each does its own way; ρ = 1 is one kernel shared by all channels, ρ → 0 a separate kernel ridge per channel.
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

    With ``n_groups`` > 1 and ``group_similarity`` < 1, ``forward`` takes each row's group and adds that group's phase
    (module docstring); with one group, or ρ = 1, the phases are zero.

    The draw uses its own generator seeded with ``seed`` (default: torch's initial seed, which `seed_everything`
    sets), so one seed fixes it and building the features does not shift the random stream of other modules. The
    group phases are drawn last, so Ω and b do not depend on them.
    """

    def __init__(
        self,
        n_inputs: int,
        n_features: int,
        bandwidth: float = 1.0,
        seed: int | None = None,
        n_groups: int = 1,
        group_similarity: float = 1.0,
    ) -> None:
        super().__init__()
        if not math.isfinite(bandwidth) or bandwidth <= 0:
            raise ValueError(f"bandwidth must be a positive number, got {bandwidth!r}")
        if not 0.0 < group_similarity <= 1.0:
            raise ValueError(
                f"group_similarity must be in (0, 1] (1: one kernel for all groups), got {group_similarity!r}"
            )
        self.bandwidth = float(bandwidth)
        gen = torch.Generator().manual_seed(torch.initial_seed() if seed is None else int(seed))
        self.register_buffer("omega", torch.randn(n_inputs, n_features, generator=gen))  # (L, D)
        self.register_buffer("offset", torch.rand(n_features, generator=gen) * (2 * math.pi))  # (D,)
        self.register_buffer("scale", torch.tensor(1.0))
        phase = torch.zeros(n_groups, n_features)  # (G, D)
        if n_groups > 1 and group_similarity < 1.0:
            phase = torch.randn(n_groups, n_features, generator=gen) * math.sqrt(-math.log(group_similarity))
        self.register_buffer("group_phase", phase)

    @property
    def n_features(self) -> int:
        return self.omega.shape[1]

    def set_scale(self, mean_square: float) -> None:
        """Length scale ``bandwidth * sqrt(L * mean_square)``: the RMS norm of a window whose entries have that mean
        square (the median-distance rule of kernel methods, up to a factor), so ``bandwidth`` is unit-free."""
        length = self.bandwidth * math.sqrt(max(mean_square, 1e-12) * self.omega.shape[0])
        self.scale.fill_(1.0 / length)

    def forward(self, x: Tensor, group: Tensor | None = None) -> Tensor:
        """x (N, L), group (N,) indices into the groups (None: all in group 0) -> features (N, D) in the dtype of x."""
        omega = (self.omega * self.scale).to(x.dtype)
        z = x @ omega + self.offset.to(x.dtype)
        if group is not None:
            z = z + self.group_phase.to(x.dtype)[group]
        return torch.cos(z)


def feature_candidates(stats: RidgeStats, grid: Sequence[float] = FEATURE_ALPHA_GRID) -> list[Tensor]:
    """The random-feature ridge maps (D, H) float64 fitted on all training rows, one per penalty of ``grid``."""
    xtx, xty = stats.xtx.sum(0), stats.xty.sum(0)
    return [ridge_solve(xtx, xty, alpha) for alpha in grid]
