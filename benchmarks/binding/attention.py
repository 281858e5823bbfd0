"""Where nano's LLM looks when it answers a text binding question ("Scene: ... What color is the star?").

For a model saved by `textbind.py --save` (or a fresh one with --init), prints per layer and head, at the position
that predicts the answer, averaged over held-out prompts: the attention share on the scene's colour words, on the
scene's shape words, on the asked shape in the question, on the asked object's own colour and shape words, the
attention entropy (nats) and the largest pre-softmax logit; and the residual-stream norm after each layer.

  python benchmarks/binding/attention.py --ckpt /tmp/bind/raw-s0.pt [--format raw] [--arch llama] [--n 100]
"""
from __future__ import annotations

import argparse
import math
import random
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from textbind import COLOR_NAMES, Format, build_model, make_scene  # noqa: E402

from sphinx_x.data.synth.scenes import SHAPES  # noqa: E402
from sphinx_x.tokenizer import load_tokenizer  # noqa: E402


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ckpt", type=Path, default=None)
    ap.add_argument("--format", default="raw")
    ap.add_argument("--arch", default="llama")
    ap.add_argument("--n", type=int, default=100)
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    tok = load_tokenizer("nano")
    fmt = Format(tok, a.format)
    model = build_model(a.arch, 0)
    if a.ckpt:
        model.load_state_dict(torch.load(a.ckpt, map_location="cpu", weights_only=True))
    model.config._attn_implementation = "eager"
    model.eval()
    colour_ids = {tok.encode(" " + c, add_special_tokens=False)[0] for c in COLOR_NAMES}
    shape_ids = {tok.encode(" " + s, add_special_tokens=False)[0] for s in SHAPES}
    rng = random.Random(4242)
    L, H = model.config.num_hidden_layers, model.config.num_attention_heads
    keys = ["colours", "shapes", "asked_q", "own_colour", "own_shape"]
    acc = {k: torch.zeros(L, H) for k in keys + ["entropy", "max_logit"]}
    norms = torch.zeros(L + 1)
    for _ in range(a.n):
        scene = make_scene(rng)
        k = rng.randrange(len(scene))
        ids = fmt.prompt(scene, k)
        x = torch.tensor([ids])
        # the scene's words are the first occurrences; the asked shape is its last occurrence
        pos_scene_end = ids.index(tok.encode(".", add_special_tokens=False)[0])
        col = [i for i, t in enumerate(ids[:pos_scene_end]) if t in colour_ids]
        shp = [i for i, t in enumerate(ids[:pos_scene_end]) if t in shape_ids]
        asked = max(i for i, t in enumerate(ids) if t in shape_ids)
        own_s = shp[k]
        own_c = col[k]
        with torch.no_grad():
            out = model(input_ids=x, output_attentions=True, output_hidden_states=True)
        for li, att in enumerate(out.attentions):
            w = att[0, :, -1]  # (H, T) weights of the last position
            acc["colours"][li] += w[:, col].sum(-1)
            acc["shapes"][li] += w[:, shp].sum(-1)
            acc["asked_q"][li] += w[:, asked]
            acc["own_colour"][li] += w[:, own_c]
            acc["own_shape"][li] += w[:, own_s]
            acc["entropy"][li] += -(w.clamp_min(1e-12).log() * w).sum(-1)
            acc["max_logit"][li] += w.max(-1).values.log()
        for li, h in enumerate(out.hidden_states):
            norms[li] += h[0, -1].norm()
    for kname in acc:
        acc[kname] /= a.n
    norms /= a.n
    print(f"ckpt={a.ckpt}  format={a.format}  n={a.n}  (uniform attention: entropy ~ ln T = {math.log(len(ids)):.2f})")
    print("layer head " + " ".join(f"{k:>10}" for k in keys) + "    entropy  log_maxw")
    for li in range(L):
        for h in range(H):
            print(f"{li:5d} {h:4d} " + " ".join(f"{float(acc[k][li, h]):10.3f}" for k in keys)
                  + f"  {float(acc['entropy'][li, h]):9.2f} {float(acc['max_logit'][li, h]):9.2f}")
    print("residual norm at the answer position, after embedding and each layer:",
          " ".join(f"{float(v):.1f}" for v in norms))


if __name__ == "__main__":
    main()
