"""tsattn.data.frames: reading wide/long series, clear errors, missing policies, time indices."""

from __future__ import annotations

import hashlib
import warnings

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tsattn.data import (
    SeriesFileNotFoundError,
    check_length,
    infer_period,
    read_series,
    time_index,
)

# ------------------------------------------------------------------------------------------------ reading


def test_wide_csv_canonical(tmp_path, wide_frame):
    df = wide_frame(50, channels=2).sample(frac=1.0, random_state=0)  # unsorted on disk
    path = tmp_path / "plant.csv"
    df.to_csv(path, index=False)
    sf = read_series(path)
    assert sf.source == "plant.csv"
    assert sf.target_cols == ["x0", "x1"]
    assert sf.freq == "h"
    assert sf.time_col == "date"
    assert list(sf.frame.columns) == ["unique_id", "ds", "x0", "x1"]
    assert (sf.frame["unique_id"] == "plant").all()
    assert sf.frame["ds"].is_monotonic_increasing
    assert str(sf.frame["ds"].dtype).startswith("datetime64")
    assert all(sf.frame[c].dtype == np.float64 for c in sf.target_cols)
    uid, ds, values = next(sf.series())
    assert uid == "plant" and isinstance(ds, pd.DatetimeIndex) and values.shape == (50, 2)
    np.testing.assert_allclose(values, wide_frame(50, channels=2)[["x0", "x1"]].to_numpy())


def test_long_csv_one_series_per_id(tmp_path, long_frame):
    df = long_frame((30, 40), channels=2)
    path = tmp_path / "many.csv"
    df.iloc[::-1].to_csv(path, index=False)
    sf = read_series(path, id_col="id")
    assert sf.series_ids == ["s0", "s1"]
    assert sf.lengths() == {"s0": 30, "s1": 40}
    assert sf.target_cols == ["y0", "y1"]
    assert sf.freq == "h" and sf.id_col == "id" and sf.time_col == "ds"
    for uid, ds, values in sf.series():
        expect = df[df["id"] == uid]
        np.testing.assert_allclose(values, expect[["y0", "y1"]].to_numpy())
        assert (ds == pd.DatetimeIndex(expect["ds"])).all()


def test_wide_csv_of_many_columns_reads_without_warnings(tmp_path, wide_frame):
    """A panel of hundreds of channels (as Electricity's 321) reads quietly: no fragmented-frame warnings."""
    path = tmp_path / "panel.csv"
    wide_frame(30, channels=300).to_csv(path, index=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sf = read_series(path)
    assert len(sf.target_cols) == 300


def test_target_cols_subset_and_order(wide_frame):
    sf = read_series(wide_frame(30, channels=3), target_cols=["x2", "x0"])
    assert sf.target_cols == ["x2", "x0"] and sf.source == "<DataFrame>"
    assert list(sf.frame.columns) == ["unique_id", "ds", "x2", "x0"]
    assert sf.series_ids == ["series"]


@pytest.mark.parametrize("how", ["name", "content", "dtype", "index"])
def test_time_column_detection(how, wide_frame):
    df = wide_frame(30, channels=1)
    if how == "name":
        df = df.rename(columns={"date": "Timestamp"})
        df["Timestamp"] = df["Timestamp"].astype(str)
        expect = "Timestamp"
    elif how == "content":
        df = df.rename(columns={"date": "when"})
        df["when"] = df["when"].dt.strftime("%d %b %Y %H:%M")
        df = df[["x0", "when"]]  # not the first column either
        expect = "when"
    elif how == "dtype":
        df = df.rename(columns={"date": "stamp"})
        expect = "stamp"
    else:
        df = df.set_index("date")
        expect = "date"
    sf = read_series(df)
    assert sf.time_col == expect
    assert sf.target_cols == ["x0"] and sf.freq == "h" and len(sf.frame) == 30


def test_non_numeric_label_column_skipped(wide_frame, caplog):
    df = wide_frame(30, channels=2)
    df["note"] = "ok"
    sf = read_series(df)
    assert sf.target_cols == ["x0", "x1"]
    assert "note" in caplog.text


@pytest.mark.parametrize(
    ("freq", "alias", "period"),
    [
        ("h", "h", 24),
        ("D", "D", 7),
        ("B", "B", 5),
        ("MS", "MS", 12),
        ("15min", "15min", 96),
        ("20ms", "20ms", None),
    ],
)
def test_frequency_inferred(freq, alias, period, wide_frame):
    sf = read_series(wide_frame(40, channels=1, freq=freq))
    assert sf.freq == alias
    assert infer_period(sf.freq) == period


def test_dataframe_and_file_never_modified(tmp_path, wide_frame):
    df = wide_frame(40, channels=2)
    df.loc[5, "x0"] = np.nan
    df = df.iloc[::-1]
    before = df.copy(deep=True)
    read_series(df, missing="ffill")
    read_series(df, missing="ignore")
    pd.testing.assert_frame_equal(df, before)
    assert df.index.equals(before.index)
    path = tmp_path / "f.csv"
    df.to_csv(path, index=False)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    read_series(path, missing="interpolate")
    assert hashlib.sha256(path.read_bytes()).hexdigest() == digest


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(3, 40),
    channels=st.integers(1, 3),
    nan_at=st.lists(st.tuples(st.integers(0, 39), st.integers(0, 2)), max_size=5),
    shuffle=st.booleans(),
)
def test_property_input_frame_unchanged(n, channels, nan_at, shuffle, wide_frame):
    df = wide_frame(n, channels=channels)
    for r, c in nan_at:
        df.iloc[r % n, 1 + c % channels] = np.nan
    if shuffle:
        df = df.sample(frac=1.0, random_state=n)
    before = df.copy(deep=True)
    if df.iloc[:, 1:].isna().all().any():  # a column with nothing to fill from is refused, not invented
        with pytest.raises(ValueError, match="no finite value to fill from"):
            read_series(df, missing="ffill")
        pd.testing.assert_frame_equal(df, before)
        return
    sf = read_series(df, missing="ffill")
    pd.testing.assert_frame_equal(df, before)
    assert np.isfinite(sf.frame[sf.target_cols].to_numpy()).all()


