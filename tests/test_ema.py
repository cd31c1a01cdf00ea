"""EMA smoothing: exactness against a loop and pandas, long sequences, streaming, no leaks, gradients."""

from __future__ import annotations

import importlib

import numpy as np
import pandas as pd
import pytest
import torch

from tsattn.layers import EMA, EMAState, ema, linear_scan

METHODS = ["loop", "matmul"]
DECAYS = [0.5, 0.8, 0.9, 0.99, 0.999, 0.9999]



def _loop_ema(x: torch.Tensor, decay: torch.Tensor) -> torch.Tensor:
    """Reference: y_0 = x_0, y_t = λ y_{t-1} + (1-λ) x_t, one step at a time in float64."""
    x, lam = x.double(), decay.double()
    y = x[:, 0]
    out = [y]
    for t in range(1, x.shape[1]):
        y = lam * y + (1 - lam) * x[:, t]
        out.append(y)
    return torch.stack(out, 1)


def _pandas_ema(x: torch.Tensor, decays: list[float], adjust: bool) -> np.ndarray:
    """pandas ewm per (sample, channel), (B, L, C) float64."""
    x = x.double().numpy()
    out = np.empty_like(x)
    for b in range(x.shape[0]):
        frame = pd.DataFrame(x[b])
        for c, lam in enumerate(decays):
            out[b, :, c] = frame[c].ewm(alpha=1 - lam, adjust=adjust).mean().to_numpy()
    return out


@pytest.mark.parametrize("method", METHODS)
def test_matches_python_loop_float32(method: str) -> None:
    torch.manual_seed(0)
    x = torch.randn(3, 1500, len(DECAYS))
    lam = torch.tensor(DECAYS)
    y = ema(x, lam, method=method)
    assert y.dtype == torch.float32
    torch.testing.assert_close(y.double(), _loop_ema(x, lam), rtol=0, atol=1e-5)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("adjust", [False, True])
def test_matches_pandas_ewm(adjust: bool, method: str) -> None:
    torch.manual_seed(1)
    x = torch.randn(2, 700, len(DECAYS)).cumsum(1) / 10  # random walk: a trend to follow
    lam = torch.tensor(DECAYS)
    # compare at the decays float32 represents (0.999 in float32 is 0.99900001...)
    ref = _pandas_ema(x, lam.double().tolist(), adjust)
    y = ema(x, lam, adjust=adjust, method=method)
    np.testing.assert_allclose(y.double().numpy(), ref, rtol=0, atol=1e-5)
    # the module gives the same, with its decay parametrised by a logit
    m = EMA(len(DECAYS), decay=DECAYS, adjust=adjust)
    ref = _pandas_ema(x, m.decay.detach().double().tolist(), adjust)
    np.testing.assert_allclose(m(x).detach().double().numpy(), ref, rtol=0, atol=1e-5)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("adjust", [False, True])
def test_float_decay_keeps_the_datas_precision(adjust: bool, method: str) -> None:
    # a Python float is taken at the data's precision: 0.9999 is not rounded to float32 on float64 data
    torch.manual_seed(4)
    x = torch.randn(1, 3000, 1, dtype=torch.float64)
    for lam in (0.999, 0.9999):
        ref = _pandas_ema(x, [lam], adjust)
        np.testing.assert_allclose(ema(x, lam, adjust=adjust, method=method).numpy(), ref, rtol=0, atol=1e-9)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("adjust", [False, True])
def test_long_sequence_finite_and_exact(adjust: bool, method: str) -> None:
    torch.manual_seed(2)
    decays = [0.5, 0.9, 0.99, 0.999, 0.9999]
    L = 100_000
    x = (torch.randn(1, L, len(decays)) + 3.0).requires_grad_()
    lam = torch.tensor(decays, requires_grad=True)
    y = ema(x, lam, adjust=adjust, method=method)
    assert torch.isfinite(y).all()
    ref = _pandas_ema(x.detach(), lam.detach().double().tolist(), adjust)
    np.testing.assert_allclose(y.detach().double().numpy(), ref, rtol=0, atol=1e-5)
    y.sum().backward()
    assert torch.isfinite(x.grad).all() and torch.isfinite(lam.grad).all()


