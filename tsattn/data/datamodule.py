"""LightningDataModule turning any wide or long CSV (or DataFrame) into leak-free, scaled forecasting windows.

Splits are made per series: ratio and preset splits by the series' own row count (so in a long file each
series is split by its own length), ``time`` splits by the cut timestamps. The scaler is fit per series on its
training rows only (all rows with ``split="none"``) and kept as plain ``loc`` / ``scale`` arrays.

Forecasting new data from a checkpoint, without the training file: :meth:`SeriesDataModule.for_prediction`
builds a module on the new data with the stored settings (columns, lookback, horizon, scaler kind, period) and
``split="none"``, then loads the stored state: series seen in training reuse their stored scaler, unseen series
get a scaler fit on their own history. Series are matched by id alone (a wide file's is its stem), so a series
is scaled the same whatever else the new data holds; ``tsattn forecast`` follows the same rule.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import lightning as L
import numpy as np
import pandas as pd
import torch
from pandas.tseries.frequencies import to_offset
from torch.utils.data import DataLoader

from tsattn.data.frames import check_length, fill_gaps, infer_period, on_grid, read_series, time_index
from tsattn.data.scaling import SCALERS, fit_scaler
from tsattn.data.windows import (
    DEFAULT_RATIOS,
    SPLITS,
    Borders,
    WindowDataset,
    WindowIndex,
    batch_loader,
    min_rows,
    split_borders,
    time_borders,
    time_split_problem,
    window_starts,
)

__all__ = ["SeriesDataModule"]

log = logging.getLogger(__name__)

_STATE_VERSION = 1
_STAGES = ("train", "val", "test", "predict")


class SeriesDataModule(L.LightningDataModule):
    """Windows of (``lookback`` past, ``horizon`` future) steps from every series of a CSV file or DataFrame.

    Batches are dicts: ``past`` (B, L, C) and ``future`` (B, H, C) float32 scaled values, ``series_idx`` (B,)
    int64 (index into ``series_ids``), ``time_idx`` (B,) int64 absolute step index of the first future step
    (past step i has index ``time_idx - L + i``), ``loc`` / ``scale`` (B, 1, C) float32 with
    ``original = scaled * scale + loc``. Predict batches have no ``future``.

    ``split``: ``ratio`` (``ratios``, default 0.7/0.1/0.2), ``ett-hour`` / ``ett-minute`` presets, ``time``
    (cut timestamps ``val_start`` / ``test_start``) or ``none`` (every row trains; nothing held out).
    ``stride`` thins training windows; ``eval_stride`` (default 1, the benchmark protocol) val/test windows.
    """

    def __init__(
        self,
        path: str | None = None,
        frame: pd.DataFrame | None = None,
        lookback: int = 96,
        horizon: int = 24,
        split: str = "ratio",
        stride: int = 1,
        target_cols: list[str] | None = None,
        id_col: str | None = None,
        time_col: str | None = None,
        missing: str = "error",
        scaler: str = "standard",
        period: int | None = None,
        batch_size: int = 32,
        num_workers: int = 0,
        ratios: tuple[float, float, float] = DEFAULT_RATIOS,
        val_start: str | None = None,
        test_start: str | None = None,
        eval_stride: int = 1,
    ) -> None:
        super().__init__()
        if path is not None:
            path = os.fspath(path)  # plain str in the saved hyperparameters
        ratios = tuple(float(r) for r in ratios)
        self.save_hyperparameters(ignore=["frame"])
        for name, value, least in (
            ("lookback", lookback, 1),
            ("horizon", horizon, 1),
            ("stride", stride, 1),
            ("eval_stride", eval_stride, 1),
            ("batch_size", batch_size, 1),
            ("num_workers", num_workers, 0),
            ("period", 1 if period is None else period, 1),
        ):
            if int(value) != value or value < least:
                raise ValueError(f"{name} must be an integer >= {least}, got {value!r}")
        if split not in SPLITS:
            raise ValueError(f"split={split!r} is not known; use one of {', '.join(SPLITS)}.")
        if split != "time" and (val_start is not None or test_start is not None):
            raise ValueError(
                f"val_start/test_start cut the data by time: pass split='time' (got split={split!r})."
            )
        if scaler not in SCALERS:
            raise ValueError(f"scaler={scaler!r} is not known; use one of {', '.join(SCALERS)}.")
        if (path is None) == (frame is None):
            raise ValueError("pass exactly one of path= (a CSV file) or frame= (a DataFrame)")

        self.lookback, self.horizon, self.split = int(lookback), int(horizon), split
        self.stride, self.eval_stride = int(stride), int(eval_stride)
        self.ratios, self.val_start, self.test_start = ratios, val_start, test_start
        self.scaler, self.batch_size, self.num_workers = scaler, int(batch_size), int(num_workers)

        by_split = missing in ("ffill", "interpolate")  # filled below, each split from the rows up to its end
        sf = read_series(
            frame if frame is not None else path,
            time_col=time_col,
            id_col=id_col,
            target_cols=target_cols,
            missing=missing,
            fill=not by_split,
        )
        self.series_frame = sf
        self.missing = missing
        self.target_cols: list[str] = list(sf.target_cols)
        self.n_channels: int = len(self.target_cols)
        self.freq: str | None = sf.freq
        self.period: int | None = int(period) if period is not None else infer_period(sf.freq)
        self._resolved_hparams()
        self.series_ids: list[str] = []

        ds_list, values, borders = [], [], []
        for uid, ds, vals in sf.series():
            borders.append(self._borders(uid, ds))
            if by_split:
                vals = self._filled(uid, ds, vals, borders[-1])
            self.series_ids.append(uid)
            ds_list.append(ds)
            values.append(vals)
        self._ds: list[pd.DatetimeIndex] = ds_list
        self.borders: list[Borders] = borders
        lengths = np.asarray([len(v) for v in values], dtype=np.int64)
        self._offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)  # (S + 1,)
        self._raw = np.concatenate(values, axis=0)  # (N, C) float64, original units
        if by_split:
            sf.frame[self.target_cols] = self._raw
        self._t0 = np.asarray(
            [int(time_index(ds[:1], sf.freq)[0]) for ds in ds_list], dtype=np.int64
        )  # (S,) absolute step index of each series' first row
        step = sf.freq or sf.step
        self._offset = to_offset(step) if step is not None else None

        # Fit on training rows only, so nothing from val/test leaks into the scaling.
        fits = [fit_scaler(v[: b.train_end], scaler) for v, b in zip(values, borders, strict=True)]
        self.loc: np.ndarray = np.stack([f[0] for f in fits])  # (S, C)
        self.scale: np.ndarray = np.stack([f[1] for f in fits])  # (S, C)
        if split != "none":
            self._warn_thin_training(values, borders)
        self._store: dict[str, torch.Tensor] | None = None
        self._datasets: dict[str, WindowDataset] = {}

    # ------------------------------------------------------------------------------------------- building

    def _resolved_hparams(self) -> None:
        """Save the period as resolved (inferred from the frequency, or stored): the model is built with it, and
        Lightning refuses to log model and data hyperparameters that share a key with different values."""
        if self.hparams.get("period") != self.period:
            self.save_hyperparameters({**self.hparams, "period": self.period})

    def _borders(self, uid: str, ds: pd.DatetimeIndex) -> Borders:
        n, lb, h = len(ds), self.lookback, self.horizon
        src = self.series_frame.source
        if self.split == "time":
            b = time_borders(ds, self.val_start, self.test_start)
            problem = time_split_problem(b, lb, h, self.val_start is not None, self.test_start is not None)
            if problem:
                raise ValueError(
                    f"series '{uid}' of {src} ({n} rows, {ds[0]} to {ds[-1]}) with split='time' "
                    f"(val_start={self.val_start}, test_start={self.test_start}), lookback {lb}, horizon {h}: "
                    f"{problem}. Move the cut timestamps or use a shorter lookback/horizon."
                )
            return b
        need, reason = min_rows(self.split, lb, h, self.ratios)
        check_length(uid, n, need, source=src, reason=reason)
        if self.split == "none" and n < lb + h:
            log.debug("series '%s' has %d rows: no training window of %d rows fits", uid, n, lb + h)  # forecasting
        return split_borders(n, self.split, ratios=self.ratios)

    def _warn_thin_training(self, values: list[np.ndarray], borders: list[Borders]) -> None:
        """Warn of training rows that leave a channel's scale or a season's cycle undetermined."""
        flat = [f"'{uid}'/{col}" for uid, v, b in zip(self.series_ids, values, borders, strict=True)
                for j, col in enumerate(self.target_cols) if b.train_end > 0 and np.ptp(v[: b.train_end, j]) == 0]
        if flat:
            log.warning(
                "%d series/column(s) constant on their training rows (%s%s): scaled by 1, so their errors are in "
                "original units; leave them out (target_cols) unless that is meant", len(flat), ", ".join(flat[:5]),
                ", ..." if len(flat) > 5 else "",
            )
        short = min(b.train_end for b in borders)
        if self.period is not None and short < 2 * self.period:
            log.warning(
                "period %d: a series has %d training rows, fewer than two periods, so a seasonal cycle fitted on them "
                "has one value or none per phase; give a shorter period or more training rows", self.period, short,
            )

    def _filled(self, uid: str, ds: pd.DatetimeIndex, values: np.ndarray, b: Borders) -> np.ndarray:
        """*values* (T, C) with the NaN of each split filled (``missing``) from the rows up to that split's end, so
        that no value of a later split fills a row of an earlier one (nor reaches the scaler)."""
        out, start = values.copy(), 0
        for end in (b.train_end, b.val_end, len(out)):
            if end > start:
                out[start:end] = fill_gaps(pd.DataFrame(out[:end]), self.missing).to_numpy()[start:end]
                start = end
            if end == b.train_end and end > 0 and np.isnan(out[:end]).any():
                col = self.target_cols[int(np.nonzero(np.isnan(out[:end]).any(axis=0))[0][0])]
                raise ValueError(
                    f"{self.series_frame.source}: column '{col}' of series '{uid}' has no finite value in its "
                    f"training rows (up to {ds[end - 1]}) to fill from; drop the column (target_cols=[...]) or the "
                    "series, or move the split"
                )
        return out

    def _scaled(self) -> np.ndarray:
        lengths = np.diff(self._offsets)
        loc = np.repeat(self.loc, lengths, axis=0)
        scale = np.repeat(self.scale, lengths, axis=0)
        return ((self._raw - loc) / scale).astype(np.float32)  # scale in float64, then store float32

    def _build_store(self) -> dict[str, torch.Tensor]:
        if self._store is None:
            self._store = {
                "values": torch.from_numpy(self._scaled()),  # (N, C)
                "offsets": torch.from_numpy(self._offsets[:-1].copy()),  # (S,)
                "t0": torch.from_numpy(self._t0.copy()),  # (S,)
                # float64: a float32 level of 1e8 would round every forecast to steps of 8 in original units
                "loc": torch.from_numpy(self.loc[:, None, :].astype(np.float64)),  # (S, 1, C)
                "scale": torch.from_numpy(self.scale[:, None, :].astype(np.float64)),  # (S, 1, C)
            }
        return self._store

    def _refresh_store(self) -> None:
        """Re-scale in place after the scaler changed, so datasets already handed out see the new values."""
        if self._store is None:
            return
        self._store["values"].copy_(torch.from_numpy(self._scaled()))
        self._store["loc"].copy_(torch.from_numpy(self.loc[:, None, :]))
        self._store["scale"].copy_(torch.from_numpy(self.scale[:, None, :]))
        self._store["t0"].copy_(torch.from_numpy(self._t0))

    def _adopt_grid(self, freq: str) -> None:
        """Data with rows missing from the stored *freq* grid (``missing="ignore"``): forecast timestamps continue
        that grid, and the step index that sets the seasonal phase counts back from each series' last timestamp,
        so the forecast steps have the phase they had in training (the rows stay consecutive steps)."""
        self.freq = freq
        self._offset = to_offset(freq)
        self._t0 = np.asarray(
            [int(time_index(ds[-1:], freq)[0]) - (len(ds) - 1) for ds in self._ds], dtype=np.int64
        )
        log.info("rows are missing from the stored '%s' grid: steps are counted back from each series' end", freq)

    def _dataset(self, stage: str) -> WindowDataset:
        if stage not in self._datasets:
            store = self._build_store()
            lengths = np.diff(self._offsets)
            if stage == "predict":
                ranges = [range(int(n) - self.lookback, int(n) - self.lookback + 1) for n in lengths]
            else:
                stride = self.stride if stage == "train" else self.eval_stride
                ranges = [window_starts(b, stage, self.lookback, self.horizon, stride) for b in self.borders]
            index = WindowIndex(self._offsets[:-1], ranges)
            self._datasets[stage] = WindowDataset(
                store["values"],
                store["offsets"],
                store["t0"],
                store["loc"],
                store["scale"],
                index,
                self.lookback,
                self.horizon,
                with_future=stage != "predict",
            )
        return self._datasets[stage]

    def setup(self, stage: str | None = None) -> None:
        """Build the lazy window datasets (cheap: no window is copied)."""
        for name in _STAGES:
            self._dataset(name)

    def num_windows(self, stage: str) -> int:
        """Number of windows in ``train`` / ``val`` / ``test`` / ``predict``."""
        return len(self._dataset(stage))

    # ------------------------------------------------------------------------------------------- loaders

    def _loader(self, stage: str, shuffle: bool = False) -> DataLoader:
        return batch_loader(self._dataset(stage), self.batch_size, shuffle=shuffle, num_workers=self.num_workers)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")

    def predict_dataloader(self) -> DataLoader:
        """One window per series: its past is the series' last ``lookback`` rows."""
        return self._loader("predict")

    # ------------------------------------------------------------------------------------------- units & time

    def _apply(self, values: Any, series_idx: Any, channel_axis: int, inverse: bool) -> Any:
        is_torch = isinstance(values, torch.Tensor)
        idx = (
            series_idx.detach().cpu().numpy()
            if isinstance(series_idx, torch.Tensor)
            else np.asarray(series_idx)
        )
        loc, scale = self.loc[idx], self.scale[idx]  # (C,) or (B, C)
        x = (
            torch.movedim(values, channel_axis, -1)
            if is_torch
            else np.moveaxis(np.asarray(values), channel_axis, -1)
        )
        if idx.ndim == 1:
            shape = (len(idx),) + (1,) * (x.ndim - 2) + (loc.shape[-1],)
            loc, scale = loc.reshape(shape), scale.reshape(shape)
        elif idx.ndim != 0:
            raise ValueError(f"series_idx must be an int or a (B,) array, got shape {idx.shape}")
        if is_torch:
            loc = torch.as_tensor(loc, dtype=x.dtype, device=x.device)
            scale = torch.as_tensor(scale, dtype=x.dtype, device=x.device)
        out = x * scale + loc if inverse else (x - loc) / scale
        return torch.movedim(out, -1, channel_axis) if is_torch else np.moveaxis(out, -1, channel_axis)

    def inverse_transform(self, values: Any, series_idx: Any, channel_axis: int = -1) -> Any:
        """Scaled -> original units. ``values`` (..., C) with an int ``series_idx``, or (B, ..., C) with
        ``series_idx`` (B,); numpy in, numpy out; torch in, torch out. ``channel_axis`` for e.g. (B, H, C, Q)."""
        return self._apply(values, series_idx, channel_axis, inverse=True)

    def transform(self, values: Any, series_idx: Any, channel_axis: int = -1) -> Any:
        """Original -> scaled units; shapes as in :meth:`inverse_transform`."""
        return self._apply(values, series_idx, channel_axis, inverse=False)

    def future_timestamps(self, series_idx: int, time_idx: int, horizon: int) -> pd.DatetimeIndex:
        """Timestamps (horizon,) of the steps ``time_idx, time_idx + 1, ...`` of series ``series_idx``.

        Steps inside the data take its timestamps; later steps continue the frequency (or, for irregular rows
        kept with ``missing="ignore"``, the modal step) from the last timestamp.
        """
        ds = self._ds[int(series_idx)]
        first = int(time_idx) - int(self._t0[int(series_idx)])  # row of the first step
        rows = np.arange(first, first + int(horizon))
        n = len(ds)
        parts = []
        before = rows[rows < 0]
        inside = rows[(rows >= 0) & (rows < n)]
        after = rows[rows >= n]
        if (len(before) or len(after)) and self._offset is None:
            raise ValueError("the series has no known step, so timestamps outside the data are unknown")
        if len(before):
            parts.append(
                pd.date_range(end=ds[0], periods=-int(before[0]) + 1, freq=self._offset)[: len(before)]
            )
        if len(inside):
            parts.append(ds[inside])
        if len(after):
            extra = pd.date_range(ds[-1], periods=int(after[-1]) - n + 2, freq=self._offset)[1:]
            parts.append(extra[int(after[0]) - n :])
        out = parts[0]
        for p in parts[1:]:
            out = out.append(p)
        return pd.DatetimeIndex(out, name="ds")

    # ------------------------------------------------------------------------------------------- state

    def state_dict(self) -> dict[str, Any]:
        """Plain data (numbers, strings, lists): loads with ``torch.load(weights_only=True)``."""
        sf = self.series_frame
        return {
            "version": _STATE_VERSION,
            "target_cols": list(self.target_cols),
            "time_col": sf.time_col,
            "id_col": sf.id_col,
            "missing": self.missing,
            "freq": self.freq,
            "step": sf.step,
            "period": self.period,
            "lookback": self.lookback,
            "horizon": self.horizon,
            "split": self.split,
            "ratios": list(self.ratios),
            "val_start": None if self.val_start is None else str(self.val_start),
            "test_start": None if self.test_start is None else str(self.test_start),
            "scaler": self.scaler,
            "series_ids": list(self.series_ids),
            "loc": self.loc.tolist(),
            "scale": self.scale.tolist(),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the scaler of every series seen in *state_dict*; checks columns, lookback and horizon."""
        state = state_dict
        missing_keys = {"target_cols", "lookback", "horizon", "series_ids", "loc", "scale"} - set(state)
        if missing_keys:
            raise ValueError(f"not a SeriesDataModule state: keys {sorted(missing_keys)} are missing")
        if list(state["target_cols"]) != self.target_cols:
            stored = list(state["target_cols"])
            lacking = [c for c in stored if c not in self.target_cols]
            fix = f"pass target_cols={stored}"
            if lacking:
                fix = f"{fix} if the data has {lacking}, or give data with the columns the model was trained on"
            raise ValueError(
                f"the stored state was made for columns {stored}, but this data has {self.target_cols}; {fix}."
            )
        for key in ("lookback", "horizon"):
            if int(state[key]) != getattr(self, key):
                raise ValueError(
                    f"the stored state has {key}={state[key]}, this module {key}={getattr(self, key)}; use the "
                    "stored value (the model was built for it)."
                )
        stored_freq = state.get("freq")
        if self.freq is None and stored_freq is not None and all(on_grid(ds, stored_freq) for ds in self._ds):
            self._adopt_grid(stored_freq)
        elif stored_freq != self.freq:
            log.warning("stored frequency %s differs from this data's %s", stored_freq, self.freq)
        if state.get("period") is not None:
            self.period = int(state["period"])
            self._resolved_hparams()
        stored = {uid: k for k, uid in enumerate(state["series_ids"])}
        loc = np.asarray(state["loc"], dtype=np.float64).reshape(len(stored), self.n_channels)
        scale = np.asarray(state["scale"], dtype=np.float64).reshape(len(stored), self.n_channels)
        reused = []
        for k, uid in enumerate(self.series_ids):
            j = stored.get(uid)
            if j is not None:
                self.loc[k], self.scale[k] = loc[j], scale[j]
                reused.append(uid)
        log.info("restored the scaler of %d of %d series", len(reused), len(self.series_ids))
        self._refresh_store()

    @staticmethod
    def _state_from(state: Any) -> dict[str, Any]:
        if isinstance(state, str | os.PathLike):
            state = torch.load(state, map_location="cpu", weights_only=True)  # never runs code from the file
        if not isinstance(state, dict):
            raise TypeError(
                f"expected a state dict, a checkpoint dict or a checkpoint path, got {type(state)}"
            )
        key = SeriesDataModule.__qualname__
        if "loc" not in state and key in state:
            state = state[key]  # a whole Lightning checkpoint
        if "loc" not in state:
            raise ValueError(
                f"no {key} state found (a checkpoint saved with this DataModule holds one under '{key}')"
            )
        return state

    @classmethod
    def for_prediction(
        cls,
        state: dict[str, Any] | str | os.PathLike,
        source: str | os.PathLike | pd.DataFrame,
        *,
        missing: str | None = None,
        batch_size: int = 32,
        num_workers: int = 0,
    ) -> SeriesDataModule:
        """A module for forecasting *source* (new data) with a saved state, without the training file.

        *state*: a :meth:`state_dict`, a Lightning checkpoint dict or a checkpoint path (loaded with
        ``weights_only=True``). Uses the stored columns, lookback, horizon, scaler kind and period, and
        ``split="none"``; seen series reuse their stored scaler, unseen ones are fit on their own history.
        """
        st = cls._state_from(state)
        is_frame = isinstance(source, pd.DataFrame)
        dm = cls(
            path=None if is_frame else source,
            frame=source if is_frame else None,
            lookback=int(st["lookback"]),
            horizon=int(st["horizon"]),
            split="none",
            target_cols=list(st["target_cols"]),
            id_col=st.get("id_col"),
            time_col=st.get("time_col"),
            missing=missing or st.get("missing", "error"),
            scaler=st.get("scaler", "standard"),
            period=st.get("period"),
            batch_size=batch_size,
            num_workers=num_workers,
        )
        dm.load_state_dict(st)
        return dm

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(source={self.series_frame.source!r}, series={len(self.series_ids)}, "
            f"channels={self.n_channels}, freq={self.freq!r}, lookback={self.lookback}, horizon={self.horizon}, "
            f"split={self.split!r})"
        )
