"""Does the NAtS-L reference's model code, loaded with a `natsl export-hf` folder, give natsl's logits?

What it compares: the logits of natsl's model (`natsl eval CONFIG checkpoint=DIR --logits TEXT OUT.safetensors`,
f32 [T, V] and the tokens it saw, BOS first) with the logits of the authors' model built from the export's
config.json exactly as their HF class `NeuralAttentionSearchLinearAttnGDNForCausalLM` builds it (their
`NeuralAttentionSearchLinearAttnGDN` layer, FLA's GatedDeltaNet / GatedMLP / RMSNorm, the same constructor
arguments their Block passes, the same module names), with the export's tensors loaded strictly, in eval mode
on the same tokens ([1, T]). The HF class itself is not imported (it needs `transformers`, which the GPU
machine may lack); the package folders are imported through module shims instead, and the Block / Model /
ForCausalLM forward is restated here line for line (pre-norm mixer, fused pre-norm MLP, final norm, lm_head).

Reported (one JSON line, also --json or $OUT/hfref.json): max and mean |diff|, max |diff| / max |natsl logit|,
argmax agreement, the first position whose argmax differs and the first whose |diff| passes the tolerance
(with its 64-token chunk), the worst chunks, both models' next-byte loss, each NAtS-L layer's routing as the
reference decides it (from a forward hook on its router `nats_layer`: the reference keeps no record of its
eval-mode routing) and, with --natsl-eval-json, agreement with natsl's `--routing-map`.

Tolerances (against the scale max |natsl logit|, since logits carry an arbitrary offset and size):
- float32: max |diff| <= 2e-3 * scale and argmax agreement >= 0.999. With --f32-dots ieee (default) the
  reference's Triton dots run in true f32, so the two sides differ only by summation order and rounding of
  exp/rsqrt (~1e-6 relative per operation, grown over the layers and the 3000-step recurrence: 1e-5..1e-4
  expected). 2e-3 still holds with TF32 dots (--f32-dots tf32, unit roundoff 4.9e-4), and a real mismatch
  (head order, op index, a missing norm or gate, a wrong chunk rule) moves logits by O(scale). Argmax may
  flip at near-ties: a few positions in 3000.
- bfloat16: max |diff| <= 5e-2 * scale and argmax agreement >= 0.98. bf16 rounds every stored activation
  to 8 bits (unit roundoff 3.9e-3) and the two implementations round at different places, so differences
  of ~1e-2 of the scale are expected; a router decision that flips on a near-tie changes one chunk more.

Exit codes: 0 PASS, 1 FAIL (or missing / unexpected / mis-shaped tensors), 2 a config or input it does not
handle (e.g. softmax `attn` layers, another model_type).

Usage (GPU machine; experiments/bench/gpu_call.sh WHAT=hfref runs the whole check):
  python3 experiments/hf/compare_reference.py --fla .peers/flanats --nats .peers/nats --hf EXPORT_DIR \
      --natsl-logits LOGITS.safetensors [--natsl-eval-json EVAL.json] [--baseline LOGITS_F32.safetensors] \
      [--device cuda] [--dtype float32|bfloat16] [--bf16-mode weights|autocast] [--f32-dots ieee|tf32]
"""
import argparse
import ast
import json
import os
import struct
import sys
import time
import traceback
import types

import numpy as np

MODEL_TYPE = "neural_attention_search_linear_attn_gdn"
TOLERANCES = {"float32": {"rel": 2e-3, "argmax": 0.999}, "bfloat16": {"rel": 5e-2, "argmax": 0.98}}


class Refused(Exception):
    """Input this script does not handle (exit 2)."""


# ---------------------------------------------------------------------------------------------- safetensors
_DTYPES = {"F32": np.float32, "F64": np.float64, "F16": np.float16, "I32": np.int32, "I64": np.int64,
           "BF16": np.uint16}