@pytest.mark.parametrize("method", METHODS)
def test_linear_scan_matches_loop_both_directions(method: str) -> None:
    torch.manual_seed(3)
    for L in (1, 2, 5, 16, 17, 99):
        b = torch.randn(2, L, 3, dtype=torch.float64)
        a = torch.tensor([0.0, 0.7, 0.999], dtype=torch.float64)
        h0 = torch.randn(2, 3, dtype=torch.float64)
        fwd, h = [], h0
        for t in range(L):
            h = a * h + b[:, t]
            fwd.append(h)
        bwd, h = [None] * L, h0
        for t in reversed(range(L)):
            h = a * h + b[:, t]
            bwd[t] = h
        torch.testing.assert_close(linear_scan(b, a, h0, method=method), torch.stack(fwd, 1))
        torch.testing.assert_close(linear_scan(b, a, h0, reverse=True, method=method), torch.stack(bwd, 1))


@pytest.mark.parametrize("adjust", [False, True])
def test_step_equals_forward(adjust: bool) -> None:
    torch.manual_seed(4)
    m = EMA(4, decay=[0.3, 0.8, 0.95, 0.999], adjust=adjust)
    x = torch.randn(2, 40, 4)
    y = m(x)
    state, ys = None, []
    for t in range(x.shape[1]):
        y_t, state = m.step(x[:, t], state)
        ys.append(y_t)
    torch.testing.assert_close(torch.stack(ys, 1), y, rtol=1e-5, atol=1e-6)
    assert isinstance(state, EMAState) and state.value.shape == (2, 4)


@pytest.mark.parametrize("adjust", [False, True])
def test_chunked_forward_with_state_equals_forward(adjust: bool) -> None:
    torch.manual_seed(5)
    m = EMA(3, decay=0.9, adjust=adjust)
    x = torch.randn(2, 50, 3)
    full = m(x)
    y1, state = m(x[:, :17], return_state=True)
    y2, state = m(x[:, 17:30], state=state, return_state=True)
    y3 = m(x[:, 30:], state=state)
    torch.testing.assert_close(torch.cat([y1, y2, y3], 1), full, rtol=1e-5, atol=1e-6)


def test_no_state_leaks_between_calls() -> None:
    torch.manual_seed(6)
    m = EMA(3)
    x1, x2 = torch.randn(4, 30, 3), 100 + torch.randn(2, 30, 3)
    y1 = m(x1)
    m(x2)  # a different batch, other size, other level
    torch.testing.assert_close(m(x1), y1, rtol=0, atol=0)
    # each sample is smoothed on its own: no sample's history reaches another
    torch.testing.assert_close(m(x1[2:3]), y1[2:3], rtol=0, atol=0)
    assert not list(m.buffers()) and [n for n, _ in m.named_parameters()] == ["decay_logit"]


def test_decay_parametrisation() -> None:
    assert torch.allclose(EMA(3).decay, torch.full((3,), 0.9))
    assert torch.allclose(EMA(2, decay=[0.5, 0.99]).decay, torch.tensor([0.5, 0.99]))
    m = EMA(2, decay=0.75)
    with torch.no_grad():
        m.decay_logit += 1e3 * torch.tensor([1.0, -1.0])  # any optimiser step keeps λ in [0, 1]
    assert ((m.decay >= 0) & (m.decay <= 1)).all()
    assert not EMA(2, learnable=False).decay_logit.requires_grad
    torch.testing.assert_close(EMA(1, decay=0.5).half_life, torch.tensor([1.0]))
    for bad in (0.0, 1.0, 1.5, [0.5, 0.5, 0.5]):
        with pytest.raises(ValueError):
            EMA(2, decay=bad)


