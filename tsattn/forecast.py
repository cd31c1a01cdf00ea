"""Batch forecasting from a checkpoint: ``tsattn forecast``.

    tsattn forecast --ckpt model.ckpt --input data/ --output forecasts.csv
    tsattn forecast --ckpt model.ckpt --input 'prices/*.csv' --output forecasts.parquet --cutoffs 2024-03-01 2024-04-01
    tsattn forecast --ckpt model.ckpt --input panel.csv --id-col store --output f.csv \\
        --trainer.accelerator cpu --trainer.devices 2 --trainer.strategy ddp

**Input.** One CSV, a directory (its ``*.csv`` / ``*.tsv`` files, not recursive) or a glob of them. A file holding
the id column (``--id-col``, else the one the model was trained with) is long: one series per id. Any other file is
wide: one series named after the file stem, its channels the model's columns. A model with one channel also takes
files without its column: then every numeric column is a series of its own, ``<series>/<column>``.

**Output.** A tidy table ``unique_id, ds, cutoff, yhat`` (+ ``yhat_q<level>`` per quantile for quantile models,
``yhat`` then being the median), ``horizon`` rows per series and cutoff, in original units. ``unique_id`` is the
series id for one-channel models and ``<series>/<column>`` for each channel of a multi-channel model (so a wide
CSV gives one ``unique_id`` per column); ``cutoff`` is the last timestamp of the history used and ``ds`` continues
the series' frequency from it. ``--cutoffs`` forecasts from each given time instead of from each series' end,
using only the rows up to it (missing values, with ``--missing ffill | interpolate``, filled from those rows alone).
Series the model never saw work: their scaler is fit on their own history (up to
the cutoff); series seen in training reuse the scaler stored in the checkpoint.

**Scale.** Series are read, validated and predicted in chunks (``--chunk-size`` series; long files are streamed,
and files not grouped by id are first split into per-chunk files), so memory grows with the chunk, not the
input. Prediction runs through ``Trainer.predict``; chunks are sharded across ranks (and dataloader workers), so
``--trainer.devices N --trainer.strategy ddp [--trainer.num_nodes M]`` splits the reading, parsing and predicting.
Each rank's :class:`ForecastWriter` (a ``BasePredictionWriter``) writes its part files next to the output
(a shared file system is needed across nodes); after a barrier, rank 0 merges them in input order: the chunks in
the order of the files and of each file's ids, and within a chunk its series sorted by id (so the order of a file
whose ids are not grouped depends on ``--chunk-size``; the forecasts do not).

**Safety.** The checkpoint is loaded with ``torch.load(weights_only=True)`` and the model class is looked up among
the imported tsattn forecasters, never imported from a name in the file. Invalid or too-short series are skipped
and listed in the summary with the reason. The output, the ``--skipped`` list and the plots are written to temporary
files and moved into place with ``os.replace``; an existing file is kept unless ``--overwrite`` is given (checked
before predicting: the output, ``--skipped`` and the plots of wide files, whose names are known from the file names;
the other plots are checked before anything is written), and an unwritable location is refused up front.
"""

from __future__ import annotations

import csv
import gc
import glob as globlib
import hashlib
import importlib
import json
import logging
import os
import pickle
import re
import shutil
import sys
import tempfile
import time
import urllib.parse
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import lightning as L
import numpy as np
import pandas as pd
import torch
from lightning.pytorch.callbacks import BasePredictionWriter, TQDMProgressBar
from pandas.tseries.frequencies import to_offset
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from tsattn.atomic import atomic_path
from tsattn.data import (
    SeriesDataModule,
    id_csv_options,
    not_text,
    read_series,
    require_pyarrow,
    separator_problem,
)
from tsattn.models.base import Forecaster
from tsattn.models.registry import (
    OBJECT_HPARAMS,
    checkpoint_class,
    forecaster_class,
    identify_class,
    init_params,
)

__all__ = [
    "CheckpointError",
    "ForecastError",
    "ForecastSummary",
    "ForecastWriter",
    "LoadedCheckpoint",
    "OutputExistsError",
    "check_new_file",
    "forecast",
    "load_checkpoint",
    "main",
    "tidy_forecasts",
]

log = logging.getLogger(__name__)

_DATA_KEY = SeriesDataModule.__qualname__  # where Lightning stores the DataModule state in a checkpoint
# Packages whose classes a checkpoint may name for its optimizer, scheduler or loss (used by --refit only).
_TRUSTED_PREFIXES = ("torch.optim.", "torch.nn.", "tsattn.")
_SUFFIXES = {".csv": ",", ".tsv": "\t"}
_OUTPUTS = (".csv", ".parquet", ".pq")
_BLOCK_ROWS = 100_000  # rows per block when streaming or scanning a long CSV
_ROW_TO_LINE = 2  # data row 0 is on line 2 (line 1 is the header)

T = TypeVar("T")


class ForecastError(ValueError):
    """A problem with the arguments, the inputs or the output; the message is one line saying what to do."""


class CheckpointError(ForecastError):
    """The checkpoint cannot be used (missing, unsafe, or from an unknown model class)."""


class OutputExistsError(ForecastError, FileExistsError):
    """The output file exists and ``overwrite`` was not given."""


# ============================================================================================ checkpoints


@dataclass
class LoadedCheckpoint:
    """A forecaster restored from a checkpoint, with what is needed to rebuild its data side or retrain it.

    ``hparams``: the constructor arguments (plain data); ``data_state``: the SeriesDataModule state (columns,
    lookback, horizon, scalers, ...); ``epochs``: the training epochs behind the weights; ``raw_hparams``: the
    checkpoint's hyperparameters as stored; ``batch_size``: the training batch size, where the checkpoint names it.
    """

    model: Forecaster
    model_class: type[Forecaster]
    hparams: dict[str, Any]
    data_state: dict[str, Any]
    epochs: int
    path: str
    raw_hparams: dict[str, Any] = field(default_factory=dict)
    batch_size: int | None = None

    def training_hparams(self) -> dict[str, Any]:
        """Constructor arguments for a fresh copy to train (``--refit``): ``hparams`` plus the optimizer,
        scheduler and loss, rebuilt from their stored class paths when those name torch or tsattn classes."""
        kwargs = dict(self.hparams)
        params = init_params(self.model_class)
        for name in OBJECT_HPARAMS:
            if name in params and name in self.raw_hparams:
                obj = _object_from_config(name, self.raw_hparams[name])
                if obj is not None:
                    kwargs[name] = obj
        return kwargs

    def new_model(self) -> Forecaster:
        """A freshly initialised forecaster with the same class and hyperparameters."""
        return self.model_class(**self.training_hparams())


def _resolve_class(
    hparams: dict[str, Any], state_dict: dict[str, torch.Tensor], model: str | None
) -> type[Forecaster]:
    try:
        if model:
            return forecaster_class(model)
        cls = checkpoint_class(hparams)
    except ValueError as err:
        msg = str(err)
        if not model:
            msg += "; if you trust it, pass --model " + str(hparams.get("_class_path"))
        raise CheckpointError(msg) from None
    if cls is not None:
        return cls
    try:
        return identify_class(hparams, state_dict)
    except ValueError as err:
        raise CheckpointError(f"{err}; pass --model NAME") from None


def _object_from_config(name: str, value: Any) -> Any:
    """An optimizer / scheduler callable or a loss module from a stored ``{"class_path", "init_args"}``."""
    if not (isinstance(value, dict) and isinstance(value.get("class_path"), str)):
        return None
    path = value["class_path"]
    if not path.startswith(_TRUSTED_PREFIXES):
        log.warning("%s %r is not a torch or tsattn class: using the default instead", name, path)
        return None
    module, _, attr = path.rpartition(".")
    try:
        obj = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError):
        log.warning("%s %r not found: using the default instead", name, path)
        return None
    args = dict(value.get("init_args") or {})
    return obj(**args) if name == "loss" else partial(obj, **args)


