"""Rolling-origin evaluation of a checkpoint: ``tsattn backtest``.

    tsattn backtest --ckpt model.ckpt --input data.csv --windows 10 --step 24
    tsattn backtest --ckpt model.ckpt --input data.csv --windows 5 --step 168 --refit --output metrics.csv \\
        --forecasts folds.csv --plot backtest.png

**Folds.** A series of ``T`` rows gets ``N = --windows`` cutoffs, ``S = --step`` rows apart, the last one
``horizon`` rows before its end: fold ``i`` (0..N-1) forecasts rows ``[p_i, p_i + H)`` from the history rows
``[0, p_i)``, with ``p_i = T - H - (N-1-i) S``. Cutoffs are counted from each series' own end and reported as the
last history timestamp. A fold without ``lookback`` history rows is skipped for that series (and reported).

**Leakage.** Everything fitted on data sees only the rows before the fold's cutoff, and so do the missing values
filled by ``--missing ffill | interpolate``: each fold's history is filled on its own (actuals missing from the input
stay empty in the forecasts and are not scored).

- without ``--refit`` the checkpoint's model predicts every fold, and the scaler of every series is fit on the
  fold's history rows (the stored scalers are not used: they were fit on training data that may run past the
  cutoff). The model's weights are fixed, so a fold whose cutoff lies inside the model's training data is
  optimistic; ``--refit`` gives the clean estimate.
- with ``--refit`` a fresh model of the same class and hyperparameters is trained per fold on the fold's history
  only: a new SeriesDataModule on the truncated frame, split train/val by the stored ratios renormalised without a
  test share (default 0.875/0.125), its scaler fit on the train rows; the checkpoint's training batch size,
  ``max_epochs`` as many as the checkpoint had seen (``--trainer.max_epochs`` to change), the final weights, seeded
  by ``--seed``. A series is forecast by a model trained on rows up to its own cutoff: in a panel whose series end
  at different times, each cutoff time of a fold gets its own model, trained on every series' rows up to it.

**Metrics** (original units), per ``unique_id`` (one per channel, named as in ``tsattn forecast``) and horizon
step, over folds: MSE, MAE, sMAPE (%), MASE (the error over the in-sample MAE of the seasonal naive forecast on the
fold's history, season = the data's period or 1; as :func:`tsattn.metrics.mase`, per fold) and, for quantile
models, the pinball loss (mean over levels) and the coverage of the interval between the lowest and highest level.
The summary averages them over steps per ``unique_id`` and overall. MASE is undefined (NaN, with a warning) for a
fold whose history is constant (the naive forecast's in-sample error is 0), no longer than one season, or without
two known values one season apart; such folds are left out of its averages, the ``all`` row's included.
"""

from __future__ import annotations

import gc
import inspect
import logging
import os
import sys
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pandas as pd
import torch
from lightning.pytorch.callbacks import BasePredictionWriter
from torch.utils.data import ConcatDataset, DataLoader, Dataset

from tsattn.atomic import atomic_path
from tsattn.data import SeriesDataModule, id_csv_options, read_series
from tsattn.forecast import (
    _REPORTED,
    ForecastError,
    LoadedCheckpoint,
    _add_common_args,
    _add_trainer_args,
    _check_output,
    _Context,
    _context,
    _header,
    _input_files,
    _isolate,
    _layout,
    _melt,
    _one_line,
    _report,
    _sep,
    _Skip,
    _trainer_config,
    _trainer_parser,
    _writing,
    check_new_file,
    load_checkpoint,
)
from tsattn.metrics import coverage, mae, mse, pinball_loss, smape

__all__ = ["BacktestResult", "backtest", "fold_positions", "main"]

log = logging.getLogger(__name__)

_REFIT_RATIOS = (0.875, 0.125, 0.0)
_ROWS_PER_PREDICT = 2_000_000  # history rows held (as fold DataModules) before they are predicted and dropped


def fold_positions(length: int, horizon: int, windows: int, step: int) -> list[int]:
    """First forecast row ``p_i`` of each fold (N,) of a series of *length* rows; the last fold ends at the end."""
    return [length - horizon - (windows - 1 - i) * step for i in range(windows)]


