"""Read and validate time series (CSV file or DataFrame, wide or long) into one canonical long frame.

Canonical frame: columns ``unique_id`` (str), ``ds`` (datetime64[ns], tz-naive), then the target columns as
float64, sorted by ``(unique_id, ds)``. Every problem with the input raises a ``ValueError`` whose message names
the source, the column and the first offending row (1-based line number for CSV files, 0-based row position for
DataFrames, plus the timestamp where one is known) and says how to fix it.

Missing data policy (``missing=``):

- ``"error"`` (default): gaps in the time grid and NaN/inf values raise.
- ``"ffill"``: each series is reindexed on its regular grid; gaps and NaN/inf values are forward-filled
  (leading ones back-filled).
- ``"interpolate"``: as ``ffill`` but linear interpolation (constant at the edges).
- ``"ignore"``: rows holding NaN/inf are dropped and the remaining rows are treated as consecutive steps (e.g.
  trading days with holidays). If the remaining timestamps are regular, ``freq`` is inferred as usual; otherwise
  ``SeriesFrame.freq`` is None, ``SeriesFrame.step`` keeps the modal step (used to extend timestamps into the
  future) and ``time_index`` falls back to row numbers.

The user's file or DataFrame is never modified.
"""

from __future__ import annotations

import logging
import os
import re
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from pandas.api.types import (
    is_bool_dtype,
    is_datetime64_any_dtype,
    is_integer_dtype,
    is_numeric_dtype,
)
from pandas.tseries.frequencies import to_offset

__all__ = [
    "MISSING_POLICIES",
    "SeriesFrame",
    "SeriesFileNotFoundError",
    "check_length",
    "fill_gaps",
    "id_csv_options",
    "infer_period",
    "not_text",
    "read_series",
    "require_pyarrow",
    "separator_problem",
    "time_index",
]

log = logging.getLogger(__name__)

MISSING_POLICIES = ("error", "ffill", "interpolate", "ignore")
_TIME_NAMES = ("ds", "date", "datetime", "timestamp", "time", "date_time", "timestamps")
_UNNAMED = re.compile(r"Unnamed: \d+")  # pandas' name for a column with an empty header
_EXTENSIONS = {"gzip": "gz", "zip": "zip", "bzip2": "bz2", "xz": "xz", "zstd": "zst"}
_COMPRESSED = {b"\x1f\x8b": "gzip", b"PK\x03\x04": "zip", b"BZh": "bzip2", b"\xfd7zXZ": "xz", b"(\xb5/\xfd": "zstd"}
# numbers written for people: thousands separators, a currency or a percent sign ('10,012.57', '$1,234', '12 %')
_FORMATTED = r"\s*[-+]?[$€£]?\s*\d{1,3}(?:[,\s\']\d{3})+(?:\.\d+)?\s*%?\s*|\s*[-+]?\d+(?:\.\d+)?\s*%\s*"
_MISSING_FLAGS = " (--data.missing in tsattn fit, --missing in forecast, backtest and benchmarks/ltsf.py)"
_ROW = "__tsattn_row__"  # where each row came from, kept only while validating (for error messages)
_DAY_NS = 86_400_000_000_000
_MINUTE_NS = 60_000_000_000
# A fill that would grow a series more than this many times is almost surely a typo in a timestamp.
_MAX_FILL_GROWTH = 10
# Largest |value| accepted: models compute in float32 (largest 3.4e38), and scaling and errors need headroom.
MAX_ABS_VALUE = 1e30


class SeriesFileNotFoundError(FileNotFoundError, ValueError):
    """The series file does not exist (both a ``FileNotFoundError`` and a ``ValueError``)."""


@dataclass
class SeriesFrame:
    """A validated set of series in canonical long form.

    ``frame``: columns ``unique_id``, ``ds``, *target_cols*, sorted by (unique_id, ds).
    ``freq``: pandas offset alias ("h", "D", "B", ...) or None (irregular rows kept under ``missing="ignore"``).
    ``step``: the modal step alias (equals ``freq`` when regular); extends timestamps when ``freq`` is None.
    ``time_col`` / ``id_col``: the source column names used (the time column as detected).
    """

    frame: pd.DataFrame
    target_cols: list[str]
    freq: str | None
    source: str
    step: str | None = None
    time_col: str | None = None
    id_col: str | None = None

    @property
    def series_ids(self) -> list[str]:
        """Series ids in frame order."""
        return [uid for uid, _, _ in self._bounds()]

    @property
    def n_channels(self) -> int:
        return len(self.target_cols)

    def lengths(self) -> dict[str, int]:
        """Rows per series."""
        return {uid: stop - start for uid, start, stop in self._bounds()}

    def series(self) -> Iterator[tuple[str, pd.DatetimeIndex, np.ndarray]]:
        """Yield ``(unique_id, ds (T,), values (T, C) float64)`` per series, in frame order."""
        values = self.frame[self.target_cols].to_numpy(dtype=np.float64)
        ds = pd.DatetimeIndex(self.frame["ds"])
        for uid, start, stop in self._bounds():
            yield uid, ds[start:stop], values[start:stop]

    def _bounds(self) -> list[tuple[str, int, int]]:
        ids = self.frame["unique_id"].to_numpy(dtype=object)
        if len(ids) == 0:
            return []
        starts = np.concatenate([[0], np.flatnonzero(ids[1:] != ids[:-1]) + 1])
        stops = np.concatenate([starts[1:], [len(ids)]])
        return [(str(ids[a]), int(a), int(b)) for a, b in zip(starts, stops, strict=True)]


