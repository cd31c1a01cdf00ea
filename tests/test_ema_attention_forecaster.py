"""The flagship EMAAttentionForecaster: starts at RidgeCycle, explains itself, stays causal and finite."""

from __future__ import annotations

import pytest
import torch

from tsattn.data import SeriesDataModule
from tsattn.models.ema_attention import EMAAttentionForecaster
from tsattn.models.ridge import RidgeCycle

LOOKBACK, HORIZON = 24, 6
SMALL = {"d_model": 8, "n_heads": 2, "patch_len": 8, "patch_stride": 4}



@pytest.fixture(scope="module")
def dm(wide_frame) -> SeriesDataModule:
    return SeriesDataModule(
        frame=wide_frame(n=300, channels=2), lookback=LOOKBACK, horizon=HORIZON, batch_size=32
    )


def _train(model: EMAAttentionForecaster, dm: SeriesDataModule, steps: int = 3) -> None:
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _, batch in zip(range(steps), dm.train_dataloader(), strict=False):
        loss = model.loss_fn(model(batch["past"], batch["time_idx"]), batch["future"])
        opt.zero_grad()
        loss.backward()
        opt.step()


@pytest.mark.parametrize("half_life", [None, 0.5], ids=["plain-cycle", "recent-cycle"])
@pytest.mark.parametrize("quantiles", [None, [0.1, 0.5, 0.9]], ids=["point", "quantile"])
def test_starts_at_ridge_cycle(dm, quantiles, half_life) -> None:
    torch.manual_seed(0)
    model = EMAAttentionForecaster(
        dm.n_channels,
        LOOKBACK,
        HORIZON,
        period=dm.period,
        cycle_half_life=half_life,
        quantiles=quantiles,
        **SMALL,
    )
    ridge = RidgeCycle(
        dm.n_channels,
        LOOKBACK,
        HORIZON,
        period=dm.period,
        cycle_half_life=model.cycle_half_life,
        quantiles=quantiles,
    )
    # the same data in the same order: both fit the same closed form (the train loader is shuffled)
    batches = list(dm._loader("train", shuffle=False))
    model.fit_closed_form(batches)
    ridge.fit_closed_form(batches)
    model.eval()
    batch = next(iter(dm.test_dataloader()))
    with torch.no_grad():
        torch.testing.assert_close(
            model(batch["past"], batch["time_idx"]),
            ridge(batch["past"], batch["time_idx"]),
            atol=1e-5,
            rtol=1e-5,
        )
    # training moves it away from the start, and quantiles stay ordered
    model.train()
    _train(model, dm)
    model.eval()
    with torch.no_grad():
        pred = model(batch["past"], batch["time_idx"])
    assert torch.isfinite(pred).all()
    assert not torch.allclose(pred, ridge(batch["past"], batch["time_idx"]))
    if quantiles:
        assert (pred.diff(dim=-1) >= 0).all()


def test_explain_shapes(dm) -> None:
    model = EMAAttentionForecaster(dm.n_channels, LOOKBACK, HORIZON, period=dm.period, n_blocks=2, **SMALL)
    model.fit_closed_form(dm.train_dataloader())
    batch = next(iter(dm.val_dataloader()))
    out = model.explain(batch)
    b, c, tokens = batch["past"].shape[0], dm.n_channels, model.net.n_tokens
    assert tokens == 5  # patches of 8 every 4 steps over 24 steps
    assert len(out["attention"]) == 2
    for w in out["attention"]:
        assert w.shape == (b, c, 2, tokens, model.net.window)
        torch.testing.assert_close(w.sum(-1), torch.ones(b, c, 2, tokens))
        # causal over tokens: token i sees only offsets 0..i
        for i in range(tokens):
            assert (w[..., i, i + 1 :] == 0).all()
    assert out["trend"].shape == batch["past"].shape
    assert out["token_ends"].tolist() == [7, 11, 15, 19, 23]
    assert out["forecast"].shape == (b, HORIZON, c) and out["closed_form"].shape == (b, HORIZON, c)
    assert out["cycle"].shape == (dm.period, c)
    for decays, half_lives in zip(out["decays"], out["half_lives"], strict=True):
        assert decays.shape == (2,) and ((decays > 0) & (decays < 1)).all()
        torch.testing.assert_close(half_lives, torch.log(torch.tensor(0.5)) / torch.log(decays))
    assert 0 < float(out["trend_decay"]) < 1


