"""Chronological splits and lazy sliding-window indices.

Splits follow the long-term forecasting protocol (Zhou et al., "Informer", AAAI 2021, and the LTSF code that
followed it): with ``n`` rows, ratio splits give ``train = int(0.7 n)``, ``test = int(0.2 n)`` and
``val = n - train - test`` rows; the ``ett-hour`` preset gives 8640 / 2880 / 2880 rows (``ett-minute``
34560 / 11520 / 11520) and ignores rows after them; explicit cut timestamps give ``val = [val_start, test_start)``
and ``test = [test_start, end)``. A window is ``lookback`` input rows followed by ``horizon`` target rows; a
window belongs to the split that holds all of its target rows, so val/test inputs start up to ``lookback`` rows
before the border (never earlier), and train windows lie entirely in the train rows.

Windows are never materialised: a :class:`WindowIndex` stores one ``range`` of start rows per series and split,
and :class:`WindowDataset` slices the stored series array on ``__getitem__`` (a whole batch in one indexing step
with `batch_loader`). Memory grows with the series length, not with windows x window length. Windows never cross
series boundaries.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler, SequentialSampler

__all__ = [
    "PRESETS",
    "SPLITS",
    "Borders",
    "WindowDataset",
    "WindowIndex",
    "batch_loader",
    "min_rows",
    "ratio_borders",
    "split_borders",
    "time_borders",
    "time_split_problem",
    "window_starts",
]

SPLITS = ("ratio", "time", "none", "ett-hour", "ett-minute")
# Fixed row counts (train, val, test) of the standard ETT benchmark splits.
PRESETS: dict[str, tuple[int, int, int]] = {
    "ett-hour": (12 * 30 * 24, 4 * 30 * 24, 4 * 30 * 24),
    "ett-minute": (12 * 30 * 24 * 4, 4 * 30 * 24 * 4, 4 * 30 * 24 * 4),
}
DEFAULT_RATIOS = (0.7, 0.1, 0.2)


@dataclass(frozen=True)
class Borders:
    """Row borders of one series: train ``[0, train_end)``, val ``[train_end, val_end)``, test ``[val_end, test_end)``."""

    train_end: int
    val_end: int
    test_end: int

    def target_rows(self, split: str) -> tuple[int, int]:
        """``[start, stop)`` of the rows whose values are forecast targets in *split*."""
        if split == "train":
            return 0, self.train_end
        if split == "val":
            return self.train_end, self.val_end
        if split == "test":
            return self.val_end, self.test_end
        raise ValueError(f"unknown split {split!r}; use 'train', 'val' or 'test'")


def _check_ratios(ratios: Sequence[float]) -> tuple[float, float, float]:
    if len(ratios) != 3 or any(r < 0 for r in ratios) or ratios[0] <= 0 or abs(sum(ratios) - 1.0) > 1e-6:
        raise ValueError(
            f"ratios={tuple(ratios)} must be three non-negative shares (train, val, test) summing to 1, "
            "with train > 0, e.g. (0.7, 0.1, 0.2)."
        )
    return float(ratios[0]), float(ratios[1]), float(ratios[2])


def ratio_borders(n: int, ratios: Sequence[float] = DEFAULT_RATIOS) -> Borders:
    """LTSF ratio borders: ``train = int(r_train n)``, ``test = int(r_test n)``, val gets the rest."""
    r_train, _, r_test = _check_ratios(ratios)
    n_train, n_test = int(n * r_train), int(n * r_test)
    return Borders(n_train, n - n_test, n)


def _cut(name: str, value: str | pd.Timestamp | None) -> pd.Timestamp | None:
    """The cut as a timestamp; one with a UTC offset or time zone in UTC, as the time columns are read."""
    try:
        cut = None if value is None else pd.Timestamp(value)
    except (ValueError, TypeError):
        raise ValueError(
            f"{name}={value!r} is not a timestamp; give one such as '2024-03-01' or '2024-03-01 12:00'"
        ) from None
    if cut is not None and cut.tzinfo is not None:
        cut = cut.tz_convert("UTC").tz_localize(None)
    return cut


def time_borders(
    ds: pd.DatetimeIndex, val_start: str | pd.Timestamp | None, test_start: str | pd.Timestamp | None
) -> Borders:
    """Borders at the first rows on or after *val_start* / *test_start*; a missing cut leaves that split empty."""
    if val_start is None and test_start is None:
        raise ValueError("split='time' needs val_start and/or test_start (timestamps).")
    n = len(ds)
    vs, ts = (_cut(name, value) for name, value in (("val_start", val_start), ("test_start", test_start)))
    if vs is not None and ts is not None and vs > ts:
        raise ValueError(f"val_start {vs} is after test_start {ts}; the validation rows must come first.")
    b2 = int(ds.searchsorted(ts, side="left")) if ts is not None else n
    b1 = int(ds.searchsorted(vs, side="left")) if vs is not None else b2
    return Borders(b1, b2, n)


def split_borders(
    n: int,
    split: str,
    *,
    ds: pd.DatetimeIndex | None = None,
    ratios: Sequence[float] = DEFAULT_RATIOS,
    val_start: str | pd.Timestamp | None = None,
    test_start: str | pd.Timestamp | None = None,
) -> Borders:
    """Borders of a series of *n* rows for *split* (one of :data:`SPLITS`); ``none`` puts every row in train."""
    if split == "ratio":
        return ratio_borders(n, ratios)
    if split == "time":
        if ds is None:
            raise ValueError("split='time' needs the series timestamps (ds=...).")
        return time_borders(ds, val_start, test_start)
    if split == "none":
        return Borders(n, n, n)
    if split in PRESETS:
        a, b, c = PRESETS[split]
        return Borders(a, a + b, a + b + c)
    raise ValueError(f"split={split!r} is not known; use one of {', '.join(SPLITS)}.")


def window_starts(borders: Borders, split: str, lookback: int, horizon: int, stride: int = 1) -> range:
    """Start rows (local to the series) of the *split* windows; each window covers ``[s, s + lookback + horizon)``."""
    if lookback < 1 or horizon < 1 or stride < 1:
        raise ValueError(f"lookback ({lookback}), horizon ({horizon}) and stride ({stride}) must be >= 1")
    start, stop = borders.target_rows(split)
    # Val/test inputs may reach back `lookback` rows into the previous split (never further).
    lo = 0 if split == "train" else max(start - lookback, 0)
    hi = stop - lookback - horizon  # last start whose targets end at the split's last row
    if hi < lo:
        return range(0)
    return range(lo, hi + 1, stride)


def min_rows(
    split: str, lookback: int, horizon: int, ratios: Sequence[float] = DEFAULT_RATIOS
) -> tuple[int, str]:
    """Fewest rows a series needs for *split* (one train window, and one val/test window where those are
    non-empty), with a sentence saying why. For ``time`` splits the check needs the timestamps: see
    :func:`time_split_problem`."""
    w = lookback + horizon
    base = f"lookback {lookback} + horizon {horizon} with split='{split}'"
    if split in PRESETS:
        a, b, c = PRESETS[split]
        return max(a + b + c, w), f"{base} ({a}/{b}/{c} rows)"
    if split == "none":
        return lookback, f"lookback {lookback} (the input of the last window) with split='none'"
    if split == "time":
        return w, f"{base} (one training window)"
    r_train, r_val, r_test = _check_ratios(ratios)

    def ok(n: int) -> bool:
        b = ratio_borders(n, ratios)
        return (
            b.train_end >= w
            and (r_val == 0 or b.val_end - b.train_end >= horizon)
            and (r_test == 0 or b.test_end - b.val_end >= horizon)
        )

    n = max(w, math.ceil(w / r_train) - 2)
    while not ok(n):
        n += 1
    need = (
        f"train >= {w} rows"
        + (f", val >= {horizon}" if r_val else "")
        + (f", test >= {horizon}" if r_test else "")
    )
    return n, f"{base} (ratios {r_train:g}/{r_val:g}/{r_test:g}: {need})"


def time_split_problem(
    borders: Borders, lookback: int, horizon: int, has_val: bool, has_test: bool
) -> str | None:
    """Why a ``time`` split leaves some split without a window, or None."""
    w = lookback + horizon
    if borders.train_end < w:
        return f"the {borders.train_end} rows before the first cut hold no training window (need >= {w})"
    if has_val and borders.val_end - borders.train_end < horizon:
        return f"the {borders.val_end - borders.train_end} validation rows hold no window (need >= {horizon})"
    if has_test and borders.test_end - borders.val_end < horizon:
        return f"the {borders.test_end - borders.val_end} test rows hold no window (need >= {horizon})"
    return None


class WindowIndex:
    """Lazy index of windows: one ``range`` of start rows per series, nothing materialised.

    ``offsets[k]`` is the global row (in the concatenated series array) of series ``k``'s first row;
    ``index[i]`` gives ``(series k, global start row)``.
    """

    def __init__(self, offsets: Sequence[int], ranges: Sequence[range]) -> None:
        if len(offsets) != len(ranges):
            raise ValueError("one range per series is needed")
        self.series = np.arange(len(ranges), dtype=np.int64)
        self.first = np.asarray([o + r.start for o, r in zip(offsets, ranges, strict=True)], dtype=np.int64)
        self.step = np.asarray([r.step for r in ranges], dtype=np.int64)
        counts = np.asarray([len(r) for r in ranges], dtype=np.int64)
        self.cum = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)

    def __len__(self) -> int:
        return int(self.cum[-1])

    def counts(self) -> np.ndarray:
        """Windows per series (S,)."""
        return np.diff(self.cum)

    def __getitem__(self, i: int) -> tuple[int, int]:
        series, starts = self.locate(np.asarray([i], dtype=np.int64))
        return int(series[0]), int(starts[0])

    def locate(self, i: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Window indices (B,) (negative ones count from the end) -> (series (B,), global start rows (B,))."""
        n = len(self)
        i = np.where(i < 0, i + n, i)
        bad = (i < 0) | (i >= n)
        if bad.any():
            raise IndexError(f"window {int(i[bad][0])} out of range for {n} windows")
        k = np.searchsorted(self.cum, i, side="right") - 1
        return k, self.first[k] + (i - self.cum[k]) * self.step[k]

    def starts(self) -> tuple[np.ndarray, np.ndarray]:
        """Materialise ``(series (N,), global start rows (N,))``; for inspection and tests."""
        counts = self.counts()
        series = np.repeat(self.series, counts)
        within = np.arange(len(self)) - np.repeat(self.cum[:-1], counts)
        return series, np.repeat(self.first, counts) + within * np.repeat(self.step, counts)

    @property
    def nbytes(self) -> int:
        return int(self.first.nbytes + self.step.nbytes + self.cum.nbytes + self.series.nbytes)