# ------------------------------------------------------------------------------------------------ errors


def _csv(tmp_path, text: str, name: str = "bad.csv"):
    path = tmp_path / name
    path.write_text(text)
    return path


HOURS = [f"2024-01-01 {h:02d}:00:00" for h in range(24)]


def _rows(values, times=HOURS):
    return "".join(f"{t},{v}\n" for t, v in zip(times, values, strict=False))


def test_saved_index_column_left_out(tmp_path, wide_frame, caplog):
    df = wide_frame(30, channels=2)
    df.to_csv(tmp_path / "indexed.csv")  # pandas' default: the row numbers first, under an empty header
    with caplog.at_level("WARNING", logger="tsattn.data.frames"):
        sf = read_series(tmp_path / "indexed.csv")
    assert sf.target_cols == ["x0", "x1"]
    assert "indexed.csv: left out column 1, without a name and holding the row numbers" in caplog.text
    df.insert(0, "", np.linspace(5.0, 6.0, 30))  # an unnamed column of values is a series like any other
    df.to_csv(tmp_path / "unnamed.csv", index=False)
    assert read_series(tmp_path / "unnamed.csv").target_cols == ["Unnamed: 0", "x0", "x1"]
    # a separator at the end of every line (as spreadsheets write): an empty column without a name, left out
    text = (tmp_path / "unnamed.csv").read_text().splitlines()
    (tmp_path / "trailing.csv").write_text("".join(line + ",\n" for line in text))
    with caplog.at_level("WARNING", logger="tsattn.data.frames"):
        assert read_series(tmp_path / "trailing.csv").target_cols == ["Unnamed: 0", "x0", "x1"]
    assert "trailing.csv: left out column 5, without a name or a value" in caplog.text


def test_errors_for_files_that_are_not_comma_separated_utf8(tmp_path, wide_frame):
    df = wide_frame(30, channels=2).rename(columns={"x0": "température"})
    df.to_csv(tmp_path / "excel.csv", index=False, encoding="latin-1")
    with pytest.raises(ValueError, match=r"^excel\.csv: not UTF-8 text \(byte 0xe9 at byte \d+\); save it as UTF-8"):
        read_series(tmp_path / "excel.csv")
    df.to_csv(tmp_path / "packed.csv.gz", index=False)
    assert read_series(tmp_path / "packed.csv.gz").target_cols == ["température", "x1"]  # named .gz: read as gzip
    (tmp_path / "packed.csv").write_bytes((tmp_path / "packed.csv.gz").read_bytes())
    with pytest.raises(ValueError, match=r"^packed\.csv: a gzip-compressed file, not text; decompress it first"):
        read_series(tmp_path / "packed.csv")
    df.to_csv(tmp_path / "semi.csv", index=False, sep=";")
    with pytest.raises(ValueError, match=r"^semi\.csv: the header is one field, .*separated by ';'"):
        read_series(tmp_path / "semi.csv")


