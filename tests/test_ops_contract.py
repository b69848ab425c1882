"""The op-table contract: every op registered under torch.ops.fastconv passes torch.library.opcheck
(schema, fake kernel, autograd registration, AOT dispatch) on each device. The list of ops comes
from the dispatcher itself, so an op added to csrc/ops.cpp without samples fails here."""

from __future__ import annotations

import pytest
import torch

import fastconv  # noqa: F401  (loads the op table)
from op_samples import REFUSES_DOUBLE_BACKWARD, SAMPLES


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
        if name in REFUSES_DOUBLE_BACKWARD and needs_grad:
            outs = [o for o in op(*args, **kwargs) if o.requires_grad]
            with pytest.raises(RuntimeError, match="double backward .* is not implemented"):
                torch.autograd.grad(sum(o.sum() for o in outs), [a for a in args if isinstance(a, torch.Tensor)
                                                                  and a.requires_grad])
            continue
        torch.library.opcheck(op, args, kwargs)


@pytest.mark.parametrize("name", sorted(n for n in SAMPLES if n.endswith("_backward")))
def test_backward_samples_require_grad(name):
    # So that opcheck (or the refusal check above) differentiates every backward op.
    assert any(isinstance(a, torch.Tensor) and a.requires_grad for args, _ in SAMPLES[name]("cpu") for a in args)


def test_every_functional_says_its_dtypes():
    import fastconv.functional as F

    for name in F.__all__:
        assert "dtypes:" in getattr(F, name).__doc__, f"help(fastconv.functional.{name}) does not say which dtypes it takes"
