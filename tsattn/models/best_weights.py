"""BestWeights: keep the best validated weights, the state before the first training step included.

Early stopping restores nothing, and Lightning's ``ModelCheckpoint`` never sees the untrained model (it saves
after training steps only). A forecaster that starts at a closed-form solution (``EMAAttentionForecaster``
starts at ``RidgeCycle`` plus a kernel ridge) must be able to keep that start when training does not improve
validation; this callback scores the start like a validation epoch (epoch -1) and keeps whichever state scored best.
"""

from __future__ import annotations

import copy
import logging
import math
import time

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

from tsattn.models.base import DeviceLoader, Forecaster

__all__ = ["MONITORS", "START_EPOCH", "BestWeights"]

log = logging.getLogger(__name__)

START_EPOCH = -1  # the epoch number given to the state before the first training step

# the validation metrics a start can be scored with: elementwise error of a point forecast, averaged
_ERRORS = {"val/mse": lambda d: d.square(), "val/mae": lambda d: d.abs()}
MONITORS = tuple(_ERRORS)


class BestWeights(Callback):
    """Keep, in memory, the weights with the lowest validation MSE, counting the start as epoch -1.

    Put it before any weight-averaging callback, so that it sees the (averaged) weights validation used. After
    ``Trainer.fit``, `restore` loads the kept weights into the module; `start_won` says whether they are the start;
    `start_seconds` is how long scoring the start took (one pass over the validation loader).

    Args:
        monitor: the logged validation metric to minimise, ``val/mse`` or ``val/mae`` (the start is scored with
            the same formula on the DataModule's validation loader).
    """

    def __init__(self, monitor: str = "val/mse") -> None:
        if monitor not in _ERRORS:
            raise ValueError(f"BestWeights monitors one of {sorted(_ERRORS)}, got {monitor!r}")
        self.monitor = monitor
        self.best_score = math.inf
        self.best_epoch: int | None = None
        self.best_state: dict[str, torch.Tensor] | None = None
        self.start_seconds: float | None = None

    @property
    def start_won(self) -> bool:
        """True when no trained epoch beat the state before the first training step."""
        return self.best_epoch == START_EPOCH

    def _keep(self, score: float, epoch: int, module: L.LightningModule) -> None:
        if score < self.best_score:
            self.best_score, self.best_epoch = score, epoch
            self.best_state = copy.deepcopy(module.state_dict())

    @torch.no_grad()
    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.current_epoch != 0 or self.best_state is not None:
            return  # only the start of a fresh fit (a resumed fit has no start to score)
        datamodule = getattr(trainer, "datamodule", None)
        if datamodule is None or not isinstance(pl_module, Forecaster):
            log.info("BestWeights: no DataModule or not a Forecaster; the start is not scored")
            return
        # closed-form parts were fitted in on_train_start: score the start like a validation epoch
        started = time.perf_counter()
        was_training = pl_module.training
        pl_module.eval()
        error, total, count = _ERRORS[self.monitor], 0.0, 0
        for batch in DeviceLoader(datamodule.val_dataloader(), pl_module.device):
            pred = pl_module.point(pl_module(batch["past"], batch.get("time_idx")))
            total += float(error(pred - batch["future"]).sum())
            count += batch["future"].numel()
        pl_module.train(was_training)
        self.start_seconds = time.perf_counter() - started
        if count:
            self._keep(total / count, START_EPOCH, pl_module)
            log.info("start: %s %.4f", self.monitor, total / count)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or self.monitor not in trainer.callback_metrics:
            return
        score = float(trainer.callback_metrics[self.monitor])
        log.info("epoch %d: %s %.4f", trainer.current_epoch, self.monitor, score)
        self._keep(score, trainer.current_epoch, pl_module)

    def restore(self, pl_module: L.LightningModule) -> None:
        """Load the kept weights into ``pl_module`` (nothing happens when nothing was scored)."""
        if self.best_state is not None:
            pl_module.load_state_dict(self.best_state)
