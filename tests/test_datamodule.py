"""tsattn.data.SeriesDataModule: batches, leak-free scaling, state in checkpoints, prediction on new data."""

from __future__ import annotations

import lightning as L
import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tsattn.data import SeriesDataModule, read_series, time_index

KEYS = {"past", "future", "series_idx", "time_idx", "loc", "scale"}


def _dm(frame, **kw):
    kw.setdefault("lookback", 12)
    kw.setdefault("horizon", 6)
    kw.setdefault("batch_size", 8)
    return SeriesDataModule(frame=frame, **kw)


# ------------------------------------------------------------------------------------------------ batches


def test_attributes_after_init(long_frame):
    dm = _dm(long_frame((120, 150), channels=2), id_col="id")
    assert dm.n_channels == 2 and dm.target_cols == ["y0", "y1"]
    assert dm.freq == "h" and dm.period == 24 and dm.series_ids == ["s0", "s1"]
    assert dm.loc.shape == dm.scale.shape == (2, 2)
    assert _dm(long_frame((120,)), id_col="id", period=12).period == 12


def test_batch_keys_shapes_dtypes(wide_frame):
    dm = _dm(wide_frame(200, channels=3))
    dm.setup("fit")
    for loader in (dm.train_dataloader(), dm.val_dataloader(), dm.test_dataloader()):
        batch = next(iter(loader))
        assert set(batch) == KEYS
        b = batch["past"].shape[0]
        assert batch["past"].shape == (b, 12, 3) and batch["past"].dtype == torch.float32
        assert batch["future"].shape == (b, 6, 3) and batch["future"].dtype == torch.float32
        assert batch["series_idx"].shape == (b,) and batch["series_idx"].dtype == torch.int64
        assert batch["time_idx"].shape == (b,) and batch["time_idx"].dtype == torch.int64
        assert batch["loc"].shape == batch["scale"].shape == (b, 1, 3)
        assert batch["loc"].dtype == batch["scale"].dtype == torch.float64  # original units in float64
    pred = next(iter(dm.predict_dataloader()))
    assert set(pred) == KEYS - {"future"} and pred["past"].shape == (1, 12, 3)
    # Ratio split of 200 rows: train 140, test 40, val 20.
    assert len(dm.train_dataloader().dataset) == 140 - 18 + 1
    assert len(dm.val_dataloader().dataset) == 20 - 6 + 1
    assert len(dm.test_dataloader().dataset) == 40 - 6 + 1


def test_time_idx_and_future_timestamps(wide_frame):
    df = wide_frame(200, channels=2)
    dm = _dm(df, batch_size=500)
    times = pd.DatetimeIndex(df["date"])
    for loader in (dm.train_dataloader(), dm.test_dataloader()):
        batch = next(iter(loader))
        for s, t, past in zip(batch["series_idx"], batch["time_idx"], batch["past"], strict=True):
            stamps = dm.future_timestamps(int(s), int(t) - 12, 18)  # past and future steps
            assert stamps[12].hour == int(t) % 24  # time_idx % period is the hour of the first future step
            rows = times.get_indexer(stamps)
            assert (rows >= 0).all() and (np.diff(rows) == 1).all()
            orig = df[["x0", "x1"]].to_numpy()[rows[:12]]
            np.testing.assert_allclose(dm.inverse_transform(past.numpy(), int(s)), orig, rtol=1e-5, atol=1e-5)
    pred = next(iter(dm.predict_dataloader()))
    future = dm.future_timestamps(0, int(pred["time_idx"][0]), 6)
    assert future[0] == times[-1] + pd.Timedelta("1h") and len(future) == 6
    np.testing.assert_allclose(
        dm.inverse_transform(pred["past"][0].numpy(), 0), df[["x0", "x1"]].to_numpy()[-12:], rtol=1e-5
    )


def test_future_timestamps_business_days(wide_frame):
    df = wide_frame(60, channels=1, freq="B", start="2024-01-01")
    dm = _dm(df, lookback=5, horizon=3)
    pred = next(iter(dm.predict_dataloader()))
    stamps = dm.future_timestamps(0, int(pred["time_idx"][0]), 3)
    assert list(stamps) == list(pd.bdate_range(df["date"].iloc[-1], periods=4)[1:])
    assert (stamps.dayofweek < 5).all()