# --------------------------------------------------------------------------------------------------- errors


class _Where:
    """Formats row references for one source: CSV line numbers or DataFrame positions."""

    def __init__(self, name: str, is_file: bool) -> None:
        self.name = name
        self.is_file = is_file

    def row(self, row: int) -> str:
        if row < 0:
            return "a filled-in row"
        return f"line {row}" if self.is_file else f"row position {row}"

    def rows(self, rows: list[int]) -> str:
        if self.is_file:
            return "lines " + " and ".join(str(r) for r in rows)
        return "row positions " + " and ".join(str(r) for r in rows)


def check_length(unique_id: str, length: int, needed: int, *, source: str = "", reason: str = "") -> None:
    """Raise ``ValueError`` if series *unique_id* has fewer than *needed* rows; *reason* says what needs them."""
    if length >= needed:
        return
    where = f" of {source}" if source else ""
    why = f" {reason}" if reason else ""
    raise ValueError(
        f"series '{unique_id}'{where} has {length} rows, but{why} needs at least {needed} rows. "
        "Use a shorter lookback or horizon, a different split or a longer series, or leave this series out of the data."
    )


# --------------------------------------------------------------------------------------------------- reading


def _load(
    source: str | os.PathLike | pd.DataFrame, time_col: str | None, id_col: str | None = None
) -> tuple[pd.DataFrame, _Where]:
    """Return a private copy of the input with string column names and a row-reference column."""
    if isinstance(source, pd.DataFrame):
        where = _Where("<DataFrame>", is_file=False)
        df = _index_as_columns(source.copy(), time_col)  # a copy: never touch the caller's frame
        df[_ROW] = np.arange(len(df), dtype=np.int64)
    elif isinstance(source, str | os.PathLike):
        path = Path(source)
        where = _Where(path.name, is_file=True)
        if path.is_dir():
            raise ValueError(f"{path} is a folder; give one CSV or Parquet file (tsattn forecast reads folders).")
        if not path.is_file():
            raise SeriesFileNotFoundError(
                f"{path}: file not found (resolved to {path.resolve()}). Check the path, or pass a DataFrame "
                "with frame= instead."
            )
        suffix = path.suffix.lower()
        try:
            if suffix in (".parquet", ".pq"):
                require_pyarrow(path)
                df = _index_as_columns(pd.read_parquet(path), time_col)  # a time index saved with the frame
                where = _Where(path.name, is_file=False)
            else:
                sep = "\t" if suffix == ".tsv" else ","
                ids = id_csv_options(path, sep, id_col) if id_col is not None else {}  # as written: '007', 'NA'
                df = pd.read_csv(path, sep=sep, low_memory=False, **ids)
        except pd.errors.EmptyDataError:
            raise ValueError(
                f"{path.name}: the file is empty. Expected a header line (a time column and value columns) "
                "followed by one row per timestamp."
            ) from None
        except pd.errors.ParserError as err:
            raise ValueError(
                f"{path.name}: not a readable CSV file ({err}). Check the separator and quoting."
            ) from None
        except UnicodeDecodeError as err:
            raise ValueError(not_text(path, err)) from None
        problem = separator_problem(path.name, [str(c) for c in df.columns])
        if problem:
            raise ValueError(problem)
        df = df.copy()  # one block per dtype: read_csv may give one per column, which makes adding columns slow
        df.columns = [str(c) for c in df.columns]
        # Line 1 is the header, so data row i (0-based) sits on line i + 2.
        offset = 2 if where.is_file else 0
        df[_ROW] = np.arange(len(df), dtype=np.int64) + offset
    else:
        raise TypeError(f"source must be a path or a pandas DataFrame, got {type(source).__name__}")
    if len(df) == 0:
        cols = ", ".join(c for c in df.columns if c != _ROW) or "none"
        raise ValueError(
            f"{where.name}: no data rows (columns: {cols}). The file is header-only or the DataFrame is empty; "
            "add one row per timestamp."
        )
    dupes = sorted({c for c in df.columns if list(df.columns).count(c) > 1})
    if dupes:
        raise ValueError(f"{where.name}: duplicate column names {dupes}; give every column a unique name.")
    counters = [c for c in df.columns if _UNNAMED.fullmatch(c) and _counts_rows(df[c])]
    if counters:  # what DataFrame.to_csv writes by default: the index, under an empty header
        log.warning(
            "%s: left out %s, without a name and holding the row numbers (a saved index); name it to use it",
            where.name,
            ", ".join(f"column {df.columns.get_loc(c) + 1}" for c in counters),
        )
        df = df.drop(columns=counters)
    empty = [c for c in df.columns if _UNNAMED.fullmatch(c) and df[c].isna().all()]
    if empty:  # a separator at the end of every line (as spreadsheets export): an empty last column
        log.warning("%s: left out %s, without a name or a value", where.name,
                    ", ".join(f"column {df.columns.get_loc(c) + 1}" for c in empty))
        df = df.drop(columns=empty)
    return df, where


