"""`tsattn backtest`: fold positions, metrics against hand computations, leakage (with and without refit), CLI."""

from __future__ import annotations

import lightning as L
import numpy as np
import pandas as pd
import pytest
import torch
from conftest import make_long_frame, make_wide_frame

from tsattn import backtest as bt
from tsattn.data import SeriesDataModule
from tsattn.metrics import mase
from tsattn.models.baselines import Linear, Naive

LOOKBACK, HORIZON = 16, 4
NO_BAR = ["--trainer.enable_progress_bar", "false", "--trainer.accelerator", "cpu"]



def _train(model: L.LightningModule, dm: SeriesDataModule, path) -> str:
    trainer = L.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, accelerator="cpu", devices=1)
    trainer.fit(model, datamodule=dm)
    trainer.save_checkpoint(path)
    return str(path)


def series(n: int = 200) -> pd.DataFrame:
    """One wide hourly series `y` (period 24 inferred)."""
    return make_wide_frame(n, 1, seed=3).rename(columns={"x0": "y"})


@pytest.fixture(scope="module")
def plain_ckpt(tmp_path_factory) -> str:
    """Linear without RevIN: its forecasts move with the scaler, so a scaler fit past a cutoff would show."""
    dm = SeriesDataModule(frame=series(), lookback=LOOKBACK, horizon=HORIZON, batch_size=32)
    return _train(Linear(1, LOOKBACK, HORIZON, revin=False), dm, tmp_path_factory.mktemp("ckpt") / "lin.ckpt")


@pytest.fixture(scope="module")
def quantile_ckpt(tmp_path_factory) -> str:
    dm = SeriesDataModule(frame=series(), lookback=LOOKBACK, horizon=HORIZON, batch_size=32)
    model = Naive(1, LOOKBACK, HORIZON, quantiles=[0.1, 0.5, 0.9])
    return _train(model, dm, tmp_path_factory.mktemp("ckpt") / "q.ckpt")


def test_folds_and_metrics_match_hand_computation(plain_ckpt):
    data = series(200)
    res = bt.backtest(plain_ckpt, data, windows=4, step=5, trainer={"accelerator": "cpu"})
    f = res.forecasts
    positions = bt.fold_positions(200, HORIZON, 4, 5)
    assert positions == [181, 186, 191, 196]  # the last fold ends at the last row
    assert list(f.columns) == ["unique_id", "fold", "cutoff", "ds", "step", "y", "yhat"]
    assert len(f) == 4 * HORIZON and res.season == 24
    for fold, p in enumerate(positions):
        rows = f[f["fold"] == fold]
        assert (rows["cutoff"] == data["date"][p - 1]).all()
        assert list(rows["ds"]) == list(data["date"][p : p + HORIZON])
        np.testing.assert_allclose(rows["y"], data["y"][p : p + HORIZON])
        # Per fold, the per-step scaled errors average to metrics.mase on the fold's history.
        hist = torch.tensor(data["y"][:p].to_numpy())[:, None]
        expected = mase(torch.tensor(rows["yhat"].to_numpy())[:, None], torch.tensor(rows["y"].to_numpy())[:, None],
                        hist, season=24)
        scale = bt._naive_scale(data[["y"]].to_numpy(), p, 24)
        scaled = bt._scale_errors(rows[["y"]].to_numpy(), rows[["yhat"]].to_numpy(), scale)
        np.testing.assert_allclose(scaled.mean(), float(expected), rtol=1e-6)
    m = res.metrics
    assert list(m.columns) == ["unique_id", "step", "folds", "mse", "mae", "smape", "mase"]
    assert list(m["step"]) == list(range(1, HORIZON + 1)) and (m["folds"] == 4).all()
    for step, rows in f.groupby("step"):
        err = rows["y"] - rows["yhat"]
        row = m[m["step"] == step].iloc[0]
        np.testing.assert_allclose(row["mse"], np.mean(err**2), rtol=1e-6)
        np.testing.assert_allclose(row["mae"], np.mean(np.abs(err)), rtol=1e-6)
        smape = np.mean(200 * np.abs(err) / (np.abs(rows["y"]) + np.abs(rows["yhat"])))
        np.testing.assert_allclose(row["smape"], smape, rtol=1e-5)
    assert list(res.summary["unique_id"]) == ["series", "all"]
    assert "all" in res.format()