def read_safetensors(path):
    """name -> numpy array; BF16 widened to f32. Parsed by hand: the GPU machine need not have `safetensors`."""
    with open(path, "rb") as f:
        blob = f.read()
    if len(blob) < 8:
        raise Refused(f"{path}: too short for a safetensors file")
    (n,) = struct.unpack("<Q", blob[:8])
    if 8 + n > len(blob):
        raise Refused(f"{path}: header length {n} runs past the end of the file")
    header = json.loads(blob[8:8 + n].decode("utf-8"))
    data = memoryview(blob)[8 + n:]
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dt = info["dtype"]
        if dt not in _DTYPES:
            raise Refused(f"{path}: tensor {name} has dtype {dt} (handled: {sorted(_DTYPES)})")
        b, e = info["data_offsets"]
        shape = tuple(info["shape"])
        arr = np.frombuffer(data[b:e], dtype=np.dtype(_DTYPES[dt]).newbyteorder("<"))
        if arr.size != int(np.prod(shape, dtype=np.int64)):
            raise Refused(f"{path}: tensor {name} holds {arr.size} values for shape {list(shape)}")
        if dt == "BF16":
            arr = (arr.astype(np.uint32) << 16).view(np.float32)
        out[name] = arr.reshape(shape)
    return out


# ---------------------------------------------------------------------------------------------- config
def reference_config_defaults(nats_root):
    """The defaults of the reference config class's __init__, read from its source (no transformers needed),
    so a field natsl does not write takes the value the HF class would give it."""
    path = os.path.join(nats_root, "nats", "models", "natsl_attn_gdn", "configuration_natsl_attn_gdn.py")
    tree = ast.parse(open(path).read(), path)
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef) and node.name == "NeuralAttentionSearchLineraAttnGDNConfig":
            for fn in node.body:
                if isinstance(fn, ast.FunctionDef) and fn.name == "__init__":
                    args = fn.args.args[1:]  # after self
                    defaults = fn.args.defaults
                    named = args[len(args) - len(defaults):]
                    return {a.arg: ast.literal_eval(d) for a, d in zip(named, defaults)}
    raise Refused(f"{path}: no NeuralAttentionSearchLineraAttnGDNConfig.__init__ found (another reference version?)")


def load_config(hf_dir, nats_root):
    with open(os.path.join(hf_dir, "config.json")) as f:
        given = json.load(f)
    if given.get("model_type") != MODEL_TYPE:
        raise Refused(f"{hf_dir}/config.json: model_type {given.get('model_type')!r}; this script checks "
                      f"{MODEL_TYPE!r} exports (models with natsl layers) only")
    defaults = reference_config_defaults(nats_root)
    cfg = dict(defaults)
    cfg.update({k: v for k, v in given.items() if k in defaults})
    if cfg.get("gdn_layers") is None:
        cfg["gdn_layers"] = []
    extra = sorted(k for k in given if k not in defaults)
    filled = sorted(k for k in defaults if k not in given)
    if cfg.get("attn") is not None:
        raise Refused(f"{hf_dir}/config.json: softmax-attention layers (`attn`: {cfg['attn']}) are not built by this "
                      "script; compare a model whose layers are only gdn and natsl")
    if cfg.get("hidden_act") != "swish":
        raise Refused(f"{hf_dir}/config.json: hidden_act {cfg.get('hidden_act')!r} (the reference MLP takes swish)")
    return cfg, extra, filled


# ---------------------------------------------------------------------------------------------- metrics
def compare_logits(natsl, ref, tokens, rel_tol, block):
    """Differences of two [T, V] logit arrays (natsl first: its max |logit| is the scale)."""
    a, b = natsl.astype(np.float64), ref.astype(np.float64)
    d = np.abs(a - b)
    scale = float(np.abs(a).max())
    pos_max = d.max(axis=1)
    am_a, am_b = a.argmax(axis=1), b.argmax(axis=1)
    agree = am_a == am_b
    out = {"positions": int(a.shape[0]), "vocab": int(a.shape[1]), "scale_max_abs_natsl_logit": scale,
           "max_abs_diff": float(d.max()), "mean_abs_diff": float(d.mean()),
           "rel_max_diff": float(d.max() / scale) if scale > 0 else float("inf"),
           "argmax_agreement": float(agree.mean())}
    if not agree.all():
        p = int(np.argmin(agree))
        top2 = np.sort(a[p])[-2:]
        out["first_argmax_mismatch"] = {"pos": p, "chunk": p // block, "natsl_argmax": int(am_a[p]),
                                        "reference_argmax": int(am_b[p]), "natsl_top2_margin": float(top2[1] - top2[0])}
    over = np.nonzero(pos_max > rel_tol * scale)[0]
    if over.size:
        p = int(over[0])
        out["first_pos_over_tol"] = {"pos": p, "chunk": p // block, "max_abs_diff": float(pos_max[p]),
                                     "positions_over_tol": int(over.size)}
    nchunks = (a.shape[0] + block - 1) // block
    per_chunk = [float(pos_max[c * block:(c + 1) * block].max()) for c in range(nchunks)]
    worst = sorted(range(nchunks), key=lambda c: -per_chunk[c])[:5]
    out["worst_chunks"] = [{"chunk": c, "max_abs_diff": per_chunk[c]} for c in worst]
    if tokens is not None and a.shape[0] > 1:
        nxt = tokens[1:].astype(np.int64)

        def nll(x):
            x = x[:-1]
            m = x.max(axis=1, keepdims=True)
            lse = (m[:, 0] + np.log(np.exp(x - m).sum(axis=1)))
            return float((lse - x[np.arange(x.shape[0]), nxt]).mean())
        out["next_byte_loss_natsl"], out["next_byte_loss_reference"] = nll(a), nll(b)
    return out


