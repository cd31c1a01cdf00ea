"""EMA history attention: attend over a sliding window of each step's own history with an EMA recency prior.

For every step t, per head h and history offset d = 0..W-1 (d = 0 is the current step)::

    score[t, d] = τ_h · sim(q_t, k_{t-d}) + d · log λ_h
    a[t, :]     = softmax_d(score[t, :])                  (float32 or wider)
    c_t         = Σ_d a[t, d] · v_{t-d}
    y_t         = x_t + g_t ⊙ (W_o c_t − x_t),   g_t = σ(W_g [x_t ; c_t])

The recency prior ``d·log λ_h`` alone gives a normalised, truncated exponential moving average (exponential
smoothing), so the layer generalises an EMA: with ``similarity="none"`` (or zero content) the weights are exactly
``λ^d / Σ_{valid d'} λ^{d'}``. Keys before the start of the series, and keys at steps marked invalid by a mask,
are excluded from the softmax (they are not zero keys); a row with no valid key gives ``c_t = 0``.

The band of scores is computed blockwise without a loop over time or over the window: queries are cut into
blocks of P steps (P ≈ W/2), each block meets the P + W - 1 keys that can reach it in one batched matmul, and
keys outside the band get an excluded score; the (B, H, L, W) weights are a strided view of those blocks.
Time and memory are O(L·(P+W)·d) = O(L·W·d), never O(L²).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["AttentionState", "EMAHistoryAttention", "ema_history_attention"]

SIMILARITIES = ("cosine", "dot", "none")


class AttentionState(NamedTuple):
    """Streaming state: ring buffers of the last W keys and values, their validity and the next slot.

    keys, values: (B, H, W, d_head); valid: (B, W) bool; slot: index the next step writes to.
    """

    keys: Tensor
    values: Tensor
    valid: Tensor
    slot: int


# additive/fill value for excluded keys: exp() gives exactly 0, yet a row of them stays finite
_EXCLUDED = -1.0e30


def _band(s: Tensor) -> Tensor:
    """(..., P, P+W-1) contiguous -> (..., P, W) view with out[..., i, w] = s[..., i, i + w]."""
    P, K = s.shape[-2:]
    W = K - P + 1
    return s.as_strided((*s.shape[:-1], W), (*s.stride()[:-2], K + 1, 1), s.storage_offset())


def _segment_bounds(length: int, steps: int, reach: int) -> list[tuple[int, int]]:
    """New steps [a, b) of the segments of a sequence of *length* steps: the first reach + steps, then *steps* each.

    Segment j reads steps [a - reach, b) (from 0 for the first) and keeps its outputs for [a, b): every kept step
    has its whole history of *reach* steps inside its segment.
    """
    edges = list(range(reach + steps, length, steps))
    return list(zip([0, *edges], [*edges, length], strict=True))


def _block_length(window: int, block: int | None = None) -> int:
    """Query block length P: *block*, or W/2 within [16, 64]; never more than W."""
    return max(1, min(block or min(64, max(16, window // 2)), window))


def ema_history_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    log_decay: Tensor,
    window: int,
    mask: Tensor | None = None,
    return_weights: bool = False,
    block: int | None = None,
) -> Tensor | tuple[Tensor, Tensor]:
    """Windowed softmax attention with an EMA recency prior, per head.

    ``score[t, d] = q_t·k_{t-d} + d·log λ_h`` for d = 0..window-1 (scale and normalise q, k beforehand).

    Args:
        q, k: (B, H, L, dk); dk = 0 means no content term (pure EMA prior).
        v: (B, H, L, dv).
        log_decay: (H,) log λ_h ≤ 0.
        window: W.
        mask: (B, L) bool, True where a step is valid; invalid steps are never attended.
        return_weights: also return the weights.
        block: query block length P (default W/2, within [16, 64] and ≤ W); the speed/memory knob.

    Returns:
        c: (B, H, L, dv), and weights (B, H, L, W) indexed by offset d (d = 0 is the current step).
    """
    B, H, L, dk = q.shape
    W = window
    # heads first internally: the prior (H, 1, 1, P, K) then broadcasts over the adjacent batch and block axes,
    # whose joint gradient sum is one pass (summing over two separated axes is ~10x slower on CPU)
    q, k, v = q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1)  # (H, B, L, d)
    P = _block_length(W, block)
    K = P + W - 1  # keys that can reach a block of P queries
    N = -(-L // P)
    Lp = N * P
    sdtype = torch.promote_types(q.dtype, torch.float32)  # softmax in float32 at least
    # query block n (steps nP..nP+P-1) meets keys nP-W+1..nP+P-1: query i, key j is offset d = W-1+i-j
    i = torch.arange(P, device=q.device)
    j = torch.arange(K, device=q.device)
    d = (W - 1) + i[:, None] - j[None, :]  # (P, K)
    in_band = (d >= 0) & (d < W)
    prior = d.clamp(0, W - 1).to(sdtype) * log_decay.to(sdtype)[:, None, None]  # (H, P, K)
    bias = prior.masked_fill(~in_band, _EXCLUDED)[:, None, None]  # (H, 1, 1, P, K)
    if dk > 0:
        qb = F.pad(q, (0, 0, 0, Lp - L)).unflatten(2, (N, P))  # (H, B, N, P, dk)
        kwin = F.pad(k, (0, 0, W - 1, Lp - L)).unfold(2, K, P)  # (H, B, N, dk, K)
        scores = (qb @ kwin).to(sdtype) + bias  # (H, B, N, P, K)
    else:
        scores = bias.expand(H, B if mask is not None else 1, N, P, K).clone()
    if mask is None:
        # keys before the series start are excluded (not zero keys); only blocks n·P < W-1 see them
        start = (torch.arange(N, device=q.device)[:, None, None] * P + i[:, None] - d) < 0  # (N, P, K)
        nb = min(N, -(-(W - 1) // P)) if W > 1 else 0
        if nb:
            scores[:, :, :nb].masked_fill_(start[:nb], _EXCLUDED)
        weights = torch.softmax(scores, dim=-1)
    else:
        keys = F.pad(mask.to(device=q.device, dtype=torch.bool), (W - 1, Lp - L), value=False)
        keys = keys.unfold(1, K, P)[None, :, :, None, :]  # (1, B, N, 1, K)
        scores = scores.masked_fill(~keys, _EXCLUDED)
        any_valid = (keys & in_band).any(-1, keepdim=True)  # (1, B, N, P, 1)
        weights = torch.softmax(scores, dim=-1) * any_valid  # rows with no valid key give c = 0
    vwin = F.pad(v, (0, 0, W - 1, Lp - L)).unfold(2, K, P).transpose(-1, -2)  # (H, B, N, K, dv)
    c = weights.to(v.dtype) @ vwin  # (H, B, N, P, dv); out-of-band weights are exactly 0
    c = c.flatten(2, 3)[:, :, :L].transpose(0, 1)  # (B, H, L, dv)
    if return_weights:
        band = _band(weights).flatten(2, 3)[:, :, :L].transpose(0, 1)  # (B|1, H, L, W), w = W-1-d
        return c, band.flip(-1).expand(B, H, L, W)
    return c


class EMAHistoryAttention(nn.Module):
    """Multi-head EMA history attention with gated fusion (module docstring for the math).

    Args:
        d_model: model width D (divisible by n_heads).
        n_heads: H.
        window: history length W, including the current step.
        similarity: "cosine" (default), "dot" (scaled by 1/√d_head) or "none" (pure EMA prior).
        min_temperature, max_temperature: clamp of the learnable τ_h.
        chunk_mib: on CPU, `forward` runs the batch in chunks whose attention scores take at most this many
            MiB: several whole sequences, or one segment of a sequence too long for the budget (with the W - 1
            steps before it); None runs the whole batch at once. The same result, but a bounded working set: on
            CPU the time then grows linearly with the length instead of with the caches and the allocator (every
            tensor above glibc's mmap threshold, 32 MiB, comes from fresh pages). GPUs always get the whole batch.
    """

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        window: int,
        similarity: str = "cosine",
        min_temperature: float = 0.01,
        max_temperature: float = 100.0,
        chunk_mib: float | None = 16.0,
    ) -> None:
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model={d_model} is not divisible by n_heads={n_heads}")
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        if similarity not in SIMILARITIES:
            raise ValueError(f"similarity must be one of {SIMILARITIES}, got {similarity!r}")
        if chunk_mib is not None and not chunk_mib > 0:
            raise ValueError(f"chunk_mib must be a positive number of MiB or None, got {chunk_mib!r}")
        self.chunk_mib = chunk_mib
        self.d_model, self.n_heads, self.window, self.similarity = d_model, n_heads, window, similarity
        self.d_head = d_model // n_heads
        self.min_temperature, self.max_temperature = min_temperature, max_temperature
        if similarity == "none":
            self.qk = None
            self.register_parameter("log_temperature", None)
        else:
            self.qk = nn.Linear(d_model, 2 * d_model)
            # cosine lies in [-1, 1]; τ = √d_head gives it the spread of a scaled dot product at init
            tau0 = math.sqrt(self.d_head) if similarity == "cosine" else 1.0
            self.log_temperature = nn.Parameter(torch.full((n_heads,), math.log(tau0)))
        self.value = nn.Linear(d_model, d_model)
        self.out = nn.Linear(d_model, d_model)
        self.gate = nn.Linear(2 * d_model, d_model)
        # half-lives spread geometrically over 1..W so heads track short and long trends
        if n_heads > 1:
            half_lives = window ** (torch.arange(n_heads, dtype=torch.float64) / (n_heads - 1))
        else:
            half_lives = torch.full((1,), math.sqrt(window), dtype=torch.float64)
        decays = 0.5 ** (1.0 / half_lives.clamp_min(1.0))
        self.decay_logit = nn.Parameter((torch.log(decays) - torch.log1p(-decays)).float())

    @property
    def decays(self) -> Tensor:
        """λ_h per head, (H,) in (0, 1)."""
        return torch.sigmoid(self.decay_logit)

    @property
    def half_lives(self) -> Tensor:
        """Steps for the prior weight to halve, per head, (H,)."""
        return math.log(0.5) / F.logsigmoid(self.decay_logit)

    @property
    def temperature(self) -> Tensor | None:
        """τ_h per head, (H,), clamped; None without content similarity."""
        if self.log_temperature is None:
            return None
        return self.log_temperature.exp().clamp(self.min_temperature, self.max_temperature)

    def _qkv(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """x (..., D) -> q, k (..., H, dk) (τ folded into q), v (..., H, d_head)."""
        shape = (*x.shape[:-1], self.n_heads, self.d_head)
        v = self.value(x).view(shape)
        if self.qk is None:
            empty = x.new_zeros((*shape[:-1], 0))
            return empty, empty, v
        q, k = self.qk(x).view(*x.shape[:-1], 2, self.n_heads, self.d_head).unbind(-3)  # (..., H, dh)
        if self.similarity == "cosine":
            q, k = F.normalize(q, dim=-1, eps=1e-6), F.normalize(k, dim=-1, eps=1e-6)
            scale = self.temperature
        else:
            scale = self.temperature / math.sqrt(self.d_head)
        return q * scale.to(q.dtype)[:, None], k, v

    def _fuse(self, x: Tensor, c: Tensor) -> Tensor:
        """Gated fusion y = x + g ⊙ (W_o c − x), g = σ(W_g [x; c]); x, c (..., D)."""
        g = torch.sigmoid(self.gate(torch.cat([x, c], -1)))
        return x + g * (self.out(c) - x)

    def forward(
        self, x: Tensor, mask: Tensor | None = None, return_weights: bool = False
    ) -> Tensor | tuple[Tensor, Tensor]:
        """x (B, L, D), mask (B, L) bool (True = valid step) -> y (B, L, D) [, weights (B, H, L, W)].

        ``weights[b, h, t, d]`` is the weight of step t - d (d = 0 is the current step).
        """
        if x.dim() != 3 or x.shape[-1] != self.d_model:
            raise ValueError(f"expected x of shape (B, L, {self.d_model}), got {tuple(x.shape)}")
        if mask is not None and mask.shape != x.shape[:2]:
            raise ValueError(f"mask must have shape {tuple(x.shape[:2])}, got {tuple(mask.shape)}")
        rows, steps = self._chunking(x)
        B, L = x.shape[:2]
        if rows >= B and steps >= L:
            return self._forward(x, mask, return_weights)
        xs = x.split(rows)
        masks = mask.split(rows) if mask is not None else [None] * len(xs)
        parts = [self._forward_segments(xc, mc, return_weights, steps) for xc, mc in zip(xs, masks, strict=True)]
        if not return_weights:
            return parts[0] if len(parts) == 1 else torch.cat(parts)
        return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])

    def _forward_segments(
        self, x: Tensor, mask: Tensor | None, return_weights: bool, steps: int
    ) -> Tensor | tuple[Tensor, Tensor]:
        """`_forward` of x (b, L, D) run as segments of *steps* new steps, each with the W - 1 steps before it.

        The input is split into the segments' new steps (views; their gradients are joined once) and each segment
        prepends its history from the pieces before it, so no tensor of the whole sequence is copied per segment.
        """
        L, reach = x.shape[1], self.window - 1
        if steps >= L:
            return self._forward(x, mask, return_weights)
        bounds = _segment_bounds(L, steps, reach)
        pieces = x.split([b - a for a, b in bounds], 1)
        back = -(-reach // steps)  # pieces that hold a segment's history
        ys, ws = [], []
        for j, (a, b) in enumerate(bounds):
            seg, keep = pieces[j], 0
            if j and reach:
                history = pieces[j - 1] if back == 1 else torch.cat(pieces[max(0, j - back) : j], 1)
                seg, keep = torch.cat([history[:, -reach:], seg], 1), reach
            out = self._forward(seg, None if mask is None else mask[:, a - keep : b], return_weights)
            y, w = out if return_weights else (out, None)
            ys.append(y[:, keep:] if keep else y)
            if return_weights:
                ws.append(w[:, :, keep:] if keep else w)
        y = torch.cat(ys, 1)
        return (y, torch.cat(ws, 2)) if return_weights else y

    def _chunking(self, x: Tensor) -> tuple[int, int]:
        """(sequences per chunk, new steps per segment): at most chunk_mib of scores, H·(P + W - 1) floats a step.

        A sequence longer than the budget is cut into segments, each *steps* new steps (the last may have fewer)
        plus the W - 1 before them (recomputed); each chunk of sequences then runs one segment at a time.
        """
        B, L = x.shape[:2]
        if self.chunk_mib is None or x.device.type != "cpu":
            return B, L
        itemsize = torch.promote_types(x.dtype, torch.float32).itemsize
        per_step = self.n_heads * (_block_length(self.window) + self.window - 1) * itemsize
        budget = max(1, int(self.chunk_mib * 2**20 // per_step))  # steps per chunk
        if L <= budget:
            return min(B, budget // L), L
        reach = self.window - 1
        if L <= reach + 1:  # no segment would be shorter than the sequence
            return 1, L
        n = -(-(L - reach) // max(1, budget - reach))
        steps = -(-(L - reach) // n)
        return max(1, budget // (steps + reach)), steps

    def _forward(self, x: Tensor, mask: Tensor | None, return_weights: bool) -> Tensor | tuple[Tensor, Tensor]:
        q, k, v = (t.transpose(1, 2) for t in self._qkv(x))  # (B, H, L, dh)
        log_decay = F.logsigmoid(self.decay_logit)
        out = ema_history_attention(q, k, v, log_decay, self.window, mask, return_weights)
        c, weights = out if return_weights else (out, None)
        c = c.transpose(1, 2).flatten(2)  # (B, H, L, dh) -> (B, L, D)
        y = self._fuse(x, c)
        return (y, weights) if return_weights else y

    def init_state(self, batch_size: int, device=None, dtype=None) -> AttentionState:
        """Empty streaming state for `batch_size` sequences (no valid history)."""
        dk = 0 if self.qk is None else self.d_head
        shape = (batch_size, self.n_heads, self.window)
        return AttentionState(
            keys=torch.zeros(*shape, dk, device=device, dtype=dtype),
            values=torch.zeros(*shape, self.d_head, device=device, dtype=dtype),
            valid=torch.zeros(batch_size, self.window, dtype=torch.bool, device=device),
            slot=0,
        )

    def step(
        self, x_t: Tensor, state: AttentionState | None = None, mask: Tensor | None = None
    ) -> tuple[Tensor, AttentionState]:
        """One streaming step, x_t (B, D) [mask (B,) bool] -> (y_t (B, D), new state); O(W·D), not O(t).

        A run of `step` over a sequence equals `forward` on it, the first W steps included.
        """
        B = x_t.shape[0]
        if state is None:
            state = self.init_state(B, x_t.device, x_t.dtype)
        q, k, v = self._qkv(x_t)  # (B, H, dk), (B, H, dk), (B, H, dh)
        W, s = self.window, state.slot
        # functional ring-buffer update: the caller's state is left untouched (O(W·D) copy)
        keys, values, valid = state.keys.clone(), state.values.clone(), state.valid.clone()
        keys[:, :, s], values[:, :, s] = k, v
        valid[:, s] = True if mask is None else mask.to(torch.bool)
        sdtype = torch.promote_types(q.dtype, torch.float32)
        offsets = (s - torch.arange(W, device=x_t.device)) % W  # (W,) offset d of each slot
        prior = offsets.to(sdtype) * F.logsigmoid(self.decay_logit).to(sdtype)[:, None]  # (H, W)
        scores = torch.einsum("bhk,bhwk->bhw", q, keys).to(sdtype) + prior  # (B, H, W)
        scores = scores.masked_fill(~valid[:, None, :], torch.finfo(sdtype).min)
        weights = torch.softmax(scores, -1) * valid.any(-1)[:, None, None]
        c = torch.einsum("bhw,bhwd->bhd", weights.to(values.dtype), values).flatten(1)  # (B, D)
        y = self._fuse(x_t, c)
        return y, AttentionState(keys, values, valid, (s + 1) % W)

    def extra_repr(self) -> str:
        return (
            f"d_model={self.d_model}, n_heads={self.n_heads}, window={self.window}, "
            f"similarity={self.similarity!r}"
        )
