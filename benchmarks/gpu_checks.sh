#!/usr/bin/env bash
# Issue 15's GPU checks as one run, sized for a 15-minute device lease (about 8 minutes of commands):
#   1. benchmarks/bench_train.py --gpu: the `tiny` shape in bf16 with FSDP2 on one GPU, tokens/s and MFU
#      against the measured bf16 peak, skip tokens on and off (docs/training-performance.md);
#   2. benchmarks/bench_vs_llava_next.py --gpu: inference side by side with transformers' LLaVA-NeXT at the
#      `tiny` size (time to first token, decode, batch-8 throughput, end to end; docs/training-performance.md).
# Each step has its own time limit and log; a failing step does not stop the other.
#
#   bash benchmarks/gpu_checks.sh [OUT_DIR]     # from the repository root; OUT_DIR defaults to $OUT, else runs/gpu-checks
#   SMOKE=1 bash benchmarks/gpu_checks.sh       # the same script on a CPU at nano size (checks the script, ~2 min)
#
# It needs no install of this package (PYTHONPATH=.); torch, transformers and timm come from the machine.
set -uo pipefail
out=${1:-${OUT:-runs/gpu-checks}}
mkdir -p "$out"
export PYTHONPATH=.${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
python=${PYTHON:-python3}
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  "$python" -c "import torch, transformers, timm; print('torch', torch.__version__, 'transformers', transformers.__version__, 'timm', timm.__version__)"
} 2>&1 | tee "$out/machine.txt"
train=(--gpu)
infer=(--gpu)
if [[ -n "${SMOKE:-}" ]]; then
  train=(--smoke)
  infer=(--sizes nano --dtypes bf16 --reps 1 --new-tokens 4)
fi
status=0
timeout 300 "$python" benchmarks/bench_train.py "${train[@]}" 2>&1 | tee "$out/bench_train.log" || status=1
timeout 200 "$python" benchmarks/bench_vs_llava_next.py "${infer[@]}" 2>&1 | tee "$out/bench_vs_llava_next.log" || status=1
exit $status
