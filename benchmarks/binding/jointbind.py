"""Pseudo-image binding testbed: each object of a scene is ONE input vector, as an image token is, not two words.

textbind.py writes the scene as words ("yellow star"), so binding there needs two hops inside the scene (carry the
colour onto the shape word, then look the shape up). An image token carries both at once. Here a scene is
`slots` positions right after BOS (where the image tokens go in SPHINX-X), most of them a background vector and one
per object (2-4 objects of distinct colours and shapes, or 4-10 generic word pairs with --generic); the questions
follow in the accessory chat template ("What color is the star?" -> "yellow", several per scene with --q).

--features says what an object's vector is:
  embed   E[colour] + E[shape], the LLM's own (tied) word embeddings: the object is already in the LLM's space and
          copying it to the output names the colour.
  onehot  [one-hot colour, one-hot shape] through a learned Linear + LayerNorm (the form of nano's projector,
          sphinx_x/model.py), trained with the LLM from scratch: the LLM must also learn what the tokens mean.

Prints, every --eval-every steps, on 50 held-out scenes with every object asked in turn: per-question accuracy
(naming one colour of the scene whatever the question gives 0.337) and the share of scenes whose answer changes
with the asked shape; and accuracy on 100 held-out generic scenes.

  python benchmarks/binding/jointbind.py --features embed --fmt chat --bs 32 --q 4 --steps 800 --seed 0
"""
from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1])]
import textbind as tb  # noqa: E402  (the sibling testbed: scenes, nano's LLM, generic words)
from ladder.train import load_llm_weights  # noqa: E402  (the ladder's --init-llm loader)

from sphinx_x.constants import IGNORE_INDEX  # noqa: E402
from sphinx_x.data.encode import DialogueEncoder  # noqa: E402
from sphinx_x.tokenizer import load_tokenizer  # noqa: E402


class PseudoImages:
    """Builds (ids, labels, objects) for a scene: objects = [(position, colour word, shape word)]."""

    def __init__(self, tok, fmt: str, slots: int):
        self.tok, self.fmt, self.slots = tok, fmt, slots
        self.enc = DialogueEncoder(tok, "accessory", max_len=1024)
        self.background = self.word("the")

    def word(self, w: str) -> int:
        return self.tok.encode(" " + w, add_special_tokens=False)[0]

    def item(self, scene, asked, rng: random.Random, train: bool = True):
        places = sorted(rng.sample(range(self.slots), len(scene)))
        ids = [self.tok.bos_token_id] + [self.background] * self.slots
        objects = [(1 + p, c, s) for (c, s), p in zip(scene, places)]
        labels = [IGNORE_INDEX] * len(ids)
        if self.fmt == "chat":  # the accessory template without its system sentence (shorter; same answer offsets)
            msgs = [{"role": "system", "content": ""}]
            for k in asked:
                msgs += [{"role": "user", "content": f"What color is the {scene[k][1]}?"},
                         {"role": "assistant", "content": scene[k][0]}]
            if not train:
                return ids + self.enc.encode_prompt(msgs[:-1], [])[1:], None, objects
            e = self.enc.encode(msgs, [])
            return ids + e.input_ids[1:], labels + e.labels[1:], objects
        mark = "?" if self.fmt == "q" else ""  # q: answer after "?"; imm: answer right after the shape word
        for i, k in enumerate(asked):
            q = self.tok.encode(f"{' ' if i else ''}What color is the {scene[k][1]}{mark}", add_special_tokens=False)
            if not train:
                return ids + q, None, objects
            a = self.tok.encode(f" {scene[k][0]}.", add_special_tokens=False)
            ids, labels = ids + q + a, labels + [IGNORE_INDEX] * len(q) + a
        return ids, labels, objects


class ObjectFeatures(torch.nn.Module):
    """The input vector of each object: the LLM's embeddings (embed) or a learned projection of one-hots (onehot)."""

    def __init__(self, kind: str, llm, keys: list[str], values: list[str], words: PseudoImages,
                 ln_weight: float = 1.0):
        super().__init__()
        self.kind, self.llm, self.words = kind, llm, words
        self.key_index = {w: i for i, w in enumerate(keys)}
        self.value_index = {w: i for i, w in enumerate(values)}
        d = llm.config.hidden_size
        if kind == "onehot":
            self.proj = torch.nn.Sequential(torch.nn.Linear(len(values) + len(keys), d), torch.nn.LayerNorm(d))
            # LayerNorm output has norm ~sqrt(d) = 16 against ~0.3-0.5 for the LLM's word embeddings; --ln-weight
            # scales the projector's LayerNorm weight at init (0.02: tokens enter at the text embeddings' size).
            torch.nn.init.constant_(self.proj[1].weight, ln_weight)

    def forward(self, colours: list[str], shapes: list[str]) -> torch.Tensor:
        if self.kind == "embed":
            table = self.llm.get_input_embeddings().weight
            return table[[self.words.word(c) for c in colours]] + table[[self.words.word(s) for s in shapes]]
        x = torch.zeros(len(colours), len(self.value_index) + len(self.key_index))
        x[range(len(colours)), [self.value_index[c] for c in colours]] = 1
        x[range(len(colours)), [len(self.value_index) + self.key_index[s] for s in shapes]] = 1
        return self.proj(x)