def refusal(err: pickle.UnpicklingError) -> str:
    """Why ``torch.load(weights_only=True)`` refused a checkpoint, in one line (torch's text spans a page)."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(err))
    found = re.search(r"Unsupported global: GLOBAL (\S+)", text)
    reason = f"it would import {found.group(1)}" if found else (text.strip().splitlines() or [type(err).__name__])[0]
    return f"refusing to load it: it holds objects other than tensors and plain data ({reason})"


def load_checkpoint(path: str | os.PathLike, model: str | None = None) -> LoadedCheckpoint:
    """Restore a forecaster and its data state from *path*, safely (``torch.load(weights_only=True)``).

    The class comes from ``model`` (a name or import path) if given, else from the class path LightningCLI stored
    (looked up among imported forecasters), else it is identified from the hyperparameters and state-dict keys.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint {path} not found")
    with open(path, "rb") as f:
        head = f.read(4)
    if head[:2] != b"PK" and head[:1] != b"\x80":  # torch.save writes a zip archive (or, before 1.6, a pickle)
        raise CheckpointError(f"{path}: not a checkpoint file; give a .ckpt written by `tsattn fit` (its checkpoints/)")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise CheckpointError(f"{path}: {refusal(err)}") from None
    except (RuntimeError, EOFError, OSError) as err:
        raise CheckpointError(f"{path}: not a readable checkpoint ({err})") from None
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise CheckpointError(f"{path}: not a Lightning checkpoint (no state_dict)")
    raw = dict(ckpt.get("hyper_parameters") or {})
    state = ckpt.get(_DATA_KEY)
    if not isinstance(state, dict):
        raise CheckpointError(
            f"{path}: no {_DATA_KEY} state in the checkpoint, so its columns and scalers are unknown; train with "
            "`tsattn fit` or Trainer.fit(model, datamodule=SeriesDataModule(...))"
        )
    cls = _resolve_class(raw, ckpt["state_dict"], model)
    params = init_params(cls)
    hparams = {k: v for k, v in raw.items() if k in params and k not in OBJECT_HPARAMS}
    try:
        net = cls(**hparams)
        net.load_state_dict(ckpt["state_dict"], strict=True)
    except (TypeError, ValueError, RuntimeError) as err:
        raise CheckpointError(f"{path}: cannot restore {cls.__name__}: {' '.join(str(err).split())}") from None
    net.eval()
    data_hparams = ckpt.get("datamodule_hyper_parameters") or {}
    batch_size = data_hparams.get("batch_size") if isinstance(data_hparams, dict) else None
    return LoadedCheckpoint(net, cls, hparams, dict(state), _epochs_trained(ckpt), path, raw,
                            int(batch_size) if isinstance(batch_size, int) and batch_size > 0 else None)


def _epochs_trained(ckpt: dict[str, Any]) -> int:
    """The training epochs behind a checkpoint: the fit loop's count of processed epochs (one saved at the end of
    epoch e has seen e + 1, one saved after the fit all of them), or, without it, the stored epoch + 1."""
    try:
        return int(ckpt["loops"]["fit_loop"]["epoch_progress"]["current"]["processed"])
    except (KeyError, TypeError, ValueError):
        return int(ckpt.get("epoch", 0)) + 1


# ============================================================================================ inputs


@dataclass
class _Context:
    """What each rank needs to turn raw series into prediction batches (plain data; pickled to workers)."""

    state: dict[str, Any]
    target_cols: list[str]
    lookback: int
    horizon: int
    id_col: str | None
    id_explicit: bool
    time_col: str | None
    time_explicit: bool
    missing: str
    batch_size: int
    cutoffs: list[pd.Timestamp] | None = None
    fresh_scalers: bool = False
    with_history: bool = False

    def module(self, frame: pd.DataFrame, id_col: str | None, time_col: str | None) -> SeriesDataModule:
        """A prediction DataModule over *frame* with the checkpoint's settings (``for_prediction``)."""
        st = {**self.state, "id_col": id_col, "time_col": time_col, "target_cols": list(self.target_cols)}
        if self.fresh_scalers:
            st.update(series_ids=[], loc=[], scale=[])  # every scaler fit on the rows it is given
        return SeriesDataModule.for_prediction(st, frame, missing=self.missing, batch_size=self.batch_size)


@dataclass
class _Layout:
    """How one file is read: long (``id_col``) or wide, its time column, and whether columns become series."""

    long: bool
    id_col: str | None
    time_col: str | None
    melt: bool  # one-channel model, file without its column: every numeric column is a series


@dataclass
class _Piece:
    """A part of a chunk: one wide file, or the rows (grouped file) or ids (ungrouped file) of a long file."""

    path: str
    sep: str
    layout: _Layout
    start: int = 0
    stop: int = 0
    ids: list[str] | None = None
    exclude: dict[str, str] = field(default_factory=dict)  # id -> reason (duplicates across files)


@dataclass
class _Chunk:
    pieces: list[_Piece]
    planned: int  # series expected (for the progress bar)


class _Skip(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _input_files(source: str | os.PathLike | Sequence[str | os.PathLike]) -> list[Path]:
    """The CSV/TSV files named by a path, a directory or a glob (or a list of them), sorted."""
    if isinstance(source, str | os.PathLike):
        sources = [source]
    else:
        sources = list(source)
    files: list[Path] = []
    for src in sources:
        text = os.fspath(src)
        path = Path(text)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in _SUFFIXES)
            if not found:
                raise ForecastError(f"{text}: the directory holds no .csv or .tsv files")
            files.extend(found)
        elif path.is_file():
            files.append(path)
        elif globlib.has_magic(text):
            found = sorted(Path(p) for p in globlib.glob(text, recursive=True) if Path(p).is_file())
            if not found:
                raise ForecastError(f"{text}: the pattern matches no file")
            files.extend(found)
        else:
            raise ForecastError(f"{text}: no such file, directory or glob match")
    seen: set[Path] = set()
    unique = []
    for f in files:
        key = f.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(f)
    return unique


def _sep(path: Path) -> str:
    return _SUFFIXES.get(path.suffix.lower(), ",")


def _header(path: Path, sep: str) -> list[str]:
    if path.suffix.lower() in (".parquet", ".pq"):
        raise _Skip(f"{path.name}: a Parquet file; forecast and backtest read .csv and .tsv files (tsattn fit reads "
                    "Parquet too): write it with df.to_csv(path, index=False)")
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            row = next(csv.reader(f, delimiter=sep), None)
    except UnicodeDecodeError as err:
        raise _Skip(not_text(path, err)) from None
    if not row:
        raise _Skip(f"{path.name}: the file is empty")
    problem = separator_problem(path.name, row)
    if problem:
        raise _Skip(problem)
    return [c for c in row]


def _layout(header: list[str], ctx: _Context, name: str) -> _Layout:
    """Long or wide, the time column and the value columns of a file with columns *header* (or a _Skip)."""
    long = ctx.id_col is not None and ctx.id_col in header
    if ctx.id_explicit and not long:
        raise _Skip(f"{name}: no id column '{ctx.id_col}' (columns: {', '.join(header)})")
    time_col = ctx.time_col if ctx.time_col in header else None
    if ctx.time_explicit and time_col is None:
        raise _Skip(f"{name}: no time column '{ctx.time_col}' (columns: {', '.join(header)})")
    missing = [c for c in ctx.target_cols if c not in header]
    if not missing:
        return _Layout(long, ctx.id_col if long else None, time_col, melt=False)
    if len(ctx.target_cols) == 1:
        return _Layout(long, ctx.id_col if long else None, time_col, melt=True)
    raise _Skip(
        f"{name}: lacks the column(s) {missing} the model was trained on (it forecasts {ctx.target_cols} together)"
    )


def _scan_ids(path: Path, sep: str, id_col: str) -> tuple[list[str], list[int], bool, int]:
    """One streaming pass over the id column: (ids in order of appearance, rows per id, grouped, empty-id rows).

    ``grouped``: every id's rows are contiguous, so a chunk of ids is a range of rows.
    """
    ids: list[str] = []
    counts: list[int] = []
    where: dict[str, int] = {}
    grouped, last, empty = True, None, 0
    reader = pd.read_csv(path, sep=sep, usecols=[id_col], chunksize=_BLOCK_ROWS, **id_csv_options(path, sep, id_col))
    for block in reader:
        col = block[id_col].fillna("").to_numpy(dtype=object)
        if len(col) == 0:
            continue
        if grouped:
            starts = np.concatenate([[0], np.flatnonzero(col[1:] != col[:-1]) + 1])
            stops = np.concatenate([starts[1:], [len(col)]])
            for a, b in zip(starts.tolist(), stops.tolist(), strict=True):
                uid = col[a]
                if uid == last:
                    counts[where[uid]] += b - a
                elif uid in where:
                    grouped = False
                    counts[where[uid]] += b - a
                else:
                    where[uid] = len(ids)
                    ids.append(uid)
                    counts.append(b - a)
                last = uid
        else:
            vc = pd.Series(col).value_counts(sort=False)
            for uid, n in vc.items():
                if uid in where:
                    counts[where[uid]] += int(n)
                else:
                    where[uid] = len(ids)
                    ids.append(uid)
                    counts.append(int(n))
    if "" in where:
        empty = counts[where[""]]
    return ids, counts, grouped, empty


