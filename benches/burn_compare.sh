#!/bin/bash
# Our flash kernel against Burn's fused attention (benches/burn, Burn 0.22.1 on its wgpu
# backend) on the same adapter in one run: b=1, h=8, s=1024, d in {64, 128}, f32, with no mask,
# causal, the last half of the keys masked by a bool tensor, and a dense f32 bias.
# Usage: bash benches/burn_compare.sh > benchmarks/<dir>/burn.jsonl
# (for another Mesa, point VK_ICD_FILENAMES at its lvp_icd json first). The first run builds
# Burn (about 11 minutes on 2 cores).
set -euo pipefail
iters=${ITERS:-5}
cargo bench --bench attention --no-run >&2
(cd benches/burn && cargo build --release >&2)
ours() { cargo bench -q --bench attention -- "$@" 2>/dev/null | grep '^{'; }
for d in 64 128; do
  for mask in none causal boolmask50 bias; do
    ours --backend flash --mask "$mask" --sq 1024 --sk 1024 --d "$d" --h 8 --iters "$iters"
  done
  benches/burn/target/release/burn-attention-bench 1024 "$d" "$iters" 2>/dev/null | grep '^{'
done