def test_future_timestamps_irregular_kept_rows(wide_frame):
    df = wide_frame(80, channels=1, freq="B").drop(index=[10, 30]).reset_index(drop=True)  # holidays
    dm = _dm(df, lookback=5, horizon=3, missing="ignore")
    assert dm.freq is None and dm.period is None
    batch = next(iter(dm.test_dataloader()))
    t = int(batch["time_idx"][0])
    assert dm.future_timestamps(0, t, 1)[0] == pd.Timestamp(df["date"].iloc[t])  # row numbers
    last = dm.future_timestamps(0, len(df), 2)
    assert list(last) == list(pd.bdate_range(df["date"].iloc[-1], periods=3)[1:])


@settings(max_examples=12, deadline=None)
@given(
    lengths=st.lists(st.integers(60, 150), min_size=1, max_size=3),
    scaler=st.sampled_from(["standard", "robust", "none"]),
    seed=st.integers(0, 1000),
)
def test_property_inverse_round_trip(lengths, scaler, seed, long_frame):
    df = long_frame(tuple(lengths), channels=2, seed=seed)
    dm = _dm(df, id_col="id", scaler=scaler, lookback=8, horizon=4, batch_size=10_000)
    sf = read_series(df, id_col="id")
    originals = [values for _, _, values in sf.series()]
    t0 = [int(time_index(ds[:1], "h")[0]) for _, ds, _ in sf.series()]
    for loader in (dm.train_dataloader(), dm.val_dataloader(), dm.test_dataloader()):
        batch = next(iter(loader))
        whole = torch.cat([batch["past"], batch["future"]], dim=1)  # (B, L + H, C)
        back = dm.inverse_transform(whole, batch["series_idx"])  # in the dtype of whole
        torch.testing.assert_close(back, (whole * batch["scale"] + batch["loc"]).float(), rtol=1e-5, atol=1e-4)
        torch.testing.assert_close(dm.transform(back, batch["series_idx"]), whole, rtol=1e-4, atol=1e-4)
        for k, values in enumerate(originals):
            mine = (batch["series_idx"] == k).numpy()
            first = batch["time_idx"].numpy()[mine] - 8 - t0[k]  # row of each window's first past step
            # Never crosses into another series.
            assert (first >= 0).all() and (first + 12 <= len(values)).all()
            expect = values[first[:, None] + np.arange(12)]  # (B_k, L + H, C)
            np.testing.assert_allclose(back[mine].numpy(), expect, rtol=1e-5, atol=1e-4)


def test_inverse_transform_channel_axis(wide_frame):
    dm = _dm(wide_frame(200, channels=3))
    q = torch.randn(4, 6, 3, 5)  # (B, H, C, Q)
    out = dm.inverse_transform(q, torch.zeros(4, dtype=torch.int64), channel_axis=2)
    expect = (
        q * torch.tensor(dm.scale[0], dtype=torch.float32)[None, None, :, None]
        + torch.tensor(dm.loc[0], dtype=torch.float32)[None, None, :, None]
    )
    torch.testing.assert_close(out, expect)


# ------------------------------------------------------------------------------------------------ scaling


@pytest.mark.parametrize("kind", ["standard", "robust", "none"])
def test_scaler_fit_on_train_rows(kind, long_frame):
    df = long_frame((100, 130), channels=2)
    dm = _dm(df, id_col="id", scaler=kind)
    for k, uid in enumerate(dm.series_ids):
        n_train = dm.borders[k].train_end
        assert n_train == int(0.7 * (100, 130)[k])  # each series split by its own length
        train = df.loc[df["id"] == uid, ["y0", "y1"]].to_numpy()[:n_train]
        if kind == "standard":
            np.testing.assert_allclose(dm.loc[k], train.mean(0))
            np.testing.assert_allclose(dm.scale[k], train.std(0))
        elif kind == "robust":
            np.testing.assert_allclose(dm.loc[k], np.median(train, 0))
            q75, q25 = np.percentile(train, [75, 25], axis=0)
            np.testing.assert_allclose(dm.scale[k], q75 - q25)
        else:
            np.testing.assert_array_equal(dm.loc[k], 0.0)
            np.testing.assert_array_equal(dm.scale[k], 1.0)


