"""benchmarks/ltsf.py on small synthetic CSVs: bad data and arguments fail up front (exit 2, one clear line, no fit,
--json untouched), --json is never overwritten without --overwrite, a constant series gives strict JSON."""

from __future__ import annotations

import importlib.util
import json
import math
import os
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "ltsf.py"
_spec = importlib.util.spec_from_file_location("ltsf_benchmark", SCRIPT)
ltsf = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ltsf)

FAST = ["--lookback", "24", "--horizon", "6", "--model", "ridge"]
FIELDS = {"model", "lookback", "horizon", "test_mse", "test_mse_se", "test_mae", "n_test_windows", "mse_vs_ridge"}


def strict_json(text: str) -> object:
    """json.loads that refuses NaN / Infinity (not JSON)."""

    def refuse(name: str) -> object:
        raise ValueError(f"not strict JSON: {name}")

    return json.loads(text, parse_constant=refuse)


def run(argv: list[str]) -> tuple[list[dict[str, object]], list[str]]:
    """main(argv); its result rows and the lines it printed."""
    emitted: list[str] = []
    rows = ltsf.main(argv, emit=emitted.append)
    return rows, "\n".join(emitted).splitlines()


def fails(argv: list[str], capsys: pytest.CaptureFixture[str], code: int = 2) -> str:
    """Run, expect a clean exit with *code*; return stderr's last line (no traceback)."""
    with pytest.raises(SystemExit) as exc:
        run(argv)
    assert exc.value.code == code
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err.strip().splitlines()[-1]


@pytest.fixture
def csv(tmp_path: Path, wide_frame) -> Path:
    path = tmp_path / "data.csv"
    wide_frame(n=300, channels=2).to_csv(path, index=False)
    return path