def _plan(
    files: list[Path], ctx: _Context, chunk_size: int
) -> tuple[list[_Chunk], list[tuple[str, str | None, str]]]:
    """Split the inputs into chunks of at most *chunk_size* series; files that cannot be used are skipped."""
    chunks: list[_Chunk] = []
    skipped: list[tuple[str, str | None, str]] = []
    owner: dict[str, str] = {}  # unique_id -> file it came from
    wide: list[_Piece] = []

    def flush_wide() -> None:
        if wide:
            chunks.append(_Chunk(list(wide), len(wide)))
            wide.clear()

    for path in files:
        sep = _sep(path)
        try:
            layout = _layout(_header(path, sep), ctx, path.name)
        except _Skip as s:
            skipped.append((path.name, None, s.reason))
            continue
        except (OSError, UnicodeDecodeError, csv.Error) as err:
            skipped.append((path.name, None, f"{path.name}: unreadable ({_one_line(err)})"))
            continue
        if not layout.long:
            uid = path.stem
            if uid in owner:
                skipped.append((uid, None, f"{path.name}: unique_id '{uid}' also comes from {owner[uid]}"))
                continue
            owner[uid] = path.name
            wide.append(_Piece(str(path), sep, layout))
            if len(wide) >= chunk_size:
                flush_wide()
            continue
        flush_wide()
        try:
            ids, counts, grouped, empty = _scan_ids(path, sep, layout.id_col)
        except (ValueError, OSError, pd.errors.ParserError) as err:
            skipped.append((path.name, None, f"{path.name}: unreadable ({_one_line(err)})"))
            continue
        if not ids:
            skipped.append((path.name, None, f"{path.name}: no data rows (header only)"))
            continue
        if empty:
            skipped.append(
                (path.name, None, f"{path.name}: {empty} row(s) with an empty id in column '{layout.id_col}'")
            )
        if not grouped:
            log.info("%s: rows are not grouped by '%s'; splitting it into per-chunk files first", path.name,
                     layout.id_col)
        row = 0
        for start in range(0, len(ids), chunk_size):
            block_ids = ids[start : start + chunk_size]
            block_counts = counts[start : start + chunk_size]
            exclude = {}
            for uid in block_ids:
                if uid == "":
                    exclude[uid] = "empty id"
                elif uid in owner:
                    exclude[uid] = f"{path.name}: unique_id '{uid}' also comes from {owner[uid]}"
                    skipped.append((uid, None, exclude[uid]))
                else:
                    owner[uid] = path.name
            n_rows = int(sum(block_counts))
            piece = _Piece(str(path), sep, layout, exclude=exclude)
            if grouped:
                piece.start, piece.stop = row, row + n_rows
            else:
                piece.ids = [u for u in block_ids]
            row += n_rows
            planned = len(block_ids) - len(exclude)
            if planned or not grouped:
                chunks.append(_Chunk([piece], planned))
    flush_wide()
    return chunks, skipped


# ============================================================================================ reading chunks


class _RowReader:
    """Streams one CSV and returns rows ``[start, stop)`` for increasing, non-overlapping ranges."""

    def __init__(self, path: str, sep: str, id_col: str) -> None:
        self._iter = iter(
            pd.read_csv(path, sep=sep, chunksize=_BLOCK_ROWS, low_memory=False, **id_csv_options(path, sep, id_col))
        )
        self._block: pd.DataFrame | None = None
        self._block_start = 0

    def read(self, start: int, stop: int) -> pd.DataFrame:
        parts = []
        while True:
            if self._block is None:
                try:
                    self._block = next(self._iter)
                except StopIteration:
                    break
            b0, b1 = self._block_start, self._block_start + len(self._block)
            lo, hi = max(start, b0), min(stop, b1)
            if lo < hi:
                parts.append(self._block.iloc[lo - b0 : hi - b0])
            if b1 <= stop:
                self._block, self._block_start = None, b1
                if b1 == stop:
                    break
            else:
                break
        if not parts:
            return pd.DataFrame()
        out = pd.concat(parts) if len(parts) > 1 else parts[0]
        return out


def _spill(path: str, sep: str, id_col: str, chunk_of: dict[str, int], directory: Path) -> dict[int, Path]:
    """Split an ungrouped long CSV into one CSV per chunk (only the chunks in *chunk_of*), in one pass.

    Each spilled row keeps its original line number in a ``__line__`` column (for error messages).
    """
    files: dict[int, Path] = {}
    row = 0
    options = id_csv_options(path, sep, id_col)
    for block in pd.read_csv(path, sep=sep, chunksize=_BLOCK_ROWS, low_memory=False, **options):
        block = block.assign(__line__=np.arange(row, row + len(block)) + _ROW_TO_LINE)
        row += len(block)
        keys = block[id_col].fillna("").map(chunk_of)
        for k, rows in block[keys.notna()].groupby(keys[keys.notna()].astype(int), sort=False):
            k = int(k)
            dest = directory / f"chunk-{k:06d}.csv"
            rows.to_csv(dest, mode="a", header=k not in files, index=False)
            files[k] = dest
    return files


def _rewrite(message: str, lines: np.ndarray | None, source: str) -> str:
    """A read_series message about a DataFrame, re-pointed at the file: its name and line numbers."""
    text = _one_line(message).replace("<DataFrame>", source)
    if lines is not None:

        def to_lines(match: re.Match) -> str:
            nums = [int(n) for n in re.findall(r"\d+", match.group(2))]
            mapped = [str(int(lines[n])) if 0 <= n < len(lines) else str(n) for n in nums]
            return ("lines " if len(nums) > 1 else "line ") + " and ".join(mapped)

        text = re.sub(r"(row positions?) (\d+(?: and \d+)*)", to_lines, text)
    return text


def _isolate(
    frame: pd.DataFrame,
    id_col: str,
    build: Callable[[pd.DataFrame], T],
    lines: np.ndarray | None,
    source: str,
) -> tuple[list[T], list[tuple[str, str]]]:
    """``build`` on all series at once; where it fails, bisect the ids until each bad series is alone.

    Returns the built objects (one per group that worked) and ``(id, reason)`` for each series that fails alone.
    Costs about three builds' worth of rows per bad series, and one build when nothing is wrong.
    """
    ids = list(pd.unique(frame[id_col]))
    built: list[T] = []
    skipped: list[tuple[str, str]] = []
    col = frame[id_col]

    def attempt(group: list[str]) -> None:
        if len(group) == len(ids):
            part, part_lines = frame, lines
        else:
            mask = col.isin(group).to_numpy()
            part, part_lines = frame[mask], (lines[mask] if lines is not None else None)
        try:
            built.append(build(part))
        except ValueError as err:
            if len(group) == 1:
                skipped.append((str(group[0]), _rewrite(str(err), part_lines, source)))
                return
            half = len(group) // 2
            attempt(group[:half])
            attempt(group[half:])

    if ids:
        attempt(ids)
    return built, skipped


def _melt(sf_frame: pd.DataFrame, columns: list[str], target: str) -> pd.DataFrame:
    """Canonical frame with several columns -> one column *target*, each column its own ``<id>/<column>``."""
    parts = [
        pd.DataFrame(
            {"unique_id": sf_frame["unique_id"].astype(str) + "/" + col, "ds": sf_frame["ds"], target: sf_frame[col]}
        )
        for col in columns
    ]
    out = pd.concat(parts, ignore_index=True)
    return out.sort_values(["unique_id", "ds"], kind="stable").reset_index(drop=True)


def _too_short(counts: pd.Series, ctx: _Context) -> dict[str, str]:
    short = counts[counts < ctx.lookback]
    return {
        str(uid): f"has {int(n)} rows; the model needs at least lookback={ctx.lookback} rows of history"
        for uid, n in short.items()
    }


# ============================================================================================ batches


class _BatchMeta:
    """Where each row of a prediction batch belongs (kept out of the tensors, passed through to the writer).

    ``uid`` (B,) series ids; ``cutoff`` (B,) last history timestamp; ``ds`` (B, H) forecast timestamps;
    ``history_ds`` (B, L) or None.
    """

    __slots__ = ("chunk", "cutoff", "ds", "history_ds", "part", "uid")

    def __init__(self, chunk: int, part: int, uid: np.ndarray, cutoff: np.ndarray, ds: np.ndarray,
                 history_ds: np.ndarray | None) -> None:
        self.chunk, self.part, self.uid, self.cutoff, self.ds = chunk, part, uid, cutoff, ds
        self.history_ds = history_ds


