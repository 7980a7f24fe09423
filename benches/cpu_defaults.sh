#!/bin/bash
# Flash on a CPU adapter (lavapipe): the GPU defaults (4 threads per row, 16-key tiles, rows per
# thread from the register budget) against the CPU defaults the dispatcher now picks.
# Usage: bash benches/cpu_defaults.sh > benchmarks/<dir>/cpu-defaults.jsonl
set -euo pipefail
cargo bench --bench attention --no-run >&2
run() { cargo bench -q --bench attention -- "$@" 2>/dev/null | grep '^{'; }
for d in 64 128; do
  if [ "$d" = 64 ]; then rpt=2; else rpt=1; fi
  run --backend flash --sq 1024 --sk 1024 --d "$d" --h 8 --tpr 4 --rpt "$rpt" --bk 16 --iters 5
  run --backend flash --sq 1024 --sk 1024 --d "$d" --h 8 --iters 5
done