def test_constant_channel_gets_unit_scale(wide_frame, caplog):
    df = wide_frame(100, channels=2).assign(x1=5.0)
    with caplog.at_level("WARNING", logger="tsattn.data.datamodule"):
        dm = _dm(df)
    assert dm.scale[0, 1] == 1.0
    assert torch.isfinite(next(iter(dm.train_dataloader()))["past"]).all()
    assert "1 series/column(s) constant on their training rows ('series'/x1): scaled by 1" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="tsattn.data.datamodule"):
        _dm(df, period=40)  # 70 training rows
    assert "period 40: a series has 70 training rows, fewer than two periods" in caplog.text


@settings(max_examples=20, deadline=None)
@given(
    data=st.data(),
    split=st.sampled_from(["ratio", "time"]),
    scaler=st.sampled_from(["standard", "robust"]),
    value=st.floats(-1e6, 1e6, allow_nan=False),
)
def test_property_holdout_rows_never_change_scaler(data, split, scaler, value, long_frame):
    df = long_frame((90, 110), channels=2)
    kw = {"id_col": "id", "scaler": scaler, "split": split}
    if split == "time":
        kw.update(val_start="2024-01-03 12:00", test_start="2024-01-04 00:00")
    base = _dm(df, **kw)
    k = data.draw(st.integers(0, 1), label="series")
    n = (90, 110)[k]
    row = data.draw(st.integers(base.borders[k].train_end, n - 1), label="row")
    col = data.draw(st.sampled_from(["y0", "y1"]), label="col")
    changed = df.copy()
    pos = np.flatnonzero(changed["id"].to_numpy() == f"s{k}")[row]
    changed.loc[pos, col] = value
    other = _dm(changed, **kw)
    np.testing.assert_array_equal(other.loc, base.loc)
    np.testing.assert_array_equal(other.scale, base.scale)
    if scaler == "standard":  # while a training row does change it
        changed.loc[np.flatnonzero(changed["id"].to_numpy() == f"s{k}")[0], col] = value + 1e7
        assert not np.array_equal(_dm(changed, **kw).loc, base.loc)


@pytest.mark.parametrize("missing", ["ffill", "interpolate"])
def test_filled_values_never_come_from_a_later_split(missing, wide_frame):
    df = wide_frame(200, channels=2)
    base = _dm(df)
    train_end, val_end = base.borders[0].train_end, base.borders[0].val_end
    df.loc[[train_end - 1, val_end - 1], "x0"] = np.nan  # the last row of train and of val
    df = df.drop(index=[train_end - 3])  # and a missing step on the grid
    filled = _dm(df, missing=missing)
    for border in (train_end, val_end):
        later = df.copy()
        later.loc[later.index >= border, ["x0", "x1"]] += 1000.0  # every row from the border on
        moved = _dm(later, missing=missing)
        before = moved.series_frame.frame[["x0", "x1"]].to_numpy()[:border]
        np.testing.assert_array_equal(before, filled.series_frame.frame[["x0", "x1"]].to_numpy()[:border])
        np.testing.assert_array_equal(moved.loc, filled.loc)
        np.testing.assert_array_equal(moved.scale, filled.scale)
    assert not filled.series_frame.frame[["x0", "x1"]].isna().any().any()
    df.loc[df.index < train_end, "x1"] = np.nan  # nothing in the training rows to fill from
    with pytest.raises(ValueError, match=r"column 'x1' of series '.*' has no finite value in its training rows"):
        _dm(df, missing=missing)


# ------------------------------------------------------------------------------------------------ splits & errors


def test_time_split(wide_frame):
    df = wide_frame(200, channels=1)
    dm = _dm(df, split="time", val_start="2024-01-06", test_start="2024-01-07 12:00")
    assert (dm.borders[0].train_end, dm.borders[0].val_end) == (120, 156)
    assert dm.num_windows("val") == 36 - 6 + 1 and dm.num_windows("test") == 44 - 6 + 1
    np.testing.assert_allclose(dm.loc[0], df["x0"].to_numpy()[:120].mean())


