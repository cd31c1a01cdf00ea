"""`tsattn forecast`: inputs (file, directory, glob, long CSV), tidy output, skipping, atomic writes, DDP.

Checkpoints are trained here on tiny synthetic frames (a Linear and a quantile Naive model, one epoch) and saved in
a temporary folder; every CLI run is in-process except the two-process test.
"""

from __future__ import annotations

import gzip
import os
import sys
from pathlib import Path

import lightning as L
import numpy as np
import pandas as pd
import pytest
import torch
from conftest import make_long_frame, make_wide_frame

from tsattn import forecast as fc
from tsattn.data import SeriesDataModule
from tsattn.models.baselines import Linear, Naive

LOOKBACK, HORIZON = 16, 4
QUANTILES = [0.1, 0.5, 0.9]
NO_BAR = ["--trainer.enable_progress_bar", "false", "--trainer.accelerator", "cpu"]



def _train(model: L.LightningModule, dm: SeriesDataModule, path: Path) -> Path:
    trainer = L.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, accelerator="cpu", devices=1)
    trainer.fit(model, datamodule=dm)
    trainer.save_checkpoint(path)
    return path


@pytest.fixture(scope="module")
def linear_ckpt(tmp_path_factory) -> Path:
    """Two-channel (x0, x1) Linear, saved by a plain Trainer: the checkpoint names no class."""
    dm = SeriesDataModule(frame=make_wide_frame(160, 2), lookback=LOOKBACK, horizon=HORIZON, batch_size=32)
    return _train(Linear(2, LOOKBACK, HORIZON), dm, tmp_path_factory.mktemp("ckpt") / "linear.ckpt")


@pytest.fixture(scope="module")
def quantile_ckpt(tmp_path_factory) -> Path:
    """One-channel (y) quantile Naive trained on a long frame (id column `id`), with a LightningCLI class path."""
    frame = make_long_frame((120, 150), channels=1).rename(columns={"y0": "y"})
    dm = SeriesDataModule(frame=frame, id_col="id", lookback=LOOKBACK, horizon=HORIZON, batch_size=32)
    path = _train(Naive(1, LOOKBACK, HORIZON, quantiles=QUANTILES), dm, tmp_path_factory.mktemp("ckpt") / "q.ckpt")
    ckpt = torch.load(path, weights_only=True)
    ckpt["hyper_parameters"]["_class_path"] = "tsattn.models.baselines.Naive"
    torch.save(ckpt, path)
    return path


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = fc.main([str(a) for a in argv] + NO_BAR)
    out = capsys.readouterr()
    return code, out.out, out.err


def wide_csv(path: Path, n: int = 120, freq: str = "h", seed: int = 0, level: float = 0.0, start="2024-01-01") -> Path:
    frame = make_wide_frame(n, 2, freq=freq, seed=seed, start=start)
    frame[["x0", "x1"]] += level
    frame.to_csv(path, index=False)
    return path


def long_frame(lengths=(120, 130, 140, 150, 160)) -> pd.DataFrame:
    return make_long_frame(lengths, channels=2, id_col="id").rename(columns={"y0": "x0", "y1": "x1"})


def check_timestamps(out: pd.DataFrame, source: pd.DataFrame, uid_prefix: str, time_col: str, freq: str) -> None:
    """Forecast timestamps continue the input's frequency from its last timestamp (the cutoff)."""
    last = pd.Timestamp(source[time_col].max())
    step = pd.tseries.frequencies.to_offset(freq)
    for uid, group in out[out["unique_id"].str.startswith(uid_prefix)].groupby("unique_id"):
        assert (group["cutoff"] == last).all(), uid
        expected = pd.date_range(last, periods=HORIZON + 1, freq=step)[1:]
        assert list(group["ds"]) == list(expected), uid


