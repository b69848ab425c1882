#!/usr/bin/env bash
# Create (or reuse) a virtual environment with fastconv's pinned requirements and build fastconv
# into it (editable). Build knobs (FASTCONV_CUDA, FASTCONV_CUDA_ARCHS, MAX_JOBS, ...) pass through
# to setup.py; see README.md. A second run with nothing changed takes seconds: the requirements and
# the build are each redone only when what they depend on changed (stamps in the environment).
#
#   usage: bash scripts/setup_env.sh [VENV_DIR]      (default: .venv in the repository root)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
venv=${1:-$root/.venv}
say() { echo "[setup_env $(date +%H:%M:%S)] $*"; }
if [ ! -x "$venv/bin/python" ]; then
  say "creating the virtual environment $venv"
  python3 -m venv "$venv"
fi
cd "$root"

req_hash=$(sha256sum requirements-ci.txt | cut -d' ' -f1)
if [ "$(cat "$venv/.fastconv-requirements" 2>/dev/null)" = "$req_hash" ]; then
  say "pinned requirements already installed (requirements-ci.txt unchanged)"
else
  say "installing requirements-ci.txt: torch 2.14.1 (the CUDA 13.0 build, about 5.8 GB with its CUDA" \
      "libraries), torchvision, scikit-learn, matplotlib, tqdm, ninja; about 1.5 min from a local package" \
      "cache, longer from the network"
  start=$SECONDS
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r requirements-ci.txt
  echo "$req_hash" > "$venv/.fastconv-requirements"
  say "requirements installed in $((SECONDS - start)) s"
fi

# The build depends on the sources, setup.py, the torch it compiles against and the FASTCONV_* knobs.
build_hash=$( { find csrc -type f | sort | xargs sha256sum; sha256sum setup.py pyproject.toml;
                "$venv/bin/python" -c "import torch; print(torch.__version__)"; { env | grep '^FASTCONV_\|^MAX_JOBS' || true; } | sort; } \
              | sha256sum | cut -d' ' -f1)
if [ "$(cat "$venv/.fastconv-build" 2>/dev/null)" = "$build_hash" ] \
   && "$venv/bin/python" -c "import fastconv" 2> /dev/null; then
  say "fastconv already built for these sources (csrc/, setup.py and the build knobs unchanged)"
else
  say "building fastconv (pip install -e .): the C++ kernels, and the CUDA ones where a toolkit and a CUDA" \
      "torch exist; about 2 min on 2 cores for the CPU sources, 5-10 min more with CUDA"
  start=$SECONDS
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-build-isolation -e .
  echo "$build_hash" > "$venv/.fastconv-build"
  say "built in $((SECONDS - start)) s"
fi
"$venv/bin/python" -c "import fastconv, json; print(json.dumps(fastconv.build_info()))"