def _fixed_step_ns(freq: str | None) -> int | None:
    """Nanoseconds per step for fixed-length frequencies (ticks and n-day steps on tz-naive data), else None."""
    if freq is None:
        return None
    off = to_offset(freq)
    if isinstance(off, pd.offsets.Tick):
        return int(off.nanos)
    if isinstance(off, pd.offsets.Day):
        return int(off.n) * 86_400_000_000_000
    return None


def _module_batches(dm: SeriesDataModule, ctx: _Context, chunk: int, first_part: int) -> Iterator[dict[str, Any]]:
    """The prediction batches of *dm* (one window per series, its last ``lookback`` rows), with a ``meta``."""
    frame = dm.series_frame.frame
    uids = np.asarray(dm.series_ids, dtype=object)
    sizes = frame.groupby("unique_id", sort=False).size().to_numpy()  # in series_ids order (frame order)
    ends = np.cumsum(sizes)
    ds_all = frame["ds"].to_numpy(dtype="datetime64[ns]")
    last = ds_all[ends - 1]  # (S,)
    h, lb = ctx.horizon, ctx.lookback
    step = _fixed_step_ns(dm.freq)
    future = None
    if step is not None:
        future = last[:, None] + (np.arange(1, h + 1, dtype=np.int64) * step).astype("timedelta64[ns]")  # (S, H)
    part = first_part
    for batch in dm.predict_dataloader():
        sidx = batch["series_idx"].numpy()
        if future is not None:
            ds = future[sidx]
        else:
            tidx = batch["time_idx"].numpy()
            ds = np.stack([dm.future_timestamps(int(s), int(t), h).to_numpy(dtype="datetime64[ns]")
                           for s, t in zip(sidx, tidx, strict=True)])
        hist = None
        if ctx.with_history:
            hist = np.stack([ds_all[ends[s] - lb : ends[s]] for s in sidx])
        batch["meta"] = _BatchMeta(chunk, part, uids[sidx], last[sidx], ds, hist)
        part += 1
        yield batch


def _cut(frame: pd.DataFrame, cutoff: pd.Timestamp, ctx: _Context) -> tuple[pd.DataFrame, list[tuple[str, str]]]:
    """Rows up to *cutoff* of every series that has enough of them; ``(id, reason)`` for the others."""
    g = frame.groupby("unique_id", sort=False)["ds"]
    first, last = g.min(), g.max()
    kept = frame[frame["ds"] <= cutoff]
    counts = kept.groupby("unique_id", sort=False).size().reindex(first.index, fill_value=0)
    bad: dict[str, str] = {}
    for uid in first.index:
        if cutoff > last[uid]:
            bad[str(uid)] = f"cutoff {cutoff} is after the series' last timestamp {last[uid]}"
        elif counts[uid] < ctx.lookback:
            bad[str(uid)] = (
                f"has {int(counts[uid])} rows up to cutoff {cutoff}; the model needs lookback={ctx.lookback}"
            )
    if bad:
        kept = kept[~kept["unique_id"].isin(list(bad))]
    return kept, list(bad.items())


def _same_history(
    kept: pd.DataFrame, cutoff: pd.Timestamp, ends: dict[str, tuple[pd.Timestamp, pd.Timestamp]]
) -> tuple[pd.DataFrame, list[tuple[str, str]]]:
    """*kept* without the series whose history ends on the row an earlier cutoff's ended on (its forecast would be
    written twice under one key); ``ends`` records each series' last row and the cutoff that first reached it."""
    same: list[tuple[str, str]] = []
    for uid, last in kept.groupby("unique_id", sort=False)["ds"].max().items():
        earlier = ends.get(str(uid))
        if earlier is not None and earlier[0] == last:
            same.append((str(uid), f"cutoff {cutoff} ends on the same row ({last}) as cutoff {earlier[1]}"))
        else:
            ends[str(uid)] = (last, cutoff)
    if same:
        kept = kept[~kept["unique_id"].isin([uid for uid, _ in same])]
    return kept, same


@dataclass
class _ChunkReport:
    chunk: int
    series: list[str] = field(default_factory=list)
    windows: int = 0
    parts: int = 0
    skipped: list[tuple[str, str | None, str]] = field(default_factory=list)
    pid: int = field(default_factory=os.getpid)

    def write(self, directory: Path) -> None:
        with atomic_path(directory / f"chunk-{self.chunk:06d}.json") as tmp:
            tmp.write_text(json.dumps({**asdict(self), "series": len(set(self.series))}))


@dataclass
class _Reading:
    """What reading long files keeps across a shard's chunks: a row reader per grouped file, the per-chunk files
    an ungrouped file was split into, the folder holding them, and the chunks the shard owns."""

    rows: dict[str, _RowReader]
    spills: dict[str, dict[int, Path]]
    scratch: Path
    owned: list[int]


