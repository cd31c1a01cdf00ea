"""Speed and memory of batch forecasting and backtesting (``tsattn forecast`` / ``tsattn backtest``), on CPU.

    python benchmarks/forecast.py                    # 10,000 series x 500 hourly steps; backtest 100 windows
    python benchmarks/forecast.py --n-series 2000    # a smaller run

What runs, all in this one process, one after the other, on synthetic data written to a temporary folder:

1. ``baseline: pandas naive``: read the long CSV with pandas, take each series' last value, repeat it over the
   horizon with future timestamps, write the tidy table. The floor any batch forecaster pays for CSV in, CSV out.
2. ``tsattn forecast``: the same CSV through :func:`tsattn.forecast.forecast` with a Linear (DLinear) checkpoint
   (lookback 96, horizon 24), chunks of ``--chunk-size`` series: read, validate, scale, predict through
   ``Trainer.predict``, write. Then once more with every series in one chunk, to show what chunking saves.
3. ``baseline: pandas backtest``: a pandas loop over the 100 cutoffs of one long series: naive forecast and the
   per-step absolute and squared errors of each window.
4. ``tsattn backtest``: :func:`tsattn.backtest.backtest` over the same 100 windows (no refit).

Throughput is end to end (reading to writing), in series (or windows) per second; ``ratio`` is a phase's time per
series (or window) over its baseline's. Memory: the peak resident set size (RSS) during each phase, sampled every 5 ms from
``/proc/self/statm`` by a thread (``resource.getrusage`` where /proc is missing, which only gives the process's
high-water mark), shown as growth over the RSS at the phase's start (after ``gc.collect`` and glibc's ``malloc_trim``, with Arrow on the
system allocator so that trimming reaches pandas' string buffers too): what the phase itself needed, not torch and pandas, which the process holds already. A second ``tsattn forecast`` run on a fifth of
the series shows that the growth depends on the chunk, not on the number of series; the all-in-one-chunk run shows
what it would be without chunks. ``ru_maxrss`` of the whole run is printed at the end.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import logging
import os
import resource
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

# pandas' string columns live in pyarrow buffers; with Arrow's own allocator (jemalloc/mimalloc) memory freed by one
# phase stays mapped and hides the next phase's growth. The system allocator lets malloc_trim hand it back.
os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "system")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

LOOKBACK, HORIZON = 96, 24


# ------------------------------------------------------------------------------------------------ memory
def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class PeakRSS:
    """Context manager sampling this process's RSS every ``interval`` seconds; ``peak`` and ``start`` in bytes."""

    def __init__(self, interval: float = 0.005) -> None:
        self.interval = interval
        self.start = self.peak = 0
        self._stop = threading.Event()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, _rss_bytes())

    def __enter__(self) -> PeakRSS:
        self.start = self.peak = _rss_bytes()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_bytes())


