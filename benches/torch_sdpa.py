"""PyTorch's scaled_dot_product_attention on the same shapes as `--grid gpu` of the
benchmark harness, printed as the same JSON lines (backend "torch").

Run on the GPU machine: python3 benches/torch_sdpa.py [--iters N] [--backward]
With --backward it times the backward pass instead (`out.backward(dO)` after one forward
kept outside the timing; GFLOP/s counted as 2.5x the forward's, as the harness does), the
counterpart of `--pass backward`.
pad50 masks the last half of every sequence's keys through a bool attn_mask, which is
how a padding mask reaches SDPA (and what makes PyTorch leave its flash kernel).
"""
import json
import sys

import torch
import torch.nn.functional as F

iters = int(sys.argv[sys.argv.index("--iters") + 1]) if "--iters" in sys.argv else 20
backward = "--backward" in sys.argv
dev = "cuda"
torch.manual_seed(0)
for s in (1024, 4096):
    for d in (64, 128):
        for mask in ("none", "causal", "pad50"):
            b, h = 8, 16
            q, k, v = ((torch.rand(b, h, s, d, device=dev, dtype=torch.float16) * 2 - 1).requires_grad_(backward)
                       for _ in range(3))
            kwargs = {}
            if mask == "causal":
                kwargs["is_causal"] = True
            elif mask == "pad50":
                m = torch.zeros(b, 1, 1, s, dtype=torch.bool, device=dev)
                m[..., : s // 2] = True
                kwargs["attn_mask"] = m
            if backward:
                out = F.scaled_dot_product_attention(q, k, v, **kwargs)
                d_out = torch.rand_like(out)
                fn = lambda: torch.autograd.grad(out, (q, k, v), d_out, retain_graph=True)
            else:
                fn = lambda: F.scaled_dot_product_attention(q, k, v, **kwargs)
            for _ in range(3):
                fn()
            torch.cuda.synchronize()
            times = []
            for _ in range(iters):
                start = torch.cuda.Event(enable_timing=True)
                end = torch.cuda.Event(enable_timing=True)
                start.record()
                fn()
                end.record()
                torch.cuda.synchronize()
                times.append(start.elapsed_time(end))
            times.sort()
            ms = times[len(times) // 2]
            gflops = (10.0 if backward else 4.0) * b * h * s * s * d / (ms * 1e-3) / 1e9
            print(json.dumps({"pass": "backward" if backward else "forward", "backend": "torch", "mask": mask, "dtype": "f16", "b": b, "h": h, "sq": s, "sk": s,
                              "d": d, "median_ms": round(ms, 4), "gflops": round(gflops, 1), "ran": "torch " + torch.__version__}),
                  flush=True)
