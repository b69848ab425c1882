"""fastconv: hand-written C++ and CUDA kernels for the classic building blocks of deep learning,
as drop-in PyTorch ops (``fastconv.functional``) and modules (``fastconv.nn``)."""

from __future__ import annotations

import warnings

import torch

__version__ = "0.1.0"


def _load_extension():
    try:
        from . import _build_info
    except ImportError:
        _build_info = None
    built_for = getattr(_build_info, "TORCH_VERSION", None)
    try:
        from . import _C  # importing runs the TORCH_LIBRARY registrations
    except ImportError as exc:
        if built_for is None:
            hint = "fastconv has not been built in this checkout."
        else:
            hint = f"fastconv._C was built for torch {built_for}; this is torch {torch.__version__}."
        raise ImportError(
            f"could not load fastconv's compiled kernels ({exc}). {hint} "
            "Rebuild it against the installed torch: pip install --no-build-isolation -e ."
        ) from exc
    if built_for is not None and built_for != torch.__version__:
        warnings.warn(
            f"fastconv._C was built for torch {built_for} but torch {torch.__version__} is installed; "
            "rebuild with: pip install --no-build-isolation -e .",
            RuntimeWarning,
            stacklevel=3,
        )
    return _C, _build_info


_C, _build_info = _load_extension()

from . import ops  # noqa: E402  (registers fake kernels and autograd)
from . import functional, nn  # noqa: E402


def build_info() -> dict:
    """What this build of fastconv is: the torch it was built against, whether (and for which GPU
    architectures) CUDA kernels were compiled, the CPU instruction set its kernels use now, and the
    float32 GEMM's cache blocking derived from this CPU's caches."""
    return {
        "fastconv": __version__,
        "torch_built": getattr(_build_info, "TORCH_VERSION", None),
        "torch_runtime": torch.__version__,
        "cuda_compiled": bool(_C.cuda_compiled()),
        "cuda_version": getattr(_build_info, "CUDA_VERSION", None),
        "cuda_archs": [a for a in getattr(_build_info, "CUDA_ARCHS", "").split(";") if a],
        "cuda_available": torch.cuda.is_available(),
        "cpu_isa": _C.cpu_isa(),
        "cpu_isa_best": _C.best_cpu_isa(),
        "gemm_blocking": _C.gemm_blocking(),
    }


from . import models  # noqa: E402
from .convert import convert  # noqa: E402
from .fold import fold_batchnorm  # noqa: E402

__all__ = ["build_info", "convert", "fold_batchnorm", "functional", "models", "nn", "ops"]
