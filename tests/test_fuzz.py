"""Property-based tests (hypothesis): random shapes (0, 1, primes), strides (non-contiguous, expanded,
channels_last), parameters and dtypes, each run by fastconv and by torch. Where torch succeeds fastconv
must give the same outputs and gradients; where torch raises, fastconv must raise a Python exception
too. Invalid arguments run in a child process, so that a crash fails the test instead of killing
the run.

Example counts come from the hypothesis profile: "ci" (the default: few examples, derandomised so CI
is repeatable) or "long" for a local soak, e.g. FASTCONV_HYPOTHESIS=long pytest tests/test_fuzz.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as TF

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, assume, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import fastconv  # noqa: E402
import fastconv.functional as F  # noqa: E402

settings.register_profile("ci", max_examples=40, deadline=None, derandomize=True, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("long", max_examples=2000, deadline=None, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.load_profile(os.environ.get("FASTCONV_HYPOTHESIS", "ci"))

DTYPES = st.sampled_from([torch.float32, torch.float64])
ERRORS = (RuntimeError, ValueError, TypeError, IndexError)


def _layout(t: torch.Tensor, how: str) -> torch.Tensor:
    """The same values as t, laid out another way: channels_last, a transposed copy viewed back, a
    strided slice of a larger tensor, or a batch expanded from one image (stride 0)."""
    if how == "channels_last" and t.dim() == 4:
        return t.contiguous(memory_format=torch.channels_last)
    if how == "transposed":
        return t.transpose(-1, -2).contiguous().transpose(-1, -2)
    if how == "sliced":
        big = torch.zeros(*t.shape[:-1], 2 * t.shape[-1], dtype=t.dtype)
        big[..., ::2] = t
        return big[..., ::2]
    if how == "expanded" and t.dim() == 4 and t.shape[0] >= 1:
        return t[:1].expand_as(t)
    return t


LAYOUTS = st.sampled_from(["contiguous", "channels_last", "transposed", "sliced", "expanded"])


def _tol(dtype, loose=1.0):
    return (1e-10 if dtype == torch.float64 else 1e-4) * loose


def _agree(ours_fn, torch_fn, inputs, dtype, loose=1.0):
    """Runs both on the same inputs. Both raise, or both return the same outputs and the same
    gradients of every floating-point input (for one random upstream gradient)."""
    def run(fn):
        xs = [t.detach().clone().requires_grad_(True) if isinstance(t, torch.Tensor) and t.is_floating_point()
              else t for t in inputs]
        views = [x for x in xs if isinstance(x, torch.Tensor) and x.requires_grad]
        try:
            out = fn(*xs)
        except ERRORS as e:
            return e, None, None
        outs = out if isinstance(out, tuple) else (out,)
        diff = [o for o in outs if isinstance(o, torch.Tensor) and o.requires_grad]
        g = torch.Generator().manual_seed(3)
        ups = [torch.randn(o.shape, generator=g, dtype=o.dtype) for o in diff]
        grads = torch.autograd.grad(diff, views, ups, allow_unused=True) if diff else []
        return None, outs, grads

    theirs_err, theirs, theirs_grads = run(torch_fn)
    ours_err, ours, ours_grads = run(ours_fn)
    if theirs_err is not None:
        assert ours_err is not None, f"torch raised {theirs_err!r}; fastconv returned a result"
        return False
    assert ours_err is None, f"fastconv raised {ours_err!r} where torch returned a result"
    for a, b in [*zip(ours, theirs), *zip(ours_grads, theirs_grads)]:
        if isinstance(b, torch.Tensor):
            assert a.shape == b.shape and a.dtype == b.dtype, (a.shape, b.shape, a.dtype, b.dtype)
            if b.numel():
                scale = 1 + b.abs().max().item()
                torch.testing.assert_close(a, b, rtol=0, atol=_tol(dtype, loose) * scale, equal_nan=True)
        else:
            assert (a is None) == (b is None) or a is None or b is None
    return True


@st.composite
def conv_cases(draw):
    groups = draw(st.sampled_from([1, 1, 2, 3]))
    cin, cout = groups * draw(st.integers(1, 3)), groups * draw(st.integers(1, 3))
    k = (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    dilation = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    padding = draw(st.one_of(st.tuples(st.integers(0, 3), st.integers(0, 3)), st.sampled_from(["same", "valid"])))
    batch = draw(st.sampled_from([None, 0, 1, 2, 3]))
    hw = (draw(st.sampled_from([1, 2, 3, 5, 7, 11])), draw(st.sampled_from([1, 2, 3, 5, 7, 11])))
    return dict(groups=groups, cin=cin, cout=cout, k=k, stride=stride, dilation=dilation, padding=padding,
                batch=batch, hw=hw, layout=draw(LAYOUTS), dtype=draw(DTYPES), bias=draw(st.booleans()),
                algorithm=draw(st.sampled_from(["auto", "im2col", "direct", "winograd_2x2", "winograd_4x4"])),
                w_layout=draw(st.sampled_from(["contiguous", "transposed", "channels_last"])))


@given(conv_cases())
def test_conv2d_agrees_with_torch(c):
    dtype = c["dtype"]
    g = torch.Generator().manual_seed(0)
    shape = ((c["batch"],) if c["batch"] is not None else ()) + (c["cin"], *c["hw"])
    x = _layout(torch.randn(shape, generator=g, dtype=dtype), c["layout"])
    w = _layout(torch.randn(c["cout"], c["cin"] // c["groups"], *c["k"], generator=g, dtype=dtype), c["w_layout"])
    b = torch.randn(c["cout"], generator=g, dtype=dtype) if c["bias"] else None
    args = (c["stride"], c["padding"], c["dilation"], c["groups"])
    winograd = c["algorithm"].startswith("winograd")
    applies = c["k"] == (3, 3) and c["stride"] == (1, 1) and c["dilation"] == (1, 1) and c["groups"] == 1
    if winograd and not applies:
        try:
            TF.conv2d(x, w, b, *args)
        except ERRORS:
            with pytest.raises(ERRORS):   # torch refuses the arguments: so does fastconv
                F.conv2d(x, w, b, *args, algorithm=c["algorithm"])
            return
        with pytest.raises(RuntimeError, match="applies to 3x3 kernels"):
            F.conv2d(x, w, b, *args, algorithm=c["algorithm"])
        return
    _agree(lambda x, w, b: F.conv2d(x, w, b, *args, algorithm=c["algorithm"]),
           lambda x, w, b: TF.conv2d(x, w, b, *args), [x, w, b], dtype, loose=10 if winograd or c["algorithm"] == "auto" else 1)


def _empty_window(size, k, s, p, d, ceil):
    """Whether some output's window along one axis has no tap inside [0, size)."""
    if p > k // 2 or s < 1:
        return False   # refused by both
    from fastconv.ops import pool_output_size
    out = pool_output_size(size, k, p, s, d, ceil)
    return any(all(not 0 <= o * s - p + j * d < size for j in range(k)) for o in range(max(out, 0)))


