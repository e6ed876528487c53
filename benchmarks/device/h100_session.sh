#!/usr/bin/env bash
# One device-tool call on the H100: the OpenCL suite on NVIDIA, the teardown check, the GEMM size rule
# against cuBLAS, and the model steps beside PyTorch/cuDNN. Writes logs and JSON to $OUT.
# usage (device tool, carry .whl): bash benchmarks/device/h100_session.sh [suite|bench|all]
set -u
what=${1:-all}
# short: everything in one call of < 10 minutes (suite capped at 200 s, shipped GEMM tiles only, fewer steps)
T_SUITE=300 T_GEMM=150 STEPS=10; [ "$what" = short ] && { T_SUITE=200; T_GEMM=80; STEPS=6; }
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
source benchmarks/device/opencl-setup.sh > "$OUT/setup.log" 2>&1 || { cat "$OUT/setup.log"; exit 1; }
export THOMAS_CL_DEVICE=nvidia
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$OUT/card.txt"
python3 -c 'import torch, numpy, pyopencl; print("torch", torch.__version__, "numpy", numpy.__version__, "pyopencl", pyopencl.VERSION_TEXT)' | tee -a "$OUT/card.txt"
python3 -c 'from device_agent.backends.opencl.runtime import Runtime; print(Runtime().info)' 2>&1 | tail -3 | tee -a "$OUT/card.txt"
if [ "$what" != bench ]; then
  timeout $T_SUITE python3 -m pytest tests/test_cl_*.py -q -p no:cacheprovider -n 14 -rfE --durations=10 > "$OUT/suite.log" 2>&1
  echo "suite rc=$?"; tail -25 "$OUT/suite.log"
  timeout 60 python3 benchmarks/teardown_check.py > "$OUT/teardown.log" 2>&1; echo "teardown rc=$?"; tail -5 "$OUT/teardown.log"
fi
if [ "$what" != suite ]; then
  timeout $T_GEMM python3 benchmarks/ops.py --device-only --torch-cuda --square 1024,2048,4096 --models '' --out "$OUT/gemm_shipped.json" > "$OUT/gemm.log" 2>&1; echo "gemm rc=$?"
  [ "$what" = short ] || for p in '{"MWG": 64, "NWG": 64, "KWG": 16, "MDIMC": 16, "NDIMC": 16}' '{"MWG": 128, "NWG": 128, "KWG": 32, "MDIMC": 16, "NDIMC": 16}'; do
    timeout 90 python3 benchmarks/ops.py --device-only --torch-cuda --square 1024,2048,4096 --models '' --gemm-params "$p" --out "$OUT/gemm_$(echo "$p" | tr -dc 0-9 | cut -c1-8).json" >> "$OUT/gemm.log" 2>&1; echo "gemm override rc=$?"
  done
  grep -iE "sgemm|cublas|%|square" "$OUT/gemm.log" | tail -30
  timeout 240 python3 benchmarks/plan_models.py --torch cuda --size 224 --batch 32 --steps $STEPS --stages infer,last,full,full_rc,full_rc_mixed --out "$OUT/plan_models.json" > "$OUT/plan.log" 2>&1; echo "plan rc=$?"; tail -30 "$OUT/plan.log"
  timeout 150 python3 benchmarks/device_memory.py --torch cuda --size 224 --batch 32 --stages ${MEM_STAGES:-full,full_rc,full_rc_mixed} --out "$OUT/device_memory.json" > "$OUT/memory.log" 2>&1; echo "memory rc=$?"; tail -8 "$OUT/memory.log"
fi
