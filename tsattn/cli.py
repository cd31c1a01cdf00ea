"""The ``tsattn`` command line: ``fit | validate | test | predict`` on a LightningCLI, plus extra commands.

    tsattn fit --data.path my.csv --data.lookback 96 --data.horizon 24
    tsattn fit --data.path my.csv --data.lookback 96 --data.horizon 24 --model Linear
    tsattn fit --config configs/market.yaml
    tsattn test --config RUN/config.yaml --ckpt_path RUN/checkpoints/best-start.ckpt

Each run writes one folder ``<trainer.default_root_dir>/version_N/`` holding ``config.yaml`` (the full parsed config),
``metrics.csv`` (CSV logs), ``checkpoints/`` (the best by ``val/mse``, and ``last.ckpt`` after every epoch),
``metrics.json`` (test metrics, and the checkpoint the fit selected and tested) and, with ``--plot true``,
``forecast.png``. Selection counts the state before the first training step: when a closed-form start (the flagship
starts at ``RidgeCycle`` plus a kernel ridge) scores better on validation than every trained epoch, it is saved as
``checkpoints/best-start.ckpt``. After ``fit`` the best checkpoint is tested, and the models named by ``--compare`` are
fitted and tested on the same data and shown beside it in one table, with the standard error of each test MSE and of
each compared model's paired difference to the fitted one (a circular block bootstrap of the per-window errors,
`tsattn.metrics.mean_se`).

Channels, lookback, horizon and period are given once, to the data (``--data.*``), and linked to the model.
"""

from __future__ import annotations

import importlib
import inspect
import logging
import math
import os
import pickle
import re
import sys
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

import torch
from lightning.pytorch import Trainer, seed_everything
from lightning.pytorch.callbacks import EarlyStopping, EMAWeightAveraging, ModelCheckpoint
from lightning.pytorch.callbacks.weight_averaging import WeightAveraging
from lightning.pytorch.cli import (
    LightningArgumentParser,
    LightningCLI,
    SaveConfigCallback,
    _get_module_type,
    _InstantiatorFn,
)
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.utilities.seed import isolate_rng

from tsattn.atomic import atomic_path, write_json
from tsattn.data import SeriesDataModule
from tsattn.metrics import mean_se
from tsattn.models.base import Forecaster
from tsattn.models.best_weights import MONITORS, BestWeights
from tsattn.models.registry import forecaster_class, forecaster_classes
from tsattn.models.test_errors import TestErrors

forecaster_classes()  # import every module of tsattn.models so each forecaster resolves by its short name

__all__ = ["DEFAULT_MODEL", "EXTRA_COMMANDS", "TsattnCLI", "forecaster_class", "main"]

log = logging.getLogger(__name__)

DEFAULT_MODEL = "EMAAttentionForecaster"
METRICS = ("test/mse", "test/mae", "test/mae_orig", "test/pinball", "test/coverage")  # the last two: quantiles

#: Extra subcommands that ``main`` dispatches before LightningCLI parses anything: name -> a callable taking the
#: remaining argv (returning an exit code or None), or a lazy ``"module:function"`` string of one (imported only
#: when that command runs).
EXTRA_COMMANDS: dict[str, Callable[[list[str]], int | None] | str] = {
    "forecast": "tsattn.forecast:main",
    "backtest": "tsattn.backtest:main",
}

TRAINER_DEFAULTS: dict[str, Any] = {
    "max_epochs": 30,
    "log_every_n_steps": 10,
    "default_root_dir": "runs",
}


# --------------------------------------------------------------------------------------------- model names
def _class_path(name: str) -> str:
    cls = forecaster_class(name)
    return f"{cls.__module__}.{cls.__name__}"


def _argument_problem(message: str) -> str | None:
    """One line for a jsonargparse error about a value of the wrong type given to a model's or the data's argument
    (``--model.quantiles [nan]``), or None: the option, what it expects and what it got."""
    keys = re.findall(r'Parser key "([^"]+)"', message)  # outer to inner: "model", "quantiles"
    if len(keys) < 2:
        return None
    expected = [e for e in re.findall(r"Expected a (.+)$", message, re.M) if "NoneType" not in e]
    if not expected:
        return None
    what = re.sub(r"<class '(?:\w+\.)*(\w+)'>", r"\1", expected[0])
    given = re.findall(r"^\s*Given value: (.+)$", message, re.M)
    if "Got value" not in what and given:
        what += f" (given {given[0]})"
    return f"--{'.'.join(keys)}: expected {what}"


def _given_model(message: str) -> str | None:
    """The model name a jsonargparse error about the key ``model`` was given, if it says."""
    match = re.search(r"'class_path': '([\w.]+)'", message) or re.search(r"Given value: ([\w.]+)$", message, re.M)
    return match.group(1) if match else None


