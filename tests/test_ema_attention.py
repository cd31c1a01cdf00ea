"""EMA history attention (DESIGN §3): a slow reference, masking, streaming, gradients, the EMA special case."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from tsattn.layers import AttentionState, EMAAttentionBlock, EMAHistoryAttention, ema_history_attention
from tsattn.layers.ema_attention import _block_length, _segment_bounds

SIMS = ["cosine", "dot", "none"]



def _reference(m: EMAHistoryAttention, x: torch.Tensor, mask: torch.Tensor | None = None):
    """DESIGN §3 literally, one (sample, head, step, offset) at a time. Returns y (B, L, D), a (B, H, L, W)."""
    B, L, _ = x.shape
    H, W, dh = m.n_heads, m.window, m.d_head
    v = m.value(x).view(B, L, H, dh)
    if m.similarity != "none":
        q, k = m.qk(x).view(B, L, 2, H, dh).unbind(2)
        tau = m.log_temperature.exp().clamp(m.min_temperature, m.max_temperature)
    log_lam = torch.log(torch.sigmoid(m.decay_logit))
    c = torch.zeros(B, L, H, dh, dtype=x.dtype)
    a = torch.zeros(B, H, L, W, dtype=x.dtype)
    for b in range(B):
        for h in range(H):
            for t in range(L):
                offsets, scores = [], []
                for d in range(W):
                    j = t - d
                    if j < 0 or (mask is not None and not mask[b, j]):
                        continue  # no key, not a zero key
                    if m.similarity == "cosine":
                        sim = torch.dot(q[b, t, h], k[b, j, h]) / (q[b, t, h].norm() * k[b, j, h].norm())
                    elif m.similarity == "dot":
                        sim = torch.dot(q[b, t, h], k[b, j, h]) / math.sqrt(dh)
                    else:
                        sim = torch.zeros((), dtype=x.dtype)
                    scale = tau[h] if m.similarity != "none" else 1.0
                    offsets.append(d)
                    scores.append(scale * sim + d * log_lam[h])
                if not offsets:
                    continue  # c_t = 0
                weights = torch.softmax(torch.stack(scores), 0)
                for wgt, d in zip(weights, offsets, strict=True):
                    c[b, t, h] += wgt * v[b, t - d, h]
                    a[b, h, t, d] = wgt
    c = c.flatten(2)
    g = torch.sigmoid(m.gate(torch.cat([x, c], -1)))
    return x + g * (m.out(c) - x), a


def _model(sim: str, d_model: int = 8, n_heads: int = 2, window: int = 5) -> EMAHistoryAttention:
    torch.manual_seed(0)
    return EMAHistoryAttention(d_model, n_heads, window, similarity=sim).double()


@pytest.mark.parametrize("sim", SIMS)
@pytest.mark.parametrize("use_mask", [False, True])
@pytest.mark.parametrize("L", [3, 13])
def test_matches_reference(sim: str, use_mask: bool, L: int) -> None:
    m = _model(sim)
    x = torch.randn(2, L, 8, dtype=torch.float64)
    mask = None
    if use_mask:
        mask = torch.rand(2, L) > 0.3
        mask[1, : min(L, 6)] = False  # a fully masked stretch, incl. t = 0
    y, w = m(x, mask=mask, return_weights=True)
    y_ref, w_ref = _reference(m, x, mask)
    torch.testing.assert_close(w, w_ref, rtol=0, atol=1e-12)
    torch.testing.assert_close(y, y_ref, rtol=0, atol=1e-12)


@pytest.mark.parametrize("block", [1, 2, 3, 5, 7, 64])
def test_block_length_does_not_change_result(block: int) -> None:
    torch.manual_seed(1)
    B, H, L, W = 2, 3, 23, 7
    q, k = torch.randn(B, H, L, 4, dtype=torch.float64), torch.randn(B, H, L, 4, dtype=torch.float64)
    v = torch.randn(B, H, L, 5, dtype=torch.float64)
    log_decay = -torch.rand(H, dtype=torch.float64)
    mask = torch.rand(B, L) > 0.3
    for mk in (None, mask):
        c0, w0 = ema_history_attention(q, k, v, log_decay, W, mk, return_weights=True, block=W)
        c, w = ema_history_attention(q, k, v, log_decay, W, mk, return_weights=True, block=block)
        torch.testing.assert_close(c, c0, rtol=0, atol=1e-12)
        torch.testing.assert_close(w, w0, rtol=0, atol=1e-12)


@pytest.mark.parametrize("sim", SIMS)
def test_weights_shape_rows_sum_to_one_and_no_future_or_pre_start_keys(sim: str) -> None:
    m = _model(sim).float()
    B, L, W = 3, 17, 5
    y, w = m(torch.randn(B, L, 8), return_weights=True)
    assert y.shape == (B, L, 8) and w.shape == (B, 2, L, W)
    torch.testing.assert_close(w.sum(-1), torch.ones(B, 2, L))
    t = torch.arange(L)[:, None]
    d = torch.arange(W)[None, :]
    assert (w[..., d > t] == 0).all()  # offsets reaching before t = 0 get no weight
    assert (w >= 0).all()


def test_no_similarity_gives_normalised_truncated_ema() -> None:
    torch.manual_seed(2)
    W, L = 6, 15
    m = EMAHistoryAttention(9, 3, W, similarity="none").double()
    _, w = m(torch.randn(2, L, 9, dtype=torch.float64), return_weights=True)
    lam = m.decays.detach()  # (H,)
    d = torch.arange(W, dtype=torch.float64)
    for t in range(L):
        n = min(t + 1, W)  # offsets 0..n-1 exist
        ema = lam[:, None] ** d[:n]  # (H, n)
        expected = torch.zeros(3, W, dtype=torch.float64)
        expected[:, :n] = ema / ema.sum(-1, keepdim=True)
        torch.testing.assert_close(w[:, :, t], expected.expand(2, 3, W), rtol=0, atol=1e-14)


def test_zero_content_gives_the_same_ema_weights() -> None:
    m_none, m_cos = _model("none"), _model("cosine")
    with torch.no_grad():
        m_cos.decay_logit.copy_(m_none.decay_logit)
        m_cos.qk.weight.zero_()  # q = k = bias; zero bias too: q = k = 0, cosine 0
        m_cos.qk.bias.zero_()
    x = torch.randn(2, 11, 8, dtype=torch.float64)
    _, w_none = m_none(x, return_weights=True)
    _, w_cos = m_cos(x, return_weights=True)
    torch.testing.assert_close(w_cos, w_none, rtol=0, atol=1e-14)


@pytest.mark.parametrize("sim", SIMS)
@pytest.mark.parametrize("use_mask", [False, True])
def test_step_equals_forward_including_first_window(sim: str, use_mask: bool) -> None:
    m = _model(sim)
    B, L = 2, 17  # > 3 windows: the ring buffer wraps around
    x = torch.randn(B, L, 8, dtype=torch.float64)
    mask = (torch.rand(B, L) > 0.3) if use_mask else None
    if use_mask:
        mask[0, :4] = False
    y = m(x, mask=mask)
    state, ys = None, []
    for t in range(L):
        y_t, state = m.step(x[:, t], state, None if mask is None else mask[:, t])
        ys.append(y_t)
    torch.testing.assert_close(torch.stack(ys, 1), y, rtol=0, atol=1e-12)


def test_step_cost_is_constant() -> None:
    m = _model("cosine")
    x = torch.randn(2, 8, dtype=torch.float64)
    state = None
    shapes = []
    for t in range(4 * m.window + 1):
        _, state = m.step(x, state)
        if t in (2, 4 * m.window):
            shapes.append([tuple(s.shape) for s in state[:3]])
    assert isinstance(state, AttentionState)
    assert shapes[0] == shapes[1] == [(2, 2, 5, 4), (2, 2, 5, 4), (2, 5)]
    assert 0 <= state.slot < m.window


def test_step_does_not_modify_the_callers_state() -> None:
    m = _model("dot")
    _, s1 = m.step(torch.randn(1, 8, dtype=torch.float64))
    keys = s1.keys.clone()
    m.step(torch.randn(1, 8, dtype=torch.float64), s1)
    torch.testing.assert_close(s1.keys, keys, rtol=0, atol=0)


@pytest.mark.parametrize("sim", SIMS)
def test_no_nan_at_start_or_with_masked_steps(sim: str) -> None:
    m = _model(sim).float()
    x = torch.randn(2, 9, 8, requires_grad=True)
    mask = torch.ones(2, 9, dtype=torch.bool)
    mask[0] = False  # a sequence with no valid step at all
    mask[1, ::2] = False
    y, w = m(x, mask=mask, return_weights=True)
    assert torch.isfinite(y).all() and torch.isfinite(w).all()
    assert (w[0] == 0).all()  # nothing to attend: c = 0
    assert (w[1][..., torch.arange(9) % 2 == 0, 0] == 0).all()  # masked current step never attended
    y.sum().backward()
    assert torch.isfinite(x.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in m.parameters())
    y1 = m(x[:, :1])  # first step alone
    assert torch.isfinite(y1).all()


def test_masked_steps_are_ignored() -> None:
    m = _model("cosine")
    x = torch.randn(1, 12, 8, dtype=torch.float64)
    mask = torch.ones(1, 12, dtype=torch.bool)
    mask[0, 5] = False
    y = m(x, mask=mask)
    x2 = x.clone()
    x2[0, 5] = 1e3  # whatever an invalid step holds
    y2 = m(x2, mask=mask)
    torch.testing.assert_close(y2[:, 6:], y[:, 6:], rtol=0, atol=1e-12)


@pytest.mark.parametrize("sim", SIMS)
def test_gradcheck_float64(sim: str) -> None:
    m = _model(sim, d_model=4, n_heads=2, window=3)
    x = torch.randn(1, 5, 4, dtype=torch.float64, requires_grad=True)
    mask = torch.tensor([[True, False, True, True, False]])
    assert torch.autograd.gradcheck(lambda x: m(x), (x,))
    assert torch.autograd.gradcheck(lambda x: m(x, mask=mask), (x,))
    # through the functional core, w.r.t. queries, keys, values and the decays
    q, k = torch.randn(2, 2, 6, 3, dtype=torch.float64), torch.randn(2, 2, 6, 3, dtype=torch.float64)
    v = torch.randn(2, 2, 6, 2, dtype=torch.float64)
    log_decay = torch.tensor([-0.1, -1.0], dtype=torch.float64)
    inputs = tuple(t.requires_grad_() for t in (q, k, v, log_decay))
    assert torch.autograd.gradcheck(lambda *a: ema_history_attention(*a, window=4, block=2), inputs)


def test_decays_temperature_and_half_lives() -> None:
    W, H = 64, 4
    m = EMAHistoryAttention(16, H, W)
    assert m.decays.shape == (H,) and ((m.decays > 0) & (m.decays < 1)).all()
    torch.testing.assert_close(m.half_lives.detach(), torch.tensor([1.0, 4.0, 16.0, 64.0]), rtol=1e-4, atol=0)
    assert m.temperature.shape == (H,)
    with torch.no_grad():
        m.log_temperature.fill_(50.0)
    assert (m.temperature <= m.max_temperature).all()
    assert EMAHistoryAttention(8, 2, 4, similarity="none").temperature is None
    with pytest.raises(ValueError):
        EMAHistoryAttention(10, 3, 4)
    with pytest.raises(ValueError):
        EMAHistoryAttention(8, 2, 4, similarity="euclid")


def test_long_sequence_memory_is_linear() -> None:
    # O(L·W) memory: a length a dense L×L attention could not hold in float32 (20k² · 4 B = 1.6 GB per head)
    m = EMAHistoryAttention(8, 2, 16)
    with torch.no_grad():
        y = m(torch.randn(1, 20_000, 8))
    assert torch.isfinite(y).all()


def test_block_passes_mask_and_weights_and_streams() -> None:
    torch.manual_seed(3)
    blk = EMAAttentionBlock(8, 2, 4, ff_mult=2, dropout=0.0).double()
    x = torch.randn(2, 9, 8, dtype=torch.float64)
    mask = torch.rand(2, 9) > 0.3
    y, w = blk(x, mask=mask, return_weights=True)
    assert y.shape == x.shape and w.shape == (2, 2, 9, 4)
    torch.testing.assert_close(blk(x, mask=mask), y)
    state, ys = None, []
    for t in range(9):
        y_t, state = blk.step(x[:, t], state, mask[:, t])
        ys.append(y_t)
    torch.testing.assert_close(torch.stack(ys, 1), y, rtol=0, atol=1e-12)
    with torch.no_grad():  # a closed gate makes the attention half of the block the identity
        blk.attn.gate.bias.fill_(-1e4)
        blk.ff[-1].weight.zero_()
        blk.ff[-1].bias.zero_()
    torch.testing.assert_close(blk(x), x)


@pytest.mark.parametrize("sim", SIMS)
@pytest.mark.parametrize("steps", [1, 7, 11, 33])
def test_chunks_equal_the_whole_batch(sim: str, steps: int) -> None:
    # chunk_mib for `steps` steps per chunk: segments of 1 + 4 or 3 + 4 steps, one or three whole sequences
    m = _model(sim)
    x = torch.randn(5, 11, 8, dtype=torch.float64, requires_grad=True)
    mask = torch.rand(5, 11) > 0.3
    assert m._chunking(x) == (5, 11)  # a small input is never split at the default budget
    per_step = m.n_heads * (_block_length(m.window) + m.window - 1) * 8
    expected = {1: (1, 1), 7: (1, 3), 11: (1, 11), 33: (3, 11)}[steps]
    for kwargs in ({}, {"mask": mask}):
        m.chunk_mib = None
        y, w = m(x, return_weights=True, **kwargs)
        (gx,) = torch.autograd.grad((y * torch.arange(y.numel()).view_as(y)).sum(), x)
        m.chunk_mib = steps * per_step / 2**20
        assert m._chunking(x) == expected
        y1, w1 = m(x, return_weights=True, **kwargs)
        (gx1,) = torch.autograd.grad((y1 * torch.arange(y1.numel()).view_as(y1)).sum(), x)
        torch.testing.assert_close(y1, y, rtol=0, atol=1e-12)
        torch.testing.assert_close(w1, w, rtol=0, atol=1e-12)
        torch.testing.assert_close(gx1, gx, rtol=0, atol=1e-10)
    # the benchmark sizes: two sequences per chunk at 4k; at 16k two segments of 8161 + 63 steps per sequence
    big = EMAHistoryAttention(64, 4, 64)
    assert big._chunking(torch.empty(8, 4096, 64)) == (2, 4096)
    assert big._chunking(torch.empty(8, 16384, 64)) == (1, 8161)
    with pytest.raises(ValueError, match="chunk_mib"):
        EMAHistoryAttention(8, 2, 5, chunk_mib=0)


@given(st.integers(1, 300), st.integers(1, 40), st.integers(0, 40))
def test_segment_bounds_cover_each_step_once_with_its_history(extra: int, steps: int, reach: int) -> None:
    length = reach + extra  # segments are used for sequences longer than their history
    bounds = _segment_bounds(length, steps, reach)
    kept = [t for a, b in bounds for t in range(a, b)]
    assert kept == list(range(length))  # each step's output is kept once, in order
    assert bounds[0] == (0, min(length, reach + steps))  # the first segment has no history before it
    for a, b in bounds[1:]:
        assert a >= reach and 0 < b - a <= steps  # the reach steps before a exist; at most `steps` new steps
