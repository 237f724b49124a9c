#!/bin/bash
# One llama.cpp measurement call on the GPU machine (issue 12).
# usage: [PRE='cmd'] [DEFINES='-DX=ON ...'] bash measurement/llamacpp/device.sh PLAN BUDGET_S SOURCE_ID COMMIT [PACK_DIR]
# DEFINES: code-changing cmake options for a fresh build (recorded in every row's build_flags).
#
# PACK_DIR (default .llamacpp/pack, carried) holds src.tar.xz (the pruned llama.cpp tree, made by
# `python -m measurement.llamacpp.build prepare`; needed to build) or rt.tar.xz (only gguf-py, the
# vocabulary files and VERSION.json: enough with a carried build), and optionally bin.tar.xz.NN (a finished
# build from an earlier call, xz tarball split in parts; stripped with `strip --strip-unneeded` to fit).
# Uses the carried build if its binaries load here, else builds (about 4 minutes on 16 cores) while the
# runner already writes F16 GGUFs and measures the machine's peaks; a fresh build is packed into
# $OUT/bin.tar.xz.NN (15 MiB parts) so the next call can carry it.
set -u
export PYTHONUNBUFFERED=1
PLAN=$1; BUDGET=$2; SID=$3; COMMIT=$4; PACK=${5:-.llamacpp/pack}
OUT=${OUT:-out}; W=/tmp/lcpp; mkdir -p "$W/src" "$OUT"
T0=$(date +%s)
[ -f "$PACK/src.tar.xz" ] && tar -xJf "$PACK/src.tar.xz" -C "$W"
[ -f "$PACK/rt.tar.xz" ] && tar -xJf "$PACK/rt.tar.xz" -C "$W/src"
CUBLAS=$(ls /usr/local/cuda/lib64/libcublas.so.13 2>/dev/null || find /usr /opt -name 'libcublas.so.13' 2>/dev/null | head -1)
export LD_LIBRARY_PATH="$W/build/bin:$(dirname "${CUBLAS:-/usr/local/cuda/lib64/x}"):/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}"
BUILT=0; rm -f "$W/BUILD_FAILED"
if [ -n "${DEFINES:-}" ]; then rm -rf "$W/build"; fi  # code-changing options: never a carried or leftover build
if [ -z "${DEFINES:-}" ] && ls "$PACK"/bin.tar.xz* >/dev/null 2>&1; then
  mkdir -p "$W/build" && cat "$PACK"/bin.tar.xz* | xz -dc -T0 | tar -x -C "$W/build"
  if ldd "$W/build/bin/llama-bench" | grep -q "not found"; then
    echo "carried binaries miss libraries:"; ldd "$W/build/bin/llama-bench" | grep "not found"
  elif "$W/build/bin/llama-bench" --list-devices >"$W/devices.txt" 2>&1; then
    BUILT=1; cat "$W/devices.txt"
  else
    echo "carried binaries do not run:"; tail -5 "$W/devices.txt"
  fi
fi
# a build left by an earlier call on this same (still warm) machine
if [ "$BUILT" = 0 ] && [ -x "$W/build/bin/llama-bench" ] && "$W/build/bin/llama-bench" --list-devices >"$W/devices.txt" 2>&1; then
  BUILT=1; echo "reusing the build an earlier call left in $W/build"
fi
echo "setup $(( $(date +%s) - T0 ))s, carried build usable: $BUILT, cublas: $CUBLAS"
if [ "$BUILT" = 1 ]; then
  ln -sfn "$W/build/bin" "$W/ready"
else
  rm -rf "$W/build"
  # NOPACK=1: keep the build on this machine only (a later call reuses it while the machine stays warm)
  ( python3 -m measurement.llamacpp.build build "$W" --arch 90 --jobs "$(nproc)" $(for d in ${DEFINES:-}; do echo "--define=$d"; done) > "$W/build.log" 2>&1 \
      && ln -sfn "$W/build/bin" "$W/ready" && echo "build done $(( $(date +%s) - T0 ))s" \
      && { [ -n "${NOPACK:-}" ] || { ( cd "$W/build" && tar -cf - bin/llama-bench bin/llama-batched-bench \
             bin/llama-quantize bin/*.so* -C "$W/src" VERSION.json | xz -T4 -6 | split -b 15M -d - "$OUT/bin.tar.xz." ) \
           && echo "packed $(( $(date +%s) - T0 ))s: $(ls -la $OUT/bin.tar.xz.* | awk '{print $5}' | tr '\n' ' ')"; }; } \
      || { echo "BUILD FAILED"; touch "$W/BUILD_FAILED"; tail -30 "$W/build.log"; } ) &
fi
WAIT=()
if [ -n "${PRE:-}" ]; then  # GPU work beside the build and the GGUF writing (the 2-GPU call: the harness TP sweep)
  rm -f "$W/pre.done"; WAIT=(--wait-file "$W/pre.done")
  ( echo "PRE: $PRE"; bash -c "$PRE"; echo "PRE done $(( $(date +%s) - T0 ))s"; touch "$W/pre.done" ) &
fi
LEFT=$(( BUDGET - ($(date +%s) - T0) ))
FLAGS=$(python3 -c "import sys; from measurement.llamacpp.build import cmake_flags; print(' '.join(cmake_flags('90', tuple(sys.argv[1:]))))" ${DEFINES:-})
python3 -m measurement.llamacpp.run --plan "$PLAN" --budget "$LEFT" --out "$OUT" --bin "$W/ready" --src "$W/src" --build-flags "$FLAGS" \
  --source-id "$SID" --commit "$COMMIT" "${WAIT[@]}"
wait
[ -f "$W/build.log" ] && { echo "--- build.log tail"; tail -5 "$W/build.log"; } >> "$OUT/run.log"
python3 - "$OUT/rows.csv" <<'EOF'
import csv, sys, collections
rows = list(csv.DictReader(open(sys.argv[1]))) if __import__('os').path.exists(sys.argv[1]) else []
c = collections.Counter((r['model'], r['gguf_type'], r['metric'], r['status']) for r in rows)
for k, n in sorted(c.items()): print(*k, n)
for r in rows:
    if r['batch'] == '1' and r['metric'] == 'decode_tok_s' and r['depth'] == '0' and r['kv_dtype'] == 'fp16':
        print('tg', r['model'], r['gguf_type'], r['value'], 'roof', r['roofline_value'], 'frac', r['roofline_frac'], r['avg_power_w'])
print('rows', len(rows), 'flagged', sum(r['roofline_flag'] != '' for r in rows))
EOF
