"""`block_bootstrap_se` against closed-form standard errors, for independent and autocorrelated sequences."""

from __future__ import annotations

import math

import pytest
import torch

from tsattn.metrics import block_bootstrap_se


def _ar1(n: int, phi: float, seed: int) -> torch.Tensor:
    """x_t = phi x_{t-1} + e_t, unit-variance e, started from its stationary distribution (a Python loop)."""
    e = torch.randn(n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    x = torch.empty(n, dtype=torch.float64)
    x[0] = e[0] / math.sqrt(1 - phi**2)
    for t in range(1, n):
        x[t] = phi * x[t - 1] + e[t]
    return x


def test_independent_values_with_blocks_of_one_give_the_textbook_standard_error():
    x = torch.randn(4000, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    expected = float(x.std()) / math.sqrt(len(x))
    assert block_bootstrap_se(x, block=1, n_boot=2000) == pytest.approx(expected, rel=0.08)


def test_blocks_capture_autocorrelation_that_single_values_miss():
    # AR(1) with phi = 0.8: the long-run variance of the mean is var(x) (1 + phi) / (1 - phi), 9x the naive one.
    phi, n = 0.8, 8000
    truth = math.sqrt(1 / (1 - phi**2) * (1 + phi) / (1 - phi) / n)
    estimates = [block_bootstrap_se(_ar1(n, phi, seed), block=100, n_boot=500) for seed in range(8)]
    naive = block_bootstrap_se(_ar1(n, phi, 0), block=1, n_boot=500)
    assert sum(estimates) / len(estimates) == pytest.approx(truth, rel=0.15)
    assert naive < 0.5 * truth


def test_same_seed_same_value_and_a_constant_has_none():
    x = _ar1(500, 0.5, 3)
    assert block_bootstrap_se(x, 20, seed=7) == block_bootstrap_se(x, 20, seed=7)
    assert block_bootstrap_se(x, 20, seed=7) != block_bootstrap_se(x, 20, seed=8)
    assert block_bootstrap_se(torch.full((50,), 2.5), 10) == 0.0


def test_a_block_of_the_whole_sequence_resamples_its_rotations():
    # every resample is a rotation of the sequence: the same mean, so no spread
    x = torch.arange(12.0)
    assert block_bootstrap_se(x, 12) == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"block": 0}, "block must be"),
        ({"block": 11}, r"block must be .*\[1, 10\]"),
        ({"block": 2.5}, "block must be"),
        ({"block": 2, "n_boot": 1}, "n_boot must be"),
    ],
)
def test_bad_arguments_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        block_bootstrap_se(torch.arange(10.0), **kwargs)


def test_non_finite_values_are_refused():
    with pytest.raises(ValueError, match="NaN or inf"):
        block_bootstrap_se(torch.tensor([1.0, float("nan"), 2.0]), 1)
