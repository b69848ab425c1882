"""Times fastconv's ops against torch's own in one process, interleaved rounds, on shapes from real
networks (ResNet-18, VGG-16, LeNet-5, an LSTM language model): a table of medians and speedups with
GFLOP/s or GB/s against this machine's measured peak, a JSON file and a PNG chart of the speedups."""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys

import torch

import fastconv

from .runner import Progress, measure_copy_bandwidth, run_cases
from .suites import SUITES


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


# glibc settings for --memory steady: large blocks come from the heap and stay there when freed, so
# after the first call every op reuses memory that is already mapped and the timings compare kernels,
# not the operating system's page faults (which otherwise cost about as much as a memory-bound
# kernel on this machine, and vary from run to run).
STEADY_MALLOC = {"MALLOC_MMAP_THRESHOLD_": str(1 << 34), "MALLOC_TRIM_THRESHOLD_": str(1 << 34)}


def _reexec_with_steady_memory(argv: list[str]) -> None:
    if all(os.environ.get(k) == v for k, v in STEADY_MALLOC.items()):
        return
    env = dict(os.environ, **STEADY_MALLOC)
    sys.stdout.flush()
    os.execve(sys.executable, [sys.executable, "-m", "fastconv.bench", *argv], env)


def _colour_key(row: dict) -> str:
    """What a bar's colour says: the op family, and for convolutions also the algorithm."""
    if row["suite"] == "models":
        return "model " + row["op"].split()[1]           # "model train", "model eval"
    if row["suite"] == "conv2d":
        return " ".join(row["op"].split()[:2])        # "conv2d im2col", "conv2d winograd", ...
    return row["suite"]