@dataclass
class BacktestResult:
    """``forecasts``: one row per unique_id, fold and step (``cutoff, ds, y, yhat`` [+ quantiles]);
    ``metrics``: per unique_id and step; ``summary``: per unique_id and ``all`` over steps and folds (``points``:
    the forecast values scored, one per fold and step whose actual is known)."""

    forecasts: pd.DataFrame
    metrics: pd.DataFrame
    summary: pd.DataFrame
    skipped: list[tuple[str, str | None, str]] = field(default_factory=list)
    quantiles: list[float] | None = None
    season: int = 1
    refit: bool = False

    def format(self, max_rows: int = 20, max_skipped: int = 20) -> str:
        cols = [c for c in self.summary.columns if c not in ("unique_id", "folds", "points")]
        head = f"{'unique_id':<28}{'folds':>6}" + "".join(f"{c:>11}" for c in cols)
        kind = "refit per fold" if self.refit else "checkpoint weights, scalers fit per fold"
        lines = [f"backtest ({kind}; MASE season {self.season}; original units)", head, "-" * len(head)]
        body, total = self.summary.iloc[:-1], self.summary.iloc[-1:]
        shown = body.head(max_rows)
        for _, r in pd.concat([shown, total]).iterrows():
            if r["unique_id"] == "all" and len(body) > len(shown):
                lines.append(f"  ... {len(body) - len(shown)} more unique_ids (all in --output)")
            cells = "".join(f"{r[c]:>11.4g}" for c in cols)
            lines.append(f"{str(r['unique_id'])[:27]:<28}{int(r['folds']):>6}{cells}")
        if self.skipped:
            lines.append(f"skipped {len(self.skipped)}:")
            for uid, cutoff, reason in self.skipped[:max_skipped]:
                at = f" (fold at {cutoff})" if cutoff else ""
                lines.append(f"  {uid}{at}: {reason}")
            if len(self.skipped) > max_skipped:
                lines.append(f"  ... and {len(self.skipped) - max_skipped} more")
        return "\n".join(lines)


# ============================================================================================ reading


def _read_inputs(
    source: str | os.PathLike | pd.DataFrame, ctx: _Context
) -> tuple[list[tuple[pd.DataFrame, str | None]], list[tuple[str, str | None, str]]]:
    """`_read_frames` of a DataFrame, a file, or each file of a directory or glob (series ids must not repeat
    across files; a file that cannot be read is skipped with the reason, unless it is the only one)."""
    if isinstance(source, pd.DataFrame):
        return _read_frames(source, ctx)
    files = _input_files(source)
    if len(files) == 1:
        return _read_frames(files[0], ctx)
    by_freq: dict[str | None, list[pd.DataFrame]] = {}
    skipped: list[tuple[str, str | None, str]] = []
    owner: dict[str, str] = {}
    for path in files:
        try:
            frames, bad = _read_frames(path, ctx)
        except ForecastError as err:
            skipped.append((path.name, None, _one_line(err)))
            continue
        skipped.extend(bad)
        for frame, freq in frames:
            ids = frame["unique_id"].astype(str)
            taken = sorted({uid for uid in ids.unique() if uid in owner})
            skipped.extend((uid, None, f"{path.name}: series '{uid}' also comes from {owner[uid]}") for uid in taken)
            frame = frame[~ids.isin(taken).to_numpy()]
            owner.update(dict.fromkeys(frame["unique_id"].astype(str).unique(), path.name))
            if len(frame):
                by_freq.setdefault(freq, []).append(frame)
    frames = [(pd.concat(g, ignore_index=True) if len(g) > 1 else g[0], f) for f, g in by_freq.items()]
    return frames, skipped


def _read_frames(
    source: str | os.PathLike | pd.DataFrame, ctx: _Context
) -> tuple[list[tuple[pd.DataFrame, str | None]], list[tuple[str, str | None, str]]]:
    """Canonical frames (one per frequency) of every valid series in *source*, and the skipped ones."""
    is_frame = isinstance(source, pd.DataFrame)
    name = "<DataFrame>" if is_frame else Path(source).name
    skipped: list[tuple[str, str | None, str]] = []
    try:
        header = [str(c) for c in source.columns] if is_frame else _header(Path(source), _sep(Path(source)))
        layout = _layout(header, ctx, name)
    except _Skip as s:
        raise ForecastError(s.reason) from None
    except OSError as err:
        raise ForecastError(f"{source}: unreadable ({_one_line(err)})") from None
    targets = None if layout.melt else ctx.target_cols

    def read(part: Any):
        # missing values are filled in each fold's history alone (by its DataModule): rows after a cutoff never
        # fill one before it; the actuals keep them missing, and the metrics leave them out
        return read_series(part, id_col=layout.id_col, time_col=layout.time_col, target_cols=targets,
                           missing=ctx.missing, fill=False)

    if layout.long:
        sep = None if is_frame else _sep(Path(source))
        raw = source.copy() if is_frame else pd.read_csv(source, sep=sep, low_memory=False,
                                                          **id_csv_options(source, sep, layout.id_col))
        raw[layout.id_col] = raw[layout.id_col].fillna("")
        empty = (raw[layout.id_col] == "").to_numpy()
        if empty.any():
            skipped.append((name, None, f"{int(empty.sum())} row(s) with an empty id in '{layout.id_col}'"))
            raw = raw[~empty]
        lines = None if is_frame else np.arange(len(empty))[~empty] + 2
        sfs, bad = _isolate(raw, layout.id_col, read, lines, name)
        skipped.extend((uid, None, why) for uid, why in bad)
    else:
        try:
            sfs = [read(source)]
        except ValueError as err:
            raise ForecastError(_one_line(err)) from None
    by_freq: dict[str | None, list[pd.DataFrame]] = {}
    for sf in sfs:
        frame = _melt(sf.frame, sf.target_cols, ctx.target_cols[0]) if layout.melt else sf.frame
        by_freq.setdefault(sf.freq, []).append(frame)
    frames = [(pd.concat(g, ignore_index=True) if len(g) > 1 else g[0], f) for f, g in by_freq.items()]
    return frames, skipped


