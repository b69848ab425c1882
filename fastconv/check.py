"""``python -m fastconv check``: is fastconv right on this machine? Every op and algorithm against
torch's own, forward and backward, on real networks' shapes (ResNet-18, MobileNet, an LSTM language
model) and awkward ones (primes, strides, dilation, groups, channels_last, unbatched, empty batches,
packed sequences); on the CPU for every instruction set the machine has. Prints a pass/fail table
with the worst errors and exits with 1 if anything failed; ``--json FILE`` writes the report.

The error of a result is max |ours - torch's| / (1 + max |torch's|), over the outputs (forward) or
over the gradients of every input and parameter (backward, from one random upstream gradient). The
tolerance is 5e-5 in float32 (5e-4 for Winograd F(4x4), which rounds up to ~10x worse than direct
convolution, README's accuracy table, and for "auto", which may pick it) and 1e-11 in float64: about
twenty times the worst error seen on a 2-vCPU AMD EPYC (2.3e-6 and 1.4e-14, ResNet-18 layers)."""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as TF
from torch import nn

import fastconv
import fastconv.functional as F

TOLERANCE = {torch.float32: 5e-5, torch.float64: 1e-11}


@dataclass
class Case:
    """One comparison: build(device, dtype) -> (ours, theirs, inputs), where ours() and theirs() run
    on the same inputs (tensors; those that are floating point get gradients) and return a tensor or
    a tuple of tensors, and the modules they use (their parameters' gradients are compared too)."""
    name: str
    build: Callable
    quick: bool = False
    loose: float = 1.0          # tolerance factor (Winograd F(4x4))
    backward: bool = True


def _conv(x, w, algorithm, stride=1, padding=0, dilation=1, groups=1, bias=True, channels_last=False):
    def build(device, dtype):
        g = torch.Generator().manual_seed(0)
        xs = torch.randn(x, generator=g, dtype=dtype).to(device)
        if channels_last:
            xs = xs.contiguous(memory_format=torch.channels_last)
        ws = (torch.randn(w, generator=g, dtype=dtype) * (2.0 / (w[1] * w[2] * w[3])) ** 0.5).to(device)
        bs = torch.randn(w[0], generator=g, dtype=dtype).to(device) if bias else None
        inputs = [xs, ws] + ([bs] if bias else [])

        def ours(x, w, b=None):
            return F.conv2d(x, w, b, stride, padding, dilation, groups, algorithm=algorithm)

        def theirs(x, w, b=None):
            return TF.conv2d(x, w, b, stride, padding, dilation, groups)
        return ours, theirs, inputs, []
    return build


def _conv_double_backward(device, dtype):
    # A gradient penalty (WGAN-GP): the gradient of ||d out / d x||^2 with respect to x and w.
    g = torch.Generator().manual_seed(0)
    xs = torch.randn(2, 8, 11, 10, generator=g, dtype=dtype).to(device)
    ws = (torch.randn(6, 8, 3, 3, generator=g, dtype=dtype) * 0.2).to(device)

    def penalty(conv):
        def run(x, w):
            out = torch.tanh(conv(x, w, None, 1, 1)).sum()
            (gx,) = torch.autograd.grad(out, x, create_graph=True)
            return gx.flatten(1).norm(dim=1).sub(1).square().mean()
        return run
    return penalty(F.conv2d), penalty(TF.conv2d), [xs, ws], []


def _cached_conv(algorithm, channels_last=False):
    """An eval-style convolution through the weight cache (csrc/common/weight_cache.h): a miss, a hit,
    then a write through ``.data`` that the next call must see (the cache's digest of the weight's
    bytes, computed by this machine's kernels)."""
    def build(device, dtype):
        g = torch.Generator().manual_seed(0)
        xs = torch.randn(2, 32, 9, 9, generator=g, dtype=dtype).to(device)
        if channels_last:
            xs = xs.contiguous(memory_format=torch.channels_last)
        ws = (torch.randn(48, 32, 3, 3, generator=g, dtype=dtype) * 0.08).to(device)

        def ours(x, w):
            with torch.no_grad():
                kept = w.detach().clone()
                for _ in range(2):
                    F.conv2d(x, kept, None, 1, 1, algorithm=algorithm)
                kept.data.view(-1)[7::11].mul_(-3.0)
                return F.conv2d(x, kept, None, 1, 1, algorithm=algorithm)

        def theirs(x, w):
            changed = w.detach().clone()
            changed.view(-1)[7::11].mul_(-3.0)
            return TF.conv2d(x, changed, None, 1, 1)
        return ours, theirs, [xs, ws], []
    return build