def test_file_original_units_and_timestamps(tmp_path, capsys, linear_ckpt):
    src = wide_csv(tmp_path / "plant.csv", level=500.0)
    code, out, err = run(capsys, "--ckpt", linear_ckpt, "--input", src, "--output", tmp_path / "f.csv")
    assert code == 0, err
    assert "forecast 1 series" in out and "skipped 0" in out
    table = pd.read_csv(tmp_path / "f.csv", parse_dates=["ds", "cutoff"])
    assert list(table.columns) == ["unique_id", "ds", "cutoff", "yhat"]
    assert sorted(table["unique_id"].unique()) == ["plant/x0", "plant/x1"]  # one unique_id per column
    check_timestamps(table, pd.read_csv(src, parse_dates=["date"]), "plant", "date", "h")

    # Same numbers as the model on a for_prediction DataModule (unseen series: scaler fit on its own history).
    loaded = fc.load_checkpoint(linear_ckpt)
    assert loaded.model_class is Linear  # identified from hyperparameters and state-dict keys
    state = {**loaded.data_state, "series_ids": [], "loc": [], "scale": []}
    dm = SeriesDataModule.for_prediction(state, src)
    batch = next(iter(dm.predict_dataloader()))
    with torch.no_grad():
        ref = loaded.model.predict_step(batch, 0)["yhat"][0].numpy()  # (H, C), original units
    for c, col in enumerate(["x0", "x1"]):
        got = table.loc[table["unique_id"] == f"plant/{col}", "yhat"].to_numpy()
        np.testing.assert_allclose(got, ref[:, c], rtol=1e-5)
        assert abs(got.mean() - 500 - 10 * c) < 20  # original units, not scaled


@pytest.mark.parametrize("how", ["directory", "glob"])
def test_directory_and_glob_new_series(tmp_path, capsys, linear_ckpt, how):
    data = tmp_path / "data"
    data.mkdir()
    wide_csv(data / "a.csv", seed=1)
    wide_csv(data / "b.csv", seed=2, level=1000.0)  # a level never seen in training
    wide_csv(data / "c.csv", n=90, freq="D", seed=3)  # another frequency
    (data / "notes.txt").write_text("not a series")
    source = data if how == "directory" else data / "*.csv"
    code, out, err = run(capsys, "--ckpt", linear_ckpt, "--input", source, "--output", tmp_path / "f.csv",
                         "--chunk-size", 2, "--batch-size", 1)
    assert code == 0, err
    table = pd.read_csv(tmp_path / "f.csv", parse_dates=["ds", "cutoff"])
    assert sorted(table["unique_id"].unique()) == [f"{s}/{c}" for s in "abc" for c in ("x0", "x1")]
    assert len(table) == 6 * HORIZON
    for stem, freq in (("a", "h"), ("b", "h"), ("c", "D")):
        check_timestamps(table, pd.read_csv(data / f"{stem}.csv", parse_dates=["date"]), f"{stem}/", "date", freq)
    b = table[table["unique_id"].str.startswith("b/")]
    assert b["yhat"].between(990, 1030).all()


def test_long_csv_grouped_and_ungrouped(tmp_path, capsys, linear_ckpt):
    frame = long_frame()
    frame.to_csv(tmp_path / "panel.csv", index=False)
    frame.sample(frac=1.0, random_state=0).to_csv(tmp_path / "shuffled.csv", index=False)  # not grouped by id
    tables = []
    for name in ("panel", "shuffled"):
        code, out, err = run(capsys, "--ckpt", linear_ckpt, "--input", tmp_path / f"{name}.csv", "--id-col", "id",
                             "--output", tmp_path / f"{name}-f.csv", "--chunk-size", 2, "--batch-size", 2)
        assert code == 0, err
        assert "forecast 5 series" in out
        tables.append(pd.read_csv(tmp_path / f"{name}-f.csv", parse_dates=["ds", "cutoff"]))
    grouped, shuffled = (t.sort_values(["unique_id", "ds"]).reset_index(drop=True) for t in tables)
    assert sorted(grouped["unique_id"].unique()) == [f"s{k}/x{c}" for k in range(5) for c in range(2)]
    pd.testing.assert_frame_equal(grouped, shuffled)
    for k in range(5):
        check_timestamps(grouped, frame[frame["id"] == f"s{k}"], f"s{k}/", "ds", "h")