# ============================================================================================ predicting


class _Tagged(Dataset):
    """A DataModule's window dataset with each item tagged by its fold."""

    def __init__(self, dataset: Dataset, fold: int) -> None:
        self.dataset, self.fold = dataset, fold

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        item = dict(self.dataset[i])
        item["fold"] = torch.tensor(self.fold, dtype=torch.int64)
        return item


class _Collector(BasePredictionWriter):
    """Keeps ``(fold, series_idx, yhat)`` of every prediction batch in memory (a backtest is one process)."""

    def __init__(self) -> None:
        super().__init__(write_interval="batch")
        self.rows: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx,
                           dataloader_idx=0) -> None:
        self.rows.append((batch["fold"].cpu().numpy(), prediction["series_idx"].cpu().numpy(),
                          prediction["yhat"].detach().double().cpu().numpy()))


def _predict(model: L.LightningModule, parts: list[tuple[int, SeriesDataModule]], batch_size: int,
             trainer_kwargs: dict[str, Any]) -> dict[tuple[int, str], np.ndarray]:
    """Forecasts ``{(fold, series id): yhat (H, C[, Q])}`` of the prediction windows of every fold's module."""
    datasets = [_Tagged(dm.predict_dataloader().dataset, fold) for fold, dm in parts]
    if not datasets:
        return {}
    loader = DataLoader(ConcatDataset(datasets), batch_size=batch_size)
    collector = _Collector()
    kwargs = {**trainer_kwargs, "devices": 1, "num_nodes": 1, "logger": False, "enable_checkpointing": False,
              "enable_model_summary": False, "enable_progress_bar": False}
    kwargs.pop("strategy", None)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*infer the batch indices.*")
        L.Trainer(callbacks=[collector], **kwargs).predict(model, dataloaders=loader, return_predictions=False)
    modules = dict(parts)
    out: dict[tuple[int, str], np.ndarray] = {}
    for folds, sidx, yhat in collector.rows:
        for f, s, y in zip(folds.tolist(), sidx.tolist(), yhat, strict=True):
            out[(f, modules[f].series_ids[s])] = y
    return out


# ============================================================================================ metrics


def _naive_scale(values: np.ndarray, p: int, season: int) -> np.ndarray | None:
    """In-sample MAE of the seasonal naive forecast on rows [0, p) of *values* (T, C), over the pairs of rows
    with both values known: (C,), NaN where there is no such pair; None if p <= season."""
    if p <= season:
        return None
    errors = np.abs(values[season:p] - values[: p - season])
    known = np.isfinite(errors)
    with np.errstate(invalid="ignore"):
        return np.where(known, errors, 0.0).sum(axis=0) / known.sum(axis=0)


def _scale_errors(actual: np.ndarray, pred: np.ndarray, scale: np.ndarray | None) -> np.ndarray:
    """|actual - pred| / *scale* (`_naive_scale`): (H, C); NaN where undefined.

    The same quantity :func:`tsattn.metrics.mase` averages, kept per step so it can be reported per step. Undefined:
    at most ``season`` history rows (*scale* None), or a zero scale (a constant history) in that channel.
    """
    if scale is None:
        return np.full(actual.shape, np.nan)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(scale > 0, np.abs(actual - pred) / scale, np.nan)


