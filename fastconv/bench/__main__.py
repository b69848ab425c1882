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

from .runner import measure_copy_bandwidth, run_cases
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


def plot_speedups(path: str, meta: dict, rows: list[dict]) -> None:
    """A horizontal bar per row from 1x to torch time / fastconv time, on a log axis, coloured by op
    family."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{r['op']}  {r['shape']}  {r['dtype']}" for r in rows]
    speedups = [r["speedup"] for r in rows]
    suites = list(dict.fromkeys(r["suite"] for r in rows))
    colours = {s: plt.get_cmap("tab10")(i % 10) for i, s in enumerate(suites)}
    fig, ax = plt.subplots(figsize=(11, 1.0 + 0.24 * len(rows)), layout="constrained")
    y = range(len(rows))[::-1]
    # bars grow from 1x: right when fastconv is faster, left when it is slower
    ax.barh(list(y), [s - 1.0 for s in speedups], left=1.0, color=[colours[r["suite"]] for r in rows])
    ax.set_xscale("log")
    ax.axvline(1.0, color="black", lw=1)
    ax.set_yticks(list(y), labels, fontsize=7)
    ax.set_xlabel("speedup over torch (torch time / fastconv time; > 1 is faster)")
    for yi, s in zip(y, speedups):
        ax.text(max(s, 1.0), yi, f" {s:.2f}x", va="center", fontsize=7)
    ax.legend(handles=[plt.Rectangle((0, 0), 1, 1, color=colours[s]) for s in suites], labels=suites,
              loc="lower right", fontsize=8)
    ax.set_title(f"fastconv vs torch {meta['torch']} on {meta['device_name']} ({meta['device']}, "
                 f"{meta['threads']} thread(s){', quick' if meta['quick'] else ''})", fontsize=9)
    ax.grid(axis="x", alpha=0.3, which="both")
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None, *, default_outputs: bool = False) -> int:
    """``default_outputs`` (``python -m fastconv bench``): write the JSON and the PNG even when not asked,
    as fastconv-bench-<device>.json/.png in the current directory."""
    ap = argparse.ArgumentParser(prog="python -m fastconv bench" if default_outputs else "python -m fastconv.bench",
                                 description=__doc__)
    ap.add_argument("--ops", nargs="+", choices=sorted(SUITES), default=sorted(SUITES),
                    help="op families to time (default: all)")
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch.set_num_threads for both fastconv and torch (default: torch's default)")
    ap.add_argument("--json", metavar="FILE", help="write the results as JSON")
    ap.add_argument("--png", metavar="FILE", help="write a bar chart of the speedups (needs matplotlib)")
    ap.add_argument("--quick", action="store_true", help="small shapes, few rounds (a smoke run)")
    ap.add_argument("--rounds", type=int, default=None, help="interleaved rounds per case (default 5, quick 2)")
    ap.add_argument("--memory", choices=["steady", "os"], default="steady",
                    help="steady (default): CPU allocations are recycled without page faults, so kernels are "
                         "compared; os: glibc's defaults, where large outputs are fresh pages each call")
    args = ap.parse_args(argv)
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
    rows = []
    for name in args.ops:
        rows += [dict(r, suite=name) for r in run_cases(SUITES[name](args.device, args.quick), rounds, min_run_time)]
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