class _Parser(LightningArgumentParser):
    """LightningArgumentParser whose errors are one line (an unknown model name, e.g. from a config file, names the
    choices)."""

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        if self.exit_on_error and not os.environ.get("TSATTN_DEBUG") and (problem := _argument_problem(message)):
            _fail(problem)
        if self.exit_on_error and message.lstrip().startswith('Parser key "model"'):
            name = _given_model(message)
            if name:
                try:
                    forecaster_class(name)
                except ValueError as exc:
                    _fail(str(exc))
        if self.exit_on_error and not os.environ.get("TSATTN_DEBUG"):  # the message, without the usage dump
            _fail(f"{message} (options: {self.prog.replace(' [options]', '')} --help)")
        super().error(message, ex)


class _Instantiator(_InstantiatorFn):
    """LightningCLI's instantiator, minus linked values the class does not take.

    jsonargparse skips a link whose target the chosen model lacks (``period`` for ``Naive``), but still reports
    it as applied, and LightningCLI would then record it in the checkpoint's hyperparameters, where it breaks
    ``tsattn test --ckpt_path``.
    """

    def __call__(self, class_type: type, *args: Any, applied_instantiation_links: dict, **kwargs: Any) -> Any:
        params = inspect.signature(class_type).parameters
        prefix = f"{self.key}."
        links = {k: v for k, v in applied_instantiation_links.items()
                 if not k.startswith(prefix) or k.rsplit(".", 1)[-1] in params}
        return super().__call__(class_type, *args, applied_instantiation_links=links, **kwargs)


# --------------------------------------------------------------------------------------------- the CLI
class _SaveConfig(SaveConfigCallback):
    """Lightning's config saving, with a one-line error where the run folder already holds a run's files (without
    a logger the run folder is ``--trainer.default_root_dir`` itself)."""

    def setup(self, trainer: Trainer, pl_module: Any, stage: str) -> None:
        if not self.already_saved and self.save_to_log_dir and not self.overwrite and trainer.is_global_zero:
            run_dir = Path(trainer.log_dir or trainer.default_root_dir)
            for name in (self.config_filename, *RUN_FILES):
                if (run_dir / name).exists():
                    raise ValueError(
                        f"{run_dir / name} exists: that folder holds an earlier run; give another "
                        "--trainer.default_root_dir, or keep the default logger, which makes a new version_N folder "
                        "for each run"
                    )
        super().setup(trainer, pl_module, stage)


# What the commands write into a run folder besides config.yaml (and the logger's files).
RUN_FILES = ("metrics.json", "predictions.csv", "forecast.png")