def _pool(x, k, stride=None, padding=0, dilation=1, ceil_mode=False, channels_last=False):
    def build(device, dtype):
        xs = torch.randn(x, generator=torch.Generator().manual_seed(0), dtype=dtype).to(device)
        if channels_last:
            xs = xs.contiguous(memory_format=torch.channels_last)
        return (lambda x: F.max_pool2d(x, k, stride, padding, dilation, ceil_mode),
                lambda x: TF.max_pool2d(x, k, stride, padding, dilation, ceil_mode), [xs], [])
    return build


def _batch_norm(x, training, relu=False, channels_last=False, relu_max=None):
    def build(device, dtype):
        g = torch.Generator().manual_seed(0)
        xs = (torch.randn(x, generator=g, dtype=dtype) * 2 + 0.5).to(device)
        if channels_last:
            xs = xs.contiguous(memory_format=torch.channels_last)
        c = x[1]
        w, b = torch.rand(c, generator=g, dtype=dtype).to(device) + 0.5, torch.randn(c, generator=g, dtype=dtype).to(device)
        mean, var = torch.randn(c, generator=g, dtype=dtype), torch.rand(c, generator=g, dtype=dtype) + 0.5
        stats = {k: (mean.clone().to(device), var.clone().to(device)) for k in ("ours", "theirs")}

        def ours(x, w, b):
            rm, rv = stats["ours"]
            return F.batch_norm(x, rm, rv, w, b, training, relu=relu, relu_max=relu_max), rm, rv

        def theirs(x, w, b):
            rm, rv = stats["theirs"]
            y = TF.batch_norm(x, rm, rv, w, b, training)
            if relu_max is not None:
                return TF.hardtanh(y, 0.0, relu_max), rm, rv
            return (torch.relu(y) if relu else y), rm, rv
        return ours, theirs, [xs, w, b], []
    return build


def _linear(x, out_features):
    def build(device, dtype):
        g = torch.Generator().manual_seed(0)
        xs = torch.randn(x, generator=g, dtype=dtype).to(device)
        w = (torch.randn(out_features, x[-1], generator=g, dtype=dtype) / x[-1] ** 0.5).to(device)
        b = torch.randn(out_features, generator=g, dtype=dtype).to(device)
        return F.linear, TF.linear, [xs, w, b], []
    return build


def _rnn(kind, T, B, I, H, packed=False, **kwargs):
    def build(device, dtype):
        torch.manual_seed(0)
        ref = getattr(nn, kind)(I, H, **kwargs).to(device=device, dtype=dtype)
        ours = getattr(fastconv.nn, kind)(I, H, **kwargs).to(device=device, dtype=dtype)
        ours.load_state_dict(ref.state_dict())
        cell = kind.endswith("Cell")
        xs = torch.randn((B, I) if cell else (T, B, I), generator=torch.Generator().manual_seed(1), dtype=dtype)
        xs = xs.to(device)
        lengths = torch.tensor([T - (3 * i) % T for i in range(B)])

        def run(module):
            def call(x):
                if packed:
                    out, state = module(nn.utils.rnn.pack_padded_sequence(x, lengths, enforce_sorted=False))
                    out = nn.utils.rnn.pad_packed_sequence(out)[0]
                elif cell:
                    return module(x)      # LSTMCell: (h, c); GRUCell: h
                else:
                    out, state = module(x)
                return (out, *(state if isinstance(state, tuple) else (state,)))
            return call
        return run(ours), run(ref), [xs], [ours, ref]
    return build


def _rnn_double_backward(kind):
    # A gradient penalty through a packed bidirectional layer: the gradient of ||d out / d x||^2 with
    # respect to x and the parameters (torch's reference with cuDNN off: its RNNs have no double backward).
    def build(device, dtype):
        torch.manual_seed(0)
        ref = getattr(nn, kind)(5, 8, bidirectional=True).to(device=device, dtype=dtype)
        ours = getattr(fastconv.nn, kind)(5, 8, bidirectional=True).to(device=device, dtype=dtype)
        ours.load_state_dict(ref.state_dict())
        xs = torch.randn(6, 3, 5, generator=torch.Generator().manual_seed(1), dtype=dtype).to(device)

        def penalty(module):
            def run(x):
                with torch.backends.cudnn.flags(enabled=False):
                    out = module(nn.utils.rnn.pack_padded_sequence(x, [6, 4, 1]))[0].data
                    (gx,) = torch.autograd.grad(torch.tanh(out).sum(), x, create_graph=True)
                return gx.square().sum()
            return run
        return penalty(ours), penalty(ref), [xs], [ours, ref]
    return build