@pytest.mark.parametrize(
    "hparams",
    [
        {"patch_len": 1, "patch_stride": 1, "window": 6},  # step tokens
        {
            "patch_len": 64,
            "trend_decay": None,
            "channel_embedding": False,
        },  # one token longer than the window
        {"instance_norm": True, "linear_lr_scale": 0.0},
    ],
    ids=["steps", "one-token", "instance-norm"],
)
def test_finite_and_window_only(dm, hparams) -> None:
    """No NaN (also on a constant window), and the forecast depends only on the past window it is given."""
    torch.manual_seed(0)
    kw = {**SMALL, **hparams}
    model = EMAAttentionForecaster(dm.n_channels, LOOKBACK, HORIZON, period=dm.period, **kw)
    model.fit_closed_form(dm.train_dataloader())
    _train(model, dm, steps=2)
    model.eval()
    batch = next(iter(dm.val_dataloader()))
    past, tidx = batch["past"], batch["time_idx"]
    with torch.no_grad():
        pred = model(past, tidx)
        assert torch.isfinite(pred).all()
        assert torch.isfinite(model(torch.zeros_like(past), tidx)).all()
        # a change to one window leaves the others' forecasts unchanged (no mixing across the batch)
        changed = past.clone()
        changed[0] += torch.randn_like(changed[0])
        torch.testing.assert_close(model(changed, tidx)[1:], pred[1:])


def test_context_limits_what_the_correction_reads(dm) -> None:
    # context=12: the attention correction reads the last 12 steps; earlier steps reach the forecast only
    # through the closed form
    torch.manual_seed(0)
    model = EMAAttentionForecaster(dm.n_channels, LOOKBACK, HORIZON, period=dm.period, context=12, **SMALL)
    model.fit_closed_form(dm.train_dataloader())
    _train(model, dm, steps=3)
    model.eval()
    batch = next(iter(dm.val_dataloader()))
    out = model.explain(batch)
    assert model.net.n_tokens == 2 and out["trend"].shape == (batch["past"].shape[0], 12, dm.n_channels)
    correction = out["forecast"] - out["closed_form"]
    assert correction.abs().max() > 0  # training moved the correction away from zero
    early = dict(batch, past=batch["past"].clone())
    early["past"][:, : LOOKBACK - 12] += torch.randn_like(early["past"][:, : LOOKBACK - 12])
    changed = model.explain(early)
    torch.testing.assert_close(changed["forecast"] - changed["closed_form"], correction)
    assert not torch.allclose(changed["closed_form"], out["closed_form"])
    with pytest.raises(ValueError, match="context"):
        EMAAttentionForecaster(2, LOOKBACK, HORIZON, context=0)


def test_no_period_and_bad_arguments(dm) -> None:
    model = EMAAttentionForecaster(dm.n_channels, LOOKBACK, HORIZON, period=None, **SMALL)
    model.fit_closed_form(dm.train_dataloader())
    batch = next(iter(dm.val_dataloader()))
    with torch.no_grad():
        assert torch.isfinite(model(batch["past"], None)).all()  # no cycle: time_idx not needed
    with pytest.raises(ValueError, match="revin"):
        EMAAttentionForecaster(2, LOOKBACK, HORIZON, revin=True)
    with pytest.raises(ValueError, match="trend_decay"):
        EMAAttentionForecaster(2, LOOKBACK, HORIZON, trend_decay=1.5)
    with pytest.raises(ValueError, match="cycle_half_life"):
        EMAAttentionForecaster(2, LOOKBACK, HORIZON, cycle_half_life=float("nan"))