def test_bad_and_short_series_are_reported_and_skipped(tmp_path, capsys, linear_ckpt):
    frame = long_frame((120, 130, 140, 150, 10))
    frame["id"] = frame["id"].map({"s0": "good", "s1": "text", "s2": "dup", "s3": "gap", "s4": "short"})
    frame["x0"] = frame["x0"].astype(object)
    text_row = frame.index[frame["id"] == "text"][7]
    frame.loc[text_row, "x0"] = "oops"
    dup = frame[frame["id"] == "dup"].iloc[[5]]
    frame = pd.concat([frame, dup]).sort_index(kind="stable").reset_index(drop=True)
    frame = frame.drop(frame.index[frame["id"] == "gap"][20]).reset_index(drop=True)
    data = tmp_path / "data"
    data.mkdir()
    frame.to_csv(data / "panel.csv", index=False)
    (data / "empty.csv").write_text("")
    (data / "header_only.csv").write_text("id,ds,x0,x1\n")
    text_line = int(np.flatnonzero(frame["x0"].astype(str) == "oops")[0]) + 2
    code, out, err = run(capsys, "--ckpt", linear_ckpt, "--input", data, "--id-col", "id", "--output",
                         tmp_path / "f.csv", "--skipped", tmp_path / "skipped.csv")
    assert code == 0, err
    table = pd.read_csv(tmp_path / "f.csv")
    assert sorted(table["unique_id"].unique()) == ["good/x0", "good/x1"]
    skipped = pd.read_csv(tmp_path / "skipped.csv")
    reasons = dict(zip(skipped["unique_id"], skipped["reason"], strict=True))
    assert set(reasons) == {"text", "dup", "gap", "short", "empty.csv", "header_only.csv"}, reasons
    assert "oops" in reasons["text"] and f"line {text_line}" in reasons["text"] and "panel.csv" in reasons["text"]
    assert "more than once" in reasons["dup"]
    assert "missing" in reasons["gap"]
    assert "10 rows" in reasons["short"] and f"lookback={LOOKBACK}" in reasons["short"]
    assert "empty" in reasons["empty.csv"] and "no data rows" in reasons["header_only.csv"]
    assert "skipped 6" in out and all(uid in out for uid in reasons)


def test_files_that_are_not_comma_separated_utf8_are_skipped_with_the_reason(tmp_path, capsys, linear_ckpt):
    data = tmp_path / "data"
    data.mkdir()
    frame = make_wide_frame(60, 2)
    frame.to_csv(data / "good.csv", index=False)
    (data / "packed.csv").write_bytes(gzip.compress(frame.to_csv(index=False).encode()))
    frame.to_csv(data / "semi.csv", index=False, sep=";")
    frame.rename(columns={"date": "désignation"}).to_csv(data / "excel.csv", index=False, encoding="latin-1")
    code, out, err = run(capsys, "--ckpt", linear_ckpt, "--input", data, "--output", tmp_path / "f.csv",
                         "--skipped", tmp_path / "skipped.csv")
    assert code == 0, err
    frame.to_parquet(tmp_path / "p.parquet")
    code, out, err = run(capsys, "--ckpt", linear_ckpt, "--input", tmp_path / "p.parquet", "--output", tmp_path / "g.csv")
    assert code != 0 and "p.parquet: a Parquet file; forecast and backtest read .csv and .tsv files" in out + err
    reasons = dict(pd.read_csv(tmp_path / "skipped.csv")[["unique_id", "reason"]].to_numpy())
    assert set(reasons) == {"packed.csv", "semi.csv", "excel.csv"}
    assert "gzip-compressed" in reasons["packed.csv"] and "seem separated by ';'" in reasons["semi.csv"]
    assert "not UTF-8 text" in reasons["excel.csv"]