def test_numbers_written_with_separators_get_a_hint(tmp_path, wide_frame, caplog):
    df = wide_frame(30, channels=2)
    df["x0"] = [f"{v:,.2f}" for v in df["x0"] * 1000 + 5000]  # '5,123.45'
    with caplog.at_level("WARNING", logger="tsattn.data.frames"):
        assert read_series(df).target_cols == ["x1"]
    assert "skipping non-numeric columns ['x0']. Column(s) ['x0'] hold numbers written with separators" in caplog.text
    with pytest.raises(ValueError, match=r"non-numeric value '5,\d{3}\.\d\d'.*hold numbers written with separators"):
        read_series(df, target_cols=["x0", "x1"])


def test_time_held_in_the_index(tmp_path, wide_frame, long_frame):
    df = wide_frame(40, channels=2)
    df.set_index("date").to_parquet(tmp_path / "indexed.parquet")  # the index is saved with the frame
    assert read_series(tmp_path / "indexed.parquet").time_col == "date"
    df.to_csv(tmp_path / "w.csv", index=False)
    as_index = pd.read_csv(tmp_path / "w.csv", index_col=0)  # a text index named like the time column
    assert read_series(as_index, time_col="date").target_cols == ["x0", "x1"]
    periods = df.set_index(df["date"].dt.to_period("h")).drop(columns="date")
    assert read_series(periods).freq == "h"
    panel = long_frame((30, 40)).set_index(["id", "ds"])
    assert read_series(panel, id_col="id").lengths() == {"s0": 30, "s1": 40}


@pytest.mark.parametrize("missing", ["error", "ffill", "interpolate", "ignore"])
def test_error_column_without_a_number(wide_frame, missing):
    df = wide_frame(30, channels=2).assign(x1=np.nan)
    with pytest.raises(ValueError, match=r"column\(s\) \['x1'\] hold no finite value at all; leave them out"):
        read_series(df, missing=missing)


def test_long_csv_ids_kept_as_written(tmp_path, long_frame):
    df = long_frame((30, 40))
    df["id"] = df["id"].map({"s0": "007", "s1": "010"})  # numbers to pandas, names to the user
    df.to_csv(tmp_path / "panel.csv", index=False)
    assert read_series(tmp_path / "panel.csv", id_col="id").series_ids == ["007", "010"]


def test_error_missing_file(tmp_path):
    with pytest.raises(ValueError, match=r"nope\.csv: file not found") as info:
        read_series(tmp_path / "nope.csv")
    assert isinstance(info.value, FileNotFoundError) and isinstance(info.value, SeriesFileNotFoundError)
    assert "Check the path" in str(info.value)


def test_error_empty_file(tmp_path):
    with pytest.raises(ValueError, match=r"empty\.csv: the file is empty.*header line"):
        read_series(_csv(tmp_path, "", "empty.csv"))


def test_error_header_only(tmp_path):
    with pytest.raises(ValueError, match=r"head\.csv: no data rows \(columns: date, a\).*add one row"):
        read_series(_csv(tmp_path, "date,a\n", "head.csv"))


def test_error_unknown_target_cols(tmp_path):
    path = _csv(tmp_path, "date,a,b\n" + _rows(range(5)).replace("\n", ",1\n"))
    with pytest.raises(ValueError) as info:
        read_series(path, target_cols=["a", "zz"])
    msg = str(info.value)
    assert "bad.csv" in msg and "['zz']" in msg and "Available columns: a, b" in msg


@pytest.mark.parametrize("arg", ["time_col", "id_col"])
def test_error_unknown_time_or_id_col(tmp_path, arg):
    path = _csv(tmp_path, "date,a\n" + _rows(range(5)))
    with pytest.raises(
        ValueError, match=rf"bad\.csv: {arg}='zz' is not a column\. Available columns: date, a"
    ):
        read_series(path, **{arg: "zz"})


