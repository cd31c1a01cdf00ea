"""Measurements behind the analysis notebooks: the EMA decay trade-off and attention memory lengths.

Exponential smoothing ``y_t = λ·y_{t-1} + (1-λ)·x_t`` (Brown 1956) trades smoothness for lag: on a step change of
size s buried in white noise of variance σ², a high λ leaves little noise, ``Var(y - level) = σ²(1-λ)/(1+λ)`` in the
steady state, but needs about one half-life ``log 0.5 / log λ`` steps to cover half of the step. `decay_tradeoff`
measures both on simulated signals (with `tsattn.layers.ema`), next to those closed forms.

Attention over a history window of W offsets (``d = 0`` is the current step) is summarised by its *memory
length*: the expected offset ``Σ_d d·a_d`` (`expected_offset`) or the smallest offset that holds a given share of
the weight (`mass_offset`). `ema_prior_weights` gives the weights of EMA history attention without content (its
recency prior), the reference the learned weights are compared with.

What a trained network looks at is read with forward hooks, without changing the model: `attention_maps`
collects the weights of every `EMAHistoryAttention` inside a model for one forward call, `gam_gates` the channel
and temporal gates of every `GAM1d`.

Arrays may be numpy arrays or torch tensors; results are numpy arrays (or a pandas DataFrame).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch

from tsattn.layers.ema import ema
from tsattn.layers.ema_attention import EMAHistoryAttention
from tsattn.layers.gam import GAM1d

__all__ = [
    "attention_maps",
    "decay_tradeoff",
    "ema_prior_weights",
    "expected_offset",
    "gam_gates",
    "half_life",
    "mass_offset",
    "settle_steps",
    "step_lag",
    "step_signal",
]


def _numpy(values: Any) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    return np.asarray(values, dtype=np.float64)


def _decays(decay: Any) -> np.ndarray:
    lam = _numpy(decay)
    if np.any((lam <= 0.0) | (lam >= 1.0)):
        raise ValueError(f"decays must lie in (0, 1), got {lam.ravel().tolist()}")
    return lam


def half_life(decay: Any) -> np.ndarray:
    """Steps for an EMA weight to halve, ``log 0.5 / log λ``; λ (...) in (0, 1) -> (...)."""
    return np.log(0.5) / np.log(_decays(decay))


def settle_steps(decay: Any, tol: float = 0.01) -> np.ndarray:
    """Steps after which an EMA has forgotten all but ``tol`` of a past step change, ``⌈log tol / log λ⌉``."""
    if not 0.0 < tol < 1.0:
        raise ValueError(f"tol must be in (0, 1), got {tol}")
    return np.ceil(np.log(tol) / np.log(_decays(decay))).astype(np.int64)


def step_signal(
    length: int,
    step_at: int,
    before: float = 0.0,
    after: float = 1.0,
    noise: float = 0.3,
    repeats: int = 1,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """A level that jumps from ``before`` to ``after`` at index ``step_at``, plus Gaussian noise.

    Returns:
        noisy (repeats, length) observations (independent noise per repeat) and the true level (length,).
    """
    if not 0 < step_at < length:
        raise ValueError(f"step_at must lie inside the signal (0 < step_at < {length}), got {step_at}")
    level = np.where(np.arange(length) < step_at, before, after).astype(np.float64)
    rng = np.random.default_rng(seed)
    return level + noise * rng.standard_normal((repeats, length)), level


def step_lag(smoothed: Any, step_at: int, before: float, after: float, level: float = 0.5) -> np.ndarray:
    """Steps after a step change until a smoothed signal first covers ``level`` of it.

    Args:
        smoothed: (..., T) smoothed signals that step from ``before`` to ``after`` at index ``step_at``.
        step_at: index of the first sample at the new level.
        before, after: the levels on either side (the direction is taken from them).
        level: share of the step to cover (0.5: crossing the midpoint).

    Returns:
        (...) lag k ≥ 0 in steps (index ``step_at + k`` is the first one at or past the threshold, to within 1e-9
        of the step for rounding; 0 for a signal that follows the step at once), NaN where it is never reached.
    """
    y = _numpy(smoothed)
    if after == before:
        raise ValueError("before and after must differ")
    if not 0 <= step_at < y.shape[-1]:
        raise ValueError(f"step_at={step_at} must index a sample of the {y.shape[-1]} along the last axis")
    progress = (y[..., step_at:] - before) / (after - before)  # (..., T - step_at), 0 before, 1 after
    crossed = progress >= level - 1e-9  # λ^k = 0.5 exactly at a whole half-life, a hair below in floating point
    lag = np.argmax(crossed, axis=-1).astype(np.float64)
    return np.where(crossed.any(axis=-1), lag, np.nan)


def decay_tradeoff(
    decays: Sequence[float] | np.ndarray | torch.Tensor,
    noise: float = 0.3,
    step: float = 1.0,
    repeats: int = 64,
    tol: float = 0.01,
    length: int | None = None,
    seed: int = 0,
) -> pd.DataFrame:
    """Measure lag and residual noise of EMA smoothing on a noisy step change, for each decay.

    The signal is a level jumping by ``step`` halfway through, plus white noise of std ``noise``, ``repeats``
    independent times; every decay smooths the same signals (``tsattn.layers.ema``, start-up ``y_0 = x_0``).

    - lag: `step_lag` at 50 % of the step, averaged over the repeats (steps);
    - noise variance: variance of (smoothed − true level) over all repeats, away from the step: the start-up and
      the ``settle_steps(λ, tol)`` samples after the step are left out, so what remains is noise, not lag.

    Args:
        decays: λ values in (0, 1).
        length: samples per signal; by default long enough that each half keeps at least 500 samples beyond the
            slowest decay's settling time.

    Returns:
        DataFrame, one row per decay (in the given order): ``decay``, ``half_life``, ``lag``, ``noise_var``, and the
        closed forms ``lag_theory`` (clean step response, ``⌈half-life⌉ − 1``) and ``noise_var_theory``
        (``σ²(1−λ)/(1+λ)``).
    """
    lam = _decays(decays).ravel()
    if lam.size == 0:
        raise ValueError("give at least one decay")
    settle = settle_steps(lam, tol)  # (D,)
    half = int(settle.max()) + 500
    if length is None:
        length = 2 * half
    step_at = length // 2
    if length - step_at <= settle.max() or step_at <= settle.max():
        raise ValueError(f"length={length} is too short for the slowest decay (settles in {settle.max()} steps)")
    noisy, level = step_signal(length, step_at, 0.0, step, noise, repeats, seed)
    x = torch.from_numpy(noisy).unsqueeze(-1).expand(-1, -1, lam.size).contiguous()  # (R, T, D)
    smoothed = ema(x, torch.from_numpy(lam)).numpy()  # (R, T, D) float64
    smoothed = np.moveaxis(smoothed, -1, 0)  # (D, R, T)
    lag = np.nanmean(step_lag(smoothed, step_at, 0.0, step), axis=-1)  # (D,)
    t = np.arange(length)
    noise_var = np.empty(lam.size)
    for i, k in enumerate(settle):
        # Away from the start-up and the step: the transient is below tol of the step there.
        keep = ((t >= k) & (t < step_at)) | (t >= step_at + k)
        noise_var[i] = np.var(smoothed[i][:, keep] - level[keep])
    hl = half_life(lam)
    return pd.DataFrame(
        {
            "decay": lam,
            "half_life": hl,
            "lag": lag,
            "noise_var": noise_var,
            "lag_theory": np.maximum(np.ceil(hl - 1e-9) - 1.0, 0.0),
            "noise_var_theory": noise**2 * (1.0 - lam) / (1.0 + lam),
        }
    )


def ema_prior_weights(decay: Any, window: int) -> np.ndarray:
    """Weights of EMA history attention without content: ``λ^d / Σ_{d'<W} λ^{d'}``; λ (...) -> (..., W)."""
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    lam = _decays(decay)
    d = np.arange(window, dtype=np.float64)
    logw = d * np.log(lam)[..., None]  # (..., W), ≤ 0, never λ^(-d)
    w = np.exp(logw - logw.max(axis=-1, keepdims=True))
    return w / w.sum(axis=-1, keepdims=True)


def _weights(weights: Any) -> np.ndarray:
    w = _numpy(weights)
    if w.ndim == 0 or w.shape[-1] == 0:
        raise ValueError(f"weights must have a last axis of history offsets, got shape {w.shape}")
    total = w.sum(axis=-1, keepdims=True)
    return np.divide(w, total, out=np.full_like(w, np.nan), where=total > 0)  # rows with no weight -> NaN


def expected_offset(weights: Any) -> np.ndarray:
    """Mean history offset ``Σ_d d·a_d`` of attention weights (..., W) over offsets d = 0..W-1 -> (...).

    Rows are renormalised first; a row with no weight gives NaN.
    """
    w = _weights(weights)
    return w @ np.arange(w.shape[-1], dtype=np.float64)


def mass_offset(weights: Any, mass: float = 0.9) -> np.ndarray:
    """Smallest offset d whose weights ``a_0..a_d`` hold ``mass`` of the total; (..., W) -> (...) steps.

    A memory length in steps: with ``mass=0.9`` the history beyond it gets under 10 % of the attention.
    """
    if not 0.0 < mass <= 1.0:
        raise ValueError(f"mass must be in (0, 1], got {mass}")
    w = _weights(weights)
    cum = np.cumsum(w, axis=-1)
    out = np.argmax(cum >= mass - 1e-9, axis=-1).astype(np.float64)
    return np.where(np.isnan(cum[..., -1]), np.nan, out)



def _capture_inputs(model: torch.nn.Module, kind: type, call: Any) -> dict[str, tuple[torch.nn.Module, tuple, dict]]:
    """Run ``call()`` with pre-hooks on every ``kind`` sub-module; return name -> (module, args, kwargs) seen."""
    seen: dict[str, tuple[torch.nn.Module, tuple, dict]] = {}
    handles = []
    for name, module in model.named_modules():
        if isinstance(module, kind):

            def hook(mod, args, kwargs, name=name):
                seen[name] = (mod, args, kwargs)

            handles.append(module.register_forward_pre_hook(hook, with_kwargs=True))
    try:
        with torch.no_grad():
            call()
    finally:
        for handle in handles:
            handle.remove()
    return seen


def attention_maps(model: torch.nn.Module, *args: Any, **kwargs: Any) -> dict[str, torch.Tensor]:
    """Attention weights of every `EMAHistoryAttention` in ``model`` during ``model(*args, **kwargs)``.

    The model runs once as usual (no gradients); each attention layer is then re-run on the input it received,
    with ``return_weights=True``.

    Returns:
        module name -> weights (B, H, L', W) over history offsets d = 0..W-1 (d = 0 is the current step), where L'
        is the length of the sequence that layer saw (for a forecaster, usually its lookback, or its patches).
    """
    seen = _capture_inputs(model, EMAHistoryAttention, lambda: model(*args, **kwargs))
    out = {}
    with torch.no_grad():
        for name, (module, a, kw) in seen.items():
            kw = {k: v for k, v in kw.items() if k != "return_weights"}
            out[name] = module(*a, **kw, return_weights=True)[1]
    return out


def gam_gates(model: torch.nn.Module, *args: Any, **kwargs: Any) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Channel and temporal gates of every `GAM1d` in ``model`` during ``model(*args, **kwargs)``.

    GAM1d computes ``x · g_c`` with the channel gate ``g_c = σ(channel_mlp(x))``, then multiplies by the temporal
    gate ``g_t = σ(temporal(x · g_c))``; both are recomputed from the input each layer received.

    Returns:
        module name -> (channel gate (B, L, C), temporal gate (B, L, C)), values in (0, 1).
    """
    seen = _capture_inputs(model, GAM1d, lambda: model(*args, **kwargs))
    out = {}
    with torch.no_grad():
        for name, (module, a, kw) in seen.items():
            x = a[0] if a else kw["x"]
            channel = torch.sigmoid(module.channel_mlp(x))
            out[name] = (channel, torch.sigmoid(module.temporal(x * channel)))
    return out
