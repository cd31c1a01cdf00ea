"""Contract tests shared by every layer in tsattn.layers: shapes, dtype, finiteness, causality, batch size 1,
per-sample independence, backward."""

from __future__ import annotations

import pytest
import torch

from tsattn.layers import EMA, EMAAttentionBlock, EMAHistoryAttention, GAM1d, HRNet1d

D = 8



LAYERS = {
    "ema": lambda: EMA(D),
    "ema_adjust": lambda: EMA(D, decay=[0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 0.999], adjust=True),
    "attention_cosine": lambda: EMAHistoryAttention(D, 2, 5, similarity="cosine"),
    "attention_dot": lambda: EMAHistoryAttention(D, 2, 5, similarity="dot"),
    "attention_none": lambda: EMAHistoryAttention(D, 2, 5, similarity="none"),
    "gam": lambda: GAM1d(D, reduction=4, kernel_size=7),
    "hrnet": lambda: HRNet1d(D, n_heads=2, window=4, branches=3, blocks=1, stages=2),
    "hrnet_2branches": lambda: HRNet1d(D, n_heads=2, window=3, branches=2, blocks=2, stages=1),
    "block": lambda: EMAAttentionBlock(D, 2, 5, ff_mult=2, dropout=0.0),
}


def _make(name: str, dtype: torch.dtype) -> torch.nn.Module:
    torch.manual_seed(0)
    return LAYERS[name]().to(dtype).eval()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", sorted(LAYERS))
def test_layer_contract(name: str, dtype: torch.dtype) -> None:
    layer = _make(name, dtype)
    B, L = 3, 23  # 23: not divisible by any stride or block
    x = torch.randn(B, L, D, dtype=dtype, requires_grad=True)
    y = layer(x)
    assert y.shape == (B, L, D)
    assert y.dtype == dtype
    assert torch.isfinite(y).all()

    # causal: perturbing the input after t never changes the output up to t
    for t in (0, 6, 13, L - 2):
        x2 = x.detach().clone()
        x2[:, t + 1 :] += 10 * torch.randn_like(x2[:, t + 1 :])
        y2 = layer(x2)
        torch.testing.assert_close(y2[:, : t + 1], y.detach()[:, : t + 1], rtol=0, atol=1e-5)
        assert not torch.allclose(y2[:, t + 1 :], y.detach()[:, t + 1 :])

    # batch size 1, and each sample independent of the others in its batch
    for b in range(B):
        yb = layer(x.detach()[b : b + 1])
        torch.testing.assert_close(yb, y.detach()[b : b + 1], rtol=1e-5, atol=1e-5)

    # backward reaches the input and every parameter, finitely
    y.square().mean().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    for pname, p in layer.named_parameters():
        assert p.grad is not None, pname
        assert torch.isfinite(p.grad).all(), pname


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_layer_short_sequences(name: str) -> None:
    layer = _make(name, torch.float32)
    for L in (1, 2, 3):
        y = layer(torch.randn(2, L, D))
        assert y.shape == (2, L, D) and torch.isfinite(y).all()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", sorted(LAYERS))
def test_layer_cuda_matches_cpu(name: str) -> None:
    layer = _make(name, torch.float32)
    x = torch.randn(2, 37, D)
    y_cpu = layer(x)
    y_gpu = layer.cuda()(x.cuda())
    assert y_gpu.device.type == "cuda"
    torch.testing.assert_close(y_gpu.cpu(), y_cpu, rtol=1e-4, atol=1e-4)
    y_gpu.sum().backward()


def test_gam_gates_shrink_and_use_no_batchnorm() -> None:
    torch.manual_seed(1)
    gam = GAM1d(16, reduction=4, kernel_size=7)
    x = torch.randn(2, 30, 16)
    y = gam(x)
    assert (y.abs() <= x.abs() + 1e-7).all()  # two sigmoid gates in (0, 1)
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in gam.modules())
    gam.train()  # training mode changes nothing: no batch statistics
    torch.testing.assert_close(gam(x), y)


@pytest.mark.parametrize("channels", [1, 3, 7, 8])
def test_gam_temporal_gate_reads_its_input_at_any_width(channels: int) -> None:
    # hidden width C // 4 is 0 or 1 below 8 channels: a LayerNorm there would turn the gate into a constant
    torch.manual_seed(3)
    gam = GAM1d(channels, reduction=4, kernel_size=7)
    x1, x2 = torch.randn(2, 2, 30, channels)
    gates = [torch.sigmoid(gam.temporal(x)) for x in (x1, x2)]
    assert (gates[0] - gates[1]).abs().max() > 1e-3
    gates[0].sum().backward()
    assert gam.temporal[0].weight.grad.abs().sum() > 0


@pytest.mark.parametrize("branches", [1, 2, 3, 4])
def test_hrnet_any_length_and_branch_count(branches: int) -> None:
    torch.manual_seed(2)
    net = HRNet1d(D, n_heads=2, window=3, branches=branches, blocks=1, stages=2).eval()
    assert net.stride == 2 ** (branches - 1)
    for L in (1, 5, 8, 13):
        x = torch.randn(2, L, D)
        y = net(x)
        assert y.shape == (2, L, D) and torch.isfinite(y).all()
        # causal at every length, including the padded tail
        x2 = x.clone()
        x2[:, -1] += 5.0
        torch.testing.assert_close(net(x2)[:, :-1], y[:, :-1], rtol=0, atol=1e-6)


def test_hrnet_coarse_branches_reach_the_output() -> None:
    torch.manual_seed(3)
    net = HRNet1d(D, n_heads=2, window=2, branches=3, blocks=1, stages=1).eval()
    x = torch.randn(1, 16, D, requires_grad=True)
    y = net(x)
    # with window 2 at full resolution, step 15 sees steps 14..15 directly; anything earlier arrives
    # through the coarse branches (window 2 at /4 covers 8 steps)
    # (a weighted sum: the plain sum of a LayerNorm output is constant, its gradient only rounding noise)
    (y[0, 15] * torch.randn(D)).sum().backward()
    assert x.grad[0, 8:12].abs().sum(-1).min() > 1e-3
    assert x.grad[0, :8].abs().max() == 0  # out of reach: before the coarsest window
