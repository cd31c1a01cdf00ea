"""Long-term forecasting benchmark on the standard protocol (../shared/DESIGN.md §6), on any wide CSV.

Every model is fit through the project's own `SeriesDataModule` and a Lightning `Trainer`: trained on the train
rows, selected on validation (early stopping on ``val/mse``; the best weights, *including the state before the
first training step*, are restored), then evaluated on every test window (stride 1, none dropped). MSE and MAE are
on the scaled values, averaged over windows x steps x channels.

How much of a difference the test period can resolve: each row also carries the standard error of its test MSE
(``test_mse_se``) and its paired difference to `ridge` and to `ridge-cycle` on the same windows
(``mse_diff_vs_ridge``, ``mse_diff_vs_ridge_cycle``, each with ``_se``), by the circular block bootstrap of the
per-window errors in blocks of lookback + horizon consecutive windows (`tsattn.metrics.mean_se`; None
when the test period holds fewer than two blocks).

    python benchmarks/ltsf.py --csv ../shared/data/ETTh1.csv --split ett-hour --lookback 96 \\
        --horizon 96 --horizon 192 --model ema --model ridge --model ridge-cycle --json results.json

Each learned fit has a time budget (``--max-fit-minutes``, default 8): when it runs out, Lightning stops after the
current batch, validates once more and the best validated weights so far are kept. On large panels, where validating and
testing take minutes themselves, training also stops when only the estimated time for a last validation and the test is
left of ``--max-run-minutes`` (default 10), so that no run exceeds it. ``--missing`` passes gaps through the
DataModule's rule (e.g. ``ignore`` for trading days); ``--target-cols`` and ``--time-col`` choose the columns. A horizon
the data is too short for is skipped with one line saying why; when no horizon is left the script fails and writes
nothing. Bad arguments and bad data (missing or empty file, non-numeric or missing values, a model the data rules out)
fail up front, before any fit; a model whose forecasts are not finite gets a line instead of a row. ``--json`` is
written atomically and refuses an existing file unless ``--overwrite`` is given.

Models: ema (EMAAttentionForecaster), gam, hrnet, linear, naive, phase-ridge, ridge, ridge-cycle. ``--hparam ema.d_model=64``
overrides a hyperparameter of one model (values parsed as Python literals). ``mse_vs_ridge`` is the test MSE over
that of `Ridge` on the same splits (the ridge is always fitted: it takes seconds).
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import inspect
import json
import logging
import math
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import lightning as L
import pandas as pd
import torch
from lightning.pytorch.callbacks import Callback, EarlyStopping, Timer

from tsattn.atomic import write_json
from tsattn.data import SeriesDataModule
from tsattn.data.frames import infer_period, read_series
from tsattn.forecast import check_new_file
from tsattn.metrics import mean_se
from tsattn.models import BestWeights, TestErrors

log = logging.getLogger("ltsf")

MODELS: dict[str, str] = {
    "ema": "EMAAttentionForecaster",
    "gam": "GAMForecaster",
    "hrnet": "HRNetForecaster",
    "linear": "Linear",
    "naive": "Naive",
    "phase-ridge": "PhaseRidge",
    "ridge": "Ridge",
    "ridge-cycle": "RidgeCycle",
}
DEFAULT_MODELS = ["ema", "ridge", "ridge-cycle"]
DEFAULT_HORIZONS = [96, 192, 336, 720]
SET_BY_SCRIPT = {"n_channels": "the CSV's columns", "lookback": "--lookback", "horizon": "--horizon"}
NOT_LITERALS = {"loss": "a torch module", "optimizer": "an optimizer factory", "lr_scheduler": "a scheduler factory"}


def model_class(name: str) -> type | None:
    """The forecaster class for a benchmark name, or None while its module is not there yet."""
    import tsattn.models as models

    cls_name = MODELS[name]
    if hasattr(models, cls_name):
        return getattr(models, cls_name)
    for module in ("tsattn.models.ema_attention", "tsattn.models.ridge", "tsattn.models.baselines"):
        try:
            mod = __import__(module, fromlist=[cls_name])
        except ImportError:
            continue
        if hasattr(mod, cls_name):
            return getattr(mod, cls_name)
    return None


def parse_hparams(items: list[str]) -> dict[str, dict[str, object]]:
    """['ema.d_model=64', ...] -> {'ema': {'d_model': 64}}."""
    out: dict[str, dict[str, object]] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        model, dot, name = key.partition(".")
        if not sep or not dot or model not in MODELS:
            raise ValueError(f"expects MODEL.NAME=VALUE with MODEL in {sorted(MODELS)}, got {item!r}")
        try:
            value = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            value = raw
        out.setdefault(model, {})[name] = value
    return out


def hparam_problem(name: str, cls: type, hparams: dict[str, object]) -> str | None:
    """A sentence on the first of *hparams* that ``cls`` does not take (values are checked by building the model,
    `build_model`), or None."""
    params = inspect.signature(cls).parameters
    valid = [k for k, p in params.items() if k not in SET_BY_SCRIPT and p.kind is not p.VAR_KEYWORD
             and k not in NOT_LITERALS]
    for key in hparams:
        if key in SET_BY_SCRIPT:
            return f"{name}.{key} is set from {SET_BY_SCRIPT[key]}; drop the --hparam"
        if key in NOT_LITERALS and key in params:
            return f"{name}.{key} takes {NOT_LITERALS[key]}, which a command-line value cannot be; set it in Python"
        if key not in valid:
            return f"{name} ({cls.__name__}) has no hyperparameter {key!r}; valid names: {', '.join(valid)}"
    return None


class ModelError(ValueError):
    """A model's constructor rejected the data's shape or the --hparam values (`build_model`)."""


def build_model(
    name: str,
    cls: type,
    n_channels: int,
    lookback: int,
    horizon: int,
    period: int | None,
    hparams: dict[str, object],
) -> L.LightningModule:
    """The model of benchmark name *name* for the data's shape and the user's hyperparameters; a `ModelError`
    naming the model and its --hparam values when the constructor rejects them."""
    params = inspect.signature(cls).parameters
    kwargs: dict[str, object] = {"n_channels": n_channels, "lookback": lookback, "horizon": horizon}
    if "period" in params:
        kwargs["period"] = period
    kwargs.update(hparams)
    try:
        return cls(**kwargs)
    except (TypeError, ValueError, RuntimeError) as err:
        given = " ".join(f"{name}.{k}={v!r}" for k, v in hparams.items())
        types = [f"{k}: {p.annotation}" for k, p in params.items() if k in hparams and p.annotation is not p.empty]
        expected = f" (the types it takes: {', '.join(types)})" if types else ""
        what = f"--hparam {given}" if given else f"--model {name} ({cls.__name__})"
        raise ModelError(f"{what} could not be built for lookback {lookback}, horizon {horizon}, period {period}: "
                         f"{err}{expected}") from None


class RunDeadline(Callback):
    """Stop training early enough that the whole run (fit, a last validation, test) ends within ``seconds``.

    The evaluation still to come is estimated from the timed validation pass that `BestWeights` makes of the start:
    one more validation, plus a test pass scaled by the number of test over validation windows. On large panels
    this, not the fit budget, is what stops training.
    """

    def __init__(self, seconds: float, best: BestWeights, test_per_val: float) -> None:
        self.seconds, self.best, self.test_per_val = seconds, best, test_per_val
        self.started = time.perf_counter()
        self.deadline: float | None = None
        self.hit = False

    def on_train_batch_end(self, trainer: L.Trainer, *args: object) -> None:
        if self.deadline is None and self.best.start_seconds is not None:
            evaluation = self.best.start_seconds * (1.0 + self.test_per_val)
            self.deadline = self.started + self.seconds - 1.2 * evaluation  # 20 % margin on the estimate
        if self.deadline is not None and time.perf_counter() > self.deadline and not trainer.should_stop:
            log.info("run deadline: training stops now to leave time for validation and test")
            trainer.should_stop = self.hit = True


def run_one(
    name: str,
    cls: type,
    dm: SeriesDataModule,
    args: argparse.Namespace,
    hparams: dict[str, object],
) -> tuple[dict[str, object], torch.Tensor]:
    """Fit, select and test one model on the DataModule's splits; returns the result row and the per-window test
    errors of the test pass (`TestErrors`)."""
    L.seed_everything(args.seed, verbose=False)
    model = build_model(name, cls, dm.n_channels, dm.lookback, dm.horizon, dm.period, hparams)
    learned = any(p.requires_grad for p in model.parameters())
    best, tested = BestWeights(), TestErrors()
    callbacks: list[Callback] = [best, tested]
    if learned:
        callbacks.append(EarlyStopping(monitor="val/mse", patience=args.patience, mode="min"))
        if args.max_run_minutes > 0:
            test_per_val = dm.num_windows("test") / max(dm.num_windows("val"), 1)
            callbacks.append(RunDeadline(60 * args.max_run_minutes, best, test_per_val))
        if args.ema_weights:
            from lightning.pytorch.callbacks import EMAWeightAveraging

            callbacks.append(EMAWeightAveraging(decay=args.ema_decay))
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=args.max_epochs if learned else 1,
        callbacks=callbacks,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        deterministic=False,
        gradient_clip_val=args.gradient_clip if learned else None,
        max_time=timedelta(minutes=args.max_fit_minutes) if learned and args.max_fit_minutes > 0 else None,
    )
    start = time.perf_counter()
    trainer.fit(model, datamodule=dm)
    best.restore(model)
    fit_seconds = time.perf_counter() - start
    start = time.perf_counter()
    metrics = trainer.test(model, datamodule=dm, verbose=False)[0]
    predict_seconds = time.perf_counter() - start
    errors = tested.errors
    row: dict[str, object] = {
        "model": name,
        "lookback": dm.lookback,
        "horizon": dm.horizon,
        "test_mse": float(metrics["test/mse"]),
        "test_mse_se": standard_error(errors, dm.lookback + dm.horizon),
        "test_mae": float(metrics["test/mae"]),
        "n_test_windows": dm.num_windows("test"),
        "fit_seconds": round(fit_seconds, 2),
        "predict_seconds": round(predict_seconds, 2),
        # what selection scored (the flagship with its whole correction); None where nothing was (--max-epochs 0)
        "val_mse": round(best.best_score, 5) if math.isfinite(best.best_score) else None,
        "best_epoch": best.best_epoch,
        "epochs": trainer.current_epoch,
        "budget_hit": any(
            (isinstance(c, Timer) and c.time_remaining() <= 0) or (isinstance(c, RunDeadline) and c.hit)
            for c in trainer.callbacks
        ),
    }
    if name == "ema" and hasattr(model, "explain"):
        row["decays"] = [[round(float(v), 4) for v in attn.attn.decays.detach()] for attn in model.net.blocks]
        trend = model.net.trend
        row["trend_decay"] = None if trend is None else round(float(trend.decay.detach()), 4)
    return row, errors


def standard_error(values: torch.Tensor, block: int) -> float | None:
    """Block-bootstrap standard error of the mean of per-window values; None with fewer than two blocks of them."""
    se = mean_se(values, block)
    return None if se is None else round(se, 5)


def mse_ratio(mse: float, ridge_mse: float | None) -> float | None:
    """Test MSE over that of the ridge; None where it is undefined (no ridge, a zero or non-finite MSE)."""
    if ridge_mse is None or not (math.isfinite(mse) and math.isfinite(ridge_mse)) or ridge_mse <= 0:
        return None
    return round(mse / ridge_mse, 4)


def add_differences(rows: list[dict[str, object]], errors: dict[str, torch.Tensor], block: int) -> None:
    """Per row, the test MSE minus that of each closed-form reference run on the same windows, with the
    block-bootstrap standard error of that paired difference (``mse_diff_vs_ridge[_se]``, ``..._ridge_cycle``)."""
    for ref in ("ridge", "ridge-cycle"):
        if ref not in errors:
            continue
        key = "mse_diff_vs_" + ref.replace("-", "_")
        for row in rows:
            diff = errors[row["model"]] - errors[ref]
            row[key] = round(float(diff.mean()), 5)
            row[key + "_se"] = standard_error(diff, block)


def format_table(rows: list[dict[str, object]]) -> str:
    """The result rows as a text table; ``± se`` is the block-bootstrap standard error, ``diff`` the paired test MSE
    difference to `ridge-cycle` (to `ridge` when it did not run)."""
    ref = "ridge_cycle" if any("mse_diff_vs_ridge_cycle" in r for r in rows) else "ridge"
    head = (
        f"{'model':<12} {'L':>4} {'H':>4} {'test_mse':>9} {'± se':>7} {'test_mae':>9} {'vs_ridge':>8} "
        f"{'diff vs ' + ref.replace('_', '-'):>20} {'fit_s':>7} {'pred_s':>6} {'windows':>7}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        ratio = "-" if r.get("mse_vs_ridge") is None else f"{r['mse_vs_ridge']:.3f}"
        diff, diff_se = r.get(f"mse_diff_vs_{ref}"), r.get(f"mse_diff_vs_{ref}_se")
        diff_text = "-" if diff is None else f"{diff:+.4f}" + ("" if diff_se is None else f" ± {diff_se:.4f}")
        lines.append(
            f"{r['model']:<12} {r['lookback']:>4} {r['horizon']:>4} {r['test_mse']:>9.4f} "
            f"{_number(r.get('test_mse_se')):>7} {r['test_mae']:>9.4f} {ratio:>8} {diff_text:>20} "
            f"{r['fit_seconds']:>7.1f} {r['predict_seconds']:>6.1f} {r['n_test_windows']:>7}"
        )
    return "\n".join(lines)


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


@contextlib.contextmanager
def _quiet_reader() -> Iterator[None]:
    """The reader's warnings (skipped columns, a saved index) silenced: the file was read, and they said, once."""
    reader = logging.getLogger("tsattn.data.frames")
    level = reader.level
    reader.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        reader.setLevel(level)