def test_error_non_numeric_cell(tmp_path):
    path = _csv(tmp_path, "date,a\n" + _rows([1, 2, 3, "oops", 5, "x"]))
    with pytest.raises(ValueError) as info:
        read_series(path)
    msg = str(info.value)
    # header is line 1, so the 4th data row sits on line 5
    assert "bad.csv" in msg and "column 'a'" in msg and "'oops'" in msg and "line 5" in msg
    assert "2024-01-01 03:00:00" in msg and "target_cols" in msg


def test_error_value_beyond_float32_range(tmp_path):
    path = _csv(tmp_path, "date,a\n" + _rows([1, 2, 3, 1e300, 5, 6]))
    with pytest.raises(ValueError) as info:
        read_series(path)
    msg = str(info.value)
    assert "bad.csv" in msg and "column 'a'" in msg and "1e+300" in msg and "line 5" in msg and "rescale" in msg
    read_series(_csv(tmp_path, "date,a\n" + _rows([1, 2, 3, -1e29, 5, 6]), "ok.csv"))  # large but representable


def test_error_non_numeric_cell_dataframe(wide_frame):
    df = wide_frame(10, channels=1)
    df["x0"] = df["x0"].astype(object)
    df.loc[7, "x0"] = "n/a?"
    with pytest.raises(
        ValueError, match=r"<DataFrame>: column 'x0' holds a non-numeric value 'n/a\?' on row position 7"
    ):
        read_series(df)


def test_error_unparseable_timestamp(tmp_path):
    times = HOURS[:3] + ["2024-13-45 99:00"] + HOURS[4:6]
    path = _csv(tmp_path, "date,a\n" + _rows(range(6), times))
    with pytest.raises(ValueError) as info:
        read_series(path)
    msg = str(info.value)
    assert "bad.csv" in msg and "column 'date'" in msg and "line 5" in msg and "'2024-13-45 99:00'" in msg
    assert "not a timestamp" in msg


@pytest.mark.parametrize("fmt", ["%d/%m/%Y", "%m/%d/%Y", "%d.%m.%Y %H:%M", "%Y-%m-%d"])
def test_day_and_month_order_read_from_the_whole_column(tmp_path, fmt):
    days = pd.date_range("2024-01-01", periods=40, freq="D")  # days 1-12 read either way; 13 onwards tell them apart
    path = _csv(tmp_path, "date,a\n" + _rows(range(40), list(days.strftime(fmt))))
    sf = read_series(path)
    assert sf.freq == "D" and len(sf.frame) == 40
    assert (pd.DatetimeIndex(sf.frame["ds"]) == days).all()


def test_error_iso_time_with_a_typo_is_not_read_year_day_month(tmp_path):
    times = ["2024-01-02", "2024-01-03", "2024-13-01", "2024-01-05"]  # day first would read all of them Y-D-M
    path = _csv(tmp_path, "date,a\n" + _rows(range(4), times))
    with pytest.raises(ValueError, match=r"column 'date' has a value that is not a timestamp on line 4: '2024-13-01'"):
        read_series(path)


def test_error_day_and_month_order_mixed(tmp_path):
    days = pd.date_range("2024-01-01", periods=40, freq="D")
    times = list(days[:20].strftime("%d/%m/%Y")) + list(days[20:].strftime("%m/%d/%Y"))  # no one order reads both
    path = _csv(tmp_path, "date,a\n" + _rows(range(40), times))
    with pytest.raises(ValueError) as info:
        read_series(path)
    msg = str(info.value)
    assert "bad.csv: column 'date' mixes time formats" in msg and "'02/01/2024' on line 3" in msg
    assert "2024-02-01 month first or 2024-01-02 day first" in msg and "ISO" in msg


def test_iso_times_with_mixed_offsets_read_in_utc(tmp_path):
    times = ["2024-03-30 22:00:00+01:00", "2024-03-30 23:00:00+01:00", "2024-03-31 01:00:00+02:00"]
    sf = read_series(_csv(tmp_path, "date,a\n" + _rows(range(3), times)))
    assert list(sf.frame["ds"]) == list(pd.date_range("2024-03-30 21:00", periods=3, freq="h"))


