"""The op-table contract: every op registered under torch.ops.fastconv passes torch.library.opcheck
(schema, fake kernel, autograd registration, AOT dispatch) on each device. The list of ops comes
from the dispatcher itself, so an op added to csrc/ops.cpp without samples fails here."""

from __future__ import annotations

import sys

import pytest
import torch

import fastconv  # noqa: F401  (loads the op table)
from op_samples import EAGER_DOUBLE_BACKWARD, SAMPLES


def registered_ops() -> list[str]:
    return sorted(n for n in torch._C._dispatch_get_all_op_names() if n.startswith("fastconv::"))


def test_op_table_is_not_empty():
    assert "fastconv::max_pool2d_with_indices" in registered_ops()


@pytest.mark.parametrize("name", registered_ops())
def test_every_op_has_samples(name):
    assert name in SAMPLES, f"{name} has no samples in tests/op_samples.py, so opcheck cannot cover it"


@pytest.mark.parametrize("name", registered_ops())
def test_opcheck(name, device):
    if name not in SAMPLES:
        pytest.fail(f"{name} has no samples in tests/op_samples.py")
    ns, op_name = name.split("::")
    op = getattr(getattr(torch.ops, ns), op_name).default
    for args, kwargs in SAMPLES[name](device):
        needs_grad = any(isinstance(a, torch.Tensor) and a.requires_grad for a in args)
        if name in EAGER_DOUBLE_BACKWARD and needs_grad:
            torch.library.opcheck(op, args, kwargs, test_utils=("test_schema", "test_autograd_registration",
                                                                "test_faketensor"))
            leaves = [a for a in args if isinstance(a, torch.Tensor) and a.requires_grad]
            outs = [o for o in op(*args, **kwargs) if o.requires_grad]
            grads = torch.autograd.grad(sum((o * torch.randn_like(o)).sum() for o in outs), leaves)
            assert all(g.shape == a.shape and torch.isfinite(g).all() and g.abs().sum() > 0
                       for g, a in zip(grads, leaves))
            continue
        torch.library.opcheck(op, args, kwargs)


@pytest.mark.parametrize("name", sorted(n for n in SAMPLES if n.endswith("_backward")))
def test_backward_samples_require_grad(name):
    # So that opcheck (or the eager check above) differentiates every backward op.
    assert any(isinstance(a, torch.Tensor) and a.requires_grad for args, _ in SAMPLES[name]("cpu") for a in args)


def test_every_functional_says_its_dtypes():
    import fastconv.functional as F

    for name in F.__all__:
        assert "dtypes:" in getattr(F, name).__doc__, f"help(fastconv.functional.{name}) does not say which dtypes it takes"


# The CNN ops record their graph nodes in C++ (csrc/autograd.cpp), not through Python: a call that
# needs a gradient then costs about what torch's own op costs (a small convolution went 38 -> 11 us).
CPP_AUTOGRAD = {
    "conv2d": lambda x: torch.ops.fastconv.conv2d(x, torch.randn(4, 3, 3, 3), None, [1, 1], [1, 1], [1, 1], 1, "auto"),
    "max_pool2d_with_indices": lambda x: torch.ops.fastconv.max_pool2d_with_indices(x, [2, 2], [2, 2], [0, 0],
                                                                                    [1, 1], False),
    "batch_norm": lambda x: torch.ops.fastconv.batch_norm(x, None, None, None, None, True, 0.1, 1e-5, False),
    "gemm": lambda x: torch.ops.fastconv.gemm(x.flatten(1), torch.randn(192, 5), None, False, False, 1.0, 0.0),
}


@pytest.mark.parametrize("name", sorted(CPP_AUTOGRAD))
def test_cnn_ops_autograd_is_cpp(name):
    x = torch.randn(2, 3, 8, 8, requires_grad=True)
    out = CPP_AUTOGRAD[name](x)
    outs = out if isinstance(out, (tuple, list)) else (out,)
    assert "CppNode" in outs[0].grad_fn.name(), outs[0].grad_fn.name()
    # The bookkeeping outputs (max-pool's indices, batch-norm's saved statistics and batch variance)
    # carry no gradient: asking for one raises instead of returning zeros.
    for extra in outs[1:]:
        assert not extra.requires_grad
    if len(outs) > 1:
        with pytest.raises(RuntimeError, match="does not require grad"):
            torch.autograd.grad(outs[1].float().sum(), x)


# The RNN layers too (a cell is a one-step layer): (output, hy[, cy]) differentiable, the workspace not.
CPP_AUTOGRAD_RNN = {
    "lstm_layer": lambda x: torch.ops.fastconv.lstm_layer(x.flatten(1), torch.tensor([1, 1]), torch.zeros(1, 4),
                                                          torch.zeros(1, 4), torch.randn(16, 192), torch.randn(16, 4),
                                                          torch.randn(16), None, None, False),
    "gru_layer": lambda x: torch.ops.fastconv.gru_layer(x.flatten(1), torch.tensor([2]), torch.zeros(2, 4),
                                                        torch.randn(12, 192), torch.randn(12, 4), None, None, True),
}