def _for_this_script(message: str) -> str:
    """A reader message with its hints in this script's options (it speaks of read_series' arguments)."""
    for arg, flag in (("target_cols=[...]", "--target-cols"), ("target_cols [", "--target-cols ["),
                      ("time_col=", "--time-col "), ("missing=", "--missing ")):
        message = message.replace(arg, flag)
    return message.replace(", or pass a DataFrame with frame= instead", "")


def main(argv: list[str] | None = None, emit: Callable[[str], None] = print) -> list[dict[str, object]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--csv", required=True, help="wide CSV: a date column and numeric columns")
    parser.add_argument(
        "--split",
        default="ratio",
        choices=["ett-hour", "ett-minute", "ratio"],
        help="ratio: 0.7/0.1/0.2 of the rows; ett-hour / ett-minute: the ETT borders (12/4/4 months of hours / 15 min)",
    )
    parser.add_argument("--lookback", type=int, default=96)
    parser.add_argument("--horizon", type=int, action="append", help="repeatable (default 96 192 336 720)")
    parser.add_argument("--model", action="append", choices=sorted(MODELS), help="repeatable (default ema ridge ridge-cycle)")
    parser.add_argument("--period", type=int, default=None, help="season in steps (default: inferred from the frequency)")
    parser.add_argument("--json", type=Path, default=None, help="write the result rows here (a new file)")
    parser.add_argument("--overwrite", action="store_true", help="let --json replace an existing file")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--target-cols", nargs="+", default=None,
                        help="the columns to forecast (default: every numeric column but the time column)")
    parser.add_argument("--time-col", default=None, help="the time column (default: found by name or content)")
    parser.add_argument("--missing", default="error", choices=["error", "ffill", "interpolate", "ignore"],
                        help="gaps and NaNs in the CSV (SeriesDataModule's missing=)")
    parser.add_argument("--max-epochs", type=int, default=10)
    parser.add_argument("--max-fit-minutes", type=float, default=8.0,
                        help="time budget of one learned fit; the best validated weights so far are kept (0: none)")
    parser.add_argument("--max-run-minutes", type=float, default=10.0,
                        help="fit + last validation + test of one model; training stops in time for both (0: none)")
    parser.add_argument("--patience", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--gradient-clip", type=float, default=1.0)
    parser.add_argument("--ema-weights", action="store_true", help="Lightning's EMAWeightAveraging for learned models")
    parser.add_argument("--ema-decay", type=float, default=0.999)
    parser.add_argument("--hparam", action="append", default=[], help="MODEL.NAME=VALUE, e.g. ema.d_model=64")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    for noisy in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    warnings.filterwarnings("ignore", ".*returned `None`.*")
    warnings.filterwarnings("ignore", ".*LeafSpec.*")
    horizons = list(dict.fromkeys(args.horizon or DEFAULT_HORIZONS))
    names = list(dict.fromkeys(args.model or DEFAULT_MODELS))
    for flag, values, least in (
        ("--lookback", [args.lookback], 1),
        ("--horizon", horizons, 1),
        ("--period", [] if args.period is None else [args.period], 1),
        ("--threads", [] if args.threads is None else [args.threads], 1),
        ("--batch-size", [args.batch_size], 1),
        ("--max-epochs", [args.max_epochs], 0),
        ("--patience", [args.patience], 0),
        ("--max-fit-minutes", [args.max_fit_minutes], 0),
        ("--max-run-minutes", [args.max_run_minutes], 0),
    ):
        bad = [v for v in values if not v >= least]  # `not >=` also catches a NaN
        if bad:
            parser.error(f"{flag} must be >= {least}, got {bad[0]}")
    if not 0.0 <= args.ema_decay <= 1.0:
        parser.error(f"--ema-decay must be in [0, 1], got {args.ema_decay}")
    if not 0.0 <= args.gradient_clip < math.inf:
        parser.error(f"--gradient-clip must be a finite number >= 0, got {args.gradient_clip}")
    if args.json is not None:
        try:
            check_new_file(args.json, "--json", args.overwrite)
        except ValueError as err:
            parser.error(str(err))
    try:
        hparams = parse_hparams(args.hparam)
    except ValueError as err:
        parser.error(f"--hparam {err}")
    columns = {"time_col": args.time_col, "target_cols": args.target_cols}
    try:  # problems of the whole file fail here, not as a skipped horizon each
        series = read_series(args.csv, missing=args.missing, **columns)
    except (ValueError, OSError) as err:
        parser.error(f"--csv: {_for_this_script(str(err))}")
    if args.split.startswith("ett-") and series.freq is not None:
        meant = {"ett-hour": "h", "ett-minute": "15min"}[args.split]
        if pd.tseries.frequencies.to_offset(series.freq) != pd.tseries.frequencies.to_offset(meant):
            log.warning("--split %s takes the ETT row counts, meant for '%s' data; this file's frequency is '%s'",
                        args.split, meant, series.freq)
    period = args.period if args.period is not None else infer_period(series.freq)
    todo = ["ridge", *(n for n in names if n != "ridge")]  # the reference first, for mse_vs_ridge
    for name, values in hparams.items():
        cls = model_class(name)
        if cls is not None and (problem := hparam_problem(name, cls, values)):
            parser.error(f"--hparam {problem}")
        if name not in todo:
            log.warning("--hparam for %s, which is not run (add --model %s)", name, name)
    for name in todo:  # built now: what a constructor rejects (a value, the period) stops the run before any fit
        cls = model_class(name)
        for horizon in horizons if cls is not None else []:
            try:
                build_model(name, cls, series.n_channels, args.lookback, horizon, period, hparams.get(name, {}))
            except ModelError as err:
                parser.error(str(err))
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    rows: list[dict[str, object]] = []
    dm = None
    for horizon in horizons:
        try:
            with _quiet_reader():  # what the reader had to say of the file it said above, once
                dm = SeriesDataModule(
                    path=args.csv,
                    lookback=args.lookback,
                    horizon=horizon,
                    split=args.split,
                    period=args.period,
                    missing=args.missing,
                    batch_size=args.batch_size,
                    **columns,
                )
        except ValueError as err:  # the file is good (read above): too short for this horizon; go on
            emit(f"# horizon {horizon} skipped: {_for_this_script(str(err))}")
            continue
        ridge_row = None
        errors: dict[str, torch.Tensor] = {}
        horizon_rows = []
        for name in todo:
            cls = model_class(name)
            if cls is None:
                emit(f"# {name}: {MODELS[name]} is not available in tsattn.models yet; skipped")
                continue
            try:
                row, errors[name] = run_one(name, cls, dm, args, hparams.get(name, {}))
            except ModelError as err:  # built up front, so only what this horizon's data changes
                parser.exit(1, f"{parser.prog}: error: horizon {horizon}: {err}\n")
            except ValueError as err:  # e.g. forecasts that are not finite: this model has no row here
                emit(f"# {name} at horizon {horizon} failed, no row: {err}")
                continue
            if name == "ridge":
                ridge_row = row
            row["mse_vs_ridge"] = mse_ratio(row["test_mse"], ridge_row["test_mse"] if ridge_row else None)
            if name in names:
                horizon_rows.append(row)
        add_differences(horizon_rows, errors, dm.lookback + dm.horizon)
        for row in horizon_rows:
            rows.append(row)
            log.info("%s", row)
            if args.verbose:
                emit(json.dumps(row))
    period = dm.period if dm is not None else period
    emit(f"# {Path(args.csv).name}, split {args.split}, lookback {args.lookback}, period {period}, seed {args.seed}")
    if not rows:
        why = "every horizon was skipped (the lines above say why)" if dm is None else "no model was available"
        not_written = "" if args.json is None else f"; --json {args.json} was not written"
        parser.exit(1, f"{parser.prog}: error: no result: {why}{not_written}\n")
    emit(format_table(rows))
    if args.json is not None:
        try:
            write_json(args.json, rows, replace=args.overwrite)  # a file that appeared meanwhile is kept
        except FileExistsError:
            parser.exit(1, f"{parser.prog}: error: {args.json} appeared during the run and was kept; rerun with "
                        "--overwrite or another --json\n")
        except OSError as err:
            parser.exit(1, f"{parser.prog}: error: --json {args.json} was not written: {err}\n")
    return rows


if __name__ == "__main__":
    main(sys.argv[1:])