_CONSTANT = "is constant (the seasonal naive forecast's in-sample error is 0)"
_NO_PAIRS = "holds no two known values one season apart"
_SHORT = "holds no more than one season ({season} rows), so the seasonal naive forecast has no in-sample error"


def _warn_undefined_mase(undefined: list[tuple[str, int, str]], shown: int = 10) -> None:
    """One warning per reason, naming the unique_ids (and folds) whose MASE is undefined."""
    reasons: dict[str, dict[str, list[int]]] = {}
    for uid, fold, why in undefined:
        reasons.setdefault(why, {}).setdefault(uid, []).append(fold)
    for why, folds in reasons.items():
        names = [f"{uid} (fold{'s' if len(f) > 1 else ''} {', '.join(map(str, sorted(f)))})"
                 for uid, f in list(folds.items())[:shown]]
        more = f" and {len(folds) - shown} more" if len(folds) > shown else ""
        log.warning("MASE is undefined where the history before the cutoff %s: NaN, and left out of the MASE "
                    "averages and the 'all' row, for %s%s", why, ", ".join(names), more)


def _metric_row(group: pd.DataFrame, quantile_cols: list[str], quantiles: list[float] | None) -> dict[str, float]:
    group = group[group["y"].notna()]  # an actual missing from the input is not scored
    if group.empty:
        return dict.fromkeys(["mse", "mae", "smape", "mase"] + (["pinball", "coverage"] if quantiles else []),
                             float("nan"))
    y = torch.tensor(group["y"].to_numpy(dtype=np.float64))
    yhat = torch.tensor(group["yhat"].to_numpy(dtype=np.float64))
    row = {
        "mse": float(mse(yhat, y)),
        "mae": float(mae(yhat, y)),
        "smape": float(smape(yhat, y)),
        "mase": float(np.nanmean(group["scaled_error"])) if group["scaled_error"].notna().any() else float("nan"),
    }
    if quantiles:
        q = torch.tensor(group[quantile_cols].to_numpy(dtype=np.float64))  # (n, Q)
        row["pinball"] = float(pinball_loss(q, y, quantiles))
        row["coverage"] = float(coverage(q[:, 0], q[:, -1], y))
    return row


def _metrics(forecasts: pd.DataFrame, quantiles: list[float] | None) -> tuple[pd.DataFrame, pd.DataFrame]:
    qcols = [f"yhat_q{q:g}" for q in quantiles or []]
    per_step, per_uid = [], []
    for (uid, step), group in forecasts.groupby(["unique_id", "step"], sort=True):
        per_step.append({"unique_id": uid, "step": int(step), "folds": group["fold"].nunique(),
                         **_metric_row(group, qcols, quantiles)})
    for uid, group in forecasts.groupby("unique_id", sort=True):
        per_uid.append({"unique_id": uid, "folds": group["fold"].nunique(), "points": int(group["y"].count()),
                        **_metric_row(group, qcols, quantiles)})
    per_uid.append({"unique_id": "all", "folds": forecasts["fold"].nunique(), "points": int(forecasts["y"].count()),
                    **_metric_row(forecasts, qcols, quantiles)})
    return pd.DataFrame(per_step), pd.DataFrame(per_uid)


# ============================================================================================ the backtest


def _fold_plan(
    frame: pd.DataFrame, ctx: _Context, windows: int, step: int
) -> tuple[dict[str, list[int]], list[tuple[str, str | None, str]]]:
    """Each series' fold positions (``p_i``, or -1 where the fold lacks ``lookback`` history rows), skipped folds."""
    sizes = frame.groupby("unique_id", sort=False).size()
    ds = frame["ds"].to_numpy(dtype="datetime64[ns]")
    starts = np.concatenate([[0], np.cumsum(sizes.to_numpy())[:-1]])
    positions: dict[str, list[int]] = {}
    skipped: list[tuple[str, str | None, str]] = []
    for a, (uid, n) in zip(starts.tolist(), sizes.items(), strict=True):
        ps = fold_positions(int(n), ctx.horizon, windows, step)
        for i, p in enumerate(ps):
            if p < ctx.lookback:
                at = str(pd.Timestamp(ds[a + p - 1])) if p >= 1 else None
                skipped.append((str(uid), at, f"fold {i}: {max(p, 0)} history rows before the cutoff; the model "
                                             f"needs lookback={ctx.lookback} (series of {int(n)} rows)"))
                ps[i] = -1
        positions[str(uid)] = ps
    return positions, skipped


