"""TestErrors: the per-window errors of what ``trainer.test`` scored, collected during that pass.

The standard errors of the benchmark and of ``tsattn fit`` (`tsattn.metrics.mean_se`) need the squared error of each
test window. Collecting them from the test pass itself, rather than forecasting the test windows a second time,
halves the cost of evaluation, which on panels of hundreds of channels takes minutes.
"""

from __future__ import annotations

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

from tsattn.models.base import window_mse

__all__ = ["TestErrors"]


class TestErrors(Callback):
    """After ``trainer.test``, ``errors`` (N,) float64 on the CPU: the squared error of each tested window's point
    forecast, averaged over steps x channels, in the loader's order (`Forecaster.window_errors` of the same
    batches). Needs a `Forecaster`, whose ``test_step`` returns the point forecast."""

    __test__ = False  # not a pytest test class

    def __init__(self) -> None:
        self._parts: list[torch.Tensor] = []

    @property
    def errors(self) -> torch.Tensor:
        return torch.cat(self._parts) if self._parts else torch.zeros(0, dtype=torch.float64)

    def on_test_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._parts = []

    def on_test_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: object,
        batch: object,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if not isinstance(outputs, torch.Tensor) or not isinstance(batch, dict):
            raise TypeError("TestErrors needs a Forecaster: test_step must return the point forecast (B, H, C)")
        self._parts.append(window_mse(outputs, batch["future"]))