class TsattnCLI(LightningCLI):
    """LightningCLI for tsattn forecasters on :class:`~tsattn.data.SeriesDataModule`.

    Adds, on top of the Trainer / model / data options: ``--early_stopping.*`` and ``--checkpoint.*`` (always on,
    monitoring ``val/mse``), ``--ema_weights`` (Lightning's ``EMAWeightAveraging``), ``--compare`` (baselines
    fitted and tested after ``fit``), ``--plot`` (forecast PNG) and ``--test_after_fit``.
    """

    def __init__(self, args: Sequence[str] | dict[str, Any] | None = None, run: bool = True, **kwargs: Any) -> None:
        kwargs.setdefault("trainer_defaults", dict(TRAINER_DEFAULTS))
        kwargs.setdefault("seed_everything_default", 0)
        # Optimizers are the model's own typed argument (`--model.optimizer`), not a second CLI-level copy.
        kwargs.setdefault("auto_configure_optimizers", False)
        kwargs.setdefault("parser_kwargs", {"epilog": _epilog()})
        kwargs.setdefault("parser_class", _Parser)
        kwargs.setdefault("save_config_callback", _SaveConfig)
        super().__init__(
            model_class=Forecaster,
            datamodule_class=SeriesDataModule,
            subclass_mode_model=True,
            args=args,
            run=run,
            **kwargs,
        )

    # ----------------------------------------------------------------- parser
    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.set_defaults({"model": {"class_path": _class_path(DEFAULT_MODEL)}})

        parser.add_lightning_class_args(EarlyStopping, "early_stopping")
        parser.set_defaults({"early_stopping.monitor": "val/mse", "early_stopping.mode": "min",
                             "early_stopping.patience": 5})
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults({"checkpoint.monitor": "val/mse", "checkpoint.mode": "min", "checkpoint.save_top_k": 1,
                             "checkpoint.save_last": True, "checkpoint.filename": "best-{epoch}"})

        parser.add_argument("--ema_weights", type=bool, default=False,
                            help="Keep an exponential moving average of the weights during fit (Lightning's "
                                 "EMAWeightAveraging); validation, checkpoints and test use the averaged weights.")
        parser.add_argument("--ema_decay", type=float, default=0.999, help="Decay of --ema_weights.")
        parser.add_argument("--compare", type=str, nargs="*", default=[],
                            help="After fit: fit and test these forecasters (e.g. `--compare Naive Linear`) on the "
                                 "same data and print their test metrics beside the model's.")
        parser.add_argument("--plot", type=bool, default=False,
                            help="After fit/test: write forecast.png (last test window per series and channel, "
                                 "original units) into the run folder.")
        parser.add_argument("--test_after_fit", type=bool, default=True,
                            help="After fit: test the best checkpoint and write metrics.json.")
        parser.add_argument("--num_threads", type=int | None, default=None,
                            help="CPU threads torch uses inside an op (torch.set_num_threads); None keeps torch's "
                                 "default. Small models on shared cores run fastest with 1.")

        # Data-derived sizes are typed once, on the data, and reach the model by links.
        parser.link_arguments("data.lookback", "model.init_args.lookback")
        parser.link_arguments("data.horizon", "model.init_args.horizon")
        parser.link_arguments("data.n_channels", "model.init_args.n_channels", apply_on="instantiate")
        # Ignored (by jsonargparse) for models without a `period` argument.
        parser.link_arguments("data.period", "model.init_args.period", apply_on="instantiate")

    def _add_instantiators(self) -> None:
        self.parser.add_instantiator(_Instantiator(cli=self, key="model"), _get_module_type(self._model_class),
                                     subclasses=True)
        self.parser.add_instantiator(_Instantiator(cli=self, key="data"), _get_module_type(self._datamodule_class),
                                     subclasses=self.subclass_mode_data)

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        super().parse_arguments(parser, args)
        subcommand = self.config.get("subcommand")
        model = (self.config[subcommand] if subcommand else self.config).get("model")
        if model is not None and forecaster_class(model.class_path) is not forecaster_class(DEFAULT_MODEL):
            # jsonargparse keeps the default model's init_args that the chosen class shares (revin, optimizer, ...);
            # parse again with the chosen class as the default, so it starts from its own defaults.
            self._parser(subcommand).set_defaults({"model": {"class_path": model.class_path}})
            super().parse_arguments(parser, args)

    def _set_seed(self) -> None:
        # As LightningCLI's, but quiet: a bad argument found while instantiating must print one line, not two.
        seed = self._get(self.config, "seed_everything")
        if seed is False:
            return
        seed = seed_everything(None if seed is True else seed, workers=True, verbose=False)
        (self.config[self.subcommand] if self.subcommand else self.config)["seed_everything"] = seed

    def before_instantiate_classes(self) -> None:
        threads = self._get(self.config, "num_threads")
        if threads is not None:
            if threads < 1:
                raise ValueError(f"--num_threads must be >= 1, got {threads}")
            torch.set_num_threads(threads)
        for name in _names(self._get(self.config, "compare")):
            forecaster_class(name)  # fail on a typo now, not after the main fit
        if self.subcommand in ("validate", "test", "predict") and not self._get(self.config, "ckpt_path"):
            raise ValueError(
                f"tsattn {self.subcommand} needs the fitted model: give --ckpt_path (the checkpoint the run's "
                "metrics.json names, e.g. runs/<name>/version_0/checkpoints/best-start.ckpt) beside its --config"
            )
        if self._get(self.config, "ckpt_path"):
            # Lightning unpickles a checkpoint it cannot check first (a URL) unless told otherwise; ours hold only
            # tensors and plain data, so a checkpoint from anywhere loads without running code.
            config = self.config[self.subcommand]
            if config.get("weights_only") is False:
                raise ValueError(
                    "--weights_only false would let a checkpoint run code when it loads; tsattn checkpoints hold "
                    "only tensors and plain data, so leave --weights_only out"
                )
            config["weights_only"] = True
        if self.subcommand == "predict":
            # Forecasting past the end: every row is history, and an unseen series is scaled on all of it (as in
            # tsattn forecast); the run's split would also ask a new file for rows it does not need.
            data = (self.config[self.subcommand] if self.subcommand else self.config)["data"]
            data.split, data.val_start, data.test_start = "none", None, None
        if self.subcommand in ("fit", "validate", "test") and self._get(self.config, "data.split") == "none":
            raise ValueError(
                f"--data.split none puts every row in training, and {self.subcommand} needs validation and test rows; "
                "give --data.split ratio, ett-hour or time (with --data.val_start / --data.test_start). "
                "To forecast new data from a checkpoint, use tsattn predict or tsattn forecast."
            )

    # ----------------------------------------------------------------- trainer
    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        """The Trainer, with a CSVLogger in ``default_root_dir`` unless a logger is given, and EMA when asked."""
        config = {**self._get(self.config_init, "trainer", default={}), **kwargs}
        if config.get("logger") in (None, True):
            config["logger"] = CSVLogger(save_dir=config.get("default_root_dir") or os.getcwd(), name="")
        callbacks = [self._get(self.config_init, key) for key in self._parser(self.subcommand).callback_keys]
        if config.get("enable_checkpointing") is False or self.subcommand != "fit":
            # Only fit stops early and saves checkpoints (the Trainer refuses a ModelCheckpoint without them).
            callbacks = [c for c in callbacks if not isinstance(c, (ModelCheckpoint, EarlyStopping))]
        if self.subcommand == "fit":
            # first, so that it sees the averaged weights validation used when --ema_weights is on
            callbacks = self._best_weights() + callbacks + _last_checkpoint(callbacks)
            if self._get(self.config, "ema_weights"):
                callbacks.append(EMAWeightAveraging(decay=self._get(self.config, "ema_decay")))
        if self.subcommand in ("fit", "test"):
            callbacks.append(TestErrors())  # the per-window test errors behind the standard errors of the report
        return self._instantiate_trainer(config, callbacks)

    # ----------------------------------------------------------------- around the subcommands
    def before_fit(self) -> None:
        if self._get(self.config, "test_after_fit"):
            # a model that cannot take this data fails now; its random initial weights do not move the fit's
            # random stream (dropout, shuffling), so the fit is the same with and without --compare
            with isolate_rng():
                for compare in _names(self._get(self.config, "compare")):
                    self._baseline(forecaster_class(compare))

    def after_fit(self) -> None:
        if not self._get(self.config, "test_after_fit") or self.trainer.interrupted:
            return
        # The best checkpoint already holds the averaged weights; EMA's own reload would swap the raw ones back in.
        self.trainer.callbacks = [c for c in self.trainer.callbacks if not isinstance(c, WeightAveraging)]
        ckpt_path = _selected_checkpoint(self.trainer, self.model)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*callbacks used to create the checkpoint.*")
            results = self.trainer.test(self.model, datamodule=self.datamodule, ckpt_path=ckpt_path,
                                        weights_only=True)
        name = type(self.model).__name__
        rows = {name: _pick_metrics(results)}
        errors = {name: _test_errors(self.trainer)}
        for compare in _names(self._get(self.config, "compare")):
            cls = forecaster_class(compare)
            if cls is type(self.model):
                log.info("--compare %s skipped: it is the model being fitted", compare)
                continue
            rows[cls.__name__], errors[cls.__name__] = self._fit_and_test_baseline(cls)
        _add_standard_errors(rows, errors, block=self.model.lookback + self.model.horizon)
        self._report(rows, ckpt_path=ckpt_path)

    def after_test(self) -> None:
        name = type(self.model).__name__
        rows = {name: _pick_metrics(self.trainer.callback_metrics)}
        errors = {name: _test_errors(self.trainer)}
        _add_standard_errors(rows, errors, block=self.model.lookback + self.model.horizon)
        self._report(rows, ckpt_path=self._get(self.config, "ckpt_path"))

    def after_validate(self) -> None:
        metrics = {k: float(v) for k, v in self.trainer.callback_metrics.items() if k.startswith("val/")}
        write_json(self._run_dir() / "metrics.json", {"validate": metrics})

    def predict(self, model: Forecaster, datamodule: SeriesDataModule, **kwargs: Any) -> None:
        """Forecast ``horizon`` steps past the end of each series; writes ``predictions.csv`` in the run folder."""
        outputs = self.trainer.predict(model, datamodule=datamodule, **{**kwargs, "return_predictions": True})
        from tsattn.forecast import _date_format  # the timestamps written as tsattn forecast writes them

        frame = _predictions_frame(model, datamodule, outputs or [])
        path = self._run_dir() / "predictions.csv"
        with atomic_path(path) as tmp:
            frame.to_csv(tmp, index=False, date_format=_date_format(frame) if len(frame) else None)
        print(f"predictions: {path} ({len(frame)} rows)")

    # ----------------------------------------------------------------- helpers
    def _run_dir(self) -> Path:
        """This run's folder: the logger's ``version_N``, or ``default_root_dir`` without a logger."""
        return Path(self.trainer.log_dir or self.trainer.default_root_dir)

    def _baseline(self, cls: type[Forecaster]) -> Forecaster:
        """``cls`` with the sizes (and season) of the data and the fitted model, its defaults otherwise."""
        sizes = {"n_channels": self.datamodule.n_channels, "lookback": self.model.lookback, "horizon": self.model.horizon}
        if "period" in inspect.signature(cls).parameters:
            sizes["period"] = self.datamodule.period
        return cls(**sizes)

    def _fit_and_test_baseline(self, cls: type[Forecaster]) -> tuple[dict[str, float], torch.Tensor]:
        """Fit and test ``cls`` on the same data with fresh early stopping / checkpointing; its test metrics and
        per-window test errors."""
        seed = self._get(self.config, "seed_everything")
        if seed is not False:
            seed_everything(seed, workers=True)
        dm = self.datamodule
        model = self._baseline(cls)
        trainer_cfg = dict(self._get(self.config_init, "trainer", default={}))
        checkpoint_cfg = {**self._get(self.config, "checkpoint").as_dict(), "dirpath": None}
        trainer_cfg["callbacks"] = [
            *self._best_weights(), EarlyStopping(**self._get(self.config, "early_stopping").as_dict()), TestErrors()
        ]
        if trainer_cfg.get("enable_checkpointing") is not False:
            trainer_cfg["callbacks"].append(ModelCheckpoint(**checkpoint_cfg))
        trainer_cfg["logger"] = CSVLogger(save_dir=self._run_dir(), name="compare", version=cls.__name__)
        trainer = self.trainer_class(**trainer_cfg)
        log.info("fitting %s for comparison", cls.__name__)
        trainer.fit(model, datamodule=dm)
        best = _selected_checkpoint(trainer, model)
        metrics = _pick_metrics(trainer.test(model, datamodule=dm, ckpt_path=best, verbose=False, weights_only=True))
        return metrics, _test_errors(trainer)

    def _best_weights(self) -> list[BestWeights]:
        """A `BestWeights` on the checkpoint's monitor, when it is one a start can be scored with (val/mse|mae)."""
        monitor = self._get(self.config, "checkpoint").get("monitor") or "val/mse"
        return [BestWeights(monitor)] if monitor in MONITORS else []

    def _report(self, rows: dict[str, dict[str, float]], ckpt_path: str | None) -> None:
        """Print the metrics table, write metrics.json and (with --plot) forecast.png into the run folder."""
        run_dir = self._run_dir()
        run_dir.mkdir(parents=True, exist_ok=True)
        print(_metrics_table(rows, lookback=self.model.lookback, horizon=self.model.horizon))
        payload = {
            "model": type(self.model).__name__,
            "checkpoint": str(ckpt_path) if ckpt_path else None,
            "data": self._get(self.config, "data").get("path"),
            "lookback": self.model.lookback,
            "horizon": self.model.horizon,
            "test": rows,
        }
        write_json(run_dir / "metrics.json", payload)
        print(f"metrics: {run_dir / 'metrics.json'}")
        if self._get(self.config, "plot"):
            path = write_forecast_plot(self.model, self.datamodule, run_dir / "forecast.png")
            print(f"plot: {path}")


