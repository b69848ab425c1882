"""fastconv batch_norm (+ fused ReLU) against torch.nn.functional.batch_norm (followed by relu):
forward, running statistics over several steps and gradients on awkward shapes and layouts, every CPU
SIMD variant, CUDA when present; accuracy on large-mean data; gradcheck; the module against
torch.nn.BatchNorm2d for every constructor option; bad inputs; double backward."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as TF

import fastconv
import fastconv.functional as F

# (shape, memory format): 2-D to 5-D, C = 1, N = 1 with spatial > 1, primes, channels-last.
CASES = [
    ((6, 3), torch.contiguous_format),
    ((5, 1), torch.contiguous_format),
    ((3, 4, 10), torch.contiguous_format),
    ((4, 5, 7, 9), torch.contiguous_format),
    ((4, 5, 7, 9), torch.channels_last),
    ((1, 3, 5, 5), torch.contiguous_format),
    ((8, 1, 6, 6), torch.channels_last),
    ((3, 17, 13, 11), torch.contiguous_format),
    ((2, 70, 5, 3), torch.channels_last),
    ((2, 3, 4, 5, 6), torch.contiguous_format),
    ((2, 3, 4, 5, 6), torch.channels_last_3d),
]


def _ids(cases):
    return [f"{'x'.join(map(str, s))}-{str(mf).split('.')[-1]}" for s, mf in cases]


# The fused activations: none, ReLU, and ReLU clamped at a bound (a `relu` of 0.75 below is
# relu=True, relu_max=0.75, low enough that many values reach it).
ACTS = (False, True, 0.75)


def act_kwargs(relu):
    """fastconv's keywords for a `relu` of ACTS."""
    return {"relu": relu is not False, "relu_max": None if isinstance(relu, bool) else float(relu)}


def reference(x, rm, rv, w, b, training, momentum, eps, relu):
    y = TF.batch_norm(x, rm, rv, w, b, training, momentum, eps)
    if isinstance(relu, bool):
        return torch.relu(y) if relu else y
    return TF.hardtanh(y, 0.0, relu)


def run_steps(device, dtype, shape, mf, *, training, relu, affine, track, steps=3, seed=0, offset=0.0):
    """Several forward/backward steps of fastconv and torch on the same data; returns both sides'
    outputs, gradients and running statistics."""
    g = torch.Generator().manual_seed(seed)
    C = shape[1]
    pdtype = torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype
    w0 = torch.randn(C, generator=g, dtype=torch.float64) if affine else None
    b0 = torch.randn(C, generator=g, dtype=torch.float64) if affine else None
    rm0 = torch.randn(C, generator=g, dtype=torch.float64) + offset
    rv0 = torch.rand(C, generator=g, dtype=torch.float64) + 0.5
    sides = {}
    for name, fn in (("ours", F.batch_norm), ("torch", reference)):
        w = w0.to(device, pdtype).requires_grad_(True) if affine else None
        b = b0.to(device, pdtype).requires_grad_(True) if affine else None
        rm = rm0.to(device, pdtype) if (track or not training) else None
        rv = rv0.to(device, pdtype) if (track or not training) else None
        outs, grads = [], []
        gs = torch.Generator().manual_seed(seed + 1)
        for _ in range(steps):
            x = (torch.randn(shape, generator=gs, dtype=torch.float64) * 2 + offset).to(device, dtype)
            x = x.contiguous(memory_format=mf).requires_grad_(True)
            go = torch.randn(shape, generator=gs, dtype=torch.float64).to(device, dtype)
            if fn is F.batch_norm:
                y = fn(x, rm, rv, w, b, training, 0.1, 1e-5, **act_kwargs(relu))
            else:
                y = fn(x, rm, rv, w, b, training, 0.1, 1e-5, relu)
            y.backward(go)
            outs.append(y.detach())
            grads.append([x.grad] + ([w.grad.clone(), b.grad.clone()] if affine else []))
            if affine:
                w.grad, b.grad = None, None
        sides[name] = (outs, grads, rm, rv)
    return sides