def routing_agreement(natsl_eval_json, ref_routing):
    """natsl's --routing-map labels (1 softmax, 0 GDN) against the reference's, per NAtS-L layer."""
    with open(natsl_eval_json) as f:
        doc = json.load(f)
    rm = (doc.get("suite") or {}).get("routing_map") or doc.get("routing_map")
    if not rm:
        return {"error": f"{natsl_eval_json} has no routing_map (run natsl eval with --routing-map TEXT)"}
    out = {}
    for name, ref in ref_routing.items():
        mine = rm["layers"].get(name)
        if mine is None:
            out[name] = {"error": "natsl's routing map has no such layer", "natsl_layers": sorted(rm["layers"])}
            continue
        mine = np.asarray(mine, dtype=np.int64)
        ref = np.asarray(ref["labels"], dtype=np.int64)
        if mine.shape != ref.shape:
            out[name] = {"error": f"shapes differ: natsl {list(mine.shape)}, reference {list(ref.shape)}"}
            continue
        diff = np.argwhere(mine != ref)
        out[name] = {"agreement": float((mine == ref).mean()), "chunks_x_heads": list(mine.shape),
                     "natsl_softmax_fraction": float(mine.mean()),
                     "first_mismatches": [{"chunk": int(c), "head": int(h), "natsl": int(mine[c, h]),
                                           "reference": int(ref[c, h])} for c, h in diff[:8]]}
    return out


# ---------------------------------------------------------------------------------------------- reference
def import_reference(fla_root, nats_root):
    """The reference's layers without running the packages' __init__ files (they import transformers and
    every model): empty package modules point at the folders; the cache classes are only type names here."""
    def ns(name, path=None, **attrs):
        m = types.ModuleType(name)
        if path:
            m.__path__ = [path]
        for k, v in attrs.items():
            setattr(m, k, v)
        sys.modules[name] = m

    for folder, what in ((os.path.join(fla_root, "fla"), "--fla"), (os.path.join(nats_root, "nats"), "--nats")):
        if not os.path.isdir(folder):
            raise Refused(f"{what}: no package folder {folder}")
    ns("fla", os.path.join(fla_root, "fla"), __version__="0.4.0")
    ns("fla.layers", os.path.join(fla_root, "fla", "layers"))
    ns("nats", os.path.join(nats_root, "nats"))
    ns("nats.models", os.path.join(nats_root, "nats", "models"))
    ns("nats.models.utils", NAtSLayerCache=object, NAtSCache=object)
    from fla.layers.gated_deltanet import GatedDeltaNet
    from fla.modules import GatedMLP, RMSNorm
    from nats.layers.natsl_attn_gdn import NeuralAttentionSearchLinearAttnGDN
    return GatedDeltaNet, GatedMLP, RMSNorm, NeuralAttentionSearchLinearAttnGDN


