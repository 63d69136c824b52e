"""The authors' model at another of the reference's sizes: ../shared/bench/ref_model.py (the 340M peer of the
`refmodel` stage) with its shapes swapped for those of the reference's experiments/configs/natsl_<size>.json, so
that configs/natsl-<size>.yaml gets its peer in the same device call.

  python3 ref_model_sized.py --size 760m --script .peers/ref_model.py --fla .peers/flanats --nats .peers/nats \
      [--layers natsl|gdn] [--batch 8] [--seq 4096] [--steps 12]

Every argument after --size / --script goes to ref_model.py unchanged. The edits are exact text replacements, each
checked by how often it must occur: a changed peer script fails here, loudly, instead of timing a model of the
wrong shape. The result file is ref_model_<layers>_<size>.json (in $OUT, as ref_model.py writes its own).
"""
import argparse
import sys

# The reference's sizes (NeuralAttentionSearchLinear experiments/configs/natsl_<size>.json): hidden size, GDN key
# head dim (value = 2x), softmax heads (key / value head dims = GDN key / value width over them: 64 / 128 at both
# sizes). 21 blocks, 6 GDN heads, SwiGLU hidden_ratio 4 and the same NAtS-L layers at both.
SIZES = {
    "760m": {"hidden": 1536, "head_dim": 192, "attn_heads": 18},
}

ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
ap.add_argument("--size", required=True, choices=sorted(SIZES))
ap.add_argument("--script", required=True, help="ref_model.py (the 340M peer)")
args, rest = ap.parse_known_args()
s = SIZES[args.size]

src = open(args.script, encoding="utf-8").read()
edits = [
    # (old, new, occurrences in ref_model.py)
    ("D, L, V = 1024, 21, 32000", f"D, L, V = {s['hidden']}, 21, 32000", 1),
    ("head_dim=128, num_heads=6", f"head_dim={s['head_dim']}, num_heads=6", 2),
    ("num_attn_heads=12", f"num_attn_heads={s['attn_heads']}", 1),
    ('f"ref-{args.layers}-340M"', f'f"ref-{{args.layers}}-{args.size.upper()}"', 1),
    ('f"ref_model_{args.layers}.json"', f'f"ref_model_{{args.layers}}_{args.size}.json"', 1),
]
for old, new, count in edits:
    found = src.count(old)
    if found != count:
        sys.exit(f"ref_model_sized.py: {args.script}: expected {count} occurrence(s) of {old!r}, found {found}; "
                 "the peer script changed: update the edits in experiments/bench/ref_model_sized.py")
    src = src.replace(old, new)

sys.argv = [args.script] + rest
exec(compile(src, args.script, "exec"), {"__name__": "__main__", "__file__": args.script})
