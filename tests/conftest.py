"""Shared test helpers: tiny synthetic series (wide and long) and the shared ETTh1 file.

Factories are exposed as session-scoped fixtures returning plain functions, so hypothesis tests can use them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import settings

ETTH1 = Path(__file__).resolve().parents[2] / "shared" / "data" / "ETTh1.csv"


def make_wide_frame(
    n: int = 200,
    channels: int = 3,
    freq: str = "h",
    start: str = "2024-01-01",
    seed: int = 0,
    time_col: str = "date",
) -> pd.DataFrame:
    """Wide frame: ``time_col`` + channels ``x0..x{C-1}`` (a daily-ish cycle, a trend and noise), float64."""
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    data = {time_col: pd.date_range(start, periods=n, freq=freq)}
    for c in range(channels):
        data[f"x{c}"] = (
            10.0 * c + np.sin(2 * np.pi * t / 24 + c) + 0.01 * (c + 1) * t + 0.1 * rng.standard_normal(n)
        )
    return pd.DataFrame(data)


def make_long_frame(
    lengths: tuple[int, ...] = (120, 150),
    channels: int = 2,
    freq: str = "h",
    seed: int = 0,
    id_col: str = "id",
    time_col: str = "ds",
) -> pd.DataFrame:
    """Long frame: ``id_col`` (s0, s1, ...), ``time_col``, channels ``y0..``; series start on different dates
    and have different levels."""
    parts = []
    for k, n in enumerate(lengths):
        w = make_wide_frame(n, channels, freq, start=f"2024-01-{1 + k:02d}", seed=seed + k, time_col=time_col)
        w = w.rename(columns={f"x{c}": f"y{c}" for c in range(channels)})
        w[[f"y{c}" for c in range(channels)]] += 100.0 * k
        w.insert(0, id_col, f"s{k}")
        parts.append(w)
    return pd.concat(parts, ignore_index=True)


def write_csv(path: Path, frame: pd.DataFrame) -> Path:
    frame.to_csv(path, index=False)
    return path


@pytest.fixture(scope="session")
def wide_frame():
    """Factory: ``wide_frame(n=200, channels=3, freq="h", ...)`` -> DataFrame."""
    return make_wide_frame


@pytest.fixture(scope="session")
def long_frame():
    """Factory: ``long_frame(lengths=(120, 150), channels=2, ...)`` -> DataFrame."""
    return make_long_frame


@pytest.fixture(scope="session")
def etth1_path() -> Path:
    """The shared ETTh1 benchmark file (skips when the checkout has no ../shared/data)."""
    if not ETTH1.is_file():
        pytest.skip(f"{ETTH1} not available")
    return ETTH1


# Property tests draw from a fixed seed so a CI run is reproducible; `--hypothesis-seed` still explores.
settings.register_profile("tsattn", derandomize=True, deadline=None)
settings.load_profile("tsattn")


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """Tests use tiny tensors: a second intra-op thread only adds synchronisation (and stalls on a busy machine)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
