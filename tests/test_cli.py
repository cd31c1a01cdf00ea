"""The `tsattn` command line, driven with argument lists: fits on wide and long CSVs, model names, bad arguments
(one line on stderr, non-zero exit), checkpoints (weights_only, DataModule state, reload), determinism, and the
main job (config file + --compare + --plot) on tiny settings."""

from __future__ import annotations

import functools
import http.server
import inspect
import json
import logging
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from tsattn import cli
from tsattn.cli import TsattnCLI, _drop_lightning_tips, main
from tsattn.data import SeriesDataModule
from tsattn.forecast import load_checkpoint
from tsattn.forecast import main as fc_main
from tsattn.metrics import mean_se, pinball_loss
from tsattn.models import Forecaster

ROOT = Path(__file__).resolve().parents[1]
METRIC_KEYS = ("test/mse", "test/mae", "test/mae_orig")

# Tiny and quiet: one epoch of a few batches, on the CPU (a GPU run has its own test below).
FAST = [
    "--trainer.accelerator", "cpu",
    "--trainer.max_epochs", "1",
    "--trainer.limit_train_batches", "3",
    "--trainer.limit_val_batches", "2",
    "--trainer.enable_progress_bar", "false",
    "--trainer.enable_model_summary", "false",
]


@pytest.fixture(autouse=True)
def _plain_argv(monkeypatch):
    # LightningCLI warns when both sys.argv (pytest's) and args= are given.
    monkeypatch.setattr(sys, "argv", ["tsattn"])



@pytest.fixture(scope="module")
def wide_csv(tmp_path_factory, wide_frame) -> Path:
    path = tmp_path_factory.mktemp("data") / "wide.csv"
    wide_frame(n=240, channels=3).to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def long_csv(tmp_path_factory, long_frame) -> Path:
    path = tmp_path_factory.mktemp("data") / "long.csv"
    long_frame(lengths=(160, 200)).to_csv(path, index=False)
    return path


def fit_args(csv: Path, root: Path, *extra: str) -> list[str]:
    return ["fit", "--data.path", str(csv), "--data.lookback", "24", "--data.horizon", "6",
            "--trainer.default_root_dir", str(root), *FAST, *extra]


def best_checkpoint(run_dir: Path) -> Path:
    """The checkpoint the run selected and tested (named in metrics.json)."""
    path = Path(json.loads((run_dir / "metrics.json").read_text())["checkpoint"])
    assert path.parent == run_dir / "checkpoints" and path.name.startswith("best")
    return path


# ------------------------------------------------------------------------------------------------ fits
def test_fit_wide_csv_flagship(wide_frame, tmp_path, capsys):
    csv = tmp_path / "train.csv"
    frame = wide_frame(n=240, channels=3)
    frame.to_csv(csv, index=False)
    assert main(fit_args(csv, tmp_path)) == 0
    run = tmp_path / "version_0"
    for name in ("config.yaml", "metrics.csv", "hparams.yaml", "metrics.json", "checkpoints/last.ckpt"):
        assert (run / name).is_file(), name
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["model"] == cli.DEFAULT_MODEL
    row = metrics["test"][cli.DEFAULT_MODEL]
    assert set(row) == {"test/mse", "test/mae", "test/mae_orig", "test/mse_se"}
    assert all(row[k] >= 0 for k in METRIC_KEYS) and row["test/mse_se"] is None  # < 2 blocks of 30
    assert cli.DEFAULT_MODEL in capsys.readouterr().out

    # Checkpoint: plain data only, sizes linked from the data, DataModule state inside.
    path = best_checkpoint(run)
    ckpt = torch.load(path, weights_only=True)
    hp = ckpt["hyper_parameters"]
    assert (hp["n_channels"], hp["lookback"], hp["horizon"]) == (3, 24, 6)
    assert hp["period"] == 24  # hourly data, inferred by the data and linked
    assert ckpt["datamodule_hyper_parameters"]["lookback"] == 24
    assert "SeriesDataModule" in ckpt

    # Reload and forecast new data in original units, without the training file.
    csv.unlink()
    model = cli.forecaster_class(cli.DEFAULT_MODEL).load_from_checkpoint(path).eval()
    assert isinstance(model, Forecaster) and model.n_channels == 3
    new = frame.assign(date=frame["date"] + pd.Timedelta(days=30))
    dm = SeriesDataModule.for_prediction(path, new)
    (batch,) = list(dm.predict_dataloader())
    with torch.no_grad():
        yhat = model.predict_step(batch, 0)["yhat"]
    assert yhat.shape == (1, 6, 3) and torch.isfinite(yhat).all()
    assert yhat.dtype == torch.float64  # original units keep their digits at any level
    last = torch.tensor(new[["x0", "x1", "x2"]].to_numpy()[-1], dtype=torch.float64)
    assert torch.allclose(yhat[0].mean(0), last, atol=3.0)  # original units (channel levels 0, 10, 20)


