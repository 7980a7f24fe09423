#!/usr/bin/env bash
# Fourth GPU call: what each of wgpu's injected shader checks costs, on the coop and SIMT
# flash kernels. Expects .gl/ as for gpu_compare.sh.
set -u
for f in .gl/*.deb; do dpkg -x "$f" /; done; ldconfig
export WGPU_BACKEND=vulkan
B=.gl/bin/attention
for d in 64 128; do
    for mode in "" "--checks bounds" "--unchecked"; do
        echo "coop d=$d ${mode:-all checks}"
        $B --backend auto --b 8 --h 16 --sq 4096 --sk 4096 --d $d --dtype f16 --iters 10 --experimental $mode 2>&1 | grep '^{'
    done
    for mode in "--checks bounds"; do
        echo "simt d=$d $mode"
        $B --backend auto --b 8 --h 16 --sq 4096 --sk 4096 --d $d --dtype f16 --iters 5 $mode 2>&1 | grep '^{'
    done
done
