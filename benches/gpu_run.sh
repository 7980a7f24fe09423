#!/usr/bin/env bash
# The one call to make on a lent GPU machine (prepare with benches/gpu_prepare.sh, carry
# .gl): the correctness suites on the GPU (the cooperative-matrix one with wgpu's
# experimental features), then the comparison grid of BENCHMARKS.md against PyTorch SDPA:
# b=8 h=16 s in {1024, 4096} d in {64, 128}, none/causal/pad50, f16, on the SIMT and the
# cooperative-matrix kernels, with the rescale counts, and decode b=1 h=32 sq=1 sk=8192
# d=128 with its achieved GB/s, and the backward pass (its grid, and b=8 h=16 d=64 f16
# against PyTorch's). About 7 minutes; everything lands in $OUT.
# Fails as soon as a step fails: a suite that fails, or a cooperative-matrix suite that did
# not get 16x16 fragments (WGPU_ATTENTION_REQUIRE_COOP=16), stops the call rather than
# printing a table from a silent fallback. NVIDIA's own driver prints no shader statistics;
# the ISA report (examples/isa_report.rs) runs where the driver is NVK or RADV. The one-off
# scripts of earlier GPU sessions are kept with their results under benchmarks/.
#   run: bash benches/gpu_run.sh   (carry: .gl; timeout_s 600)
set -euo pipefail
for f in .gl/*.deb; do dpkg -x "$f" /; done; ldconfig
if ! ls /usr/share/vulkan/icd.d/*nvidia* /etc/vulkan/icd.d/*nvidia* >/dev/null 2>&1; then
    export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
fi
export WGPU_BACKEND=vulkan
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv | tee "$OUT/gpu.txt"
date -u | tee -a "$OUT/gpu.txt"
B=.gl/bin/attention
echo "== correctness on this GPU"
export WGPU_ATTENTION_REQUIRE_COOP=16
for t in correctness semantics skipping llm coop backward; do
    timeout 90 ".gl/bin/$t" 2>&1 | grep -E "test result|panicked|FAILED|testing on|left:|right:" | sed "s/^/$t: /" | tee -a "$OUT/tests.txt"
done
echo "== PyTorch SDPA"
PYTHONUNBUFFERED=1 timeout 120 python3 benches/torch_sdpa.py --iters 20 2>&1 | grep '^{' | tee "$OUT/torch.jsonl"
echo "== wgpu-attention: cooperative-matrix kernel, then SIMT"
timeout 150 $B --grid gpu --iters 10 --experimental --counts 2>&1 | grep '^{' | tee "$OUT/wgpu-coop.jsonl"
timeout 100 $B --grid gpu --iters 5 2>&1 | grep '^{' | tee "$OUT/wgpu-simt.jsonl"
echo "== decode"
for e in "" --experimental; do
    timeout 30 $B --backend auto --b 1 --h 32 --sq 1 --sk 8192 --d 128 --dtype f16 --iters 20 $e 2>&1 | grep '^{' | tee -a "$OUT/decode.jsonl"
done
echo "== the backward pass: its lavapipe grid, then the GPU shapes against PyTorch's"
timeout 60 $B --grid backward --iters 3 2>&1 | grep '^{' | tee "$OUT/backward.jsonl"
PYTHONUNBUFFERED=1 timeout 60 python3 benches/torch_sdpa.py --iters 10 --backward 2>&1 | grep '^{' | tee "$OUT/torch-backward.jsonl"
for d in 64 128; do for s in 1024 4096; do for m in none causal pad50; do
    timeout 20 $B --pass backward --dtype f16 --b 8 --h 16 --sq $s --sk $s --d $d --mask $m --iters 5 2>&1 | grep '^{' | tee -a "$OUT/wgpu-backward.jsonl"
done; done; done
echo "== the ISA report on this driver (NVK or RADV print shader statistics; NVIDIA's own does not)"
.gl/bin/isa_report --gpu native --out "$OUT/isa.jsonl" > "$OUT/isa.txt" 2>&1 \
    || echo "no shader statistics from this driver (see $OUT/isa.txt)"
echo "== table"
python3 - "$OUT" <<'PY' | tee "$OUT/table.md"
import json, sys, os
out = sys.argv[1]
def load(n):
    p = os.path.join(out, n)
    return [json.loads(l) for l in open(p)] if os.path.exists(p) else []
key = lambda r: (r["sq"], r["d"], r["mask"])
torch = {key(r): r for r in load("torch.jsonl")}
simt = {key(r): r for r in load("wgpu-simt.jsonl")}
print("| s | d | mask | PyTorch ms | coop ms | coop TFLOP/s | % of PyTorch | rescales/tiles | SIMT ms |")
print("|---|---|---|---|---|---|---|---|---|")
for r in load("wgpu-coop.jsonl"):
    t = torch.get(key(r), {}); s = simt.get(key(r), {})
    pct = 100 * t["median_ms"] / r["median_ms"] if t else float("nan")
    print(f"| {r['sq']} | {r['d']} | {r['mask']} | {t.get('median_ms','-')} | {r['median_ms']} | {r['gflops']/1e3:.1f} | {pct:.1f}% | {r.get('rescales','-')}/{r.get('key_tiles','-')} | {s.get('median_ms','-')} |")
for r in load("decode.jsonl"):
    print(f"decode {r['variant']}: {r['median_ms']} ms, {r['gbps']} GB/s")
PY