def _histories(frame: pd.DataFrame, positions: dict[str, list[int]], windows: int) -> Iterator[tuple[int, pd.DataFrame]]:
    """``(fold, rows before each series' cutoff)`` for every fold that has a series, built one at a time."""
    sizes = frame.groupby("unique_id", sort=False).size()
    row = frame.groupby("unique_id", sort=False).cumcount().to_numpy()
    for i in range(windows):
        limit = np.repeat([positions[str(u)][i] for u in sizes.index], sizes.to_numpy())  # (rows,)
        mask = row < limit
        if mask.any():
            yield i, frame[mask]


def backtest(
    ckpt: str | os.PathLike | LoadedCheckpoint,
    source: str | os.PathLike | pd.DataFrame,
    *,
    windows: int,
    step: int,
    refit: bool = False,
    id_col: str | None = None,
    time_col: str | None = None,
    missing: str | None = None,
    model: str | None = None,
    batch_size: int = 256,
    seed: int = 0,
    trainer: dict[str, Any] | None = None,
) -> BacktestResult:
    """Rolling-origin evaluation of the checkpoint on every series of *source* (see the module docstring).

    ``trainer``: Trainer arguments for prediction and, with ``refit``, for training each fold (``max_epochs``
    defaults to the checkpoint's epoch count). Runs in one process (``devices`` and ``num_nodes`` must be 1).
    """
    if windows < 1 or step < 1:
        raise ForecastError("--windows and --step must be positive integers")
    trainer = {k: v for k, v in (trainer or {}).items() if v is not None}
    for key in ("devices", "num_nodes"):
        if str(trainer.get(key, 1)) not in ("1", "auto"):
            raise ForecastError(f"backtest runs in one process; --trainer.{key} {trainer[key]} is not supported")
    loaded = ckpt if isinstance(ckpt, LoadedCheckpoint) else load_checkpoint(ckpt, model)
    ctx = _context(loaded, id_col=id_col, time_col=time_col, missing=missing, batch_size=batch_size, cutoffs=None,
                   fresh_scalers=True)
    frames, skipped = _read_inputs(source, ctx)
    season = int(ctx.state.get("period") or 1)
    quantiles = list(loaded.model.quantiles) if getattr(loaded.model, "quantiles", None) else None
    records: list[pd.DataFrame] = []
    undefined: list[tuple[str, int, str]] = []  # (unique_id, fold, why) without a MASE scale
    for frame, _ in frames:
        positions, bad = _fold_plan(frame, ctx, windows, step)
        skipped.extend(bad)
        folds = _histories(frame, positions, windows)
        if refit:
            preds, worse = _refit_predictions(loaded, folds, ctx, seed, trainer, windows)
        else:
            preds, worse = _fixed_predictions(loaded, folds, ctx, trainer)
        skipped.extend(worse)
        table, zero_scale = _forecast_rows(frame, positions, preds, ctx, season, quantiles, loaded)
        records.append(table)
        undefined.extend(zero_scale)
    forecasts = pd.concat(records, ignore_index=True) if records else pd.DataFrame()
    if forecasts.empty:
        raise ForecastError("no fold could be evaluated: " + "; ".join(f"{u}: {r}" for u, _, r in skipped[:3]))
    if undefined:
        _warn_undefined_mase(undefined)
    metrics, summary = _metrics(forecasts, quantiles)
    forecasts = forecasts.drop(columns=["scaled_error"])
    return BacktestResult(forecasts, metrics, summary, skipped, quantiles, season, refit)


def _fixed_predictions(
    loaded: LoadedCheckpoint, folds: Iterator[tuple[int, pd.DataFrame]], ctx: _Context, trainer: dict[str, Any]
) -> tuple[dict[tuple[int, str], np.ndarray], list[tuple[str, str | None, str]]]:
    """The checkpoint's forecasts for every fold: one module per fold (its own scalers), predicted together in
    groups of about ``_ROWS_PER_PREDICT`` history rows (so memory stays bounded with many long folds)."""
    preds: dict[tuple[int, str], np.ndarray] = {}
    skipped: list[tuple[str, str | None, str]] = []
    pending: list[tuple[int, SeriesDataModule]] = []
    rows = 0
    for fold, hist in folds:
        built, bad = _isolate(hist, "unique_id", lambda part: ctx.module(part, "unique_id", "ds"), None, _HISTORY)
        skipped.extend(_fold_skips(hist, fold, bad))
        pending.extend((fold, dm) for dm in built)
        rows += len(hist)
        if rows >= _ROWS_PER_PREDICT:
            preds.update(_predict(loaded.model, pending, ctx.batch_size, trainer))
            pending, rows = [], 0
            gc.collect()  # DataModules are freed by the cyclic collector only (see tsattn.forecast)
    if pending:
        preds.update(_predict(loaded.model, pending, ctx.batch_size, trainer))
    return preds, skipped