def test_ids_read_as_written(tmp_path):
    # 'NA' and 'None' are ids (North America, a product line), not missing ones; a missing value stays one
    text = "id,ds,y\n" + "".join(f"{uid},2024-01-0{d},{'NA' if (uid, d) == ('NA', 2) else d}\n"
                                   for uid in ("NA", "None", "007") for d in range(1, 6))
    sf = read_series(_csv(tmp_path, text, "ids.csv"), id_col="id", missing="ffill")
    assert sorted(sf.frame["unique_id"].unique()) == ["007", "NA", "None"]
    assert sf.frame.loc[sf.frame["unique_id"] == "NA", "y"].tolist() == [1.0, 1.0, 3.0, 4.0, 5.0]


def test_dates_with_offsets_stay_dates(tmp_path):
    # local midnights across the change to summer time: in UTC 23:00, then 22:00, off any daily grid
    days = pd.date_range("2024-03-28", periods=6, freq="D", tz="Europe/Berlin")
    sf = read_series(_csv(tmp_path, "date,a\n" + _rows(range(6), [d.isoformat() for d in days])))
    assert sf.freq == "D" and list(sf.frame["ds"]) == list(days.tz_localize(None))
    frame = pd.DataFrame({"date": days, "a": np.arange(6.0)})  # a zone-aware column of a DataFrame alike
    assert list(read_series(frame).frame["ds"]) == list(days.tz_localize(None))


def test_error_empty_timestamp(tmp_path):
    times = HOURS[:2] + [""] + HOURS[3:6]
    path = _csv(tmp_path, "date,a\n" + _rows(range(6), times))
    with pytest.raises(ValueError, match=r"bad\.csv: column 'date' has an empty timestamp on line 4"):
        read_series(path)


def test_time_hints_for_clock_times(tmp_path):
    times = list(pd.date_range("2024-10-26 20:00", periods=10, freq="h").strftime("%Y-%m-%d %H:%M"))
    times.insert(7, times[6])  # 02:00 twice: the night daylight saving time ends, in local clock times
    with pytest.raises(ValueError, match=r"appears more than once.*hour repeated when daylight saving time ends"):
        read_series(_csv(tmp_path, "date,a\n" + _rows(range(11), times)))
    daily = list(pd.date_range("2024-01-01", periods=10, freq="D").strftime("%Y-%m-%d"))
    daily.insert(7, daily[6])
    with pytest.raises(ValueError, match=r"appears more than once") as info:
        read_series(_csv(tmp_path, "date,a\n" + _rows(range(11), daily), "daily.csv"))
    assert "daylight" not in str(info.value)
    zoned = [f"2024-03-{d:02d} 00:00:00 CET" for d in range(1, 8)]
    with pytest.raises(ValueError, match=r"not a timestamp.*Time zone names are not read: give UTC offsets"):
        read_series(_csv(tmp_path, "date,a\n" + _rows(range(7), zoned), "zoned.csv"))


def test_error_numeric_time_column(tmp_path):
    path = _csv(tmp_path, "time,a\n0.0,1\n0.02,2\n0.04,3\n")
    with pytest.raises(
        ValueError, match=r"time column 'time' holds numbers.*pd\.to_datetime\(df\['time'\], unit='s'\)"
    ):
        read_series(path)
    dated = _csv(tmp_path, "day,a\n20240130,1\n20240131,2\n20240201,3\n", "dated.csv")  # dates written as numbers
    with pytest.raises(ValueError, match=r"holds numbers.*pd\.to_datetime\(df\['day'\], format='%Y%m%d'\)"):
        read_series(dated, time_col="day")


def test_error_no_time_column(tmp_path):
    path = _csv(tmp_path, "a,b\n1,2\n3,4\n")
    with pytest.raises(ValueError, match=r"bad\.csv: could not find a time column.*\(a, b\).*time_col="):
        read_series(path)


def test_error_duplicate_timestamp(tmp_path):
    times = HOURS[:4] + [HOURS[2]] + HOURS[4:6]
    path = _csv(tmp_path, "date,a\n" + _rows(range(7), times))
    with pytest.raises(ValueError) as info:
        read_series(path)
    msg = str(info.value)
    assert "bad.csv" in msg and "2024-01-01 02:00:00 appears more than once" in msg and "series 'bad'" in msg
    assert "lines 4 and 6" in msg and "drop_duplicates" in msg and "id_col" in msg  # maybe a long table


def test_error_folder_as_file(tmp_path):
    with pytest.raises(ValueError, match="is a folder; give one CSV or Parquet file"):
        read_series(tmp_path)