R18 = "ResNet-18"
CASES: list[Case] = []
for _alg in ("im2col", "direct", "winograd_2x2", "winograd_4x4", "auto"):
    _loose = 10.0 if _alg in ("winograd_4x4", "auto") else 1.0
    CASES += [
        Case(f"conv2d {_alg} {R18} conv2_x 64@56x56 3x3", _conv((2, 64, 56, 56), (64, 64, 3, 3), _alg, padding=1),
             loose=_loose),
        Case(f"conv2d {_alg} {R18} conv5_x 512@7x7 3x3", _conv((2, 512, 7, 7), (512, 512, 3, 3), _alg, padding=1),
             loose=_loose),
        Case(f"conv2d {_alg} unbatched 5@9x9 3x3 'same'", _conv((5, 9, 9), (4, 5, 3, 3), _alg, padding="same"),
             quick=True, loose=_loose),
        Case(f"conv2d {_alg} channels_last 16@11x13 3x3", _conv((2, 16, 11, 13), (8, 16, 3, 3), _alg, padding=1,
                                                                 bias=False, channels_last=True),
             quick=True, loose=_loose),
    ]
for _alg in ("im2col", "direct"):
    CASES += [
        Case(f"conv2d {_alg} {R18} stem 3@112x112 7x7 s2", _conv((1, 3, 112, 112), (64, 3, 7, 7), _alg, 2, 3)),
        Case(f"conv2d {_alg} {R18} conv3_x 64@28x28 3x3 s2", _conv((2, 64, 28, 28), (128, 64, 3, 3), _alg, 2, 1)),
        Case(f"conv2d {_alg} {R18} downsample 1x1 s2", _conv((2, 64, 28, 28), (128, 64, 1, 1), _alg, 2, bias=False)),
        Case(f"conv2d {_alg} MobileNet depthwise 32@28x28", _conv((2, 32, 28, 28), (32, 1, 3, 3), _alg, 1, 1,
                                                                   groups=32)),
        Case(f"conv2d {_alg} 5@13x11 3x2 s(2,1) p(1,0) d(1,2)", _conv((3, 5, 13, 11), (7, 5, 3, 2), _alg, (2, 1),
                                                                        (1, 0), (1, 2)), quick=True),
        Case(f"conv2d {_alg} groups 2, 6@9x7 3x3", _conv((2, 6, 9, 7), (4, 3, 3, 3), _alg, 1, 1, groups=2),
             quick=True),
        Case(f"conv2d {_alg} empty batch 0x4@8x8", _conv((0, 4, 8, 8), (3, 4, 3, 3), _alg, 1, 1), quick=True),
    ]
CASES += [
    Case("conv2d double backward (gradient penalty)", _conv_double_backward, quick=True),
    Case("conv2d winograd_4x4 cached, then a .data write", _cached_conv("winograd_4x4"), quick=True,
         loose=10.0, backward=False),
    Case("conv2d im2col NHWC cached, then a .data write", _cached_conv("im2col", True), quick=True,
         backward=False),
    Case(f"max_pool2d {R18} 64@112x112 3x3 s2 p1", _pool((2, 64, 112, 112), 3, 2, 1)),
    Case("max_pool2d 5@13x11 (3,2) s(2,1) p(1,0) d(1,2) ceil", _pool((3, 5, 13, 11), (3, 2), (2, 1), (1, 0), (1, 2),
                                                                   True), quick=True),
    Case("max_pool2d channels_last 16@9x9 2x2", _pool((2, 16, 9, 9), 2, channels_last=True), quick=True),
    Case("max_pool2d unbatched 3@7x7 3x3 s1", _pool((3, 7, 7), 3, 1, 1), quick=True),
    Case(f"batch_norm train {R18} 64@56x56", _batch_norm((4, 64, 56, 56), True)),
    Case("batch_norm train 5@7x1", _batch_norm((3, 5, 7, 1), True), quick=True),
    Case("batch_norm eval 5@7x3", _batch_norm((3, 5, 7, 3), False), quick=True),
    Case("batch_norm train + relu, channels_last 16@9x9", _batch_norm((2, 16, 9, 9), True, True, True), quick=True),
    Case("batch_norm train + relu6 (relu_max 6), MobileNet-v2 96@28x28", _batch_norm((4, 96, 28, 28), True, True,
                                                                                     relu_max=6.0)),
    Case("batch_norm eval + relu_max 1, channels_last 7@5x5", _batch_norm((3, 7, 5, 5), False, True, True, 1.0),
         quick=True),
    Case(f"linear {R18} fc 512 -> 1000", _linear((32, 512), 1000)),
    Case("linear 3x7x13 -> 5", _linear((3, 7, 13), 5), quick=True),
    Case("LSTM char-LM T=32 B=16 512", _rnn("LSTM", 32, 16, 64, 512)),
    Case("LSTM 2 layers bidirectional proj, T=7 B=3", _rnn("LSTM", 7, 3, 5, 8, num_layers=2, bidirectional=True,
                                                          proj_size=3), quick=True),
    Case("LSTM packed unsorted lengths, T=9 B=5", _rnn("LSTM", 9, 5, 4, 6, packed=True), quick=True),
    Case("GRU 2 layers T=20 B=8 128", _rnn("GRU", 20, 8, 32, 128, num_layers=2)),
    Case("GRU packed bidirectional, T=9 B=5", _rnn("GRU", 9, 5, 4, 6, packed=True, bidirectional=True), quick=True),
    Case("LSTMCell B=7 13", _rnn("LSTMCell", 1, 7, 5, 13), quick=True),
    Case("GRUCell B=7 13, no bias", _rnn("GRUCell", 1, 7, 5, 13, bias=False), quick=True),
    Case("LSTM double backward, packed bidirectional", _rnn_double_backward("LSTM"), quick=True),
    Case("GRU double backward, packed bidirectional", _rnn_double_backward("GRU"), quick=True),
]