def test_split_none_trains_on_everything(wide_frame):
    dm = _dm(wide_frame(100, channels=1), split="none")
    assert dm.num_windows("train") == 100 - 18 + 1
    assert dm.num_windows("val") == dm.num_windows("test") == 0
    assert len(dm.val_dataloader()) == 0


def test_stride(wide_frame):
    dm = _dm(wide_frame(200, channels=1), stride=4)
    assert dm.num_windows("train") == len(range(0, 140 - 18 + 1, 4))
    assert dm.num_windows("test") == 40 - 6 + 1  # eval windows keep stride 1 (the benchmark protocol)


def test_too_short_series_named(long_frame):
    df = long_frame((300, 40), channels=1)
    with pytest.raises(ValueError) as info:
        _dm(df, id_col="id", lookback=24, horizon=12)
    msg = str(info.value)
    assert "series 's1' of <DataFrame> has 40 rows" in msg
    assert "lookback 24 + horizon 12 with split='ratio'" in msg and "needs at least" in msg
    assert "train >= 36 rows, val >= 12, test >= 12" in msg


def test_too_short_for_ett_preset(wide_frame):
    with pytest.raises(
        ValueError, match=r"has 500 rows, but lookback 96 \+ horizon 96 with split='ett-hour'.*14400"
    ):
        _dm(wide_frame(500), lookback=96, horizon=96, split="ett-hour")


def test_time_split_without_room(wide_frame):
    with pytest.raises(
        ValueError, match=r"series 'series' .* split='time'.*the 10 rows before the first cut hold no"
    ):
        _dm(wide_frame(200), split="time", val_start="2024-01-01 10:00", test_start="2024-01-05")


@pytest.mark.parametrize(
    ("kw", "msg"),
    [
        ({"split": "weekly"}, "split='weekly' is not known"),
        ({"scaler": "minmax"}, "scaler='minmax' is not known; use one of standard, robust, none"),
        ({"val_start": "2024-01-03"}, "pass split='time'"),
        ({"lookback": 0}, "lookback must be an integer >= 1"),
        ({"period": 0}, "period must be an integer >= 1, got 0"),
        ({"ratios": (0.8, 0.3, 0.1)}, "must be three non-negative shares"),
    ],
)
def test_bad_arguments(kw, msg, wide_frame):
    with pytest.raises(ValueError, match=msg.replace("(", r"\(").replace(")", r"\)")):
        _dm(wide_frame(200), **kw)


def test_path_xor_frame(wide_frame, tmp_path):
    with pytest.raises(ValueError, match="exactly one of path="):
        SeriesDataModule()
    path = tmp_path / "w.csv"
    wide_frame(200).to_csv(path, index=False)
    with pytest.raises(ValueError, match="exactly one of path="):
        SeriesDataModule(path=str(path), frame=wide_frame(200))
    dm = SeriesDataModule(path=path, lookback=12, horizon=6)
    assert dm.series_ids == ["w"] and dm.hparams["path"] == str(path)


def test_frame_unchanged_by_datamodule(long_frame):
    df = long_frame((100, 100))
    before = df.copy(deep=True)
    dm = _dm(df, id_col="id")
    next(iter(dm.train_dataloader()))
    pd.testing.assert_frame_equal(df, before)


# ------------------------------------------------------------------------------------------------ state


def test_state_dict_round_trip_weights_only(long_frame, tmp_path):
    dm = _dm(long_frame((100, 120), channels=2), id_col="id", scaler="robust")
    state = dm.state_dict()
    path = tmp_path / "state.pt"
    torch.save(state, path)
    loaded = torch.load(path, weights_only=True)
    assert loaded == state
    assert loaded["series_ids"] == ["s0", "s1"] and loaded["freq"] == "h" and loaded["split"] == "ratio"
    assert loaded["lookback"] == 12 and loaded["horizon"] == 6 and loaded["target_cols"] == ["y0", "y1"]
    np.testing.assert_array_equal(np.asarray(loaded["loc"]), dm.loc)


