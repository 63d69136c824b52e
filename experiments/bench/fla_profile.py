"""Per-kernel split of FLA's chunked Gated DeltaNet (chunk_gated_delta_rule, use_qk_l2norm_in_kernel=True) on
the GPU, at natsl_bench_gdn's shapes, so each of natsl's stages has a peer figure to stand against.

  python3 experiments/bench/fla_profile.py --fla PEERS/flahead [--out DIR] [--iters 20]

PEERS/flahead/fla is the `fla` package folder of fla-org/flash-linear-attention (loaded as a bare namespace
package, as ../shared/bench/peers.py does). Warm-up (Triton autotuning) first, then torch.profiler over --iters
forward calls and --iters forward+backward calls; prints, per shape and direction, each kernel's mean time per
call and its share, and writes the rows as JSON lines to DIR/fla_profile.jsonl.
"""
import argparse
import json
import os
import sys
import types

ap = argparse.ArgumentParser()
ap.add_argument("--fla", required=True)
ap.add_argument("--out", default=os.environ.get("OUT", "."))
ap.add_argument("--iters", type=int, default=20)
ap.add_argument("--ncu", action="store_true",
                help="for Nsight Compute: warm up at B8 T4096, then one forward inside the NVTX range 'prof' "
                     "(ncu --nvtx --nvtx-include 'prof/'), and exit")
args = ap.parse_args()
pkg = types.ModuleType("fla")
pkg.__path__ = [os.path.join(args.fla, "fla")]
pkg.__version__ = "0.5.2"
sys.modules["fla"] = pkg

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402
from fla.ops.gated_delta_rule import chunk_gated_delta_rule  # noqa: E402

try:  # Triton 3.6 on Hopper: FLA refuses its backward unless told the known miscompile is absent
    import fla.ops.common.chunk_o as _co
    _co.TRITON_ABOVE_3_7_1 = True
except Exception:  # noqa: BLE001
    pass

dev = "cuda"
torch.manual_seed(0)
rows = []
for (B, T, H, DK, DV) in [(8, 4096, 6, 128, 256), (2, 16384, 6, 128, 256)]:
    q = torch.randn(B, T, H, DK, device=dev, dtype=torch.bfloat16, requires_grad=True)
    k = torch.randn(B, T, H, DK, device=dev, dtype=torch.bfloat16, requires_grad=True)
    v = torch.randn(B, T, H, DV, device=dev, dtype=torch.bfloat16, requires_grad=True)
    g = F.logsigmoid(torch.randn(B, T, H, device=dev, dtype=torch.float32)).requires_grad_(True)
    beta = torch.rand(B, T, H, device=dev, dtype=torch.bfloat16).sigmoid().requires_grad_(True)
    do = torch.randn(B, T, H, DV, device=dev, dtype=torch.bfloat16)

    def fwd():
        return chunk_gated_delta_rule(q, k, v, g, beta, use_qk_l2norm_in_kernel=True)[0]

    def fwdbwd():
        fwd().backward(do)

    if args.ncu:
        for _ in range(30):
            fwd()
        torch.cuda.synchronize()
        with torch.cuda.nvtx.range("prof"):
            fwd()
        torch.cuda.synchronize()
        sys.exit(0)
    for name, fn in [("fwd", fwd), ("fwdbwd", fwdbwd)]:
        for _ in range(30):  # autotune + warm-up
            fn()
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(args.iters):
                fn()
            torch.cuda.synchronize()
        per = {}
        for e in prof.events():
            if e.device_type == torch.autograd.DeviceType.CUDA:
                per[e.name] = per.get(e.name, 0.0) + e.device_time / 1000.0  # ms
        total = sum(per.values()) / args.iters
        print(f"\nFLA {name} B{B} T{T}: {total:.4f} ms of kernel time per call")
        for kname, ms in sorted(per.items(), key=lambda kv: -kv[1]):
            ms /= args.iters
            r = {"name": kname[:90], "dir": name, "B": B, "T": T, "ms": round(ms, 4), "share": round(ms / total, 3)}
            rows.append(r)
            print(f"  {ms:8.4f} ms  {100 * ms / total:5.1f}%  {kname[:90]}")
    del q, k, v, g, beta, do

os.makedirs(args.out, exist_ok=True)
with open(os.path.join(args.out, "fla_profile.jsonl"), "w") as f:
    for r in rows:
        f.write(json.dumps(r) + "\n")