def test_fit_long_csv_linear(long_csv, tmp_path, capsys):
    main(fit_args(long_csv, tmp_path, "--data.id_col", "id", "--model", "Linear"))
    run = tmp_path / "version_0"
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["model"] == "Linear" and "Linear" in metrics["test"]
    ckpt = torch.load(best_checkpoint(run), weights_only=True)
    assert ckpt["hyper_parameters"]["_class_path"].endswith(".Linear")
    assert ckpt["hyper_parameters"]["n_channels"] == 2
    assert "period" not in ckpt["hyper_parameters"]  # Linear takes none; the link is skipped, not recorded
    assert "Linear" in capsys.readouterr().out


@pytest.mark.parametrize(("model", "period"), [("SeasonalNaive", 24), ("Naive", None)])
def test_period_link_only_where_taken(model, period, wide_csv):
    cli_obj = TsattnCLI(args=["--data.path", str(wide_csv), "--data.lookback", "48", "--data.horizon", "6",
                              "--model", model], run=False)
    assert type(cli_obj.model).__name__ == model
    assert cli_obj.model.hparams.get("period") == period


def test_chosen_model_starts_from_its_own_defaults(wide_csv):
    # The flagship (the default) takes revin=False; `--model Linear` must not inherit that.
    linear = cli.forecaster_class("Linear")
    own = inspect.signature(linear).parameters["revin"].default
    args = ["--data.path", str(wide_csv), "--data.lookback", "24", "--data.horizon", "6"]
    assert TsattnCLI(args=[*args, "--model", "Linear"], run=False).model.hparams["revin"] == own
    flipped = TsattnCLI(args=[*args, "--model", "Linear", "--model.revin", str(not own).lower()], run=False)
    assert flipped.model.hparams["revin"] == (not own)


def test_test_and_predict_from_saved_run(wide_csv, tmp_path, capsys):
    main(fit_args(wide_csv, tmp_path, "--model", "Naive"))
    run = tmp_path / "version_0"
    args = ["--config", str(run / "config.yaml"), "--ckpt_path", str(run / "checkpoints" / "last.ckpt")]
    main(["test", *args])
    tested = json.loads((tmp_path / "version_1" / "metrics.json").read_text())
    assert set(tested["test"]["Naive"]) == {*METRIC_KEYS, "test/mse_se"}
    main(["predict", *args])
    frame = pd.read_csv(tmp_path / "version_2" / "predictions.csv")
    assert list(frame.columns[:4]) == ["unique_id", "ds", "cutoff", "yhat"]
    assert len(frame) == 6 * 3 and set(frame.unique_id) == {"wide/x0", "wide/x1", "wide/x2"}  # as tsattn forecast
    assert pd.to_datetime(frame.ds).min() > pd.to_datetime(frame.cutoff).max()
    capsys.readouterr()
    for sub in ("test", "predict", "validate"):  # without the checkpoint: an unfitted model, refused
        with pytest.raises(SystemExit):
            main([sub, "--config", str(run / "config.yaml")])
        (line,) = capsys.readouterr().err.strip().splitlines()
        assert f"tsattn {sub} needs the fitted model: give --ckpt_path" in line
    assert not (tmp_path / "version_3").exists()


