"""Benchmark cases, one suite per op family, on shapes from real networks."""

from __future__ import annotations

import gc

import torch
import torch.nn.functional as TF

import fastconv.functional as F

from .runner import Case


def _fmt_name(memory_format) -> str:
    return "channels_last" if memory_format is torch.channels_last else "NCHW"


def max_pool2d_cases(device: str, quick: bool) -> list[Case]:
    # (network, N, C, H, W, kernel, stride, padding)
    shapes = [
        ("ResNet-18 stem", 32, 64, 112, 112, 3, 2, 1),
        ("VGG-16 pool2", 16, 128, 112, 112, 2, 2, 0),
        ("LeNet-5 pool1", 256, 6, 28, 28, 2, 2, 0),
    ]
    if quick:
        shapes = [(net, max(1, n // 4), c, h, w, k, s, p) for net, n, c, h, w, k, s, p in shapes[:1]]
    cases = []
    for net, n, c, h, w, k, s, p in shapes:
        for mf in (torch.contiguous_format, torch.channels_last):
            x = torch.randn(n, c, h, w, device=device).contiguous(memory_format=mf)
            oh, ow = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
            elem = x.element_size()
            out_elems = n * c * oh * ow
            fwd_bytes = x.numel() * elem + out_elems * (elem + 8)   # input, output, int64 indices
            shape = f"{n}x{c}x{h}x{w} k{k} s{s} p{p} {_fmt_name(mf)}"
            cases.append(Case(
                op="max_pool2d fwd", shape=shape, dtype="float32",
                fastconv=lambda x=x, k=k, s=s, p=p: F.max_pool2d(x, k, s, p),
                torch=lambda x=x, k=k, s=s, p=p: TF.max_pool2d(x, k, s, p),
                bytes=fwd_bytes, note=net))
            xg = x.detach().clone().requires_grad_(True)
            go = torch.randn(n, c, oh, ow, device=device).contiguous(memory_format=mf)

            def fwd_bwd(pool, xg=xg, go=go, k=k, s=s, p=p):
                xg.grad = None
                pool(xg, k, s, p).backward(go)

            # backward reads grad_output and indices and writes grad_input
            bwd_bytes = out_elems * (elem + 8) + x.numel() * elem
            cases.append(Case(
                op="max_pool2d fwd+bwd", shape=shape, dtype="float32",
                fastconv=lambda f=fwd_bwd: f(F.max_pool2d), torch=lambda f=fwd_bwd: f(TF.max_pool2d),
                bytes=fwd_bytes + bwd_bytes, note=net))
    return cases


def batch_norm_cases(device: str, quick: bool) -> list[Case]:
    # (network, N, C, H, W): ResNet-18 layer1's batch-norm (the issue's shape) and its stem's.
    shapes = [("ResNet-18 layer1", 32, 64, 56, 56), ("ResNet-18 stem", 16, 64, 112, 112)]
    if quick:
        shapes = [(net, max(1, n // 4), c, h, w) for net, n, c, h, w in shapes[:1]]
    cases = []
    for net, n, c, h, w in shapes:
        for mf in (torch.contiguous_format, torch.channels_last):
            x = torch.randn(n, c, h, w, device=device).contiguous(memory_format=mf)
            go = torch.randn_like(x)
            weight = torch.rand(c, device=device, requires_grad=True)
            bias = torch.randn(c, device=device, requires_grad=True)
            rm, rv = torch.zeros(c, device=device), torch.ones(c, device=device)
            nbytes = x.numel() * x.element_size()
            shape = f"{n}x{c}x{h}x{w} {_fmt_name(mf)}"

            def ours_eval(x=x, weight=weight, bias=bias, rm=rm, rv=rv):
                with torch.no_grad():
                    return F.batch_norm(x, rm, rv, weight, bias, False, relu=True)

            def torch_eval(x=x, weight=weight, bias=bias, rm=rm, rv=rv):
                with torch.no_grad():   # torch's best: batch_norm, then ReLU in place
                    return TF.batch_norm(x, rm, rv, weight, bias, False).relu_()

            cases.append(Case(op="batch_norm+relu eval fwd", shape=shape, dtype="float32", fastconv=ours_eval,
                              torch=torch_eval, bytes=2 * nbytes, note=net))
            xg = x.detach().clone().requires_grad_(True)

            def ours_train(xg=xg, go=go, weight=weight, bias=bias, rm=rm, rv=rv):
                xg.grad = weight.grad = bias.grad = None
                F.batch_norm(xg, rm, rv, weight, bias, True, relu=True).backward(go)

            def torch_train(xg=xg, go=go, weight=weight, bias=bias, rm=rm, rv=rv):
                xg.grad = weight.grad = bias.grad = None
                TF.batch_norm(xg, rm, rv, weight, bias, True).relu_().backward(go)

            # forward reads x and writes y; backward reads x and dy and writes dx (minimal traffic)
            cases.append(Case(op="batch_norm+relu train f+b", shape=shape, dtype="float32", fastconv=ours_train,
                              torch=torch_train, bytes=5 * nbytes, note=net))
    # MobileNet-v2's batch norm + ReLU6 (relu_max=6) at 112 px, batch 16: a training step's pair against
    # torch's batch_norm then in-place ReLU6 (hardtanh_, as torchvision's ReLU6(inplace=True))
    if not quick:
        x = torch.randn(16, 96, 56, 56, device=device, requires_grad=True)
        go = torch.randn_like(x)
        weight = torch.rand(96, device=device, requires_grad=True)
        bias = torch.randn(96, device=device, requires_grad=True)
        rm, rv = torch.zeros(96, device=device), torch.ones(96, device=device)

        def relu6_train(bn, x=x, go=go, weight=weight, bias=bias, rm=rm, rv=rv):
            x.grad = weight.grad = bias.grad = None
            bn(x, rm, rv, weight, bias).backward(go)

        cases.append(Case(op="batch_norm+relu6 train f+b", shape="16x96x56x56 NCHW", dtype="float32",
                          fastconv=lambda: relu6_train(lambda *a: F.batch_norm(*a, True, relu=True, relu_max=6.0)),
                          torch=lambda: relu6_train(lambda *a: TF.relu6(TF.batch_norm(*a, True), inplace=True)),
                          bytes=5 * x.numel() * x.element_size(), note="MobileNet-v2"))
    # Half-precision activations with float32 parameters, as under autocast (NCHW): inference, and a
    # training step's forward and backward
    for dtype in (torch.bfloat16, torch.float16):
        net, n, c, h, w = shapes[0]
        x = torch.randn(n, c, h, w, device=device).to(dtype)
        rm, rv = torch.zeros(c, device=device), torch.ones(c, device=device)
        weight, bias = torch.rand(c, device=device), torch.randn(c, device=device)
        cases.append(Case(op="batch_norm+relu eval fwd", shape=f"{n}x{c}x{h}x{w} NCHW", dtype=str(dtype).split(".")[-1],
                          fastconv=lambda x=x, rm=rm, rv=rv, wt=weight, b=bias: F.batch_norm(x, rm, rv, wt, b, False,
                                                                                           relu=True),
                          torch=lambda x=x, rm=rm, rv=rv, wt=weight, b=bias: TF.batch_norm(x, rm, rv, wt, b,
                                                                                         False).relu_(),
                          bytes=2 * x.numel() * x.element_size(), note=net))
        xg, go = x.clone().requires_grad_(True), torch.randn_like(x)
        wg, bg = weight.clone().requires_grad_(True), bias.clone().requires_grad_(True)

        def half_train(bn, xg=xg, go=go, wg=wg, bg=bg, rm=rm, rv=rv):
            xg.grad = wg.grad = bg.grad = None
            bn(xg, rm, rv, wg, bg).backward(go)

        cases.append(Case(op="batch_norm+relu train f+b", shape=f"{n}x{c}x{h}x{w} NCHW",
                          dtype=str(dtype).split(".")[-1],
                          fastconv=lambda f=half_train: f(lambda *a: F.batch_norm(*a, True, relu=True)),
                          torch=lambda f=half_train: f(lambda *a: TF.batch_norm(*a, True).relu_()),
                          bytes=5 * x.numel() * x.element_size(), note=net))
    return cases


def gemm_cases(device: str, quick: bool) -> list[Case]:
    import fastconv
    from fastconv.ops import gemm

    # The roofline: on the CPU the measured FMA throughput of the active ISA on the benchmark's threads.
    peak32 = fastconv._C.fma_peak_gflops(True, 0.3) if device == "cpu" else 0.0
    peak64 = fastconv._C.fma_peak_gflops(False, 0.3) if device == "cpu" else 0.0
    cases = []
    sizes = [1024] if quick else [1024, 2048]
    if device == "cuda" and not quick:
        sizes.append(4096)
    for n in sizes:
        for dtype, peak in ((torch.float32, peak32), (torch.float64, peak64)):
            if dtype == torch.float64 and n > 1024:
                continue
            a = torch.randn(n, n, device=device, dtype=dtype)
            b = torch.randn(n, n, device=device, dtype=dtype)
            cases.append(Case(op="gemm", shape=f"{n}x{n}x{n}", dtype=str(dtype).split(".")[-1],
                              fastconv=lambda a=a, b=b: gemm(a, b), torch=lambda a=a, b=b: torch.mm(a, b),
                              flops=2.0 * n ** 3, peak_gflops=peak, note="square"))
    # Mixed precision (CPU): float16/bfloat16 operands, float32 accumulation, output in the inputs' dtype
    # as torch.mm gives it. The bfloat16 roofline is twice the float32 FMA peak where the CPU has
    # AVX512-BF16 (a vdpbf16ps does two multiply-adds per float32 lane at the FMA's rate), the float32
    # peak otherwise (the operands are widened to float32 in packing), as for float16.
    if device == "cpu":
        # the vdpbf16ps kernel does two multiply-adds per float32 lane (AMX's peak is not probed here)
        bf16_peak = peak32 * (2 if fastconv._C.cpu_isa() in ("avx512_bf16", "amx") else 1)
        for n in ([1024] if quick else [1024, 2048, 4096]):
            for dtype, peak in ((torch.bfloat16, bf16_peak), (torch.float16, peak32)):
                if dtype == torch.float16 and n > 1024:   # torch's float16 matmul on the CPU takes 44 s at 2048^3
                    continue
                a = torch.randn(n, n, device=device).to(dtype)
                b = torch.randn(n, n, device=device).to(dtype)
                cases.append(Case(op="gemm", shape=f"{n}x{n}x{n}", dtype=str(dtype).split(".")[-1],
                                  fastconv=lambda a=a, b=b: gemm(a, b), torch=lambda a=a, b=b: torch.mm(a, b),
                                  flops=2.0 * n ** 3, peak_gflops=peak, note="square, fp32 accumulation"))
    # Mixed precision (GPU): each tensor-core kernel by name -- mma.sync (compute capability 8.0+) and,
    # on Hopper with an sm_90a build, TMA + wgmma (what gemm then chooses) -- against torch.mm (cuBLAS)
    if device == "cuda" and torch.cuda.get_device_capability()[0] >= 8:
        paths = ["mma_sync"]
        if torch.cuda.get_device_capability() == (9, 0) and "sm_90a" in fastconv.build_info()["cuda_archs"]:
            paths.append("wgmma")
        path_op = torch.ops.fastconv_testing.cuda_gemm_path
        for n in ([1024] if quick else [1024, 2048, 4096, 8192]):
            for dtype in (torch.bfloat16, torch.float16):
                a = torch.randn(n, n, device=device).to(dtype)
                b = torch.randn(n, n, device=device).to(dtype)
                for path in paths:
                    cases.append(Case(op=f"gemm {path}", shape=f"{n}x{n}x{n}", dtype=str(dtype).split(".")[-1],
                                      fastconv=lambda a=a, b=b, path=path: path_op(a, b, False, False, path, None),
                                      torch=lambda a=a, b=b: torch.mm(a, b), flops=2.0 * n ** 3,
                                      note="square, fp32 accumulation"))
    # Linear layers from real models: an LSTM's input projection (T*B = 50*32 rows, 256 -> 4*512) and
    # a classifier head (batch 256, 512 -> 1000).
    for rows, fin, fout, note in [(1600, 256, 2048, "LSTM input proj."), (256, 512, 1000, "ResNet-18 fc")]:
        if quick:
            rows //= 4
        x = torch.randn(rows, fin, device=device)
        w = torch.randn(fout, fin, device=device)
        bias = torch.randn(fout, device=device)
        cases.append(Case(op="linear", shape=f"{rows}x{fin} -> {fout}", dtype="float32",
                          fastconv=lambda x=x, w=w, bias=bias: F.linear(x, w, bias),
                          torch=lambda x=x, w=w, bias=bias: TF.linear(x, w, bias),
                          flops=2.0 * rows * fin * fout, peak_gflops=peak32, note=note))
    return cases


def conv2d_cases(device: str, quick: bool) -> list[Case]:
    import fastconv

    peak = fastconv._C.fma_peak_gflops(True, 0.3) if device == "cpu" else 0.0
    # ResNet-18's 3x3 layers at batch 8 (the issue's shapes), then its 7x7/2 stem and a 1x1 downsample.
    layers = [("ResNet-18 conv2_x", 8, 64, 56, 64, 3, 1, 1), ("ResNet-18 conv3_x", 8, 128, 28, 128, 3, 1, 1),
              ("ResNet-18 conv4_x", 8, 256, 14, 256, 3, 1, 1), ("ResNet-18 conv5_x", 8, 512, 7, 512, 3, 1, 1),
              ("ResNet-18 conv3_1", 8, 64, 56, 128, 3, 2, 1),
              ("ResNet-18 stem", 8, 3, 224, 64, 7, 2, 3), ("ResNet-18 downsample", 8, 64, 56, 128, 1, 2, 0)]
    if quick:
        layers = [(net, 2, c, hw, k, r, st, pd) for net, _, c, hw, k, r, st, pd in layers[:2]]
    cases = []
    for net, n, c, hw, k, r, st, pd in layers:
        x = torch.randn(n, c, hw, hw, device=device)
        w = torch.randn(k, c, r, r, device=device) * (2.0 / (c * r * r)) ** 0.5
        out_hw = (hw + 2 * pd - r) // st + 1
        flops = 2.0 * n * k * out_hw * out_hw * c * r * r
        shape = f"{n}x{c}x{hw}x{hw} * {k}x{c}x{r}x{r} s{st} p{pd}"
        xg, wg = x.clone().requires_grad_(True), w.clone().requires_grad_(True)
        go = torch.randn(n, k, out_hw, out_hw, device=device)

        def fwd_bwd(conv, xg=xg, wg=wg, go=go, st=st, pd=pd):
            xg.grad = wg.grad = None
            conv(xg, wg, None, st, pd).backward(go)

        algos = ["im2col", "direct", "auto"] + (["winograd"] if r == 3 and st == 1 else [])
        for algo in algos:
            cases.append(Case(op=f"conv2d {algo} fwd", shape=shape, dtype="float32",
                              fastconv=lambda x=x, w=w, st=st, pd=pd, a=algo: F.conv2d(x, w, None, st, pd, algorithm=a),
                              torch=lambda x=x, w=w, st=st, pd=pd: TF.conv2d(x, w, None, st, pd),
                              flops=flops, peak_gflops=peak, note=net))
            cases.append(Case(op=f"conv2d {algo} fwd+bwd", shape=shape, dtype="float32",
                              fastconv=lambda f=fwd_bwd, a=algo: f(lambda *args: F.conv2d(*args, algorithm=a)),
                              torch=lambda f=fwd_bwd: f(TF.conv2d), flops=3 * flops, peak_gflops=peak, note=net))
        if device == "cpu":   # bfloat16 against torch's bfloat16, against the bfloat16 roofline (gemm_cases)
            xb, wb = x.bfloat16(), w.bfloat16()
            bf16_peak = peak * (2 if fastconv._C.cpu_isa() in ("avx512_bf16", "amx") else 1)
            cases.append(Case(op="conv2d auto fwd", shape=shape, dtype="bfloat16",
                              fastconv=lambda x=xb, w=wb, st=st, pd=pd: F.conv2d(x, w, None, st, pd),
                              torch=lambda x=xb, w=wb, st=st, pd=pd: TF.conv2d(x, w, None, st, pd),
                              flops=flops, peak_gflops=bf16_peak, note=net))
    # The per-call cost: a module call on a problem so small (1x4x4x4, 3x3: 2.3 kFLOP) that the time is
    # the call's path -- module, dispatcher, autograd node, checks, allocation -- with and without grad.
    ours_m = fastconv.nn.Conv2d(4, 4, 3, padding=1, device=device)
    ref_m = torch.nn.Conv2d(4, 4, 3, padding=1, device=device)
    tiny = torch.randn(1, 4, 4, 4, device=device)

    def call(m, grad):
        def run():
            with torch.set_grad_enabled(grad):
                return m(tiny)
        return run

    for grad in (True, False):
        cases.append(Case(op="conv2d module call", shape=f"1x4x4x4 * 4x4x3x3 p1, {'grad' if grad else 'no_grad'}",
                          dtype="float32", fastconv=call(ours_m, grad), torch=call(ref_m, grad),
                          note="per-call cost"))
    if device == "cpu":
        try:
            import torchvision
        except ImportError:   # an optional dependency: the row needs torchvision's ResNet-18
            torchvision = None
        if torchvision is not None:
            cases.append(_resnet18_autocast_case(torchvision, quick))
    return cases


def _resnet18_autocast_case(torchvision, quick: bool) -> Case:
    """A converted torchvision ResNet-18 (eval, batch 8, 3x112x112) under torch.autocast(bfloat16),
    against torch's own under the same autocast."""
    import fastconv

    torch.manual_seed(0)
    ref = torchvision.models.resnet18().eval()
    ours = fastconv.convert(torchvision.models.resnet18()).eval()
    ours.load_state_dict(ref.state_dict())
    n, hw = (2, 64) if quick else (8, 112)
    x = torch.randn(n, 3, hw, hw)

    def under_autocast(model):
        def run():
            with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
                return model(x)
        return run

    return Case(op="ResNet-18 eval autocast", shape=f"{n}x3x{hw}x{hw}", dtype="bfloat16",
                fastconv=under_autocast(ours), torch=under_autocast(ref), note="torchvision, converted")


def rnn_cases(device: str, quick: bool) -> list[Case]:
    import fastconv
    from torch.nn.utils.rnn import pack_padded_sequence

    peak = fastconv._C.fma_peak_gflops(True, 0.3) if device == "cpu" else 0.0
    cases = []

    def pair(cls, *args, **kwargs):
        """torch's module and fastconv's with the same weights."""
        ref = getattr(torch.nn, cls)(*args, device=device, **kwargs)
        ours = getattr(fastconv.nn, cls)(*args, device=device, **kwargs)
        ours.load_state_dict(ref.state_dict())
        return ours, ref

    def no_grad(fn):
        def run():
            with torch.no_grad():
                return fn()
        return run

    # LSTMCell: one step, the gates GEMM (x W_ih^T + h W_hh^T) and the pointwise update. Inference, as
    # a cell looped over time in a decoder runs.
    batch = 8 if quick else 32
    for h in ([128] if quick else [512, 1024]):
        ours, ref = pair("LSTMCell", h, h)
        x, state = torch.randn(batch, h, device=device), (torch.randn(batch, h, device=device),) * 2
        cases.append(Case(op="LSTMCell fwd", shape=f"B{batch} I{h} H{h}", dtype="float32",
                          fastconv=no_grad(lambda m=ours, x=x, s=state: m(x, s)),
                          torch=no_grad(lambda m=ref, x=x, s=state: m(x, s)),
                          flops=2.0 * batch * 2 * h * 4 * h, peak_gflops=peak, note="decoder step"))

    def layer_cases(kind: str, T: int, B: int, I: int, H: int, layers: int = 1, bidirectional: bool = False,
                    lengths=None, note: str = ""):
        gates = 4 if kind == "LSTM" else 3
        ours, ref = pair(kind, I, H, num_layers=layers, bidirectional=bidirectional)
        x = torch.randn(T, B, I, device=device)
        dirs = 2 if bidirectional else 1
        tokens = T * B if lengths is None else int(sum(lengths))
        flops = 0.0
        for layer in range(layers):   # input projection + recurrent product per token, layer, direction
            flops += 2.0 * tokens * dirs * ((I if layer == 0 else dirs * H) + H) * gates * H
        if lengths is not None:
            x = pack_padded_sequence(x, torch.tensor(lengths))
        shape = f"T{T} B{B} I{I} H{H}" + (f" {layers} layers" if layers > 1 else "") + (
            " bidir." if bidirectional else "") + (f" packed {min(lengths)}..{max(lengths)}" if lengths else "")

        def fwd_bwd(m, x=x):
            m.zero_grad(set_to_none=True)
            out = m(x)[0]
            (out.data if lengths is not None else out).sum().backward()

        if lengths is None:
            cases.append(Case(op=f"{kind} fwd", shape=shape, dtype="float32",
                              fastconv=no_grad(lambda m=ours, x=x: m(x)), torch=no_grad(lambda m=ref, x=x: m(x)),
                              flops=flops, peak_gflops=peak, note=note))
        cases.append(Case(op=f"{kind} fwd+bwd", shape=shape, dtype="float32", fastconv=lambda m=ours: fwd_bwd(m),
                          torch=lambda m=ref: fwd_bwd(m), flops=3 * flops, peak_gflops=peak, note=note))

    if quick:
        layer_cases("LSTM", 10, 8, 32, 64, note="smoke")
        layer_cases("GRU", 10, 8, 32, 64, note="smoke")
        return cases
    T, B, I, H = 50, 32, 256, 512
    layer_cases("LSTM", T, B, I, H, note="LSTM layer")
    layer_cases("LSTM", T, B, I, 1024, note="LSTM layer")
    layer_cases("LSTM", T, B, I, H, layers=2, bidirectional=True, note="2-layer bidirectional")
    lengths = torch.linspace(T, 10, B).round().long().tolist()   # 32 sequences, 50 down to 10 steps
    layer_cases("LSTM", T, B, I, H, lengths=lengths, note=f"packed, {sum(lengths) / (T * B):.0%} of the tokens")
    layer_cases("GRU", T, B, I, H, note="GRU layer")
    layer_cases("GRU", T, B, I, H, lengths=lengths, note=f"packed, {sum(lengths) / (T * B):.0%} of the tokens")
    if device == "cpu":   # bfloat16 inference under autocast, as torch runs its LSTM there (oneDNN, bfloat16)
        ours, ref = pair("LSTM", I, H)
        x = torch.randn(T, B, I)

        def under_autocast(m):
            def run():
                with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
                    return m(x)
            return run

        try:   # torch's side is oneDNN's bfloat16 LSTM, which some CPUs (AVX2 only) cannot create
            under_autocast(ref)()
        except RuntimeError as e:
            print(f"LSTM fwd autocast: row left out, torch's own raised on this CPU: {str(e).splitlines()[0]}")
        else:
            cases.append(Case(op="LSTM fwd autocast", shape=f"T{T} B{B} I{I} H{H}", dtype="bfloat16",
                              fastconv=under_autocast(ours), torch=under_autocast(ref),
                              flops=2.0 * T * B * (I + H) * 4 * H, peak_gflops=peak, note="float32 inside"))
    return cases


# Whole torchvision models, converted (fastconv.convert) against the same model in torch: (name,
# constructor, batch, input side). Random initialisation (nothing is downloaded), the same weights in
# both copies.
MODELS = [("ResNet-18", "resnet18", 8, 112), ("VGG-11-BN", "vgg11_bn", 8, 112), ("MobileNet-v2", "mobilenet_v2", 16, 112)]


class _ModelPair:
    """A converted model and torch's, of one architecture and memory format, with their optimizers and a
    fixed batch: built on first use, and only one pair alive at a time (building one drops the pair
    built before). Holding every model of the section at once (VGG-11-BN's four copies alone are 2 GB,
    their optimizers' state as much again) slowed every step of the others by a similar number of
    milliseconds on both sides (ResNet-18's training step 115 -> 185 ms ours, 130 -> 205 torch's, on the
    Intel Xeon: this machine's memory reclaims what sits idle), which pulled every ratio towards 1."""

    _live: "_ModelPair | None" = None

    def __init__(self, torchvision, ctor: str, n: int, hw: int, mf, device: str):
        self._args = (torchvision, ctor, n, hw, mf, device)
        self._built = None

    def get(self):
        if self._built is None:
            if _ModelPair._live is not None:
                _ModelPair._live._built = None   # its models, optimizers and batch freed
                gc.collect()
            import fastconv

            torchvision, ctor, n, hw, mf, device = self._args
            torch.manual_seed(0)
            ref = getattr(torchvision.models, ctor)(num_classes=100)
            ours = fastconv.convert(getattr(torchvision.models, ctor)(num_classes=100))
            ours.load_state_dict(ref.state_dict())
            ref, ours = ref.to(device, memory_format=mf), ours.to(device, memory_format=mf)
            x = torch.randn(n, 3, hw, hw, device=device).contiguous(memory_format=mf)
            labels = torch.randint(0, 100, (n,), device=device)
            opts = [torch.optim.SGD(m.parameters(), lr=1e-5, momentum=0.9) for m in (ours, ref)]
            self._built = {"fastconv": (ours, opts[0]), "torch": (ref, opts[1]), "x": x, "labels": labels}
            _ModelPair._live = self
        return self._built


class _ModelRun:
    """One side's training step (forward, cross-entropy on fixed random labels, backward, an SGD step
    with momentum) or eval forward under no_grad; `model` is that side's model (for the tests)."""

    def __init__(self, pair: _ModelPair, side: str, train: bool):
        self.pair, self.side, self.train = pair, side, train

    @property
    def model(self):
        return self.pair.get()[self.side][0]

    def __call__(self):
        built = self.pair.get()
        model, opt = built[self.side]
        if self.train:
            model.train()
            opt.zero_grad(set_to_none=True)
            TF.cross_entropy(model(built["x"]), built["labels"]).backward()
            opt.step()
            return None
        model.eval()
        with torch.no_grad():
            return model(built["x"])


def model_cases(device: str, quick: bool) -> list[Case]:
    """Per model and memory format (NCHW, channels_last): a training step -- forward, cross-entropy on
    fixed random labels, backward and an SGD step with momentum, as a training loop runs it (the step
    moves the weights, so per-weight caches are exercised as in training) -- and an eval forward under
    no_grad. Each side trains its own copy; the learning rate is small enough that thousands of timed
    steps on random data keep the numbers finite. The models are built when their cases first run, one
    pair in memory at a time (_ModelPair)."""
    try:
        import torchvision
    except ImportError:   # an optional dependency: the section needs torchvision's models
        return []

    cases = []
    for name, ctor, n, hw in MODELS:
        if quick:
            n, hw = 2, 64
        for mf in (torch.contiguous_format, torch.channels_last):
            pair = _ModelPair(torchvision, ctor, n, hw, mf, device)
            shape = f"{n}x3x{hw}x{hw} {_fmt_name(mf)}"
            for kind, train in (("train step", True), ("eval", False)):
                cases.append(Case(op=f"{name} {kind}", shape=shape, dtype="float32",
                                  fastconv=_ModelRun(pair, "fastconv", train), torch=_ModelRun(pair, "torch", train),
                                  note="torchvision, converted"))
    return cases


SUITES = {
    "max_pool2d": max_pool2d_cases,
    "batch_norm": batch_norm_cases,
    "gemm": gemm_cases,
    "conv2d": conv2d_cases,
    "rnn": rnn_cases,
    "models": model_cases,
}
