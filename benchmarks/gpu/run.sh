#!/usr/bin/env bash
# The whole GPU check in one call on a fresh GPU machine (benchmarks/gpu/README.md): install the carried
# wheels (.whl) and this package, record the environment, run the CUDA tests and the benchmarks, write
# every table (txt and JSON) into OUT_DIR, and print one "GPU SUMMARY ..." line last.
#
# Every stage runs under its own time limit, cut further so that the whole run ends within 8 minutes; a
# stage that fails or hangs costs only its own time, and what it wrote stays. With ARCHIVE the folder is
# also packed into that .tar.gz after every stage. Without CUDA (a dry run on a CPU machine) the tests
# report their skips and each benchmark runs a seconds-long CPU smoke test of its code instead.
#
#   bash benchmarks/gpu/run.sh OUT_DIR [ARCHIVE.tar.gz]
#   PYTHON=.venv/bin/python bash benchmarks/gpu/run.sh /tmp/gpu-dry-run     # the dry run on a CPU machine
set -uo pipefail
cd "$(dirname "$0")/../.."
out=${1:?usage: bash benchmarks/gpu/run.sh OUT_DIR [ARCHIVE.tar.gz]}
archive=${2:-}
python=${PYTHON:-python3}
site=${VIT_SAE_SITE:-/tmp/vit-sae-hooks-site}
total_seconds=${GPU_RUN_SECONDS:-470}
mkdir -p "$out"
out=$(cd "$out" && pwd)
: > "$out/stages.txt"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 WANDB_MODE=disabled

note() { echo "[run.sh ${SECONDS}s] $*" | tee -a "$out/stages.txt"; }

# stage NAME SECONDS COMMAND...: run COMMAND with its output in OUT_DIR/NAME.txt, for at most SECONDS (and
# never past the run's deadline); print its last lines; note how it ended. Failures do not stop the run.
stage() {
  local name=$1 limit=$2
  shift 2
  local left=$((total_seconds - SECONDS - 15))
  if [ "$left" -lt 10 ]; then
    note "$name: not started, the run's ${total_seconds}s are spent"
    return
  fi
  [ "$limit" -le "$left" ] || limit=$left
  note "$name: started, limit ${limit}s"
  local begun=$SECONDS status
  timeout --kill-after=10 "$limit" "$@" > "$out/$name.txt" 2>&1
  status=$?
  if [ "$status" -eq 124 ] || [ "$status" -eq 137 ]; then
    note "$name: STOPPED at its limit after $((SECONDS - begun))s (partial results kept)"
  else
    note "$name: exit $status after $((SECONDS - begun))s"
  fi
  tail -n 12 "$out/$name.txt"
  if [ -n "$archive" ]; then
    tar -czf "$archive" -C "$(dirname "$out")" "$(basename "$out")"
  fi
}

install() {
  rm -rf "$site"
  if compgen -G ".whl/*.whl" > /dev/null; then
    # On the GPU machine (Python 3.12) that is every wheel; a dry run elsewhere skips the 3.12-only ones.
    local wheels
    mapfile -t wheels < <("$python" benchmarks/gpu/check_wheels.py .whl --installable-here)
    "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" \
      "${wheels[@]}" || return 1
  else
    echo "no .whl folder: run benchmarks/gpu/fetch_wheels.sh here first and carry .whl (transformer_lens is needed)"
  fi
  "$python" -m pip install -q --no-index --no-deps --no-build-isolation --no-cache-dir --upgrade --target "$site" . \
    || return 1
  ls "$site"
}
export -f install
export python site
stage install 90 bash -c install
export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
stage environment 30 "$python" benchmarks/gpu/environment.py --json "$out/environment.json"

if "$python" -c "import torch, sys; sys.exit(not torch.cuda.is_available())"; then
  device=cuda
else
  device=cpu
  note "no CUDA device: dry run (CUDA tests skip; benchmarks run CPU smoke tests)"
fi
timeout_option=()
if "$python" -c "import pytest_timeout" 2> /dev/null; then
  timeout_option=(--timeout 100)
fi
stage tests 210 "$python" -m pytest -m cuda tests -p no:cacheprovider -v -rfEsxX --continue-on-collection-errors \
  --junitxml "$out/pytest_cuda.xml" "${timeout_option[@]}"

# The summary's inputs first (bfloat16 SAE table, model, training); the float32 SAE table takes what is left.
if [ "$device" = cuda ]; then
  sae=(benchmarks/bench_sae.py --device cuda --shapes 768x49152x64,1024x65536x32 --sizes 16384,4096,65536
       --compile --compile-sizes 16384 --sparsify --repeats 10 --seconds-per-row 1.5 --no-density)
  # Tile/warp variants: 64:8 (the default) and 32:8 only; 64:4 and 128:8 spill (triton_resources.py) and each
  # costs ~17 s of compilation.
  stage bench_sae_bfloat16 100 "$python" "${sae[@]}" --dtype bfloat16 --time-budget 75 \
    --triton-configs 64:8,32:8 --json "$out/bench_sae_bfloat16.json"
  stage bench_model 40 "$python" benchmarks/bench_model.py --device cuda --dtype bfloat16 --batch 256 --repeats 10 \
    --json "$out/bench_model.json"
  stage bench_train 40 "$python" benchmarks/bench_train.py --device cuda --batch 4096 --repeats 20 \
    --json "$out/bench_train.json"
  stage bench_sae_float32 60 "$python" "${sae[@]}" --dtype float32 --time-budget 40 --json "$out/bench_sae_float32.json"
else
  sae=(benchmarks/bench_sae.py --device cpu --quick --sparsify --no-density --repeats 2)
  stage bench_sae_bfloat16 60 "$python" "${sae[@]}" --dtype bfloat16 --json "$out/bench_sae_bfloat16.json"
  stage bench_model 90 "$python" benchmarks/bench_model.py --device cpu --quick --repeats 1 --json "$out/bench_model.json"
  stage bench_train 60 "$python" benchmarks/bench_train.py --device cpu --quick --repeats 1 --json "$out/bench_train.json"
  stage bench_sae_float32 60 "$python" "${sae[@]}" --dtype float32 --json "$out/bench_sae_float32.json"
fi
note "done; summary follows"
"$python" benchmarks/gpu/summary.py "$out"
if [ -n "$archive" ]; then
  tar -czf "$archive" -C "$(dirname "$out")" "$(basename "$out")"
fi