def _index_as_columns(df: pd.DataFrame, time_col: str | None) -> pd.DataFrame:
    """The frame with its time index (a DatetimeIndex or PeriodIndex, one named ``time_col``, or the levels of a
    MultiIndex with a time level) turned into columns; any other index dropped. Column names as strings."""
    if isinstance(df.index, pd.PeriodIndex):
        df = df.set_axis(df.index.to_timestamp())
    levels = list(df.index.levels) if isinstance(df.index, pd.MultiIndex) else [df.index]
    names = [str(n) if n is not None else None for n in df.index.names]
    has_time = any(isinstance(level, pd.DatetimeIndex | pd.PeriodIndex) for level in levels)
    in_columns = any(is_datetime64_any_dtype(df[c]) for c in df.columns)
    if isinstance(df.index, pd.MultiIndex) and (has_time or time_col in names):
        df = df.reset_index()
    elif (time_col is not None and time_col not in df.columns and names[0] == time_col) or (
        has_time and time_col is None and not in_columns
    ):
        df = df.reset_index(names=names[0] if names[0] is not None else "ds")
    else:
        df = df.reset_index(drop=True)
    df.columns = [str(c) for c in df.columns]
    return df


# pandas' default strings for a missing value: NA, None, null ... are missing values, but ids as written
_NA_STRINGS = ["", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN", "<NA>",
               "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null"]


def id_csv_options(path: str | os.PathLike, sep: str, id_col: str) -> dict:
    """``pd.read_csv`` options for a long file: ids read as written (only an empty field is a missing id, so 'NA'
    or 'None' are ids), every other column with pandas' usual missing values."""
    header = pd.read_csv(path, sep=sep, nrows=0).columns
    na = {c: _NA_STRINGS for c in header if c != id_col}
    return {"dtype": {id_col: str}, "keep_default_na": False, "na_values": {**na, id_col: [""]}}


def require_pyarrow(path: str | os.PathLike) -> None:
    """A ValueError naming *path* where pyarrow, which reads and writes Parquet, is not installed."""
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        raise ValueError(
            f"{path}: Parquet needs pyarrow: pip install 'tsattn[parquet]' (or use a .csv file)"
        ) from None


def separator_problem(name: str, header: list[str]) -> str | None:
    """One line when a header read as one field holds another separator (';' or '|'), else None."""
    if len(header) != 1 or not any(sep in header[0] for sep in ";|"):
        return None
    sep = next(sep for sep in ";|" if sep in header[0])
    return (
        f"{name}: the header is one field, {header[0]!r}: its fields seem separated by {sep!r}. tsattn reads "
        "comma-separated .csv and tab-separated .tsv files; save it with commas (and decimal points)."
    )


def not_text(path: Path, err: UnicodeDecodeError) -> str:
    """One line on a file that is not UTF-8 text: compressed (known by its first bytes), or in another encoding."""
    try:
        with open(path, "rb") as f:
            head = f.read(6)
    except OSError:
        head = b""
    for magic, kind in _COMPRESSED.items():
        if head.startswith(magic):
            return (
                f"{path.name}: a {kind}-compressed file, not text; decompress it first (tsattn fit also reads it "
                f"under a name ending in .{_EXTENSIONS[kind]})"
            )
    return (
        f"{path.name}: not UTF-8 text (byte 0x{err.object[err.start]:02x} at byte {err.start}); save it as UTF-8 "
        "(in Excel: 'CSV UTF-8'), e.g. pd.read_csv(path, encoding='latin-1').to_csv(new_path, index=False)"
    )


def _counts_rows(col: pd.Series) -> bool:
    """True for integers 0, 1, 2, ... or 1, 2, 3, ... down the rows."""
    if not is_integer_dtype(col) or col.empty or col.iloc[0] not in (0, 1):
        return False
    return bool((col.to_numpy() == np.arange(len(col)) + col.iloc[0]).all())


def _looks_like_times(col: pd.Series) -> bool:
    sample = col.dropna().head(5)
    if len(sample) == 0 or is_numeric_dtype(col) or is_bool_dtype(col):
        return False
    if pd.to_numeric(sample, errors="coerce").notna().all():
        return False  # plain numbers would parse as epoch offsets
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            pd.to_datetime(sample, format="mixed")
        except (ValueError, TypeError, OverflowError):
            return False
    return True


def _find_time_col(df: pd.DataFrame, id_col: str | None, where: _Where) -> str:
    cols = [c for c in df.columns if c not in (id_col, _ROW)]
    for c in cols:
        if is_datetime64_any_dtype(df[c]):
            return c
    lower = {c.lower(): c for c in cols}
    for name in _TIME_NAMES:
        if name in lower:
            return lower[name]
    for c in cols:
        if (
            not is_numeric_dtype(df[c])
            and any(k in c.lower() for k in ("date", "time"))
            and _looks_like_times(df[c])
        ):
            return c
    for c in cols:
        if _looks_like_times(df[c]):
            return c
    raise ValueError(
        f"{where.name}: could not find a time column: none of the columns ({', '.join(cols)}) is named like "
        "date/time/timestamp/ds or holds timestamps. Pass time_col='<name>'."
    )