def assert_sides_close(sides, dtype):
    (o1, g1, rm1, rv1), (o2, g2, rm2, rv2) = sides["ours"], sides["torch"]
    tol = {} if dtype in (torch.float32, torch.float64) else {"atol": 2e-2, "rtol": 2e-2}
    for a, b in zip(o1, o2):
        assert a.stride() == b.stride(), "output memory format differs from torch's"
        torch.testing.assert_close(a, b, **tol)
    for ga, gb in zip(g1, g2):
        assert ga[0].stride() == gb[0].stride(), "grad_input memory format differs from torch's"
        for a, b in zip(ga, gb):
            torch.testing.assert_close(a, b, **({"atol": 1e-4, "rtol": 1e-4} if not tol else tol))
    if rm1 is not None:
        torch.testing.assert_close(rm1, rm2)
        torch.testing.assert_close(rv1, rv2)


@pytest.mark.parametrize("case", CASES, ids=_ids(CASES))
def test_grid_cpu_isas(cpu_isa_native, case):
    shape, mf = case
    for training, relu, affine in itertools.product((True, False), ACTS, (True, False)):
        assert_sides_close(run_steps("cpu", torch.float32, shape, mf, training=training, relu=relu, affine=affine,
                                     track=True), torch.float32)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("case", CASES[2:5] + CASES[-1:], ids=_ids(CASES[2:5] + CASES[-1:]))
def test_grid_dtypes(device, dtype, case):
    shape, mf = case
    for training, relu in itertools.product((True, False), ACTS):
        assert_sides_close(run_steps(device, dtype, shape, mf, training=training, relu=relu, affine=True,
                                     track=True), dtype)


def test_no_running_stats_in_training(device):
    for relu in ACTS:
        assert_sides_close(run_steps(device, torch.float32, (4, 5, 7, 9), torch.channels_last, training=True,
                                     relu=relu, affine=True, track=False), torch.float32)


def test_non_contiguous_input(device):
    base = torch.randn(4, 10, 9, 14, device=device)
    for x in (base[:, ::2], base[..., ::2], base.transpose(2, 3)):
        rm, rv = torch.zeros(x.shape[1], device=device), torch.ones(x.shape[1], device=device)
        rm2, rv2 = rm.clone(), rv.clone()
        torch.testing.assert_close(F.batch_norm(x, rm, rv, training=True, relu=True),
                                   torch.relu(TF.batch_norm(x, rm2, rv2, training=True)))
        torch.testing.assert_close(rv, rv2)


@pytest.mark.parametrize("dtype,stat_dtype", [(torch.float32, torch.float32), (torch.float64, torch.float64),
                                              (torch.bfloat16, torch.float32),
                                              (torch.float16, torch.float16)])
def test_op_updates_running_stats_as_aten(device, dtype, stat_dtype):
    """The op itself updates the running statistics in training (strided ones in place through their
    stride), as aten::native_batch_norm does; not in inference, nor for an empty input."""
    x = (torch.randn(6, 5, 4, 3, device=device, dtype=torch.float64) * 3 + 2).to(dtype)
    base = torch.randn(2, 5, device=device, dtype=torch.float64).to(stat_dtype)
    base[1] = base[1].abs() + 0.5
    rm, rv = base[0].clone(), base[1].clone()
    rm_s, rv_s = (torch.zeros(5, 2, device=device, dtype=stat_dtype) for _ in range(2))
    rm_s[:, 0], rv_s[:, 0] = rm, rv
    ours_m, ours_v = rm_s[:, 0], rv_s[:, 0]   # stride 2
    tm, tv = rm.clone(), rv.clone()
    torch.ops.fastconv.batch_norm(x, None, None, ours_m, ours_v, True, 0.3, 1e-5, False)
    torch.ops.aten.native_batch_norm(x, None, None, tm, tv, True, 0.3, 1e-5)
    tol = {"atol": 1e-3, "rtol": 1e-3} if stat_dtype == torch.float16 else {}
    torch.testing.assert_close(ours_m, tm, **tol)
    torch.testing.assert_close(ours_v, tv, **tol)
    assert not torch.equal(ours_m, rm) and not torch.equal(ours_v, rv)
    assert torch.equal(rm_s[:, 1], torch.zeros(5, device=device, dtype=stat_dtype))   # the other column
    before = (ours_m.clone(), ours_v.clone())
    torch.ops.fastconv.batch_norm(x, None, None, ours_m, ours_v, False, 0.3, 1e-5, False)
    torch.ops.fastconv.batch_norm(x[:0], None, None, ours_m, ours_v, True, 0.3, 1e-5, False)
    assert torch.equal(ours_m, before[0]) and torch.equal(ours_v, before[1])