_HISTORY = "the history before the cutoff"


def _fold_skips(
    hist: pd.DataFrame, fold: int, bad: list[tuple[str, str]], note: str = ""
) -> list[tuple[str, str | None, str]]:
    """``(id, cutoff, reason)`` of the series of fold *fold* that `_isolate` could not build."""
    if not bad:
        return []
    last = hist.groupby("unique_id", sort=False)["ds"].max()
    return [(uid, str(last[uid]) if uid in last.index else None, f"fold {fold}{note}: {why}") for uid, why in bad]


def _refit_ratios(state: dict[str, Any]) -> tuple[float, float, float]:
    ratios = state.get("ratios")
    if state.get("split") == "ratio" and ratios and len(ratios) == 3 and float(ratios[1]) >= 0:
        train, val = float(ratios[0]), float(ratios[1])
        return train / (train + val), val / (train + val), 0.0
    return _REFIT_RATIOS


def _refit_predictions(
    loaded: LoadedCheckpoint,
    folds: Iterator[tuple[int, pd.DataFrame]],
    ctx: _Context,
    seed: int,
    trainer: dict[str, Any],
    windows: int,
) -> tuple[dict[tuple[int, str], np.ndarray], list[tuple[str, str | None, str]]]:
    from tqdm.auto import tqdm

    st = ctx.state
    ratios = _refit_ratios(st)
    fit_kwargs = {"max_epochs": loaded.epochs, "enable_progress_bar": False, **trainer, "logger": False,
                  "enable_checkpointing": False, "enable_model_summary": False, "devices": 1, "num_nodes": 1}
    train_batch = loaded.batch_size or inspect.signature(SeriesDataModule).parameters["batch_size"].default
    preds: dict[tuple[int, str], np.ndarray] = {}
    skipped: list[tuple[str, str | None, str]] = []

    def module(part: pd.DataFrame) -> SeriesDataModule:
        return SeriesDataModule(
            frame=part, lookback=ctx.lookback, horizon=ctx.horizon, split="ratio", ratios=ratios,
            target_cols=ctx.target_cols, id_col="unique_id", time_col="ds", missing=ctx.missing,
            scaler=st.get("scaler", "standard"), period=st.get("period"), batch_size=train_batch,
        )

    for fold, hist in tqdm(folds, total=windows, desc="Refitting folds", file=sys.stderr, leave=False):
        # One model per cutoff time: a series is forecast by a model trained on rows up to its own cutoff, other
        # series' included (in a panel whose series end apart, those with later cutoffs are cut at it).
        cutoffs = hist.groupby("unique_id", sort=False)["ds"].max()
        for cutoff, group in cutoffs.groupby(cutoffs, sort=True):
            targets = set(group.index)
            rows = hist[hist["ds"] <= cutoff] if len(group) < len(cutoffs) else hist
            built, bad = _isolate(rows, "unique_id", module, None, _HISTORY)
            skipped.extend(_fold_skips(hist, fold, [(u, why) for u, why in bad if u in targets], " (refit)"))
            for dm in built:
                if targets.isdisjoint(dm.series_ids):
                    continue
                L.seed_everything(seed, workers=True, verbose=False)
                net = loaded.new_model()
                with warnings.catch_warnings():
                    warnings.filterwarnings("ignore", message=".*(does not have many workers|val_dataloader).*")
                    L.Trainer(**fit_kwargs).fit(net, datamodule=dm)
                net.eval()
                forecasts = _predict(net, [(fold, dm)], ctx.batch_size, trainer)
                preds.update({key: yhat for key, yhat in forecasts.items() if key[1] in targets})
        gc.collect()  # the fold's DataModules and models sit in reference cycles
    return preds, skipped