def test_duplicates_are_per_series(long_frame):
    df = long_frame((20, 20))
    df.loc[df["id"] == "s1", "ds"] = df.loc[df["id"] == "s0", "ds"].to_numpy()  # same stamps, other series
    assert read_series(df, id_col="id").lengths() == {"s0": 20, "s1": 20}
    df2 = pd.concat([df, df.iloc[[25]]], ignore_index=True)
    with pytest.raises(
        ValueError, match=r"appears more than once in series 's1' \(row positions 25 and 40\)"
    ):
        read_series(df2, id_col="id")


def test_error_gap(tmp_path):
    times = HOURS[:5] + HOURS[8:12]
    path = _csv(tmp_path, "date,a\n" + _rows(range(9), times))
    with pytest.raises(ValueError) as info:
        read_series(path)
    msg = str(info.value)
    assert "bad.csv" in msg and "series 'bad' is not regular at frequency 'h'" in msg
    assert "3 step(s) are missing between 2024-01-01 04:00:00 and 2024-01-01 08:00:00" in msg
    assert "line 6 -> line 7" in msg
    assert "missing='ffill'" in msg and "missing='ignore'" in msg


@pytest.mark.parametrize(
    ("bad", "kind"), [("", "missing value"), ("inf", "infinite value"), ("nan", "missing value")]
)
def test_error_nan_inf(tmp_path, bad, kind):
    path = _csv(
        tmp_path, "date,a,b\n" + "".join(f"{t},{i},{bad if i == 3 else i}\n" for i, t in enumerate(HOURS[:8]))
    )
    with pytest.raises(ValueError) as info:
        read_series(path)
    msg = str(info.value)
    assert "bad.csv" in msg and "column 'b'" in msg and kind in msg and "line 5" in msg
    assert "2024-01-01 03:00:00" in msg and "missing='ffill'" in msg


@settings(max_examples=20, deadline=None)
@given(n=st.integers(5, 30), row=st.integers(0, 29), col=st.integers(0, 2))
def test_property_nan_message_points_at_line(n, row, col, tmp_path_factory, wide_frame):
    row %= n
    df = wide_frame(n, channels=3)
    df.iloc[row, 1 + col] = np.nan
    path = tmp_path_factory.mktemp("nan") / "p.csv"
    df.to_csv(path, index=False)
    with pytest.raises(ValueError) as info:
        read_series(path)
    assert f"column 'x{col}'" in str(info.value) and f"on line {row + 2} " in str(info.value)


def test_error_mixed_frequencies(long_frame):
    a = long_frame((20,), freq="h")
    b = long_frame((20,), freq="D").assign(id="daily")
    with pytest.raises(
        ValueError,
        match=r"do not share one frequency \('D' for series 'daily'; 'h' for series 's0'\)\. Resample",
    ):
        read_series(pd.concat([a, b]), id_col="id")


def test_error_bad_policy(wide_frame):
    with pytest.raises(
        ValueError, match=r"missing='drop' is not a policy; use one of error, ffill, interpolate, ignore"
    ):
        read_series(wide_frame(10), missing="drop")


def test_error_empty_id(long_frame):
    df = long_frame((5, 5))
    df.loc[3, "id"] = None
    with pytest.raises(ValueError, match=r"id column 'id' is empty on row position 3"):
        read_series(df, id_col="id")


def test_check_length_message():
    check_length("s", 10, 10)
    with pytest.raises(ValueError) as info:
        check_length("s0", 50, 192, source="x.csv", reason="lookback 96 + horizon 96")
    msg = str(info.value)
    assert (
        "series 's0' of x.csv has 50 rows" in msg
        and "lookback 96 + horizon 96 needs at least 192 rows" in msg
    )
    assert "shorter lookback" in msg


# ------------------------------------------------------------------------------------------------ missing policies


def _gappy(wide_frame):
    df = wide_frame(12, channels=1)
    df.loc[2, "x0"] = np.nan
    df.loc[9, "x0"] = np.inf
    return df.drop(index=[5, 6]).reset_index(drop=True)  # two missing hours


def test_ffill(wide_frame):
    df = _gappy(wide_frame)
    sf = read_series(df, missing="ffill")
    full = wide_frame(12, channels=1)["x0"].to_numpy()
    v = sf.frame["x0"].to_numpy()
    assert sf.freq == "h" and len(v) == 12
    assert v[2] == full[1] and v[5] == full[4] and v[6] == full[4] and v[9] == full[8]