def test_load_state_dict_updates_datasets_in_place(long_frame):
    df = long_frame((100, 120), channels=2)
    dm = _dm(df, id_col="id")
    other = _dm(df, id_col="id", scaler="none")
    loader = other.test_dataloader()  # handed out before the state arrives (as when Lightning resumes)
    other.load_state_dict(dm.state_dict())
    np.testing.assert_array_equal(other.loc, dm.loc)
    a, b = next(iter(dm.test_dataloader())), next(iter(loader))
    for key in KEYS:
        torch.testing.assert_close(a[key], b[key])


def test_load_state_dict_checks_columns(long_frame):
    dm = _dm(long_frame((100,), channels=2), id_col="id")
    other = _dm(long_frame((100,), channels=2), id_col="id", target_cols=["y1"])
    with pytest.raises(ValueError, match=r"made for columns \['y0', 'y1'\].*pass target_cols.* if the data has \['y0'\]"):
        other.load_state_dict(dm.state_dict())
    other = _dm(long_frame((100,), channels=2), id_col="id", target_cols=["y1", "y0"])
    with pytest.raises(ValueError, match=r"has \['y1', 'y0'\]; pass target_cols=\['y0', 'y1'\]\.$"):
        other.load_state_dict(dm.state_dict())
    other = _dm(long_frame((100,), channels=2), id_col="id", lookback=10)
    with pytest.raises(ValueError, match="stored state has lookback=12"):
        other.load_state_dict(dm.state_dict())


def test_for_prediction_seen_and_unseen_series(long_frame, tmp_path):
    train = long_frame((100, 120), channels=2)
    dm = _dm(train, id_col="id")
    new = long_frame((150, 150, 80), channels=2, seed=7)  # s0, s1 seen (with new values), s2 unseen
    new[["y0", "y1"]] *= 3.0
    for state in (dm.state_dict(), {"SeriesDataModule": dm.state_dict(), "state_dict": {}}):
        pdm = SeriesDataModule.for_prediction(state, new)
        assert pdm.series_ids == ["s0", "s1", "s2"] and pdm.split == "none"
        np.testing.assert_array_equal(pdm.loc[:2], dm.loc)
        np.testing.assert_array_equal(pdm.scale[:2], dm.scale)
        s2 = new.loc[new["id"] == "s2", ["y0", "y1"]].to_numpy()
        np.testing.assert_allclose(pdm.loc[2], s2.mean(0))  # fit on its own whole history
        np.testing.assert_allclose(pdm.scale[2], s2.std(0))
        batch = next(iter(pdm.predict_dataloader()))
        assert batch["past"].shape == (3, 12, 2)
        np.testing.assert_allclose(
            pdm.inverse_transform(batch["past"][2].numpy(), 2), s2[-12:], rtol=1e-5, atol=1e-4
        )
    path = tmp_path / "model.ckpt"
    torch.save({"SeriesDataModule": dm.state_dict()}, path)
    pdm = SeriesDataModule.for_prediction(str(path), new.iloc[:100])
    assert pdm.series_ids == ["s0"] and np.array_equal(pdm.loc[0], dm.loc[0])


def test_for_prediction_matches_wide_series_by_file_stem(wide_frame, tmp_path):
    # a wide file's series is its stem: the same stem reuses the stored scaler, another is a series of its own,
    # scaled on its own history whether or not other series come with it (as in tsattn forecast)
    trained = tmp_path / "plant.csv"
    wide_frame(200, channels=2).to_csv(trained, index=False)
    dm = SeriesDataModule(path=trained, lookback=12, horizon=6)
    dm.setup("fit")
    newer = tmp_path / "new" / "plant.csv"
    newer.parent.mkdir()
    wide_frame(50, channels=2, seed=3).assign(x0=lambda f: f.x0 + 100).to_csv(newer, index=False)
    same = SeriesDataModule.for_prediction(dm.state_dict(), newer)
    assert same.series_ids == ["plant"]
    np.testing.assert_array_equal(same.loc, dm.loc)
    renamed = tmp_path / "plant_2025.csv"
    newer.rename(renamed)
    other = SeriesDataModule.for_prediction(dm.state_dict(), renamed)
    assert other.series_ids == ["plant_2025"]
    own = pd.read_csv(renamed)[["x0", "x1"]].to_numpy()
    np.testing.assert_allclose(other.loc[0], own.mean(0))