def test_compare_gives_standard_errors_and_paired_differences(tmp_path, wide_frame, capsys):
    # Enough test windows for block-bootstrap errors (two blocks of lookback + horizon = 30 windows at least).
    path = tmp_path / "long.csv"
    wide_frame(n=1500, channels=2).to_csv(path, index=False)
    main(fit_args(path, tmp_path, "--model", "Naive", "--compare", "SeasonalNaive"))
    rows = json.loads((tmp_path / "version_0" / "metrics.json").read_text())["test"]
    naive, seasonal = rows["Naive"], rows["SeasonalNaive"]
    assert "test/mse_diff" not in naive  # the fitted model is the reference of the differences
    assert seasonal["test/mse_diff"] == pytest.approx(seasonal["test/mse"] - naive["test/mse"], rel=1e-4)
    assert naive["test/mse_se"] > 0 and seasonal["test/mse_se"] > 0 and seasonal["test/mse_diff_se"] > 0
    dm = SeriesDataModule(path=str(path), lookback=24, horizon=6)
    model = Forecaster.load_from_checkpoint(best_checkpoint(tmp_path / "version_0"))
    errors = model.window_errors(dm.test_dataloader())
    assert float(errors.mean()) == pytest.approx(naive["test/mse"], rel=1e-5)
    assert naive["test/mse_se"] == pytest.approx(mean_se(errors, 30))
    out = capsys.readouterr().out
    line = next(line for line in out.splitlines() if line.startswith("SeasonalNaive"))
    assert f"{seasonal['test/mse_diff']:+.4f} ± {seasonal['test/mse_diff_se']:.4f}" in line


def test_too_few_test_windows_give_no_standard_error(wide_csv, tmp_path, capsys):
    main(fit_args(wide_csv, tmp_path, "--model", "Naive", "--compare", "SeasonalNaive"))
    rows = json.loads((tmp_path / "version_0" / "metrics.json").read_text())["test"]
    assert rows["Naive"]["test/mse_se"] is None and rows["SeasonalNaive"]["test/mse_diff_se"] is None
    assert rows["SeasonalNaive"]["test/mse_diff"] == pytest.approx(
        rows["SeasonalNaive"]["test/mse"] - rows["Naive"]["test/mse"], rel=1e-4
    )


def test_predict_and_forecast_scale_a_file_alike(wide_csv, tmp_path, capsys):
    # the file trained on reuses its stored scaler, a renamed copy at another level is a series of its own, scaled
    # on all its rows: both commands give the same forecasts for either file
    main(fit_args(wide_csv, tmp_path, "--model", "RidgeCycle"))
    run = tmp_path / "version_0"
    ckpt = run / "checkpoints" / "last.ckpt"
    renamed = tmp_path / "renamed.csv"
    frame = pd.read_csv(wide_csv)
    frame.assign(**{c: frame[c] * 3 + 50 for c in ("x0", "x1", "x2")}).to_csv(renamed, index=False)
    yhat = {}
    for k, path in enumerate((wide_csv, renamed)):
        main(["predict", "--config", str(run / "config.yaml"), "--ckpt_path", str(ckpt), "--data.path", str(path)])
        predicted = pd.read_csv(tmp_path / f"version_{k + 1}" / "predictions.csv")
        out = tmp_path / f"f{k}.csv"
        assert fc_main(["--ckpt", str(ckpt), "--input", str(path), "--output", str(out),
                        "--trainer.enable_progress_bar", "false", "--trainer.accelerator", "cpu"]) == 0
        forecast = pd.read_csv(out)
        assert len(forecast) == len(predicted) == 6 * 3
        assert list(forecast["unique_id"]) == list(predicted["unique_id"])
        assert list(forecast["ds"]) == list(predicted["ds"]) and list(forecast["cutoff"]) == list(predicted["cutoff"])
        yhat[path.stem] = forecast["yhat"].to_numpy()
        np.testing.assert_allclose(yhat[path.stem], predicted["yhat"].to_numpy(), rtol=1e-6)
    # the copy is scaled on all its rows, the trained file on its training rows: close to an affine map, not equal
    np.testing.assert_allclose(yhat["renamed"], yhat[wide_csv.stem] * 3 + 50, rtol=0.02)
    assert not np.allclose(yhat["renamed"], yhat[wide_csv.stem] * 3 + 50, rtol=1e-4)
    # predict needs the lookback alone, not the rows of the run's split
    short = tmp_path / "short.csv"
    frame.tail(24).to_csv(short, index=False)
    main(["predict", "--config", str(run / "config.yaml"), "--ckpt_path", str(ckpt), "--data.path", str(short)])
    assert len(pd.read_csv(tmp_path / "version_3" / "predictions.csv")) == 6 * 3
    capsys.readouterr()


