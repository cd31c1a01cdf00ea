"""PhaseRidge: a closed-form ridge from each phase of the past periods to the same phase of the future ones.

SparseTSF (Lin et al. 2024, "SparseTSF: Modeling Long-term Time Series Forecasting with 1k Parameters", ICML) in
closed form: the window's last K = L // period periods, their mean subtracted and a centred moving average of one
period added (SparseTSF's aggregation), are read phase by phase; one small map (K -> ceil(H / period)), shared by
every phase and channel, forecasts the same phase of each future period. Its few weights make it a strongly
regularised linear forecaster for long lookbacks (many periods), unlike `Ridge`'s full (L, H) map.

``stack_weight`` blends two closed forms by blocked cross-validation on the training windows (out-of-fold
forecasts, the weight minimising their squared error): the flagship uses it to stack `PhaseRidge` on its
`RidgeCycle` start (``phase_stack``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence

import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn

from tsattn.models.baselines import _RuleForecaster
from tsattn.models.ridge import RidgeStats, check_alpha, cv_group

__all__ = [
    "PhaseRidge",
    "PhaseRidgeFit",
    "check_phase_period",
    "fit_phase_ridge",
    "phase_forecast",
    "phase_inputs",
    "stack_weight",
]

log = logging.getLogger(__name__)


def phase_inputs(past: Tensor, period: int) -> tuple[Tensor, Tensor]:
    """past (B, L, C) -> rows ``x`` (B, C, P, K) and ``level`` (B, 1, C).

    The last K = L // P periods of the window minus their mean ``level``, plus their centred moving average over
    2 * (P // 2) + 1 steps (zero-padded at the ends), cut into periods: ``x[b, c, j, k]`` is phase j of period k.
    """
    b, length, c = past.shape
    k = length // period
    seg = past[:, length - k * period :, :]
    level = seg.mean(1, keepdim=True)  # (B, 1, C)
    seg = (seg - level).transpose(1, 2).reshape(b * c, 1, k * period)
    half = period // 2
    smooth = F.avg_pool1d(seg, 2 * half + 1, stride=1, padding=half, count_include_pad=True)
    rows = (seg + smooth).view(b, c, k, period).transpose(2, 3)  # (B, C, K, P) -> (B, C, P, K)
    return rows, level


def phase_forecast(rows: Tensor, level: Tensor, weight: Tensor, horizon: int) -> Tensor:
    """rows (B, C, P, K), level (B, 1, C), weight (K, M) -> forecast (B, H, C)."""
    b, c, p, _ = rows.shape
    out = (rows @ weight).transpose(2, 3).reshape(b, c, -1)[..., :horizon]  # (B, C, M, P) -> (B, C, H)
    return out.transpose(1, 2) + level


class PhaseRidgeFit:
    """Ridge statistics of `PhaseRidge` over training windows, per cross-validation fold (see `RidgeStats`).

    The last future period may be partial (H not a multiple of P): its column is fitted on the phases it has,
    with its own statistics.
    """

    def __init__(self, lookback: int, horizon: int, period: int, device=None) -> None:
        self.horizon, self.period = horizon, period
        self.n_periods = lookback // period
        self.n_full, self.rest = divmod(horizon, period)
        self.full = RidgeStats(self.n_periods, self.n_full, device=device) if self.n_full else None
        self.partial = RidgeStats(self.n_periods, 1, device=device) if self.rest else None

    def update(self, past: Tensor, future: Tensor, group: Tensor) -> None:
        """past (B, L, C), future (B, H, C), group (B,) int: the window's cross-validation block."""
        rows, level = phase_inputs(past.double(), self.period)  # (B, C, P, K)
        b, c, p, k = rows.shape
        target = F.pad((future.double() - level).transpose(1, 2), (0, p - self.rest if self.rest else 0))
        target = target.reshape(b, c, -1, p).transpose(2, 3)  # (B, C, P, M)
        groups = group[:, None, None].expand(b, c, p)
        if self.full is not None:
            self.full.update(rows.reshape(-1, k), target[..., : self.n_full].reshape(-1, self.n_full), groups.reshape(-1))
        if self.partial is not None:  # only the phases the last, partial future period has
            sel = (slice(None), slice(None), slice(0, self.rest))
            self.partial.update(rows[sel].reshape(-1, k), target[sel][..., -1:].reshape(-1, 1), groups[sel].reshape(-1))

    def _parts(self) -> list[RidgeStats]:
        return [s for s in (self.full, self.partial) if s is not None]

    def solve(self, alpha: float | None = None) -> tuple[Tensor, list[float]]:
        """Weights (K, M) float64 on all rows, and the penalty of each part (blocked CV when None)."""
        solved = [stats.solve(alpha) for stats in self._parts()]
        return torch.cat([w for w, _ in solved], dim=1), [a for _, a in solved]

    def fold_weights(self, alphas: Sequence[float]) -> Tensor:
        """(n_folds, K, M) weights fitted without each fold, with the penalties of `solve`."""
        parts = self._parts()
        return torch.cat([s.fold_weights(a) for s, a in zip(parts, alphas, strict=True)], dim=2)


@torch.no_grad()
def stack_weight(
    loader: Iterable[dict[str, Tensor]],
    forecasts: Callable[[dict[str, Tensor], int], tuple[Tensor, Tensor]],
    fold_of: Callable[[dict[str, Tensor]], Tensor],
) -> float:
    """Weight β in [0, 1] of ``β·a + (1 - β)·b`` minimising the squared error of out-of-fold forecasts.

    ``forecasts(batch, k)`` gives the two forecasts (B, H, C) of the models fitted without fold k, ``fold_of(batch)``
    each window's fold (B,). One pass over the training windows.
    """
    num = den = 0.0
    for batch in loader:
        fold = fold_of(batch)
        for k in fold.unique().tolist():
            sel = fold == k
            part = {key: v[sel] if isinstance(v, Tensor) and v.shape[:1] == sel.shape else v for key, v in batch.items()}
            a, b = forecasts(part, k)
            gap = a - b
            num += float((gap * (part["future"].double() - b)).sum())
            den += float((gap * gap).sum())
    if den == 0.0:
        return 1.0
    return min(max(num / den, 0.0), 1.0)


class PhaseRidge(_RuleForecaster):
    """SparseTSF in closed form: past (B, L, C) -> (B, H, C[, Q]), see the module docstring.

    ``forecast = level + phase_forecast(rows, W)``, W (K, ceil(H / period)) shared by every phase and channel,
    fit in float64 on all training windows x channels x phases. Needs ``lookback >= period``.

    Args:
        period: season length in steps (linked from the DataModule); None or 1: every step is one period.
        alpha: relative ridge penalty, or None for blocked cross-validation (see `Ridge`).
    """

    def __init__(
        self,
        n_channels: int,
        lookback: int,
        horizon: int,
        period: int | None = None,
        alpha: float | None = None,
        quantiles: Sequence[float] | None = None,
        revin: bool = False,
        loss: nn.Module | None = None,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        lr_scheduler: LRSchedulerCallable | None = None,
    ) -> None:
        super().__init__(n_channels, lookback, horizon, quantiles, revin, loss, optimizer, lr_scheduler)
        self.period = check_phase_period("PhaseRidge", period, self.lookback)
        self.alpha = check_alpha(alpha)
        n_out = -(-self.horizon // self.period)
        self.register_buffer("weight", torch.zeros(self.lookback // self.period, n_out))  # (K, M)

    def point_forecast(self, past: Tensor, time_idx: Tensor | None) -> Tensor:
        rows, level = phase_inputs(past, self.period)
        return phase_forecast(rows, level, self.weight.to(past.dtype), self.horizon)

    def fit_rule(self, loader: Iterable[dict[str, Tensor]]) -> None:
        fit = fit_phase_ridge(loader, self.lookback, self.horizon, self.period, self._normalised)
        weight, alphas = fit.solve(self.alpha)
        self.weight.copy_(weight)
        log.info("PhaseRidge: %d periods of %d steps, alpha=%s", fit.n_periods, self.period, alphas)


def check_phase_period(owner: str, period: int | None, lookback: int) -> int:
    """The period of a `PhaseRidge` (1 when None), or a ValueError naming the argument."""
    season = 1 if period is None else int(period)
    if season < 1:
        raise ValueError(f"period must be a positive integer or None, got {period!r}")
    if lookback < season:
        raise ValueError(
            f"{owner} reads whole periods: lookback ({lookback}) must be at least the period ({season}); "
            "raise the lookback or give a shorter period"
        )
    return season


@torch.no_grad()
def fit_phase_ridge(
    loader: Iterable[dict[str, Tensor]],
    lookback: int,
    horizon: int,
    period: int,
    normalise: Callable[[dict[str, Tensor]], tuple[Tensor, Tensor]] | None = None,
) -> PhaseRidgeFit:
    """`PhaseRidgeFit` statistics from training batches; windows grouped in blocks of L + H origins for CV."""
    fit, seen, block = None, 0, lookback + horizon
    for batch in loader:
        past, future = normalise(batch) if normalise is not None else (batch["past"], batch["future"])
        if fit is None:
            fit = PhaseRidgeFit(lookback, horizon, period, device=past.device)
        group = cv_group(batch, block, seen)
        seen += past.shape[0]
        fit.update(past, future, group)
    if fit is None:
        raise ValueError("no training windows to fit the ridge regression on")
    return fit
