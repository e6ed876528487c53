# A/B of the GEMM "small" tile (products with fewer work-groups than 2 per compute unit: FC layers at batch 32)
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
source benchmarks/device/opencl-setup.sh > "$OUT/setup.log" 2>&1 || { cat "$OUT/setup.log"; exit 1; }
export THOMAS_CL_DEVICE=nvidia
timeout 120 python3 -m pytest tests/test_cl_dtype_auto.py tests/test_cl_conv_winograd.py tests/test_cl_conv_igemm.py \
  tests/test_cl_gemm_prefetch.py -q -p no:cacheprovider -n 14 -rfE > "$OUT/suite4.log" 2>&1; echo "suite4 rc=$?"; tail -4 "$OUT/suite4.log"
S='"KWG": 16, "LPAD": 0'
for m in alexnet:full alexnet:infer mobilenet_v2:full; do
  timeout 100 python3 benchmarks/plan_ab.py --model ${m%%:*} --stage ${m##*:} --batch 32 --rounds 5 --torch cuda --top 14 \
    --variant 'cur={}' \
    --variant "s32x64={\"gemm\": {\"small\": {\"MWG\": 32, \"NWG\": 64, \"MDIMC\": 8, \"NDIMC\": 16, $S}}}" \
    --variant "s32x128={\"gemm\": {\"small\": {\"MWG\": 32, \"NWG\": 128, \"MDIMC\": 8, \"NDIMC\": 16, $S}}}" \
    --variant "s32x32={\"gemm\": {\"small\": {\"MWG\": 32, \"NWG\": 32, \"MDIMC\": 8, \"NDIMC\": 8, $S}}}" \
    --variant "s32x64k32={\"gemm\": {\"small\": {\"MWG\": 32, \"NWG\": 64, \"MDIMC\": 8, \"NDIMC\": 16, \"KWG\": 32, \"LPAD\": 0}}}" \
    > "$OUT/ab_${m%%:*}_${m##*:}.log" 2>&1; echo "$m rc=$?"; tail -22 "$OUT/ab_${m%%:*}_${m##*:}.log"
done