def test_no_overwrite_and_atomic_write(tmp_path, capsys, linear_ckpt, monkeypatch):
    src = wide_csv(tmp_path / "plant.csv")
    dest = tmp_path / "out" / "f.csv"
    dest.parent.mkdir()
    dest.write_text("old\n")
    code, out, err = run(capsys, "--ckpt", linear_ckpt, "--input", src, "--output", dest)
    assert code != 0
    assert err.count("\n") == 1 and "exists" in err and "--overwrite" in err
    assert dest.read_text() == "old\n"

    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    with monkeypatch.context() as m:  # a failure mid-run leaves the old file and no debris
        m.setattr(fc.ForecastWriter, "write_on_batch_end", boom)
        with pytest.raises(RuntimeError, match="disk full"):
            fc.main(["--ckpt", str(linear_ckpt), "--input", str(src), "--output", str(dest), "--overwrite", *NO_BAR])
    assert dest.read_text() == "old\n"
    assert os.listdir(dest.parent) == ["f.csv"]

    code, out, err = run(capsys, "--ckpt", linear_ckpt, "--input", src, "--output", dest, "--overwrite")
    assert code == 0, err
    assert pd.read_csv(dest).shape == (2 * HORIZON, 4)
    assert os.listdir(dest.parent) == ["f.csv"]  # the temp file and the parts folder are gone

    before = src.read_bytes()  # the input as output: refused, --overwrite or not
    code, out, err = run(capsys, "--ckpt", linear_ckpt, "--input", src, "--output", src, "--overwrite")
    assert code != 0 and err.count("\n") == 1 and "is one of the inputs" in err
    assert src.read_bytes() == before


def _no_prediction(*args, **kwargs):
    raise AssertionError("the run should have been refused before predicting")


