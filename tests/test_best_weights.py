"""BestWeights: the start is scored like a validation epoch (-1), the best state is kept and restored."""

from __future__ import annotations

import math

import lightning as L
import pytest
import torch

from tsattn.data import SeriesDataModule
from tsattn.models import BestWeights, EMAAttentionForecaster
from tsattn.models.best_weights import START_EPOCH


def _fit(frame, lr: float, epochs: int = 2) -> tuple[EMAAttentionForecaster, BestWeights, SeriesDataModule]:
    L.seed_everything(0, verbose=False)
    dm = SeriesDataModule(frame=frame, lookback=24, horizon=6, batch_size=32)
    model = EMAAttentionForecaster(
        n_channels=dm.n_channels, lookback=24, horizon=6, period=dm.period, d_model=8, n_heads=2,
        optimizer=lambda params: torch.optim.SGD(params, lr=lr),
    )
    best = BestWeights()
    trainer = L.Trainer(max_epochs=epochs, callbacks=[best], logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                        accelerator="cpu")
    trainer.fit(model, datamodule=dm)
    return model, best, dm


def _val_mse(model, dm) -> float:
    model.eval()
    total = count = 0.0
    with torch.no_grad():
        for batch in dm.val_dataloader():
            total += float((model(batch["past"], batch.get("time_idx")) - batch["future"]).square().sum())
            count += batch["future"].numel()
    return total / count


def test_start_kept_and_restored_when_training_hurts(wide_frame):
    model, best, dm = _fit(wide_frame(400), lr=1e4)
    assert best.start_won and best.best_epoch == START_EPOCH
    assert best.start_seconds is not None and best.start_seconds > 0
    assert not _val_mse(model, dm) <= best.best_score  # the wrecked last state (worse, or NaN)
    best.restore(model)
    assert not model.net.head[-1].weight.any()  # the zero-initialised correction: the closed-form start
    assert _val_mse(model, dm) == pytest.approx(best.best_score, rel=1e-5)


def test_best_trained_epoch_restored(wide_frame):
    model, best, dm = _fit(wide_frame(400), lr=1e-2, epochs=3)
    assert math.isfinite(best.best_score)
    best.restore(model)
    assert _val_mse(model, dm) == pytest.approx(best.best_score, rel=1e-5)


def test_unknown_monitor_is_refused():
    with pytest.raises(ValueError, match="val/mae"):
        BestWeights(monitor="val/loss")