@pytest.fixture
def no_fit(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any fit fails the test: the errors below must come before one."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("a model was fitted before the error")

    monkeypatch.setattr(ltsf, "run_one", refuse)


@pytest.fixture
def old_json(tmp_path: Path) -> Path:
    path = tmp_path / "res.json"
    path.write_text('[{"model": "earlier"}]')
    return path


def test_happy_path_then_refuses_to_overwrite(csv: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    out = tmp_path / "res.json"
    rows, lines = run(["--csv", str(csv), *FAST, "--model", "naive", "--json", str(out)])
    saved = strict_json(out.read_text())
    assert [r["model"] for r in saved] == ["ridge", "naive"] and saved == json.loads(json.dumps(rows))
    assert all(FIELDS <= set(r) and r["horizon"] == 6 for r in saved)
    assert saved[0]["mse_vs_ridge"] == 1.0 and any(line.startswith("naive") for line in lines)
    before = out.read_bytes()
    line = fails(["--csv", str(csv), *FAST, "--json", str(out)], capsys)
    assert str(out) in line and "--overwrite" in line
    assert out.read_bytes() == before
    run(["--csv", str(csv), *FAST, "--json", str(out), "--overwrite"])
    assert [r["model"] for r in strict_json(out.read_text())] == ["ridge"]
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]


@pytest.mark.parametrize(
    "content, expected",
    [
        (None, "file not found"),
        ("", "empty"),
        ("date,a\n", "no data rows"),
        ("bad", "line 52"),  # a non-numeric value
        ("nan", "line 52"),  # a missing value under --missing error
    ],
)
def test_bad_data_fails_up_front(
    content, expected, tmp_path, wide_frame, old_json, no_fit, capsys: pytest.CaptureFixture[str]
):
    path = tmp_path / "in.csv"
    if content in ("bad", "nan"):
        frame = wide_frame(n=300, channels=2).astype({"x0": object})
        frame.loc[50, "x0"] = "abc" if content == "bad" else float("nan")
        frame.to_csv(path, index=False)
    elif content is not None:
        path.write_text(content)
    line = fails(["--csv", str(path), *FAST, "--json", str(old_json), "--overwrite"], capsys)
    assert "--csv" in line and expected in line
    assert old_json.read_text() == '[{"model": "earlier"}]'


@pytest.mark.parametrize(
    "extra, flag",
    [
        (["--lookback", "0"], "--lookback"),
        (["--horizon", "0"], "--horizon"),
        (["--horizon", "-4"], "--horizon"),
        (["--period", "0"], "--period"),
        (["--threads", "-1"], "--threads"),
        (["--batch-size", "0"], "--batch-size"),
    ],
)
def test_bad_arguments_fail_up_front(extra, flag, csv, old_json, no_fit, capsys: pytest.CaptureFixture[str]):
    line = fails(["--csv", str(csv), *FAST, *extra, "--json", str(old_json), "--overwrite"], capsys)
    assert line.endswith(f"{flag} must be >= 1, got {extra[1]}")
    assert old_json.read_text() == '[{"model": "earlier"}]'


def test_too_long_horizon_is_skipped_and_the_others_run(csv: Path):
    rows, lines = run(["--csv", str(csv), *FAST, "--horizon", "500"])
    assert [r["horizon"] for r in rows] == [6]
    assert any(line.startswith("# horizon 500 skipped:") for line in lines)


def test_no_horizon_left_fails_and_writes_nothing(csv, old_json, capsys: pytest.CaptureFixture[str]):
    argv = ["--csv", str(csv), "--lookback", "24", "--horizon", "400", "--model", "ridge"]
    line = fails([*argv, "--json", str(old_json), "--overwrite"], capsys, code=1)
    assert "no result" in line and str(old_json) in line
    assert old_json.read_text() == '[{"model": "earlier"}]'


@pytest.mark.parametrize("where", ["a folder", "parent is a file"])
def test_json_path_problems_fail_up_front(where, csv, tmp_path, no_fit, capsys: pytest.CaptureFixture[str]):
    target = {"a folder": tmp_path, "parent is a file": csv / "x.json"}[where]
    line = fails(["--csv", str(csv), *FAST, "--json", str(target), "--overwrite"], capsys)
    assert f"--json {target}" in line


def test_json_folder_is_made(csv, tmp_path):
    run(["--csv", str(csv), *FAST, "--json", str(tmp_path / "new" / "x.json")])
    assert [r["model"] for r in strict_json((tmp_path / "new" / "x.json").read_text())] == ["ridge"]


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root writes to read-only folders")
def test_json_in_read_only_folder_fails_up_front(csv, tmp_path, no_fit, capsys: pytest.CaptureFixture[str]):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        line = fails(["--csv", str(csv), *FAST, "--json", str(folder / "x.json")], capsys)
    finally:
        folder.chmod(0o700)
    assert "cannot write in" in line


def test_json_that_appears_during_the_run_is_not_replaced(csv, tmp_path, capsys: pytest.CaptureFixture[str]):
    out = tmp_path / "res.json"

    def emit(line: str) -> None:  # another process writes the file while the benchmark runs
        if not out.exists():
            out.write_text("theirs")

    with pytest.raises(SystemExit) as exc:
        ltsf.main(["--csv", str(csv), *FAST, "--json", str(out)], emit=emit)
    assert exc.value.code == 1 and "--overwrite" in capsys.readouterr().err
    assert out.read_text() == "theirs"


@pytest.mark.parametrize(
    "hparam, expected",
    [
        ("ridge.alphaa=1.0", "ridge (Ridge) has no hyperparameter 'alphaa'; valid names: alpha,"),
        ("ridge.alpha='abc'", "--hparam ridge.alpha='abc' could not be built for lookback"),
        ("ema.optimizer='adam'", "ema.optimizer takes an optimizer factory, which a command-line value cannot be"),
        ("ema.d_model='abc'", "(the types it takes: d_model: int)"),
        ("ridge.horizon=3", "ridge.horizon is set from --horizon"),
        ("ridge", "--hparam expects MODEL.NAME=VALUE"),
    ],
)
def test_bad_hparam_names_the_model_and_the_fix(hparam, expected, csv, no_fit, capsys):
    line = fails(["--csv", str(csv), *FAST, "--model", "naive", "--model", "ema", "--hparam", hparam], capsys)
    assert expected in line


def test_hparam_the_constructor_rejects_fails_up_front(csv, no_fit, capsys: pytest.CaptureFixture[str]):
    line = fails(["--csv", str(csv), *FAST, "--hparam", "ridge.quantiles=[0.5, 2.0]"], capsys)
    assert "--hparam ridge.quantiles=[0.5, 2.0] could not be built" in line


def test_a_model_the_data_rules_out_fails_before_any_fit(csv, no_fit, capsys: pytest.CaptureFixture[str]):
    line = fails(["--csv", str(csv), *FAST, "--model", "phase-ridge", "--period", "48"], capsys)
    assert "--model phase-ridge (PhaseRidge) could not be built for lookback 24, horizon 6, period 48" in line
    assert "lookback (24) must be at least the period (48)" in line


@pytest.mark.parametrize("extra, expected", [
    (["--ema-decay", "nan"], "--ema-decay must be in [0, 1], got nan"),
    (["--ema-decay", "2"], "--ema-decay must be in [0, 1], got 2.0"),
    (["--gradient-clip", "nan"], "--gradient-clip must be a finite number >= 0, got nan"),
])
def test_training_options_checked_up_front(extra, expected, csv, no_fit, capsys: pytest.CaptureFixture[str]):
    assert fails(["--csv", str(csv), *FAST, "--model", "linear", *extra], capsys).endswith(expected)


def test_columns_chosen_and_a_failed_model_reported(tmp_path: Path, wide_frame, monkeypatch, capsys):
    path = tmp_path / "cols.csv"
    wide_frame(n=300, channels=3).rename(columns={"date": "when"}).to_csv(path, index=False)
    rows, lines = run(["--csv", str(path), *FAST, "--model", "naive", "--target-cols", "x0", "x2", "--time-col", "when"])
    assert [r["model"] for r in rows] == ["ridge", "naive"]
    line = fails(["--csv", str(path), *FAST, "--target-cols", "x0", "nope"], capsys)
    assert "--target-cols" in line and "target_cols" not in line
    real = ltsf.run_one

    def fails_for_naive(name, *args):
        if name == "naive":
            raise ValueError("Naive forecast NaN or inf on test windows")
        return real(name, *args)

    monkeypatch.setattr(ltsf, "run_one", fails_for_naive)
    rows, lines = run(["--csv", str(path), *FAST, "--model", "naive"])
    assert [r["model"] for r in rows] == ["ridge"]
    assert "# naive at horizon 6 failed, no row: Naive forecast NaN or inf on test windows" in lines


def test_constant_series_gives_null_ratio_and_strict_json(tmp_path: Path, wide_frame):
    path, out = tmp_path / "const.csv", tmp_path / "res.json"
    frame = wide_frame(n=300, channels=2)
    frame[["x0", "x1"]] = 3.0
    frame.to_csv(path, index=False)
    rows, lines = run(["--csv", str(path), *FAST, "--model", "naive", "--json", str(out)])
    saved = strict_json(out.read_text())
    assert [r["test_mse"] for r in saved] == [0.0, 0.0]
    assert all(r["mse_vs_ridge"] is None for r in saved)
    naive = next(line for line in lines if line.startswith("naive"))
    assert naive.split()[6] == "-"  # the vs_ridge column


def test_ratio_to_the_ridge():
    assert ltsf.mse_ratio(0.5, 0.25) == 2.0
    assert ltsf.mse_ratio(0.0, 0.0) is None and ltsf.mse_ratio(1.0, None) is None
    assert ltsf.mse_ratio(math.nan, 1.0) is None and ltsf.mse_ratio(1.0, math.inf) is None
