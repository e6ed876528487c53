#!/usr/bin/env bash
# A/B of tuning variants on whole model steps on the H100 (benchmarks/plan_ab.py: the variants' Plans
# alternated in rounds, each kernel's time per variant, PyTorch/cuDNN beside them), one log per
# model and stage in $OUT. Carry .clean with .whl inside, as h100_session.sh.
# usage: [MODELS="alexnet:full alexnet:infer"] [T=100] bash benchmarks/device/ab.sh 'name=JSON' ...
#   e.g. the H100's "small" GEMM tile (2026-12-07):
#   MODELS="alexnet:full alexnet:infer mobilenet_v2:full" bash benchmarks/device/ab.sh 'cur={}' \
#     's32x64={"gemm": {"small": {"MWG": 32, "NWG": 64, "KWG": 16, "MDIMC": 8, "NDIMC": 16, "LPAD": 0}}}'
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
source benchmarks/device/opencl-setup.sh > "$OUT/setup.log" 2>&1 || { cat "$OUT/setup.log"; exit 1; }
export THOMAS_CL_DEVICE=nvidia
variants=()
for v in "$@"; do variants+=(--variant "$v"); done
for m in ${MODELS:-alexnet:full}; do
  log="$OUT/ab_${m%%:*}_${m##*:}.log"
  timeout "${T:-100}" python3 benchmarks/plan_ab.py --model "${m%%:*}" --stage "${m##*:}" --batch 32 --rounds 5 \
    --torch cuda --top 14 "${variants[@]}" > "$log" 2>&1
  echo "$m rc=$?"; tail -22 "$log"
done
