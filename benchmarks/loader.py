"""Speed of the DataModule's batch loader against a DataLoader that slices and collates window by window.

    python benchmarks/loader.py --csv ../shared/data/ETTh1.csv --split ett-hour --lookback 96 --horizon 96

Both loaders read the same `WindowDataset` (the DataModule's training windows, shuffled) and yield the same batches
in the same order; the script checks that, then times one epoch of each, taken in turn, and prints the minimum over
``--repeats`` epochs and their ratio.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Iterable

import torch
from torch.utils.data import DataLoader

from tsattn.data import SeriesDataModule, batch_loader


def epoch_seconds(make: Callable[[], Iterable[dict[str, torch.Tensor]]]) -> float:
    start = time.perf_counter()
    for _ in make():
        pass
    return time.perf_counter() - start


def same_batches(a: Callable[[], Iterable], b: Callable[[], Iterable]) -> bool:
    torch.manual_seed(0)
    first = list(a())
    torch.manual_seed(0)
    second = list(b())
    return len(first) == len(second) and all(
        x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x) for x, y in zip(first, second, strict=True)
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--csv", required=True)
    parser.add_argument("--split", default="ratio")
    parser.add_argument("--lookback", type=int, default=96)
    parser.add_argument("--horizon", type=int, default=96)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    for flag, value in (("--repeats", args.repeats), ("--threads", args.threads), ("--batch-size", args.batch_size)):
        if value is not None and value < 1:
            parser.error(f"{flag} must be >= 1, got {value}")
    if args.threads:
        torch.set_num_threads(args.threads)
    dm = SeriesDataModule(
        path=args.csv, lookback=args.lookback, horizon=args.horizon, split=args.split, batch_size=args.batch_size
    )
    dataset = dm.train_dataloader().dataset
    loaders = {
        "DataLoader, window by window": lambda: DataLoader(dataset, batch_size=args.batch_size, shuffle=True),
        "batch_loader": lambda: batch_loader(dataset, args.batch_size, shuffle=True),
    }
    if not same_batches(*loaders.values()):
        raise SystemExit("the two loaders yield different batches")
    times = {name: float("inf") for name in loaders}
    for _ in range(args.repeats):
        for name, make in loaders.items():
            times[name] = min(times[name], epoch_seconds(make))
    base = times["DataLoader, window by window"]
    print(f"# {args.csv}: {len(dataset)} training windows, lookback {args.lookback}, horizon {args.horizon}, "
          f"batch {args.batch_size}, {dm.n_channels} channels; one shuffled epoch, min of {args.repeats}")
    print("| loader | epoch s | speedup |")
    print("|---|---|---|")
    for name, seconds in times.items():
        print(f"| {name} | {seconds:.4f} | {base / seconds:.1f}x |")


if __name__ == "__main__":
    main(sys.argv[1:])