@given(st.sampled_from([None, 0, 1, 2]), st.integers(1, 5), st.sampled_from([1, 2, 3, 5, 8, 13]),
       st.sampled_from([1, 2, 4, 7, 11]), st.integers(1, 4), st.integers(1, 3), st.integers(0, 2), st.integers(1, 2),
       st.booleans(), LAYOUTS, DTYPES)
def test_max_pool2d_agrees_with_torch(batch, c, h, w, k, s, p, d, ceil, layout, dtype):
    # torch's own backward writes out of bounds (heap corruption, found by this test) when a window
    # has no tap inside the input: test_max_pool2d.py covers that case against torch's forward only.
    assume(not _empty_window(h, k, s, p, d, ceil) and not _empty_window(w, k, s, p, d, ceil))
    shape = ((batch,) if batch is not None else ()) + (c, h, w)
    x = _layout(torch.randn(shape, generator=torch.Generator().manual_seed(0), dtype=dtype), layout)
    _agree(lambda x: F.max_pool2d(x, k, s, p, d, ceil, return_indices=True),
           lambda x: TF.max_pool2d(x, k, s, p, d, ceil, return_indices=True), [x], dtype)


@given(st.sampled_from([(0, 3), (1, 3), (5, 3), (4, 2, 1), (3, 1, 7), (2, 3, 0, 4), (2, 3, 4, 5), (3, 2, 3, 2),
                        (2, 3, 2, 2, 3), (0, 2, 3, 3)]),
       st.booleans(), st.booleans(), st.booleans(), st.sampled_from([0.1, None, 0.0, 1.0]), LAYOUTS, DTYPES)
def test_batch_norm_agrees_with_torch(shape, training, affine, relu, momentum, layout, dtype):
    g = torch.Generator().manual_seed(0)
    x = _layout(torch.randn(shape, generator=g, dtype=dtype) * 3 + 1, layout)
    C = shape[1]
    w = torch.rand(C, generator=g, dtype=dtype) + 0.5 if affine else None
    bias = torch.randn(C, generator=g, dtype=dtype) if affine else None
    rm0, rv0 = torch.randn(C, generator=g, dtype=dtype), torch.rand(C, generator=g, dtype=dtype) + 0.5
    rs = {"ours": (rm0.clone(), rv0.clone()), "theirs": (rm0.clone(), rv0.clone())}

    def ours(x, w, b):
        return F.batch_norm(x, *rs["ours"], w, b, training, momentum if momentum is not None else 0.1, relu=relu)

    def theirs(x, w, b):
        y = TF.batch_norm(x, *rs["theirs"], w, b, training, momentum if momentum is not None else 0.1)
        return torch.relu(y) if relu else y
    if _agree(ours, theirs, [x, w, bias], dtype):
        for a, b in zip(rs["ours"], rs["theirs"]):
            torch.testing.assert_close(a, b, rtol=0, atol=_tol(dtype) * (1 + b.abs().max().item()))


@given(st.lists(st.integers(0, 4), min_size=0, max_size=2), st.integers(0, 7), st.integers(1, 7), st.booleans(),
       st.sampled_from(["contiguous", "transposed", "sliced"]), DTYPES)
