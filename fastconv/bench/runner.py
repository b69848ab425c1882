"""Timing machinery for fastconv.bench: interleaved rounds, medians, throughput."""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from typing import Callable

import logging

import torch

# torch.utils.benchmark imports torch.utils.cpp_extension, whose import logs "No CUDA runtime is found"
# on a CUDA build of torch without a GPU (this project's CI and development machines): nothing the
# benchmark uses, so it is kept off the user's screen for that one import.
_cpp_ext_log = logging.getLogger("torch.utils.cpp_extension")
_level = _cpp_ext_log.level
_cpp_ext_log.setLevel(logging.ERROR)
from torch.utils.benchmark import Timer  # noqa: E402
_cpp_ext_log.setLevel(_level)


@dataclass
class Case:
    op: str                       # e.g. "max_pool2d fwd"
    shape: str                    # human-readable problem description
    dtype: str
    fastconv: Callable[[], object]
    torch: Callable[[], object]
    bytes: float = 0.0            # minimal bytes moved (0 if not memory-bound)
    flops: float = 0.0            # floating-point operations (0 if not compute-bound)
    note: str = ""
    extra: dict = field(default_factory=dict)
    peak_gflops: float = 0.0      # if set (compute-bound rows), the row reports the fraction of it


def _time(fn: Callable[[], object], min_run_time: float) -> float:
    # torch.utils.benchmark.Timer runs at num_threads=1 unless told otherwise: pass the thread count
    # the run asked for (--threads), or every row is a one-thread comparison.
    timer = Timer("fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())
    return timer.blocked_autorange(min_run_time=min_run_time).median


# A side whose warm-up call took longer than this is timed by that call alone: torch's float16/bfloat16
# GEMM on a CPU without a fast path for it (AVX2 only) takes 2 s at 1024^3 and 53 s at 2048^3 a call, and
# interleaved rounds of it made the bench's half-precision rows take the best part of an hour.
SLOW_CALL_S = 5.0


def _timed_call(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def time_pair(case: Case, rounds: int, min_run_time: float) -> tuple[float, float, bool]:
    """Median seconds of fastconv and torch over `rounds` interleaved rounds (order alternates), and
    whether a side was timed by its one warm-up call instead (SLOW_CALL_S)."""
    first_fc = _timed_call(case.fastconv)
    first_th = _timed_call(case.torch)  # warm-up: allocator, caches, lazy init
    if max(first_fc, first_th) > SLOW_CALL_S:
        return (first_fc if first_fc > SLOW_CALL_S else _time(case.fastconv, min_run_time),
                first_th if first_th > SLOW_CALL_S else _time(case.torch, min_run_time), True)
    fc, th = [], []
    for r in range(rounds):
        if r % 2 == 0:
            fc.append(_time(case.fastconv, min_run_time))
            th.append(_time(case.torch, min_run_time))
        else:
            th.append(_time(case.torch, min_run_time))
            fc.append(_time(case.fastconv, min_run_time))
    return statistics.median(fc), statistics.median(th), False


def measure_copy_bandwidth(device: str, nbytes: int = 256 << 20) -> float:
    """GB/s of a large tensor copy, counting read + write, as the memory roofline."""
    n = nbytes // 4
    src = torch.randn(n, device=device)
    dst = torch.empty_like(src)
    t = _time(lambda: dst.copy_(src), 0.5)
    return 2 * nbytes / t / 1e9


class Progress:
    """Counts the cases of a whole run and estimates the time left from the mean time per case so far."""

    def __init__(self, total: int):
        self.total, self.done, self.start = total, 0, time.perf_counter()

    def step(self) -> str:
        self.done += 1
        left = (time.perf_counter() - self.start) / self.done * (self.total - self.done)
        return f"[{self.done:>{len(str(self.total))}}/{self.total}, ~{int(left) // 60}:{int(left) % 60:02d} left]"


def run_cases(cases: list[Case], rounds: int, min_run_time: float, log=print, progress: Progress | None = None) -> list[dict]:
    rows = []
    progress = progress or Progress(len(cases))
    header = f"{'op':<26} {'shape':<44} {'dtype':<8} {'fastconv ms':>11} {'torch ms':>9} {'speedup':>8} {'throughput':>24}"
    log(header)
    log("-" * len(header))
    for case in cases:
        t_fc, t_th, one_call = time_pair(case, rounds, min_run_time)
        row = {
            "op": case.op, "shape": case.shape, "dtype": case.dtype,
            "fastconv_ms": t_fc * 1e3, "torch_ms": t_th * 1e3, "speedup": t_th / t_fc,
            "note": case.note, **case.extra,
        }
        if one_call:
            row["timing"] = f"a side over {SLOW_CALL_S:g} s a call was timed by its one warm-up call"
        if case.bytes:
            row["fastconv_GBps"] = case.bytes / t_fc / 1e9
            row["torch_GBps"] = case.bytes / t_th / 1e9
            thr = f"{row['fastconv_GBps']:.1f} GB/s"
        elif case.flops:
            row["fastconv_GFLOPs"] = case.flops / t_fc / 1e9
            row["torch_GFLOPs"] = case.flops / t_th / 1e9
            thr = f"{row['fastconv_GFLOPs']:.1f} GFLOP/s"
            if case.peak_gflops:
                row["peak_GFLOPs"] = case.peak_gflops
                row["fraction_of_peak"] = row["fastconv_GFLOPs"] / case.peak_gflops
                thr += f" ({100 * row['fraction_of_peak']:.0f}% pk)"
        else:
            thr = ""
        log(f"{case.op:<26} {case.shape:<44} {case.dtype:<8} {t_fc * 1e3:>11.3f} {t_th * 1e3:>9.3f} "
            f"{row['speedup']:>7.2f}x {thr:>24}  {progress.step()}" + ("  (one call: slow)" if one_call else ""))
        rows.append(row)
    return rows
