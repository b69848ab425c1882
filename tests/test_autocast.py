"""Half-precision conv2d and torch.autocast (issue 14). conv2d takes float16/bfloat16 on the CPU
(operands widened to float32 inside, the output rounded once: float32 accumulation as torch's);
under torch.autocast fastconv's gemm (so linear) and conv2d run in the autocast dtype with torch's
cast policy and return what torch returns, judged by the flash-attention rule against float64: error
at most 2x torch's own in that dtype plus about one rounding of the largest value. LSTM and GRU (and
their cells) take float16/bfloat16 (float32 inside); under autocast an LSTM runs in the autocast dtype
as torch's, GRU and the cells stay in float32 as torch's."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as TF

import fastconv
import fastconv.functional as F
from lowprec import check_rule, error

HALF = [torch.bfloat16, torch.float16]


# (input, weight, stride, padding, dilation, groups)
CONV_SHAPES = [((2, 8, 9, 11), (16, 8, 3, 3), 1, 1, 1, 1), ((1, 6, 8, 8), (6, 2, 3, 3), 2, 1, 1, 3),
               ((2, 3, 16, 16), (5, 3, 7, 7), 2, 3, 1, 1), ((3, 5, 7, 7), (4, 5, 1, 1), 1, 0, 1, 1),
               ((2, 64, 8, 8), (64, 64, 3, 3), 1, 1, 1, 1)]


@pytest.mark.parametrize("algorithm", ["im2col", "direct", "winograd_2x2", "winograd_4x4", "auto"])
@pytest.mark.parametrize("dtype", HALF, ids=str)
def test_conv2d_half_forward_backward_by_the_rule(dtype, algorithm):
    for x_shape, w_shape, s, p, d, g in CONV_SHAPES:
        winograd = w_shape[2:] == (3, 3) and s == 1 and d == 1 and g == 1
        if algorithm.startswith("winograd") and not winograd:
            continue
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(x_shape, generator=gen).to(dtype)
        w = (torch.randn(w_shape, generator=gen) / w_shape[1] ** 0.5).to(dtype)
        b = torch.randn(w_shape[0], generator=gen).to(dtype)
        ours_in = [t.clone().requires_grad_() for t in (x, w, b)]
        theirs_in = [t.clone().requires_grad_() for t in (x, w, b)]
        ref_in = [t.double().requires_grad_() for t in (x, w, b)]
        ours = F.conv2d(*ours_in, s, p, d, g, algorithm=algorithm)
        theirs = TF.conv2d(*theirs_in, s, p, d, g)
        ref = TF.conv2d(*ref_in, s, p, d, g)
        what = f"{dtype} {algorithm} {x_shape} {w_shape}"
        check_rule(ours, theirs, ref, what + " forward")
        gy = torch.randn(ref.shape, generator=gen).to(dtype)
        ours.backward(gy)
        theirs.backward(gy)
        ref.backward(gy.double())
        for name, o, t, r in zip(("input", "weight", "bias"), ours_in, theirs_in, ref_in):
            check_rule(o.grad, t.grad, r.grad, f"{what} grad {name}")


@pytest.mark.parametrize("dtype", HALF, ids=str)
def test_linear_and_conv_under_autocast(dtype):
    gen = torch.Generator().manual_seed(1)
    lin, tlin = fastconv.nn.Linear(40, 24), torch.nn.Linear(40, 24)
    tlin.load_state_dict(lin.state_dict())
    conv, tconv = fastconv.nn.Conv2d(6, 8, 3, padding=1), torch.nn.Conv2d(6, 8, 3, padding=1)
    tconv.load_state_dict(conv.state_dict())
    x = torch.randn(5, 40, generator=gen)
    img = torch.randn(2, 6, 9, 9, generator=gen)
    with torch.no_grad():
        ref_lin = TF.linear(x.to(dtype).double(), lin.weight.to(dtype).double(), lin.bias.to(dtype).double())
        ref_conv = TF.conv2d(img.to(dtype).double(), conv.weight.to(dtype).double(), conv.bias.to(dtype).double(),
                             padding=1)
        with torch.autocast("cpu", dtype=dtype):
            ours_lin, theirs_lin = lin(x), tlin(x)
            ours_conv, theirs_conv = conv(img), tconv(img)
            plain = fastconv.ops.gemm(x, lin.weight, None, False, True)   # the op itself is cast too
    check_rule(ours_lin, theirs_lin, ref_lin, f"linear under autocast {dtype}")
    check_rule(ours_conv, theirs_conv, ref_conv, f"conv2d under autocast {dtype}")
    assert plain.dtype == dtype
    # float64 is not cast (torch's rule): it stays float64
    with torch.autocast("cpu", dtype=dtype):
        assert lin.double()(x.double()).dtype == torch.float64


@pytest.mark.parametrize("isa", ["avx512", "avx512_bf16", "amx"])
def test_bfloat16_conv2d_forward_on_each_isa_by_the_rule(isa):
    """bfloat16 im2col runs natively on the bfloat16 kernels (avx512_bf16, amx: the columns lowered
    into their panels) and widened to float32 below them: both by the rule, on ResNet-like shapes whose
    column matrices span several K blocks (K = 576, 1152) and bundles, at stride 1 and 2."""
    if fastconv._C.cpu_isas().index(isa) > fastconv._C.cpu_isas().index(fastconv._C.best_cpu_isa()):
        pytest.skip(f"this CPU cannot run {isa} kernels (best: {fastconv._C.best_cpu_isa()})")
    shapes = CONV_SHAPES + [((3, 64, 15, 13), (40, 64, 3, 3), 2, 1, 1, 1), ((2, 128, 7, 7), (20, 128, 3, 3), 1, 1, 1, 1),
                            ((1, 16, 30, 70), (8, 16, 3, 3), 1, 1, 2, 1)]
    before = fastconv._C.cpu_isa()
    fastconv._C.set_cpu_isa(isa)
    try:
        for x_shape, w_shape, s, p, d, g in shapes:
            gen = torch.Generator().manual_seed(3)
            x = torch.randn(x_shape, generator=gen).bfloat16()
            w = (torch.randn(w_shape, generator=gen) / w_shape[1] ** 0.5).bfloat16()
            b = torch.randn(w_shape[0], generator=gen).bfloat16()
            ours = F.conv2d(x, w, b, s, p, d, g, algorithm="im2col")
            ref = TF.conv2d(x.double(), w.double(), b.double(), s, p, d, g)
            check_rule(ours, TF.conv2d(x, w, b, s, p, d, g), ref, f"{isa} {x_shape} {w_shape} s={s} d={d} g={g}")
    finally:
        fastconv._C.set_cpu_isa(before)


def test_half_winograd_transforms_are_keyed_on_the_callers_weight():
    """A bfloat16 weight that does not require grad (an input gradient through a frozen layer): both
    Winograd transforms, forward and grad_input, are made once and then found in the cache (the
    backward pass once transformed a widened copy, a new entry every call)."""
    gen = torch.Generator().manual_seed(9)
    w = (torch.randn(64, 64, 3, 3, generator=gen) / 24).bfloat16()
    x = torch.randn(1, 64, 8, 8, generator=gen).bfloat16().requires_grad_()
    fastconv._C.weight_cache_clear()
    for _ in range(3):
        x.grad = None
        F.conv2d(x, w, padding=1, algorithm="winograd").float().sum().backward()
    stats = fastconv._C.weight_cache_stats()
    assert (stats["entries"], stats["misses"], stats["hits"]) == (2, 2, 4), stats
    xt = x.detach().clone().requires_grad_()
    TF.conv2d(xt, w, padding=1).float().sum().backward()
    ref_x = x.detach().double().requires_grad_()
    TF.conv2d(ref_x, w.double(), padding=1).sum().backward()
    check_rule(x.grad, xt.grad, ref_x.grad, "grad_input through the cached transform")


def test_autocast_weight_cast_is_kept_and_never_stale():
    """Under autocast a weight that does not require grad is cast once and kept (so its Winograd
    transform is cached too); writing to the float32 weight in place must show in the next call."""
    torch.manual_seed(2)
    conv = fastconv.nn.Conv2d(64, 64, 3, padding=1, algorithm="winograd").eval().requires_grad_(False)
    x = torch.randn(1, 64, 8, 8)
    fastconv._C.weight_cache_clear()
    for step in range(3):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            ours = conv(x)
            hits = fastconv._C.weight_cache_stats()["hits"]
            assert conv(x).equal(ours)   # again, unchanged: both the cast and its transform come from the cache
            assert fastconv._C.weight_cache_stats()["hits"] == hits + 2
        theirs = TF.conv2d(x.bfloat16(), conv.weight.bfloat16(), conv.bias.bfloat16(), padding=1)
        ref = TF.conv2d(x.bfloat16().double(), conv.weight.bfloat16().double(), conv.bias.bfloat16().double(),
                        padding=1)
        check_rule(ours, theirs, ref, f"step {step}")
        conv.weight.mul_(-0.5)   # in place, between calls


def test_converted_resnet18_under_autocast_matches_torch():
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    ref_model = torchvision.models.resnet18(num_classes=10).eval()
    ours_model = fastconv.convert(torchvision.models.resnet18(num_classes=10)).eval()
    ours_model.load_state_dict(ref_model.state_dict())
    m64 = torchvision.models.resnet18(num_classes=10).double().eval()
    m64.load_state_dict(ref_model.state_dict())
    x = torch.randn(2, 3, 48, 48)
    with torch.no_grad():
        ref = m64(x.double())
        with torch.autocast("cpu", dtype=torch.bfloat16):
            theirs, ours = ref_model(x), ours_model(x)
    # whole-network bf16 errors are chaotic in detail (a rounding flips a ReLU): 2x plus a margin of
    # one more bf16 ulp of the output scale
    assert ours.dtype == theirs.dtype == torch.bfloat16
    scale = ref.abs().max().item()
    assert error(ours, ref) <= 2 * error(theirs, ref) + 2 * torch.finfo(torch.bfloat16).eps * scale


def test_training_step_under_autocast_keeps_float32_master_weights():
    torch.manual_seed(0)
    model = fastconv.convert(torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8),
                                                 torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(8 * 36, 4)))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(4, 3, 6, 6), torch.tensor([0, 1, 2, 3])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x)
        loss = TF.cross_entropy(out.float(), y)
    assert out.dtype == torch.bfloat16
    loss.backward()
    for p in model.parameters():
        assert p.dtype == torch.float32 and p.grad is not None and p.grad.dtype == torch.float32
        assert torch.isfinite(p.grad).all()
    opt.step()


def _rnn_pair(cls, dtype, **kw):
    """A torch RNN module in `dtype`, fastconv's converted copy, and a float64 copy (the reference)."""
    torch.manual_seed(4)
    theirs = cls(**kw).to(dtype)
    return theirs, fastconv.convert(copy.deepcopy(theirs)), copy.deepcopy(theirs).double()


