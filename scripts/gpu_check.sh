#!/usr/bin/env bash
# GPU checks, for whenever a machine with a CUDA GPU is available (CI has none). Covers:
#   1. the GPU-only tests:  python -m pytest -m gpu tests/gpu  (at most 100 s)
#   2. DeepSpeed's CPU AdamW, compiled once (ZeRO-Offload trains with it; at most 100 s)
#   3. a bf16 training smoke run (at most 25 s of training, 40 s with start-up and export) of each strategy that
#      fits on one GPU (ddp, fsdp2, Lightning's fsdp, DeepSpeed ZeRO-2/-3 and their offload variants) on the tiny
#      config, each followed by `hycam export` of its checkpoint.
# (DeepSpeed's multi-rank behaviour - ZeRO-3 construction, resume, export - is tested on CPU in CI:
# tests/training/test_deepspeed.py.)
# Prints one summary line per check (PASS/FAIL, seconds); full logs under $OUT (default: /tmp/hycam_gpu_check).
# Whole script: the limits add up to 8 minutes on one GPU. Usage: bash scripts/gpu_check.sh
set -u
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
OUT=${OUT:-/tmp/hycam_gpu_check}
mkdir -p "$OUT"
export HF_HUB_OFFLINE=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
failures=0

check() {  # check NAME TIMEOUT_S COMMAND...
  local name=$1 limit=$2; shift 2
  local start=$SECONDS
  if timeout "$limit" "$@" >"$OUT/$name.log" 2>&1; then
    printf 'PASS %-28s %4ds\n' "$name" $((SECONDS - start))
  else
    printf 'FAIL %-28s %4ds (rc=%s, see %s)\n' "$name" $((SECONDS - start)) "$?" "$OUT/$name.log"
    failures=$((failures + 1))
  fi
}

if ! $PY -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "FAIL no CUDA GPU visible: nothing to check"; exit 1
fi

check gpu-tests 100 $PY -m pytest -q -m gpu tests/gpu -p no:cacheprovider
check deepspeed-cpu-adam 100 $PY -c "from deepspeed.ops.op_builder import CPUAdamBuilder; CPUAdamBuilder().load()"

smoke() {  # smoke NAME [OVERLAY]: up to 25 s of bf16 training on one GPU, then export of its checkpoint
  local name=$1 overlay=${2:-} dir="$OUT/run-$1"
  rm -rf "$dir"; mkdir -p "$dir"
  local args=(fit -c "$PWD/configs/tiny.yaml")
  [ -n "$overlay" ] && args+=(-c "$PWD/configs/trainer/$overlay.yaml")
  args+=(--trainer.accelerator gpu --trainer.devices 1 --trainer.precision bf16-mixed
         --trainer.max_steps 60 --trainer.max_time 00:00:00:25 --trainer.val_check_interval 30
         --model.activation_checkpointing true)
  check "smoke-$name" 40 bash -c "cd '$dir' && $PY -m hycam_pl.cli ${args[*]} && \
    ckpt=\$(find runs -path '*checkpoints/last*' -prune | head -1) && \
    $PY -m hycam_pl.cli export \"\$ckpt\" adapter-export"
}

smoke ddp ddp
smoke fsdp2 fsdp2
smoke fsdp fsdp
smoke zero2 deepspeed_zero2
smoke zero2-offload deepspeed_zero2_offload
smoke zero3 deepspeed_zero3
smoke zero3-offload deepspeed_zero3_offload

echo "gpu_check: $failures failed"
exit $((failures > 0))
