"""tsattn.data.windows: chronological splits and lazy, leak-free window indices."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.data import DataLoader

from tsattn.data import (
    Borders,
    SeriesDataModule,
    WindowDataset,
    WindowIndex,
    batch_loader,
    min_rows,
    ratio_borders,
    split_borders,
    time_borders,
    window_starts,
)

ETT_TEST_WINDOWS = {96: 2785, 192: 2689, 336: 2545, 720: 2161}


def test_ratio_borders_match_ltsf():
    # LTSF: num_train = int(n * 0.7), num_test = int(n * 0.2), num_vali = n - num_train - num_test
    for n in (100, 1001, 17420, 69680):
        b = ratio_borders(n)
        assert b.train_end == int(n * 0.7)
        assert b.test_end - b.val_end == int(n * 0.2)
        assert b == Borders(int(n * 0.7), n - int(n * 0.2), n)


def test_ett_hour_preset():
    assert split_borders(17420, "ett-hour") == Borders(8640, 11520, 14400)
    assert split_borders(69680, "ett-minute") == Borders(34560, 46080, 57600)


@pytest.mark.parametrize(("horizon", "expected"), sorted(ETT_TEST_WINDOWS.items()))
def test_ett_hour_window_counts_from_row_count(horizon, expected):
    b = split_borders(17420, "ett-hour")
    test = window_starts(b, "test", 96, horizon)
    assert len(test) == expected
    assert test[0] == 11520 - 96  # inputs start lookback rows before the border
    assert len(window_starts(b, "val", 96, horizon)) == 2880 - horizon + 1
    assert len(window_starts(b, "train", 96, horizon)) == 8640 - 96 - horizon + 1


@pytest.mark.parametrize(("horizon", "expected"), sorted(ETT_TEST_WINDOWS.items()))
def test_etth1_test_windows(horizon, expected, etth1_path):
    dm = SeriesDataModule(
        path=str(etth1_path), lookback=96, horizon=horizon, split="ett-hour", batch_size=256
    )
    assert len(dm.test_dataloader().dataset) == expected
    assert dm.n_channels == 7 and dm.freq == "h" and dm.period == 24
    # Scaler: StandardScaler on the first 8640 rows, as in the benchmark protocol.
    raw = pd.read_csv(etth1_path).iloc[:8640, 1:].to_numpy()
    np.testing.assert_allclose(dm.loc[0], raw.mean(axis=0), rtol=1e-10)
    np.testing.assert_allclose(dm.scale[0], raw.std(axis=0), rtol=1e-10)


def test_time_borders():
    ds = pd.date_range("2024-01-01", periods=100, freq="h")
    b = time_borders(ds, "2024-01-03", "2024-01-04 00:30")
    assert b == Borders(48, 73, 100)
    assert time_borders(ds, None, "2024-01-04") == Borders(72, 72, 100)  # no validation rows
    assert time_borders(ds, "2024-01-04", None) == Borders(72, 100, 100)  # no test rows
    # cuts with an offset or a zone are read in UTC, as time columns are
    assert time_borders(ds, "2024-01-03T01:00+01:00", pd.Timestamp("2024-01-04 00:30", tz="UTC")) == b
    assert time_borders(ds, "2024-01-03T00:00Z", None) == Borders(48, 100, 100)
    with pytest.raises(ValueError, match="val_start .* is after test_start"):
        time_borders(ds, "2024-01-04", "2024-01-03")
    with pytest.raises(ValueError, match="test_start='notadate' is not a timestamp"):
        time_borders(ds, "2024-01-04", "notadate")


def test_bad_split_and_ratios():
    with pytest.raises(ValueError, match="split='weekly' is not known; use one of ratio, time, none"):
        split_borders(100, "weekly")
    with pytest.raises(ValueError, match=r"ratios=\(0.5, 0.1, 0.2\) must be three non-negative shares"):
        ratio_borders(100, (0.5, 0.1, 0.2))


def test_min_rows():
    n, why = min_rows("ratio", 96, 96)
    b = ratio_borders(n)
    assert b.train_end >= 192 and b.val_end - b.train_end >= 96 and b.test_end - b.val_end >= 96
    b = ratio_borders(n - 1)
    assert b.train_end < 192 or b.val_end - b.train_end < 96 or b.test_end - b.val_end < 96
    assert "train >= 192 rows, val >= 96, test >= 96" in why
    assert min_rows("ett-hour", 96, 720)[0] == 14400
    assert min_rows("none", 96, 24)[0] == 96


def _split_rows(b: Borders, split: str) -> tuple[int, int]:
    return b.target_rows(split)


@settings(max_examples=60, deadline=None)
@given(
    lengths=st.lists(st.integers(1, 400), min_size=1, max_size=4),
    lookback=st.integers(1, 40),
    horizon=st.integers(1, 30),
    stride=st.integers(1, 5),
    shares=st.tuples(st.integers(1, 10), st.integers(0, 5), st.integers(0, 5)),
)
def test_property_windows_inside_one_split_and_series(lengths, lookback, horizon, stride, shares):
    total = sum(shares)
    ratios = tuple(s / total for s in shares)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    w = lookback + horizon
    for split in ("train", "val", "test"):
        ranges, borders = [], []
        for n in lengths:
            b = ratio_borders(n, ratios)
            borders.append(b)
            ranges.append(window_starts(b, split, lookback, horizon, stride))
        index = WindowIndex(offsets[:-1], ranges)
        series, starts = index.starts()
        assert len(series) == len(index) == sum(len(r) for r in ranges)
        for i in range(len(index)):
            k, s = index[i]
            assert (k, s) == (series[i], starts[i])
            lo, hi = offsets[k], offsets[k + 1]
            assert lo <= s and s + w <= hi  # inside one series
            local = s - lo
            t_start, t_stop = _split_rows(borders[k], split)
            assert t_start <= local + lookback and local + w <= t_stop  # targets inside the split
            if split == "train":
                assert local >= 0
            else:
                assert local >= t_start - lookback  # input never starts before border - lookback
        # Every eligible start (stride 1 would give them all) is covered, with the stride.
        for k, b in enumerate(borders):
            t_start, t_stop = _split_rows(b, split)
            first = 0 if split == "train" else max(t_start - lookback, 0)
            expect = range(first, t_stop - w + 1, stride)
            assert list(ranges[k]) == list(expect)


@settings(max_examples=30, deadline=None)
@given(
    n=st.integers(20, 300),
    lookback=st.integers(1, 10),
    horizon=st.integers(1, 10),
    cuts=st.tuples(st.integers(0, 299), st.integers(0, 299)),
)
def test_property_time_split_windows(n, lookback, horizon, cuts):
    ds = pd.date_range("2020-01-01", periods=n, freq="D")
    a, c = sorted(x % n for x in cuts)
    b = time_borders(ds, ds[a], ds[c])
    assert (b.train_end, b.val_end) == (a, c)
    for split, (t0, t1) in (("val", (a, c)), ("test", (c, n))):
        for s in window_starts(b, split, lookback, horizon):
            assert s >= t0 - lookback and s + lookback >= t0 and s + lookback + horizon <= t1
            assert ds[s + lookback] >= ds[t0]  # targets on or after the cut timestamp


def test_window_index_is_lazy():
    n = 1_000_000
    index = WindowIndex([0], [window_starts(Borders(n, n, n), "train", 96, 96)])
    assert len(index) == n - 191
    assert index.nbytes < 100  # a few integers per series, not one per window
    assert index[-1] == (0, n - 192)
    with pytest.raises(IndexError):
        index[len(index)]


def test_window_dataset_slices():
    values = torch.arange(30, dtype=torch.float32).reshape(15, 2)  # two series: rows 0..9 and 10..14
    offsets = torch.tensor([0, 10])
    t0 = torch.tensor([100, 7])
    loc = torch.zeros(2, 1, 2)
    scale = torch.ones(2, 1, 2)
    index = WindowIndex([0, 10], [range(0, 6), range(0, 1)])
    data = WindowDataset(values, offsets, t0, loc, scale, index, lookback=3, horizon=2)
    assert len(data) == 7
    item = data[6]
    assert int(item["series_idx"]) == 1 and int(item["time_idx"]) == 7 + 3
    torch.testing.assert_close(item["past"], values[10:13])
    torch.testing.assert_close(item["future"], values[13:15])
    item = data[2]
    assert int(item["time_idx"]) == 105
    torch.testing.assert_close(item["past"], values[2:5])
    assert item["past"].untyped_storage().data_ptr() == values.untyped_storage().data_ptr()  # a view, no copy


def _panel_dataset(lengths: list[int], lookback: int, horizon: int, stride: int, with_future: bool = True):
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    n, c = int(offsets[-1]), 3
    values = torch.randn(n, c)
    t0 = torch.arange(len(lengths), dtype=torch.int64) * 1000 + 5
    loc, scale = torch.randn(len(lengths), 1, c), torch.rand(len(lengths), 1, c) + 0.5
    ranges = [range(0, max(m - lookback - horizon + 1, 0), stride) for m in lengths]
    index = WindowIndex(offsets[:-1], ranges)
    off = torch.from_numpy(offsets[:-1].copy())
    return WindowDataset(values, off, t0, loc, scale, index, lookback, horizon, with_future=with_future)


@settings(max_examples=40, deadline=None)
@given(
    lengths=st.lists(st.integers(1, 120), min_size=1, max_size=4),
    lookback=st.integers(1, 20),
    horizon=st.integers(1, 15),
    stride=st.integers(1, 4),
    with_future=st.booleans(),
    data=st.data(),
)
def test_property_batch_indexing_stacks_the_windows(lengths, lookback, horizon, stride, with_future, data):
    ds = _panel_dataset(lengths, lookback, horizon, stride, with_future)
    n = len(ds)
    if n == 0:
        return
    idx = data.draw(st.lists(st.integers(-n, n - 1), min_size=1, max_size=12))
    batch = ds[idx]
    singles = [ds[i] for i in idx]
    assert batch.keys() == singles[0].keys()
    for key, value in batch.items():
        expect = torch.stack([item[key] for item in singles])
        assert value.dtype == expect.dtype and torch.equal(value, expect), key


def test_batch_indexing_refuses_out_of_range():
    ds = _panel_dataset([30, 20], lookback=4, horizon=3, stride=1)
    with pytest.raises(IndexError, match=f"window {len(ds)} out of range"):
        ds[[0, len(ds)]]
    with pytest.raises(IndexError, match="out of range"):
        ds[[-len(ds) - 1]]


@pytest.mark.parametrize("shuffle", [False, True])
def test_batch_loader_matches_the_default_loader(shuffle):
    """The same batches in the same order, and the same random stream afterwards, as DataLoader's own batching."""
    ds = _panel_dataset([60, 45, 80], lookback=6, horizon=4, stride=1)
    torch.manual_seed(3)
    default = list(DataLoader(ds, batch_size=16, shuffle=shuffle))
    after_default = torch.rand(3)
    torch.manual_seed(3)
    batched = list(batch_loader(ds, batch_size=16, shuffle=shuffle))
    assert torch.equal(torch.rand(3), after_default)
    assert len(batched) == len(default) == -(-len(ds) // 16)
    for a, b in zip(default, batched, strict=True):
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), key


def test_batch_loader_with_worker_processes():
    ds = _panel_dataset([50, 40], lookback=5, horizon=3, stride=1, with_future=False)
    in_process = list(batch_loader(ds, batch_size=8))
    in_worker = list(batch_loader(ds, batch_size=8, num_workers=1))
    assert len(in_worker) == len(in_process) and "future" not in in_worker[0]
    for a, b in zip(in_process, in_worker, strict=True):
        assert all(torch.equal(a[key], b[key]) for key in a)