def hidden_states(llm, feats: ObjectFeatures, items, pad_id: int, left: bool = False):
    """Last hidden states of a batch (right padded for training, left padded for prompts) and its labels."""
    width = max(len(x) for x, _, _ in items)
    ids = torch.full((len(items), width), pad_id)
    mask, labels = torch.zeros_like(ids), torch.full_like(ids, IGNORE_INDEX)
    rows, cols, colours, shapes = [], [], [], []
    for b, (x, y, objects) in enumerate(items):
        off = width - len(x) if left else 0
        ids[b, off: off + len(x)], mask[b, off: off + len(x)] = torch.tensor(x), 1
        if y is not None:
            labels[b, : len(y)] = torch.tensor(y)
        for p, c, s in objects:
            rows.append(b), cols.append(off + p), colours.append(c), shapes.append(s)
    emb = llm.get_input_embeddings()(ids).index_put((torch.tensor(rows), torch.tensor(cols)), feats(colours, shapes))
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    return llm.get_decoder()(inputs_embeds=emb, attention_mask=mask, position_ids=pos).last_hidden_state, labels


@torch.no_grad()
def first_answers(llm, feats, data: PseudoImages, questions, pad_id: int) -> list[int]:
    llm.eval()
    rng, preds = random.Random(7), []
    for i in range(0, len(questions), 100):
        chunk = [data.item(s, [k], rng, train=False) for s, k in questions[i: i + 100]]
        h, _ = hidden_states(llm, feats, chunk, pad_id, left=True)
        preds += llm.get_output_embeddings()(h[:, -1]).argmax(-1).tolist()
    llm.train()
    return preds


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=800)
    ap.add_argument("--bs", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--warmup", type=int, default=30, help="linear warm-up steps, then constant")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--fmt", choices=["chat", "q", "imm"], default="chat")
    ap.add_argument("--features", choices=["embed", "onehot"], default="embed")
    ap.add_argument("--generic", type=float, default=0.5, help="share of generic scenes (4-10 word pairs)")
    ap.add_argument("--q", type=int, default=4, help="questions per scene, every answer supervised")
    ap.add_argument("--ln-weight", type=float, default=1.0, help="onehot: projector LayerNorm weight at init")
    ap.add_argument("--slots", type=int, default=16, help="input positions of a pseudo image")
    ap.add_argument("--eval-every", type=int, default=100)
    ap.add_argument("--save", type=Path, default=None, help="write the LLM's state dict (safetensors) here")
    ap.add_argument("--json", type=Path, default=None, help="write the records here")
    ap.add_argument("--init-llm", type=Path, default=None,
                    help="start from these LLM weights (safetensors file or folder, e.g. the packaged stand-in)")
    args = ap.parse_args(argv)

    torch.set_num_threads(1)
    tok = load_tokenizer("nano")
    data = PseudoImages(tok, args.fmt, args.slots)
    generic = tb.GenericScenes(tok, 4, 10)
    llm = tb.build_model("llama", args.seed)
    if args.init_llm:
        load_llm_weights(llm, args.init_llm)
    feats = ObjectFeatures(args.features, llm, generic.keys, generic.values, data, args.ln_weight)
    held_rng = random.Random(999_999)
    t3 = [tb.make_scene(held_rng) for _ in range(50)]
    t3_questions = [(i, s, k) for i, s in enumerate(t3) for k in range(len(s))]
    generic_questions = [(s, held_rng.randrange(len(s))) for s in (generic.scene(held_rng) for _ in range(100))]

    def evaluate() -> dict:
        preds = first_answers(llm, feats, data, [(s, k) for _, s, k in t3_questions], tok.pad_token_id)
        by: dict[int, set] = {}
        for (i, _, _), p in zip(t3_questions, preds):
            by.setdefault(i, set()).add(p)
        right = sum(p == data.word(s[k][0]) for (_, s, k), p in zip(t3_questions, preds)) / len(preds)
        gp = first_answers(llm, feats, data, generic_questions, tok.pad_token_id)
        g_right = sum(p == data.word(s[k][0]) for (s, k), p in zip(generic_questions, gp)) / len(gp)
        return {"q_acc": round(right, 3), "changes": sum(len(v) > 1 for v in by.values()) / len(by),
                "generic_acc": round(g_right, 3)}

    rng = random.Random(args.seed + 1000)

    def draw():
        scene = generic.scene(rng) if rng.random() < args.generic else tb.make_scene(rng)
        return data.item(scene, [rng.randrange(len(scene)) for _ in range(args.q)], rng)

    params = list(llm.parameters()) + [p for p in feats.parameters() if all(p is not q for q in llm.parameters())]
    opt = torch.optim.AdamW(params, lr=args.lr, betas=(0.9, 0.95), weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / args.warmup))
    records, losses, t0 = [], [], time.time()
    for step in range(1, args.steps + 1):
        h, labels = hidden_states(llm, feats, [draw() for _ in range(args.bs)], tok.pad_token_id)
        tgt = labels[:, 1:]
        keep = tgt != IGNORE_INDEX
        loss = F.cross_entropy(llm.get_output_embeddings()(h[:, :-1][keep]).float(), tgt[keep])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 8.0)
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
        if step % args.eval_every == 0 or step == args.steps:
            rec = {"step": step, "loss": round(sum(losses) / len(losses), 3), **evaluate(),
                   "t": round(time.time() - t0)}
            losses = []
            records.append(rec)
            print(json.dumps(rec), flush=True)
    if args.save:
        from safetensors.torch import save_file
        state = {k: v.contiguous().clone() for k, v in llm.state_dict().items() if k != "lm_head.weight"}  # tied
        save_file(state, str(args.save))
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "records": records}))


if __name__ == "__main__":
    main()
