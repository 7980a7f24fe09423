#!/usr/bin/env bash
# Third GPU call: the cooperative-matrix flash variant on the real GPU: its test, then the
# `--grid gpu` shapes with `--experimental`, then PyTorch again. Expects .gl/ as for
# gpu_compare.sh (loader .debs, prebuilt `coop` test and `attention` bench in .gl/bin).
set -u
for f in .gl/*.deb; do dpkg -x "$f" /; done; ldconfig
export WGPU_BACKEND=vulkan
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
timeout 200 .gl/bin/coop --nocapture 2>&1 | grep -E "test result|panicked|cooperative|element" | tee "$OUT/coop-test.txt"
timeout 300 .gl/bin/attention --grid gpu --iters 10 --experimental 2>&1 | grep '^{' | tee "$OUT/wgpu-coop.jsonl"
