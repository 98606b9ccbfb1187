#!/usr/bin/env bash
# The GPU check: what a session with a device runs once and records (bench/README.md, "gpu_check.sh").
#
#   bash bench/gpu_check.sh            # on the GPU machine: <= 8 minutes; results in bench/results/*-cuda*.json
#   bash bench/gpu_check.sh --cpu      # the same steps at a tiny size on a CPU (~1 minute; what CI runs)
#
# Steps:
#   1. pre-training throughput, ours vs a minimal hand-written loop, bf16 + torch.compile, at the 124M
#      (llama-base, V=50304, 16x1024) and ~30M (llama-medium, V=8192, 32x512) presets: MFU and the ratio;
#   2. the grouped fine-tuning step (K llama-nano models stacked vs a loop over them), K = 1, 16, 64;
#   3. the paper-like preset's model and schedule through the real pipeline (pre-train a few hundred
#      steps -> fine-tune -> noise probe -> findings), on the HMM language (the device has no network, and
#      the paper-like preset's English corpus is downloaded by `overtrain data prepare`).
# Without CUDA (or with --cpu) every step runs at a tiny size, so the script cannot rot unnoticed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${OUT:-bench/results}
mkdir -p "$OUT"
if [[ "${1:-}" == "--cpu" ]] || ! "$PY" -c "import sys, torch; sys.exit(not torch.cuda.is_available())"; then
  DEVICE=cpu
else
  DEVICE=cuda
fi
export OVERTRAIN_HOME=${OVERTRAIN_HOME:-$(mktemp -d)}
echo "gpu_check: device $DEVICE, store $OVERTRAIN_HOME, results $OUT"
T0=$SECONDS

HMM_PRE='{name: hmm, seed: 0, states: 64, vocab_size: 512}'
HMM_TASK='{name: hmm, seed: 1, states: 64, vocab_size: 512}'
if [[ $DEVICE == cuda ]]; then
  "$PY" bench/pretrain_throughput.py --device cuda --preset llama-base --vocab 50304 --batch-size 16 \
    --seq-len 1024 --dtype bfloat16 --compile --repeats 5 --target-s 2 \
    --out "$OUT/pretrain_throughput-cuda-llama-base-bfloat16-compile.json"
  "$PY" bench/pretrain_throughput.py --device cuda --preset llama-medium --vocab 8192 --batch-size 32 \
    --seq-len 512 --dtype bfloat16 --compile --repeats 5 --target-s 2 \
    --out "$OUT/pretrain_throughput-cuda-llama-medium-bfloat16-compile.json"
  "$PY" bench/batched_training.py --cases step --members 1 16 64 --device cuda --repeats 3 \
    --out "$OUT/batched_training-cuda.json"
  PIPELINE=(
    --preset paper-like
    "pretrain.data=$HMM_PRE" "finetune.data=$HMM_TASK" "finetune.ood=null"
    "pretrain.train.tokens=[13.1M,26.2M]" "pretrain.train.warmup_steps=20"
    "pretrain.checkpoint={log_spaced: true, every: 100, resume_every: 100}"
    "pretrain.device=cuda"
    "seeds=[0]" "finetune.train={steps: 100, batch_size: 64, schedule: cosine, warmup_steps: 10}"
    "finetune.lrs=[1.0e-4]" "sensitivity.draws=2"
  )
else
  "$PY" bench/pretrain_throughput.py --preset llama-nano --vocab 64 --batch-size 8 --seq-len 32 \
    --repeats 3 --steps 3 --warmup 1 --peak-n 256 --out "$OUT/pretrain_throughput-gpu-check-cpu-tiny.json"
  "$PY" bench/batched_training.py --cases step --members 1 2 --repeats 1 --step-batches 16 \
    --out "$OUT/batched_training-gpu-check-cpu-tiny.json"
  PIPELINE=(
    --preset demo
    "pretrain.train.tokens=[16384,32768]" "pretrain.train.batch_size=16" "pretrain.train.warmup_steps=5"
    "pretrain.monitor=null" "pretrain.eval.batches=2"
    "seeds=[0]" "finetune.train={steps: 5, batch_size: 8}" "finetune.lrs=[1.0e-2]"
    "finetune.method_lrs={lora: [1.0e-2]}" "sensitivity.draws=1" "sensitivity.gammas=[1.0]"
    "sensitivity.eval_batches=1" "sensitivity.batch_size=16"
  )
fi
# the linear-theory runs of the study are CPU work at any scale: small in both modes
PIPELINE+=(
  "theory.max_steps=2000" "theory.seeds=[1]" "theory.draws=4"
  "theory_control.max_steps=2000" "theory_control.seeds=[1]" "theory_control.draws=4"
  "forecast_theory.max_steps=2000" "forecast_theory.seeds=[1]" "forecast_theory.draws=4"
)
"$PY" -m overtrain.cli.main overtraining "${PIPELINE[@]}" --report "$OVERTRAIN_HOME/report"
echo "gpu_check: done in $((SECONDS - T0)) s"