@pytest.mark.parametrize("freq", ["D", "B", "h"])
def test_rows_dropped_from_the_stored_grid_keep_the_phase_of_the_forecast(wide_frame, freq):
    # missing="ignore" drops a row: the data has no frequency of its own, but it lies on the stored grid, so the
    # forecast continues that grid with the step index (the seasonal phase) of the full series
    full = wide_frame(120, channels=1, freq=freq)
    dm = SeriesDataModule(frame=full, lookback=12, horizon=6)
    holed = full.copy()
    holed.loc[50, "x0"] = np.nan
    whole = SeriesDataModule.for_prediction(dm.state_dict(), full)
    dropped = SeriesDataModule.for_prediction(dm.state_dict(), holed, missing="ignore")
    assert dropped.series_frame.freq is None and dropped.freq == dm.freq
    a, b = (next(iter(m.predict_dataloader())) for m in (whole, dropped))
    assert int(b["time_idx"][0]) == int(a["time_idx"][0])
    np.testing.assert_array_equal(b["past"].numpy(), a["past"].numpy())
    t = int(a["time_idx"][0])  # the first forecast step
    assert list(dropped.future_timestamps(0, t, 6)) == list(whole.future_timestamps(0, t, 6))


class _Tiny(L.LightningModule):
    def __init__(self, channels: int, horizon: int) -> None:
        super().__init__()
        self.horizon = horizon
        self.lin = torch.nn.Linear(channels, channels)

    def _loss(self, batch):
        yhat = self.lin(batch["past"][:, -1:, :]).expand(-1, self.horizon, -1)  # (B, H, C)
        return torch.nn.functional.mse_loss(yhat, batch["future"])

    def training_step(self, batch, batch_idx):
        return self._loss(batch)

    def validation_step(self, batch, batch_idx):
        self.log("val/mse", self._loss(batch))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


@pytest.mark.filterwarnings("ignore:.*LeafSpec", "ignore:.*resuming from a checkpoint")
def test_lightning_checkpoint_holds_state(long_frame, tmp_path):
    df = long_frame((100, 120), channels=2)
    dm = _dm(df, id_col="id")
    trainer = L.Trainer(
        max_steps=2,
        limit_val_batches=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        devices=1,
    )
    trainer.fit(_Tiny(2, 6), datamodule=dm)
    path = tmp_path / "tiny.ckpt"
    trainer.save_checkpoint(path)
    ckpt = torch.load(path, weights_only=True)  # plain data only
    assert ckpt["SeriesDataModule"] == dm.state_dict()
    pdm = SeriesDataModule.for_prediction(path, df)
    np.testing.assert_array_equal(pdm.loc, dm.loc)
    # Resuming restores the state after setup(): datasets already built must pick it up.
    fresh = _dm(df, id_col="id", scaler="none")
    trainer = L.Trainer(
        max_steps=3,
        limit_val_batches=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        devices=1,
    )
    trainer.fit(_Tiny(2, 6), datamodule=fresh, ckpt_path=path)
    np.testing.assert_array_equal(fresh.loc, dm.loc)
    assert fresh.num_windows("train") == dm.num_windows("train")
    a, b = next(iter(dm.test_dataloader())), next(iter(fresh.test_dataloader()))
    torch.testing.assert_close(a["past"], b["past"])


def test_inferred_period_is_saved_so_model_and_data_hparams_log_together(wide_frame, tmp_path):
    """The README's Python example: a model built with dm.period (inferred, 24 for hourly data) logs its
    hyperparameters beside the DataModule's, which Lightning refuses where a shared key differs."""
    from lightning.pytorch.loggers import CSVLogger

    from tsattn.models import RidgeCycle

    dm = _dm(wide_frame(200, channels=2))
    assert dm.period == 24 and dm.hparams["period"] == dm.hparams_initial["period"] == 24
    model = RidgeCycle(n_channels=dm.n_channels, lookback=12, horizon=6, period=dm.period)
    trainer = L.Trainer(max_epochs=1, logger=CSVLogger(tmp_path), enable_progress_bar=False, default_root_dir=tmp_path)
    trainer.fit(model, datamodule=dm)
    assert "period: 24" in (tmp_path / "lightning_logs" / "version_0" / "hparams.yaml").read_text()  # merged
