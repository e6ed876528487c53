#!/usr/bin/env bash
# `make test-arm64`: the real agent on ARM64 — Debian bookworm's arm64 Python, numpy, pyopencl and PoCL,
# emulated by qemu-user-static — runs doctor, a numpy epoch, and two OpenCL steps checked against numpy.
#
#   tests/arm64/run.sh            build the userland once (cached in .arm64/rootfs), then run and check
#   ARM64_REBUILD=1 tests/arm64/run.sh     build the userland again
#   ARM64_NO_BINFMT=1 tests/arm64/run.sh   act as if binfmt_misc were unavailable (the fallback below)
#
# Needs root (debootstrap, chroot, a private mount namespace) and Debian's mirror the first time.
# Why a chroot and binfmt_misc rather than `qemu-aarch64-static -L ROOTFS`: -L redirects only some
# system calls (PoCL's faccessat of its kernel library escapes it), and PoCL links every kernel by
# running the arm64 `ld` in a child process, which only the kernel's binfmt_misc can hand to qemu.
# Without binfmt_misc the run goes on (chroot + qemu as the entry program): doctor and the numpy
# engine run, the OpenCL step is reported SKIPPED with the reason.
set -euo pipefail
cd "$(dirname "$0")/../.."
REPO=$PWD
CACHE=$REPO/.arm64
ROOTFS=$CACHE/rootfs
SUITE=bookworm
# The Debian mirror this machine's apt already uses (deb822 "URIs:" or a one-line "deb URL ..." entry).
apt_mirror() {
  local f url=""
  for f in /etc/apt/sources.list.d/*.sources /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [ -f "$f" ] || continue
    url=$(awk '/^URIs:/ {print $2}
               $1 == "deb" {for (i = 2; i <= NF; i++) if ($i ~ /^[a-z]+:\/\//) {print $i; break}}' "$f" |
          grep -v -e security -e updates | head -n 1) || true
    [ -n "$url" ] && break
  done
  echo "$url"
}
MIRROR=${ARM64_MIRROR:-$(apt_mirror)}
PACKAGES=python3,python3-numpy,python3-pyopencl,pocl-opencl-icd,ocl-icd-libopencl1
STAMP=$ROOTFS/.thomas-rootfs        # holds "$SUITE $PACKAGES" once the userland is complete
T0=$(date +%s.%N)
since() { echo "$(date +%s.%N) $1" | awk '{printf "%.1f", $1 - $2}'; }
say() { echo "arm64: $*" >&2; }
# What this machine cannot provide (root, the host tools, the mirror) is not a failure of the agent:
# with ARM64_SKIP_UNAVAILABLE=1 (.ci/run) it is reported as SKIPPED and the run exits 0; a check that
# ran and failed always exits 1.
unavailable() {
  if [ "${ARM64_SKIP_UNAVAILABLE:-0}" = 1 ]; then say "SKIPPED: $*"; exit 0; fi
  say "$*"; exit 1
}

[ "$(id -u)" = 0 ] || unavailable "needs root (debootstrap, chroot, mount namespace): run it as root or with sudo"

host_tools() {
  local need=()
  command -v debootstrap >/dev/null || need+=(debootstrap)
  command -v qemu-aarch64-static >/dev/null || need+=(qemu-user-static)
  command -v unshare >/dev/null || need+=(util-linux)
  [ ${#need[@]} = 0 ] && return
  command -v apt-get >/dev/null || unavailable "missing ${need[*]} and apt-get is not here"
  say "installing ${need[*]}"
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null; } ||
    unavailable "could not install ${need[*]} with apt-get"
}

# debootstrap --foreign resolves and downloads the packages (and unpacks the base set); the rest of
# its second stage would run arm64 maintainer scripts, so the .debs are unpacked with dpkg-deb instead
# and the two links update-alternatives would make (BLAS, LAPACK for numpy) are made by hand.
build_rootfs() {
  local tmp=$CACHE/rootfs.tmp lib
  rm -rf "$tmp"
  mkdir -p "$CACHE"
  [ -n "$MIRROR" ] || unavailable "no Debian mirror in this machine's apt sources (set ARM64_MIRROR)"
  say "building the Debian $SUITE arm64 userland ($PACKAGES) from $MIRROR"
  debootstrap --foreign --arch=arm64 --variant=minbase --include="$PACKAGES" "$SUITE" "$tmp" "$MIRROR" \
    >"$CACHE/debootstrap.log" 2>&1 || { tail -5 "$CACHE/debootstrap.log" >&2; rm -rf "$tmp"
    unavailable "debootstrap could not fetch the arm64 userland (see $CACHE/debootstrap.log)"; }
  for deb in "$tmp"/var/cache/apt/archives/*.deb; do dpkg-deb -x "$deb" "$tmp"; done
  rm -f "$tmp"/var/cache/apt/archives/*.deb
  lib=$tmp/usr/lib/aarch64-linux-gnu
  ln -sf blas/libblas.so.3 "$lib/libblas.so.3"
  ln -sf lapack/liblapack.so.3 "$lib/liblapack.so.3"
  cp "$(command -v qemu-aarch64-static)" "$tmp/usr/bin/qemu-aarch64-static"   # the no-binfmt fallback
  echo "$SUITE $PACKAGES" >"$tmp/.thomas-rootfs"
  rm -rf "$ROOTFS" && mv "$tmp" "$ROOTFS"
}

# binfmt_misc hands every arm64 ELF to qemu (flag F: the interpreter is opened now, so it works in the chroot).
binfmt() {
  local dir=/proc/sys/fs/binfmt_misc conf=/usr/lib/binfmt.d/qemu-aarch64.conf interp
  [ -e $dir/register ] || mount -t binfmt_misc binfmt_misc $dir 2>/dev/null || return 1
  if [ ! -e $dir/qemu-aarch64 ]; then
    [ -f $conf ] && cat $conf >$dir/register 2>/dev/null || return 1
    say "registered qemu-aarch64 with binfmt_misc ($conf)"
  fi
  grep -q enabled $dir/qemu-aarch64 || echo 1 >$dir/qemu-aarch64 2>/dev/null || return 1
  # a handler without flag F is looked up inside the chroot: put qemu at its path there
  interp=$(awk '/^interpreter/ {print $2}' $dir/qemu-aarch64)
  grep -q '^flags:.*F' $dir/qemu-aarch64 || { mkdir -p "$ROOTFS$(dirname "$interp")" &&
    cp -f "$(command -v qemu-aarch64-static)" "$ROOTFS$interp"; }
}

host_tools
if [ "${ARM64_REBUILD:-0}" = 1 ] || [ "$(cat "$STAMP" 2>/dev/null)" != "$SUITE $PACKAGES" ]; then
  build_rootfs
  BUILD_S=$(since "$T0")
  say "userland ready in ${BUILD_S}s ($(du -sh "$ROOTFS" | cut -f1))"
else
  BUILD_S=0
  say "userland cached in $ROOTFS"
fi
if [ "${ARM64_NO_BINFMT:-0}" != 1 ] && binfmt; then ENTRY=(); MODE=binfmt; else ENTRY=(/usr/bin/qemu-aarch64-static); MODE=no-binfmt
  say "binfmt_misc cannot be used here: arm64 child processes cannot start, so the OpenCL step (PoCL links kernels with ld) is skipped"
fi

.venv/bin/python tests/arm64/prepare.py "$ROOTFS/thomas"
# Inside: a private mount namespace (the bind mounts vanish with it), /proc /sys /dev for Python,
# hwloc and PoCL, the device root as cwd with the pushed agent on PYTHONPATH, as the host's transports do.
inside() {   # inside NAME ARGS...: python3 -m device_agent ARGS > NAME.jsonl, log NAME.log, seconds in T_NAME
  local name=$1 t rc=0; shift
  t=$(date +%s.%N)
  unshare --mount --propagation private --fork sh -c '
    R=$1; shift
    for d in proc sys dev; do mount --rbind /$d "$R/$d"; done
    exec chroot "$R" /usr/bin/env -i PATH=/usr/bin:/bin HOME=/thomas PYTHONPATH=/thomas/agent THOMAS_THREADS=1 \
      POCL_CACHE_DIR=/thomas/pocl-cache sh -c "cd /thomas && exec \"\$@\"" sh "$@"' \
    sh "$ROOTFS" "${ENTRY[@]}" /usr/bin/python3 -m device_agent "$@" \
    >"$ROOTFS/thomas/$name.jsonl" 2>"$ROOTFS/thomas/$name.log" || rc=$?
  printf -v "T_$name" %s "$(since "$t")"
  local var=T_$name; say "$name: exit $rc in ${!var}s"
  [ $rc = 0 ] || { tail -5 "$ROOTFS/thomas/$name.log" >&2; return $rc; }
}
inside doctor doctor
inside epoch run jobs/epoch.json
inside np2 run jobs/np2.json
TIMES=(build="$BUILD_S" doctor="$T_doctor" epoch="$T_epoch" np2="$T_np2")
if [ $MODE = binfmt ]; then
  inside cl2 run jobs/cl2.json
  TIMES+=(cl2="$T_cl2")
fi
TIMES+=(total="$(since "$T0")")
SKIP=(); [ $MODE = binfmt ] || SKIP=(--no-opencl)
.venv/bin/python tests/arm64/check.py "$ROOTFS/thomas" --machine aarch64 "${SKIP[@]}" --times "${TIMES[@]}"
say "done in $(since "$T0")s (userland build ${BUILD_S}s; summary in $ROOTFS/thomas/summary.json)"
