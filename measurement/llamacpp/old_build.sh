#!/bin/bash
# One device call: llama.cpp as of 2024-05-12 against today's build on the same GPU and the same GGUF files.
# usage: bash measurement/llamacpp/old_build.sh   (carry .llamacpp/old and .llamacpp/pack_src)
#
# .llamacpp/old/old_src.tar.xz: the llama.cpp tree vendored by llama-cpp-python 0.2.74's source release on PyPI
# (commit b228aba9 of 2024-05-12, "remove convert-lora-to-ggml.py (#7204)"), with the kompute, vulkan, sycl, media and
# docs parts removed; it builds with its own option names (LLAMA_CUDA) and targets (llama-bench, quantize).
# .llamacpp/pack_src: today's tree (llama-cpp-python 0.3.36's, the measured rows' engine), built here alongside the old
# one (its binaries are too large to carry beside the repository), and its gguf-py and vocabulary files, which write
# the random-weight Llama-3-8B-shaped F16 GGUF both builds read.
# Why: one published source (xiongjiedai, builds b2824-b2843 of May 2024) holds 251 of the 262 published llama.cpp
# decode rows and decodes 1.15-1.6x slower on A100 / H100 than today's builds imply; this measures the build's share.
# Every result is written under $OUT as it exists (llama-bench -o json per build and flash-attention setting).
set -u
export PYTHONUNBUFFERED=1
OUT=${OUT:-out}; W=/tmp/lcpp_old; T0=$(date +%s); mkdir -p "$W/old" "$OUT"
t() { echo "[$(( $(date +%s) - T0 ))s] $*"; }
tar -xJf .llamacpp/pack_src/src.tar.xz -C "$W"
tar -xJf .llamacpp/old/old_src.tar.xz -C "$W/old"
CUBLAS=$(ls /usr/local/cuda/lib64/libcublas.so.13 2>/dev/null || find /usr /opt -name 'libcublas.so.13' 2>/dev/null | head -1)
export LD_LIBRARY_PATH="$W/build/bin:$(dirname "${CUBLAS:-/usr/local/cuda/lib64/x}"):/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}"
t "unpacked"
( cd "$W/old/llama.cpp" \
  && cmake -B build -DLLAMA_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90 -DLLAMA_NATIVE=OFF -DLLAMA_BUILD_TESTS=OFF \
       -DLLAMA_CURL=OFF -DCMAKE_BUILD_TYPE=Release > "$OUT/old_cmake.log" 2>&1 \
  && cmake --build build -j "$(nproc)" --target llama-bench quantize > "$OUT/old_build.log" 2>&1 \
  && touch "$W/old.ok" || touch "$W/old.fail" ) &
( python3 -m measurement.llamacpp.build build "$W" --arch 90 --jobs "$(nproc)" > "$OUT/new_build.log" 2>&1 \
  && touch "$W/new.ok" || touch "$W/new.fail" ) &
PYTHONPATH="$W/src/gguf-py:${PYTHONPATH:-}" python3 -c "
from profiles import load
from measurement.llamacpp.gguf_arch import arch_spec, write_gguf
print(write_gguf(arch_spec(load().llm('llama3-8b')), '$W/l3-8b-f16.gguf', '$W/src/models'))" > "$OUT/gguf.log" 2>&1
t "gguf: $(tail -1 "$OUT/gguf.log")"
while [ ! -e "$W/old.ok" ] && [ ! -e "$W/old.fail" ]; do sleep 5; done
if [ -e "$W/old.fail" ]; then t "OLD BUILD FAILED"; tail -40 "$OUT/old_cmake.log" "$OUT/old_build.log"; fi
t "old build done"
Q="$W/old/llama.cpp/build/bin/quantize"
if [ ! -x "$Q" ]; then while [ ! -e "$W/new.ok" ] && [ ! -e "$W/new.fail" ]; do sleep 5; done; Q="$W/build/bin/llama-quantize"; fi
"$Q" "$W/l3-8b-f16.gguf" "$W/l3-8b-q4km.gguf" Q4_K_M > "$OUT/quantize.log" 2>&1; t "quantized with $Q: $(tail -2 "$OUT/quantize.log" | tr '\n' ' ')"
for b in old new; do
  if [ "$b" = new ]; then
    while [ ! -e "$W/new.ok" ] && [ ! -e "$W/new.fail" ]; do sleep 5; done
    [ -e "$W/new.fail" ] && { t "NEW BUILD FAILED"; tail -30 "$OUT/new_build.log"; }
    t "new build done"
  fi
  for fa in 0 1; do
    B="$W/old/llama.cpp/build/bin/llama-bench"; [ "$b" = new ] && B="$W/build/bin/llama-bench"
    [ -x "$B" ] || continue
    "$B" -m "$W/l3-8b-q4km.gguf" -m "$W/l3-8b-f16.gguf" -p 512 -n 128 -ngl 99 -fa "$fa" -r 3 -o json \
      > "$OUT/bench_${b}_fa${fa}.json" 2> "$OUT/bench_${b}_fa${fa}.err"
    t "$b fa=$fa: $(python3 -c "import json,sys; [print(r['model_type'], r['n_prompt'], r['n_gen'], round(r['avg_ts'],1), end='; ') for r in json.load(open(sys.argv[1]))]" "$OUT/bench_${b}_fa${fa}.json" 2>&1 | tail -c 300)"
  done
done
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv > "$OUT/gpu.txt" 2>&1
t "done"
