#!/bin/bash
# Flash at two commits on this adapter, the two binaries run alternately (so that drift on a
# noisy machine hits both): b=1, h=8, s=1024, f32, d in {64, 128}, masks none, causal, pad50,
# boolmask50 and bias, each commit's default dispatch. With COMPILE=1 it also times each
# commit's first call (the pipeline compile) with Mesa's shader cache off, on a 64-row problem.
# Usage: bash benches/compare_commits.sh OLD NEW > benchmarks/<dir>/commits.jsonl
# (for another Mesa, point VK_ICD_FILENAMES at its lvp_icd json first). Lines carry "commit".
set -euo pipefail
iters=${ITERS:-5}
root=$(git rev-parse --show-toplevel)
work=$(mktemp -d)
trap 'for c in "$work"/tree-*; do git -C "$root" worktree remove --force "$c" 2>/dev/null || true; done; rm -rf "$work"' EXIT
for c in "$1" "$2"; do
  git -C "$root" worktree add -q --detach "$work/tree-$c" "$c"
  exe=$(cd "$work/tree-$c" && CARGO_TARGET_DIR="$root/target" cargo bench --bench attention --no-run \
    --message-format=json 2>/dev/null | grep -o '"executable":"[^"]*"' | tail -1 | cut -d'"' -f4)
  cp "$exe" "$work/bench-$c"
done
tag() { sed "s/^{/{\"commit\":\"$1\",/"; }
for d in 64 128; do
  for mask in none causal pad50 boolmask50 bias; do
    for c in "$1" "$2"; do
      "$work/bench-$c" --bench --mask "$mask" --sq 1024 --sk 1024 --d "$d" --h 8 --iters "$iters" \
        2>/dev/null | grep '^{' | tag "$c"
    done
  done
done
if [ "${COMPILE:-0}" = 1 ]; then
  for d in 64 128; do
    for c in "$1" "$2"; do
      t0=$(date +%s.%N)
      MESA_SHADER_CACHE_DISABLE=true "$work/bench-$c" --bench --sq 64 --sk 64 --d "$d" --h 1 \
        --iters 1 >/dev/null 2>&1
      t1=$(date +%s.%N)
      echo "{\"commit\":\"$c\",\"first_call_s\":$(echo "$t1 - $t0" | bc),\"d\":$d}"
    done
  done
fi