def _selected_checkpoint(trainer: Trainer, model: Forecaster) -> str | None:
    """After fit: load the best validated weights into ``model`` and return the checkpoint that holds them.

    That is ModelCheckpoint's best, unless `BestWeights` kept the state before the first training step (a
    closed-form start that no trained epoch beat, or beat in too few blocks of the validation windows), or nothing
    was trained (``max_epochs=0``): then that state is saved as ``best-start.ckpt`` beside the other checkpoints.
    A trained epoch that ModelCheckpoint's best file does not hold (a resumed fit) is saved as ``best-epoch=N.ckpt``.
    None when nothing was checkpointed (test the model as is).
    """
    best = next((c for c in trainer.callbacks if isinstance(c, BestWeights)), None)
    if best is not None:
        best.restore(model)
    ckpt = trainer.checkpoint_callback
    dirpath = getattr(ckpt, "dirpath", None) if isinstance(ckpt, ModelCheckpoint) else None
    untrained = trainer.max_epochs == 0  # the closed-form start alone (fitted in on_fit_end)
    if dirpath and (untrained or (best is not None and best.start_won)):
        path = _new_name(Path(dirpath) / "best-start.ckpt")
        trainer.save_checkpoint(path)
        if untrained:
            log.info("max_epochs=0: the closed-form start, untrained, saved as %s", path)
        else:
            log.info("the start (%s %.4f) was kept; saved as %s", best.monitor, best.best_score, path)
        return str(path)
    path = (ckpt.best_model_path or None) if isinstance(ckpt, ModelCheckpoint) else None
    if dirpath and best is not None and best.best is not None and not _holds_best(ckpt, best):
        # A resumed fit: the best file may be named relative to another folder, or ModelCheckpoint (its folder
        # changed) knows only the epochs run since; the kept weights, restored above, are saved here.
        path = _new_name(Path(dirpath) / f"best-epoch={best.best_epoch}.ckpt")
        trainer.save_checkpoint(path)
        log.info("epoch %d (%s %.4f) was kept; saved as %s", best.best_epoch, best.monitor, best.best_score, path)
        return str(path)
    return path


