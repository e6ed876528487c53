#!/usr/bin/env bash
# On NVIDIA one out-of-bounds kernel leaves its process's CUDA context unusable (every later read or write
# fails with OUT_OF_RESOURCES, every new context with -9999), so an xdist worker fails hundreds of tests for
# one fault. This runs each given OpenCL test file in its own processes, -x, deselecting each first failure
# and running again (up to ROUNDS times), and prints the tests that failed first: the faulting kernels.
# usage (device tool, after sourcing opencl-setup.sh): bash benchmarks/device/isolate_faults.sh tests/test_cl_x.py ...
set -u
OUT=${OUT:-/tmp/out}; ROUNDS=${ROUNDS:-4}; mkdir -p "$OUT/faults"
one() {
  local f=$1 name; name=$(basename "$f" .py); local sel=()
  for r in $(seq 1 "$ROUNDS"); do
    timeout "${T_FILE:-120}" python3 -m pytest "$f" -x -q -p no:cacheprovider -p no:xdist "${sel[@]}" \
      > "$OUT/faults/$name.$r.log" 2>&1
    local first; first=$(grep -m1 -oE '^FAILED [^ ]+' "$OUT/faults/$name.$r.log" | cut -d' ' -f2)
    [ -z "$first" ] && { echo "$name round $r: $(tail -1 "$OUT/faults/$name.$r.log")"; return; }
    echo "$name round $r: FIRST $first :: $(grep -m1 -E '^E  ' "$OUT/faults/$name.$r.log" | cut -c1-160)"
    sel+=(--deselect "$first")
  done
}
export -f one; export OUT ROUNDS
printf '%s\n' "$@" | xargs -P "${JOBS:-8}" -I{} bash -c 'one {}'