class _ForecastWindows(IterableDataset):
    """Prediction batches of the chunks this rank (and dataloader worker) owns: chunk k goes to shard k mod n.

    Each item is already a batch (the loader uses ``batch_size=None``). After a chunk's last batch, its report
    (series forecast, windows, skipped series with reasons) is written to ``parts_dir``.
    """

    def __init__(self, chunks: list[_Chunk], ctx: _Context, parts_dir: str, rank: int = 0, world: int = 1) -> None:
        super().__init__()
        self.chunks, self.ctx, self.parts_dir = chunks, ctx, Path(parts_dir)
        self.rank, self.world = rank, world

    def owned(self) -> list[int]:
        info = get_worker_info()
        workers, wid = (info.num_workers, info.id) if info is not None else (1, 0)
        shards, shard = self.world * workers, self.rank * workers + wid
        return [k for k in range(len(self.chunks)) if k % shards == shard]

    def planned_windows(self) -> int:
        """Windows (series x cutoffs) planned for this rank, for the progress bar."""
        n_cut = len(self.ctx.cutoffs) if self.ctx.cutoffs else 1
        return sum(self.chunks[k].planned * n_cut for k in range(len(self.chunks)) if k % self.world == self.rank)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        scratch = Path(tempfile.mkdtemp(prefix="tsattn-spill-"))
        owned = self.owned()
        reading = _Reading({}, {}, scratch, owned)
        try:
            for k in owned:
                report = _ChunkReport(k)
                for piece in self.chunks[k].pieces:
                    try:
                        for dm, _ in self._modules(k, piece, reading, report):
                            for batch in _module_batches(dm, self.ctx, k, report.parts):
                                report.parts += 1
                                report.windows += len(batch["meta"].uid)
                                report.series.extend(batch["meta"].uid.tolist())
                                yield batch
                    except _Skip as s:
                        report.skipped.append((Path(piece.path).name, None, s.reason))
                report.write(self.parts_dir)
                # A DataModule sits in a reference cycle (Lightning's save_hyperparameters keeps its __init__
                # frame), so only the cyclic collector frees a chunk's data; run it now, or memory grows with
                # the number of chunks until Python's next full collection.
                gc.collect()
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    # ------------------------------------------------------------------ chunk -> DataModules
    def _modules(
        self, k: int, piece: _Piece, reading: _Reading, report: _ChunkReport
    ) -> Iterator[tuple[SeriesDataModule, pd.Timestamp | None]]:
        ctx, layout, name = self.ctx, piece.layout, Path(piece.path).name
        skip = report.skipped
        if ctx.cutoffs:
            # Rows after a cutoff must not fill a missing value before it: cut the rows first, then fill.
            yield from self._at_cutoffs(self._frames(k, piece, reading, skip), skip, name)
            return
        if not layout.long:
            frames = self._wide(piece, skip)
            modules = self._canonical_modules(frames, skip, name)
        else:
            raw, lines = self._long_rows(k, piece, reading)
            id_col = layout.id_col
            if len(raw) == 0:
                return
            if ctx.missing in ("error", "ignore"):  # no rows are added, so too few rows is final
                short = _too_short(raw[id_col].value_counts(sort=False), ctx)
                if short:
                    skip.extend((uid, None, why) for uid, why in short.items())
                    keep = ~raw[id_col].isin(list(short)).to_numpy()
                    raw, lines = raw[keep], lines[keep]
            if layout.melt:
                sfs, bad = _isolate(
                    raw, id_col,
                    lambda part: read_series(part, id_col=id_col, time_col=layout.time_col, missing=ctx.missing),
                    lines, name,
                )
                skip.extend((uid, None, why) for uid, why in bad)
                frames = [(_melt(sf.frame, sf.target_cols, ctx.target_cols[0]), sf.freq) for sf in sfs]
                modules = self._canonical_modules(frames, skip, name)
            else:
                modules, bad = _isolate(raw, id_col, lambda part: ctx.module(part, id_col, layout.time_col),
                                        lines, name)
                skip.extend((uid, None, why) for uid, why in bad)
        for dm in modules:
            yield dm, None

    def _frames(self, k: int, piece: _Piece, reading: _Reading, skip: list) -> list[tuple[pd.DataFrame, str | None]]:
        """Canonical frames ``(frame, freq)`` of the piece's series, their missing values left unfilled."""
        ctx, layout = self.ctx, piece.layout
        if not layout.long:
            return self._wide(piece, skip, fill=False)
        raw, lines = self._long_rows(k, piece, reading)
        id_col = layout.id_col
        if len(raw) == 0:
            return []
        targets = None if layout.melt else ctx.target_cols
        sfs, bad = _isolate(
            raw, id_col,
            lambda part: read_series(part, id_col=id_col, time_col=layout.time_col, target_cols=targets,
                                     missing=ctx.missing, fill=False),
            lines, Path(piece.path).name,
        )
        skip.extend((uid, None, why) for uid, why in bad)
        return [(_melt(sf.frame, sf.target_cols, ctx.target_cols[0]) if layout.melt else sf.frame, sf.freq)
                for sf in sfs]

    def _wide(self, piece: _Piece, skip: list, fill: bool = True) -> list[tuple[pd.DataFrame, str | None]]:
        ctx, layout, path = self.ctx, piece.layout, Path(piece.path)
        try:
            sf = read_series(
                path,
                time_col=layout.time_col,
                target_cols=None if layout.melt else ctx.target_cols,
                missing=ctx.missing,
                fill=fill,
            )
        except ValueError as err:
            skip.append((path.stem, None, _one_line(err)))
            return []
        frame = _melt(sf.frame, sf.target_cols, ctx.target_cols[0]) if layout.melt else sf.frame
        return [(frame, sf.freq)]

    def _canonical_modules(
        self, frames: list[tuple[pd.DataFrame, str | None]], skip: list, name: str
    ) -> list[SeriesDataModule]:
        """DataModules over canonical frames, one per frequency; series shorter than the lookback skipped."""
        by_freq: dict[str | None, list[pd.DataFrame]] = {}
        for frame, freq in frames:
            by_freq.setdefault(freq, []).append(frame)
        modules: list[SeriesDataModule] = []
        for group in by_freq.values():
            frame = pd.concat(group, ignore_index=True) if len(group) > 1 else group[0]
            short = _too_short(frame.groupby("unique_id", sort=False).size(), self.ctx)
            if short:
                skip.extend((uid, None, why) for uid, why in short.items())
                frame = frame[~frame["unique_id"].isin(list(short))]
            if len(frame) == 0:
                continue
            built, bad = _isolate(frame, "unique_id", lambda part: self.ctx.module(part, "unique_id", "ds"),
                                  None, name)
            skip.extend((uid, None, why) for uid, why in bad)
            modules.extend(built)
        return modules

    def _at_cutoffs(
        self, frames: list[tuple[pd.DataFrame, str | None]], skip: list, name: str
    ) -> Iterator[tuple[SeriesDataModule, pd.Timestamp]]:
        """A DataModule of the rows up to each cutoff (its missing values filled from those rows alone)."""
        for frame, _ in frames:
            ends: dict[str, tuple[pd.Timestamp, pd.Timestamp]] = {}  # id -> (last history row, its first cutoff)
            for cutoff in self.ctx.cutoffs:
                kept, bad = _cut(frame, cutoff, self.ctx)
                kept, same = _same_history(kept, cutoff, ends)
                skip.extend((uid, str(cutoff), why) for uid, why in bad + same)
                if len(kept) == 0:
                    continue
                built, worse = _isolate(kept, "unique_id", lambda part: self.ctx.module(part, "unique_id", "ds"),
                                        None, name)
                skip.extend((uid, str(cutoff), why) for uid, why in worse)
                for module in built:
                    yield module, cutoff

    def _long_rows(self, k: int, piece: _Piece, reading: _Reading) -> tuple[pd.DataFrame, np.ndarray]:
        """The raw rows of the chunk's series (an empty id read as ""; the piece's excluded ids left out), and the
        file line of each row."""
        raw, lines = self._read_long_rows(k, piece, reading)
        id_col = piece.layout.id_col
        raw[id_col] = raw[id_col].fillna("")
        keep = ~raw[id_col].isin(list(piece.exclude)).to_numpy()
        return (raw, lines) if keep.all() else (raw[keep], lines[keep])

    def _read_long_rows(self, k: int, piece: _Piece, reading: _Reading) -> tuple[pd.DataFrame, np.ndarray]:
        id_col = piece.layout.id_col
        readers, spills, scratch, owned = reading.rows, reading.spills, reading.scratch, reading.owned
        try:
            if piece.ids is None:
                reader = readers.get(piece.path)
                if reader is None:
                    reader = readers[piece.path] = _RowReader(piece.path, piece.sep, id_col)
                raw = reader.read(piece.start, piece.stop)
                return raw, np.arange(piece.start, piece.start + len(raw)) + _ROW_TO_LINE
            if piece.path not in spills:
                mine = {}
                for j in owned:
                    for other in self.chunks[j].pieces:
                        if other.path == piece.path and other.ids is not None:
                            mine.update(dict.fromkeys(other.ids, j))
                directory = scratch / f"file-{len(spills)}"
                directory.mkdir()
                spills[piece.path] = _spill(piece.path, piece.sep, id_col, mine, directory)
            dest = spills[piece.path].get(k)
            if dest is None:
                return pd.DataFrame(columns=[id_col]), np.zeros(0, dtype=np.int64)
            raw = pd.read_csv(dest, low_memory=False, **id_csv_options(dest, ",", id_col))
            lines = raw.pop("__line__").to_numpy()
            return raw, lines
        except (ValueError, OSError, pd.errors.ParserError) as err:
            raise _Skip(f"{Path(piece.path).name}: unreadable ({_one_line(err)})") from None


class _ForecastData(L.LightningDataModule):
    """Builds each rank's loader once the Trainer knows the rank (works with ddp, ddp_spawn and many nodes)."""

    def __init__(self, chunks: list[_Chunk], ctx: _Context, parts_dir: str, num_workers: int = 0) -> None:
        super().__init__()
        self.chunks, self.ctx, self.parts_dir, self.num_workers = chunks, ctx, parts_dir, num_workers

    def dataset(self) -> _ForecastWindows:
        trainer = self.trainer
        rank, world = (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)
        return _ForecastWindows(self.chunks, self.ctx, self.parts_dir, rank, world)

    def predict_dataloader(self) -> DataLoader:
        # Sharding is by chunk inside the dataset: each rank reads and parses only its own chunks, and no series
        # is padded in twice (as a DistributedSampler would do to even out the ranks).
        return DataLoader(self.dataset(), batch_size=None, num_workers=self.num_workers)


# ============================================================================================ writing


def tidy_forecasts(
    yhat: np.ndarray,
    uid: np.ndarray,
    ds: np.ndarray,
    cutoff: np.ndarray,
    target_cols: Sequence[str],
    quantiles: Sequence[float] | None = None,
    median_index: int = 0,
) -> pd.DataFrame:
    """Tidy table from forecasts ``yhat`` (B, H, C) or (B, H, C, Q) in original units.

    ``uid`` (B,) series ids, ``ds`` (B, H) timestamps, ``cutoff`` (B,). Rows are ordered by series, channel, step;
    ``unique_id`` is the series id when C == 1, else ``<series>/<column>``.
    """
    b, h, c = yhat.shape[:3]
    if c == 1:
        names = np.asarray(uid, dtype=object).reshape(b, 1)
    else:
        names = np.asarray([[f"{u}/{col}" for col in target_cols] for u in uid], dtype=object).reshape(b, c)
    columns: dict[str, Any] = {
        "unique_id": pd.array(np.repeat(names.reshape(-1), h), dtype="str"),
        "ds": np.broadcast_to(np.asarray(ds, dtype="datetime64[ns]")[:, None, :], (b, c, h)).reshape(-1),
        "cutoff": np.repeat(np.asarray(cutoff, dtype="datetime64[ns]"), c * h),
    }
    if yhat.ndim == 4:
        rows = np.ascontiguousarray(yhat.transpose(0, 2, 1, 3)).reshape(b * c * h, -1)  # (B*C*H, Q)
        columns["yhat"] = rows[:, median_index]
        for i, q in enumerate(quantiles or []):
            columns[f"yhat_q{q:g}"] = rows[:, i]
    else:
        columns["yhat"] = np.ascontiguousarray(yhat.transpose(0, 2, 1)).reshape(-1)  # (B*C*H,)
    return pd.DataFrame(columns)


