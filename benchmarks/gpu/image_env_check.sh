#!/usr/bin/env bash
# The GPU image's library versions, on this CPU machine: a venv with the image's transformers, huggingface_hub,
# triton, jaxtyping and safetensors (KINDS.md in the device tool's notes lists them), the carried wheels (.whl)
# installed --no-deps as run.sh installs them there, this package --no-deps, and the whole test suite. It finds
# what would break on the GPU machine because its versions differ from this machine's, before device time is spent.
# torch stays this machine's CPU build (the image's 2.11 is a multi-GB CUDA download here); numpy stays below 2.4,
# where triton 3.6's CPU interpreter still converts its 1-element arrays to ints (compiled kernels on the GPU do
# not go through it).
#
#   bash benchmarks/gpu/fetch_wheels.sh && bash benchmarks/gpu/image_env_check.sh [VENV]
set -euo pipefail
cd "$(dirname "$0")/../.."
venv=${1:-/tmp/vit-sae-image-env}
python=${PYTHON:-python3}
[ -d .whl ] || { echo "no .whl: run benchmarks/gpu/fetch_wheels.sh first"; exit 2; }
rm -rf "$venv"
"$python" -m venv "$venv"
pip=("$venv/bin/pip" install -q)
# The image's versions (2026-11), and what the carried wheels import that the image has.
"${pip[@]}" torch==2.13.0 transformers==5.17.0 huggingface_hub==1.33.0 triton==3.6.0 jaxtyping==0.3.11 \
  safetensors==0.8.0 "numpy<2.4" einops pytest hypothesis tqdm pillow matplotlib packaging pandas pyarrow xxhash \
  fsspec requests aiohttp pyyaml filelock accelerate
mapfile -t wheels < <("$venv/bin/python" benchmarks/gpu/check_wheels.py .whl --installable-here 2>/dev/null)
"${pip[@]}" --no-deps "${wheels[@]}" multiprocess  # multiprocess's wheel is for 3.12 only; this Python's own copy
"${pip[@]}" --no-deps -e .
"$venv/bin/pip" list 2>/dev/null | grep -iE "^(torch|transformers|huggingface.hub|triton|numpy|transformer.lens) "
# The browser tests need Chromium and websocket-client, the demo rebuild is slow and version-independent.
"$venv/bin/python" -m pytest -q -p no:cacheprovider --deselect tests/demo --ignore tests/viz/test_site_browser.py