def _perturb_after(data: pd.DataFrame, row: int) -> pd.DataFrame:
    changed = data.copy()
    changed.loc[row:, "y"] = changed.loc[row:, "y"] * 3.0 + 50.0
    return changed


@pytest.mark.parametrize("refit", [False, True], ids=["fixed", "refit"])
def test_changing_data_after_a_cutoff_never_changes_that_fold(plain_ckpt, refit):
    data = series(120)
    windows, step = 2, 8
    first = bt.fold_positions(len(data), HORIZON, windows, step)[0]  # rows >= first come after fold 0's cutoff
    kwargs = {"windows": windows, "step": step, "refit": refit,
              "trainer": {"accelerator": "cpu", "max_epochs": 1}}
    base = bt.backtest(plain_ckpt, data, **kwargs).forecasts
    moved = bt.backtest(plain_ckpt, _perturb_after(data, first), **kwargs).forecasts
    fold0 = base["fold"] == 0
    np.testing.assert_array_equal(base.loc[fold0, "yhat"].to_numpy(), moved.loc[fold0, "yhat"].to_numpy())
    assert not np.allclose(base.loc[~fold0, "yhat"], moved.loc[~fold0, "yhat"])  # the test can see a change


@pytest.mark.parametrize("refit", [False, True], ids=["fixed", "refit"])
def test_missing_values_are_filled_from_the_history_before_the_cutoff(plain_ckpt, refit):
    # --missing interpolate: the last history row of fold 0 is missing; rows after the cutoff must not fill it
    data = series(120)
    windows, step = 2, 8
    first = bt.fold_positions(len(data), HORIZON, windows, step)[0]
    data.loc[first - 1, "y"] = np.nan
    data.loc[first + 1, "y"] = np.nan  # an actual of fold 0: reported empty, not scored
    kwargs = {"windows": windows, "step": step, "refit": refit, "missing": "interpolate",
              "trainer": {"accelerator": "cpu", "max_epochs": 1}}
    base = bt.backtest(plain_ckpt, data, **kwargs)
    moved = bt.backtest(plain_ckpt, _perturb_after(data, first), **kwargs).forecasts
    f = base.forecasts
    fold0 = f["fold"] == 0
    np.testing.assert_array_equal(f.loc[fold0, "yhat"].to_numpy(), moved.loc[fold0, "yhat"].to_numpy())
    assert f.loc[fold0, "y"].isna().sum() == 1 and f["yhat"].notna().all()
    assert list(base.summary["points"]) == [2 * HORIZON - 1] * 2  # (one series, all): the missing actual is not scored
    step2 = base.metrics[base.metrics["step"] == 2].iloc[0]
    err = f[(f["step"] == 2) & (f["fold"] == 1)]
    assert step2["mse"] == pytest.approx(float(((err["y"] - err["yhat"]) ** 2).mean()))  # fold 1 alone is scored


def test_refit_on_a_panel_never_trains_on_rows_after_a_series_cutoff(plain_ckpt):
    # s0 ends 36 hours after s1: a model that forecasts s1 must not see s0's rows after s1's cutoff
    frame = make_long_frame((120, 60), channels=1, id_col="id").rename(columns={"y0": "y"})
    kwargs = {"windows": 2, "step": 8, "refit": True, "id_col": "id", "trainer": {"accelerator": "cpu"}}
    base = bt.backtest(plain_ckpt, frame, **kwargs).forecasts
    s1 = (base["unique_id"] == "s1") & (base["fold"] == 0)
    cutoff = base.loc[s1, "cutoff"].iloc[0]
    moved = frame.copy()
    later = (moved["id"] == "s0") & (pd.to_datetime(moved["ds"]) > cutoff)
    moved.loc[later, "y"] = moved.loc[later, "y"] * 3.0 + 50.0
    again = bt.backtest(plain_ckpt, moved, **kwargs).forecasts
    np.testing.assert_array_equal(base.loc[s1, "yhat"].to_numpy(), again.loc[s1, "yhat"].to_numpy())
    s0 = base["unique_id"] == "s0"  # whose own history the change reaches: the test can see a change
    assert not np.allclose(base.loc[s0, "yhat"], again.loc[s0, "yhat"])