@pytest.mark.parametrize("mf", [torch.contiguous_format, torch.channels_last], ids=["nchw", "channels_last"])
def test_large_mean_accuracy(device, mf):
    """x + 1000 with unit spread: error against a float64 reference at most twice torch's, forward and
    backward (the naive E[x^2] - E[x]^2 would lose every digit here)."""
    g = torch.Generator().manual_seed(3)
    x64 = (torch.randn(8, 6, 12, 12, generator=g, dtype=torch.float64) + 1000).to(device)
    go64 = torch.randn(8, 6, 12, 12, generator=g, dtype=torch.float64).to(device)
    w64 = torch.rand(6, generator=g, dtype=torch.float64).to(device) + 0.5
    results = {}
    for name, fn, dtype in (("ref", reference, torch.float64), ("torch", reference, torch.float32),
                            ("ours", None, torch.float32)):
        x = x64.detach().to(dtype).contiguous(memory_format=mf).clone().requires_grad_(True)
        w = w64.to(dtype)
        if fn is None:
            y = F.batch_norm(x, None, None, w, None, True, relu=True)
        else:
            y = fn(x, None, None, w, None, True, 0.1, 1e-5, True)
        y.backward(go64.to(dtype))
        results[name] = (y.detach().double(), x.grad.double())
    for i, what in enumerate(("output", "grad_input")):
        err_ours = (results["ours"][i] - results["ref"][i]).abs().max().item()
        err_torch = (results["torch"][i] - results["ref"][i]).abs().max().item()
        assert err_ours <= 2 * err_torch + 1e-5, f"{what}: error {err_ours} vs torch's {err_torch}"


@pytest.mark.parametrize("check", [torch.autograd.gradcheck, torch.autograd.gradgradcheck],
                         ids=["gradcheck", "gradgradcheck"])
@pytest.mark.parametrize("relu", ACTS)
@pytest.mark.parametrize("training", [True, False])
def test_gradcheck_float64(device, training, relu, check):
    x = torch.randn(3, 4, 5, 2, dtype=torch.float64, device=device, requires_grad=True)
    w = torch.randn(4, dtype=torch.float64, device=device, requires_grad=True)
    b = torch.randn(4, dtype=torch.float64, device=device, requires_grad=True)
    rm = torch.randn(4, dtype=torch.float64, device=device)
    rv = torch.rand(4, dtype=torch.float64, device=device) + 0.5

    def f(x, w, b):
        return F.batch_norm(x, rm.clone(), rv.clone(), w, b, training, 0.1, 1e-5, **act_kwargs(relu))

    assert check(f, (x, w, b))
    x_cl = torch.randn(2, 5, 3, 3, dtype=torch.float64, device=device).contiguous(
        memory_format=torch.channels_last).requires_grad_(True)
    assert check(lambda t: F.batch_norm(t, None, None, None, None, True, **act_kwargs(relu)), (x_cl,))


class _HardtanhByDefinition(torch.autograd.Function):
    """hardtanh(y, 0, hi) with hardtanh_backward's rule as torch writes it (grad, or 0 where y <= 0 or
    y >= hi: a NaN y passes it), which its scalar CPU loop and its CUDA kernel follow; its vectorised
    CPU loop computes (y > 0) & (y < hi) instead and zeroes NaN lanes, so torch's own CPU result for a
    NaN depends on where in the tensor it sits (checked: torch 2.14, AVX2)."""

    @staticmethod
    def forward(ctx, y, hi):
        ctx.save_for_backward(y)
        ctx.hi = hi
        return TF.hardtanh(y, 0.0, hi)

    @staticmethod
    def backward(ctx, grad):
        (y,) = ctx.saved_tensors
        return grad.masked_fill((y <= 0) | (y >= ctx.hi), 0), None


def reference_nan_rule(x, rm, rv, w, b, training, momentum, eps, relu):
    if isinstance(relu, bool):
        return reference(x, rm, rv, w, b, training, momentum, eps, relu)
    return _HardtanhByDefinition.apply(TF.batch_norm(x, rm, rv, w, b, training, momentum, eps), relu)


