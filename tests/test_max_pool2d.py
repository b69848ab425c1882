"""fastconv max_pool2d against torch.nn.functional.max_pool2d: values, indices, memory format and
gradients on a grid of awkward shapes, every CPU SIMD variant, CUDA when present; gradcheck;
torch.compile; the module; bad inputs."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as TF

import fastconv
import fastconv.functional as F

# (kernel, stride, padding, dilation): kernel 1..5 with non-square cases, stride 1..3 (and stride >
# kernel), padding up to half the kernel, dilation 1..3.
CONFIGS = [
    ((1, 1), (1, 1), (0, 0), (1, 1)),
    ((2, 2), (2, 2), (0, 0), (1, 1)),
    ((2, 2), (1, 1), (1, 1), (1, 1)),
    ((3, 3), (2, 2), (1, 1), (1, 1)),
    ((3, 3), (1, 1), (1, 1), (1, 1)),
    ((3, 3), (3, 3), (0, 0), (2, 2)),
    ((3, 3), (1, 2), (1, 0), (3, 1)),
    ((2, 3), (3, 1), (1, 1), (1, 2)),
    ((4, 4), (3, 3), (2, 2), (1, 1)),
    ((5, 5), (2, 2), (2, 2), (1, 1)),
    ((5, 3), (1, 3), (2, 1), (2, 3)),
    ((1, 3), (2, 1), (0, 1), (1, 1)),
    ((2, 2), (4, 5), (1, 0), (3, 1)),
]
SHAPES = [(1, 1, 1, 1), (2, 3, 7, 5), (1, 17, 13, 29), (3, 2, 11, 2), (2, 5, 5, 37), (1, 3, 40, 41), (1, 70, 9, 10)]


def make_input(shape, dtype, device, *, ties=True, specials=True, seed=0):
    """Small integers give many ties (checking torch's first-max rule); NaN and -inf go in too."""
    g = torch.Generator().manual_seed(seed)
    if ties:
        x = torch.randint(-4, 5, shape, generator=g).to(dtype)
    else:
        x = torch.randn(shape, generator=g, dtype=torch.float64).to(dtype)
    flat = x.view(-1)
    if specials and flat.numel() >= 8:
        pos = torch.randperm(flat.numel(), generator=g)[:4]
        flat[pos[0]] = float("nan")
        flat[pos[1]] = float("-inf")
        flat[pos[2]] = float("nan")
        flat[pos[3]] = float("inf")
    if specials and x.dim() >= 3 and x.shape[-3] > 1:
        x[..., 1, :, :] = float("-inf")       # a whole plane of -inf: indices are the first taps
    return x.to(device)


def torch_or_error(fn):
    try:
        return fn(), None
    except RuntimeError as e:
        return None, e


def check_against_torch(x, k, s, p, d, ceil, *, backward=True):
    ref, err = torch_or_error(lambda: TF.max_pool2d(x, k, s, p, d, ceil, return_indices=True))
    if err is not None:
        with pytest.raises(RuntimeError, match="fastconv::max_pool2d"):
            F.max_pool2d(x, k, s, p, d, ceil, return_indices=True)
        return False
    out, idx = F.max_pool2d(x, k, s, p, d, ceil, return_indices=True)
    ref_out, ref_idx = ref
    ctx = f"k={k} s={s} p={p} d={d} ceil={ceil} shape={tuple(x.shape)} strides={x.stride()}"
    assert out.shape == ref_out.shape, ctx
    assert out.dtype == ref_out.dtype, ctx
    assert out.stride() == ref_out.stride(), f"memory format differs: {ctx}"
    assert idx.stride() == ref_idx.stride(), f"index memory format differs: {ctx}"
    torch.testing.assert_close(out, ref_out, equal_nan=True, rtol=0, atol=0, msg=ctx)
    assert torch.equal(idx, ref_idx), f"indices differ: {ctx}"
    if backward:
        xa = x.detach().clone().requires_grad_(True)
        xb = x.detach().clone().requires_grad_(True)
        go = torch.randn(ref_out.shape, generator=torch.Generator().manual_seed(1)).to(x.device, x.dtype)
        F.max_pool2d(xa, k, s, p, d, ceil).backward(go)
        TF.max_pool2d(xb, k, s, p, d, ceil).backward(go)
        assert xa.grad.stride() == xb.grad.stride(), ctx
        if x.dtype in (torch.float32, torch.float64):
            torch.testing.assert_close(xa.grad, xb.grad, msg=ctx)
        else:
            # Half types: overlapping windows sum several gradients. fastconv sums in float32 and
            # rounds once, torch may round every step: judge both against a float64 reference and
            # require fastconv's error to be at most twice torch's (flash-attention's rule).
            x64 = x.detach().double().requires_grad_(True)
            TF.max_pool2d(x64, k, s, p, d, ceil).backward(go.double())
            err_ours = (xa.grad.double() - x64.grad).abs().max().item()
            err_torch = (xb.grad.double() - x64.grad).abs().max().item()
            assert err_ours <= 2 * err_torch + 1e-6, f"{ctx}: error {err_ours} vs torch's {err_torch}"
    return True


@pytest.mark.parametrize("memory_format", ["contiguous", "channels_last"])
def test_forward_backward_grid_cpu_isas(cpu_isa_native, memory_format):
    """Every CPU variant (scalar, AVX2, AVX-512 where available) on the whole grid, float32."""
    mf = torch.channels_last if memory_format == "channels_last" else torch.contiguous_format
    checked = 0
    for (k, s, p, d), shape, ceil in itertools.product(CONFIGS, SHAPES, (False, True)):
        x = make_input(shape, torch.float32, "cpu", seed=len(shape) + k[0]).contiguous(memory_format=mf)
        checked += check_against_torch(x, k, s, p, d, ceil, backward=(shape[1] <= 5))
    assert checked > 100, "the grid should mostly hold valid configurations"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("memory_format", ["contiguous", "channels_last"])
def test_forward_backward_grid_dtypes(device, dtype, memory_format):
    mf = torch.channels_last if memory_format == "channels_last" else torch.contiguous_format
    for (k, s, p, d), shape, ceil in itertools.product(CONFIGS[::2], SHAPES[1:4], (False, True)):
        x = make_input(shape, dtype, device).contiguous(memory_format=mf)
        check_against_torch(x, k, s, p, d, ceil)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_half_every_cpu_isa(cpu_isa_native, dtype):
    """Half precision widens into the float32 kernels by each ISA's conversions (F16C, bit operations)
    or the portable ones; values, NaN included, and indices bit for bit as torch's."""
    for mf in (torch.contiguous_format, torch.channels_last):
        for (k, s, p, d), shape in itertools.product(CONFIGS[::3], SHAPES[1:4]):
            x = make_input(shape, dtype, "cpu")
            x.view(-1)[::7] = float("nan")
            x = x.contiguous(memory_format=mf)
            check_against_torch(x, k, s, p, d, False)


def test_unbatched_input(device):
    x = make_input((5, 13, 9), torch.float32, device)
    assert check_against_torch(x, (3, 3), (2, 2), (1, 1), (1, 1), True)
    out = F.max_pool2d(x, 3)
    assert out.shape == (5, 4, 3)


@pytest.mark.parametrize("view", ["slice_w", "slice_c", "transposed_hw", "expanded"])
def test_non_contiguous_input(device, view):
    base = make_input((2, 6, 15, 22), torch.float32, device)
    x = {
        "slice_w": base[..., ::2],
        "slice_c": base[:, 1:5],
        "transposed_hw": base.transpose(2, 3),
        "expanded": base[:, :1].expand(2, 4, 15, 22),
    }[view]
    assert not x.is_contiguous()
    assert check_against_torch(x, (3, 2), (2, 1), (1, 1), (1, 2), False)


def test_empty_batch(device):
    for mf in (torch.contiguous_format, torch.channels_last):
        x = torch.randn(0, 3, 8, 8, device=device).contiguous(memory_format=mf).requires_grad_(True)
        out, idx = F.max_pool2d(x, 2, return_indices=True)
        ref, ref_idx = TF.max_pool2d(x, 2, return_indices=True)
        assert out.shape == ref.shape == (0, 3, 4, 4) and idx.shape == ref_idx.shape
        out.sum().backward()
        assert x.grad.shape == x.shape


def test_stride_defaults_to_kernel_and_argument_forms(device):
    x = make_input((2, 3, 17, 12), torch.float32, device, ties=False, specials=False)
    ref = TF.max_pool2d(x, (3, 2))
    for stride in (None, [], (3, 2)):
        torch.testing.assert_close(F.max_pool2d(x, (3, 2), stride), ref)
    torch.testing.assert_close(F.max_pool2d(x, [3], [2], [1]), TF.max_pool2d(x, [3], [2], [1]))


def test_return_indices_usable_by_max_unpool(device):
    x = make_input((2, 3, 8, 8), torch.float32, device, ties=False, specials=False)
    out, idx = F.max_pool2d(x, 2, return_indices=True)
    torch.testing.assert_close(TF.max_unpool2d(out, idx, 2), TF.max_unpool2d(*TF.max_pool2d(x, 2, return_indices=True), 2))


def test_gradcheck_float64(device):
    # distinct values: gradcheck's finite differences are meaningless at ties
    for shape, args in [((2, 3, 7, 6), ((3, 2), (2, 1), (1, 1), (1, 2), True)),
                        ((3, 5, 4), ((2, 2), (1, 1), (1, 0), (1, 1), False))]:
        x = torch.randn(shape, dtype=torch.float64, device=device, requires_grad=True)
        assert torch.autograd.gradcheck(lambda t, args=args: F.max_pool2d(t, *args), (x,))
        assert torch.autograd.gradgradcheck(lambda t, args=args: F.max_pool2d(t, *args), (x,))


def test_torch_compile_fullgraph(device):
    x = torch.randn(2, 4, 12, 10, device=device, requires_grad=True)

    def f(t):
        return F.max_pool2d(torch.relu(t), 3, 2, 1, ceil_mode=True).sum()

    compiled = torch.compile(f, fullgraph=True)   # inductor: the fake kernels must carry the graph
    torch.testing.assert_close(compiled(x), f(x))
    (g_c,) = torch.autograd.grad(compiled(x), x)
    (g_e,) = torch.autograd.grad(f(x), x)
    torch.testing.assert_close(g_c, g_e)


def test_module_matches_torch_module(device):
    for kwargs in [dict(kernel_size=3), dict(kernel_size=(3, 2), stride=2, padding=1, dilation=(1, 2), ceil_mode=True),
                   dict(kernel_size=2, return_indices=True)]:
        ours, ref = fastconv.nn.MaxPool2d(**kwargs), torch.nn.MaxPool2d(**kwargs)
        assert repr(ours).split("(", 1)[1] == repr(ref).split("(", 1)[1]
        assert ours.state_dict().keys() == ref.state_dict().keys()
        x = make_input((2, 3, 11, 9), torch.float32, device, ties=False)
        a, b = ours(x), ref(x)
        if kwargs.get("return_indices"):
            torch.testing.assert_close(a[0], b[0], equal_nan=True)
            assert torch.equal(a[1], b[1])
        else:
            torch.testing.assert_close(a, b, equal_nan=True)


def test_caller_input_untouched(device):
    x = make_input((2, 3, 9, 9), torch.float32, device).contiguous(memory_format=torch.channels_last)
    before = x.clone()
    out = F.max_pool2d(x, 3, 2, 1)
    out.add_(1)
    torch.testing.assert_close(x, before, equal_nan=True, rtol=0, atol=0)


BAD_INPUTS = [
    # (description, input shape, dtype, kwargs, words the message must contain)
    ("2-D input", (5, 5), torch.float32, dict(kernel_size=2), ["3-D", "4-D"]),
    ("5-D input", (1, 1, 1, 5, 5), torch.float32, dict(kernel_size=2), ["3-D", "4-D"]),
    ("zero kernel", (1, 1, 5, 5), torch.float32, dict(kernel_size=0), ["kernel_size", "positive"]),
    ("negative stride", (1, 1, 5, 5), torch.float32, dict(kernel_size=2, stride=-1), ["stride", "positive"]),
    ("zero dilation", (1, 1, 5, 5), torch.float32, dict(kernel_size=2, dilation=0), ["dilation", "positive"]),
    ("padding > k/2", (1, 1, 5, 5), torch.float32, dict(kernel_size=3, padding=2), ["padding", "half"]),
    ("negative padding", (1, 1, 5, 5), torch.float32, dict(kernel_size=3, padding=-1), ["padding"]),
    ("integer dtype", (1, 1, 5, 5), torch.int64, dict(kernel_size=2), ["float32", "Long"]),
    ("output < 1", (1, 1, 2, 2), torch.float32, dict(kernel_size=3), ["output size is too small"]),
    ("empty channel", (1, 0, 4, 4), torch.float32, dict(kernel_size=2), ["non-empty"]),
]


@pytest.mark.parametrize("case", BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS])
def test_bad_input_raises_clear_error(device, case):
    _, shape, dtype, kwargs, words = case
    x = torch.zeros(shape, dtype=dtype, device=device)
    with pytest.raises(RuntimeError) as info:
        F.max_pool2d(x, **kwargs)
    msg = str(info.value)
    assert "fastconv::max_pool2d_with_indices" in msg
    for w in words:
        assert w in msg, f"{w!r} missing from: {msg}"
    if dtype.is_floating_point:
        with pytest.raises(RuntimeError):   # torch rejects it too: same error cases
            TF.max_pool2d(x, **kwargs)
    # Integer inputs: torch's CPU kernel pools them; fastconv's kernels are floating-point only and
    # say so rather than convert silently.


