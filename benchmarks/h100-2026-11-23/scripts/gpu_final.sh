#!/usr/bin/env bash
# Fifth GPU call: the suites on the GPU with the default shader checks, then `--grid gpu`
# with the SIMT and the cooperative-matrix kernels. Expects .gl/ as for gpu_compare.sh.
set -u
for f in .gl/*.deb; do dpkg -x "$f" /; done; ldconfig
export WGPU_BACKEND=vulkan
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
for t in correctness semantics llm coop; do
    timeout 200 ".gl/bin/$t" 2>&1 | grep -E "test result|panicked|FAILED" | sed "s/^/$t: /" | tee -a "$OUT/tests.txt"
done
timeout 200 .gl/bin/attention --grid gpu --iters 10 2>&1 | grep '^{' | tee "$OUT/wgpu-simt.jsonl"
timeout 200 .gl/bin/attention --grid gpu --iters 10 --experimental 2>&1 | grep '^{' | tee "$OUT/wgpu-coop.jsonl"
timeout 60 .gl/bin/attention --backend auto --b 1 --h 32 --sq 1 --sk 8192 --d 128 --dtype f16 --iters 10 2>&1 | grep '^{' | tee "$OUT/decode.jsonl"
