"""BestWeights: the start is scored like a validation epoch (-1), the best state is kept and restored."""

from __future__ import annotations

import io
import math
from types import SimpleNamespace

import lightning as L
import pytest
import torch

from tsattn.data import SeriesDataModule
from tsattn.models import BestWeights, EMAAttentionForecaster
from tsattn.models.base import Forecaster
from tsattn.models.best_weights import START_EPOCH


def _fit(frame, lr: float, epochs: int = 2) -> tuple[EMAAttentionForecaster, BestWeights, SeriesDataModule]:
    L.seed_everything(0, verbose=False)
    dm = SeriesDataModule(frame=frame, lookback=24, horizon=6, batch_size=32)
    model = EMAAttentionForecaster(
        n_channels=dm.n_channels, lookback=24, horizon=6, period=dm.period, d_model=8, n_heads=2,
        correction_weight=1.0,  # forecasts after the fit as validation scored them, not averaged with the start
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
    assert best.trained.windows.shape == (dm.num_windows("val"),)  # every validation window scored, in order
    best.restore(model)
    assert _val_mse(model, dm) == pytest.approx(best.best_score, rel=1e-5)


def test_unknown_monitor_is_refused():
    with pytest.raises(ValueError, match="val/mae"):
        BestWeights(monitor="val/loss")


class _Table(Forecaster):
    """Forecasts a stored value for each window (``time_idx`` indexes it) of a zero series: its error is set by hand."""

    def __init__(self, n_windows: int) -> None:
        super().__init__(1, 1, 1, revin=False)
        self.register_buffer("table", torch.zeros(n_windows))

    def forecast(self, past, time_idx):
        return self.table[time_idx].view(-1, 1, 1, 1)


def _scored(best: BestWeights, errors: list[list[float]]) -> _Table:
    """Score the start (the first squared errors per window) and then one epoch per further list, as a fit would."""
    batches = [
        {"past": torch.zeros(2, 1, 1), "future": torch.zeros(2, 1, 1), "time_idx": torch.tensor([i, i + 1])}
        for i in range(0, len(errors[0]), 2)
    ]
    model = _Table(len(errors[0]))
    datamodule = SimpleNamespace(val_dataloader=lambda: batches)
    trainer = SimpleNamespace(current_epoch=0, sanity_checking=False, callback_metrics={}, datamodule=datamodule)
    for epoch, values in enumerate(errors, start=START_EPOCH):
        model.table.copy_(torch.tensor(values).sqrt())
        if epoch == START_EPOCH:
            best.on_train_epoch_start(trainer, model)
            continue
        trainer.current_epoch = epoch
        best.on_validation_epoch_start(trainer, model)
        for batch in batches:
            best.on_validation_batch_end(trainer, model, model(batch["past"], batch["time_idx"])[..., 0], batch, 0)
        trainer.callback_metrics["val/mse"] = torch.tensor(values).mean()
        best.on_validation_epoch_end(trainer, model)
    return model


def test_a_gain_on_one_stretch_of_validation_keeps_the_start():
    start = [1.0] * 8
    one_stretch = [0.0, 0.0] + [1.05] * 6  # lower overall (0.79), better in 1 of the 4 blocks of 2 windows
    best = BestWeights()
    model = _scored(best, [start, one_stretch])
    assert best.trained.score == pytest.approx(0.7875) and best.start_won and best.best_score == pytest.approx(1.0)
    best.restore(model)
    torch.testing.assert_close(model.table, torch.ones(8))
    # the same epoch is kept when the lowest score alone decides, or when it wins in most blocks
    only_score = BestWeights(blocks=1, min_blocks=1)
    _scored(only_score, [start, one_stretch])
    assert only_score.best_epoch == 0
    most_blocks = BestWeights()
    _scored(most_blocks, [start, [0.0, 0.0, 0.9, 0.9, 0.9, 0.9, 1.05, 1.05]])
    assert most_blocks.best_epoch == 0 and not most_blocks.start_won


def test_only_the_lowest_trained_epoch_is_weighed_against_the_start():
    start = [1.0] * 8
    best = BestWeights()
    _scored(best, [start, [0.0, 0.0] + [1.05] * 6, [0.95] * 8])  # epoch 1 wins every block but scores higher
    assert best.trained.epoch == 0 and best.start_won


def test_bad_block_rule_is_refused():
    with pytest.raises(ValueError, match="min_blocks"):
        BestWeights(blocks=2, min_blocks=3)


def test_scored_states_travel_in_checkpoints(wide_frame):
    # a fit resumed from a checkpoint must still weigh the start and the epochs scored before it
    model, best, _ = _fit(wide_frame(400), lr=1e-2, epochs=2)
    state = best.state_dict()
    assert set(state) == {"start", "trained"}
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    resumed = BestWeights()
    resumed.load_state_dict(torch.load(buffer, weights_only=True))
    assert (resumed.best_epoch, resumed.best_score) == (best.best_epoch, best.best_score)
    for name in ("start", "trained"):
        torch.testing.assert_close(getattr(resumed, name).windows, getattr(best, name).windows)
        for key, value in getattr(best, name).state.items():
            torch.testing.assert_close(getattr(resumed, name).state[key], value)
    # the closed-form parts do not train: the trained state holds the start's tensors, not copies of them
    start, trained = best.start.state, best.trained.state
    assert trained["features.omega"] is start["features.omega"]
    assert trained["net.head.1.weight"] is not start["net.head.1.weight"]


def test_checkpoints_hold_the_closed_form_parts_once(wide_frame, tmp_path):
    model, best, _ = _fit(wide_frame(400), lr=1e-2, epochs=2)
    trainer = model.trainer
    trainer.save_checkpoint(tmp_path / "full.ckpt")
    trainer.save_checkpoint(tmp_path / "weights.ckpt", weights_only=True)
    full = torch.load(tmp_path / "full.ckpt", weights_only=True)
    assert full["callbacks"]["BestWeights"]["trained"]["epoch"] == best.trained.epoch
    # two more states of the model (start and best epoch) and the optimizer's moments, in a fraction more space
    assert (tmp_path / "full.ckpt").stat().st_size < 1.3 * (tmp_path / "weights.ckpt").stat().st_size