def _parse_times(df: pd.DataFrame, col: str, where: _Where) -> pd.Series:
    raw = df[col]
    if is_datetime64_any_dtype(raw):
        parsed = raw
    elif is_numeric_dtype(raw) or is_bool_dtype(raw):
        first = raw.iloc[0]
        dated = not is_bool_dtype(raw) and raw.between(1000_01_01, 9999_12_31).all() and (raw % 1 == 0).all()
        how = "format='%Y%m%d'" if dated else "unit='s'"  # 20240131 is a date written as a number
        raise ValueError(
            f"{where.name}: time column '{col}' holds numbers ({first!r} on {where.row(int(df[_ROW].iloc[0]))}), "
            f"not timestamps. Convert it first, e.g. pd.to_datetime(df['{col}'], {how}), or pass the right "
            "time_col."
        )
    else:
        parsed = _read_times(df, col, where)
    bad = parsed.isna().to_numpy()
    if bad.any():
        i = int(np.argmax(bad))
        row = where.row(int(df[_ROW].iloc[i]))
        value = raw.iloc[i]
        if pd.isna(value):
            raise ValueError(
                f"{where.name}: column '{col}' has an empty timestamp on {row}. Every row needs a timestamp; "
                "fill it in or drop the row."
            )
        zone = bool(re.search(r"(\s[A-Z]{3,5}|[A-Za-z]+/[A-Za-z_]+)\s*$", str(value)))  # 'CET', 'Europe/Berlin'
        raise ValueError(
            f"{where.name}: column '{col}' has a value that is not a timestamp on {row}: {value!r}. "
            "Fix the value (e.g. '2024-01-31 13:00:00') or drop the row."
            + (" Time zone names are not read: give UTC offsets instead (e.g. '2024-01-31 13:00:00+01:00')."
               if zone else "")
        )
    if getattr(parsed.dt, "tz", None) is not None:
        dates = _dates_with_offsets(raw)
        if dates is not None:
            log.info("%s: column '%s' holds dates (midnight in every row's own offset): read as dates", where.name, col)
            parsed = dates
        else:
            parsed = parsed.dt.tz_convert("UTC").dt.tz_localize(None)  # one clock for all rows
    return parsed.dt.as_unit("ns")