def _forecast_rows(
    frame: pd.DataFrame,
    positions: dict[str, list[int]],
    preds: dict[tuple[int, str], np.ndarray],
    ctx: _Context,
    season: int,
    quantiles: list[float] | None,
    loaded: LoadedCheckpoint,
) -> tuple[pd.DataFrame, list[tuple[str, int, str]]]:
    """Tidy rows ``unique_id, fold, cutoff, ds, step, y, yhat`` (+ quantiles, scaled_error) for *frame*, and the
    ``(unique_id, fold, why)`` without a MASE scale (`_warn_undefined_mase`)."""
    h, cols = ctx.horizon, ctx.target_cols
    c = len(cols)
    median = getattr(loaded.model, "median_index", 0)
    values_all = frame[cols].to_numpy(dtype=np.float64)
    ds_all = frame["ds"].to_numpy(dtype="datetime64[ns]")
    sizes = frame.groupby("unique_id", sort=False).size()
    starts = dict(zip(sizes.index.astype(str), np.concatenate([[0], np.cumsum(sizes.to_numpy())[:-1]]), strict=True))
    out: dict[str, list[np.ndarray]] = {k: [] for k in ("unique_id", "fold", "cutoff", "ds", "step", "y", "yhat",
                                                        "scaled_error")}
    qparts: list[np.ndarray] = []
    undefined: list[tuple[str, int, str]] = []
    for (fold, uid), yhat in sorted(preds.items()):
        a = int(starts[uid])
        p = positions[uid][fold]
        values = values_all[a : a + int(sizes[uid])]
        actual = values[p : p + h]  # (H, C)
        point = yhat[..., median] if yhat.ndim == 3 else yhat  # (H, C)
        names = [uid] if c == 1 else [f"{uid}/{col}" for col in cols]
        out["unique_id"].append(np.repeat(np.asarray(names, dtype=object), h))
        out["fold"].append(np.full(c * h, fold))
        out["cutoff"].append(np.full(c * h, ds_all[a + p - 1]))
        out["ds"].append(np.tile(ds_all[a + p : a + p + h], c))
        out["step"].append(np.tile(np.arange(1, h + 1), c))
        out["y"].append(actual.T.reshape(-1))  # (C*H,) channel-major, as the names
        out["yhat"].append(point.T.reshape(-1))
        scale = _naive_scale(values, p, season)
        if scale is None:
            undefined.extend((name, fold, _SHORT.format(season=season)) for name in names)
        else:
            undefined.extend((names[j], fold, _CONSTANT) for j in np.flatnonzero(scale == 0))
            undefined.extend((names[j], fold, _NO_PAIRS) for j in np.flatnonzero(np.isnan(scale)))
        out["scaled_error"].append(_scale_errors(actual, point, scale).T.reshape(-1))
        if quantiles:
            qparts.append(np.ascontiguousarray(yhat.transpose(1, 0, 2)).reshape(c * h, -1))  # (C*H, Q)
    if not out["fold"]:
        return pd.DataFrame(), undefined
    table = pd.DataFrame({k: np.concatenate(v) for k, v in out.items()})
    table["unique_id"] = table["unique_id"].astype("str")
    if quantiles:
        q = np.concatenate(qparts)
        for i, level in enumerate(quantiles):
            table[f"yhat_q{level:g}"] = q[:, i]
    first = ["unique_id", "fold", "cutoff", "ds", "step", "y", "yhat"]
    return table[first + [k for k in table.columns if k not in first]], undefined


# ============================================================================================ outputs


def plot_backtest(result: BacktestResult, path: str | os.PathLike, max_series: int = 3, overwrite: bool = True) -> Path:
    """PNG: actuals and every fold's forecast for the first ``max_series`` unique_ids, and MAE / MASE by step.

    Written atomically; without ``overwrite`` an existing *path* is kept (a ForecastError).
    """
    from matplotlib.figure import Figure

    f = result.forecasts
    uids = list(dict.fromkeys(f["unique_id"]))[:max_series]
    fig = Figure(figsize=(10, 2.6 * len(uids) + 2.8), layout="constrained")
    axes = fig.subplots(len(uids) + 1, 1, squeeze=False)[:, 0]
    for ax, uid in zip(axes, uids, strict=False):
        g = f[f["unique_id"] == uid]
        actual = g.drop_duplicates("ds").sort_values("ds")
        ax.plot(actual["ds"], actual["y"], color="0.3", lw=1.0, label="actual")
        for k, (_, fold) in enumerate(g.groupby("fold")):
            ax.plot(fold["ds"], fold["yhat"], color="tab:blue", lw=1.0, alpha=0.6,
                    label="forecast per fold" if k == 0 else None)
            if result.quantiles:
                lo, hi = f"yhat_q{result.quantiles[0]:g}", f"yhat_q{result.quantiles[-1]:g}"
                ax.fill_between(fold["ds"], fold[lo], fold[hi], color="tab:blue", alpha=0.1, lw=0)
        ax.set_title(str(uid), fontsize=9, loc="left")
        ax.grid(alpha=0.3)
        ax.legend(loc="upper left", fontsize=8)
    ax = axes[-1]
    by_step = result.metrics.groupby("step")[["mae", "mase"]].mean()
    ax.plot(by_step.index, by_step["mae"], marker="o", ms=3, label="MAE")
    ax.set_xlabel("horizon step")
    ax.set_ylabel("MAE (original units)")
    twin = ax.twinx()
    twin.plot(by_step.index, by_step["mase"], marker="s", ms=3, color="tab:orange", label="MASE")
    twin.set_ylabel("MASE")
    ax.set_title("error by horizon step (mean over unique_ids and folds)", fontsize=9, loc="left")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.grid(alpha=0.3)
    handles = ax.get_legend_handles_labels()[0] + twin.get_legend_handles_labels()[0]
    ax.legend(handles=handles, loc="upper left", fontsize=8)
    path = Path(path)
    with _writing(path, "plot"), atomic_path(path, replace=overwrite) as tmp:
        fig.savefig(tmp, dpi=100, format=path.suffix.lstrip(".").lower() or "png")
    return path


