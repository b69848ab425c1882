"""Build fastconv._C: the C++ (CPU) kernels always, the CUDA kernels when a toolkit and a CUDA torch exist.

Environment knobs
-----------------
FASTCONV_CUDA        unset: build CUDA when possible; 0: CPU only; 1: CUDA required (a missing toolkit
                     or a CPU-only torch is a hard error).
FASTCONV_CUDA_ARCHS  architectures, e.g. "80;90+PTX", "sm_80,sm_90" or "8.0 9.0a 9.0+PTX".
                     Default: TORCH_CUDA_ARCH_LIST when set, else "8.0;9.0a;9.0+PTX" (sm_80, sm_90a and
                     sm_90 machine code, plus PTX for newer GPUs). The Hopper GEMM (TMA + wgmma) exists
                     only in an sm_90a image ("9.0a"); without one, Hopper runs the mma.sync kernel.
FASTCONV_DEBUG=1     -O0 -g host code and -G device code.
FASTCONV_SANITIZE    e.g. "address,undefined": build the host code with -fsanitize=... at -O1 (scripts/asan_check.sh).
MAX_JOBS             parallel compile jobs; default from cores and free memory (about 2 GiB a job).
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
import sys

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _log(msg: str) -> None:
    print(f"[fastconv setup] {msg}", file=sys.stderr)


# --------------------------------------------------------------------------------------------------
# CUDA toolkit discovery. Must run before torch.utils.cpp_extension is imported: that module fixes
# CUDA_HOME at import time, guessing it as dirname(dirname(which nvcc)). Where `nvcc` on PATH is a
# wrapper script outside the toolkit (as on our development machines), that guess is wrong.
# --------------------------------------------------------------------------------------------------
def _is_toolkit(prefix: str | None) -> bool:
    return bool(prefix) and os.path.isfile(os.path.join(prefix, "bin", "nvcc")) and os.path.isfile(
        os.path.join(prefix, "include", "cuda_runtime.h")
    )


def _toolkit_from_nvcc_on_path() -> str | None:
    """Ask nvcc itself where it lives: `nvcc -v --dryrun` prints `#$ _HERE_=<prefix>/bin` even when
    the nvcc we ran is a wrapper that execs the real one."""
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        return None
    try:
        out = subprocess.run(
            [nvcc, "-v", "--dryrun", "fastconv_probe.cu"],
            capture_output=True, text=True, timeout=60,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    m = re.search(r"^#\$ _HERE_=(.+)$", out.stdout + out.stderr, re.MULTILINE)
    if m:
        prefix = os.path.dirname(os.path.realpath(m.group(1).strip()))
        if _is_toolkit(prefix):
            return prefix
    prefix = os.path.dirname(os.path.dirname(os.path.realpath(nvcc)))
    return prefix if _is_toolkit(prefix) else None


def find_cuda_home() -> str | None:
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if _is_toolkit(os.environ.get(var)):
            return os.environ[var]
    found = _toolkit_from_nvcc_on_path()
    if found:
        return found
    for prefix in ["/usr/local/cuda", *sorted(glob.glob("/usr/local/cuda-*"), reverse=True)]:
        if _is_toolkit(prefix):
            return prefix
    return None


_want = os.environ.get("FASTCONV_CUDA", "").strip()
if _want not in ("", "0", "1"):
    raise SystemExit(f"FASTCONV_CUDA must be 0, 1 or unset, got {_want!r}")
CUDA_HOME = None if _want == "0" else find_cuda_home()
if CUDA_HOME:
    os.environ["CUDA_HOME"] = CUDA_HOME  # read by torch.utils.cpp_extension at import

import torch  # noqa: E402
from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension  # noqa: E402

if _want == "0":
    WITH_CUDA = False
else:
    problems = []
    if CUDA_HOME is None:
        problems.append("no CUDA toolkit found (set CUDA_HOME, or put nvcc on PATH)")
    if torch.version.cuda is None:
        problems.append(f"torch {torch.__version__} is a CPU-only build")
    WITH_CUDA = not problems
    if problems and _want == "1":
        raise SystemExit("FASTCONV_CUDA=1 but the CUDA sources cannot be built: " + "; ".join(problems))
    if problems:
        _log("building CPU only: " + "; ".join(problems))


def cuda_arch_flags() -> tuple[list[str], str]:
    """-gencode flags from FASTCONV_CUDA_ARCHS, else TORCH_CUDA_ARCH_LIST, else sm_80 + sm_90a + sm_90 + PTX."""
    spec = os.environ.get("FASTCONV_CUDA_ARCHS") or os.environ.get("TORCH_CUDA_ARCH_LIST") or "8.0;9.0a;9.0+PTX"
    flags, names = [], []
    for tok in re.split(r"[;,\s]+", spec.strip()):
        if not tok:
            continue
        ptx = tok.endswith("+PTX")
        num = tok[: -len("+PTX")] if ptx else tok
        num = num.removeprefix("sm_").removeprefix("compute_")
        m = re.fullmatch(r"(\d+)\.?(\d)([af]?)", num)
        if not m:
            raise SystemExit(f"cannot parse CUDA architecture {tok!r} in {spec!r}")
        cc = f"{m.group(1)}{m.group(2)}{m.group(3)}"
        flags.append(f"-gencode=arch=compute_{cc},code=sm_{cc}")
        names.append(f"sm_{cc}")
        if ptx:
            flags.append(f"-gencode=arch=compute_{cc},code=compute_{cc}")
            names.append(f"compute_{cc}")
    if not flags:
        raise SystemExit(f"no CUDA architecture in {spec!r}")
    return flags, ";".join(names)


def default_max_jobs() -> None:
    if "MAX_JOBS" in os.environ:
        return
    jobs = os.cpu_count() or 1
    try:
        with open("/proc/meminfo") as f:
            avail_kb = next(int(line.split()[1]) for line in f if line.startswith("MemAvailable"))
        jobs = max(1, min(jobs, avail_kb // (2 * 1024 * 1024)))
    except (OSError, StopIteration, ValueError):
        pass
    os.environ["MAX_JOBS"] = str(jobs)


def write_build_info(archs: str) -> None:
    """fastconv/_build_info.py: what this binary was built against, read by fastconv.build_info()."""
    with open(os.path.join(ROOT, "fastconv", "_build_info.py"), "w") as f:
        f.write("# Generated by setup.py; do not edit.\n")
        f.write(f"TORCH_VERSION = {torch.__version__!r}\n")
        f.write(f"CUDA_COMPILED = {WITH_CUDA!r}\n")
        f.write(f"CUDA_VERSION = {torch.version.cuda if WITH_CUDA else None!r}\n")
        f.write(f"CUDA_ARCHS = {archs!r}\n")


def main() -> None:
    default_max_jobs()
    debug = os.environ.get("FASTCONV_DEBUG") == "1"
    sanitize = os.environ.get("FASTCONV_SANITIZE")
    # A sanitizer build (scripts/asan_check.sh, the end of CI) at -O1, as AddressSanitizer's documentation
    # suggests: every load and store the source makes is still checked and UBSan's checks are
    # source-level, and the build takes about 40% less time (AMD Zen 3, 2 cores: 334 s against 518-612 s
    # at -O3; the smoke run 54 s against 27 s).
    opt = ["-O0", "-g"] if debug else ["-O1"] if sanitize else ["-O3"]
    # The C++ standard is left to torch.utils.cpp_extension: it matches the torch headers (C++20 for 2.14).
    # -fopenmp: at::parallel_for is an inline template that runs serially unless the including file
    # is compiled with OpenMP (ATen/ParallelOpenMP.h checks _OPENMP), and `#pragma omp simd` reductions
    # in the CPU kernels. Linking with -fopenmp names libgomp.so.1, which resolves to the copy torch
    # has already loaded: one OpenMP runtime and one thread pool, shared with torch.
    cxx = [*opt, "-fvisibility=hidden", "-fopenmp", "-Wall", "-Wno-unused-function"]
    link = ["-fopenmp"]
    if sanitize:
        # An undefined-behaviour finding stops the process (instead of printing and going on), so a
        # sanitizer run fails on it.
        cxx += [f"-fsanitize={sanitize}", "-fno-omit-frame-pointer", "-fno-sanitize-recover=all"]
        link += [f"-fsanitize={sanitize}"]
    sources = sorted(glob.glob("csrc/*.cpp") + glob.glob("csrc/cpu/*.cpp"))
    include_dirs = [os.path.join(ROOT, "csrc")]
    archs = ""

    if WITH_CUDA:
        sources += sorted(glob.glob("csrc/cuda/*.cpp") + glob.glob("csrc/cuda/*.cu"))
        arch_flags, archs = cuda_arch_flags()
        # The toolkit may lack cuBLAS/cuSPARSE headers that ATen's CUDA headers include; the torch
        # wheel ships them. -idirafter keeps the toolkit's own headers first.
        wheel_inc = os.path.join(os.path.dirname(os.path.dirname(torch.__file__)), "nvidia", "cu13", "include")
        if os.path.isdir(wheel_inc) and not os.path.isfile(os.path.join(CUDA_HOME, "include", "cublas_v2.h")):
            cxx += ["-idirafter", wheel_inc]
        nvcc = [*(("-O0", "-G") if debug else ("-O3", "-lineinfo")), *arch_flags]
        ext = CUDAExtension(
            "fastconv._C", sources, include_dirs=include_dirs,
            define_macros=[("FASTCONV_WITH_CUDA", "1")],
            extra_compile_args={"cxx": cxx, "nvcc": nvcc}, extra_link_args=link,
        )
        _log(f"CUDA_HOME={CUDA_HOME}, archs={archs}")
    else:
        ext = CppExtension("fastconv._C", sources, include_dirs=include_dirs, extra_compile_args={"cxx": cxx},
                           extra_link_args=link)
    write_build_info(archs)

    setup(
        name="fastconv",
        packages=["fastconv", "fastconv.bench"],
        ext_modules=[ext],
        cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
    )


main()
