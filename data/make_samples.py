"""Write the sample CSVs ``market.csv`` and ``motion.csv`` (synthetic, deterministic: fixed seeds).

Run from the project root: ``python data/make_samples.py`` (``--out DIR`` to write elsewhere).
Only numpy and pandas are used; the output is byte-for-byte the same on every run.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
import pandas as pd

log = logging.getLogger("make_samples")

MARKET_SEED = 20210104
MOTION_SEED = 20240301


def make_market(seed: int = MARKET_SEED) -> pd.DataFrame:
    """Daily closes of five synthetic assets on business days, 2021-01-04 to 2023-12-29.

    Log prices follow a one-factor model (a common market factor plus idiosyncratic noise) with slowly varying
    volatility. On 2022-06-01 the regime changes from a calm bull market (rising equities, low volatility,
    moderate correlation) to a turbulent one (falling tech and banks, rising energy and gold, volatility
    roughly doubled and correlation up), opened by a one-day shock.
    """
    rng = np.random.default_rng(seed)
    dates = pd.bdate_range("2021-01-04", "2023-12-29")
    n = len(dates)
    names = ["tech", "energy", "bank", "gold", "bond"]
    start = np.array([100.0, 60.0, 45.0, 1800.0, 98.0])
    # Annual drift, annual volatility and market beta per regime.
    drift = {"calm": [0.25, 0.08, 0.12, 0.02, 0.01], "turbulent": [-0.20, 0.30, -0.08, 0.10, -0.06]}
    vol = {"calm": [0.22, 0.28, 0.20, 0.14, 0.05], "turbulent": [0.34, 0.40, 0.30, 0.20, 0.08]}
    beta = {"calm": [0.7, 0.5, 0.7, -0.1, 0.2], "turbulent": [0.85, 0.6, 0.85, -0.3, 0.3]}
    change = int(np.searchsorted(dates, pd.Timestamp("2022-06-01")))
    regime = np.where(np.arange(n) < change, "calm", "turbulent")

    # Volatility clustering: a slow AR(1) in log volatility, shared by all assets.
    log_v = np.zeros(n)
    for t in range(1, n):
        log_v[t] = 0.97 * log_v[t - 1] + 0.08 * rng.standard_normal()
    factor = rng.standard_normal(n)
    idio = rng.standard_normal((n, len(names)))

    returns = np.zeros((n, len(names)))
    for t in range(n):
        r = regime[t]
        b = np.asarray(beta[r])
        shock = b * factor[t] + np.sqrt(1.0 - b**2) * idio[t]  # unit variance, correlation via the factor
        sigma = np.asarray(vol[r]) / np.sqrt(252) * np.exp(log_v[t])
        returns[t] = np.asarray(drift[r]) / 252 - 0.5 * sigma**2 + sigma * shock
    returns[change] += np.array([-0.07, 0.04, -0.06, 0.02, -0.01])  # the day the regime breaks
    returns[0] = 0.0
    prices = start * np.exp(np.cumsum(returns, axis=0))
    frame = pd.DataFrame(np.round(prices, 2), columns=names)
    frame.insert(0, "date", dates.strftime("%Y-%m-%d"))
    return frame


def make_motion(seed: int = MOTION_SEED) -> pd.DataFrame:
    """100 s of a synthetic 50 Hz body-worn accelerometer (m/s^2) and knee angle (degrees), 5000 rows.

    Gait: walking (1.8 steps/s) until 40 s, a smooth change of pace to jogging (2.8 steps/s, larger
    impacts and knee flexion) until 75 s, then back to walking. ``acc_z`` (vertical, with gravity) and
    ``acc_x`` (forward) repeat once per step, ``acc_y`` (lateral sway) and ``knee_angle`` once per stride.
    """
    rng = np.random.default_rng(seed)
    fs = 50
    n = 100 * fs
    t = np.arange(n) / fs
    # Pace in [0, 1]: 0 walking, 1 jogging; logistic ramps of about 3 s.
    pace = 1.0 / (1.0 + np.exp(-(t - 40.0) / 0.8)) - 1.0 / (1.0 + np.exp(-(t - 75.0) / 0.8))
    cadence = 1.8 + 1.0 * pace  # steps per second
    phase = 2 * np.pi * np.cumsum(cadence) / fs  # step phase
    stride = phase / 2  # one stride = two steps
    impact = np.exp(12.0 * (np.cos(phase) - 1.0))  # heel strike: a narrow peak once per step

    acc_z = (
        9.81 + (1.5 + 2.5 * pace) * (np.sin(phase) + 0.35 * np.sin(2 * phase + 0.6)) + (2 + 6 * pace) * impact
    )
    acc_x = (1.0 + 1.2 * pace) * (np.sin(phase + 1.2) + 0.4 * np.sin(2 * phase)) + 0.3 * np.sin(
        2 * np.pi * t / 30
    )
    acc_y = (0.8 + 0.4 * pace) * np.sin(stride) + 0.2 * np.sin(3 * stride + 0.5)
    psi = np.mod(stride, 2 * np.pi)
    knee = (
        5.0
        + (15.0 + 10.0 * pace) * np.exp(6.0 * (np.cos(psi - 0.3) - 1.0))  # stance flexion
        + (55.0 + 30.0 * pace) * np.exp(4.0 * (np.cos(psi - 3.8) - 1.0))  # swing flexion
    )
    acc = np.stack([acc_x, acc_y, acc_z], axis=1) + 0.15 * rng.standard_normal((n, 3))
    knee = knee + 1.0 * rng.standard_normal(n)

    stamps = pd.date_range("2024-03-01 09:00:00", periods=n, freq="20ms")
    frame = pd.DataFrame(np.round(acc, 3), columns=["acc_x", "acc_y", "acc_z"])
    frame["knee_angle"] = np.round(knee, 2)
    frame.insert(0, "timestamp", stamps.strftime("%Y-%m-%d %H:%M:%S.%f").str[:-3])  # millisecond precision
    return frame


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent, help="output folder")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args.out.mkdir(parents=True, exist_ok=True)
    for name, frame in (("market.csv", make_market()), ("motion.csv", make_motion())):
        path = args.out / name
        frame.to_csv(path, index=False)
        log.info(
            "wrote %s: %d rows x %d columns, %.0f KB",
            path,
            len(frame),
            frame.shape[1],
            path.stat().st_size / 1e3,
        )


if __name__ == "__main__":
    main()
