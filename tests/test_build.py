"""The build reports what it is, and the op table holds what the package promises."""

import pytest
import torch

import fastconv


def test_build_info_fields():
    info = fastconv.build_info()
    assert info["torch_built"] == torch.__version__
    assert info["cpu_isa"] in fastconv._C.cpu_isas()
    assert isinstance(info["cuda_compiled"], bool)
    if info["cuda_compiled"]:
        assert info["cuda_archs"], "a CUDA build must say which architectures it carries"


def test_set_cpu_isa_rejects_unknown_names():
    with pytest.raises(ValueError, match="unknown CPU ISA"):
        fastconv._C.set_cpu_isa("sse9")
