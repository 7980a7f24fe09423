#!/usr/bin/env bash
# One call on a lent GPU machine (see BENCHMARKS.md): correctness on the real GPU, the
# harness's `--grid gpu`, a small tile sweep, and PyTorch SDPA on the same shapes.
# Expects the Vulkan loader .debs and prebuilt binaries in .gl/ (carried).
set -u
for f in .gl/*.deb; do dpkg -x "$f" /; done
ldconfig
if ! ls /usr/share/vulkan/icd.d/*nvidia* /etc/vulkan/icd.d/*nvidia* >/dev/null 2>&1; then
    export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
fi
export WGPU_BACKEND=vulkan
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,driver_version,clocks.sm --format=csv | tee "$OUT/gpu.txt"
date -u | tee -a "$OUT/gpu.txt"
echo "== correctness on this GPU"
for t in correctness semantics skipping; do
    timeout 240 ".gl/bin/$t" 2>&1 | grep -E "test result|panicked|FAILED|testing on" | tee -a "$OUT/tests.txt"
done
echo "== wgpu-attention, --grid gpu"
timeout 240 .gl/bin/attention --grid gpu --iters 10 2>&1 | tee "$OUT/wgpu.jsonl" | grep -v '^adapter' 
echo "== tile sweep at s=4096 d=128 f16"
for sg in on off; do
    for rpt in 1 2 4; do
        for bk in 16 32; do
            timeout 60 .gl/bin/attention --backend flash --b 8 --h 16 --sq 4096 --sk 4096 --d 128 --dtype f16 \
                --iters 5 --subgroups $sg --rpt $rpt --bk $bk 2>&1 | grep '^{' | tee -a "$OUT/sweep.jsonl"
        done
    done
done
echo "== torch"
timeout 120 python3 benches/torch_sdpa.py --iters 20 2>&1 | tee "$OUT/torch.jsonl"