def build_reference(cfg, fla_root, nats_root):
    import torch.nn as nn
    GatedDeltaNet, GatedMLP, RMSNorm, NAtSL = import_reference(fla_root, nats_root)
    c = types.SimpleNamespace(**cfg)
    Norm = RMSNorm if c.fuse_norm else nn.RMSNorm

    class Block(nn.Module):
        # The reference Block's constructor arguments, field for field (its quirks too: `outputs_are_wighted`
        # reaches the layer's **kwargs, and the linear-attention dnats flag is fed from the attn one).
        def __init__(self, i):
            super().__init__()
            self.attn_norm = Norm(c.hidden_size, eps=c.norm_eps)
            if i in c.gdn_layers:
                self.attn = GatedDeltaNet(
                    mode=c.attn_mode, hidden_size=c.hidden_size, expand_v=c.expand_v, head_dim=c.head_dim,
                    num_heads=c.num_heads, num_v_heads=c.num_v_heads, use_gate=c.use_gate,
                    use_short_conv=c.use_short_conv, allow_neg_eigval=c.allow_neg_eigval, conv_size=c.conv_size,
                    norm_eps=c.norm_eps, layer_idx=i)
            else:
                self.attn = NAtSL(
                    hidden_size=c.hidden_size, expand_v=c.expand_v, head_dim=c.head_dim, num_heads=c.num_heads,
                    num_attn_heads=c.num_attn_heads, num_v_heads=c.num_v_heads, n_ops=c.n_ops,
                    num_nats_head=c.num_nats_head, nats_block_size=c.nats_block_size,
                    nats_block_agg_type=c.nats_block_agg_type, nats_sample_strategy=c.nats_sample_strategy,
                    ops_for_incomplete_chunks=c.ops_for_incomplete_chunks, use_gate=c.use_gate,
                    use_short_conv=c.use_short_conv, allow_neg_eigval=c.allow_neg_eigval, conv_size=c.conv_size,
                    conv_bias=c.conv_bias, outputs_are_wighted=c.outputs_are_wighted, attn_qk_norm=c.attn_qk_norm,
                    attn_with_short_conv=c.attn_with_short_conv,
                    compute_dnats_for_invalid_blocks_attn=c.compute_dnats_for_invalid_blocks_attn,
                    compute_dnats_for_invalid_blocks_linear_att=c.compute_dnats_for_invalid_blocks_attn,
                    incomplete_block_start_with_ht=c.incomplete_block_start_with_ht,
                    decay_for_non_gdn_blocks=c.decay_for_non_gdn_blocks, attn_rope_theta=c.attn_rope_theta,
                    attn_apply_pos_encoding=c.attn_apply_pos_encoding,
                    attn_max_position_embeddings=c.attn_max_position_embeddings, norm_eps=c.norm_eps, layer_idx=i)
            self.mlp_norm = Norm(c.hidden_size, eps=c.norm_eps)
            self.mlp = GatedMLP(hidden_size=c.hidden_size, hidden_ratio=c.hidden_ratio,
                                intermediate_size=c.intermediate_size, hidden_act=c.hidden_act,
                                fuse_swiglu=c.fuse_swiglu)

        def forward(self, x):
            residual = x
            x, _, _ = self.attn(hidden_states=self.attn_norm(x), attention_mask=None, past_key_values=None,
                                use_cache=False, output_attentions=False)
            if c.fuse_norm:
                x, residual = self.mlp_norm(x, residual, True)
            else:
                x = residual + x
                residual = x
                x = self.mlp_norm(x)
            return residual + self.mlp(x)

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.embeddings = nn.Embedding(c.vocab_size, c.hidden_size, c.pad_token_id)
            self.layers = nn.ModuleList([Block(i) for i in range(c.num_hidden_layers)])
            self.norm = Norm(c.hidden_size, eps=c.norm_eps)

        def forward(self, ids):
            x = self.embeddings(ids)
            for layer in self.layers:
                x = layer(x)
            return self.norm(x)

    class ForCausalLM(nn.Module):
        def __init__(self):
            super().__init__()
            self.model = Model()
            self.lm_head = nn.Linear(c.hidden_size, c.vocab_size, bias=False)
            if c.tie_word_embeddings:
                self.lm_head.weight = self.model.embeddings.weight

        def forward(self, ids):
            return self.lm_head(self.model(ids))

    return ForCausalLM(), NAtSL