def _date_format(table: pd.DataFrame) -> str:
    stamps = np.concatenate([table["ds"].to_numpy(dtype="datetime64[ns]").astype(np.int64),
                             table["cutoff"].to_numpy(dtype="datetime64[ns]").astype(np.int64)])
    if np.any(stamps % 1_000_000_000):
        return "%Y-%m-%d %H:%M:%S.%f"
    return "%Y-%m-%d %H:%M:%S"


def _safe_name(text: str) -> str:
    """A file name of *text*, another for every other text: percent-encoded (``a/b`` -> ``a%2Fb``), and a long one
    cut and told apart by a hash of the whole."""
    name = urllib.parse.quote(text, safe="") or "(empty)"  # quote leaves "(" encoded: no id gives this name
    if len(name) > 160:
        name = f"{name[:140]}-{hashlib.sha256(text.encode()).hexdigest()[:16]}"
    return name


def _plot_name(uid: str, cutoff: Any, many_cutoffs: bool) -> str:
    """The PNG file name of one series' forecast (from *cutoff* when there are several cutoffs)."""
    stem = _safe_name(str(uid))
    if many_cutoffs:
        stem += "@" + pd.Timestamp(cutoff).strftime("%Y%m%dT%H%M%S")
    return stem + ".png"


def _refuse_existing_plots(plot_dir: Path, names: Iterable[str]) -> None:
    clash = sorted(n for n in set(names) if (plot_dir / n).exists())
    if clash:
        more = f" (and {len(clash) - 1} more)" if len(clash) > 1 else ""
        raise OutputExistsError(f"plot {plot_dir / clash[0]} exists{more}; pass --overwrite to replace it, or choose "
                                "another --plot folder")


@contextmanager
def _writing(path: str | os.PathLike, what: str) -> Iterator[None]:
    """Turns an OSError raised while writing *path* into a one-line ForecastError naming it."""
    try:
        yield
    except ForecastError:
        raise
    except OSError as err:
        raise ForecastError(f"cannot write {what} {path}: {err.strerror or _one_line(err)}") from None


class ForecastWriter(BasePredictionWriter):
    """Writes each prediction batch as a part file of its rank; after the last batch of every rank (a barrier),
    rank 0 merges the parts in input order into the output, atomically.

    Parts are named by chunk and batch, so the merged table does not depend on how many ranks wrote it. Plots are
    drawn into a hidden folder inside ``plot_dir`` (``plot_stage``) and moved into place after the table is
    written, so an existing plot is replaced only with ``overwrite``, and a failed run replaces none.
    """

    def __init__(
        self,
        parts_dir: str,
        output: str,
        n_chunks: int,
        target_cols: Sequence[str],
        quantiles: Sequence[float] | None = None,
        overwrite: bool = False,
        plot_dir: str | None = None,
        planned_skips: Sequence[tuple[str, str | None, str]] = (),
        many_cutoffs: bool = False,
    ) -> None:
        super().__init__(write_interval="batch")
        self.parts_dir, self.output = Path(parts_dir), Path(output)
        self.n_chunks, self.target_cols = n_chunks, list(target_cols)
        self.columns = ["unique_id", "ds", "cutoff", "yhat"] + [f"yhat_q{q:g}" for q in quantiles or []]
        self.overwrite, self.plot_dir = overwrite, Path(plot_dir) if plot_dir else None
        self.plot_stage = self.plot_dir / f"{self.parts_dir.name}.plots" if self.plot_dir is not None else None
        self.planned_skips = [tuple(s) for s in planned_skips]
        self.many_cutoffs = many_cutoffs
        self.parquet = self.output.suffix.lower() in (".parquet", ".pq")

    def _part(self, chunk: int, part: int) -> Path:
        return self.parts_dir / f"chunk-{chunk:06d}-{part:06d}.{'parquet' if self.parquet else 'csv'}"

    def write_on_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        prediction: Any,
        batch_indices: Sequence[int] | None,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        meta: _BatchMeta = batch["meta"]
        yhat = prediction["yhat"].detach().double().cpu().numpy()
        quantiles = getattr(pl_module, "quantiles", None)
        table = tidy_forecasts(yhat, meta.uid, meta.ds, meta.cutoff, self.target_cols, quantiles,
                               getattr(pl_module, "median_index", 0))
        path = self._part(meta.chunk, meta.part)
        if self.parquet:
            table.to_parquet(path, index=False)
        else:
            table.to_csv(path, header=False, index=False, date_format=_date_format(table))
        if self.plot_dir is not None:
            self._plot(batch, yhat, meta, quantiles)

    def _plot(self, batch: dict[str, Any], yhat: np.ndarray, meta: _BatchMeta, quantiles: Any) -> None:
        from tsattn.plotting import plot_forecast

        history = (batch["past"] * batch["scale"] + batch["loc"]).detach().float().cpu().numpy()  # (B, L, C)
        self.plot_stage.mkdir(parents=True, exist_ok=True)
        for i, uid in enumerate(meta.uid):
            cutoff = pd.Timestamp(meta.cutoff[i])
            fig = plot_forecast(
                history[i],
                yhat[i],
                history_index=pd.DatetimeIndex(meta.history_ds[i]) if meta.history_ds is not None else None,
                forecast_index=pd.DatetimeIndex(meta.ds[i]),
                quantiles=quantiles if yhat.ndim == 4 else None,
                channel_names=self.target_cols,
                title=f"{uid} (cutoff {cutoff})",
            )
            fig.savefig(self.plot_stage / _plot_name(uid, cutoff, self.many_cutoffs), dpi=90)

    def on_predict_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        trainer.strategy.barrier("tsattn-forecast-merge")  # every rank has written its parts
        if trainer.is_global_zero:
            self.merge()

    # ------------------------------------------------------------------ merging (rank 0)
    def merge(self) -> dict[str, Any]:
        """Concatenate the parts in input order into the output (temp file + ``os.replace``), move the plots into
        place (refusing, before writing anything, plots that exist unless ``overwrite``); write the summary."""
        reports = []
        for k in range(self.n_chunks):
            path = self.parts_dir / f"chunk-{k:06d}.json"
            if not path.is_file():
                raise RuntimeError(f"chunk {k} was not processed by any rank ({path} missing)")
            reports.append(json.loads(path.read_text()))
        parts = [self._part(r["chunk"], p) for r in reports for p in range(r["parts"])]
        summary = {
            "output": str(self.output),
            "series": sum(r["series"] for r in reports),
            "windows": sum(r["windows"] for r in reports),
            "skipped": [list(s) for s in self.planned_skips] + [s for r in reports for s in r["skipped"]],
            "rows": 0,
            "written": False,
            "processes": len({r["pid"] for r in reports}),
        }
        stage = self.plot_stage
        plots = sorted(p.name for p in stage.iterdir()) if stage is not None and stage.is_dir() else []
        if plots and not self.overwrite:
            _refuse_existing_plots(self.plot_dir, plots)
        if summary["windows"]:
            with _writing(self.output, "output"):
                summary["rows"] = self._concat(parts)
            summary["written"] = True
        for name in plots:
            with _writing(self.plot_dir / name, "plot"):
                os.replace(stage / name, self.plot_dir / name)
        (self.parts_dir / "summary.json").write_text(json.dumps(summary))
        return summary

    def _concat(self, parts: list[Path]) -> int:
        rows = 0
        with atomic_path(self.output, replace=self.overwrite) as tmp:  # an output that appeared meanwhile is kept
            if self.parquet:
                import pyarrow.parquet as pq

                writer = None
                for part in parts:
                    table = pq.read_table(part)
                    if writer is None:
                        writer = pq.ParquetWriter(tmp, table.schema)
                    writer.write_table(table)
                    rows += table.num_rows
                if writer is not None:
                    writer.close()
            else:
                with open(tmp, "wb") as out:
                    out.write((",".join(self.columns) + "\n").encode())
                    for part in parts:
                        with open(part, "rb") as f:
                            data = f.read()
                        rows += data.count(b"\n")
                        out.write(data)
        return rows


