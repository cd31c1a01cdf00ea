"""The flagship EMAAttentionForecaster: starts at RidgeCycle, explains itself, stays causal and finite."""

from __future__ import annotations

import lightning as L
import numpy as np
import pandas as pd
import pytest
import torch

from tsattn.data import SeriesDataModule
from tsattn.models.ema_attention import EMAAttentionForecaster
from tsattn.models.random_features import RandomFourierFeatures
from tsattn.models.ridge import RidgeCycle

LOOKBACK, HORIZON = 24, 6
SMALL = {"d_model": 8, "n_heads": 2, "patch_len": 8, "patch_stride": 4, "random_features": 256}



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
        **(SMALL | {"random_features": 0}),
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
    with pytest.raises(ValueError, match=rf"expects past windows of shape \(batch, {LOOKBACK}, {c}\), got"):
        model.explain({"past": batch["past"][:, 1:], "time_idx": batch["time_idx"]})
    with pytest.raises(TypeError, match=r"got a dict; of a batch dict, pass batch\['past'\]"):
        model(batch)
    for decays, half_lives in zip(out["decays"], out["half_lives"], strict=True):
        assert decays.shape == (2,) and ((decays > 0) & (decays < 1)).all()
        torch.testing.assert_close(half_lives, torch.log(torch.tensor(0.5)) / torch.log(decays))
    assert 0 < float(out["trend_decay"]) < 1


