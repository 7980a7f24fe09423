#!/bin/bash
# Flash on a CPU adapter (lavapipe): the GPU defaults (4 threads per row, 16-key tiles, rows per
# thread from the register budget) against 4 rows per thread with one thread per row or with
# the subgroup split (the previous CPU defaults), and the dispatcher's own pick, since this
# session the unrolled kernel (8 rows per thread; last line of each head dim).
# Usage: bash benches/cpu_defaults.sh > benchmarks/<dir>/cpu-defaults.jsonl
# (for another Mesa, point VK_ICD_FILENAMES at its lvp_icd json first)
set -euo pipefail
cargo bench --bench attention --no-run >&2
run() { cargo bench -q --bench attention -- "$@" 2>/dev/null | grep '^{'; }
for d in 64 128; do
  if [ "$d" = 64 ]; then rpt=2; bk=32; else rpt=1; bk=16; fi
  common=(--backend flash --sq 1024 --sk 1024 --d "$d" --h 8 --iters 5)
  run "${common[@]}" --tpr 4 --rpt "$rpt" --bk 16
  run "${common[@]}" --tpr 1 --rpt 4 --bk "$bk"
  run "${common[@]}" --tpr 4 --rpt 4 --bk "$bk"
  run "${common[@]}"
done