class _Payload:
    """Unpickling this creates a file: a stand-in for a checkpoint that runs code when it loads."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return open, (self.path, "w")


@pytest.mark.parametrize("where", ["file", "url"])
def test_checkpoint_that_would_run_code_is_refused(where, wide_csv, tmp_path, monkeypatch, capsys):
    main(fit_args(wide_csv, tmp_path, "--model", "Naive"))
    run = tmp_path / "version_0"
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    ran = tmp_path / "ran.txt"
    ckpt["payload"] = _Payload(ran)
    served = tmp_path / "served"
    served.mkdir()
    torch.save(ckpt, served / "evil.ckpt")
    path = str(served / "evil.ckpt")
    if where == "url":  # Lightning checks a local file before loading it, not a download
        monkeypatch.setenv("TORCH_HOME", str(tmp_path / "hub"))
        handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        path = f"http://127.0.0.1:{server.server_address[1]}/evil.ckpt"
    capsys.readouterr()
    try:
        for sub in ("test", "predict"):
            with pytest.raises(SystemExit):
                main([sub, "--config", str(run / "config.yaml"), "--ckpt_path", path])
            (line,) = [x for x in capsys.readouterr().err.splitlines() if x.startswith("tsattn: error")]
            assert line.endswith("refusing to load it: it holds objects other than tensors and plain data "
                                 "(it would import io.open)")
    finally:
        if where == "url":
            server.shutdown()
    assert not ran.exists()
    with pytest.raises(SystemExit):
        main(["test", "--config", str(run / "config.yaml"), "--ckpt_path", str(run / "checkpoints" / "last.ckpt"),
              "--weights_only", "false"])
    assert "--weights_only false would let a checkpoint run code" in capsys.readouterr().err


def test_quantile_fit_reports_pinball_and_coverage(wide_csv, tmp_path, capsys):
    main(fit_args(wide_csv, tmp_path, "--model", "Linear", "--model.quantiles", "[0.1,0.5,0.9]"))
    assert "pinball" in capsys.readouterr().out  # a column of the printed table
    run = tmp_path / "version_0"
    tested = json.loads((run / "metrics.json").read_text())["test"]["Linear"]
    model = Forecaster.load_from_checkpoint(best_checkpoint(run), weights_only=True).eval()
    dm = SeriesDataModule(path=wide_csv, lookback=24, horizon=6)
    dm.setup("test")
    with torch.no_grad():
        batches = [(model(b["past"], b["time_idx"]), b["future"]) for b in dm.test_dataloader()]
    pred, target = (torch.cat(x) for x in zip(*batches, strict=True))
    assert tested["test/pinball"] == pytest.approx(float(pinball_loss(pred, target, [0.1, 0.5, 0.9])), rel=1e-4)
    inside = ((target >= pred[..., 0]) & (target <= pred[..., -1])).double().mean()
    assert tested["test/coverage"] == pytest.approx(float(inside), abs=1e-6)


def test_closed_form_start_kept_when_training_hurts(wide_csv, tmp_path):
    # A learning rate that wrecks every trained epoch: selection must keep the closed-form start (epoch -1),
    # save it as best-start.ckpt, and test it, so the flagship (without its kernel part) scores exactly as RidgeCycle.
    main(fit_args(wide_csv, tmp_path, "--model.optimizer", "SGD", "--model.optimizer.lr", "1e4",
                  "--trainer.max_epochs", "2", "--compare", "RidgeCycle", "--model.random_features", "0"))
    run = tmp_path / "version_0"
    path = best_checkpoint(run)
    assert path.name == "best-start.ckpt"
    rows = json.loads((run / "metrics.json").read_text())["test"]
    flagship, ridge = rows[cli.DEFAULT_MODEL], rows["RidgeCycle"]
    assert flagship["test/mse"] == pytest.approx(ridge["test/mse"], rel=1e-5)
    state = torch.load(path, weights_only=True)["state_dict"]
    assert not state["net.head.1.weight"].any()  # the zero-initialised correction head, untouched
    last = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert last["net.head.1.weight"].any()  # training did move it


def test_last_checkpoint_is_the_last_epoch(wide_csv, tmp_path):
    # best files saved every second epoch only, or validation every second epoch: last.ckpt must still follow every
    # epoch (what a resumed fit needs)
    for k, every in enumerate(("--checkpoint.every_n_epochs", "--trainer.check_val_every_n_epoch")):
        main(fit_args(wide_csv, tmp_path, "--model", "Linear", "--trainer.max_epochs", "3", every, "2",
                      "--test_after_fit", "false"))
        saved = sorted(p.name for p in (tmp_path / f"version_{k}" / "checkpoints").iterdir())
        assert saved == ["best-epoch=1.ckpt", "last.ckpt"]
        last = torch.load(tmp_path / f"version_{k}" / "checkpoints" / "last.ckpt", weights_only=True)
        assert last["epoch"] == 2 and last["loops"]["fit_loop"]["epoch_progress"]["current"]["processed"] == 3


def test_no_epochs_fits_and_saves_the_closed_form(wide_csv, tmp_path):
    # max_epochs=0 skips Lightning's training loop; the closed-form start is still fitted, saved and tested.
    main(fit_args(wide_csv, tmp_path, "--trainer.max_epochs", "0", "--compare", "RidgeCycle",
                  "--model.random_features", "0"))
    run = tmp_path / "version_0"
    assert best_checkpoint(run).name == "best-start.ckpt"
    rows = json.loads((run / "metrics.json").read_text())["test"]
    assert rows[cli.DEFAULT_MODEL]["test/mse"] == pytest.approx(rows["RidgeCycle"]["test/mse"], rel=1e-5)


def test_shared_checkpoint_folder_keeps_each_runs_start(wide_csv, tmp_path):
    shared = tmp_path / "ckpts"
    saved = []
    for seed in ("0", "1"):
        main(fit_args(wide_csv, tmp_path, "--trainer.max_epochs", "0", "--model", "RidgeCycle",
                      "--checkpoint.dirpath", str(shared), "--seed_everything", seed))
        run = sorted(tmp_path.glob("version_*"))[-1]
        saved.append(Path(json.loads((run / "metrics.json").read_text())["checkpoint"]))
    assert [p.name for p in saved] == ["best-start.ckpt", "best-start-v1.ckpt"] and all(p.is_file() for p in saved)


@pytest.mark.parametrize("model, kept", [(cli.DEFAULT_MODEL, "best-start"), ("Linear", "best-epoch=")])
def test_resumed_finished_fit_tests_the_kept_weights_from_another_folder(model, kept, wide_csv, tmp_path, monkeypatch):
    # a finished fit resumed from last.ckpt, its run folder named relative to another working directory: the
    # weights the first fit kept (its start, or a trained epoch) are tested again, and saved in the new run folder
    first, other = tmp_path / "first", tmp_path / "other"
    first.mkdir(), other.mkdir()
    monkeypatch.chdir(first)
    wreck = ["--model.optimizer", "SGD", "--model.optimizer.lr", "1e4"] if model == cli.DEFAULT_MODEL else []
    main(fit_args(wide_csv, Path("runs"), "--model", model, "--trainer.max_epochs", "2", *wreck))
    run = first / "runs" / "version_0"
    before = json.loads((run / "metrics.json").read_text())
    assert Path(before["checkpoint"]).name.startswith(kept)
    monkeypatch.chdir(other)
    main(["fit", "--config", str(run / "config.yaml"), "--ckpt_path", str(run / "checkpoints" / "last.ckpt")])
    after = json.loads((other / "runs" / "version_0" / "metrics.json").read_text())
    path = Path(after["checkpoint"])
    assert path.parent == Path("runs/version_0/checkpoints") and path.name.startswith(kept) and path.is_file()
    for key in METRIC_KEYS:
        assert after["test"][model][key] == pytest.approx(before["test"][model][key], rel=1e-6)


def test_ema_weights_option(wide_csv, tmp_path):
    main(fit_args(wide_csv, tmp_path, "--ema_weights", "true", "--ema_decay", "0.9", "--model", "Linear"))
    ckpt = torch.load(tmp_path / "version_0" / "checkpoints" / "last.ckpt", weights_only=True)
    assert "averaging_state" in ckpt and "current_model_state" in ckpt  # written by EMAWeightAveraging
    assert json.loads((tmp_path / "version_0" / "metrics.json").read_text())["test"]["Linear"]


def test_same_seed_same_weights(wide_csv, tmp_path):
    # the same with a compared model, whose own random initial weights must not move the fit's random stream
    states = []
    for name, extra in (("a", []), ("b", ["--compare", "Linear"])):
        main(fit_args(wide_csv, tmp_path / name, "--seed_everything", "7", *extra))
        states.append(torch.load(tmp_path / name / "version_0" / "checkpoints" / "last.ckpt",
                                 weights_only=True)["state_dict"])
    assert states[0].keys() == states[1].keys()
    for key in states[0]:
        assert torch.equal(states[0][key], states[1][key]), key


# ------------------------------------------------------------------------------------------------ the main job
def test_main_job_config_compare_plot(wide_csv, tmp_path, capsys):
    config = yaml.safe_load((ROOT / "configs" / "market.yaml").read_text())
    config["data"].update(path=str(wide_csv), lookback=24, horizon=6)
    config["data"].pop("target_cols", None)
    config["trainer"].update(default_root_dir=str(tmp_path), max_epochs=1, limit_train_batches=3,
                             limit_val_batches=2, enable_progress_bar=False, enable_model_summary=False)
    path = tmp_path / "main.yaml"
    path.write_text(yaml.safe_dump(config))
    assert config["compare"] and config["plot"]

    main(["fit", "--config", str(path)])

    out = capsys.readouterr().out
    run = tmp_path / "version_0"
    table = out[out.index("test metrics"):].splitlines()
    names = [cli.forecaster_class(config["model"]["class_path"]).__name__, *config["compare"]]
    assert all(any(line.startswith(name) for line in table) for name in names)
    assert "mae_orig" in table[1]
    metrics = json.loads((run / "metrics.json").read_text())
    assert list(metrics["test"]) == names
    png = run / "forecast.png"
    assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for name in config["compare"]:
        assert (run / "compare" / name / "checkpoints" / "last.ckpt").is_file()


@pytest.mark.parametrize("name", ["market", "motion"])
def test_sample_configs_build(name):
    cli_obj = TsattnCLI(args=["--config", str(ROOT / "configs" / f"{name}.yaml")], run=False)
    assert type(cli_obj.model).__name__ == cli.DEFAULT_MODEL
    assert cli_obj.model.n_channels == cli_obj.datamodule.n_channels
    for baseline in cli_obj.config["compare"]:
        cli.forecaster_class(baseline)


def test_checkpoint_of_another_size_or_a_used_folder_one_line(wide_csv, tmp_path, capsys):
    main(fit_args(wide_csv, tmp_path / "a", "--model", "Linear"))
    main(fit_args(wide_csv, tmp_path / "b", "--model", "Linear", "--data.lookback", "12"))
    capsys.readouterr()
    config = str(tmp_path / "a" / "version_0" / "config.yaml")
    other = str(tmp_path / "b" / "version_0" / "checkpoints" / "last.ckpt")
    with pytest.raises(SystemExit):
        main(["test", "--config", config, "--ckpt_path", other])
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "trained with lookback 12 (here 24)" in line and "config.yaml" in line
    mine = str(tmp_path / "a" / "version_0" / "checkpoints" / "last.ckpt")
    used = ["--trainer.logger", "false", "--trainer.default_root_dir", str(tmp_path / "p")]
    main(["predict", "--config", config, "--ckpt_path", mine, *used])
    before = (tmp_path / "p" / "predictions.csv").read_bytes()
    capsys.readouterr()
    with pytest.raises(SystemExit):
        main(["predict", "--config", config, "--ckpt_path", mine, *used])
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "config.yaml exists" in line and "--trainer.default_root_dir" in line
    assert (tmp_path / "p" / "predictions.csv").read_bytes() == before
    # A user's files of the same names in a folder without config.yaml are kept too, and nothing runs.
    for sub, name, extra in (("predict", "predictions.csv", []), ("test", "metrics.json", []),
                             ("fit", "forecast.png", ["--plot", "true"])):
        folder = tmp_path / f"user-{sub}"
        folder.mkdir()
        (folder / name).write_text("mine")
        args = fit_args(wide_csv, folder, "--model", "Linear")[1:] if sub == "fit" else \
            ["--config", config, "--ckpt_path", mine]
        with pytest.raises(SystemExit):
            main([sub, *args, *extra, "--trainer.logger", "false", "--trainer.default_root_dir", str(folder)])
        (line,) = capsys.readouterr().err.strip().splitlines()
        assert f"{folder / name} exists" in line
        assert sorted(p.name for p in folder.iterdir()) == [name] and (folder / name).read_text() == "mine"


def test_unwritable_run_folder_one_line(wide_csv, tmp_path, capsys):
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(SystemExit):
        main(fit_args(wide_csv, tmp_path / "file" / "run", "--model", "Naive"))
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("tsattn: error:") and "file/run" in line and "Not a directory" in line


def test_lightning_tips_are_dropped(caplog):
    from lightning.pytorch.utilities import rank_zero_info

    _drop_lightning_tips()
    _drop_lightning_tips()  # idempotent: one filter
    with caplog.at_level(logging.INFO, logger="lightning.pytorch.utilities.rank_zero"):
        rank_zero_info("💡 Tip: install something")
        rank_zero_info("GPU available: False")
    assert "Tip" not in caplog.text and "GPU available" in caplog.text


def test_commands_print_no_library_warnings(wide_csv, tmp_path):
    # what a user sees on stderr: Lightning's progress lines, no deprecation notes from inside the libraries
    fit = fit_args(wide_csv, tmp_path, "--model", "Naive", "--trainer.log_every_n_steps", "1")
    argv = [sys.executable, "-c", "import sys; from tsattn.cli import main; sys.exit(main())", *fit]  # the script
    done = subprocess.run(argv, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "Warning" not in done.stderr and "deprecated" not in done.stderr, done.stderr


# ------------------------------------------------------------------------------------------------ bad arguments
BAD = {
    "missing file": (["--data.path", "{tmp}/nope.csv"], "nope.csv"),
    "unknown column": (["--data.target_cols", "[nope]"], "nope"),
    "horizon too long": (["--data.horizon", "5000"], "5000"),
    "unknown model": (["--model", "Linearr"], "unknown model 'Linearr'"),
    "unknown compare model": (["--compare", "Naive", "Nope"], "unknown model 'Nope'"),
    "bad model argument": (["--model.quantiles", "[0.1,1.5]"], "quantiles must be levels strictly between 0 and 1"),
    "repeated quantiles": (["--model.quantiles", "[0.1,0.5,0.5,0.9]"], "quantiles must be distinct levels"),
    "quantiles not a list": (["--model.quantiles", "0.5"], "--model.quantiles: expected Sequence (given 0.5)"),
    "quantile not a number": (["--model.quantiles", "[nan,0.5]"], "--model.quantiles: expected float. Got value: nan"),
    "model argument of another type": (["--model.d_model", "abc"], "--model.d_model: expected int. Got value: abc"),
    "bad period": (["--data.period", "0", "--model", "Linear"], "period must be an integer >= 1, got 0"),
    "folder as data": (["--data.path", "{tmp}"], "is a folder"),
    "bad cut": (["--data.split", "time", "--data.val_start", "soon"], "val_start='soon' is not a timestamp"),
    "no validation rows": (["--data.split", "none"], "--data.split none puts every row in training, and fit needs"),
    "compare model that cannot take the data": (["--data.lookback", "12", "--compare", "SeasonalNaive"],
                                                "SeasonalNaive needs the season (24)"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_arguments_one_line(case, wide_csv, tmp_path, capsys):
    extra, expected = BAD[case]
    extra = [a.replace("{tmp}", str(tmp_path)) for a in extra]
    with pytest.raises(SystemExit) as info:
        main(fit_args(wide_csv, tmp_path, *extra))
    assert info.value.code not in (0, None)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("tsattn: error:") and expected in err[0]
    assert not (tmp_path / "version_0" / "checkpoints").exists()  # failed before any training


def test_unknown_model_in_config_file_one_line(wide_csv, tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text("model:\n  class_path: NoSuchForecaster\n")
    with pytest.raises(SystemExit) as info:
        main(fit_args(wide_csv, tmp_path, "--config", str(path)))
    assert info.value.code != 0
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "unknown model 'NoSuchForecaster'" in line and "Linear" in line  # names the choices


def test_jsonargparse_errors_pass_through(wide_csv, tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        main(fit_args(wide_csv, tmp_path, "--trainer.max_epochz", "3"))
    assert info.value.code != 0
    assert "max_epochz" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------ extras
def test_extra_commands_dispatch(monkeypatch):
    seen = []
    monkeypatch.setitem(cli.EXTRA_COMMANDS, "hello", lambda argv: seen.append(argv) or 3)
    assert main(["hello", "--x", "1"]) == 3
    assert seen == [["--x", "1"]]


def test_forecaster_class_names():
    assert cli.forecaster_class("Linear").__name__ == "Linear"
    assert cli.forecaster_class(cli.forecaster_class("Naive").__module__ + ".Naive").__name__ == "Naive"
    with pytest.raises(ValueError, match="choose one of"):
        cli.forecaster_class("Nope")


def test_base_class_loads_the_saved_subclass(tmp_path, wide_csv):
    """Forecaster.load_from_checkpoint finds the subclass a CLI checkpoint names, and its forecasts match."""
    assert main(fit_args(wide_csv, tmp_path, "--model", "Linear")) == 0
    path = best_checkpoint(tmp_path / "version_0")
    loaded = Forecaster.load_from_checkpoint(path).eval()
    direct = cli.forecaster_class("Linear").load_from_checkpoint(path).eval()
    assert type(loaded).__name__ == "Linear"
    past = torch.randn(2, loaded.lookback, loaded.n_channels)
    assert torch.equal(loaded(past), direct(past))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_fit_on_gpu_forecast_on_cpu(wide_csv, tmp_path):
    """A run trained on CUDA: its checkpoint loads onto the CPU and forecasts what the GPU model forecasts."""
    assert main(fit_args(wide_csv, tmp_path, "--trainer.accelerator", "gpu")) == 0  # the later value wins
    path = best_checkpoint(tmp_path / "version_0")
    on_gpu = Forecaster.load_from_checkpoint(path).eval()  # Lightning restores to the device it was saved from
    assert on_gpu.device.type == "cuda"
    on_cpu = Forecaster.load_from_checkpoint(path, map_location="cpu").eval()
    batch = next(iter(SeriesDataModule.for_prediction(path, pd.read_csv(wide_csv)).predict_dataloader()))
    with torch.no_grad():
        cpu = on_cpu.predict_step(batch, 0)["yhat"]
        gpu = on_gpu.predict_step({k: v.cuda() if torch.is_tensor(v) else v for k, v in batch.items()}, 0)["yhat"].cpu()
        plain = load_checkpoint(path).model.predict_step(batch, 0)["yhat"]  # the batch forecaster's loader
    assert torch.isfinite(cpu).all()
    torch.testing.assert_close(gpu, cpu, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(plain, cpu)


def test_metrics_table_keeps_columns_apart_for_large_values() -> None:
    rows = {
        "EMAAttentionForecaster": {"test/mse": 0.0498, "test/mae": 0.1383, "test/mae_orig": 2429719.25},
        "Naive": {"test/mse": 0.0711, "test/mae": 0.1518, "test/mae_orig": 17.49},
        "Huge": {"test/mse": 1.0, "test/mae": 1.0, "test/mae_orig": 3e12},
    }
    lines = cli._metrics_table(rows, lookback=96, horizon=24).splitlines()[3:]
    parsed = {line.split()[0]: [float(v) for v in line.split()[1:]] for line in lines}
    assert parsed["EMAAttentionForecaster"] == pytest.approx([0.0498, 0.1383, 2429719], rel=1e-6)
    assert parsed["Naive"] == pytest.approx([0.0711, 0.1518, 17.49])
    assert parsed["Huge"][2] == pytest.approx(3e12)
    tiny = {"Fitted": {"test/mse": 2.5e-9, "test/mae": 4e-5, "test/mae_orig": 0.0, "test/mse_se": 1e-9},
            "Naive": {"test/mse": 1e-7, "test/mae": 3e-4, "test/mae_orig": 0.0, "test/mse_se": 2e-8,
                      "test/mse_diff": 9.75e-8, "test/mse_diff_se": 1.5e-8}}
    lines = cli._metrics_table(tiny, lookback=96, horizon=24).splitlines()[3:]  # not printed as 0.0000
    assert lines[0].split()[1:] == ["2.500e-09", "4.000e-05", "0.0000", "1.000e-09"]
    assert lines[1].split()[1:] == ["1.000e-07", "0.0003", "0.0000", "2.000e-08", "+9.750e-08", "±", "1.500e-08"]


def test_metrics_table_with_standard_errors() -> None:
    metrics = {"test/mse": 0.5, "test/mae": 0.4, "test/mae_orig": 3.0}
    rows = {
        "Fitted": {**metrics, "test/mse_se": 0.0123},
        "Other": {**metrics, "test/mse_se": None, "test/mse_diff": 0.02, "test/mse_diff_se": 0.005},
        "Short": {**metrics, "test/mse_se": None, "test/mse_diff": -0.01, "test/mse_diff_se": None},
    }
    lines = cli._metrics_table(rows, lookback=96, horizon=24).splitlines()
    assert lines[1].split()[-4:] == ["mse_se", "diff", "±", "se"] and "minus Fitted's" in lines[0]
    assert lines[3].split()[1:] == ["0.5000", "0.4000", "3.0000", "0.0123"]
    assert lines[4].split()[4:] == ["-", "+0.0200", "±", "0.0050"]
    assert lines[5].split()[4:] == ["-", "-0.0100"]
    single = cli._metrics_table({"Fitted": rows["Fitted"]}, lookback=96, horizon=24).splitlines()
    assert single[1].split()[-1] == "mse_se" and "diff" not in single[0]
