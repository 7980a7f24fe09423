#!/usr/bin/env bash
# Second H100 call: feature suites on the GPU, bounds checks on/off, rows per thread, decode,
# masked vs unmasked on a Whisper shape. Expects .gl/ as for gpu_compare.sh.
set -u
for f in .gl/*.deb; do dpkg -x "$f" /; done; ldconfig
export WGPU_BACKEND=vulkan
B=.gl/bin/attention
for t in correctness llm; do timeout 200 .gl/bin/$t 2>&1 | grep -E "test result|panicked|FAILED" ; done
echo "== checked vs unchecked shaders, s=4096 d=128 f16"
timeout 60 $B --backend flash --b 8 --h 16 --sq 4096 --sk 4096 --d 128 --dtype f16 --iters 5 | grep '^{'
WA_UNCHECKED=1 timeout 60 $B --backend flash --b 8 --h 16 --sq 4096 --sk 4096 --d 128 --dtype f16 --iters 5 | grep '^{'
echo "== d=64 rows per thread"
for r in 1 2 4; do timeout 60 $B --backend flash --b 8 --h 16 --sq 4096 --sk 4096 --d 64 --dtype f16 --iters 5 --rpt $r | grep '^{'; done
echo "== decode"
for b in flash auto; do timeout 60 $B --backend $b --b 1 --h 32 --sq 1 --sk 8192 --d 128 --dtype f16 --iters 10 | grep '^{'; done
echo "== whisper-ish masked vs unmasked f16"
for m in none pad50 bias; do timeout 60 $B --backend auto --b 4 --h 8 --sq 1500 --sk 1500 --d 64 --dtype f16 --mask $m --iters 10 | grep '^{'; done