def _dates_with_offsets(raw: pd.Series) -> pd.Series | None:
    """The calendar dates of times that carry a UTC offset or zone and are all at local midnight (daily or coarser
    data, whose offsets change with daylight saving time, which UTC would move off the grid); else None."""
    if is_datetime64_any_dtype(raw):
        wall = raw.dt.tz_localize(None)
    else:
        text = raw.astype(str).str.strip().str.replace(r"(Z|[+-]\d{2}:?\d{2})$", "", regex=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            wall = pd.to_datetime(text, format="mixed", errors="coerce")
    if wall.isna().any() or not (wall == wall.dt.normalize()).all():
        return None
    return wall


def _read_times(df: pd.DataFrame, col: str, where: _Where) -> pd.Series:
    """Parse a text time column: one format for all rows (month-first, as pandas reads ``01/02/2024``, else
    day-first), or each cell on its own where the formats differ, refused where that reading depends on the order of
    day and month (unparseable cells come back as NaT)."""
    raw = df[col]
    year_first = raw.astype(str).str.match(r"\s*\d{4}").to_numpy()  # ISO dates: dayfirst would read them Y-D-M
    orders = [{}, {"utc": True}]
    if not year_first.any():  # one format for all rows: day first is tried only where no value is year first
        orders += [{"dayfirst": True}, {"dayfirst": True, "utc": True}]
    for kwargs in orders:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                parsed = pd.to_datetime(raw, **kwargs)  # one format, inferred from the first value
        except (ValueError, TypeError, OverflowError):
            continue
        if kwargs.get("dayfirst"):
            log.info("%s: column '%s' read day first (%r is %s)", where.name, col, raw.iloc[0], parsed.iloc[0])
        return parsed
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        parsed = pd.to_datetime(raw, format="mixed", errors="coerce", utc=True)
        day_first = pd.to_datetime(raw, format="mixed", errors="coerce", utc=True, dayfirst=True)
    differ = (parsed != day_first).to_numpy() & parsed.notna().to_numpy() & day_first.notna().to_numpy() & ~year_first
    if differ.any():
        i = int(np.argmax(differ))
        raise ValueError(
            f"{where.name}: column '{col}' mixes time formats, and {raw.iloc[i]!r} on "
            f"{where.row(int(df[_ROW].iloc[i]))} reads as {parsed.iloc[i]:%Y-%m-%d} month first or "
            f"{day_first.iloc[i]:%Y-%m-%d} day first. Write every time in one format; ISO 'YYYY-MM-DD HH:MM' is safest."
        )
    return parsed


def _to_float(df: pd.DataFrame, col: str, where: _Where, times: pd.Series) -> np.ndarray:
    raw = df[col]

    def refuse(bad: np.ndarray, what: Callable[[int], str], fix: str, hint: Callable[[], str] = str) -> None:
        """A ValueError naming the first cell flagged in *bad*, if any; ``hint()`` is added (only then computed)."""
        if bad.any():
            i = int(np.argmax(bad))
            raise ValueError(
                f"{where.name}: column '{col}' holds {what(i)} on {where.row(int(df[_ROW].iloc[i]))} "
                f"(timestamp {times.iloc[i]}){fix}{hint()}"
            )

    if is_bool_dtype(raw) or is_numeric_dtype(raw):
        values = raw.to_numpy(dtype=np.float64, na_value=np.nan)
    else:
        num = pd.to_numeric(raw, errors="coerce")
        refuse(
            (num.isna() & raw.notna()).to_numpy(),
            lambda i: f"a non-numeric value {raw.iloc[i]!r}",
            ". Target columns must hold numbers: fix the cell (or leave it empty for a missing value), or leave the "
            "column out with target_cols=[...].",
            lambda: _format_hint(df, [col]),
        )
        values = num.to_numpy(dtype=np.float64, na_value=np.nan)
    with np.errstate(invalid="ignore"):
        huge = np.isfinite(values) & (np.abs(values) > MAX_ABS_VALUE)
    refuse(
        huge,
        lambda i: f"{values[i]:g}",
        f", beyond the largest magnitude tsattn accepts ({MAX_ABS_VALUE:g}; models compute in float32); fix the cell, "
        "or rescale the column (e.g. divide it by a power of ten).",
    )
    return values


def _format_hint(df: pd.DataFrame, cols: list[str]) -> str:
    """A hint for columns of numbers written with thousands separators or a unit sign ('1,234.5', '12 %'), or ''."""
    examples = {}
    for c in cols:
        if not is_numeric_dtype(df[c]):
            text = df[c].dropna().astype(str)
            found = text[text.str.fullmatch(_FORMATTED)]
            if len(found):
                examples[c] = found.iloc[0]
    if not examples:
        return ""
    return (
        f" Column(s) {list(examples)} hold numbers written with separators or signs (e.g. "
        f"{next(iter(examples.values()))!r}): save them as plain numbers, e.g. "
        "df[col].str.replace(r'[^0-9.eE+-]', '', regex=True).astype(float)."
    )


def _numeric_candidate(col: pd.Series) -> bool:
    """False for columns with no numeric value at all (labels, notes): skipped when target_cols is None."""
    if is_bool_dtype(col) or is_datetime64_any_dtype(col) or isinstance(col.dtype, pd.CategoricalDtype):
        return False
    if is_numeric_dtype(col):
        return True
    present = col.dropna()
    return len(present) == 0 or bool(pd.to_numeric(present, errors="coerce").notna().any())


# --------------------------------------------------------------------------------------------------- frequency


def _alias(td_ns: int) -> str:
    if td_ns % _DAY_NS == 0:
        days = td_ns // _DAY_NS
        return "D" if days == 1 else f"{days}D"
    return to_offset(pd.Timedelta(td_ns, unit="ns")).freqstr


def _infer_step(ds: pd.DatetimeIndex) -> tuple[str | None, bool]:
    """(step alias, regular) for one sorted series: pd.infer_freq, else the modal difference."""
    if len(ds) < 2:
        return None, True
    if len(ds) >= 3:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            inferred = pd.infer_freq(ds)
        if inferred is not None:
            return to_offset(inferred).freqstr, True
    diffs = np.diff(ds.asi8)
    values, counts = np.unique(diffs, return_counts=True)
    modal = int(values[np.argmax(counts)])
    if modal == _DAY_NS and (ds.dayofweek < 5).all() and (diffs == 3 * _DAY_NS).any():
        alias = "B"  # weekdays only, weekends skipped: business days (gaps are holidays)
    else:
        alias = _alias(modal)
    return alias, len(values) == 1


def _grid_breaks(ds: pd.DatetimeIndex, freq: str) -> np.ndarray:
    """Positions i where ds[i + 1] is not one step after ds[i]."""
    if len(ds) < 2:
        return np.zeros(0, dtype=np.int64)
    off = to_offset(freq)
    if isinstance(off, pd.offsets.Tick) or off.rule_code == "D":
        return np.flatnonzero(np.diff(ds.asi8) != off.nanos)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        nxt = ds[:-1] + off
    return np.flatnonzero(nxt.asi8 != ds[1:].asi8)


def time_index(ds: pd.DatetimeIndex | pd.Series | np.ndarray, freq: str | None) -> np.ndarray:
    """Absolute step index (T,) int64: steps since 1970-01-01 at *freq*; row numbers if *freq* is None.

    ``time_index % period`` is a consistent phase: hour of day for hourly data (period 24), a fixed weekday
    offset for daily (7) and business-daily (5) data, month of year for monthly data (12).
    """
    ds = pd.DatetimeIndex(ds)
    if freq is None:
        return np.arange(len(ds), dtype=np.int64)
    off = to_offset(freq)
    base = off.rule_code.split("-")[0]
    n = max(int(off.n), 1)
    if isinstance(off, pd.offsets.Tick) or base == "D":
        return ds.as_unit("ns").asi8 // off.nanos
    if base in ("B", "C"):
        days = ds.as_unit("ns").asi8 // _DAY_NS
        # Count business days from the epoch; weekend dates share the following Monday's index.
        return (
            np.busday_count(np.datetime64("1970-01-01"), days.astype("datetime64[D]")).astype(np.int64) // n
        )
    if base in ("MS", "ME", "M", "BMS", "BME", "SMS", "SME"):
        return ((ds.year.to_numpy() - 1970) * 12 + ds.month.to_numpy() - 1).astype(np.int64) // n
    if base in ("QS", "QE", "Q", "BQS", "BQE"):
        return ((ds.year.to_numpy() - 1970) * 4 + (ds.month.to_numpy() - 1) // 3).astype(np.int64) // n
    if base in ("YS", "YE", "Y", "BYS", "BYE"):
        return (ds.year.to_numpy() - 1970).astype(np.int64) // n
    if base == "W":
        return ds.as_unit("ns").asi8 // (7 * _DAY_NS) // n
    return ds.to_period(off).asi8.astype(np.int64)


def infer_period(freq: str | None) -> int | None:
    """Seasonal period for *freq*: 24 hourly, 7 daily, 5 business-daily, 12 monthly, 4 quarterly, 1440/m for
    m-minute data (and 24/k for k-hourly data when it divides a day); None otherwise.

    Weekly data gets None: a year is 52.18 weeks, so a phase ``step % 52`` drifts a week every ~5.6 years and a
    per-phase cycle fitted on decades of rows smears the annual shape (measured: worse than no cycle on weekly CO2).
    """
    if freq is None:
        return None
    off = to_offset(freq)
    base = off.rule_code.split("-")[0]
    if off.n == 1 and base == "D":
        return 7
    if off.n == 1 and base == "B":
        return 5
    if off.n == 1 and base in ("MS", "ME", "M", "BMS", "BME"):
        return 12
    if off.n == 1 and base in ("QS", "QE", "Q", "BQS", "BQE"):
        return 4
    if isinstance(off, pd.offsets.Tick):
        step = off.nanos
        if _MINUTE_NS <= step < _DAY_NS and _DAY_NS % step == 0:
            return _DAY_NS // step
    return None


# --------------------------------------------------------------------------------------------------- main


def read_series(
    source: str | os.PathLike | pd.DataFrame,
    *,
    time_col: str | None = None,
    id_col: str | None = None,
    target_cols: list[str] | None = None,
    missing: str = "error",
    fill: bool = True,
) -> SeriesFrame:
    """Read a wide or long CSV file (or DataFrame) into a validated, sorted :class:`SeriesFrame`.

    Wide: a time column plus numeric columns, one series named after the file stem ("series" for a DataFrame).
    Long: ``id_col`` + time column + value columns, one series per id. ``time_col`` is detected when not given
    (a datetime column, a column named like date/time/timestamp/ds, or the first column holding timestamps; a
    DataFrame's DatetimeIndex also counts). ``target_cols`` defaults to every other column that holds numbers.
    ``missing``: see the module docstring. ``fill=False`` (with ``ffill`` / ``interpolate``) puts the missing
    steps on the grid but leaves them and every NaN/inf value as NaN, for a caller that cuts the rows at a time
    before filling them, so that no value after the cut fills one before it. Raises ``ValueError`` with the row
    and a fix for any bad input.
    """
    if missing not in MISSING_POLICIES:
        raise ValueError(f"missing={missing!r} is not a policy; use one of {', '.join(MISSING_POLICIES)}.")
    df, where = _load(source, time_col, id_col)
    columns = [c for c in df.columns if c != _ROW]

    for arg, name in (("id_col", id_col), ("time_col", time_col)):
        if name is not None and name not in columns:
            raise ValueError(
                f"{where.name}: {arg}='{name}' is not a column. Available columns: {', '.join(columns)}."
            )
    if time_col is None:
        time_col = _find_time_col(df, id_col, where)
        log.debug("%s: using '%s' as the time column", where.name, time_col)
    if time_col == id_col:
        raise ValueError(f"{where.name}: time_col and id_col are both '{time_col}'; they must differ.")

    value_cols = [c for c in columns if c not in (time_col, id_col)]
    if target_cols is not None:
        target_cols = [str(c) for c in target_cols]
        unknown = [c for c in target_cols if c not in value_cols]
        if unknown:
            raise ValueError(
                f"{where.name}: target_cols {unknown} not found among the value columns. Available columns: "
                f"{', '.join(value_cols) or 'none'} (time column '{time_col}'"
                + (f", id column '{id_col}')." if id_col else ").")
            )
        if len(set(target_cols)) != len(target_cols):
            raise ValueError(f"{where.name}: target_cols {target_cols} lists a column twice.")
    else:
        target_cols = [c for c in value_cols if _numeric_candidate(df[c])]
        skipped = [c for c in value_cols if c not in target_cols]
        if skipped:
            log.warning("%s: skipping non-numeric columns %s.%s", where.name, skipped, _format_hint(df, skipped))
        if not target_cols:
            raise ValueError(
                f"{where.name}: no numeric value columns besides the time column '{time_col}' "
                f"(columns: {', '.join(columns)}). Add value columns or pass target_cols=[...]."
            )
    clash = [c for c in target_cols if c in ("unique_id", "ds")]
    if clash:
        raise ValueError(
            f"{where.name}: value column(s) {clash} clash with the canonical names; rename them."
        )

    times = _parse_times(df, time_col, where)
    if id_col is not None:
        ids = df[id_col]
        if ids.isna().any():
            i = int(np.argmax(ids.isna().to_numpy()))
            raise ValueError(
                f"{where.name}: id column '{id_col}' is empty on {where.row(int(df[_ROW].iloc[i]))}; every row "
                "needs a series id."
            )
        ids = ids.astype(str)
    else:
        uid = Path(source).stem if where.is_file or not isinstance(source, pd.DataFrame) else "series"
        ids = pd.Series([uid] * len(df))

    data = {
        "unique_id": pd.Series(ids.to_numpy(dtype=object), dtype="str"),
        "ds": times.reset_index(drop=True),
    }
    for c in target_cols:
        data[c] = _to_float(df, c, where, times)
    data[_ROW] = df[_ROW].to_numpy()
    out = pd.DataFrame(data).sort_values(["unique_id", "ds"], kind="stable").reset_index(drop=True)

    _check_duplicates(out, where, id_col)
    empty = [c for c, bad in zip(target_cols, _nonfinite(out, target_cols).all(axis=0), strict=True) if bad]
    if empty:  # no missing-value policy can fill or keep a column without one number
        raise ValueError(
            f"{where.name}: column(s) {empty} hold no finite value at all; leave them out with target_cols=[...] "
            "(--data.target_cols in tsattn fit) or fill them in"
        )
    if missing == "ignore":
        out = _drop_nonfinite(out, target_cols, where)
    freq, step, regular = _frame_freq(out, where)
    if not regular:
        if missing == "error":
            _raise_gap(out, freq, where)
        elif missing in ("ffill", "interpolate"):
            out = _reindex(out, freq, target_cols, where)
        else:
            log.info("%s: irregular timestamps kept as consecutive steps (missing='ignore')", where.name)
            freq = None
    if missing in ("ffill", "interpolate") and not fill:
        out[target_cols] = out[target_cols].astype(np.float64).replace([np.inf, -np.inf], np.nan)
    elif missing != "ignore":
        out = _handle_nonfinite(out, target_cols, where, missing)
    out = out.drop(columns=_ROW)
    log.info(
        "read %s: %d series, %d rows, %d channels, freq %s",
        where.name,
        out["unique_id"].nunique(),
        len(out),
        len(target_cols),
        freq,
    )
    return SeriesFrame(out, list(target_cols), freq, where.name, step, time_col, id_col)


def _check_duplicates(out: pd.DataFrame, where: _Where, id_col: str | None) -> None:
    dup = out.duplicated(["unique_id", "ds"], keep=False).to_numpy()
    if not dup.any():
        return
    d = out[dup]
    first = d.loc[d[_ROW].idxmin()]
    same = d[(d["unique_id"] == first["unique_id"]) & (d["ds"] == first["ds"])]
    rows = sorted(int(r) for r in same[_ROW])[:2]
    keys = f"[{id_col!r}, <time column>]" if id_col else "the time column"
    series = out["unique_id"] == first["unique_id"]
    repeats = d.loc[d["unique_id"] == first["unique_id"], "ds"].nunique()
    clock = first["ds"] != first["ds"].normalize() and repeats <= 2 + int(series.sum()) // 4000  # ~one hour a year
    raise ValueError(
        f"{where.name}: timestamp {first['ds']} appears more than once in series '{first['unique_id']}' "
        f"({where.rows(rows)}). Each series needs one row per timestamp: drop the duplicates "
        f"(df.drop_duplicates(subset=...)) or aggregate them (df.groupby({keys}).mean()) first."
        + ("" if id_col else " If the file holds several series (a long table), name their id column with id_col "
           "(--data.id_col in tsattn fit, --id-col in forecast and backtest).")
        + (" If the times are local clock times, this may be the hour repeated when daylight saving time ends: "
           "write them with their UTC offset (e.g. '2024-10-27 02:00+02:00', then '+01:00'), read in UTC."
           if clock else "")
    )


def _series_slices(out: pd.DataFrame) -> list[tuple[str, slice]]:
    sf = SeriesFrame(out, [], None, "")
    return [(uid, slice(a, b)) for uid, a, b in sf._bounds()]


def _frame_freq(out: pd.DataFrame, where: _Where) -> tuple[str | None, str | None, bool]:
    """(freq, step, all series regular at freq) with one frequency required across series."""
    ds_all = pd.DatetimeIndex(out["ds"])
    steps: dict[str, list[str]] = {}
    regular = True
    for uid, sl in _series_slices(out):
        alias, reg = _infer_step(ds_all[sl])
        if alias is not None:
            steps.setdefault(alias, []).append(uid)
            regular &= reg
    if not steps:
        return None, None, True
    if len(steps) > 1:
        desc = "; ".join(
            f"'{a}' for series {', '.join(repr(u) for u in uids[:3])}" for a, uids in steps.items()
        )
        raise ValueError(
            f"{where.name}: the series do not share one frequency ({desc}). Resample them to a common frequency "
            "(df.resample(...)) or read them separately."
        )
    freq = next(iter(steps))
    if regular:
        # Series with a single inferred alias can still be off each other's grid only through gaps: re-check.
        regular = all(len(_grid_breaks(ds_all[sl], freq)) == 0 for _, sl in _series_slices(out))
    return freq, freq, regular


def _raise_gap(out: pd.DataFrame, freq: str, where: _Where) -> None:
    ds_all = pd.DatetimeIndex(out["ds"])
    rows = out[_ROW].to_numpy()
    for uid, sl in _series_slices(out):
        ds = ds_all[sl]
        breaks = _grid_breaks(ds, freq)
        if len(breaks) == 0:
            continue
        i = int(breaks[0])
        a, b = ds[i], ds[i + 1]
        grid = pd.date_range(a, b, freq=freq)
        if len(grid) and grid[-1] == b:
            what = f"{len(grid) - 2} step(s) are missing between {a} and {b}"
        else:
            what = f"{b} is not on the '{freq}' grid after {a}"
        raise ValueError(
            f"{where.name}: series '{uid}' is not regular at frequency '{freq}': {what} "
            f"({where.row(int(rows[sl][i]))} -> {where.row(int(rows[sl][i + 1]))}; {len(breaks)} break(s) in all). "
            "Pass missing='ffill' or missing='interpolate' to fill the gaps on the regular grid, or "
            "missing='ignore' to treat the rows as consecutive steps (e.g. trading days with holidays)"
            f"{_MISSING_FLAGS}."
        )


def on_grid(ds: pd.DatetimeIndex, freq: str) -> bool:
    """Whether every timestamp of one series (T,) lies on the *freq* grid from its first one, rows missing from it
    allowed (as many as ``missing="ffill"`` would fill)."""
    try:
        grid = pd.date_range(ds[0], ds[-1], freq=freq)
    except (ValueError, OverflowError):
        return False
    return len(grid) <= _MAX_FILL_GROWTH * len(ds) + 1000 and bool(ds.isin(grid).all())


def _reindex(out: pd.DataFrame, freq: str, target_cols: list[str], where: _Where) -> pd.DataFrame:
    parts = []
    ds_all = pd.DatetimeIndex(out["ds"])
    for uid, sl in _series_slices(out):
        part = out.iloc[sl]
        ds = ds_all[sl]
        grid = pd.date_range(ds[0], ds[-1], freq=freq).as_unit("ns")
        off_grid = ~ds.isin(grid)
        if off_grid.any():
            i = int(np.argmax(off_grid))
            raise ValueError(
                f"{where.name}: series '{uid}' has timestamp {ds[i]} ({where.row(int(part[_ROW].iloc[i]))}) off "
                f"the '{freq}' grid that starts at {ds[0]}, so gaps cannot be filled. Resample first "
                f"(df.resample('{freq}').mean()) or pass missing='ignore'."
            )
        if len(grid) > _MAX_FILL_GROWTH * len(ds) + 1000:
            raise ValueError(
                f"{where.name}: filling series '{uid}' on the '{freq}' grid from {ds[0]} to {ds[-1]} would need "
                f"{len(grid)} rows for {len(ds)} given; check the timestamps for a typo."
            )
        part = part.set_index("ds").reindex(grid)
        part.index.name = "ds"
        part = part.reset_index()
        part["unique_id"] = uid
        part[_ROW] = part[_ROW].fillna(-1).astype(np.int64)
        parts.append(part[out.columns])
    filled = pd.concat(parts, ignore_index=True)
    log.info("%s: filled %d missing timestamps", where.name, len(filled) - len(out))
    return filled


def _nonfinite(out: pd.DataFrame, target_cols: list[str]) -> np.ndarray:
    return ~np.isfinite(out[target_cols].to_numpy(dtype=np.float64))


def _drop_nonfinite(out: pd.DataFrame, target_cols: list[str], where: _Where) -> pd.DataFrame:
    bad = _nonfinite(out, target_cols).any(axis=1)
    if not bad.any():
        return out
    kept = out[~bad].reset_index(drop=True)
    lost = sorted(set(out["unique_id"]) - set(kept["unique_id"]))
    if lost:
        raise ValueError(
            f"{where.name}: series {lost} have no row without NaN/inf values; nothing is left to use."
        )
    log.info("%s: dropped %d rows with NaN/inf values (missing='ignore')", where.name, int(bad.sum()))
    return kept


def fill_gaps(values: pd.Series | pd.DataFrame, missing: str) -> pd.Series | pd.DataFrame:
    """The NaN/inf of one series' values (rows in time order) filled by *missing*: ``ffill`` (leading ones
    back-filled) or ``interpolate`` (linear, constant at the edges). A column without a finite value stays NaN."""
    values = values.astype(np.float64).replace([np.inf, -np.inf], np.nan)
    if missing == "ffill":
        return values.ffill().bfill()
    return values.interpolate(method="linear", limit_direction="both")


def _handle_nonfinite(out: pd.DataFrame, target_cols: list[str], where: _Where, missing: str) -> pd.DataFrame:
    bad = _nonfinite(out, target_cols)
    if not bad.any():
        return out
    if missing == "error":
        rows_bad = bad.any(axis=1)
        rows = out[_ROW].to_numpy()
        cand = np.flatnonzero(rows_bad)
        i = int(cand[np.argmin(rows[cand])])  # the first offending row of the input
        j = int(np.argmax(bad[i]))
        col = target_cols[j]
        value = out[col].iloc[i]
        kind = "a missing value (NaN/empty)" if np.isnan(value) else f"an infinite value ({value})"
        raise ValueError(
            f"{where.name}: column '{col}' has {kind} on {where.row(int(rows[i]))} (series '{out['unique_id'].iloc[i]}', "
            f"timestamp {out['ds'].iloc[i]}); {int(bad.sum())} such cell(s) in all. Fix the data, or pass "
            f"missing='ffill' / missing='interpolate' to fill them, or missing='ignore' to drop such rows{_MISSING_FLAGS}."
        )
    ids = out["unique_id"]
    if missing == "ffill":  # fill_gaps per series, in two vectorised passes over all of them
        filled = out[target_cols].astype(np.float64).replace([np.inf, -np.inf], np.nan).groupby(ids, sort=False).ffill()
        filled = filled.groupby(ids, sort=False).bfill()
    else:
        filled = out[target_cols].groupby(ids, sort=False).transform(lambda s: fill_gaps(s, missing))
    still = filled.isna().to_numpy()
    if still.any():
        i, j = (int(k[0]) for k in np.nonzero(still))
        raise ValueError(
            f"{where.name}: column '{target_cols[j]}' of series '{out['unique_id'].iloc[i]}' has no finite value "
            f"to fill from; drop the column (target_cols=[...]) or the series."
        )
    out = out.copy()
    out[target_cols] = filled.to_numpy()
    return out