def test_refit_trains_as_the_checkpoint_was_trained(plain_ckpt, monkeypatch):
    seen = []
    fit = L.Trainer.fit

    def record(self, model, *args, datamodule=None, **kwargs):
        seen.append((self.max_epochs, datamodule.batch_size))
        return fit(self, model, *args, datamodule=datamodule, **kwargs)

    monkeypatch.setattr(L.Trainer, "fit", record)
    bt.backtest(plain_ckpt, series(120), windows=1, step=1, refit=True, batch_size=256,
                trainer={"accelerator": "cpu"})
    assert seen == [(1, 32)]  # one epoch of batches of 32 (the fit's), not the prediction batch size


def test_long_panel_quantiles_and_skipped_folds(quantile_ckpt):
    frame = make_long_frame((60, 25), channels=1, id_col="id").rename(columns={"y0": "y"})
    res = bt.backtest(quantile_ckpt, frame, windows=3, step=3, id_col="id", trainer={"accelerator": "cpu"})
    assert {"pinball", "coverage", "yhat_q0.1"} <= set(res.metrics.columns) | set(res.forecasts.columns)
    assert res.metrics["coverage"].between(0, 1).all() and (res.metrics["pinball"] >= 0).all()
    # s1 has 25 rows: its first fold has 25 - 4 - 6 = 15 history rows < lookback 16, so it is skipped, loudly.
    assert sorted(res.forecasts.groupby("unique_id")["fold"].nunique().items()) == [("s0", 3), ("s1", 2)]
    assert len(res.skipped) == 1 and res.skipped[0][0] == "s1" and "lookback=16" in res.skipped[0][2]