def _release() -> None:
    """Return freed heap to the OS before a phase (glibc ``malloc_trim``), so its RSS growth is its own."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def measure(name: str, units: int, unit: str, fn: Callable[[], Any]) -> dict[str, Any]:
    print(f"... {name}", file=sys.stderr, flush=True)
    _release()
    with PeakRSS() as mem:
        t0 = time.perf_counter()
        fn()
        seconds = time.perf_counter() - t0
    return {"phase": name, "units": units, "unit": unit, "seconds": seconds, "rate": units / seconds,
            "peak_mib": mem.peak / 2**20, "growth_mib": (mem.peak - mem.start) / 2**20}


# ------------------------------------------------------------------------------------------------ data
def make_panel(n_series: int, length: int, seed: int = 0) -> pd.DataFrame:
    """Long frame ``id, ds, y``: hourly series with a daily cycle, a trend, noise and their own level."""
    rng = np.random.default_rng(seed)
    t = np.arange(length)
    level = rng.uniform(-50, 50, n_series)[:, None]
    phase = rng.uniform(0, 2 * np.pi, n_series)[:, None]
    y = level + 5 * np.sin(2 * np.pi * t / 24 + phase) + 0.01 * t + rng.standard_normal((n_series, length))
    ds = pd.date_range("2024-01-01", periods=length, freq="h")
    return pd.DataFrame({
        "id": np.repeat([f"s{i:05d}" for i in range(n_series)], length),
        "ds": np.tile(ds.strftime("%Y-%m-%d %H:%M:%S"), n_series),
        "y": y.reshape(-1),
    })


def train_checkpoint(frame: pd.DataFrame, path: Path) -> Path:
    import lightning as L
    import torch

    from tsattn.data import SeriesDataModule
    from tsattn.models.baselines import Linear

    torch.manual_seed(0)
    dm = SeriesDataModule(frame=frame, id_col="id", lookback=LOOKBACK, horizon=HORIZON, batch_size=256, stride=4)
    trainer = L.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, accelerator="cpu", devices=1)
    trainer.fit(Linear(1, LOOKBACK, HORIZON), datamodule=dm)
    trainer.save_checkpoint(path)
    return path


# ------------------------------------------------------------------------------------------------ baselines
def pandas_naive(source: Path, output: Path) -> None:
    """Tidy naive forecasts (last value, ``HORIZON`` hourly steps) with plain pandas."""
    df = pd.read_csv(source, dtype={"id": str}, parse_dates=["ds"])
    last = df.sort_values(["id", "ds"]).groupby("id", sort=True).tail(1)
    steps = pd.to_timedelta(np.arange(1, HORIZON + 1), unit="h")
    out = pd.DataFrame({
        "unique_id": np.repeat(last["id"].to_numpy(), HORIZON),
        "ds": (last["ds"].to_numpy()[:, None] + steps.to_numpy()[None, :]).reshape(-1),
        "cutoff": np.repeat(last["ds"].to_numpy(), HORIZON),
        "yhat": np.repeat(last["y"].to_numpy(), HORIZON),
    })
    out.to_csv(output, index=False)


def pandas_backtest(series: pd.DataFrame, windows: int, step: int) -> pd.DataFrame:
    """Rolling-origin naive forecasts of one series, errors per horizon step, with a plain pandas loop."""
    y = series["y"].to_numpy()
    rows = []
    for i in range(windows):
        p = len(y) - HORIZON - (windows - 1 - i) * step
        err = y[p : p + HORIZON] - y[p - 1]
        rows.append(pd.DataFrame({"fold": i, "step": np.arange(1, HORIZON + 1), "ae": np.abs(err), "se": err**2}))
    return pd.concat(rows).groupby("step")[["ae", "se"]].mean()


# ------------------------------------------------------------------------------------------------ main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n-series", type=int, default=10_000, help="Series in the batch forecast.")
    parser.add_argument("--length", type=int, default=500, help="Steps per series.")
    parser.add_argument("--chunk-size", type=int, default=500, help="Series per chunk in tsattn forecast.")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--windows", type=int, default=100, help="Backtest windows of the one long series.")
    parser.add_argument("--step", type=int, default=24, help="Steps between backtest cutoffs.")
    parser.add_argument("--backtest-length", type=int, default=5000, help="Steps of the backtested series.")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: a fair single-core comparison).")
    parser.add_argument("--skip-one-chunk", action="store_true", help="Skip the all-series-in-one-chunk run.")
    args = parser.parse_args(argv)
    for name in ("n_series", "chunk_size", "batch_size", "windows", "step", "threads"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    from tsattn.data import min_rows

    need, why = min_rows("ratio", LOOKBACK, HORIZON)
    if args.length < need:
        parser.error(f"--length must be >= {need}: the checkpoint is trained on {why}")
    need = LOOKBACK + HORIZON + (args.windows - 1) * args.step
    if args.backtest_length < need:
        parser.error(f"--backtest-length must be >= {need}: lookback {LOOKBACK} + horizon {HORIZON} + "
                     f"(--windows - 1) x --step")

    import torch

    from tsattn.backtest import backtest
    from tsattn.forecast import forecast, load_checkpoint

    torch.set_num_threads(args.threads)
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore")
    trainer = {"accelerator": "cpu", "enable_progress_bar": False}

    with tempfile.TemporaryDirectory(prefix="tsattn-bench-") as tmp:
        tmp = Path(tmp)
        print(f"... writing {args.n_series} series x {args.length} steps", file=sys.stderr, flush=True)
        panel = make_panel(args.n_series, args.length)
        panel.to_csv(tmp / "panel.csv", index=False)
        small = max(args.n_series // 5, 1)
        panel.iloc[: small * args.length].to_csv(tmp / "small.csv", index=False)
        ckpt = train_checkpoint(panel[panel["id"].isin(panel["id"].unique()[:64])], tmp / "linear.ckpt")
        del panel
        long = make_panel(1, args.backtest_length, seed=1)
        long.to_csv(tmp / "long.csv", index=False)
        loaded = load_checkpoint(ckpt)
        n = args.n_series

        results = [measure("baseline: pandas naive", n, "series",
                           lambda: pandas_naive(tmp / "panel.csv", tmp / "naive.csv"))]
        summary: dict[str, Any] = {}

        def run_forecast(chunk: int, out: str, source: str = "panel.csv") -> None:
            summary[out] = forecast(loaded, tmp / source, tmp / out, batch_size=args.batch_size,
                                    chunk_size=chunk, overwrite=True, trainer=trainer)

        if small < n:
            results.append(measure(f"tsattn forecast (chunk {args.chunk_size})", small, "series",
                                   lambda: run_forecast(args.chunk_size, "s.csv", "small.csv")))
        results.append(measure(f"tsattn forecast (chunk {args.chunk_size})", n, "series",
                               lambda: run_forecast(args.chunk_size, "f.csv")))
        if not args.skip_one_chunk and args.chunk_size < n:
            results.append(measure(f"tsattn forecast (chunk {n}: all)", n, "series",
                                   lambda: run_forecast(n, "g.csv")))
        w = args.windows
        results.append(measure("baseline: pandas backtest", w, "windows",
                               lambda: pandas_backtest(pd.read_csv(tmp / "long.csv"), w, args.step)))
        bt: dict[str, Any] = {}
        results.append(measure(f"tsattn backtest ({w} windows)", w, "windows",
                               lambda: bt.setdefault("r", backtest(loaded, tmp / "long.csv", windows=w,
                                                                   step=args.step, trainer=trainer))))
        got = summary["f.csv"]
        assert got.series == n and not got.skipped, got.format()
        assert bt["r"].forecasts["fold"].nunique() == w

    base = {"series": results[0]["rate"], "windows": next(r for r in results if r["unit"] == "windows")["rate"]}
    print()
    print(f"# python benchmarks/forecast.py --n-series {n} --length {args.length} --chunk-size {args.chunk_size} "
          f"--windows {w} --step {args.step} --backtest-length {args.backtest_length} --threads {args.threads}")
    print(f"# Linear (DLinear) checkpoint, lookback {LOOKBACK}, horizon {HORIZON}, CPU, torch threads {args.threads}")
    header = f"{'phase':<36}{'units':>16}{'seconds':>9}{'per s':>10}{'ratio':>7}{'peak RSS':>11}{'growth':>10}"
    print(header)
    print("-" * len(header))
    for r in results:
        print(f"{r['phase']:<36}{r['units']:>8} {r['unit']:<7}{r['seconds']:>9.2f}{r['rate']:>10.1f}"
              f"{base[r['unit']] / r['rate']:>7.1f}{r['peak_mib']:>7.0f} MiB{r['growth_mib']:>6.0f} MiB")
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"# ratio: time per series (window) over the pandas baseline's; growth: peak RSS minus RSS at the phase's "
          f"start; process ru_maxrss {maxrss:.0f} MiB")
    print("# equivalent commands: tsattn forecast --ckpt linear.ckpt --input panel.csv --id-col id --output f.csv "
          f"--chunk-size {args.chunk_size} --batch-size {args.batch_size} --trainer.accelerator cpu")
    print(f"#                     tsattn backtest --ckpt linear.ckpt --input long.csv --id-col id --windows {w} "
          f"--step {args.step} --trainer.accelerator cpu")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