@pytest.mark.parametrize("name", sorted(CPP_AUTOGRAD_RNN))
def test_rnn_ops_autograd_is_cpp(name):
    x = torch.randn(2, 3, 8, 8, requires_grad=True)
    *states, workspace = CPP_AUTOGRAD_RNN[name](x)
    for t in states:
        assert "CppNode" in t.grad_fn.name(), t.grad_fn.name()
    assert not workspace.requires_grad


@pytest.mark.parametrize("name", sorted(CPP_AUTOGRAD) + sorted(CPP_AUTOGRAD_RNN))
def test_plain_backward_runs_no_python(name):
    # Without create_graph the backward calls its backward op below the Autograd key: the backward ops'
    # Python autograd (fastconv/ops.py, there for double backward) would only have redispatched, at
    # ~30 us a call. No Python function may run between the engine's start and its end.
    x = torch.randn(2, 3, 8, 8, requires_grad=True)
    out = (CPP_AUTOGRAD | CPP_AUTOGRAD_RNN)[name](x)
    loss = (out[0] if isinstance(out, (tuple, list)) else out).sum()
    called = []
    sys.setprofile(lambda frame, event, arg: called.append(frame.f_code.co_filename) if event == "call" else None)
    try:
        torch.autograd.backward([loss])
    finally:
        sys.setprofile(None)
    ran = {f for f in called if "fastconv" in f or "_library" in f or "_ops.py" in f}
    assert not ran, ran
    assert x.grad is not None


def test_cpp_autograd_mask_follows_which_inputs_need_grad():
    # conv2d without a bias and with the bias, only some inputs requiring grad: the edges of a
    # Function's absent optional input are skipped, so the mask must still name the right gradients.
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64)
    w = torch.randn(4, 3, 3, 3, dtype=torch.float64)
    b = torch.randn(4, dtype=torch.float64)
    for needs in ((True, False, False), (False, True, False), (False, False, True), (True, False, True)):
        xs, ws, bs = (t.clone().requires_grad_(n) for t, n in zip((x, w, b), needs))
        ref = [t.clone().requires_grad_(n) for t, n in zip((x, w, b), needs)]
        torch.ops.fastconv.conv2d(xs, ws, bs, [1, 1], [1, 1], [1, 1], 1, "im2col").square().sum().backward()
        torch.nn.functional.conv2d(*ref, 1, 1).square().sum().backward()
        for ours, theirs in zip((xs, ws, bs), ref):
            assert (ours.grad is None) == (theirs.grad is None)
            if theirs.grad is not None:
                torch.testing.assert_close(ours.grad, theirs.grad)
    # batch_norm with a weight but no bias, only the weight requiring grad
    w1 = torch.rand(3, dtype=torch.float64, requires_grad=True)
    xx = torch.randn(4, 3, 5, 5, dtype=torch.float64)
    out = torch.ops.fastconv.batch_norm(xx, w1, None, None, None, True, 0.1, 1e-5, False)[0]
    (g,) = torch.autograd.grad(out.square().sum(), w1)
    w2 = w1.detach().clone().requires_grad_(True)
    (g_ref,) = torch.autograd.grad(torch.nn.functional.batch_norm(xx, None, None, w2, None, True).square().sum(), w2)
    torch.testing.assert_close(g, g_ref)


def test_rnn_autograd_mask_follows_which_inputs_need_grad():
    # The LSTM layer with one bias absent and a projection, one input at a time requiring grad: the
    # absent bias has no edge, so the edges after it move down; each gradient must land on its input.
    # The reference is the same recurrence in differentiable torch ops (fastconv/ops.py's math).
    from fastconv.ops import _lstm_layer_math
    torch.manual_seed(0)
    d = dict(dtype=torch.float64)
    steps = torch.tensor([2, 2, 1])
    args = [torch.randn(5, 3, **d), torch.randn(2, 2, **d), torch.randn(2, 4, **d), torch.randn(16, 3, **d),
            torch.randn(16, 2, **d), torch.randn(16, **d), torch.randn(2, 4, **d)]   # x, hx, cx, w_ih, w_hh, b_hh, w_hr
    for k in range(len(args)):
        ours = [t.clone().requires_grad_(i == k) for i, t in enumerate(args)]
        x, hx, cx, w_ih, w_hh, b_hh, w_hr = ours
        out, hy, cy, _ = torch.ops.fastconv.lstm_layer(x, steps, hx, cx, w_ih, w_hh, None, b_hh, w_hr, False)
        (out.square().sum() + hy.sum() + cy.sum()).backward()
        ref = [t.clone().requires_grad_(i == k) for i, t in enumerate(args)]
        x, hx, cx, w_ih, w_hh, b_hh, w_hr = ref
        out, hy, cy = _lstm_layer_math(x, steps, hx, cx, w_ih, w_hh, b_hh, w_hr, False)
        (out.square().sum() + hy.sum() + cy.sum()).backward()
        for i, (a, b) in enumerate(zip(ours, ref)):
            assert (a.grad is None) == (i != k)
            if i == k:
                torch.testing.assert_close(a.grad, b.grad)
