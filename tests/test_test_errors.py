"""TestErrors: the per-window test errors collected during ``trainer.test`` equal a second pass over the windows."""

from __future__ import annotations

import lightning as L
import pytest
import torch

from tsattn.data import SeriesDataModule
from tsattn.models import EMAAttentionForecaster, TestErrors


@pytest.mark.parametrize("limit", [1.0, 2], ids=["all-batches", "two-batches"])
def test_collected_errors_equal_window_errors_of_the_tested_batches(wide_frame, limit) -> None:
    dm = SeriesDataModule(frame=wide_frame(n=400, channels=2), lookback=24, horizon=6, batch_size=16)
    L.seed_everything(0, verbose=False)
    model = EMAAttentionForecaster(dm.n_channels, 24, 6, period=dm.period, d_model=8, n_heads=2, random_features=64)
    tested = TestErrors()
    trainer = L.Trainer(
        max_epochs=1,
        limit_train_batches=2,
        limit_test_batches=limit,
        callbacks=[tested],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
    )
    trainer.fit(model, datamodule=dm)
    metrics = trainer.test(model, datamodule=dm, verbose=False)[0]
    batches = list(dm.test_dataloader())[: None if limit == 1.0 else limit]
    expected = model.window_errors(batches)
    assert len(expected) == (dm.num_windows("test") if limit == 1.0 else 2 * 16)
    torch.testing.assert_close(tested.errors, expected, rtol=0.0, atol=0.0)
    assert float(tested.errors.mean()) == pytest.approx(metrics["test/mse"], rel=1e-5)
    trainer.test(model, datamodule=dm, verbose=False)  # a second test starts afresh
    torch.testing.assert_close(tested.errors, expected, rtol=0.0, atol=0.0)