class WindowDataset(Dataset):
    """Windows sliced on demand from one concatenated, scaled series array.

    Items: ``past`` (L, C) float32, ``future`` (H, C) float32 (when ``with_future``), ``series_idx`` () int64,
    ``time_idx`` () int64 = absolute step index of the first future step, ``loc`` / ``scale`` (1, C) float32.
    Tensors are shared with the owner (a DataModule), which may update them in place.
    """

    def __init__(
        self,
        values: torch.Tensor,
        offsets: torch.Tensor,
        t0: torch.Tensor,
        loc: torch.Tensor,
        scale: torch.Tensor,
        index: WindowIndex,
        lookback: int,
        horizon: int,
        with_future: bool = True,
    ) -> None:
        self.values = values  # (N, C) float32, all series back to back
        self.offsets = offsets  # (S,) int64 global row of each series' first row
        self.t0 = t0  # (S,) int64 absolute step index of each series' first row
        self.loc = loc  # (S, 1, C) float32
        self.scale = scale  # (S, 1, C) float32
        self.index = index
        self.lookback = lookback
        self.horizon = horizon
        self.with_future = with_future

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int | Sequence[int]) -> dict[str, torch.Tensor]:
        """One window (``i`` an int), or a batch of windows (``i`` a sequence of B ints): the items stacked, each
        with a leading (B,) axis, as the DataLoader's collation would stack them (`batch_loader`)."""
        if np.ndim(i) == 0:
            k, start = self.index[int(i)]
            mid = start + self.lookback
            item = {
                "past": self.values[start:mid],
                "series_idx": torch.tensor(k, dtype=torch.int64),
                "time_idx": self.t0[k] + (mid - self.offsets[k]),
                "loc": self.loc[k],
                "scale": self.scale[k],
            }
            if self.with_future:
                item["future"] = self.values[mid : mid + self.horizon]
            return item
        series, starts = self.index.locate(np.asarray(i, dtype=np.int64).reshape(-1))
        k, start = torch.from_numpy(series), torch.from_numpy(starts)
        mid = start + self.lookback
        batch = {
            "past": self.values[start[:, None] + torch.arange(self.lookback)],  # (B, L, C)
            "series_idx": k,
            "time_idx": self.t0[k] + (mid - self.offsets[k]),
            "loc": self.loc[k],  # (B, 1, C)
            "scale": self.scale[k],
        }
        if self.with_future:
            batch["future"] = self.values[mid[:, None] + torch.arange(self.horizon)]  # (B, H, C)
        return batch


def batch_loader(
    dataset: WindowDataset, batch_size: int, shuffle: bool = False, num_workers: int = 0
) -> DataLoader:
    """A DataLoader that slices each batch of ``dataset`` in one indexing step instead of window by window.

    The same batches, in the same (shuffled) order and from the same random stream, as
    ``DataLoader(dataset, batch_size, shuffle)`` with its default collation.
    """
    sampler = RandomSampler(dataset) if shuffle else SequentialSampler(dataset)
    return DataLoader(
        dataset,
        sampler=BatchSampler(sampler, batch_size, drop_last=False),
        batch_size=None,  # the sampler yields whole batches of indices; the dataset stacks them
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
    )