@pytest.mark.parametrize("dtype", HALF, ids=str)
@pytest.mark.parametrize("kind", ["lstm", "lstm_proj", "gru"])
def test_half_rnns_forward_backward_by_the_rule(kind, dtype):
    """float16/bfloat16 LSTM (with and without projection, bidirectional, two layers) and GRU: every
    output and every gradient by the rule, in torch's dtypes."""
    cls = torch.nn.GRU if kind == "gru" else torch.nn.LSTM
    kw = dict(input_size=7, hidden_size=12, num_layers=2, bidirectional=True)
    if kind == "lstm_proj":
        kw["proj_size"] = 5
    theirs, ours, ref = _rnn_pair(cls, dtype, **kw)
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(9, 3, 7, generator=gen).to(dtype)
    xs = [x.clone().requires_grad_() for _ in range(2)] + [x.double().requires_grad_()]
    outs = [m(xi) for m, xi in zip((ours, theirs, ref), xs)]
    flat = [[o[0], *(o[1] if kind != "gru" else (o[1],))] for o in outs]
    for i, (a, b, r) in enumerate(zip(*flat)):
        check_rule(a, b, r, f"{kind} {dtype} output {i}")
    gy = torch.randn(flat[2][0].shape, generator=gen).to(dtype)
    for f, g in zip(flat, (gy, gy, gy.double())):
        f[0].backward(g)
    check_rule(xs[0].grad, xs[1].grad, xs[2].grad, f"{kind} {dtype} grad input")
    for (name, p), q, r in zip(ours.named_parameters(), theirs.parameters(), ref.parameters()):
        check_rule(p.grad, q.grad, r.grad, f"{kind} {dtype} grad {name}")