def _holds_best(ckpt: ModelCheckpoint, best: BestWeights) -> bool:
    """Whether ModelCheckpoint's best file exists and holds the epoch `best` kept (the same validation score)."""
    score = ckpt.best_model_score
    return (
        bool(ckpt.best_model_path)
        and Path(ckpt.best_model_path).is_file()
        and score is not None
        and math.isclose(float(score), best.best_score, rel_tol=1e-6)
    )


def _last_checkpoint(callbacks: list[Any]) -> list[ModelCheckpoint]:
    """Lightning rewrites ``last.ckpt`` only when it saves a best file: a checkpoint of its own, saved after every
    epoch, keeps it the state after the last epoch (the one a resumed fit needs) where ``save_last`` asks for it."""
    main = next((c for c in callbacks if isinstance(c, ModelCheckpoint)), None)
    if main is None or main.save_last is not True:
        return []
    main.save_last = False
    return [ModelCheckpoint(dirpath=main.dirpath, filename=main.CHECKPOINT_NAME_LAST, monitor=None, save_top_k=1,
                            save_on_train_epoch_end=True)]  # also after epochs without validation


def _new_name(path: Path) -> Path:
    """``path``, or, where a file has that name (an earlier run's, in a shared folder), the first free name with
    a version suffix as ModelCheckpoint gives (``best-start-v1.ckpt``)."""
    candidate, version = path, 0
    while candidate.exists():
        version += 1
        candidate = path.with_stem(f"{path.stem}-v{version}")
    return candidate