def test_explain_shows_what_forecasts_use(dm) -> None:
    # in training mode (where Lightning leaves a model) the explanation is still the forecast's, and the mode stays
    model = EMAAttentionForecaster(dm.n_channels, LOOKBACK, HORIZON, period=dm.period, n_blocks=2, dropout=0.5,
                                   **SMALL)
    model.fit_closed_form(dm.train_dataloader())
    batch = next(iter(dm.val_dataloader()))
    model.train()
    first, second = model.explain(batch), model.explain(batch)
    assert model.training
    for a, b in zip(first["attention"], second["attention"], strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(first["forecast"], model(batch["past"], batch["time_idx"]), rtol=0, atol=0)
    # the window divided by its std (instance_norm) is what the attention reads: a scaled window, the same weights
    norm = EMAAttentionForecaster(dm.n_channels, LOOKBACK, HORIZON, period=dm.period, instance_norm=True,
                                  random_features=0, **{k: v for k, v in SMALL.items() if k != "random_features"})
    scaled = dict(batch, past=batch["past"] * 3.0)  # no cycle fitted: the input is the window minus its last value
    for a, b in zip(norm.explain(batch)["attention"], norm.explain(scaled)["attention"], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    # the context is the window's last steps: token ends count in the whole window
    short = EMAAttentionForecaster(dm.n_channels, LOOKBACK, HORIZON, period=dm.period, context=16, **SMALL)
    assert short.explain(batch)["token_ends"][-1] == LOOKBACK - 1


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
    with pytest.raises(ValueError, match="random_features"):
        EMAAttentionForecaster(2, LOOKBACK, HORIZON, random_features=-1)
    with pytest.raises(ValueError, match="random_features=0"):
        EMAAttentionForecaster(2, LOOKBACK, HORIZON, period=4, phase_stack=True)
    with pytest.raises(ValueError, match="bandwidth"):
        EMAAttentionForecaster(2, LOOKBACK, HORIZON, feature_bandwidth=0.0)
    for rho in (0.0, 1.5, float("nan")):
        with pytest.raises(ValueError, match="feature_channel_similarity"):
            EMAAttentionForecaster(2, LOOKBACK, HORIZON, feature_channel_similarity=rho)
    for weight in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="correction_weight"):
            EMAAttentionForecaster(2, LOOKBACK, HORIZON, correction_weight=weight)


def test_context_limits_what_the_kernel_reads(dm) -> None:
    # context=12: the kernel ridge reads the last 12 steps of the deseasonalised window, its length scale set from
    # their mean square on the training windows; earlier steps move the closed form through the linear map only
    torch.manual_seed(0)
    model = EMAAttentionForecaster(dm.n_channels, LOOKBACK, HORIZON, period=dm.period, context=12, **SMALL)
    model.fit_closed_form(dm.train_dataloader())
    model.feature_weight.normal_()  # a map that is surely not zero
    assert model.features.omega.shape[0] == 12
    squares, count = 0.0, 0
    with torch.no_grad():
        for batch in dm.train_dataloader():
            x = model._parts(batch["past"], batch["time_idx"])[0][..., -12:]  # (B, C, 12)
            squares, count = squares + float(x.double().square().sum()), count + x.numel()
    assert float(model.features.scale) == pytest.approx((12 * squares / count) ** -0.5, rel=1e-5)
    batch = next(iter(dm.val_dataloader()))
    early = batch["past"].clone()
    early[:, : LOOKBACK - 12] += torch.randn_like(early[:, : LOOKBACK - 12])
    moved = model.explain(dict(batch, past=early))["closed_form"] - model.explain(batch)["closed_form"]
    through_linear = ((early - batch["past"]).transpose(1, 2) @ model.weight_start.float()).transpose(1, 2)
    assert moved.abs().max() > 0
    torch.testing.assert_close(moved, through_linear, rtol=1e-4, atol=1e-5)
    whole_window = {"state_dict": {"features.omega": torch.zeros(LOOKBACK, 256)}}  # a kernel of the whole lookback
    with pytest.raises(ValueError, match="context is 12"):
        model.on_load_checkpoint(whole_window)


def test_random_features_approximate_a_gaussian_kernel() -> None:
    torch.manual_seed(0)
    rff = RandomFourierFeatures(6, 20_000)
    rff.set_scale(1.0)  # entries of mean square 1: length scale sqrt(6)
    x = torch.randn(5, 6, dtype=torch.float64)
    phi = rff(x)  # (5, D)
    approx = 2.0 * phi @ phi.T / rff.n_features
    exact = torch.exp(-torch.cdist(x, x).square() * float(rff.scale) ** 2 / 2)
    torch.testing.assert_close(approx, exact, atol=0.03, rtol=0.0)


def test_group_phases_scale_the_kernel_between_groups() -> None:
    # the same windows in two groups: the kernel is the Gaussian kernel within a group, rho times it across groups
    rho = 0.6
    rff = RandomFourierFeatures(6, 40_000, seed=0, n_groups=3, group_similarity=rho)
    rff.set_scale(1.0)
    x = torch.randn(4, 6, dtype=torch.float64)
    phi_a, phi_b = rff(x, torch.zeros(4, dtype=torch.long)), rff(x, torch.full((4,), 2))
    exact = torch.exp(-torch.cdist(x, x).square() * float(rff.scale) ** 2 / 2)
    torch.testing.assert_close(2.0 * phi_a @ phi_a.T / rff.n_features, exact, atol=0.03, rtol=0.0)
    torch.testing.assert_close(2.0 * phi_a @ phi_b.T / rff.n_features, rho * exact, atol=0.03, rtol=0.0)
    # the phases are drawn after the map and offsets, which stay those of one shared kernel; no phases when shared
    shared = RandomFourierFeatures(6, 40_000, seed=0)
    assert torch.equal(rff.omega, shared.omega) and torch.equal(rff.offset, shared.offset)
    for n_groups, similarity in ((1, rho), (3, 1.0)):
        phases = RandomFourierFeatures(6, 8, seed=0, n_groups=n_groups, group_similarity=similarity).group_phase
        assert phases.shape == (n_groups, 8) and not phases.any()


def _opposite_frame(n: int = 900, seed: int = 0) -> pd.DataFrame:
    """Two channels whose next step reacts to the sign of the last in opposite ways: no one map fits both."""
    rng = np.random.default_rng(seed)
    x = np.zeros((n, 2))
    for t in range(1, n):
        up = x[t - 1] > 0
        x[t, 0] = np.where(up[0], 0.9 * x[t - 1, 0] - 0.6, -0.5 * x[t - 1, 0] + 0.6)
        x[t, 1] = np.where(up[1], -0.5 * x[t - 1, 1] - 0.6, 0.9 * x[t - 1, 1] + 0.6)
        x[t] += 0.3 * rng.standard_normal(2)
    return pd.DataFrame({"date": pd.date_range("2024-01-01", periods=n, freq="D"), "a": x[:, 0], "b": x[:, 1]})


def test_channel_similarity_lets_the_kernel_fit_each_channel() -> None:
    dm = SeriesDataModule(frame=_opposite_frame(), lookback=16, horizon=4, batch_size=64)
    dm.setup("fit")
    errors, kept = {}, {}
    for rho in (1.0, 0.3):
        torch.manual_seed(0)
        model = EMAAttentionForecaster(dm.n_channels, 16, 4, period=dm.period, feature_channel_similarity=rho, **SMALL)
        model.fit_closed_form(dm._loader("train"))  # penalty by blocked CV on the training windows
        errors[rho], kept[rho] = _start_mse(model, dm.test_dataloader()), np.isfinite(float(model.feature_alpha))
    # one shared kernel averages the two opposite maps and finds nothing worth keeping; channel phases fit each
    assert kept == {1.0: False, 0.3: True}
    assert errors[0.3] < 0.95 * errors[1.0]


def test_random_features_leave_the_random_stream_alone(dm) -> None:
    """Building and fitting the kernel part draws nothing from the global RNG: the network starts and trains alike."""
    nets, states = [], []
    for features in (0, 64):
        torch.manual_seed(0)
        model = EMAAttentionForecaster(
            dm.n_channels, LOOKBACK, HORIZON, period=dm.period, **(SMALL | {"random_features": features})
        )
        model.fit_closed_form(dm.train_dataloader())  # shuffled: every pass draws from the global RNG
        nets.append(model.net)
        states.append(torch.get_rng_state())
    for a, b in zip(nets[0].parameters(), nets[1].parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0.0, atol=0.0)
    assert torch.equal(states[0], states[1])


def _threshold_frame(n: int = 900, seed: int = 0) -> pd.DataFrame:
    """Two threshold-autoregressive channels: the next step depends on the sign of the last, beyond any linear map."""
    rng = np.random.default_rng(seed)
    x = np.zeros((n, 2))
    for t in range(1, n):
        prev = x[t - 1]
        x[t] = np.where(prev > 0, 0.95 * prev - 0.4, -0.6 * prev + 0.9) + 0.3 * rng.standard_normal(2)
    return pd.DataFrame({"date": pd.date_range("2024-01-01", periods=n, freq="D"), "a": x[:, 0], "b": x[:, 1]})


def _start_mse(model, loader) -> float:
    model.eval()
    total = count = 0.0
    with torch.no_grad():
        for batch in loader:
            total += float((model(batch["past"], batch.get("time_idx")) - batch["future"]).square().sum())
            count += batch["future"].numel()
    return total / count


class _FitForecasts(L.Callback):
    """The point forecasts that validation scores during the fit."""

    def __init__(self) -> None:
        self.forecasts: list[torch.Tensor] = []

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self.forecasts.append(outputs)


def _fit(model: EMAAttentionForecaster, dm: SeriesDataModule, epochs: int = 0, tmp_path=None) -> L.Trainer:
    """``Trainer.fit`` on dm, recording what validation scores (`_FitForecasts`); with 0 epochs no training step:
    the closed form only, its feature penalty chosen on dm's validation windows."""
    trainer = L.Trainer(
        accelerator="cpu",
        max_epochs=epochs,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        callbacks=[_FitForecasts()],
        default_root_dir=tmp_path,
    )
    trainer.fit(model, datamodule=dm)
    return trainer


def test_random_features_learn_what_the_linear_map_cannot_and_are_chosen_on_validation() -> None:
    dm = SeriesDataModule(frame=_threshold_frame(), lookback=16, horizon=4, batch_size=64)
    L.seed_everything(0, verbose=False)
    model = EMAAttentionForecaster(dm.n_channels, 16, 4, period=dm.period, **SMALL)
    _fit(model, dm)
    ridge = RidgeCycle(dm.n_channels, 16, 4, period=dm.period)
    ridge.fit_closed_form(dm._loader("train"))
    assert np.isfinite(float(model.feature_alpha))  # a feature map was kept
    # the kept map is the best of the candidates on validation, so never worse there than the linear closed form
    assert _start_mse(model, dm.val_dataloader()) <= _start_mse(ridge, dm.val_dataloader())
    assert _start_mse(model, dm.test_dataloader()) < 0.95 * _start_mse(ridge, dm.test_dataloader())
    # without validation data the penalty comes from blocked CV on the training windows; the features are saved
    again = EMAAttentionForecaster(dm.n_channels, 16, 4, period=dm.period, **SMALL)
    again.fit_closed_form(dm._loader("train"))
    assert float(again.feature_alpha) > 0
    loaded = EMAAttentionForecaster(dm.n_channels, 16, 4, period=dm.period, **SMALL)
    loaded.load_state_dict(model.state_dict())
    batch = next(iter(dm.test_dataloader()))
    with torch.no_grad():
        expected = model(batch["past"], batch["time_idx"])
        torch.testing.assert_close(loaded.eval()(batch["past"], batch["time_idx"]), expected)


def test_random_features_fit_a_random_subset_of_rows_on_large_panels(monkeypatch) -> None:
    """Above `_MAX_FEATURE_ROWS` rows (window, channel) the kernel ridge is fitted and scored on validation on seeded
    random subsets of that size: the same seed gives the same map, and the subset still finds what the linear map
    cannot."""
    import tsattn.models.ema_attention as module

    dm = SeriesDataModule(frame=_threshold_frame(n=4000), lookback=16, horizon=4, batch_size=64)
    n_rows, val_rows = (dm.num_windows(split) * dm.n_channels for split in ("train", "val"))
    cap = val_rows // 2  # below both: a share of the training and of the validation rows
    monkeypatch.setattr(module, "_MAX_FEATURE_ROWS", cap)
    seen: list[int] = []
    shares: dict[str, float] = {}
    chunks, share = module._row_chunks, module._row_share

    def counted(parts, min_rows):
        for chunk in chunks(parts, min_rows):
            seen.append(chunk[0].shape[0])
            yield chunk

    def noted(rows, what):
        shares[what] = share(rows, what)
        return shares[what]

    monkeypatch.setattr(module, "_row_chunks", counted)
    monkeypatch.setattr(module, "_row_share", noted)
    maps = []
    for _ in range(2):
        L.seed_everything(0, verbose=False)
        model = EMAAttentionForecaster(dm.n_channels, 16, 4, period=dm.period, **SMALL)
        _fit(model, dm)
        maps.append(model.feature_weight.clone())
        assert 0.8 * cap < sum(seen) < 1.2 * cap
        assert shares == {"training": cap / n_rows, "validation": cap / val_rows}
        seen.clear()
    torch.testing.assert_close(maps[0], maps[1], rtol=0.0, atol=0.0)
    assert np.isfinite(float(model.feature_alpha))  # a map was kept
    ridge = RidgeCycle(dm.n_channels, 16, 4, period=dm.period)
    ridge.fit_closed_form(dm._loader("train"))
    assert _start_mse(model, dm.test_dataloader()) < 0.95 * _start_mse(ridge, dm.test_dataloader())


@pytest.mark.parametrize(
    ("saved_with", "missing"),
    [
        ({"random_features": 0}, lambda key: key.startswith("feature")),  # before the kernel-ridge part
        ({"feature_channel_similarity": 1.0}, lambda key: key == "features.group_phase"),  # before channel phases
    ],
    ids=["no-kernel", "one-shared-kernel"],
)
def test_older_checkpoints_load_as_the_model_they_were(dm, saved_with, missing) -> None:
    torch.manual_seed(0)
    old = EMAAttentionForecaster(dm.n_channels, LOOKBACK, HORIZON, period=dm.period, **(SMALL | saved_with))
    old.fit_closed_form(dm.train_dataloader())
    old.feature_weight.normal_()  # a kernel map that is surely not zero (empty without the kernel part)
    saved = {k: v for k, v in old.state_dict().items() if not missing(k)}  # as written before
    torch.manual_seed(0)
    new = EMAAttentionForecaster(
        dm.n_channels, LOOKBACK, HORIZON, period=dm.period, **(SMALL | {"feature_channel_similarity": 0.9})
    )
    assert any(v.any() for k, v in new.state_dict().items() if missing(k))  # loading must fill these in
    checkpoint = {"state_dict": dict(saved)}
    new.on_load_checkpoint(checkpoint)
    new.load_state_dict(checkpoint["state_dict"])
    batch = next(iter(dm.test_dataloader()))
    with torch.no_grad():
        expected = old.eval()(batch["past"], batch["time_idx"])
        torch.testing.assert_close(new.eval()(batch["past"], batch["time_idx"]), expected)


def _val_forecasts(model: EMAAttentionForecaster, dm: SeriesDataModule, train: bool) -> tuple[torch.Tensor, ...]:
    """The model's forecasts of the validation windows in train or eval mode, and its closed-form part alone."""
    batches = list(dm.val_dataloader())
    model.train(train)
    with torch.no_grad():
        forecast = torch.cat([model(b["past"], b["time_idx"]) for b in batches])
        closed = torch.cat([model._parts(b["past"], b["time_idx"])[1] for b in batches])
    return forecast, closed


@pytest.mark.parametrize("weight", [0.0, 0.5, 1.0])
def test_forecasts_after_the_fit_weigh_the_correction(dm, weight) -> None:
    torch.manual_seed(0)
    model = EMAAttentionForecaster(
        dm.n_channels, LOOKBACK, HORIZON, period=dm.period, dropout=0.0, correction_weight=weight, **SMALL
    )
    trainer = _fit(model, dm, epochs=1)
    whole, closed = _val_forecasts(model, dm, train=True)  # no dropout: training's forecast, the whole correction
    after, _ = _val_forecasts(model, dm, train=False)
    assert (whole - closed).abs().max() > 1e-3  # the fit trained a correction
    torch.testing.assert_close(after, closed + weight * (whole - closed))
    # validation during the fit (what selection sees) scored the whole correction, whatever the weight
    torch.testing.assert_close(torch.cat(trainer.callbacks[0].forecasts), whole)


def test_checkpoints_saved_before_the_correction_weight_keep_the_whole_correction(dm, tmp_path) -> None:
    torch.manual_seed(0)
    model = EMAAttentionForecaster(dm.n_channels, LOOKBACK, HORIZON, period=dm.period, dropout=0.0, **SMALL)
    trainer = _fit(model, dm, epochs=1, tmp_path=tmp_path)
    whole, _ = _val_forecasts(model, dm, train=True)
    trainer.save_checkpoint(tmp_path / "new.ckpt")
    checkpoint = torch.load(tmp_path / "new.ckpt", weights_only=True)
    del checkpoint["hyper_parameters"]["correction_weight"]  # as written before the option
    torch.save(checkpoint, tmp_path / "old.ckpt")
    new = EMAAttentionForecaster.load_from_checkpoint(tmp_path / "new.ckpt")
    old = EMAAttentionForecaster.load_from_checkpoint(tmp_path / "old.ckpt")
    assert (new.correction_weight, old.correction_weight) == (0.5, 1.0)
    torch.testing.assert_close(_val_forecasts(old, dm, train=False)[0], whole)