@pytest.mark.parametrize("dtype", HALF, ids=str)
def test_half_cells_by_the_rule(dtype):
    torch.manual_seed(6)
    x = torch.randn(4, 7).to(dtype)
    for cls in (torch.nn.LSTMCell, torch.nn.GRUCell):
        theirs = cls(7, 12).to(dtype)
        ours, ref = fastconv.convert(copy.deepcopy(theirs)), copy.deepcopy(theirs).double()
        o, t, r = ours(x), theirs(x), ref(x.double())
        for a, b, c in zip(*(v if isinstance(v, tuple) else (v,) for v in (o, t, r))):
            check_rule(a, b, c, f"{cls.__name__} {dtype}")


def test_half_rnn_refuses_mixed_dtypes():
    w = torch.nn.LSTM(7, 12).bfloat16()._flat_weights
    h = torch.zeros(1, 2, 12)   # float32 states beside bfloat16 input and weights
    with pytest.raises(RuntimeError, match="fastconv.lstm: expected every tensor in torch.bfloat16"):
        F.lstm(torch.randn(3, 2, 7).bfloat16(), (h, h), list(w))


def test_rnns_under_autocast_as_torch():
    """torch's policy: an LSTM runs in the autocast dtype (inputs, states and weights cast, all three
    results in it), a GRU and the cells stay in float32."""
    theirs, ours, ref = _rnn_pair(torch.nn.LSTM, torch.float32, input_size=8, hidden_size=16, num_layers=2)
    x = torch.randn(5, 3, 8)
    ref_b = copy.deepcopy(theirs).bfloat16().double()   # the reference: bfloat16-rounded weights and input
    with torch.autocast("cpu", dtype=torch.bfloat16):
        o = ours(x)
        try:
            t = theirs(x)
        except RuntimeError as e:   # AVX2-only CPUs: torch's oneDNN LSTM has no bfloat16 primitive there
            if "primitive descriptor" not in str(e):
                raise
            t = None
        for ours_gru, theirs_gru in ((fastconv.nn.GRU(8, 16), torch.nn.GRU(8, 16)),):
            assert ours_gru(x)[0].dtype == theirs_gru(x)[0].dtype == torch.float32
        for ours_c, theirs_c in ((fastconv.nn.LSTMCell(8, 16), torch.nn.LSTMCell(8, 16)),
                                 (fastconv.nn.GRUCell(8, 16), torch.nn.GRUCell(8, 16))):
            oc, tc = ours_c(x[0]), theirs_c(x[0])
            assert (oc[0] if isinstance(oc, tuple) else oc).dtype == (tc[0] if isinstance(tc, tuple) else tc).dtype
    r = ref_b(x.bfloat16().double())
    if t is None:   # torch's policy: bfloat16-rounded weights and input, results rounded to bfloat16
        with torch.no_grad():
            out, (h, c) = copy.deepcopy(theirs).bfloat16().float()(x.bfloat16().float())
        t = (out.bfloat16(), (h.bfloat16(), c.bfloat16()))
    for a, b, c in zip((o[0], *o[1]), (t[0], *t[1]), (r[0], *r[1])):
        check_rule(a, b, c, "LSTM under autocast")