def plot_speedups(path: str, meta: dict, rows: list[dict]) -> None:
    """A horizontal bar per row from 1x to torch time / fastconv time, on a log axis with plain tick
    labels (0.5x, 1x, 2x), coloured by op family (and convolution algorithm), its value at the bar's
    end; the legend sits outside the bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter

    labels = [f"{r['op']}  {r['shape']}  {r['dtype']}" for r in rows]
    speedups = [r["speedup"] for r in rows]
    keys = list(dict.fromkeys(_colour_key(r) for r in rows))
    cmap = plt.get_cmap("tab20" if len(keys) > 10 else "tab10")
    colours = {k: cmap(i % cmap.N) for i, k in enumerate(keys)}
    fig, ax = plt.subplots(figsize=(12, 1.2 + 0.22 * len(rows)), layout="constrained")
    y = range(len(rows))[::-1]
    # bars grow from 1x: right when fastconv is faster, left when it is slower
    ax.barh(list(y), [s - 1.0 for s in speedups], left=1.0, color=[colours[_colour_key(r)] for r in rows])
    ax.set_xscale("log")
    lo, hi = min(speedups + [1.0]), max(speedups + [1.0])
    ax.set_xlim(lo / 1.15, hi * 1.45)                  # room for the value written after the longest bar
    ticks = [t for t in (0.1, 0.2, 0.25, 0.5, 0.75, 1, 1.5, 2, 3, 4, 5, 8, 10, 20) if lo / 1.15 <= t <= hi * 1.45]
    ax.xaxis.set_major_locator(FixedLocator(ticks))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}×"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.axvline(1.0, color="black", lw=1)
    ax.set_yticks(list(y), labels, fontsize=7)
    ax.set_ylim(-0.6, len(rows) - 0.4)
    ax.set_xlabel("speedup over torch (torch time / fastconv time; > 1× is faster)")
    for yi, s in zip(y, speedups):
        ax.text(max(s, 1.0), yi, f" {s:.2f}×", va="center", fontsize=7)
    ax.legend(handles=[plt.Rectangle((0, 0), 1, 1, color=colours[k]) for k in keys], labels=keys,
              loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    ax.set_title(f"fastconv vs torch {meta['torch']} on {meta['device_name']} ({meta['device']}, "
                 f"{meta['threads']} thread(s){', quick' if meta['quick'] else ''}), {len(rows)} cases", fontsize=9)
    ax.grid(axis="x", alpha=0.3, which="major")
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None, *, default_outputs: bool = False) -> int:
    """``default_outputs`` (``python -m fastconv bench``): write the JSON and the PNG even when not asked,
    as fastconv-bench-<device>.json/.png in the current directory."""
    ap = argparse.ArgumentParser(prog="python -m fastconv bench" if default_outputs else "python -m fastconv.bench",
                                 description=__doc__)
    ap.add_argument("--ops", nargs="+", choices=sorted(SUITES), default=None,
                    help="op families to time, 'models' for whole converted torchvision models (default: all)")
    ap.add_argument("--models", action="store_true",
                    help="time whole converted torchvision models (ResNet-18, VGG-11-BN, MobileNet-v2: training "
                         "step and eval, NCHW and channels_last); alone, the same as --ops models")
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch.set_num_threads for both fastconv and torch (default: torch's default)")
    ap.add_argument("--json", metavar="FILE", help="write the results as JSON")
    ap.add_argument("--png", metavar="FILE", help="write a bar chart of the speedups (needs matplotlib)")
    ap.add_argument("--dtypes", nargs="+", metavar="DTYPE", default=None,
                    help="time only the cases of these dtypes, e.g. bfloat16 float16 (default: all)")
    ap.add_argument("--quick", action="store_true", help="small shapes, few rounds (a smoke run)")
    ap.add_argument("--rounds", type=int, default=None, help="interleaved rounds per case (default 5, quick 2)")
    ap.add_argument("--memory", choices=["steady", "os"], default="steady",
                    help="steady (default): CPU allocations are recycled without page faults, so kernels are "
                         "compared; os: glibc's defaults, where large outputs are fresh pages each call")
    args = ap.parse_args(argv)
    if args.ops is None:
        args.ops = ["models"] if args.models else sorted(SUITES)
    elif args.models and "models" not in args.ops:
        args.ops.append("models")
    if default_outputs:
        args.json = args.json or f"fastconv-bench-{args.device}.json"
        args.png = args.png or f"fastconv-bench-{args.device}.png"
    if args.device == "cpu" and args.memory == "steady":
        argv = sys.argv[1:] if argv is None else list(argv)
        _reexec_with_steady_memory(argv + ["--json", args.json] * bool(args.json) + ["--png", args.png] * bool(args.png))

    if args.device == "cuda":
        if not torch.cuda.is_available():
            ap.error("--device cuda: no CUDA device is available")
        if not fastconv.build_info()["cuda_compiled"]:
            ap.error("--device cuda: this build of fastconv has no CUDA kernels")
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    if args.threads:
        torch.set_num_threads(args.threads)
    rounds = args.rounds or (2 if args.quick else 5)
    min_run_time = 0.05 if args.quick else 0.3

    device_name = torch.cuda.get_device_name() if args.device == "cuda" else cpu_name()
    copy_bw = measure_copy_bandwidth(args.device, (64 << 20) if args.quick else (256 << 20))
    meta = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": args.device, "device_name": device_name, "threads": torch.get_num_threads(),
        "torch": torch.__version__, "build": fastconv.build_info(), "quick": args.quick, "rounds": rounds,
        "copy_GBps": copy_bw, "memory": args.memory,
    }
    print(f"fastconv.bench on {device_name} ({args.device}), torch {torch.__version__}, "
          f"{meta['threads']} thread(s), CPU ISA {meta['build']['cpu_isa']}")
    print(f"measured copy bandwidth (read + write): {copy_bw:.1f} GB/s; memory mode: {args.memory}")
    suites = {name: SUITES[name](args.device, args.quick) for name in args.ops}
    if args.dtypes:
        suites = {name: [c for c in cases if c.dtype in args.dtypes] for name, cases in suites.items()}
        meta["dtypes"] = args.dtypes
    progress = Progress(sum(len(cases) for cases in suites.values()))
    print(f"{progress.total} cases, {rounds} interleaved rounds each")
    rows = []
    for name, cases in suites.items():
        rows += [dict(r, suite=name) for r in run_cases(cases, rounds, min_run_time, progress=progress)]
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "rows": rows}, f, indent=2)
        print(f"wrote {os.path.abspath(args.json)}")
    if args.png:
        plot_speedups(args.png, meta, rows)
        print(f"wrote {os.path.abspath(args.png)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