@pytest.mark.parametrize("method", METHODS)
def test_gradcheck_float64(method: str) -> None:
    torch.manual_seed(7)
    x = torch.randn(2, 11, 3, dtype=torch.float64, requires_grad=True)
    lam = torch.tensor([0.3, 0.8, 0.97], dtype=torch.float64, requires_grad=True)
    value = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    weight = torch.tensor([[0.2, 0.5, 1.0]] * 2, dtype=torch.float64, requires_grad=True)
    for adjust in (False, True):
        assert torch.autograd.gradcheck(
            lambda x, lam, adjust=adjust: ema(x, lam, adjust=adjust, method=method), (x, lam)
        )
        assert torch.autograd.gradcheck(
            lambda x, lam, v, w, adjust=adjust: ema(
                x, lam, adjust=adjust, state=EMAState(v, w), method=method
            ),
            (x, lam, value, weight),
        )
    assert torch.autograd.gradgradcheck(lambda x, lam: ema(x, lam, method=method), (x, lam))
    b = torch.randn(2, 9, 3, dtype=torch.float64, requires_grad=True)
    for reverse in (False, True):
        assert torch.autograd.gradcheck(
            lambda b, a, h0, reverse=reverse: linear_scan(b, a, h0, reverse=reverse, method=method),
            (b, lam, value),
        )


@pytest.mark.parametrize("method", METHODS)
def test_one_step_sequences(method: str) -> None:
    """A sequence of one step is its own EMA, and its decay gradient is zero (with and without a state)."""
    x = torch.randn(4, 1, 3, dtype=torch.float64, requires_grad=True)
    lam = torch.tensor([0.3, 0.8, 0.97], dtype=torch.float64, requires_grad=True)
    y = ema(x, lam, method=method)
    torch.testing.assert_close(y, x)
    grad_x, grad_lam = torch.autograd.grad(y.sum(), (x, lam))
    torch.testing.assert_close(grad_x, torch.ones_like(x))
    torch.testing.assert_close(grad_lam, torch.zeros_like(lam))
    value = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    weight = torch.ones(4, 3, dtype=torch.float64)
    assert torch.autograd.gradcheck(
        lambda x, lam, v: ema(x, lam, state=EMAState(v, weight), method=method), (x, lam, value)
    )


@pytest.mark.parametrize("block", [1, 5, 40, 100])
def test_decay_gradient_in_blocks(block: int, monkeypatch) -> None:
    """The decay gradient summed in blocks (time steps of one row, whole rows, all rows) is exact, also twice
    differentiated; a broadcast incoming gradient (that of a sum) gives what the materialised one gives."""
    monkeypatch.setattr(importlib.import_module("tsattn.layers.ema"), "_BLOCK", block)
    torch.manual_seed(3)
    x = torch.randn(2, 11, 3, dtype=torch.float64, requires_grad=True)
    lam = torch.tensor([0.3, 0.8, 0.97], dtype=torch.float64, requires_grad=True)
    b = torch.randn(2, 9, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, lam: ema(x, lam, method="loop"), (x, lam))
    assert torch.autograd.gradgradcheck(lambda x, lam: ema(x, lam, method="loop"), (x, lam))
    assert torch.autograd.gradgradcheck(lambda b, a: linear_scan(b, a, method="loop"), (b, lam))
    summed = torch.autograd.grad(ema(x, lam).sum(), (x, lam))  # incoming gradient: ones broadcast, stride 0
    y = ema(x, lam)
    dense = torch.autograd.grad(y, (x, lam), torch.ones(y.shape, dtype=y.dtype))
    for got, want in zip(summed, dense, strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-12)


def test_module_gradient_reaches_decay() -> None:
    m = EMA(2, decay=0.9).double()
    x = torch.randn(1, 12, 2, dtype=torch.float64)
    assert torch.autograd.gradcheck(
        lambda logit: ema(x, torch.sigmoid(logit)), (m.decay_logit.detach().clone().requires_grad_(),)
    )
    m(x).sum().backward()
    assert m.decay_logit.grad is not None and (m.decay_logit.grad != 0).all()


def test_half_precision_accumulates_in_float32() -> None:
    x = torch.randn(2, 300, 3).to(torch.bfloat16)
    y = EMA(3, decay=0.999)(x)
    assert y.dtype == torch.bfloat16 and torch.isfinite(y.float()).all()
    ref = ema(x.float(), 0.999)
    torch.testing.assert_close(y.float(), ref, rtol=1e-2, atol=1e-2)