def _write_table(table: pd.DataFrame, path: Path, overwrite: bool = True) -> None:
    """Atomic write of a CSV or Parquet table; without *overwrite* an existing *path* is kept."""
    with _writing(path, "output"), atomic_path(path, replace=overwrite) as tmp:
        if path.suffix.lower() in (".parquet", ".pq"):
            table.to_parquet(tmp, index=False)
        else:
            table.to_csv(tmp, index=False)


def main(argv: Sequence[str] | None = None) -> int:
    """``tsattn backtest``: returns 0, or non-zero with one line on stderr (``TSATTN_DEBUG=1`` for the traceback)."""
    prog = "tsattn backtest"
    parser = _trainer_parser(prog, "Rolling-origin evaluation of a trained checkpoint on a CSV file.")
    _add_common_args(parser)
    parser.add_argument("--windows", type=int, required=True, help="Number of folds (cutoffs).")
    parser.add_argument("--step", type=int, required=True, help="Rows between consecutive cutoffs.")
    parser.add_argument("--refit", action="store_true", help="Retrain the model on each fold's history.")
    parser.add_argument("--seed", type=int, default=0, help="Seed for each fold's refit.")
    parser.add_argument("--output", type=str, default=None, help="Metrics per unique_id and step (.csv/.parquet).")
    parser.add_argument("--forecasts", type=str, default=None,
                        help="Every fold's forecasts with the actuals (.csv/.parquet).")
    parser.add_argument("--plot", type=str, default=None, help="PNG with the folds' forecasts and error by step.")
    _add_trainer_args(parser, {"devices": 1, "logger": False, "enable_checkpointing": False,
                               "enable_model_summary": False})
    cfg = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    overwrite = bool(cfg.overwrite)
    try:
        outputs = [Path(p) for p in (cfg.output, cfg.forecasts) if p]
        try:
            inputs = {f.resolve() for f in _input_files(cfg.input)}
        except ForecastError:
            inputs = set()  # no input file: said after the checkpoint is loaded
        for out in outputs:
            _check_output(out, overwrite)
            if out.resolve() in inputs:
                raise ForecastError(f"output {out} is the input; name another file")
        named = [(flag, Path(p).resolve()) for flag, p in (("--output", cfg.output), ("--forecasts", cfg.forecasts),
                                                            ("--plot", cfg.plot)) if p]
        for k, (flag, path) in enumerate(named):
            for other, same in named[k + 1:]:
                if same == path:
                    raise ForecastError(f"{flag} and {other} name the same file {path}; give each its own")
        if cfg.plot:
            check_new_file(Path(cfg.plot), "plot", overwrite)
        result = backtest(
            cfg.ckpt, cfg.input, windows=cfg.windows, step=cfg.step, refit=bool(cfg.refit), id_col=cfg.id_col,
            time_col=cfg.time_col, missing=cfg.missing, model=cfg.model, batch_size=cfg.batch_size, seed=cfg.seed,
            trainer=_trainer_config(parser, cfg),
        )
    except _REPORTED as err:
        return _report(prog, err)
    print(result.format())
    try:
        if cfg.output:
            _write_table(result.metrics, Path(cfg.output), overwrite)
            print(f"metrics: {cfg.output} ({len(result.metrics)} rows)")
        if cfg.forecasts:
            _write_table(result.forecasts, Path(cfg.forecasts), overwrite)
            print(f"forecasts: {cfg.forecasts} ({len(result.forecasts)} rows)")
        if cfg.plot:
            print(f"plot: {plot_backtest(result, cfg.plot, overwrite=overwrite)}")
    except _REPORTED as err:
        return _report(prog, err)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
