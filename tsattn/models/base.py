"""The small base every tsattn forecaster shares.

A subclass supplies only its network, as ``forecast(past, time_idx) -> (B, H, C, Q)`` on (optionally)
window-normalised inputs, and, where it has one, a closed-form part in ``fit_closed_form``. The base owns
per-window normalisation (RevIN, Kim et al. 2022), non-crossing quantiles, the one step shared by
train/val/test, metric logging, and the optimizer set-up.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence

import lightning as L
import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn

from tsattn.metrics import PinballLoss, coverage, mae, mse, pinball_loss

__all__ = ["Forecaster", "window_mse", "window_stats"]

log = logging.getLogger(__name__)

# Hyperparameters that hold objects, not plain data: kept out of checkpoints so they load with weights_only=True.
_NOT_SAVED = ["loss", "optimizer", "lr_scheduler"]


def window_stats(past: Tensor, eps: float = 1e-5) -> tuple[Tensor, Tensor]:
    """Per-window loc and scale (B, 1, C) of past (B, L, C), as used by RevIN."""
    loc = past.mean(dim=1, keepdim=True)
    scale = torch.sqrt(past.var(dim=1, keepdim=True, unbiased=False) + eps)
    return loc, scale


class Forecaster(L.LightningModule):
    """Base forecaster: maps a lookback window (B, L, C) to a forecast (B, H, C) or quantiles (B, H, C, Q).

    Args:
        n_channels: channels C of the series (linked from the DataModule).
        lookback: input window length L (linked from the DataModule).
        horizon: forecast length H (linked from the DataModule).
        quantiles: quantile levels in (0, 1) for probabilistic forecasts; None for point forecasts.
        revin: normalise each input window by its own mean and std, and undo it on the forecast.
        loss: training loss on (pred, target); default MSE, or pinball when ``quantiles`` are given.
        optimizer: callable taking the parameters; default AdamW.
        lr_scheduler: callable taking the optimizer; default cosine decay over the planned steps.
    """

    def __init__(
        self,
        n_channels: int,
        lookback: int,
        horizon: int,
        quantiles: Sequence[float] | None = None,
        revin: bool = True,
        loss: nn.Module | None = None,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        lr_scheduler: LRSchedulerCallable | None = None,
    ) -> None:
        super().__init__()
        for name, value in (("n_channels", n_channels), ("lookback", lookback), ("horizon", horizon)):
            if int(value) < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if quantiles is not None:
            quantiles = sorted(float(q) for q in quantiles)
            if not quantiles or any(not 0.0 < q < 1.0 for q in quantiles):
                raise ValueError(f"quantiles must be levels strictly between 0 and 1, got {quantiles!r}")
            labels = [f"{q:g}" for q in quantiles]  # as the output columns name them: yhat_q<level>
            if len(set(labels)) < len(labels):
                raise ValueError(f"quantiles must be distinct levels (as written to 6 digits), got {quantiles!r}")
            if 0.5 not in quantiles:
                nearest = min(quantiles, key=lambda q: abs(q - 0.5))
                log.warning(
                    "quantiles %s have no median (0.5): the point forecast (yhat, the test MSE and MAE) is the %g "
                    "quantile; add 0.5 to the levels for a median",
                    quantiles,
                    nearest,
                )
        self.save_hyperparameters(ignore=_NOT_SAVED)
        self.n_channels = int(n_channels)
        self.lookback = int(lookback)
        self.horizon = int(horizon)
        self.quantiles = quantiles
        self.revin = revin
        self.loss_fn = loss if loss is not None else (PinballLoss(quantiles) if quantiles else nn.MSELoss())
        self.optimizer_factory = optimizer
        self.lr_scheduler_factory = lr_scheduler
        # Persisted so a resumed or reloaded model does not refit its closed-form part.
        self.register_buffer("closed_form_fitted", torch.tensor(False))

    @classmethod
    def load_from_checkpoint(
        cls, checkpoint_path, map_location=None, hparams_file=None, strict=None, weights_only=True, **kwargs
    ):
        """Load a forecaster; called on ``Forecaster`` itself, the subclass is the one the checkpoint names.

        Checkpoints hold only tensors and plain data, so they load with ``weights_only=True`` by default; the
        class name is looked up among tsattn's imported forecasters only, so loading never runs code from the file.
        """
        if cls is Forecaster:
            from tsattn.models.registry import checkpoint_class, identify_class

            ckpt = torch.load(checkpoint_path, map_location="cpu", weights_only=True)
            hparams = ckpt.get("hyper_parameters") or {}
            sub = checkpoint_class(hparams)
            if sub is None:  # saved by a plain Trainer: the class whose arguments and weights fit
                try:
                    sub = identify_class(hparams, ckpt.get("state_dict") or {})
                except ValueError as err:
                    raise ValueError(
                        f"{checkpoint_path}: {err}; load it with the forecaster class that saved it, e.g. "
                        "Linear.load_from_checkpoint(path)"
                    ) from None
            return sub.load_from_checkpoint(checkpoint_path, map_location, hparams_file, strict, weights_only, **kwargs)
        return super().load_from_checkpoint(checkpoint_path, map_location, hparams_file, strict, weights_only, **kwargs)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """Refuse, naming the difference, a checkpoint of another class or size (before its weights are copied)."""
        saved = checkpoint.get("hyper_parameters") or {}
        path = saved.get("_class_path")
        if isinstance(path, str) and path.rpartition(".")[2] != type(self).__name__:
            raise ValueError(
                f"the checkpoint holds a {path.rpartition('.')[2]}, not a {type(self).__name__}; load it with the "
                "model it was trained as (in the CLI: the config.yaml saved beside it)"
            )
        mine = {"n_channels": self.n_channels, "lookback": self.lookback, "horizon": self.horizon,
                "quantiles": self.quantiles}
        theirs = dict(saved)
        if theirs.get("quantiles") is not None:  # saved as given; the model uses them sorted
            theirs["quantiles"] = sorted(float(q) for q in theirs["quantiles"])
        differ = [f"{k} {saved[k]!r} (here {v!r})" for k, v in mine.items() if k in theirs and theirs[k] != v]
        if differ:
            raise ValueError(
                f"the checkpoint's {type(self).__name__} was trained with {', '.join(differ)}; build the model and "
                "data with the checkpoint's settings (in the CLI: the config.yaml saved beside it)"
            )

    # ----------------------------------------------------------------- network contract
    @property
    def n_outputs(self) -> int:
        """Outputs per step and channel: 1 for point forecasts, Q for quantile forecasts."""
        return len(self.quantiles) if self.quantiles else 1

    @property
    def median_index(self) -> int:
        """Index of the quantile used as the point forecast (the one closest to 0.5)."""
        if not self.quantiles:
            return 0
        return min(range(len(self.quantiles)), key=lambda i: abs(self.quantiles[i] - 0.5))

    def forecast(self, past: Tensor, time_idx: Tensor | None) -> Tensor:
        """Network: past (B, L, C), time_idx (B,) or None -> (B, H, C, Q)."""
        raise NotImplementedError

    def fit_closed_form(self, loader: Iterable[dict[str, Tensor]]) -> None:
        """Fit any closed-form part from training batches; called once before the first training step."""

    # ----------------------------------------------------------------- forward
    def forward(self, past: Tensor, time_idx: Tensor | None = None) -> Tensor:
        """past (B, L, C) scaled -> forecast (B, H, C), or (B, H, C, Q) sorted quantiles, scaled."""
        self._check_past(past)
        if self.revin:
            loc, scale = window_stats(past)  # (B, 1, C) each
            out = self.forecast((past - loc) / scale, time_idx)
            out = out * scale.unsqueeze(-1) + loc.unsqueeze(-1)  # (B, H, C, Q)
        else:
            out = self.forecast(past, time_idx)
        expected = (past.shape[0], self.horizon, self.n_channels, self.n_outputs)
        if tuple(out.shape) != expected:
            raise RuntimeError(f"{type(self).__name__}.forecast returned {tuple(out.shape)}, expected {expected}")
        if self.quantiles:
            return torch.sort(out, dim=-1).values  # non-crossing by construction
        return out.squeeze(-1)

    def point(self, pred: Tensor) -> Tensor:
        """Point forecast (B, H, C) from a forward output."""
        return pred[..., self.median_index] if self.quantiles else pred

    def _check_past(self, past: Tensor) -> None:
        if not isinstance(past, Tensor):
            raise TypeError(
                f"{type(self).__name__} takes past windows as a tensor (batch, {self.lookback}, {self.n_channels}), "
                f"got a {type(past).__name__}"
                + ("; of a batch dict, pass batch['past'] and batch['time_idx']" if isinstance(past, dict) else "")
            )
        if past.ndim != 3 or past.shape[1] != self.lookback or past.shape[2] != self.n_channels:
            raise ValueError(
                f"{type(self).__name__} expects past windows of shape (batch, {self.lookback}, {self.n_channels}), "
                f"got {tuple(past.shape)}; build the data with lookback={self.lookback} and the same columns"
            )
        if not torch.isfinite(past).all():
            raise ValueError("past window contains NaN or inf values; clean the series (see the `missing` option)")

    def _check_finite(self, pred: Tensor, stage: str) -> Tensor:
        """*pred*, or a ValueError where it holds NaN or inf (from finite inputs): never NaN forecasts."""
        if not torch.isfinite(pred).all():
            raise ValueError(
                f"{type(self).__name__} forecast NaN or inf on {stage} windows of finite values: its fitted state "
                "is not usable; refit it (e.g. with a fixed ridge penalty or a lower learning rate)"
            )
        return pred

    # ----------------------------------------------------------------- steps
    def _step(self, batch: dict[str, Tensor], stage: str) -> tuple[Tensor, Tensor]:
        """Log the stage's loss (and errors); return the loss and the detached point forecast (B, H, C)."""
        pred = self(batch["past"], batch.get("time_idx"))
        if stage == "test":
            self._check_finite(pred, stage)
        target = batch["future"]
        loss = self.loss_fn(pred, target)
        point = self.point(pred).detach()
        size = target.shape[0]
        on_step = stage == "train"
        self.log(f"{stage}/loss", loss, on_step=on_step, on_epoch=True, prog_bar=on_step, batch_size=size)
        if stage != "train":
            self.log(f"{stage}/mse", mse(point, target), prog_bar=stage == "val", batch_size=size)
            self.log(f"{stage}/mae", mae(point, target), batch_size=size)
        if stage == "test" and "scale" in batch:
            self.log("test/mae_orig", mae(point * batch["scale"], target * batch["scale"]), batch_size=size)
        if stage == "test" and self.quantiles:  # (B, H, C, Q), levels sorted
            self.log("test/pinball", pinball_loss(pred, target, self.quantiles), batch_size=size)
            self.log("test/coverage", coverage(pred[..., 0], pred[..., -1], target), batch_size=size)
        return loss, point

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor | None:
        if not self._has_trainable_parameters():
            return None  # closed-form model: nothing to learn by gradient
        return self._step(batch, "train")[0]

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        """Returns the point forecast (B, H, C), which callbacks get as ``outputs`` (`BestWeights` scores it)."""
        return self._step(batch, "val")[1]

    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        """Returns the point forecast (B, H, C), which callbacks get as ``outputs`` (`TestErrors` scores it)."""
        return self._step(batch, "test")[1]

    @torch.no_grad()
    def window_errors(self, loader: Iterable[dict[str, Tensor]]) -> Tensor:
        """Squared error of the point forecast of each window of ``loader``, averaged over steps x channels: (N,)
        float64 on the CPU, in the loader's order; their mean is the test MSE of the protocol."""
        was_training = self.training
        self.eval()
        errors = [
            window_mse(self.point(self(batch["past"], batch.get("time_idx"))), batch["future"])
            for batch in DeviceLoader(loader, self.device)
        ]
        self.train(was_training)
        return torch.cat(errors) if errors else torch.zeros(0, dtype=torch.float64)

    def predict_step(self, batch: dict[str, Tensor], batch_idx: int, dataloader_idx: int = 0) -> dict[str, Tensor]:
        """Forecasts in original units: dict of yhat (B, H, C[, Q]; float64 when the batch has loc and scale),
        series_idx (B,), time_idx (B,)."""
        pred = self._check_finite(self(batch["past"], batch.get("time_idx")), "predict")
        if "scale" in batch:
            scale, loc = batch["scale"], batch["loc"]
            if self.quantiles:
                scale, loc = scale.unsqueeze(-1), loc.unsqueeze(-1)
            pred = pred * scale + loc
        out = {"yhat": pred}
        for key in ("series_idx", "time_idx"):
            if key in batch:
                out[key] = batch[key]
        return out

    # ----------------------------------------------------------------- closed form and optimisation
    def on_train_start(self) -> None:
        # A loader of its own: the Trainer's, with persistent workers, hands out the one iterator that the training
        # loop already holds, and this pass would use it up. Without a DataModule there is only the Trainer's.
        datamodule = getattr(self.trainer, "datamodule", None)
        self._fit_closed_form_once(datamodule.train_dataloader() if datamodule is not None
                                   else self.trainer.train_dataloader)

    def on_fit_end(self) -> None:
        # max_epochs=0 skips the training loop and on_train_start: the closed-form part is still fitted
        datamodule = getattr(self.trainer, "datamodule", None)
        if datamodule is not None:
            self._fit_closed_form_once(datamodule.train_dataloader())

    def _fit_closed_form_once(self, loader: Iterable[dict[str, Tensor]] | None) -> None:
        if not bool(self.closed_form_fitted):
            if loader is not None:
                self.fit_closed_form(DeviceLoader(loader, self.device))
            self.closed_form_fitted.fill_(True)

    def on_train_epoch_end(self) -> None:
        if not self._has_trainable_parameters():
            self.trainer.should_stop = True  # one pass is enough to fit, validate and checkpoint

    def _has_trainable_parameters(self) -> bool:
        return any(p.requires_grad for p in self.parameters())

    def configure_optimizers(self):
        params = [p for p in self.parameters() if p.requires_grad]
        if not params:
            return None
        optimizer = self.optimizer_factory(params)
        if self.lr_scheduler_factory is not None:
            scheduler = self.lr_scheduler_factory(optimizer)
            return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "monitor": "val/mse"}}
        steps = self.trainer.estimated_stepping_batches if self._trainer is not None else float("inf")
        if not 0 < steps < float("inf"):
            return optimizer
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=int(steps))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def window_mse(point: Tensor, future: Tensor) -> Tensor:
    """Point forecast and target (B, H, C) -> squared error of each window, averaged over steps x channels: (B,)
    float64 on the CPU."""
    return (point.detach() - future).square().mean(dim=(1, 2)).double().cpu()


class DeviceLoader:
    """Re-iterable view of a loader whose batches are moved to ``device``.

    Closed-form fits run before training, outside the Trainer's own batch transfer.
    """

    def __init__(self, loader: Iterable[dict[str, Tensor]], device: torch.device) -> None:
        self.loader, self.device = loader, device

    def __iter__(self):
        for batch in self.loader:
            yield {k: v.to(self.device) if isinstance(v, Tensor) else v for k, v in batch.items()}
