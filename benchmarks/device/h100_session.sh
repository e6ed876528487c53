#!/usr/bin/env bash
# Device-tool calls on the H100: the OpenCL suite on NVIDIA and the teardown check (suite), the model steps
# and driver-measured memory beside PyTorch/cuDNN, the shipped GEMM tiles against cuBLAS and the two
# convolution paths (bench). Writes logs and JSON to $OUT. Each mode fits one call
# (< 10 minutes); issue `bench` right after `suite` returns, while the machine is still warm.
# short: one call of < 10 minutes for when device time is scarce: the new kernels' tests, the teardown check
# and bench with tighter caps.
# usage (device tool, carry .clean with .whl inside): bash benchmarks/device/h100_session.sh suite|bench|short|all
set -u
what=${1:-all}
STEPS=${STEPS:-8}
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
source benchmarks/device/opencl-setup.sh > "$OUT/setup.log" 2>&1 || { cat "$OUT/setup.log"; exit 1; }
export THOMAS_CL_DEVICE=nvidia
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$OUT/card.txt"
python3 -c 'import torch, numpy, pyopencl; print("torch", torch.__version__, "numpy", numpy.__version__, "pyopencl", pyopencl.VERSION_TEXT)' | tee -a "$OUT/card.txt"
python3 -c 'from device_agent.backends.opencl.runtime import Runtime; print(Runtime().info)' 2>&1 | tail -3 | tee -a "$OUT/card.txt"
run() {  # run NAME SECONDS CMD...: output to $OUT/NAME.log, its rc and tail printed
  local name=$1 t=$2; shift 2
  timeout "$t" "$@" > "$OUT/$name.log" 2>&1; echo "$name rc=$?"; tail -${TAIL:-6} "$OUT/$name.log"
}
if [ "$what" = short ]; then
  TAIL=15 run suite_new 150 python3 -m pytest tests/test_cl_conv_winograd.py tests/test_cl_conv_igemm.py \
    tests/test_cl_mixed.py tests/test_cl_mixed_ops.py tests/test_cl_dropout_bits.py tests/test_cl_gemm_sizes.py \
    tests/test_cl_store.py -q -p no:cacheprovider -n 14 -rfE
  run teardown 40 python3 benchmarks/teardown_check.py
  STEPS=5 T_PLAN=150 T_MEM=90 T_GEMM=50 T_IM2COL=0 T_PROF=45 T_SWEEP=0
fi
if [ "$what" != bench ] && [ "$what" != short ]; then
  TAIL=25 run suite 300 python3 -m pytest tests/test_cl_*.py -q -p no:cacheprovider -n 14 -rfE --durations=10
  run teardown 60 python3 benchmarks/teardown_check.py
  # one faulting kernel fails its whole xdist worker (the CUDA context is lost): name the first failures
  # of each failing file in its own process
  failing=$(grep -oE '^FAILED tests/test_cl_[a-z0-9_]+\.py' "$OUT/suite.log" | cut -d' ' -f2 | sort -u)
  [ -z "$failing" ] || ROUNDS=2 T_FILE=60 timeout 200 bash benchmarks/device/isolate_faults.sh $failing
fi
if [ "$what" != suite ]; then
  TAIL=30 run plan ${T_PLAN:-180} python3 benchmarks/plan_models.py --torch cuda --size 224 --batch 32 --steps $STEPS \
    --stages infer,last,full,full_rc,full_rc_mixed --out "$OUT/plan_models.json"
  run memory ${T_MEM:-120} python3 benchmarks/device_memory.py --torch cuda --size 224 --batch 32 \
    --stages ${MEM_STAGES:-full,full_rc,full_rc_mixed} --out "$OUT/device_memory.json"
  TAIL=20 run gemm ${T_GEMM:-70} python3 benchmarks/ops.py --device-only --torch-cuda --square 1024,2048,4096 --models '' \
    --out "$OUT/gemm_shipped.json"
  # the convolution paths the H100 no longer runs by default (im2col, Winograd off), beside PyTorch
  [ "${T_IM2COL:-60}" = 0 ] || THOMAS_CL_CONV=im2col THOMAS_CL_WINOGRAD=0 run plan_im2col ${T_IM2COL:-60} \
    python3 benchmarks/plan_models.py --models alexnet --torch cuda --size 224 --batch 32 --steps $STEPS \
    --stages infer,full --out "$OUT/plan_im2col.json"
  TAIL=40 run profile ${T_PROF:-60} python3 benchmarks/plan_profile.py --models alexnet --stages full --top 25 \
    --out "$OUT/plan_profile.json"
  # implicit-GEMM tiles and the model GEMM tile on AlexNet (the missed targets), alternated in one process
  T='"KWG": 16, "MDIMC": 16, "NDIMC": 16'
  for st in infer full; do
    [ "${T_AB:-90}" = 0 ] || TAIL=30 run ab_alexnet_$st ${T_AB:-90} python3 benchmarks/plan_ab.py --model alexnet \
      --stage $st --batch 32 --rounds 5 --torch cuda --top 16 --variant 'cur={}' \
      --variant "ig128x64={\"conv2d\": {\"igemm_tile\": {\"MWG\": 128, \"NWG\": 64, $T, \"LPAD\": 4}}}" \
      --variant "ig64x128={\"conv2d\": {\"igemm_tile\": {\"MWG\": 64, \"NWG\": 128, $T, \"LPAD\": 4}}}" \
      --variant "ig128x128={\"conv2d\": {\"igemm_tile\": {\"MWG\": 128, \"NWG\": 128, $T, \"LPAD\": 4}}}" \
      --variant "gemm128x64={\"gemm\": {\"MWG\": 128, \"NWG\": 64, $T, \"PF\": 2}}"
  done
  [ "${T_SWEEP:-0}" = 0 ] || TAIL=20 run sweep ${T_SWEEP:-100} python3 benchmarks/gemm_sweep.py --square 4096 --forms nn,nt,tn --torch-cuda \
    --reps 3 --out "$OUT/gemm_sweep.json"
fi