def _names(values: Sequence[str] | str | None) -> list[str]:
    """Model names from ``--compare``: space-separated, or written as ``[A,B]`` / ``A,B``."""
    if isinstance(values, str):
        values = [values]
    names = []
    for value in values or []:
        names.extend(n.strip(" '\"") for n in value.strip("[] ").split(",") if n.strip(" '\""))
    return names


# --------------------------------------------------------------------------------------------- outputs
def _pick_metrics(results: Any) -> dict[str, float]:
    """Test metrics from ``trainer.test``'s list of dicts or from ``callback_metrics``."""
    if isinstance(results, list):
        results = results[0] if results else {}
    return {k: float(results[k]) for k in METRICS if k in results}


def _test_errors(trainer: Trainer) -> torch.Tensor:
    """The per-window squared errors (N,) of the windows that the trainer's last ``test`` scored."""
    return next(c for c in trainer.callbacks if isinstance(c, TestErrors)).errors


def _add_standard_errors(rows: dict[str, dict[str, Any]], errors: dict[str, torch.Tensor], block: int) -> None:
    """Add to each row ``test/mse_se``, the block-bootstrap standard error of its test MSE, and to each row after
    the first ``test/mse_diff`` / ``test/mse_diff_se``, its paired difference to the first (the fitted model) on the
    same windows; blocks of ``block`` consecutive test windows (`tsattn.metrics.mean_se`; None with fewer than two)."""
    reference = next(iter(rows))
    for name, row in rows.items():
        row["test/mse_se"] = mean_se(errors[name], block)
        if name != reference:
            diff = errors[name] - errors[reference]
            row["test/mse_diff"] = float(diff.mean())
            row["test/mse_diff_se"] = mean_se(diff, block)


def _metrics_table(rows: dict[str, dict[str, Any]], lookback: int, horizon: int) -> str:
    """The test metrics of each model; with standard errors, also ``mse ± se`` and the paired difference of each
    model's MSE to the first row's, ``± se`` (``-`` where the test windows are too few to tell)."""
    with_se = any("test/mse_se" in metrics for metrics in rows.values())
    shown = [m for m in METRICS if m in METRICS[:3] or any(m in metrics for metrics in rows.values())]
    title = (f"test metrics (lookback {lookback}, horizon {horizon}; mse/mae on scaled values, mae_orig in original "
             "units)")
    header = f"{'model':<24}" + "".join(f" {m.split('/', 1)[1]:>11}" for m in shown)
    if with_se:
        title += "; mse_se: block bootstrap"
        header += f" {'mse_se':>8}"
        if len(rows) > 1:
            title += f"; diff: mse minus {next(iter(rows))}'s on the same windows"
            header += f" {'diff ± se':>22}"
    lines = [title, header, "-" * len(header)]
    for name, metrics in rows.items():
        cells = "".join(f" {_number(metrics.get(m, math.nan)):>11}" for m in shown)
        if with_se:
            se, diff, diff_se = (metrics.get(k) for k in ("test/mse_se", "test/mse_diff", "test/mse_diff_se"))
            diff_text = "" if diff is None else _number(diff, "+") + ("" if diff_se is None else f" ± {_number(diff_se)}")
            cells += f" {'-' if se is None else _number(se):>8}" + (f" {diff_text:>22}" if len(rows) > 1 else "")
        lines.append(f"{name:<24}{cells}".rstrip())
    return "\n".join(lines)