@pytest.mark.parametrize("relu", ACTS)
@pytest.mark.parametrize("mf", [torch.contiguous_format, torch.channels_last], ids=["nchw", "channels_last"])
def test_non_finite_input_as_torch(device, mf, relu):
    """NaN and infinite inputs: in inference the gradient of every other value stays finite and a
    non-finite value's own gradient is torch's (dy * scale: x does not enter; a NaN output passes the
    activation's gradient, as threshold_backward and hardtanh_backward's rule do); in training the channel
    (and its running statistics) turns NaN on both sides."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(3, 4, 5, 6, generator=g).to(device).contiguous(memory_format=mf)
    x[0, 1, 2, 3], x[1, 1, 0, 0], x[2, 3, 4, 5] = float("nan"), float("inf"), -float("inf")
    go = torch.randn(x.shape, generator=g).to(device)
    w, b = torch.randn(4, generator=g).to(device), torch.randn(4, generator=g).to(device)
    rm, rv = torch.randn(4, generator=g).to(device), (torch.rand(4, generator=g) + 0.5).to(device)
    for training in (False, True):
        sides = []
        for fn in (F.batch_norm, reference_nan_rule):
            xs, ws, bs = (t.clone().requires_grad_(True) for t in (x, w, b))
            kw = act_kwargs(relu) if fn is F.batch_norm else {}
            args = () if fn is F.batch_norm else (relu,)
            rms, rvs = rm.clone(), rv.clone()
            y = fn(xs, rms, rvs, ws, bs, training, 0.1, 1e-5, *args, **kw)
            y.backward(go)
            sides.append((y.detach(), xs.grad, ws.grad, bs.grad, rms, rvs))
        for a, r in zip(*sides):
            torch.testing.assert_close(a, r, equal_nan=True, atol=1e-5, rtol=1e-5)
        if not training:
            assert sides[0][1].isfinite().all()   # torch's too: checked equal above


def test_empty_batch(device):
    x = torch.randn(0, 3, 4, 4, device=device, requires_grad=True)
    rm, rv = torch.zeros(3, device=device), torch.ones(3, device=device)
    w = torch.ones(3, device=device, requires_grad=True)
    y = F.batch_norm(x, rm, rv, w, None, True, relu=True)
    assert y.shape == x.shape
    y.sum().backward()
    assert x.grad.shape == x.shape and w.grad.shape == (3,)
    torch.testing.assert_close(rm, torch.zeros(3, device=device))   # unchanged, as torch leaves them


def test_single_value_per_channel_in_training(device):
    with pytest.raises(ValueError, match="Expected more than 1 value per channel when training"):
        F.batch_norm(torch.randn(1, 3, device=device), None, None, training=True)
    with pytest.raises(RuntimeError, match="Expected more than 1 value per channel when training"):
        torch.ops.fastconv.batch_norm(torch.randn(1, 3, 1, 1, device=device), None, None, None, None, True,
                                      0.1, 1e-5, False)
    F.batch_norm(torch.randn(1, 3, device=device), torch.zeros(3, device=device), torch.ones(3, device=device))


def test_caller_data_untouched(device):
    x = torch.randn(4, 3, 5, 5, device=device)
    w, b = torch.randn(3, device=device), torch.randn(3, device=device)
    rm, rv = torch.randn(3, device=device), torch.rand(3, device=device) + 1
    copies = [t.clone() for t in (x, w, b, rm, rv)]
    F.batch_norm(x, rm, rv, w, b, training=False, relu=True)
    for t, c in zip((x, w, b, rm, rv), copies):
        assert torch.equal(t, c)
    F.batch_norm(x, rm, rv, w, b, training=True, relu=True)
    for t, c in zip((x, w, b), copies):
        assert torch.equal(t, c)
    assert not torch.equal(rm, copies[3])   # the running statistics are the documented exception


def test_torch_compile_fullgraph(device):
    x = torch.randn(4, 3, 6, 6, device=device, requires_grad=True)
    rm, rv = torch.zeros(3, device=device), torch.ones(3, device=device)
    w = torch.randn(3, device=device, requires_grad=True)

    def f(t, w):
        return F.batch_norm(t, rm, rv, w, None, True, relu=True).sum()

    compiled = torch.compile(f, fullgraph=True)
    torch.testing.assert_close(compiled(x, w), f(x, w))
    g_c = torch.autograd.grad(compiled(x, w), (x, w))
    g_e = torch.autograd.grad(f(x, w), (x, w))
    for a, b in zip(g_c, g_e):
        torch.testing.assert_close(a, b)


MODULE_OPTIONS = [
    dict(), dict(momentum=None), dict(affine=False), dict(track_running_stats=False), dict(eps=1e-3, momentum=0.3),
    dict(affine=False, track_running_stats=False), dict(bias=False), dict(bias=False, momentum=None),
]


@pytest.mark.parametrize("relu", [False, True, 6.0, 0.75])
@pytest.mark.parametrize("options", MODULE_OPTIONS, ids=[str(o) or "defaults" for o in MODULE_OPTIONS])
def test_module_matches_torch(device, options, relu):
    torch.manual_seed(0)
    ours = fastconv.nn.BatchNorm2d(5, **act_kwargs(relu), **options).to(device)
    ref = torch.nn.BatchNorm2d(5, **options).to(device)
    assert ours.state_dict().keys() == ref.state_dict().keys()
    if ours.affine:
        with torch.no_grad():
            for p in (ref.weight, ref.bias):
                if p is not None:   # bias=False: a weight without a shift
                    p.uniform_(-1, 1)
    ours.load_state_dict(ref.state_dict())
    for mode in ("train", "train", "train", "eval", "train", "eval"):
        ours.train(mode == "train")
        ref.train(mode == "train")
        x = torch.randn(4, 5, 6, 7, device=device)
        xa, xb = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
        ya = ours(xa)
        yb = ref(xb)
        yb = (torch.relu(yb) if relu else yb) if isinstance(relu, bool) else TF.hardtanh(yb, 0.0, relu)
        torch.testing.assert_close(ya, yb)
        go = torch.randn_like(x)
        ya.backward(go)
        yb.backward(go)
        torch.testing.assert_close(xa.grad, xb.grad, atol=1e-4, rtol=1e-4)
        if ours.affine:
            torch.testing.assert_close(ours.weight.grad, ref.weight.grad, atol=1e-4, rtol=1e-4)
            if ours.bias is not None:
                torch.testing.assert_close(ours.bias.grad, ref.bias.grad, atol=1e-4, rtol=1e-4)
            assert (ours.bias is None) == (ref.bias is None)
        for (ka, va), (kb, vb) in zip(ours.state_dict().items(), ref.state_dict().items()):
            assert ka == kb
            torch.testing.assert_close(va, vb, msg=f"{ka} after {mode}")
    assert ("relu=True" in repr(ours)) == (relu is not False)
    assert (f"relu_max={relu}" in repr(ours)) == (not isinstance(relu, bool))
    assert repr(ours).replace(", relu=True", "").replace(f", relu_max={relu}", "") == repr(ref)
    if options.get("bias") is False:   # convert keeps the missing shift
        twin = fastconv.convert(ref)
        assert type(twin) is fastconv.nn.BatchNorm2d and twin.bias is None and twin.weight is not None


def test_module_state_dict_round_trip_with_torch():
    ref = torch.nn.BatchNorm2d(4)
    ref(torch.randn(3, 4, 5, 5))
    ours = fastconv.nn.BatchNorm2d(4)
    ours.load_state_dict(ref.state_dict())
    back = torch.nn.BatchNorm2d(4)
    back.load_state_dict(ours.state_dict())
    for k, v in ref.state_dict().items():
        assert torch.equal(back.state_dict()[k], v)
    fresh_ours, fresh_ref = fastconv.nn.BatchNorm2d(4), torch.nn.BatchNorm2d(4)
    for k, v in fresh_ref.state_dict().items():   # the same initialisation
        assert torch.equal(fresh_ours.state_dict()[k], v)


def _bad(device):
    x = torch.randn(2, 3, 4, 4, device=device)
    return [
        ("running_mean of the wrong size", lambda: F.batch_norm(x, torch.zeros(4, device=device),
                                                                torch.ones(3, device=device)),
         ["running_mean", "3 elements"]),
        ("weight of the wrong size", lambda: F.batch_norm(x, None, None, torch.ones(2, device=device), training=True),
         ["weight", "3 elements"]),
        ("2-D weight", lambda: F.batch_norm(x, None, None, torch.ones(3, 1, device=device), training=True),
         ["weight", "1-D"]),
        ("integer input", lambda: F.batch_norm(x.long(), None, None, training=True), ["float32", "Long"]),
        ("1-D input", lambda: F.batch_norm(torch.randn(5, device=device), None, None, training=True),
         ["at least 2 dimensions"]),
        ("eval without running stats", lambda: F.batch_norm(x, None, None, training=False),
         ["running_mean and running_var"]),
        ("float64 weight with float32 input", lambda: F.batch_norm(x, None, None, torch.ones(3, device=device,
                                                                                             dtype=torch.float64),
                                                                   training=True), ["weight", "dtype"]),
        ("relu_max without relu", lambda: F.batch_norm(x, None, None, training=True, relu_max=6.0),
         ["relu_max", "relu=True", "relu=False"]),
        ("negative relu_max", lambda: F.batch_norm(x, None, None, training=True, relu=True, relu_max=-1.0),
         ["relu_max >= 0", "-1"]),
        ("running_var requiring grad (as torch, in grad mode)",
         lambda: F.batch_norm(x, torch.zeros(3, device=device),
                              torch.ones(3, device=device, requires_grad=True)),
         ["running_var", "not to require grad"]),
    ]


def test_running_stats_requiring_grad_only_refused_in_grad_mode(device):
    x = torch.randn(2, 3, 4, 4, device=device)
    for training in (True, False):
        rm = torch.zeros(3, device=device, requires_grad=True)
        with pytest.raises(RuntimeError, match="running_mean not to require grad"):
            F.batch_norm(x, rm, torch.ones(3, device=device), training=training)
        with pytest.raises(RuntimeError, match="not differentiable"):   # torch's own refusal, for the record
            TF.batch_norm(x, rm, torch.ones(3, device=device), training=training)
        with torch.no_grad():   # where torch allows it, so do we
            F.batch_norm(x, rm, torch.ones(3, device=device), training=training)
            TF.batch_norm(x, rm, torch.ones(3, device=device), training=training)


@pytest.mark.parametrize("index", range(10))
def test_bad_input_raises_clear_error(device, index):
    name, call, words = _bad(device)[index]
    with pytest.raises(RuntimeError) as info:
        call()
    msg = str(info.value)
    assert "fastconv::batch_norm" in msg, msg
    for w in words:
        assert w in msg, f"{name}: {w!r} missing from: {msg}"


def test_bad_activation_refused_by_fake_kernel_and_module():
    x = torch.empty(2, 3, 4, 4, device="meta")
    for relu, relu_max, words in ((False, 6.0, "needs relu=True"), (True, -0.5, "relu_max >= 0")):
        with pytest.raises(RuntimeError, match=words):
            torch.ops.fastconv.batch_norm(x, None, None, None, None, True, 0.1, 1e-5, relu, relu_max)
        with pytest.raises(RuntimeError, match=words):
            torch.ops.fastconv.batch_norm_backward(x, x, None, None, x.new_empty(3), x.new_empty(3), True, relu,
                                                   False, relu_max)
        with pytest.raises(ValueError, match="relu_max clamps the fused ReLU"):
            fastconv.nn.BatchNorm2d(3, relu=relu, relu_max=relu_max)


def _half_bound_cases(dtype):
    """(input value, bias, activation) where the output in `dtype` lands on a bound only after rounding:
    inference with mean 0, invstd about 1 and weight 1, so y = x + bias in float32."""
    six = torch.tensor(6.0, dtype=dtype).item()
    cases = [(six, -d, 6.0) for d in (0.0, 1e-3, 3e-3, 1e-2, 2e-2)]   # just below 6: rounds to 6 or not
    tiny = 2.0 ** -25 if dtype == torch.float16 else 2.0 ** -134     # half of the least subnormal: rounds to 0
    one = torch.tensor(1e-3, dtype=dtype).item()
    cases += [(one, -one + f * tiny, act) for f in (0.5, 1.0, 1.5, 3.0) for act in (True, 6.0)]
    return cases


def _check_half_bounds(device, dtype):
    """The activation's gradient is judged on the output rounded to its dtype, as torch's (which
    applies ReLU / ReLU6 to the rounded batch-norm output): y just below 6 that rounds to 6 stops it,
    a positive y that rounds to 0 too."""
    for value, bias, act in _half_bound_cases(dtype):
        x = torch.full((2, 3, 4, 4), value, dtype=dtype, device=device)
        rm, rv = torch.zeros(3, device=device), torch.full((3,), 1 - 1e-5, device=device)
        w, b = torch.ones(3, device=device), torch.full((3,), bias, device=device)
        xa, xb = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
        ya = F.batch_norm(xa, rm, rv, w, b, False, 0.1, 1e-5, **act_kwargs(act))
        yb = reference(xb, rm, rv, w, b, False, 0.1, 1e-5, act)
        ya.backward(torch.ones_like(x))
        yb.backward(torch.ones_like(x))
        assert torch.equal(ya, yb), (value, bias, act)
        assert torch.equal(xa.grad, xb.grad), (value, bias, act, ya.flatten()[0].item())


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_half_activation_gradient_judged_on_rounded_output(device, dtype):
    _check_half_bounds(device, dtype)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_half_activation_bounds_every_isa(cpu_isa_native, dtype):
    _check_half_bounds("cpu", dtype)


@pytest.mark.parametrize("relu", ACTS)
@pytest.mark.parametrize("training", [True, False])
def test_double_backward_matches_torch(device, training, relu):
    """A gradient penalty (the gradient's square, differentiated again) against torch's batch norm and
    activation, in float32; and a third derivative exists (the double backward is differentiable)."""
    g = torch.Generator().manual_seed(5)
    x0 = (torch.randn(4, 3, 6, 5, generator=g) * 2).to(device)
    w0, b0 = torch.randn(3, generator=g).to(device), torch.randn(3, generator=g).to(device)
    r0 = torch.randn(4, 3, 6, 5, generator=g).to(device)
    sides = []
    for fn in (F.batch_norm, reference):
        x, w, b = (t.clone().requires_grad_(True) for t in (x0, w0, b0))
        kw = act_kwargs(relu) if fn is F.batch_norm else {}
        args = () if fn is F.batch_norm else (relu,)
        y = fn(x, torch.zeros(3, device=device), torch.ones(3, device=device), w, b, training, 0.1, 1e-5, *args,
               **kw)
        gx, gw = torch.autograd.grad((y * r0).sum(), (x, w), create_graph=True)
        penalty = gx.square().sum() + gw.square().sum()
        sides.append(torch.autograd.grad(penalty, (x, w, b), allow_unused=True, retain_graph=True))
        if fn is F.batch_norm:   # third order: the penalty's gradient differentiated once more
            hx = torch.autograd.grad(penalty, x, create_graph=True)[0]
            assert hx.requires_grad and torch.autograd.grad(hx.square().sum(), w)[0].isfinite().all()
    for a, r in zip(*sides):   # bias: in the penalty through the mask alone, torch's zeros (or None) too
        assert (a is None) == (r is None)
        if r is not None:
            torch.testing.assert_close(a, r, rtol=2e-4, atol=2e-4)


# float16/bfloat16 runs on the float32 vector kernels in widened runs of 2048 values (AVX2 and up):
# rows shorter than a run (several to a run, 1 x 1 planes included), longer ones (S = 2600: a run and
# a piece), channels-last positions with more channels than a run (C = 2100) and fewer.
HALF_RUN_CASES = [((3, 5, 52, 50), torch.contiguous_format), ((2, 2100, 2, 2), torch.channels_last),
                  ((4, 7, 9, 9), torch.channels_last), ((16, 3, 1, 1), torch.contiguous_format), ((300, 7), None)]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_half_runs_every_isa(cpu_isa_native, dtype):
    for shape, mf in HALF_RUN_CASES:
        for training, relu in itertools.product((True, False), ACTS):
            assert_sides_close(run_steps("cpu", dtype, shape, mf or torch.contiguous_format, training=training,
                                         relu=relu, affine=True, track=True, steps=1, offset=3.0), dtype)
