"""Speed and memory of tsattn.layers, printed as one Markdown table (ratios measured in the same run).

    python benchmarks/layers.py             # full sizes (a few minutes on a small CPU)
    python benchmarks/layers.py --quick     # small sizes, seconds
    python benchmarks/layers.py --threads 1 # fix intra-op threads (steadier on a shared machine)

Rows:
- EMA forward+backward at (B=32, L=8192, C=64) beside torch.cumsum forward+backward on the same tensor (torch's
  own scan kernel; how fast it runs on this layout depends on the CPU) and beside a sequential Python loop, timed at L=1024 and scaled by 8: the loop
  over ``x.unbind(1)`` (its backward is linear in L) and the naive loop over ``x[:, t]`` (whose backward
  materialises a full-size gradient per step, so scaling by 8 flatters it).
- EMAHistoryAttention forward+backward at batch 8, L = 1k, 4k, 16k (window 64, d_model 64, 4 heads) and
  torch.nn.MultiheadAttention, causal, at the same sizes (``need_weights=False, is_causal=True``: torch's fused
  attention kernel, which never forms the L×L scores). MHA is skipped where its projected time (the previous
  size's time scaled quadratically) exceeds --mha-max-s.
- The time of one EMAHistoryAttention.step() after 10 and after 10,000 steps: probes of 200 steps from the two
  states, taken in turn (a drift of the host's speed hits both alike).

Allocator (CPU): tensors of tens of MB are served by glibc's malloc through fresh ``mmap`` pages that the kernel
zeroes on first touch, so at large sizes a good part of the time is page faults, not the layer. The large-tensor
rows are therefore measured twice (``--allocators``): with the default malloc, and with a malloc that keeps freed
memory for reuse (``MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=...``, the effect PyTorch's CPU tuning guide gets
from jemalloc or tcmalloc). The Python loops use small tensors and are measured once.

Peak memory: on CUDA ``torch.cuda.max_memory_allocated`` minus the memory held before the run; on CPU the growth
of the process's peak resident set (``ru_maxrss``) during the runs, measured in a fresh subprocess per size
(tracemalloc does not see torch's allocator). Times are the minimum over --repeats runs after one warm-up; each
EMA-attention size is measured in --runs fresh processes, the sizes taken in turn, and its row shows the median
(the growth ratio's note gives the range of the per-round ratios).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import torch

from tsattn.layers import EMA, AttentionState, EMAHistoryAttention


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time(fn: Callable[[], object], device: torch.device, repeats: int, warmup: int = 1) -> float:
    """Minimum wall time of fn() in seconds."""
    for _ in range(warmup):
        fn()
    _sync(device)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        best = min(best, time.perf_counter() - t0)
    return best


def _fwd_bwd(module: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> Callable[[], None]:
    def run() -> None:
        x.grad = None
        module(x).sum().backward()

    return run


# ---------------------------------------------------------------------------------------------- children


def _child(args: argparse.Namespace) -> None:
    """Time and measure one attention size in this (fresh) process; print one JSON line."""
    device = torch.device(args.device)
    torch.manual_seed(0)
    B, L, D, H, W = args.batch, args.length, args.d_model, args.heads, args.window
    if args.child == "ema":
        _child_ema(args, device)
        return
    x = torch.randn(B, L, D, device=device, requires_grad=True)
    if args.child == "ema_attention":
        layer = EMAHistoryAttention(D, H, W).to(device)
        fn = _fwd_bwd(layer, x)
    else:
        mha = torch.nn.MultiheadAttention(D, H, batch_first=True).to(device)
        causal = torch.ones(L, L, dtype=torch.bool, device=device).triu(1)

        def fn() -> None:
            x.grad = None
            out, _ = mha(x, x, x, attn_mask=causal, need_weights=False, is_causal=True)
            out.sum().backward()

    if device.type == "cuda":
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
    else:
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    seconds = _time(fn, device, args.repeats)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) - base
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
    print(json.dumps({"seconds": seconds, "peak_bytes": peak}))


def _child_ema(args: argparse.Namespace, device: torch.device) -> None:
    """EMA and torch.cumsum forward+backward on one (B, L, C) tensor; print one JSON line."""
    B, L, C = args.batch, args.length, args.d_model
    torch.manual_seed(0)
    x = torch.randn(B, L, C, device=device, requires_grad=True)
    ema = EMA(C).to(device)
    t_ema = _time(_fwd_bwd(ema, x), device, args.repeats)
    t_cumsum = _time(_fwd_bwd(lambda v: v.cumsum(1), x), device, args.repeats)
    print(json.dumps({"ema": t_ema, "cumsum": t_cumsum}))


# glibc malloc settings that keep freed memory for reuse instead of returning it to the kernel
KEEP_MEMORY_ENV = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(2**36)}
ALLOCATOR_NOTE = {"default": "", "keep": " [malloc keeps freed memory]"}


def _run_child(
    args: argparse.Namespace, kind: str, length: int, allocator: str = "default", **sizes: int
) -> dict:
    sizes = {"batch": args.attn_batch, "d-model": 64, "heads": 4, "window": 64, **sizes}
    cmd = [sys.executable, __file__, "--child", kind, "--length", str(length), "--device", args.device,
           "--repeats", str(args.repeats)]  # fmt: skip
    for name, value in sizes.items():
        cmd += [f"--{name}", str(value)]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    env = dict(os.environ, **KEEP_MEMORY_ENV) if allocator == "keep" else None
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["?"])[-1]
        return {"error": f"failed (exit {proc.returncode}): {tail[:80]}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------------------- sections


def _ema_rows(args: argparse.Namespace, device: torch.device) -> list[tuple[str, str, str, str, str]]:
    B, L, C = args.ema_size
    scale = 8 if L >= 8 else 1
    Ls = L // scale
    torch.manual_seed(0)
    xs = torch.randn(B, Ls, C, device=device, requires_grad=True)
    lam = torch.full((C,), 0.9, device=device, requires_grad=True)

    def loop_unbind(v: torch.Tensor) -> torch.Tensor:
        steps = v.unbind(1)
        y, out = steps[0], [steps[0]]
        for x_t in steps[1:]:
            y = lam * y + (1 - lam) * x_t
            out.append(y)
        return torch.stack(out, 1)

    def loop_index(v: torch.Tensor) -> torch.Tensor:
        y, out = v[:, 0], [v[:, 0]]
        for t in range(1, v.shape[1]):
            y = lam * y + (1 - lam) * v[:, t]
            out.append(y)
        return torch.stack(out, 1)

    t_unbind = _time(_fwd_bwd(loop_unbind, xs), device, args.repeats) * scale
    t_index = _time(_fwd_bwd(loop_index, xs), device, args.repeats) * scale
    size = f"B={B} L={L} C={C}"
    ms = "{:.1f} ms".format
    rows, t_emas = [], {}
    for allocator in args.allocators:
        tag = ALLOCATOR_NOTE[allocator]
        r = _run_child(args, "ema", L, allocator, batch=B, **{"d-model": C})
        if "error" in r:
            rows.append((f"EMA fwd+bwd (tsattn){tag}", size, "-", "", r["error"]))
            continue
        t_emas[allocator] = r["ema"]
        rows += [
            (f"EMA fwd+bwd (tsattn){tag}", size, ms(1e3 * r["ema"]), "", "1.0"),
            (f"torch.cumsum fwd+bwd{tag}", size, ms(1e3 * r["cumsum"]), "",
             f"EMA / cumsum = {r['ema'] / r['cumsum']:.2f}×"),
        ]  # fmt: skip
    for name, t_loop, extra in (
        ("x.unbind(1)", t_unbind, ""),
        ("x[:, t]", t_index, " (backward O(L²): underestimated)"),
    ):
        ratios = ", ".join(f"{t_loop / t:.1f}× ({a})" for a, t in t_emas.items())
        rows.append(
            (
                f"Python loop over {name}, L={Ls} ×{scale}",
                size,
                ms(1e3 * t_loop),
                "",
                f"loop / EMA = {ratios}{extra}",
            )
        )
    return rows


def _attention_rows(args: argparse.Namespace) -> list[tuple[str, str, str, str, str]]:
    return [row for allocator in args.allocators for row in _attention_rows_with(args, allocator)]


def _attention_rows_with(args: argparse.Namespace, allocator: str) -> list[tuple[str, str, str, str, str]]:
    tag = ALLOCATOR_NOTE[allocator]
    rows = []
    runs: dict[int, list[dict]] = {L: [] for L in args.lengths}
    for _ in range(args.runs):  # rounds over the sizes: a slow spell of the host falls on every size alike
        for L in args.lengths:
            runs[L].append(_run_child(args, "ema_attention", L, allocator))
    prev: tuple[int, float, list[dict]] | None = None
    mha_prev: tuple[int, float] | None = None
    for L in args.lengths:
        size = f"B={args.attn_batch} L={L} W=64 d=64 H=4"
        failed = [r for r in runs[L] if "error" in r]
        if failed:
            rows.append((f"EMAHistoryAttention fwd+bwd{tag}", size, "-", "-", failed[0]["error"]))
            continue
        seconds = statistics.median(r["seconds"] for r in runs[L])
        note = ""
        if prev is not None:
            note = f"t({L})/t({prev[0]}) = {seconds / prev[1]:.2f} (linear: {L / prev[0]:.0f})"
            if args.runs > 1:
                each = [r["seconds"] / p["seconds"] for r, p in zip(runs[L], prev[2], strict=True)]
                note += f"; runs {min(each):.2f}–{max(each):.2f}"
        prev = (L, seconds, runs[L])
        peak = max(r["peak_bytes"] for r in runs[L])
        rows.append((f"EMAHistoryAttention fwd+bwd{tag}", size, _fmt_s(seconds), _fmt_b(peak), note))

        projected = mha_prev[1] * (L / mha_prev[0]) ** 2 if mha_prev else 0.0
        if projected > args.mha_max_s:
            rows.append(
                (
                    f"MultiheadAttention causal fwd+bwd{tag}",
                    size,
                    "skipped",
                    "-",
                    f"projected {projected:.0f} s (quadratic from L={mha_prev[0]}) > --mha-max-s {args.mha_max_s:g}",
                )
            )
            continue
        m = _run_child(args, "mha", L, allocator)
        if "error" in m:
            rows.append((f"MultiheadAttention causal fwd+bwd{tag}", size, "-", "-", m["error"]))
            continue
        mha_prev = (L, m["seconds"])
        rows.append(
            (
                f"MultiheadAttention causal fwd+bwd{tag}",
                size,
                _fmt_s(m["seconds"]),
                _fmt_b(m["peak_bytes"]),
                f"MHA / EMA-attention = {m['seconds'] / seconds:.2f}×",
            )
        )
    return rows


def _step_rows(args: argparse.Namespace, device: torch.device) -> list[tuple[str, str, str, str, str]]:
    torch.manual_seed(0)
    layer = EMAHistoryAttention(64, 4, 64).to(device).eval()
    B = args.attn_batch
    x = torch.randn(B, 64, device=device)
    probe = 200
    states: dict[int, AttentionState] = {}
    state = None
    done = 0
    with torch.no_grad():
        for target in (10, args.long_steps):
            while done < target:
                _, state = layer.step(x, state)
                done += 1
            states[target] = state

        def probe_steps(start: AttentionState) -> float:
            """Seconds per step over `probe` steps from `start`."""
            _sync(device)
            t0 = time.perf_counter()
            s = start
            for _ in range(probe):
                _, s = layer.step(x, s)
            _sync(device)
            return (time.perf_counter() - t0) / probe

        # the two probes alternate, so that a drift of the host's speed affects both alike; minimum of --repeats
        for start in states.values():
            probe_steps(start)  # warm-up
        results = {target: float("inf") for target in states}
        for _ in range(args.repeats):
            for target, start in states.items():
                results[target] = min(results[target], probe_steps(start))
    size = f"B={B} W=64 d=64 H=4"
    short, long = results[10], results[args.long_steps]
    return [
        ("EMAHistoryAttention.step() after 10 steps", size, f"{1e6 * short:.0f} µs", "", "1.0"),
        (
            f"EMAHistoryAttention.step() after {args.long_steps:,} steps",
            size,
            f"{1e6 * long:.0f} µs",
            "",
            f"ratio {long / short:.2f} (constant: 1)",
        ),
    ]


def _fmt_s(seconds: float) -> str:
    return f"{1e3 * seconds:.0f} ms" if seconds < 10 else f"{seconds:.1f} s"


def _fmt_b(n: float) -> str:
    return f"{n / 2**20:.0f} MiB"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="small sizes (seconds)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--runs", type=int, default=3, help="fresh processes per EMA-attention size (the row shows their median)"
    )
    parser.add_argument(
        "--allocators", nargs="+", choices=["default", "keep"], default=None,
        help="malloc settings for the large-tensor rows (default on CPU: both; on CUDA: default)",
    )  # fmt: skip
    parser.add_argument("--mha-max-s", type=float, default=60.0, help="skip MHA sizes projected slower")
    # internal: one attention measurement in a fresh process
    parser.add_argument("--child", choices=["ema", "ema_attention", "mha"], help=argparse.SUPPRESS)
    parser.add_argument("--length", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--d-model", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--heads", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--window", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    for flag, value, least in (("--threads", args.threads, 0), ("--repeats", args.repeats, 1), ("--runs", args.runs, 1)):
        if value < least:
            parser.error(f"{flag} must be >= {least}, got {value}")
    try:
        torch.device(args.device)
    except RuntimeError as err:
        parser.error(f"--device: {err}")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.child:
        _child(args)
        return

    if args.quick:
        args.ema_size, args.lengths, args.attn_batch, args.long_steps = (
            (8, 2048, 16),
            [256, 1024, 4096],
            2,
            1000,
        )
    else:
        args.ema_size, args.lengths, args.attn_batch, args.long_steps = (
            (32, 8192, 64),
            [1024, 4096, 16384],
            8,
            10_000,
        )
    device = torch.device(args.device)
    if args.allocators is None:
        args.allocators = ["default"] if device.type == "cuda" else ["default", "keep"]
    cmd = shlex.join(["python", "benchmarks/layers.py", *(sys.argv[1:] if argv is None else argv)])
    print(f"$ {cmd}")
    print(
        f"torch {torch.__version__}, device {device}"
        + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else "")
        + f", intra-op threads {torch.get_num_threads()}; times: min of {args.repeats} after a warm-up"
        + f" (EMA attention: median of {args.runs} such runs, each in a fresh process, sizes taken in turn); "
        + (
            "peak memory: torch.cuda.max_memory_allocated"
            if device.type == "cuda"
            else "peak memory: ru_maxrss growth"
        )
        + " in a fresh subprocess per size"
    )
    print()
    rows = _ema_rows(args, device) + _attention_rows(args) + _step_rows(args, device)
    header = ("benchmark", "size", "time", "peak memory", "ratio / note")
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for r in [header, tuple("-" * w for w in widths), *rows]:
        print("| " + " | ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)) + " |")


if __name__ == "__main__":
    main()
