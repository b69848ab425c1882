#!/usr/bin/env bash
# Create (or reuse) a virtual environment with fastconv's pinned requirements and build fastconv
# into it (editable). Build knobs (FASTCONV_CUDA, FASTCONV_CUDA_ARCHS, MAX_JOBS, ...) pass through
# to setup.py; see README.md.
#
#   usage: bash scripts/setup_env.sh [VENV_DIR]      (default: .venv in the repository root)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
venv=${1:-$root/.venv}
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$root/requirements-ci.txt"
cd "$root"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-build-isolation -e .
"$venv/bin/python" -c "import fastconv, json; print(json.dumps(fastconv.build_info()))"