def _as_tuple(out) -> tuple:
    return out if isinstance(out, tuple) else (out,)


def _error(ours, theirs) -> float:
    worst = 0.0
    for a, b in zip(ours, theirs):
        if a is None or b is None or b.numel() == 0:
            continue
        scale = 1.0 + b.detach().abs().max().item()
        worst = max(worst, (a.detach().double() - b.detach().double()).abs().max().item() / scale)
    return worst


def _gradients(fn, inputs, modules, upstream_seed: int):
    xs = [t.detach().clone().requires_grad_(t.is_floating_point()) for t in inputs]
    out = _as_tuple(fn(*xs))
    g = torch.Generator().manual_seed(upstream_seed)
    diff = [o for o in out if o.requires_grad]
    ups = [torch.randn(o.shape, generator=g, dtype=o.dtype).to(o.device) for o in diff]
    leaves = [x for x in xs if x.requires_grad] + [p for m in modules for p in m.parameters()]
    grads = torch.autograd.grad(diff, leaves, ups, allow_unused=True) if diff else []
    return out, list(grads)


def run_case(case: Case, device: str, dtype: torch.dtype) -> dict:
    result = {"case": case.name, "dtype": str(dtype).replace("torch.", ""), "forward_error": None,
              "backward_error": None, "tolerance": TOLERANCE[dtype] * case.loose, "passed": False, "error": None}
    try:
        ours, theirs, inputs, modules = case.build(device, dtype)
        mods = modules[: len(modules) // 2], modules[len(modules) // 2:]
        if case.backward:
            out_o, grads_o = _gradients(ours, inputs, mods[0], 7)
            out_t, grads_t = _gradients(theirs, inputs, mods[1], 7)
            result["backward_error"] = _error(grads_o, grads_t)
        else:
            with torch.no_grad():
                out_o, out_t = _as_tuple(ours(*inputs)), _as_tuple(theirs(*inputs))
        shapes = [tuple(o.shape) for o in out_o], [tuple(o.shape) for o in out_t]
        if shapes[0] != shapes[1]:
            raise AssertionError(f"output shapes differ: {shapes[0]} against torch's {shapes[1]}")
        result["forward_error"] = _error(out_o, out_t)
        worst = max(result["forward_error"], result["backward_error"] or 0.0)
        result["passed"] = worst <= result["tolerance"]
    except Exception as e:  # a crash in one case is that case's failure, reported with the rest
        result["error"] = f"{type(e).__name__}: {e}".splitlines()[0][:300]
    return result


def _machine(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name()
    from .bench.__main__ import cpu_name
    return f"{cpu_name()}, {torch.get_num_threads()} threads"


def run(device: str = "cpu", quick: bool = False, cases: list[Case] | None = None, out=sys.stdout) -> dict:
    """Runs the check and returns its report (what --json writes); prints the table to `out`."""
    torch.backends.cudnn.allow_tf32 = False          # torch's references in true float32
    torch.backends.cuda.matmul.allow_tf32 = False
    cases = [c for c in (CASES if cases is None else cases) if c.quick or not quick]
    isas = ["-"]
    if device == "cpu":
        # Every level the tests walk (with avx512_emulated, the AVX-512 builds' code on AVX2, where the CPU
        # lacks AVX-512), the best last: float64 runs there only.
        best = fastconv._C.best_cpu_isa()
        isas = [best] if quick else [i for i in fastconv._C.tested_cpu_isas() if i != best] + [best]
    dtypes = [torch.float32] if quick else [torch.float32, torch.float64]
    print(f"fastconv check: {device} ({_machine(device)}), fastconv {fastconv.__version__}, torch {torch.__version__}; "
          f"{'quick, ' if quick else ''}{len(cases)} cases x {', '.join(str(d)[6:] for d in dtypes)}"
          f"{' x ISAs ' + ', '.join(isas) if device == 'cpu' else ''}", file=out)
    wi = max(7, *(len(i) for i in isas))
    header = f"{'case':<52} {'dtype':<8} {'isa':<{wi}} {'forward':>9} {'backward':>9} {'allowed':>9}  result"
    print(header, file=out)
    print("-" * len(header), file=out)
    start, results, before = time.perf_counter(), [], fastconv._C.cpu_isa()
    try:
        for isa in isas:
            if device == "cpu":
                fastconv._C.set_cpu_isa(isa)
            for dtype in dtypes:
                if dtype == torch.float64 and isa not in ("-", isas[-1]):
                    continue   # float64 once, on the best ISA: its kernels are not per-ISA vectorised
                for case in cases:
                    with warnings.catch_warnings():   # torch's own notes about its reference paths
                        warnings.simplefilter("ignore", UserWarning)
                        r = dict(run_case(case, device, dtype), isa=isa)
                    results.append(r)
                    fmt = lambda v: "-" if v is None else f"{v:.1e}"  # noqa: E731
                    verdict = "pass" if r["passed"] else "FAIL" + (f"  {r['error']}" if r["error"] else "")
                    print(f"{r['case'][:52]:<52} {r['dtype']:<8} {isa:<{wi}} {fmt(r['forward_error']):>9} "
                          f"{fmt(r['backward_error']):>9} {r['tolerance']:>9.0e}  {verdict}", file=out, flush=True)
    finally:
        if device == "cpu":
            fastconv._C.set_cpu_isa(before)
    failed = [r for r in results if not r["passed"]]
    ratio = lambda r: max(r["forward_error"] or 0, r["backward_error"] or 0) / r["tolerance"]  # noqa: E731
    worst = max((r for r in results if r["error"] is None), key=ratio, default=None)
    seconds = time.perf_counter() - start
    print("-" * len(header), file=out)
    print(f"{len(results) - len(failed)} of {len(results)} passed in {seconds:.1f} s"
          + (f"; worst: {worst['case']} ({worst['dtype']}, {worst['isa']}) at {ratio(worst):.1%} of its tolerance"
             if worst else ""), file=out)
    for r in failed:
        print(f"FAILED: {r['case']} ({r['dtype']}, {r['isa']}): "
              + (r["error"] or f"error {max(r['forward_error'] or 0, r['backward_error'] or 0):.2e} > {r['tolerance']:.0e}"),
              file=out)
    return {"device": device, "machine": _machine(device), "fastconv": fastconv.__version__,
            "torch": torch.__version__, "build": fastconv.build_info(), "quick": quick, "seconds": round(seconds, 2),
            "passed": len(results) - len(failed), "failed": len(failed), "results": results}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m fastconv check",
        description="Checks every fastconv op and algorithm against torch's own on this machine: forward and "
                    "backward, real networks' shapes and awkward ones, float32 and float64, on the CPU for each "
                    "instruction set it has. Prints a pass/fail table; exit status 1 if anything failed.")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--quick", action="store_true", help="awkward shapes only, float32, the best ISA (seconds)")
    parser.add_argument("--json", metavar="FILE", help="write the report (every case's errors) as JSON")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not (fastconv._C.cuda_compiled() and torch.cuda.is_available()):
        print("fastconv check: --device cuda, but there is no CUDA device or fastconv was built without CUDA "
              f"(build: {fastconv.build_info()})", file=sys.stderr)
        return 2
    report = run(args.device, args.quick)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
        print(f"wrote {args.json}")
    return 1 if report["failed"] else 0