def test_linear_agrees_with_torch(lead, fin, fout, bias, layout, dtype):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(*lead, fin, generator=g, dtype=dtype)
    x = _layout(x, layout) if x.dim() >= 2 else x
    w = torch.randn(fout, fin, generator=g, dtype=dtype)
    b = torch.randn(fout, generator=g, dtype=dtype) if bias else None
    _agree(F.linear, TF.linear, [x, w, b], dtype)


@given(st.sampled_from(["LSTM", "GRU"]), st.integers(1, 5), st.sampled_from([None, 1, 2, 3]), st.integers(1, 4),
       st.integers(1, 5), st.integers(1, 2), st.booleans(), st.booleans(), st.booleans(), st.integers(0, 2),
       st.booleans(), DTYPES)
def test_rnn_modules_agree_with_torch(kind, T, B, I, H, layers, bi, batch_first, bias, proj, packed, dtype):
    if kind == "GRU" or proj >= H:
        proj = 0
    torch.manual_seed(0)
    kw = dict(num_layers=layers, bidirectional=bi, batch_first=batch_first, bias=bias, dtype=dtype,
              **({"proj_size": proj} if proj else {}))
    ref = getattr(torch.nn, kind)(I, H, **kw)
    ours = getattr(fastconv.nn, kind)(I, H, **kw)
    ours.load_state_dict(ref.state_dict())
    shape = (T, I) if B is None else ((B, T, I) if batch_first else (T, B, I))
    x = torch.randn(shape, generator=torch.Generator().manual_seed(1), dtype=dtype)
    packed = packed and B is not None and B > 0
    lengths = torch.randint(1, T + 1, (B,), generator=torch.Generator().manual_seed(2)) if packed else None

    def run(module):
        def call(x):
            if packed:
                seq = torch.nn.utils.rnn.pack_padded_sequence(x, lengths, batch_first=batch_first, enforce_sorted=False)
                out, state = module(seq)
                out = torch.nn.utils.rnn.pad_packed_sequence(out, batch_first=batch_first)[0]
            else:
                out, state = module(x)
            return (out, *(state if isinstance(state, tuple) else (state,)))
        return call
    _agree(run(ours), run(ref), [x], dtype)
    for (name, p), q in zip(ours.named_parameters(), ref.parameters()):
        assert p.shape == q.shape, name


# Invalid arguments, run in a child process: a crash (segfault, abort) fails the test with the case.
CHILD = textwrap.dedent("""
    import json, sys, torch, fastconv.functional as F, torch.nn.functional as TF
    results = []
    for op, shape, args in json.loads(sys.stdin.read()):
        x = torch.randn(shape)
        outcome = []
        for fn in ((F.conv2d, TF.conv2d) if op == "conv2d" else (F.max_pool2d, TF.max_pool2d)):
            try:
                if op == "conv2d":
                    w_shape, stride, padding, dilation, groups = args
                    fn(x, torch.randn(w_shape), None, stride, padding, dilation, groups)
                else:
                    fn(x, *args)
                outcome.append("ok")
            except (RuntimeError, ValueError, TypeError, IndexError) as e:
                outcome.append(type(e).__name__)
        results.append(outcome)
    print(json.dumps(results))
""")


@st.composite
def invalid_calls(draw):
    if draw(st.booleans()):
        shape = draw(st.lists(st.integers(0, 5), min_size=2, max_size=5))
        w_shape = draw(st.lists(st.integers(0, 4), min_size=3, max_size=5))
        args = [w_shape, draw(st.lists(st.integers(-1, 2), min_size=1, max_size=3)),
                draw(st.one_of(st.lists(st.integers(-2, 3), min_size=1, max_size=3), st.just("same"))),
                draw(st.lists(st.integers(-1, 2), min_size=1, max_size=3)), draw(st.integers(-1, 3))]
        return ["conv2d", shape, args]
    shape = draw(st.lists(st.integers(0, 6), min_size=2, max_size=5))
    args = [draw(st.lists(st.integers(-1, 7), min_size=1, max_size=3)), draw(st.lists(st.integers(-1, 3), max_size=3)),
            draw(st.lists(st.integers(-1, 4), min_size=1, max_size=3)), draw(st.lists(st.integers(-1, 3), min_size=1,
                                                                                     max_size=3)), draw(st.booleans())]
    return ["max_pool2d", shape, args]


@settings(max_examples=4)
@given(st.lists(invalid_calls(), min_size=40, max_size=40))
def test_invalid_arguments_raise_in_a_child_process(calls):
    proc = subprocess.run([sys.executable, "-c", CHILD], input=json.dumps(calls), capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, f"the child crashed (status {proc.returncode}) on one of {calls}:\n{proc.stderr[-2000:]}"
    for call, (ours, theirs) in zip(calls, json.loads(proc.stdout)):
        # Where torch raises, fastconv raises (a Python exception, not a crash); where torch accepts an
        # argument list, fastconv does too.
        assert (ours == "ok") == (theirs == "ok"), (call, ours, theirs)