def _number(value: float, sign: str = "") -> str:
    """Four decimals; whole numbers from a million on (MAE in original units); an exponent from 10^10 on and where
    four decimals would print 0 (series of tiny values); ``sign`` "+" to sign positive values."""
    if math.isnan(value) or value == 0 or 5e-5 <= abs(value) < 1e6:
        return f"{value:{sign}.4f}"
    return f"{value:{sign}.0f}" if 1e6 <= abs(value) < 1e10 else f"{value:{sign}.3e}"


@torch.no_grad()
def _last_test_windows(model: Forecaster, datamodule: SeriesDataModule, max_series: int) -> list[dict[str, Any]]:
    """The last test window of each of the first ``max_series`` series, with its forecast, in original units."""
    last: dict[int, dict[str, torch.Tensor]] = {}
    for batch in datamodule.test_dataloader():
        for i in range(batch["past"].shape[0]):
            sid = int(batch["series_idx"][i])
            if sid >= max_series:
                continue
            if sid not in last or int(batch["time_idx"][i]) > int(last[sid]["time_idx"]):
                last[sid] = {k: v[i] for k, v in batch.items() if isinstance(v, torch.Tensor)}
    if not last:
        return []
    sids = sorted(last)
    batch = {k: torch.stack([last[s][k] for s in sids]) for k in last[sids[0]]}
    was_training = model.training
    model.eval()
    device_batch = {k: v.to(model.device) for k, v in batch.items()}
    yhat = model.predict_step(device_batch, 0)["yhat"].cpu()  # (B, H, C[, Q]) original units
    model.train(was_training)
    scale, loc = batch["scale"], batch["loc"]  # (B, 1, C)
    windows = []
    for j, sid in enumerate(sids):
        windows.append({
            "series_idx": sid,
            "time_idx": int(batch["time_idx"][j]),
            "history": (batch["past"][j] * scale[j] + loc[j]).numpy(),
            "actual": (batch["future"][j] * scale[j] + loc[j]).numpy(),
            "forecast": yhat[j].numpy(),
        })
    return windows


def _timestamps(datamodule: SeriesDataModule, series_idx: int, time_idx: int, n: int) -> Any:
    try:
        return datamodule.future_timestamps(series_idx, time_idx, n)
    except Exception as exc:  # an irregular series has no calendar: fall back to step numbers
        log.debug("no timestamps for the plot (%s); using step indices", exc)
        return list(range(time_idx, time_idx + n))


