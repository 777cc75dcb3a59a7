#!/usr/bin/env bash
# Download the wheels the GPU machine's image lacks (benchmarks/gpu/wheels.txt) for CPython 3.12, manylinux
# x86_64, into .whl/ at the repository root (git-ignored), check that the set is complete
# (check_wheels.py), and try the GPU machine's install command on it with this machine's Python.
# Run it here, where PyPI is reachable, before a device run that carries .whl (README.md in this folder).
#
#   bash benchmarks/gpu/fetch_wheels.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
python=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
dest=.whl
rm -rf "$dest"
mkdir -p "$dest"
platforms=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
           --platform manylinux2014_x86_64 --platform manylinux1_x86_64)
while read -r spec how; do
  case "$spec" in '' | '#'*) continue ;; esac
  if [ "$how" = build ]; then
    # PyPI has only its source; it is pure Python, so the wheel built here installs on 3.12 too.
    "$python" -m pip wheel -q --no-deps --no-binary "${spec%%==*}" -w "$dest" "$spec"
  else
    "$python" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      "${platforms[@]}" -d "$dest" "$spec"
  fi
done < benchmarks/gpu/wheels.txt
"$python" benchmarks/gpu/check_wheels.py "$dest"

# The GPU machine's install, here: the wheels are pure Python, so this machine's pip installs the same
# files (but for a wheel tagged for 3.12 alone, which stays with this Python's own copy); then the
# imports run.sh depends on, from that folder first.
site=$(mktemp -d)
trap 'rm -rf "$site"' EXIT
mapfile -t installable < <("$python" benchmarks/gpu/check_wheels.py "$dest" --installable-here)
"$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$site" "${installable[@]}"
PYTHONPATH="$site" "$python" - "$site" <<'PYTHON'
import sys

import datasets
import sparsify.fused_encoder
import sparsify.xformers
import transformer_lens

site = sys.argv[1]
for module in (transformer_lens, datasets, sparsify.fused_encoder, sparsify.xformers):
    assert module.__file__.startswith(site), f"{module.__name__} came from {module.__file__}, not the wheels"
print(f"installed with --no-index --no-deps and imported from the wheels: transformer_lens, datasets, sparsify")
PYTHON
