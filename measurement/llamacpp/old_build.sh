#!/bin/bash
# One device call: llama.cpp as of 2024-05-12 (and, unless NEW=0, today's build beside it) on the same GPU and the
# same random-weight GGUF files.
# usage: [PLAN="llama3-8b:Q4_K_M llama2-13b:Q4_0"] [NEW=0] [BUDGET_S=540] bash measurement/llamacpp/old_build.sh
#        (carry .llamacpp/old and .llamacpp/pack_src)
#
# .llamacpp/old/old_src.tar.xz: the llama.cpp tree vendored by llama-cpp-python 0.2.74's source release on PyPI
# (commit b228aba9 of 2024-05-12, "remove convert-lora-to-ggml.py (#7204)"), with the kompute, vulkan, sycl, media and
# docs parts removed; it builds with its own option names (LLAMA_CUDA) and targets (llama-bench, quantize).
# .llamacpp/pack_src: today's tree (llama-cpp-python 0.3.36's, the measured rows' engine), built here alongside the old
# one unless NEW=0 (its binaries are too large to carry beside the repository), and its gguf-py and vocabulary files,
# which write the random-weight F16 GGUF of each catalog model that both builds read.
# PLAN: catalog model : GGUF types to quantize to (comma-separated; F16 is always benched). Default: call 28's plan.
# Why: one published source (xiongjiedai, builds b2824-b2843 of May 2024) holds most published llama.cpp decode rows
# and decodes slower on A100 / H100 than today's builds imply; this measures the build's share.
# Every result is written under $OUT as it exists (llama-bench -o json per build, model and flash-attention setting);
# a step that would start after BUDGET_S seconds is skipped (said in the log).
set -u
export PYTHONUNBUFFERED=1
OUT=${OUT:-out}; W=/tmp/lcpp_old; T0=$(date +%s); mkdir -p "$W/old" "$OUT"
PLAN=${PLAN:-"llama3-8b:Q4_K_M"}; NEW=${NEW:-1}; BUDGET_S=${BUDGET_S:-540}
t() { echo "[$(( $(date +%s) - T0 ))s] $*"; }
late() { [ $(( $(date +%s) - T0 )) -gt "$BUDGET_S" ] && { t "SKIPPED (past ${BUDGET_S}s): $*"; return 0; }; return 1; }
tar -xJf .llamacpp/pack_src/src.tar.xz -C "$W"
tar -xJf .llamacpp/old/old_src.tar.xz -C "$W/old"
CUBLAS=$(ls /usr/local/cuda/lib64/libcublas.so.13 2>/dev/null || find /usr /opt -name 'libcublas.so.13' 2>/dev/null | head -1)
export LD_LIBRARY_PATH="$W/build/bin:$(dirname "${CUBLAS:-/usr/local/cuda/lib64/x}"):/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}"
python3 -c "import torch; p = torch.cuda.get_device_properties(0); print(p.name, 'multi_processor_count', p.multi_processor_count)" \
  > "$OUT/gpu_props.txt" 2>&1
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv >> "$OUT/gpu_props.txt" 2>&1
t "unpacked; $(tr '\n' ' ' < "$OUT/gpu_props.txt")"
( cd "$W/old/llama.cpp" \
  && cmake -B build -DLLAMA_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90 -DLLAMA_NATIVE=OFF -DLLAMA_BUILD_TESTS=OFF \
       -DLLAMA_CURL=OFF -DCMAKE_BUILD_TYPE=Release > "$OUT/old_cmake.log" 2>&1 \
  && cmake --build build -j "$(nproc)" --target llama-bench quantize > "$OUT/old_build.log" 2>&1 \
  && touch "$W/old.ok" || touch "$W/old.fail" ) &
if [ "$NEW" = 1 ]; then
  ( python3 -m measurement.llamacpp.build build "$W" --arch 90 --jobs "$(nproc)" > "$OUT/new_build.log" 2>&1 \
    && touch "$W/new.ok" || touch "$W/new.fail" ) &
fi
for entry in $PLAN; do
  m=${entry%%:*}
  PYTHONPATH="$W/src/gguf-py:${PYTHONPATH:-}" python3 -c "
from profiles import load
from measurement.llamacpp.gguf_arch import arch_spec, write_gguf
print(write_gguf(arch_spec(load().llm('$m')), '$W/$m-F16.gguf', '$W/src/models'))" > "$OUT/gguf_$m.log" 2>&1
  t "gguf $m: $(tail -1 "$OUT/gguf_$m.log")"
done
while [ ! -e "$W/old.ok" ] && [ ! -e "$W/old.fail" ]; do sleep 5; done
if [ -e "$W/old.fail" ]; then t "OLD BUILD FAILED"; tail -40 "$OUT/old_cmake.log" "$OUT/old_build.log"; fi
t "old build done"
Q="$W/old/llama.cpp/build/bin/quantize"
bench() {  # build model type fa
  local B="$W/old/llama.cpp/build/bin/llama-bench"; [ "$1" = new ] && B="$W/build/bin/llama-bench"
  [ -x "$B" ] && [ -e "$W/$2-$3.gguf" ] || return
  late "$1 $2 $3 fa=$4" && return
  "$B" -m "$W/$2-$3.gguf" -p 512 -n 128 -ngl 99 -fa "$4" -r 3 -o json > "$OUT/bench_$1_$2_$3_fa$4.json" 2> "$OUT/bench_$1_$2_$3_fa$4.err"
  t "$1 $2 $3 fa=$4: $(python3 -c "import json,sys; [print(r['n_prompt'], r['n_gen'], round(r['avg_ts'],1), end='; ') for r in json.load(open(sys.argv[1]))]" "$OUT/bench_$1_$2_$3_fa$4.json" 2>&1 | tail -c 200)"
}
for entry in $PLAN; do
  m=${entry%%:*}; types=${entry#*:}
  for fa in 0 1; do bench old "$m" F16 "$fa"; done
  for q in ${types//,/ }; do
    late "quantize $m $q" && continue
    "$Q" "$W/$m-F16.gguf" "$W/$m-$q.gguf" "$q" > "$OUT/quantize_${m}_$q.log" 2>&1
    t "quantized $m $q: $(tail -2 "$OUT/quantize_${m}_$q.log" | tr '\n' ' ')"
    for fa in 0 1; do bench old "$m" "$q" "$fa"; done
  done
done
if [ "$NEW" = 1 ]; then
  while [ ! -e "$W/new.ok" ] && [ ! -e "$W/new.fail" ]; do sleep 5; done
  [ -e "$W/new.fail" ] && { t "NEW BUILD FAILED"; tail -30 "$OUT/new_build.log"; }
  t "new build done"
  for entry in $PLAN; do
    m=${entry%%:*}; types=${entry#*:}
    for q in F16 ${types//,/ }; do for fa in 0 1; do bench new "$m" "$q" "$fa"; done; done
  done
fi
t "done"