class _ProgressBar(TQDMProgressBar):
    """Lightning's predict bar counting series windows (series x cutoffs) instead of batches, against the
    windows planned for this rank (the chunks are streamed, so the loader has no length). Skipped series leave
    the bar short of its total."""

    def __init__(self) -> None:
        super().__init__()
        self.planned = 0

    def init_predict_tqdm(self):
        bar = super().init_predict_tqdm()
        bar.total = self.planned or None
        bar.unit = " series"
        bar.set_description("Forecasting")
        return bar

    def on_predict_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        pass  # keep the total and the name: one streamed loader

    def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if self.predict_progress_bar is not None:
            self.predict_progress_bar.update(len(batch["meta"].uid))


# ============================================================================================ API


@dataclass
class ForecastSummary:
    """What ``forecast`` did: input series forecast, windows (series x cutoffs), output rows, skipped series."""

    output: str
    series: int
    windows: int
    rows: int
    skipped: list[tuple[str, str | None, str]]
    seconds: float
    written: bool
    processes: int = 1

    def format(self, max_skipped: int = 20) -> str:
        rate = self.series / self.seconds if self.seconds > 0 else float("nan")
        lines = [
            f"forecast {self.series} series ({self.windows} windows) -> {self.output} ({self.rows} rows) in "
            f"{self.seconds:.1f} s ({rate:.1f} series/s, {self.processes} process{'es' if self.processes > 1 else ''})"
            if self.written
            else "no series could be forecast; nothing written",
        ]
        if self.skipped:
            lines.append(f"skipped {len(self.skipped)}:")
            for uid, cutoff, reason in self.skipped[:max_skipped]:
                at = f" at cutoff {cutoff}" if cutoff else ""
                lines.append(f"  {uid}{at}: {reason}")
            if len(self.skipped) > max_skipped:
                lines.append(f"  ... and {len(self.skipped) - max_skipped} more (pass --skipped FILE for all)")
        else:
            lines.append("skipped 0 series")
        return "\n".join(lines)


def _check_writable(folder: Path, what: str) -> None:
    """Refuse up front a *folder* that cannot be made or written: probe its nearest existing ancestor with a
    temporary file (permission bits do not tell for root, read-only mounts or immutable folders)."""
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ForecastError(f"{what}: {existing} is a file, not a folder; choose another location")
    try:
        fd, probe = tempfile.mkstemp(prefix=".tsattn-probe-", dir=existing)
    except OSError as err:
        raise ForecastError(
            f"{what}: cannot write in {existing} ({err.strerror or _one_line(err)}); choose a writable location"
        ) from None
    os.close(fd)
    os.unlink(probe)


def check_new_file(path: Path, what: str, overwrite: bool) -> None:
    """Refuse up front (a ForecastError naming *what*) a file to write that is a folder, exists (unless
    *overwrite*) or cannot be written; a missing folder is fine (it is made)."""
    if path.is_dir():
        raise ForecastError(f"{what} {path} is a directory; name a file")
    if path.exists() and not overwrite:
        raise OutputExistsError(f"{what} {path} exists; pass --overwrite to replace it")
    _check_writable(path.parent, f"{what} {path}")


def _check_output(output: Path, overwrite: bool) -> None:
    if output.suffix.lower() not in _OUTPUTS:
        raise ForecastError(f"output {output} must end in .csv or .parquet")
    if output.is_dir():
        raise ForecastError(f"output {output} is a directory; name a .csv or .parquet file")
    if output.suffix.lower() != ".csv":
        require_pyarrow(f"output {output}")
    check_new_file(output, "output", overwrite)


def _check_plot_dir(plot_dir: Path) -> None:
    if plot_dir.exists() and not plot_dir.is_dir():
        raise ForecastError(f"--plot {plot_dir} is a file; name a folder for the PNGs")
    _check_writable(plot_dir, f"--plot {plot_dir}")


def _known_plot_names(chunks: list[_Chunk], cutoffs: list[pd.Timestamp] | None) -> list[str]:
    """The plot names known before reading: wide files forecast as one series, named after the file."""
    many = bool(cutoffs and len(cutoffs) > 1)
    stems = [Path(p.path).stem for c in chunks for p in c.pieces if not p.layout.long and not p.layout.melt]
    return [_plot_name(stem, cut, many) for stem in stems for cut in (cutoffs if many else [None])]


def _parse_cutoffs(cutoffs: Sequence[Any] | None) -> list[pd.Timestamp] | None:
    if not cutoffs:
        return None
    values: list[str] = []
    for c in cutoffs:
        values.extend(v.strip() for v in str(c).strip("[] ").split(",") if v.strip())
    out = []
    for v in values:
        try:
            ts = pd.Timestamp(v)
        except (ValueError, TypeError):
            raise ForecastError(f"--cutoffs: {v!r} is not a timestamp (e.g. 2024-03-01 or '2024-03-01 12:00')") from None
        if ts.tzinfo is not None:
            ts = ts.tz_convert("UTC").tz_localize(None)  # the data's clock (read_series converts to UTC)
        out.append(ts)
    return sorted(set(out))


def _context(ckpt: LoadedCheckpoint, *, id_col: str | None, time_col: str | None, missing: str | None,
             batch_size: int, cutoffs: list[pd.Timestamp] | None, fresh_scalers: bool = False,
             with_history: bool = False) -> _Context:
    st = ckpt.data_state
    return _Context(
        state=st,
        target_cols=list(st["target_cols"]),
        lookback=int(st["lookback"]),
        horizon=int(st["horizon"]),
        id_col=id_col or st.get("id_col"),
        id_explicit=id_col is not None,
        time_col=time_col or st.get("time_col"),
        time_explicit=time_col is not None,
        missing=missing or st.get("missing") or "error",
        batch_size=int(batch_size),
        cutoffs=cutoffs,
        fresh_scalers=fresh_scalers,
        with_history=with_history,
    )


def _parts_dir(output: Path, key: dict[str, Any]) -> Path:
    """A folder beside the output, named the same in every rank (and on every node) of one run."""
    digest = hashlib.sha1(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:12]
    return output.parent / f".{output.name}.parts-{digest}"


def _trainer_kwargs(trainer: dict[str, Any] | None) -> dict[str, Any]:
    kwargs = {
        "accelerator": "auto",
        "devices": 1,
        "logger": False,
        "enable_checkpointing": False,
        "enable_model_summary": False,
    }
    kwargs.update({k: v for k, v in (trainer or {}).items() if v is not None})
    kwargs.pop("callbacks", None)
    return kwargs