def write_forecast_plot(
    model: Forecaster, datamodule: SeriesDataModule, path: str | os.PathLike, max_series: int = 4,
    max_panels: int = 12,
) -> Path | None:
    """Plot the last test window of each series (up to ``max_series``) per channel, forecast vs actual, in
    original units, into one PNG at ``path``. Returns the path, or None when the test split has no window."""
    from matplotlib.figure import Figure

    from tsattn.plotting import plot_forecast

    windows = _last_test_windows(model, datamodule, max_series)
    if not windows:
        log.warning("no test window to plot")
        return None
    channels = list(datamodule.target_cols)
    n_ch = min(len(channels), max(1, max_panels // len(windows)))
    fig = Figure(figsize=(10, 2.3 * n_ch * len(windows) + 0.6), layout="constrained")
    all_axes = fig.subplots(n_ch * len(windows), 1, squeeze=False)[:, 0]
    lookback = model.lookback
    for k, w in enumerate(windows):
        sid = w["series_idx"]
        series = datamodule.series_ids[sid] if sid < len(datamodule.series_ids) else str(sid)
        label = f"{series}: " if len(windows) > 1 or len(datamodule.series_ids) > 1 else ""
        fc = w["forecast"][:, :n_ch]
        plot_forecast(
            w["history"][:, :n_ch], fc, w["actual"][:, :n_ch],
            history_index=_timestamps(datamodule, sid, w["time_idx"] - lookback, lookback),
            forecast_index=_timestamps(datamodule, sid, w["time_idx"], model.horizon),
            quantiles=model.quantiles if fc.ndim == 3 else None,
            channel_names=[f"{label}{c}" for c in channels[:n_ch]],
            axes=all_axes[k * n_ch:(k + 1) * n_ch],
        )
    fig.suptitle(f"{type(model).__name__}: last test window, lookback {lookback}, horizon {model.horizon}")
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    return path


def _predictions_frame(model: Forecaster, datamodule: SeriesDataModule, outputs: list[dict[str, Any]]) -> Any:
    """Tidy forecasts: ``unique_id, ds, cutoff, yhat`` (+ one column per quantile), original units.

    Each channel of each series is a ``unique_id``: ``series/column``, or the series id when there is one channel
    (as in ``tsattn forecast``; a wide file's series id is its stem).
    """
    import pandas as pd

    channels = list(datamodule.target_cols)
    rows: list[pd.DataFrame] = []
    for out in outputs:
        yhat = out["yhat"].cpu().numpy()  # (B, H, C[, Q])
        for j in range(yhat.shape[0]):
            sid = int(out["series_idx"][j])
            t0 = int(out["time_idx"][j])
            ds = _timestamps(datamodule, sid, t0, model.horizon)
            cutoff = _timestamps(datamodule, sid, t0 - 1, 1)[0]
            series = datamodule.series_ids[sid]
            for c, col in enumerate(channels):
                uid = f"{series}/{col}" if len(channels) > 1 else series
                frame = pd.DataFrame({"unique_id": uid, "ds": ds, "cutoff": cutoff})
                if yhat.ndim == 4:
                    frame["yhat"] = yhat[j, :, c, model.median_index]
                    for q, level in enumerate(model.quantiles):
                        frame[f"yhat_q{level:g}"] = yhat[j, :, c, q]
                else:
                    frame["yhat"] = yhat[j, :, c]
                rows.append(frame)
    return pd.concat(rows, ignore_index=True) if rows else pd.DataFrame(columns=["unique_id", "ds", "cutoff", "yhat"])


# --------------------------------------------------------------------------------------------- entry point
def _epilog() -> str:
    extra = ", ".join(sorted(EXTRA_COMMANDS))
    text = "Run `tsattn fit --help` for every option; `--model NAME` takes any forecaster class name."
    return text + (f" Other commands: {extra}." if extra else "")


def _resolve_command(entry: Callable[[list[str]], int | None] | str) -> Callable[[list[str]], int | None]:
    if callable(entry):
        return entry
    module, _, attr = entry.partition(":")
    return getattr(importlib.import_module(module), attr)


def _fail(message: str, code: int = 2) -> NoReturn:
    print(f"tsattn: error: {' '.join(message.split())}", file=sys.stderr)
    raise SystemExit(code)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``tsattn`` console script; returns 0, or exits non-zero with one line on stderr.

    Errors from the data and models (a missing file, an unknown column, a horizon too long for the series, an
    unknown model name) are printed as one line; set ``TSATTN_DEBUG=1`` for the traceback.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    _drop_lightning_tips()
    for message in QUIET_WARNINGS:
        warnings.filterwarnings("ignore", message=message)
    if args and args[0] in EXTRA_COMMANDS:
        code = _resolve_command(EXTRA_COMMANDS[args[0]])(args[1:])
        return int(code or 0)
    try:
        TsattnCLI(args=None if argv is None else args)
    except (ValueError, OSError, pickle.UnpicklingError) as exc:
        if os.environ.get("TSATTN_DEBUG"):
            raise
        _fail(_message(exc))
    return 0


# Lightning's notes on what the commands do on purpose (closed-form forecasters fit without an optimizer or a
# training loss), and on its own use of a torch API: nothing a user of the commands can act on.
QUIET_WARNINGS = (
    r".*configure_optimizers` returned `None`",
    r".*`training_step` returned `None`",
    r".*isinstance\(treespec, LeafSpec\)",
)


def _drop_lightning_tips() -> None:
    """Lightning logs an advertisement ("💡 Tip: ... litlogger") for every Trainer; the commands' output omits it."""
    rank_zero = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    if not any(isinstance(f, _TipFilter) for f in rank_zero.filters):
        rank_zero.addFilter(_TipFilter())


class _TipFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("💡 Tip:")


def _message(exc: Exception) -> str:
    """One line for an error: an OS error on a path (unwritable run folder, missing file) names the path."""
    if isinstance(exc, OSError) and exc.filename is not None:
        unwritable = isinstance(exc, PermissionError | NotADirectoryError)
        hint = "; choose a writable location (e.g. --trainer.default_root_dir)" if unwritable else ""
        return f"{exc.filename}: {exc.strerror or type(exc).__name__}{hint}"
    text = str(exc)
    if isinstance(exc, pickle.UnpicklingError):
        from tsattn.forecast import refusal

        return f"the checkpoint of --ckpt_path: {refusal(exc)}"
    if text.startswith("Does not validate against any of the Union subtypes"):
        # jsonargparse's error for the model (a Forecaster or None): the model's own reason, not the whole config
        reasons = [r.strip() for r in re.findall(r"^\s*- (.+)$", text, re.M) if not r.startswith("Expected a ")]
        if reasons:
            return reasons[0]
    return text or type(exc).__name__


if __name__ == "__main__":
    raise SystemExit(main())
