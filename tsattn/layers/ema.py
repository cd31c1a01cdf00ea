"""Exponential moving average (exponential smoothing) over time, with learnable per-channel decay.

Exponential smoothing (Brown 1956; Holt 1957): ``y_t = λ·y_{t-1} + (1 - λ)·x_t``. High λ is smooth but lags
behind fast changes, low λ follows quickly but is noisy.

Start-up rule (documented, and tested against pandas):

- ``adjust=False`` (default): ``y_0 = x_0``, then the recursion above. Equals
  ``pandas.Series.ewm(alpha=1 - λ, adjust=False).mean()``.
- ``adjust=True``: ``y_t = Σ_{j≤t} λ^{t-j} x_j / Σ_{j≤t} λ^{t-j}``, i.e. the recursion from ``y_{-1} = 0`` divided
  by the weight ``w_t = 1 - λ^{t+1}``. Equals ``pandas.Series.ewm(alpha=1 - λ, adjust=True).mean()``.

Both rules are expressed with one streaming state ``EMAState(value, weight)``: the unnormalised accumulator is
``weight·value``; ``adjust=False`` starts from ``(x_0, 1)`` and ``adjust=True`` from ``(0, 0)``. The state belongs
to the sequence (it is passed in and returned), never to the module, so nothing leaks between batches.

The parallel path is a chunked linear scan. Powers are only ever formed as ``exp(k·log λ)`` with ``k ≥ 0``
(never ``λ^(-t)``), so it stays finite for any length. Two kernels:

- ``"loop"`` (CPU default): a sequential pass inside chunks of ``T ≈ √L`` steps, vectorised over
  (batch, chunks, channels), then a short scan over chunk ends and one fix-up pass; memory-bound like cumsum.
- ``"matmul"`` (CUDA default): inside chunks a (T×T) lower-triangular decay matrix ``exp((i-j)·log λ)`` applied by
  one batched matmul, chunk ends carried by the same scan applied recursively with decay ``λ^T``; O(log L) kernels.

The backward pass is a reverse scan with the same kernel (custom autograd Function), and the gradient with
respect to the decay is ``Σ_t ḡ_t·h_{t-1}``, so forward+backward costs a few passes over the tensor.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["EMA", "EMAState", "ema", "linear_scan"]

# log λ is clamped so that 0·log λ stays 0 (λ = 0 would give 0·(-inf) = NaN).
_LOG_MIN = -1.0e4
# Elements per temporary of the decay gradient on CPU (8 MiB in float32). A full-size temporary of tens of MB
# would come from fresh pages that the kernel zeroes (glibc's malloc maps them anew), costing more than the sum.
_BLOCK = 1 << 21


class EMAState(NamedTuple):
    """Streaming state of an EMA: the last output ``value`` (B, C) and its accumulated ``weight`` (B, C)."""

    value: Tensor
    weight: Tensor


def _scan_loop(
    b: Tensor,
    log_a: Tensor,
    h0: Tensor | None,
    reverse: bool,
    ema_gain: bool = False,
    first_full: bool = False,
) -> Tensor:
    """h_t = a·h_{t-1} + g·b_t (h_t = a·h_{t+1} + g·b_t if reverse), g = 1 - a if ema_gain else 1.

    b (B, L, C) with unit or zero stride over C, log_a (C,), h0 (B, C) or None; ``first_full`` (forward only)
    sets h_0 = b_0.
    Chunks of T = ⌊√L⌋ steps are scanned sequentially but all at once (one kernel per step of a chunk),
    then a scan over chunk ends and one fix-up pass; the < T leftover steps are scanned directly.
    """
    B, L, C = b.shape
    a = log_a.exp()
    T = max(1, math.isqrt(L))
    N = L // T
    start = L - N * T if reverse else 0  # the leftover steps sit at the end of the scan order
    x = b[:, start : start + N * T].view(B, N, T, C)  # (B, N, T, C) view, no copy
    out_full = torch.empty(b.shape, dtype=b.dtype, device=b.device)  # contiguous even if b is broadcast
    out = out_full[:, start : start + N * T].view(B, N, T, C)  # (B, N, T, C) view into the output

    def step(x_i: Tensor, prev: Tensor, out_i: Tensor) -> None:
        if ema_gain:
            torch.lerp(x_i, prev, a, out=out_i)  # x + a·(h - x) = a·h + (1-a)·x
        else:
            torch.addcmul(x_i, prev, a, out=out_i)

    order = list(range(T - 1, -1, -1) if reverse else range(T))
    if ema_gain:
        torch.mul(x[:, :, order[0]], 1 - a, out=out[:, :, order[0]])
        if first_full:
            out[:, 0, 0] = x[:, 0, 0]
    else:
        out[:, :, order[0]] = x[:, :, order[0]]
    for prev, i in zip(order[:-1], order[1:], strict=True):
        step(x[:, :, i], out[:, :, prev], out[:, :, i])
    ends = out[:, :, order[-1]]  # (B, N, C) chunk-local state after the chunk's last step
    aT = (T * log_a).exp()
    carry_in = torch.empty_like(ends)  # (B, N, C) true state entering each chunk
    carry = h0 if h0 is not None and not first_full else torch.zeros_like(ends[:, 0])
    for n in range(N - 1, -1, -1) if reverse else range(N):
        carry_in[:, n] = carry
        carry = torch.addcmul(ends[:, n], carry, aT)
    # step i of a chunk comes k steps after the chunk's entry: k = i+1 forward, T-i backward
    k = torch.arange(T, device=b.device, dtype=b.dtype)
    k = (T - k) if reverse else (k + 1)
    out.addcmul_(carry_in[:, :, None, :], torch.exp(k[:, None] * log_a))  # (T, C) powers, all ≤ 1
    prev_out = carry
    for t in range(start - 1, -1, -1) if reverse else range(N * T, L):
        step(b[:, t], prev_out, out_full[:, t])
        prev_out = out_full[:, t]
    return out_full


def _scan_matmul(b: Tensor, log_a: Tensor, h0: Tensor | None, reverse: bool, chunk: int = 64) -> Tensor:
    """h_t = a·h_{t-1} + b_t with a (T×T) decay matrix per chunk and a recursive scan over chunk ends."""
    if reverse:
        return _scan_matmul(b.flip(1), log_a, h0, False, chunk).flip(1)
    B, L, C = b.shape
    T = min(chunk, L)
    N = -(-L // T)
    pad = N * T - L
    if pad:
        b = F.pad(b, (0, 0, 0, pad))
    x = b.reshape(B, N, T, C)  # (B, N, T, C)
    idx = torch.arange(T, device=b.device)
    diff = idx[:, None] - idx[None, :]  # (T, T): i - j
    decay = torch.exp(diff.clamp(min=0).to(b.dtype)[None] * log_a[:, None, None])  # (C, T, T), entries ≤ 1
    decay = decay * (diff >= 0).to(b.dtype)
    local = torch.einsum("cij,bnjc->bnic", decay, x)  # (B, N, T, C) chunk-local scan from zero
    pw = torch.exp((idx + 1).to(b.dtype)[:, None] * log_a)  # (T, C)
    if N == 1:
        carry_in = h0[:, None] if h0 is not None else None  # (B, 1, C)
    else:
        # chunk ends follow the same recurrence with decay λ^T; the recursion has O(log L) levels
        carry = _scan_matmul(local[:, :, -1], log_a * T, h0, False, chunk)  # (B, N, C)
        first = h0[:, None] if h0 is not None else torch.zeros_like(carry[:, :1])
        carry_in = torch.cat([first, carry[:, :-1]], 1)  # (B, N, C)
    if carry_in is not None:
        local = local + carry_in[:, :, None, :] * pw
    return local.reshape(B, N * T, C)[:, :L]


def _scan_input(g: Tensor) -> Tensor:
    """g itself where its channels are adjacent or broadcast (an incoming gradient often is, e.g. of a sum), else
    a contiguous copy: the scans read (B, ·, C) slices step by step."""
    return g if g.stride(-1) <= 1 else g.contiguous()


def _channel_sum(g: Tensor, u: Tensor, v: Tensor | None = None) -> Tensor:
    """Σ over batch and time of g·(u - v), or of g·u if v is None: (B, T, C) each -> (C,).

    On CPU summed in blocks of at most ``_BLOCK`` elements (batch rows, or time steps of one row), so that no
    temporary has the full size.
    """
    B, T, C = g.shape
    budget = _BLOCK if g.device.type == "cpu" else g.numel()
    rows = max(1, min(B, budget // max(1, T * C)))
    steps = max(1, T) if rows > 1 else max(1, min(T, budget // max(1, C)))  # T = 0: no steps, no blocks
    inplace = not torch.is_grad_enabled()  # without a double-backward graph the temporaries can be reused
    total = None
    for b0 in range(0, B, rows):
        for t0 in range(0, T, steps):
            idx = (slice(b0, b0 + rows), slice(t0, t0 + steps))
            if v is None:
                part = g[idx] * u[idx]
            else:
                part = u[idx] - v[idx]
                part = part.mul_(g[idx]) if inplace else part * g[idx]
            part = part.sum((0, 1))
            total = part if total is None else total + part
    return g.new_zeros(C) if total is None else total  # no steps: T = 0


def _resolve(method: str, x: Tensor) -> str:
    if method == "auto":
        return "matmul" if x.is_cuda else "loop"
    if method not in ("loop", "matmul"):
        raise ValueError(f"method must be 'auto', 'loop' or 'matmul', got {method!r}")
    return method


class _LinearScan(torch.autograd.Function):
    """Differentiable h_t = a·h_{t-1} + b_t with a reverse-scan backward (twice differentiable)."""

    @staticmethod
    def forward(ctx, b: Tensor, a: Tensor, h0: Tensor | None, reverse: bool, method: str) -> Tensor:
        log_a = torch.log(a).clamp_min(_LOG_MIN)
        if method == "loop":
            h = _scan_loop(b, log_a, h0, reverse)
        else:
            h = _scan_matmul(b, log_a, h0, reverse)
        ctx.save_for_backward(a, h, h0)
        ctx.reverse, ctx.method = reverse, method
        return h

    @staticmethod
    def backward(ctx, grad_h: Tensor):
        a, h, h0 = ctx.saved_tensors
        reverse = ctx.reverse
        # dL/db_t = Σ_{s after t} a^{|s-t|} dL/dh_s: the same scan run the other way
        grad_b = _LinearScan.apply(_scan_input(grad_h), a, None, not reverse, ctx.method)
        grad_a = grad_h0 = None
        # a multiplies h_{t-1} (forward) or h_{t+1} (reverse) at step t
        if reverse:
            g_in, h_prev, g_edge = grad_b[:, :-1], h[:, 1:], grad_b[:, -1]
        else:
            g_in, h_prev, g_edge = grad_b[:, 1:], h[:, :-1], grad_b[:, 0]
        if ctx.needs_input_grad[1]:
            grad_a = _channel_sum(g_in, h_prev)
            if h0 is not None:
                grad_a = grad_a + (g_edge * h0).sum(0)
        if h0 is not None and ctx.needs_input_grad[2]:
            grad_h0 = g_edge * a
        return grad_b, grad_a, grad_h0, None, None


class _EMAScan(torch.autograd.Function):
    """Differentiable h_t = a·h_{t-1} + (1-a)·x_t, h_{-1} = h0; with ``first_full`` h_0 = x_0 instead.

    The (1 - a) gain and the start-up rule are fused into the scan so that forward+backward touch the
    (B, L, C) tensor as few times as possible.
    """

    @staticmethod
    def forward(ctx, x: Tensor, a: Tensor, h0: Tensor | None, first_full: bool, method: str) -> Tensor:
        log_a = torch.log(a).clamp_min(_LOG_MIN)
        if first_full:
            h0 = None
        if method == "loop":
            h = _scan_loop(x, log_a, h0, False, ema_gain=True, first_full=first_full)
        else:
            b = x * (1 - a)
            if first_full:
                b = torch.cat([x[:, :1], b[:, 1:]], 1)
            h = _scan_matmul(b, log_a, h0, False)
        ctx.save_for_backward(x, a, h, h0)
        ctx.first_full, ctx.method = first_full, method
        return h

    @staticmethod
    def backward(ctx, grad_h: Tensor):
        x, a, h, h0 = ctx.saved_tensors
        grad_b = _LinearScan.apply(_scan_input(grad_h), a, None, True, ctx.method)  # dL/d(input of step t)
        # without a double-backward graph, intermediates can be reused in place (fewer passes over memory)
        inplace = not torch.is_grad_enabled()
        grad_x = grad_a = grad_h0 = None
        g0 = grad_b[:, 0].clone()
        if ctx.needs_input_grad[1]:
            # d h_t / d a = h_{t-1} - x_t at every step that applies the recurrence
            grad_a = _channel_sum(grad_b[:, 1:], h[:, :-1], x[:, 1:])
            if not ctx.first_full:
                prev0 = h0 if h0 is not None else torch.zeros_like(x[:, 0])
                grad_a = grad_a + (g0 * (prev0 - x[:, 0])).sum(0)
        if h0 is not None and ctx.needs_input_grad[2]:
            grad_h0 = g0 * a
        if ctx.needs_input_grad[0]:
            grad_x = grad_b.mul_(1 - a) if inplace else grad_b * (1 - a)
            if ctx.first_full:
                if inplace:
                    grad_x[:, 0] = g0
                else:
                    grad_x = torch.cat([g0[:, None], grad_x[:, 1:]], 1)
        return grad_x, grad_a, grad_h0, None, None


def linear_scan(
    b: Tensor, a: Tensor, h0: Tensor | None = None, reverse: bool = False, method: str = "auto"
) -> Tensor:
    """Parallel first-order linear recurrence ``h_t = a·h_{t-1} + b_t`` with ``h_{-1} = h0`` (zeros if None).

    Args:
        b: (B, L, C) inputs.
        a: (C,) per-channel coefficients in [0, 1].
        h0: (B, C) initial state, or None.
        reverse: run from the end (``h_t = a·h_{t+1} + b_t``, ``h_L = h0``).
        method: "auto" (matmul on CUDA, loop elsewhere), "loop" or "matmul".

    Returns:
        h: (B, L, C).
    """
    if b.dim() != 3:
        raise ValueError(f"expected b of shape (B, L, C), got {tuple(b.shape)}")
    a = a.to(b.dtype).reshape(b.shape[-1])
    if b.shape[1] == 0:
        return b.clone()
    return _LinearScan.apply(b.contiguous(), a, h0, reverse, _resolve(method, b))


def _as_decay(decay: float | Tensor, x: Tensor) -> Tensor:
    if not torch.is_tensor(decay):
        if not 0.0 < float(decay) < 1.0:
            raise ValueError(f"decay must be in (0, 1), got {decay}")
        decay = torch.tensor(float(decay), dtype=torch.float64)  # the data's precision, not float32's
    return decay.to(device=x.device, dtype=x.dtype).expand(x.shape[-1])


def ema(
    x: Tensor,
    decay: float | Tensor,
    adjust: bool = False,
    state: EMAState | None = None,
    return_state: bool = False,
    method: str = "auto",
) -> Tensor | tuple[Tensor, EMAState]:
    """Exponential moving average along time, ``y_t = λ·y_{t-1} + (1-λ)·x_t`` (see the module docstring).

    Args:
        x: (B, L, C).
        decay: λ in (0, 1): a float or a tensor broadcastable to (C,); differentiable.
        adjust: start-up rule, as in ``pandas.Series.ewm(alpha=1-λ, adjust=...)``.
        state: carried `EMAState` from an earlier call on the preceding part of the same sequences.
        return_state: also return the state after the last step.
        method: scan kernel, "auto" | "loop" | "matmul".

    Returns:
        y: (B, L, C), and the new `EMAState` if ``return_state``.
    """
    if x.dim() != 3:
        raise ValueError(f"expected x of shape (B, L, C), got {tuple(x.shape)}")
    out_dtype = x.dtype
    if not x.is_floating_point() or x.element_size() < 4:
        x = x.float()  # accumulate half precision in float32
    lam = _as_decay(decay, x)  # (C,)
    B, L, C = x.shape
    if L == 0:
        raise ValueError("ema needs at least one time step")
    first_full = state is None and not adjust  # y_0 = x_0
    if state is None:
        h0 = w0 = None
    else:
        w0 = state.weight.to(x.dtype)
        h0 = state.value.to(x.dtype) * w0  # unnormalised accumulator
    h = _EMAScan.apply(x.contiguous(), lam, h0, first_full, _resolve(method, x))  # (B, L, C)
    if adjust:
        # w_t = 1 - λ^{t+1}(1 - w0): the weight of the terms seen so far, in (0, 1]; expm1 keeps it
        # accurate when λ^{t+1} is close to 1 (early steps of a slow EMA)
        t1 = torch.arange(1, L + 1, device=x.device, dtype=x.dtype)[:, None]  # (L, 1)
        k_log = t1 * torch.log(lam).clamp_min(_LOG_MIN)  # (L, C)
        w = -torch.expm1(k_log)  # (L, C)
        if w0 is not None:
            w = w + torch.exp(k_log) * w0[:, None, :]  # (B, L, C)
        y = h / w
        w_last = w[..., -1, :].expand_as(x[:, 0])
    else:
        y = h
        w_last = torch.ones_like(x[:, 0])
    y = y.to(out_dtype)
    if return_state:
        return y, EMAState(y[:, -1], w_last.to(out_dtype))
    return y


def _logit(p: Tensor) -> Tensor:
    return torch.log(p) - torch.log1p(-p)


class EMA(nn.Module):
    """Exponential moving average with a learnable decay per channel.

    The decay is parametrised by a logit (``λ = sigmoid(θ)``), so it stays in (0, 1) during training.

    Args:
        channels: C.
        decay: initial λ: None (0.9 for every channel), a float, or a sequence/tensor of C values.
        adjust: start-up rule (module docstring); default ``y_0 = x_0``.
        learnable: train the decay (else it is a buffer).
    """

    def __init__(
        self,
        channels: int,
        decay: float | list[float] | Tensor | None = None,
        adjust: bool = False,
        learnable: bool = True,
    ) -> None:
        super().__init__()
        self.channels = channels
        self.adjust = adjust
        init = torch.as_tensor(0.9 if decay is None else decay, dtype=torch.float32).flatten()
        init = init.expand(channels).clone() if init.numel() == 1 else init
        if init.numel() != channels:
            raise ValueError(f"decay has {init.numel()} values for {channels} channels")
        if not bool(((init > 0) & (init < 1)).all()):
            raise ValueError(f"decay must be in (0, 1), got {init.tolist()}")
        logit = _logit(init.double()).float()
        if learnable:
            self.decay_logit = nn.Parameter(logit)
        else:
            self.register_buffer("decay_logit", logit)

    @property
    def decay(self) -> Tensor:
        """λ per channel, (C,)."""
        return torch.sigmoid(self.decay_logit)

    @property
    def half_life(self) -> Tensor:
        """Steps for a weight to halve, (C,)."""
        return math.log(0.5) / F.logsigmoid(self.decay_logit)

    def forward(
        self, x: Tensor, state: EMAState | None = None, return_state: bool = False
    ) -> Tensor | tuple[Tensor, EMAState]:
        """x (B, L, C) -> y (B, L, C) [, state]; `state` continues a sequence from an earlier call."""
        dtype = torch.promote_types(x.dtype, torch.float32)  # the decay is never rounded to half precision
        decay = torch.sigmoid(self.decay_logit.to(dtype))
        return ema(x, decay, adjust=self.adjust, state=state, return_state=return_state)

    def step(self, x_t: Tensor, state: EMAState | None = None) -> tuple[Tensor, EMAState]:
        """One streaming step: x_t (B, C) -> (y_t (B, C), new state); O(C)."""
        out_dtype = x_t.dtype
        x_t = x_t.to(torch.promote_types(x_t.dtype, torch.float32))
        lam = torch.sigmoid(self.decay_logit.to(x_t.dtype))  # (C,)
        if state is None:
            value = weight = torch.zeros_like(x_t)
        else:
            value, weight = state.value.to(x_t.dtype), state.weight.to(x_t.dtype)
        if state is None and not self.adjust:
            y, w = x_t, torch.ones_like(x_t)  # y_0 = x_0
        elif self.adjust:
            w = lam * weight + (1 - lam)
            y = (lam * weight * value + (1 - lam) * x_t) / w
        else:
            y, w = lam * value + (1 - lam) * x_t, torch.ones_like(x_t)
        y, w = y.to(out_dtype), w.to(out_dtype)
        return y, EMAState(y, w)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, adjust={self.adjust}"