def test_ffill_leading_nan_backfilled(wide_frame):
    df = wide_frame(6, channels=1)
    df.loc[0, "x0"] = np.nan
    v = read_series(df, missing="ffill").frame["x0"].to_numpy()
    assert v[0] == v[1]


def test_interpolate(wide_frame):
    df = _gappy(wide_frame)
    sf = read_series(df, missing="interpolate")
    v = sf.frame["x0"].to_numpy()
    full = wide_frame(12, channels=1)["x0"].to_numpy()
    assert len(v) == 12
    np.testing.assert_allclose(v[2], (full[1] + full[3]) / 2)
    np.testing.assert_allclose(v[5], full[4] + (full[7] - full[4]) / 3)


def test_ignore_drops_rows_and_freq_none(wide_frame):
    df = _gappy(wide_frame)
    sf = read_series(df, missing="ignore")
    assert len(sf.frame) == 8
    assert np.isfinite(sf.frame["x0"]).all()
    assert sf.freq is None and sf.step == "h"
    np.testing.assert_array_equal(time_index(sf.frame["ds"], sf.freq), np.arange(8))


def test_ignore_keeps_freq_when_regular(wide_frame):
    sf = read_series(wide_frame(10), missing="ignore")
    assert sf.freq == "h"


def test_business_days_with_holidays(wide_frame):
    df = wide_frame(30, channels=2, freq="B")
    df = df.drop(index=[7, 18]).reset_index(drop=True)  # two holidays
    with pytest.raises(ValueError, match=r"not regular at frequency 'B'.*1 step\(s\) are missing"):
        read_series(df)
    sf = read_series(df, missing="ignore")
    assert sf.freq is None and sf.step == "B" and len(sf.frame) == 28


def test_ffill_off_grid_raises(wide_frame):
    df = wide_frame(10, channels=1)
    df.loc[4, "date"] = df.loc[4, "date"] + pd.Timedelta("90min")
    df = df.drop(index=5)
    with pytest.raises(ValueError, match=r"off the 'h' grid.*resample"):
        read_series(df, missing="ffill")


# ------------------------------------------------------------------------------------------------ time index


def test_time_index_hourly_phase():
    ds = pd.date_range("2016-07-01 05:00", periods=50, freq="h")
    ti = time_index(ds, "h")
    np.testing.assert_array_equal(ti % 24, ds.hour)
    np.testing.assert_array_equal(np.diff(ti), 1)


@pytest.mark.parametrize(("freq", "period"), [("D", 7), ("B", 5), ("MS", 12), ("15min", 96), ("W-SUN", None), ("QS", 4)])
def test_time_index_consistent_phase(freq, period):
    ds = pd.date_range("1999-03-03", periods=60, freq=freq)
    ti = time_index(ds, freq)
    np.testing.assert_array_equal(np.diff(ti), 1)
    assert infer_period(freq) == period
    if freq == "D":
        np.testing.assert_array_equal((ti - ds.dayofweek) % 7, (ti[0] - ds.dayofweek[0]) % 7)
    if freq == "B":
        np.testing.assert_array_equal((ti - ds.dayofweek) % 5, (ti[0] - ds.dayofweek[0]) % 5)
    if freq == "MS":
        np.testing.assert_array_equal(ti % 12, ds.month - 1)
    if freq == "15min":
        np.testing.assert_array_equal(ti % 96, ds.hour * 4 + ds.minute // 15)
    if freq == "QS":
        np.testing.assert_array_equal(ti % 4, (ds.month - 1) // 3)


def test_time_index_none_is_row_numbers():
    ds = pd.DatetimeIndex(["2024-01-01", "2024-01-03", "2024-01-10"])
    np.testing.assert_array_equal(time_index(ds, None), [0, 1, 2])


@pytest.mark.parametrize(
    ("freq", "period"),
    [
        ("h", 24),
        ("D", 7),
        ("B", 5),
        ("MS", 12),
        ("ME", 12),
        ("min", 1440),
        ("15min", 96),
        ("30min", 48),
        ("2h", 12),
        ("s", None),
        ("5h", None),
        ("W-SUN", None),
        ("QS-JAN", 4),
        ("QE", 4),
        ("YS", None),
        (None, None),
    ],
)
def test_infer_period(freq, period):
    assert infer_period(freq) == period