def test_cli_outputs_and_no_overwrite(tmp_path, capsys, quantile_ckpt):
    series(150).to_csv(tmp_path / "data.csv", index=False)
    args = ["--ckpt", quantile_ckpt, "--input", str(tmp_path / "data.csv"), "--windows", "5", "--step", "2",
            "--output", str(tmp_path / "m.csv"), "--forecasts", str(tmp_path / "f.parquet"),
            "--plot", str(tmp_path / "bt.png"), *NO_BAR]
    assert bt.main(args) == 0
    out = capsys.readouterr().out
    assert "backtest" in out and "all" in out and "metrics:" in out
    metrics = pd.read_csv(tmp_path / "m.csv")
    assert len(metrics) == HORIZON and {"mase", "pinball", "coverage"} <= set(metrics.columns)
    assert pd.read_parquet(tmp_path / "f.parquet")["fold"].nunique() == 5
    assert (tmp_path / "bt.png").stat().st_size > 0
    before = (tmp_path / "m.csv").read_bytes()
    assert bt.main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--overwrite" in err
    assert (tmp_path / "m.csv").read_bytes() == before
    data = (tmp_path / "data.csv").read_bytes()  # the input as an output: refused, --overwrite or not
    assert bt.main([*args[:8], "--output", str(tmp_path / "data.csv"), "--overwrite", *NO_BAR]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is the input" in err and (tmp_path / "data.csv").read_bytes() == data
    same = tmp_path / "same.csv"  # one file for two outputs: refused before anything runs, --overwrite or not
    assert bt.main([*args[:8], "--output", str(same), "--forecasts", str(same), "--overwrite", *NO_BAR]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"--output and --forecasts name the same file {same}" in err
    assert not same.exists()


def test_a_directory_or_glob_of_files(tmp_path, capsys, plain_ckpt):
    data = tmp_path / "data"
    data.mkdir()
    for k in range(2):
        series(120).assign(y=lambda f, k=k: f["y"] * (k + 1)).to_csv(data / f"w{k}.csv", index=False)
    pd.DataFrame({"date": ["2024-01-01"], "y": [1.0]}).to_csv(data / "short.csv", index=False)
    one = bt.backtest(plain_ckpt, data / "w1.csv", windows=2, step=4, trainer={"accelerator": "cpu"}).forecasts
    for source in (data, data / "w*.csv"):
        res = bt.backtest(plain_ckpt, source, windows=2, step=4, trainer={"accelerator": "cpu"})
        assert sorted(res.forecasts["unique_id"].unique()) == ["w0", "w1"]
        both = res.forecasts[res.forecasts["unique_id"] == "w1"].reset_index(drop=True)
        pd.testing.assert_frame_equal(both, one.reset_index(drop=True))  # each file alone gives the same
        assert {s[0] for s in res.skipped} == ({"short"} if source == data else set())  # one row: its folds skipped
    args = ["--ckpt", plain_ckpt, "--input", str(data), "--windows", "2", "--step", "4", "--output",
            str(data / "w0.csv"), "--overwrite", *NO_BAR]
    assert bt.main(args) == 2 and "is the input" in capsys.readouterr().err  # a file of the directory


def test_mase_of_a_history_no_longer_than_the_season_is_nan_with_the_reason(plain_ckpt, caplog):
    data = series(30)  # folds at 22 and 26 rows of history; the season is 24 steps
    with caplog.at_level("WARNING", logger="tsattn.backtest"):
        res = bt.backtest(plain_ckpt, data, windows=2, step=4, trainer={"accelerator": "cpu"})
    y, f = data["y"].to_numpy(), res.forecasts[res.forecasts["fold"] == 1]
    only_fold_1 = np.mean(np.abs(f["y"] - f["yhat"])) / np.mean(np.abs(y[24:26] - y[:2]))
    assert res.summary.set_index("unique_id").loc["all", "mase"] == pytest.approx(only_fold_1)
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING" and "MASE" in r.getMessage()]
    assert len(warnings) == 1 and "no more than one season (24 rows)" in warnings[0] and "(fold 0)" in warnings[0]


def test_mase_of_a_constant_series_is_nan_and_left_out_of_all(plain_ckpt, tmp_path, caplog):
    varying = series(120).assign(id="s0")
    constant = varying.assign(id="s1", y=5.0)  # the naive forecast's in-sample error is 0: MASE is undefined
    frame = pd.concat([varying, constant], ignore_index=True)
    with caplog.at_level("WARNING", logger="tsattn.backtest"):
        res = bt.backtest(plain_ckpt, frame, windows=3, step=6, id_col="id", trainer={"accelerator": "cpu"})
    s = res.summary.set_index("unique_id")
    assert np.isnan(s.loc["s1", "mase"]) and np.isfinite(s.loc["s0", "mase"])
    assert s.loc["all", "mase"] == pytest.approx(s.loc["s0", "mase"])  # only s0 counts
    f = res.forecasts
    np.testing.assert_allclose(s.loc["all", "mae"], np.mean(np.abs(f["y"] - f["yhat"])))  # other metrics: both
    assert res.metrics.loc[res.metrics["unique_id"] == "s1", "mase"].isna().all()
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "MASE" in warnings[0] and "s1 (folds 0, 1, 2)" in warnings[0]
    assert "s0" not in warnings[0]
    bt._write_table(res.metrics, tmp_path / "m.csv")
    lines = (tmp_path / "m.csv").read_text().splitlines()
    assert all(line.endswith(",") for line in lines if line.startswith("s1,"))  # NaN: an empty cell


def test_cli_unwritable_outputs_are_one_line_errors(tmp_path, capsys, plain_ckpt, monkeypatch):
    series(120).to_csv(tmp_path / "data.csv", index=False)
    blocker = tmp_path / "file"
    blocker.write_text("a regular file, not a folder")
    common = ["--ckpt", plain_ckpt, "--input", str(tmp_path / "data.csv"), "--windows", "2", "--step", "4", *NO_BAR]

    def no_backtest(*args, **kwargs):
        raise AssertionError("the run should have been refused before the backtest")

    with monkeypatch.context() as m:  # refused before any work
        m.setattr(bt, "backtest", no_backtest)
        for flag in ("--output", "--forecasts", "--plot"):
            target = blocker / ("x.png" if flag == "--plot" else "x.csv")
            assert bt.main([*common, flag, str(target)]) == 2
            err = capsys.readouterr().err
            assert err.count("\n") == 1 and err.startswith("tsattn backtest: error:") and str(target) in err
            assert "not a folder" in err

    def denied(self, path, *args, **kwargs):  # the folder turns read-only while the backtest runs
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(pd.DataFrame, "to_csv", denied)
    assert bt.main([*common, "--output", str(tmp_path / "m.csv")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"cannot write output {tmp_path / 'm.csv'}: Permission denied" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.csv", "file"]


def test_plot_is_written_atomically(tmp_path, plain_ckpt, monkeypatch):
    res = bt.backtest(plain_ckpt, series(120), windows=2, step=4, trainer={"accelerator": "cpu"})
    path = tmp_path / "bt.png"
    path.write_text("old")
    with pytest.raises(bt.ForecastError, match="--overwrite"):
        bt.plot_backtest(res, path, overwrite=False)
    assert path.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["bt.png"]
    assert bt.plot_backtest(res, path) == path and path.read_bytes().startswith(b"\x89PNG")