def load_export(model, tensors, tie):
    """Strict load with a readable account first: missing / unexpected names, shapes that differ. A shape
    that differs only by size-1 axes (same values in the same order) is reshaped so the logits can still be
    compared, but it is a layout error: HF's from_pretrained refuses a size mismatch."""
    import torch
    want = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    if tie and "lm_head.weight" not in tensors and "model.embeddings.weight" in tensors:
        tensors = dict(tensors, **{"lm_head.weight": tensors["model.embeddings.weight"]})
    missing = sorted(set(want) - set(tensors))
    unexpected = sorted(set(tensors) - set(want))
    reshaped, wrong = [], []
    state = {}
    for k in sorted(set(want) & set(tensors)):
        t = tensors[k]
        if tuple(t.shape) != want[k]:
            squeeze = lambda s: tuple(x for x in s if x != 1)
            if squeeze(t.shape) == squeeze(want[k]):
                reshaped.append({"name": k, "export": list(t.shape), "reference": list(want[k])})
                t = t.reshape(want[k])
            else:
                wrong.append({"name": k, "export": list(t.shape), "reference": list(want[k])})
        state[k] = torch.from_numpy(np.array(t, dtype=np.float32, copy=True))
    report = {"missing": missing, "unexpected": unexpected, "shape_mismatch": wrong, "reshaped": reshaped}
    if not (missing or unexpected or wrong):
        model.load_state_dict(state, strict=True)
    return report


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--fla", required=True, help="folder holding FLA's `fla` package (the NAtS-L-compatible commit)")
    ap.add_argument("--nats", required=True, help="folder holding the authors' `nats` package")
    ap.add_argument("--hf", required=True, help="a `natsl export-hf` folder (config.json, model.safetensors)")
    ap.add_argument("--natsl-logits", required=True, help="`natsl eval --logits` output: tokens, logits")
    ap.add_argument("--natsl-eval-json", help="natsl eval --json of a run with --routing-map on the same text")
    ap.add_argument("--baseline", help="another natsl logits file (e.g. CPU f32) to set both sides against")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtype", default="float32", choices=sorted(TOLERANCES))
    ap.add_argument("--bf16-mode", default="weights", choices=["weights", "autocast"],
                    help="bf16 weights and activations (HF's torch_dtype=bfloat16; natsl's bf16 compute copy) "
                         "or f32 weights under autocast (how the reference trains)")
    ap.add_argument("--f32-dots", default="ieee", choices=["ieee", "tf32"],
                    help="float32 only: Triton's default precision of f32 dots (TRITON_F32_DEFAULT)")
    ap.add_argument("--rel-tol", type=float, help="override the dtype's max |diff| / scale tolerance")
    ap.add_argument("--argmax-tol", type=float, help="override the dtype's argmax-agreement tolerance")
    ap.add_argument("--json", help="write the result here (default $OUT/hfref.json when OUT is set)")
    args = ap.parse_args()
    tol = dict(TOLERANCES[args.dtype])
    if args.rel_tol is not None:
        tol["rel"] = args.rel_tol
    if args.argmax_tol is not None:
        tol["argmax"] = args.argmax_tol
    json_path = args.json or (os.path.join(os.environ["OUT"], "hfref.json") if os.environ.get("OUT") else None)
    tag = f"hfref {args.dtype}" + (f" ({args.bf16_mode})" if args.dtype == "bfloat16" else f" ({args.f32_dots} dots)")
    result = {"what": "reference HF model (authors' layers + FLA) on a natsl export vs natsl's logits",
              "hf": args.hf, "natsl_logits": args.natsl_logits, "dtype": args.dtype, "device": args.device,
              "tolerance": tol}

    def finish(verdict, code, reason):
        result["verdict"], result["reason"] = verdict, reason
        line = json.dumps(result)
        print(line)
        if json_path:
            os.makedirs(os.path.dirname(os.path.abspath(json_path)), exist_ok=True)
            with open(json_path, "w") as f:
                f.write(line + "\n")
        print(f"{tag}: {verdict}: {reason}", flush=True)
        sys.exit(code)

    try:
        cfg, extra, filled = load_config(args.hf, args.nats)
        tensors = read_safetensors(os.path.join(args.hf, "model.safetensors"))
        got = read_safetensors(args.natsl_logits)
        if "tokens" not in got or "logits" not in got:
            raise Refused(f"{args.natsl_logits}: needs tensors `tokens` and `logits` (natsl eval --logits)")
        tokens, natsl_logits = got["tokens"].astype(np.int64).reshape(-1), got["logits"].astype(np.float32)
        T, V = natsl_logits.shape
        if tokens.shape[0] != T or V != cfg["vocab_size"]:
            raise Refused(f"{args.natsl_logits}: logits {[T, V]} for {tokens.shape[0]} tokens and a vocabulary of "
                          f"{cfg['vocab_size']} (config.json): not the same model / text")
        if tokens.min() < 0 or tokens.max() >= V:
            raise Refused(f"{args.natsl_logits}: token ids outside [0, {V})")
    except (Refused, OSError, ValueError, KeyError) as e:
        finish("REFUSED", 2, str(e))

    natsl_idx = [i for i in range(cfg["num_hidden_layers"]) if i not in cfg["gdn_layers"]]
    result["layers"] = {"natsl": natsl_idx, "gdn": sorted(cfg["gdn_layers"])}
    result["config_fields_not_in_reference_class"] = extra
    result["config_fields_from_reference_defaults"] = filled
    print(f"reference model: {cfg['num_hidden_layers']} layers; NAtS-L layers {natsl_idx}, GDN layers "
          f"{sorted(cfg['gdn_layers'])}; {T} tokens, vocabulary {V}")
    print(f"config fields the export leaves to the reference's defaults: {filled}")

    # Before torch / Triton load: the f32 dot precision is read when kernels compile, and kernels compiled
    # under the other setting must not come from the cache.
    if args.dtype == "float32":
        os.environ["TRITON_F32_DEFAULT"] = args.f32_dots
        os.environ.setdefault("TRITON_CACHE_DIR", os.path.expanduser(f"~/.triton/cache-f32-{args.f32_dots}"))
    import torch
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        finish("REFUSED", 2, "no CUDA device visible (the reference's kernels are Triton: GPU only)")
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    try:
        model, NAtSL = build_reference(cfg, args.fla, args.nats)
        if args.dtype == "float32":
            # FLA's chunked GDN kernel refuses float32 (an assert in chunk_gated_delta_rule); its fused recurrent
            # kernel computes the same recurrence token by token in f32 and takes the same arguments, so the
            # GatedDeltaNet layers call that one here (the NAtS-L layer's own op is not touched).
            import fla.layers.gated_deltanet as fla_gdn
            fla_gdn.chunk_gated_delta_rule = fla_gdn.fused_recurrent_gated_delta_rule
            result["reference_gdn_layer_op"] = "fused_recurrent_gated_delta_rule (the chunked kernel refuses float32)"
    except Exception as e:  # the reference refusing our arguments is the finding: show where
        traceback.print_exc()
        finish("FAIL", 1, f"building the reference model from config.json failed: {type(e).__name__}: {e}")
    load = load_export(model, tensors, cfg["tie_word_embeddings"])
    result["load"] = load
    for what in ("missing", "unexpected"):
        if load[what]:
            print(f"{what} tensors ({len(load[what])}): {load[what]}")
    for m in load["shape_mismatch"] + load["reshaped"]:
        print(f"shape differs: {m['name']}: export {m['export']}, reference {m['reference']}")
    if load["missing"] or load["unexpected"] or load["shape_mismatch"]:
        finish("FAIL", 1, "the export does not load strictly into the reference model (see load)")
    try:
        import triton
        result["triton"] = triton.__version__
        knobs = getattr(getattr(triton, "knobs", None), "language", None)
        result["triton_f32_default"] = getattr(knobs, "fp32_default", "unknown") if knobs else "unknown"
    except Exception:  # informative only
        pass
    result["torch"] = torch.__version__

    dev = torch.device(args.device)
    model = model.to(dev).eval()
    autocast = args.dtype == "bfloat16" and args.bf16_mode == "autocast"
    if args.dtype == "bfloat16" and not autocast:
        model = model.to(torch.bfloat16)

    # The reference decides each chunk's op in its router (`nats_layer`, logits [B, NC, heads * n_ops], op 0 =
    # softmax attention, the argmax wins in eval) but records nothing of it outside training: read the router's
    # output with a forward hook.
    routing, margins = {}, {}
    hooks = []
    for i, block in enumerate(model.model.layers):
        if isinstance(block.attn, NAtSL):
            name, n_ops = f"model.layers.{i}.attn", block.attn.n_ops

            def hook(_mod, _inp, out, name=name, n_ops=n_ops):
                lg = out.detach().float().cpu()[0]
                ops = lg.view(lg.shape[0], -1, n_ops)
                routing[name] = ops.argmax(-1).eq(0).int().numpy()
                # How far each chunk's choice is from a tie: the winning logit minus the runner-up.
                top2 = ops.topk(min(2, n_ops), dim=-1).values
                margins[name] = (top2[..., 0] - top2[..., -1]).numpy()
            hooks.append(block.attn.nats_layer.register_forward_hook(hook))
    ids = torch.from_numpy(tokens).view(1, T).to(dev)
    t0 = time.time()
    try:
        with torch.no_grad(), torch.autocast(dev.type, dtype=torch.bfloat16, enabled=autocast):
            ref_logits = model(ids).float().cpu().numpy()[0]
        if dev.type == "cuda":
            torch.cuda.synchronize()
    except Exception as e:
        traceback.print_exc()
        finish("FAIL", 1, f"the reference forward failed: {type(e).__name__}: {e}")
    result["reference_forward_s"] = round(time.time() - t0, 2)  # includes Triton compile / autotune
    for h in hooks:
        h.remove()

    block = int(cfg["nats_block_size"])
    ref_routing = {}
    for name, lab in routing.items():
        frac_all = float(lab.mean())
        frac_full = float(lab[:-1].mean()) if lab.shape[0] > 1 else frac_all
        ref_routing[name] = {"labels": lab.tolist(), "softmax_fraction": frac_all,
                             "softmax_fraction_without_last_chunk": frac_full, "chunks_x_heads": list(lab.shape)}
        if name in margins:  # near-ties flip with rounding: a bfloat16 run may route such a chunk the other way
            mg = margins[name]
            ref_routing[name]["router_margin_min"] = float(mg.min())
            ref_routing[name]["router_margins_below_0.05"] = int((mg < 0.05).sum())
        print(f"routing (reference, eval) {name}: softmax on {frac_all:.3f} of {lab.shape[0]} chunks x "
              f"{lab.shape[1]} heads (the last chunk runs both ops regardless)")
        if frac_full in (0.0, 1.0):
            print(f"WARNING: {name} routes every full chunk to {'softmax' if frac_full else 'GDN'}: the other "
                  "branch is compared only on the last chunk")
    result["routing_reference"] = {k: {kk: vv for kk, vv in v.items() if kk != "labels"} for k, v in ref_routing.items()}
    if args.natsl_eval_json:
        result["routing_agreement"] = routing_agreement(args.natsl_eval_json, ref_routing)
        for name, r in result["routing_agreement"].items():
            print(f"routing agreement {name}: {r}")

    if not np.isfinite(ref_logits).all():
        finish("FAIL", 1, f"the reference's logits hold {int((~np.isfinite(ref_logits)).sum())} non-finite values")
    m = compare_logits(natsl_logits, ref_logits, tokens, tol["rel"], block)
    result["compare"] = m
    if args.baseline:
        base = read_safetensors(args.baseline)["logits"].astype(np.float32)
        if base.shape == natsl_logits.shape:
            result["vs_baseline"] = {"natsl": compare_logits(base, natsl_logits, tokens, tol["rel"], block),
                                     "reference": compare_logits(base, ref_logits, tokens, tol["rel"], block)}
    ok_rel = m["rel_max_diff"] <= tol["rel"]
    ok_argmax = m["argmax_agreement"] >= tol["argmax"]
    result["logits_ok"] = ok_rel and ok_argmax
    result["layout_ok"] = not load["reshaped"]
    summary = (f"max|diff| {m['max_abs_diff']:.3g} = {m['rel_max_diff']:.3g} of max|logit| {m['scale_max_abs_natsl_logit']:.3g} "
               f"(tol {tol['rel']:g}), mean|diff| {m['mean_abs_diff']:.3g}, argmax agreement {m['argmax_agreement']:.4f} "
               f"(tol {tol['argmax']:g}), {T} tokens")
    if not result["logits_ok"]:
        # A chunk routed the other way changes every later logit of its sequence: say so, with how close the
        # reference's router was to a tie there.
        flips = {k: v for k, v in (result.get("routing_agreement") or {}).items()
                 if isinstance(v, dict) and v.get("agreement", 1.0) < 1.0}
        why = ""
        if flips:
            why = "; routing differs in " + ", ".join(
                f"{k} (agreement {v['agreement']:.4f}, reference's smallest router margin "
                f"{ref_routing.get(k, {}).get('router_margin_min', float('nan')):.3g})" for k, v in flips.items())
        finish("FAIL", 1, "logits differ: " + summary + why)
    if not result["layout_ok"]:
        finish("FAIL", 1, f"logits match ({summary}) only after reshaping {len(load['reshaped'])} tensors: "
                          f"{[r['name'] for r in load['reshaped']][:4]}...; HF's from_pretrained would refuse the export")
    finish("PASS", 0, summary)


if __name__ == "__main__":
    main()
