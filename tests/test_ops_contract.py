"""The op-table contract: every op registered under torch.ops.fastconv passes torch.library.opcheck
(schema, fake kernel, autograd registration, AOT dispatch) on each device. The list of ops comes
from the dispatcher itself, so an op added to csrc/ops.cpp without samples fails here."""

from __future__ import annotations

import pytest
import torch

import fastconv  # noqa: F401  (loads the op table)
from op_samples import SAMPLES


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
        torch.library.opcheck(op, args, kwargs)


def test_every_functional_says_its_dtypes():
    import fastconv.functional as F

    for name in F.__all__:
        assert "dtypes:" in getattr(F, name).__doc__, f"help(fastconv.functional.{name}) does not say which dtypes it takes"