def test_bad_argument_lengths_raise():
    x = torch.zeros(1, 1, 5, 5)
    with pytest.raises(ValueError, match="fastconv.max_pool2d: kernel_size"):
        F.max_pool2d(x, (2, 2, 2))
    with pytest.raises(RuntimeError, match="expected kernel_size to have 2 elements"):
        torch.ops.fastconv.max_pool2d_with_indices(x, [2, 2, 2], [1, 1], [0, 0], [1, 1], False)


def test_backward_op_checks_its_tensors():
    x = torch.randn(1, 2, 6, 6)
    out, idx = F.max_pool2d(x, 2, return_indices=True)
    bwd = torch.ops.fastconv.max_pool2d_with_indices_backward
    with pytest.raises(RuntimeError, match="expected grad_output of shape"):
        bwd(torch.ones(1, 2, 2, 2), x, [2, 2], [2, 2], [0, 0], [1, 1], False, idx)
    with pytest.raises(RuntimeError, match="expected int64 indices"):
        bwd(torch.ones_like(out), x, [2, 2], [2, 2], [0, 0], [1, 1], False, idx.int())


def test_window_without_an_input_tap(device):
    # Dilation 2 and padding 1 on a 1-pixel-high input: the only row's window taps rows -1 and 1, both
    # outside. torch returns -inf with an index past the plane, and its backward then writes out of
    # bounds (heap corruption on torch 2.14's CPU kernel, found by tests/test_fuzz.py). fastconv
    # returns torch's values and indices, and its backward gives such windows no gradient.
    x = torch.arange(4.0, device=device).view(1, 1, 1, 4).requires_grad_(True)
    out, idx = F.max_pool2d(x, 2, 1, 1, 2, return_indices=True)
    ref_out, ref_idx = TF.max_pool2d(x.detach(), 2, 1, 1, 2, return_indices=True)
    torch.testing.assert_close(out, ref_out)
    assert torch.equal(idx, ref_idx) and bool((idx >= 4).any())
    out.sum().backward()
    assert torch.equal(x.grad, torch.zeros_like(x))