@pytest.mark.parametrize("device", ["cuda"], indirect=True)
@pytest.mark.parametrize("dtype", HALF, ids=str)
def test_conv2d_half_on_cuda_by_the_rule(device, dtype):
    """CUDA half precision: the forward (auto) on the tensor cores from compute capability 8.0
    (test_conv2d_tensor_cores.py), the gradients in float32 inside; forward, gradients and autocast by
    the rule (written without a GPU: skipped here, never run yet)."""
    gen = torch.Generator().manual_seed(8)
    x = torch.randn(2, 6, 9, 9, generator=gen).to(dtype)
    w = (torch.randn(8, 6, 3, 3, generator=gen) / 6 ** 0.5).to(dtype)
    b = torch.randn(8, generator=gen).to(dtype)
    ours_in = [t.to(device).requires_grad_() for t in (x, w, b)]
    ref_in = [t.double().requires_grad_() for t in (x, w, b)]
    theirs_in = [t.clone().requires_grad_() for t in (x, w, b)]   # torch's own, on the CPU
    ours = F.conv2d(*ours_in, padding=1)
    theirs, ref = TF.conv2d(*theirs_in, padding=1), TF.conv2d(*ref_in, padding=1)
    check_rule(ours.cpu(), theirs, ref, f"cuda {dtype} forward")
    gy = torch.randn(ref.shape, generator=gen).to(dtype)
    ours.backward(gy.to(device))
    theirs.backward(gy)
    ref.backward(gy.double())
    for name, o, t, r in zip(("input", "weight", "bias"), ours_in, theirs_in, ref_in):
        check_rule(o.grad.cpu(), t.grad, r.grad, f"cuda {dtype} grad {name}")
    conv = fastconv.nn.Conv2d(6, 8, 3, padding=1).to(device)
    with torch.autocast("cuda", dtype=dtype):
        assert conv(x.float().to(device)).dtype == dtype


def test_mixed_precision_example_trains_beside_float32(tmp_path):
    """examples/mixed_precision_train.py: both runs learn (the loss falls), the autocast run's curve
    follows the float32 one (same data order and initial weights), and the figure is written."""
    pytest.importorskip("sklearn")
    pytest.importorskip("matplotlib")
    import importlib.util
    import pathlib
    path = pathlib.Path(__file__).resolve().parent.parent / "examples" / "mixed_precision_train.py"
    spec = importlib.util.spec_from_file_location("mixed_precision_train", path)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    png = tmp_path / "loss.png"
    runs = example.main(["--epochs", "7", "--png", str(png)])
    (fp32_loss, _), (amp_loss, amp_acc) = runs["fp32"], runs["autocast"]
    assert fp32_loss[-1] < 0.5 * fp32_loss[0] and amp_loss[-1] < 0.5 * amp_loss[0]
    assert abs(amp_loss[0] - fp32_loss[0]) < 0.01 * fp32_loss[0]   # the first epoch: rounding-level apart
    assert amp_acc[-1] > 50.0
    assert png.stat().st_size > 0