def forecast(
    ckpt: str | os.PathLike | LoadedCheckpoint,
    source: str | os.PathLike | Sequence[str | os.PathLike],
    output: str | os.PathLike,
    *,
    cutoffs: Sequence[Any] | None = None,
    overwrite: bool = False,
    plot_dir: str | os.PathLike | None = None,
    batch_size: int = 256,
    chunk_size: int = 500,
    id_col: str | None = None,
    time_col: str | None = None,
    missing: str | None = None,
    model: str | None = None,
    num_workers: int = 0,
    trainer: dict[str, Any] | None = None,
) -> ForecastSummary | None:
    """Forecast every series in *source* with the checkpoint's model and write the tidy table to *output*.

    See the module docstring for inputs, outputs and scaling. ``trainer``: Trainer arguments (``devices``,
    ``strategy``, ``num_nodes``, ``accelerator``, ...). Returns the summary on rank 0 and None on other ranks.
    Raises :class:`ForecastError` (e.g. :class:`OutputExistsError`) with a one-line message.
    """
    start = time.perf_counter()
    output = Path(output)
    _check_output(output, overwrite)
    plots = Path(plot_dir) if plot_dir is not None else None
    if plots is not None:
        _check_plot_dir(plots)
    if batch_size < 1 or chunk_size < 1:
        raise ForecastError("--batch-size and --chunk-size must be positive")
    loaded = ckpt if isinstance(ckpt, LoadedCheckpoint) else load_checkpoint(ckpt, model)
    cut = _parse_cutoffs(cutoffs)
    files = _input_files(source)
    if any(f.resolve() == output.resolve() for f in files):
        raise ForecastError(f"output {output} is one of the inputs; name another file")
    ctx = _context(loaded, id_col=id_col, time_col=time_col, missing=missing, batch_size=batch_size,
                   cutoffs=cut, with_history=plot_dir is not None)
    chunks, planned_skips = _plan(files, ctx, chunk_size)
    if plots is not None and not overwrite:
        _refuse_existing_plots(plots, _known_plot_names(chunks, cut))
    key = {"output": str(output.resolve()), "ckpt": loaded.path, "inputs": [str(f.resolve()) for f in files],
           "cutoffs": [str(c) for c in cut or []], "batch": batch_size, "chunk": chunk_size}
    parts = _parts_dir(output, key)
    with _writing(parts, "the parts folder beside the output"):
        parts.mkdir(parents=True, exist_ok=True)

    kwargs = _trainer_kwargs(trainer)
    data = _ForecastData(chunks, ctx, str(parts), num_workers)
    writer = ForecastWriter(
        str(parts), str(output), len(chunks), ctx.target_cols, getattr(loaded.model, "quantiles", None),
        overwrite, os.fspath(plots) if plots is not None else None, planned_skips,
        many_cutoffs=bool(cut and len(cut) > 1),
    )
    made_plot_dir = plots is not None and not plots.exists()

    def clean_up(failed: bool) -> None:
        shutil.rmtree(parts, ignore_errors=True)
        if writer.plot_stage is not None:
            shutil.rmtree(writer.plot_stage, ignore_errors=True)
            if failed and made_plot_dir:
                with suppress(OSError):
                    plots.rmdir()  # only if still empty: the run made it and wrote nothing there

    callbacks: list[Any] = [writer]
    bar = None
    if kwargs.get("enable_progress_bar", True) is not False:
        bar = _ProgressBar()
        callbacks.append(bar)
    pl_trainer = L.Trainer(callbacks=callbacks, **kwargs)
    if bar is not None:
        bar.planned = _ForecastWindows(chunks, ctx, str(parts), pl_trainer.global_rank,
                                       pl_trainer.world_size).planned_windows()
    try:
        with warnings.catch_warnings():
            # Batch indices are not needed: each batch carries its own series ids and timestamps.
            warnings.filterwarnings("ignore", message=".*infer the batch indices.*")
            pl_trainer.predict(loaded.model, datamodule=data, return_predictions=False)
    except BaseException:
        if pl_trainer.is_global_zero:
            clean_up(failed=True)
        raise
    if not pl_trainer.is_global_zero:
        return None
    try:
        info = json.loads((parts / "summary.json").read_text())
    finally:
        clean_up(failed=False)
    return ForecastSummary(
        output=info["output"],
        series=int(info["series"]),
        windows=int(info["windows"]),
        rows=int(info["rows"]),
        skipped=[(s[0], s[1], s[2]) for s in info["skipped"]],
        seconds=time.perf_counter() - start,
        written=bool(info["written"]),
        processes=int(info["processes"]),
    )


# ============================================================================================ command line


def _trainer_parser(prog: str, description: str):
    """A jsonargparse parser with ``--trainer.*`` taken from the Trainer's signature (as in ``tsattn fit``)."""
    from lightning.pytorch.cli import LightningArgumentParser

    parser = LightningArgumentParser(prog=prog, description=description, env_prefix="TSATTN", default_env=False)
    return parser


def _add_trainer_args(parser: Any, defaults: dict[str, Any]) -> None:
    parser.add_class_arguments(
        L.Trainer, "trainer", fail_untyped=False, instantiate=False, sub_configs=True, skip={"callbacks"}
    )
    parser.set_defaults({f"trainer.{k}": v for k, v in defaults.items()})


def _trainer_config(parser: Any, cfg: Any) -> dict[str, Any]:
    instantiate = getattr(parser, "instantiate", None) or parser.instantiate_classes
    init = instantiate(cfg)
    return {k: v for k, v in dict(init.trainer).items() if v is not None}


def _add_common_args(parser: Any) -> None:
    parser.add_argument("--ckpt", type=str, required=True, help="Checkpoint of a tsattn forecaster (.ckpt).")
    parser.add_argument("--input", type=str, required=True,
                        help="A CSV file, a directory of CSV files, or a glob (quote it) of CSV files.")
    parser.add_argument("--id-col", type=str, default=None,
                        help="Series id column of long CSVs (default: the one the model was trained with).")
    parser.add_argument("--time-col", type=str, default=None,
                        help="Time column (default: the training one if present, else detected).")
    parser.add_argument("--missing", type=str, default=None,
                        help="Missing-data policy: error, ffill, interpolate or ignore (default: as in training).")
    parser.add_argument("--model", type=str, default=None,
                        help="Model class, for checkpoints that do not name one (e.g. saved by a plain Trainer).")
    parser.add_argument("--batch-size", type=int, default=256, help="Series windows per prediction batch.")
    parser.add_argument("--overwrite", action="store_true", help="Replace an existing output file.")


def _fail(prog: str, message: str, code: int = 2) -> int:
    print(f"{prog}: error: {_one_line(message)}", file=sys.stderr)
    return code


# What a command reports as one line (``TSATTN_DEBUG=1`` re-raises): bad input, and files it cannot read or write.
_REPORTED = (ForecastError, ValueError, OSError)


def _report(prog: str, err: BaseException) -> int:
    """One line on stderr for an error in *_REPORTED* (call it in the ``except`` block)."""
    if os.environ.get("TSATTN_DEBUG"):
        raise err
    return _fail(prog, str(err) or type(err).__name__)


def _write_skipped(skipped: Sequence[tuple[str, str | None, str]], path: Path, overwrite: bool) -> None:
    """Every skipped series with its cutoff and reason as CSV (a header only if none), atomically."""
    table = pd.DataFrame(list(skipped), columns=["unique_id", "cutoff", "reason"])
    with _writing(path, "--skipped file"), atomic_path(path, replace=overwrite) as tmp:
        table.to_csv(tmp, index=False)


def main(argv: Sequence[str] | None = None) -> int:
    """``tsattn forecast``: returns 0, or non-zero with one line on stderr (``TSATTN_DEBUG=1`` for the traceback)."""
    prog = "tsattn forecast"
    parser = _trainer_parser(prog, "Forecast every series of CSV files with a trained checkpoint.")
    _add_common_args(parser)
    parser.add_argument("--output", type=str, required=True, help="Forecast table to write: .csv or .parquet.")
    parser.add_argument("--cutoffs", type=str, nargs="+", default=None,
                        help="Forecast from these timestamps (using rows up to each) instead of each series' end; a "
                             "cutoff whose last row is an earlier cutoff's is skipped and reported.")
    parser.add_argument("--plot", type=str, default=None,
                        help="Folder for one PNG per series (and cutoff), named by its id percent-encoded: "
                             "series/column -> series%2Fcolumn.png.")
    parser.add_argument("--chunk-size", type=int, default=500, help="Series read and predicted at a time.")
    parser.add_argument("--num-workers", type=int, default=0, help="Dataloader workers per rank (parse in parallel).")
    parser.add_argument("--skipped", type=str, default=None,
                        help="Write every skipped series and why to this CSV (kept if it exists, unless --overwrite).")
    _add_trainer_args(parser, {"devices": 1, "logger": False, "enable_checkpointing": False,
                               "enable_model_summary": False})
    cfg = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    skipped = Path(cfg.skipped) if cfg.skipped else None
    try:
        if skipped is not None:
            if skipped.resolve() == Path(cfg.output).resolve():
                raise ForecastError(f"--skipped {skipped} is also the --output; name another file")
            check_new_file(skipped, "--skipped file", bool(cfg.overwrite))
        summary = forecast(
            cfg.ckpt,
            cfg.input,
            cfg.output,
            cutoffs=cfg.cutoffs,
            overwrite=bool(cfg.overwrite),
            plot_dir=cfg.plot,
            batch_size=cfg.batch_size,
            chunk_size=cfg.chunk_size,
            id_col=cfg.id_col,
            time_col=cfg.time_col,
            missing=cfg.missing,
            model=cfg.model,
            num_workers=cfg.num_workers,
            trainer=_trainer_config(parser, cfg),
        )
    except _REPORTED as err:
        return _report(prog, err)
    if summary is None:
        return 0  # not rank 0: the merge and the summary are rank 0's
    print(summary.format())
    if skipped is not None:
        try:
            _write_skipped(summary.skipped, skipped, bool(cfg.overwrite))
        except _REPORTED as err:
            return _report(prog, err)
    if not summary.written:
        return _fail(prog, "no series could be forecast (see the reasons above)", code=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