def test_skipped_file_is_kept_unless_overwrite_and_written_atomically(tmp_path, capsys, linear_ckpt, monkeypatch):
    data = tmp_path / "data"
    data.mkdir()
    wide_csv(data / "good.csv")
    bad = pd.read_csv(wide_csv(data / "bad.csv", seed=1))
    bad.loc[60, "x0"] = np.nan  # a NaN in the middle: the series is skipped
    bad.to_csv(data / "bad.csv", index=False)
    notes = tmp_path / "mynotes.csv"
    notes.write_text("notes\n")
    args = ["--ckpt", linear_ckpt, "--input", data, "--output", tmp_path / "o.csv", "--skipped", notes]
    with monkeypatch.context() as m:  # refused up front: nothing is predicted, nothing written
        m.setattr(fc.ForecastWriter, "write_on_batch_end", _no_prediction)
        code, out, err = run(capsys, *args)
    assert code == 2 and err.count("\n") == 1
    assert "--skipped file" in err and str(notes) in err and "--overwrite" in err
    assert notes.read_text() == "notes\n" and not (tmp_path / "o.csv").exists()

    code, out, err = run(capsys, *args, "--overwrite")
    assert code == 0, err
    skipped = pd.read_csv(notes)
    assert list(skipped["unique_id"]) == ["bad"] and "missing value" in skipped["reason"][0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "mynotes.csv", "o.csv"]  # no temp files left

    def half_then_fail(self, path, *args, **kwargs):  # a failed write leaves the old file and no temp file
        Path(path).write_text("half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(pd.DataFrame, "to_csv", half_then_fail)
    with pytest.raises(fc.ForecastError, match=r"cannot write --skipped file .*mynotes.csv: No space left"):
        fc._write_skipped([("x", None, "why")], notes, overwrite=True)
    assert list(pd.read_csv(notes)["unique_id"]) == ["bad"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "mynotes.csv", "o.csv"]


def test_plots_are_not_replaced_without_overwrite(tmp_path, capsys, linear_ckpt, monkeypatch):
    plots = tmp_path / "plots"
    plots.mkdir()
    # A wide file's plot is named after the file: refused before predicting.
    (plots / "plant.png").write_text("old")
    src = wide_csv(tmp_path / "plant.csv")
    with monkeypatch.context() as m:
        m.setattr(fc.ForecastWriter, "write_on_batch_end", _no_prediction)
        code, out, err = run(capsys, "--ckpt", linear_ckpt, "--input", src, "--output", tmp_path / "f.csv",
                             "--plot", plots)
    assert code == 2 and err.count("\n") == 1
    assert f"plot {plots / 'plant.png'} exists" in err and "--overwrite" in err
    assert (plots / "plant.png").read_text() == "old" and not (tmp_path / "f.csv").exists()

    # The ids of a long file are known only once read: refused before writing anything (table or plots).
    long_frame((40, 50)).to_csv(tmp_path / "panel.csv", index=False)
    (plots / "s1.png").write_text("old")
    args = ["--ckpt", linear_ckpt, "--input", tmp_path / "panel.csv", "--id-col", "id", "--output",
            tmp_path / "g.csv", "--plot", plots]
    code, out, err = run(capsys, *args)
    assert code == 2 and err.count("\n") == 1
    assert f"plot {plots / 's1.png'} exists" in err and "--overwrite" in err
    assert not (tmp_path / "g.csv").exists()
    assert sorted(p.name for p in plots.iterdir()) == ["plant.png", "s1.png"]  # no s0.png, no staging folder
    assert (plots / "s1.png").read_text() == "old"

    code, out, err = run(capsys, *args, "--overwrite")
    assert code == 0, err
    assert sorted(p.name for p in plots.iterdir()) == ["plant.png", "s0.png", "s1.png"]
    assert (plots / "s1.png").read_bytes().startswith(b"\x89PNG")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.csv", "panel.csv", "plant.csv", "plots"]


def test_unwritable_outputs_are_one_line_errors(tmp_path, capsys, linear_ckpt, monkeypatch):
    src = wide_csv(tmp_path / "plant.csv")
    blocker = tmp_path / "file"
    blocker.write_text("a regular file, not a folder")
    monkeypatch.setattr(fc.ForecastWriter, "write_on_batch_end", _no_prediction)  # every case is refused first
    for flag, target in (("--output", blocker / "f.csv"), ("--skipped", blocker / "s.csv"), ("--plot", blocker / "p")):
        args = ["--output", tmp_path / "f.csv", flag, target] if flag != "--output" else [flag, target]
        code, out, err = run(capsys, "--ckpt", linear_ckpt, "--input", src, *args)
        assert code == 2 and err.count("\n") == 1, (flag, err)
        assert err.startswith("tsattn forecast: error:") and str(target) in err and "not a folder" in err

    def read_only(*args, **kwargs):  # a read-only folder (e.g. chattr +i) that os.access would not reveal to root
        raise PermissionError(13, "Permission denied")

    with monkeypatch.context() as m:
        m.setattr(fc.tempfile, "mkstemp", read_only)
        code, out, err = run(capsys, "--ckpt", linear_ckpt, "--input", src, "--output", tmp_path / "imm" / "f.csv")
    assert code == 2 and err.count("\n") == 1
    assert "output " + str(tmp_path / "imm" / "f.csv") in err and "cannot write in" in err and "Permission" in err


def test_a_failed_write_is_a_one_line_error(tmp_path, capsys, linear_ckpt, monkeypatch):
    src = wide_csv(tmp_path / "plant.csv")
    def denied(self, parts):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(fc.ForecastWriter, "_concat", denied)
    code, out, err = run(capsys, "--ckpt", linear_ckpt, "--input", src, "--output", tmp_path / "f.csv")
    assert code == 2 and err.count("\n") == 1
    assert f"cannot write output {tmp_path / 'f.csv'}: Permission denied" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plant.csv"]  # the parts folder is gone


def test_cutoffs_use_only_rows_up_to_them(tmp_path, capsys, linear_ckpt):
    src = wide_csv(tmp_path / "plant.csv")
    ds = pd.read_csv(src, parse_dates=["date"])["date"]
    cut_a, cut_b, too_early = ds[59], ds[99], ds[5]
    between = cut_a + pd.Timedelta("30min")  # no row of its own: its history ends on cut_a's row
    code, out, err = run(capsys, "--ckpt", linear_ckpt, "--input", src, "--output", tmp_path / "f.csv",
                         "--cutoffs", str(cut_a), f"{cut_b},{too_early}", str(between))
    assert code == 0, err
    assert "at cutoff" in out and f"lookback={LOOKBACK}" in out
    assert f"cutoff {between} ends on the same row ({cut_a}) as cutoff {cut_a}" in out
    table = pd.read_csv(tmp_path / "f.csv", parse_dates=["ds", "cutoff"])
    assert sorted(table["cutoff"].unique()) == [cut_a, cut_b]
    assert not table.duplicated(["unique_id", "ds", "cutoff"]).any()
    for cut, rows in ((cut_a, 60), (cut_b, 100)):
        part = table[table["cutoff"] == cut]
        assert list(part["ds"].iloc[:HORIZON]) == list(pd.date_range(cut, periods=HORIZON + 1, freq="h")[1:])
        # The same as forecasting the file cut at that row: nothing after the cutoff is used.
        trunc = tmp_path / "plant_cut.csv"  # same stem: the same series
        pd.read_csv(src).iloc[:rows].to_csv(trunc, index=False)
        run(capsys, "--ckpt", linear_ckpt, "--input", trunc, "--output", tmp_path / "g.csv", "--overwrite")
        ref = pd.read_csv(tmp_path / "g.csv")
        np.testing.assert_allclose(part["yhat"].to_numpy(), ref["yhat"].to_numpy(), rtol=1e-5)


@pytest.mark.parametrize("layout", ["wide", "long"])
def test_missing_values_at_a_cutoff_are_filled_from_the_rows_before_it(tmp_path, capsys, linear_ckpt, layout):
    frame = make_wide_frame(120, 2, seed=4)
    frame.loc[59, "x0"] = np.nan  # the last row up to the cutoff
    frame = frame.drop(index=[58])  # and a missing step on the hourly grid
    cut = frame["date"][59]
    moved = frame.copy()
    moved.loc[moved["date"] > cut, ["x0", "x1"]] *= 1000.0
    tables = []
    for k, data in enumerate((frame, moved)):
        path = tmp_path / f"in{k}" / "plant.csv"
        path.parent.mkdir()
        (data.assign(id="p1") if layout == "long" else data).to_csv(path, index=False)
        id_args = ["--id-col", "id"] if layout == "long" else []
        code, out, err = run(capsys, "--ckpt", linear_ckpt, "--input", path, "--output", tmp_path / f"f{k}.csv",
                             "--cutoffs", str(cut), "--missing", "interpolate", *id_args)
        assert code == 0, err
        tables.append(pd.read_csv(tmp_path / f"f{k}.csv"))
    assert len(tables[0]) == 2 * HORIZON
    np.testing.assert_array_equal(tables[0]["yhat"].to_numpy(), tables[1]["yhat"].to_numpy())


@pytest.mark.parametrize("chunk", ["1", "500"])
def test_ids_that_pandas_would_call_missing_are_ids(tmp_path, capsys, quantile_ckpt, chunk):
    frame = make_long_frame((40, 41, 42), channels=1).rename(columns={"y0": "y"})
    frame["id"] = frame["id"].map({"s0": "NA", "s1": "None", "s2": "null"})
    frame.iloc[::2].to_csv(tmp_path / "na.csv", index=False)  # every other row, then the rest: ids not grouped
    frame.iloc[1::2].to_csv(tmp_path / "na.csv", index=False, header=False, mode="a")
    code, out, err = run(capsys, "--ckpt", quantile_ckpt, "--input", tmp_path / "na.csv", "--output",
                         tmp_path / "f.csv", "--chunk-size", chunk)
    assert code == 0, err
    table = pd.read_csv(tmp_path / "f.csv", keep_default_na=False)
    assert sorted(table["unique_id"].unique()) == ["NA", "None", "null"] and "skipped 0 series" in out


def test_every_series_gets_its_own_plot(tmp_path, capsys, quantile_ckpt):
    ids = {"s0": "s 1", "s1": "s_1", "s2": "s/1", "s3": "x" * 300}  # names that used to clash, a long one
    frame = make_long_frame((40, 41, 42, 43), channels=1).rename(columns={"y0": "y"})
    frame["id"] = frame["id"].map(ids)
    frame.to_csv(tmp_path / "odd.csv", index=False)
    plots = tmp_path / "plots"
    code, out, err = run(capsys, "--ckpt", quantile_ckpt, "--input", tmp_path / "odd.csv", "--output",
                         tmp_path / "f.csv", "--plot", plots)
    assert code == 0, err
    names = sorted(p.name for p in plots.iterdir())
    assert len(names) == 4 and {"s%201.png", "s_1.png", "s%2F1.png"} < set(names)
    assert max(len(n) for n in names) < 200


def test_parquet_without_pyarrow_is_one_line_before_any_work(tmp_path, capsys, linear_ckpt, monkeypatch):
    src = wide_csv(tmp_path / "plant.csv")
    pd.read_csv(src).to_parquet(tmp_path / "plant.parquet")
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # as on an install without the [parquet] extra
    code, out, err = run(capsys, "--ckpt", linear_ckpt, "--input", src, "--output", tmp_path / "f.parquet")
    assert code == 2 and err.count("\n") == 1
    assert f"output {tmp_path / 'f.parquet'}: Parquet needs pyarrow: pip install 'tsattn[parquet]'" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plant.csv", "plant.parquet"]
    with pytest.raises(ValueError, match=r"plant.parquet: Parquet needs pyarrow"):
        SeriesDataModule(tmp_path / "plant.parquet", lookback=LOOKBACK, horizon=HORIZON).setup("fit")


def test_quantile_columns_melt_parquet_and_plots(tmp_path, capsys, quantile_ckpt):
    # A one-channel model on a wide file without its column: each numeric column is its own series.
    frame = make_wide_frame(100, 2).rename(columns={"x0": "a", "x1": "b"})
    frame.to_csv(tmp_path / "two.csv", index=False)
    plots = tmp_path / "plots"
    code, out, err = run(capsys, "--ckpt", quantile_ckpt, "--input", tmp_path / "two.csv", "--output",
                         tmp_path / "f.parquet", "--plot", plots)
    assert code == 0, err
    table = pd.read_parquet(tmp_path / "f.parquet")
    assert list(table.columns) == ["unique_id", "ds", "cutoff", "yhat", "yhat_q0.1", "yhat_q0.5", "yhat_q0.9"]
    assert sorted(table["unique_id"].unique()) == ["two/a", "two/b"]
    assert pd.api.types.is_datetime64_any_dtype(table["ds"])
    np.testing.assert_array_equal(table["yhat"], table["yhat_q0.5"])
    assert (table["yhat_q0.1"] <= table["yhat_q0.5"]).all() and (table["yhat_q0.5"] <= table["yhat_q0.9"]).all()
    assert sorted(p.name for p in plots.iterdir()) == ["two%2Fa.png", "two%2Fb.png"]

    # A long file with the id column the model was trained with (`id`): found without --id-col.
    long = make_long_frame((60, 70), channels=1).rename(columns={"y0": "y"})
    long.to_csv(tmp_path / "long.csv", index=False)
    code, out, err = run(capsys, "--ckpt", quantile_ckpt, "--input", tmp_path / "long.csv", "--output",
                         tmp_path / "g.csv")
    assert code == 0, err
    assert sorted(pd.read_csv(tmp_path / "g.csv")["unique_id"].unique()) == ["s0", "s1"]


def test_two_processes_match_one(tmp_path, capsys, linear_ckpt):
    """Two CPU processes (DDP over gloo) write the same table as one. ``ddp_fork`` forks this process (no second
    cold start of torch); ``--trainer.strategy ddp`` runs the same code with the command relaunched per rank."""
    long_frame().to_csv(tmp_path / "panel.csv", index=False)
    common = ["--ckpt", str(linear_ckpt), "--input", str(tmp_path / "panel.csv"), "--id-col", "id",
              "--chunk-size", "1", "--batch-size", "2", *NO_BAR]
    assert fc.main([*common, "--output", str(tmp_path / "one.csv")]) == 0
    assert "1 process)" in capsys.readouterr().out
    assert fc.main([*common, "--output", str(tmp_path / "two.csv"), "--trainer.devices", "2",
                    "--trainer.strategy", "ddp_fork"]) == 0
    assert "2 processes)" in capsys.readouterr().out  # both ranks wrote chunks
    one, two = (pd.read_csv(tmp_path / f"{n}.csv").sort_values(["unique_id", "ds"]).reset_index(drop=True)
                for n in ("one", "two"))
    assert len(one) == 5 * 2 * HORIZON
    pd.testing.assert_frame_equal(one, two)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one.csv", "panel.csv", "two.csv"]


def test_checkpoints_load_safely(tmp_path, linear_ckpt):
    ckpt = torch.load(linear_ckpt, weights_only=True)
    ckpt["hyper_parameters"]["_class_path"] = "evil_module_xyz.Model"
    torch.save(ckpt, tmp_path / "named.ckpt")
    with pytest.raises(fc.CheckpointError, match="never imports"):
        fc.load_checkpoint(tmp_path / "named.ckpt")
    assert "evil_module_xyz" not in sys.modules

    ckpt["hyper_parameters"].pop("_class_path")
    ckpt["extra"] = np.random.default_rng(0)  # an arbitrary pickled object
    torch.save(ckpt, tmp_path / "pickled.ckpt")
    with pytest.raises(fc.CheckpointError, match="refusing to load"):
        fc.load_checkpoint(tmp_path / "pickled.ckpt")


def test_cli_dispatches_forecast_and_backtest(tmp_path, capsys):
    from tsattn.cli import main

    for command in ("forecast", "backtest"):
        args = ["--ckpt", str(tmp_path / "missing.ckpt"), "--input", str(tmp_path), "--output", str(tmp_path / "o.csv")]
        if command == "backtest":
            args += ["--windows", "2", "--step", "1"]
        assert main([command, *args]) == 2
        err = capsys.readouterr().err
        assert f"tsattn {command}: error: checkpoint" in err and "not found" in err


def test_a_file_that_is_no_checkpoint_is_named(tmp_path, capsys):
    data = wide_csv(tmp_path / "data.csv")
    code, _, err = run(capsys, "--ckpt", data, "--input", data, "--output", tmp_path / "f.csv")
    assert code == 2 and err.count("\n") == 1
    assert "data.csv: not a checkpoint file" in err and not (tmp_path / "f.csv").exists()


def test_plain_trainer_checkpoint_loads_as_its_class(linear_ckpt):
    """A checkpoint that names no class (saved by a plain Trainer) is identified by Forecaster.load_from_checkpoint
    as forecast identifies it."""
    from tsattn.models.base import Forecaster

    model = Forecaster.load_from_checkpoint(linear_ckpt)
    assert type(model) is Linear and type(fc.load_checkpoint(linear_ckpt).model) is Linear
