"""Text-only binding testbed for nano's LLM: "Scene: purple square, yellow star. What color is the star?" -> "yellow".

The scene is written as text, so no vision is involved: the question is whether nano's 4-layer Llama learns to let the
asked shape pick the object (binding), or stays at the "bag of colours" shortcut (name a colour of the scene, whatever
the question: held-out accuracy E[1/n] = 0.36, per-question accuracy 0.34, answers never change with the question).

One run = one model, one recipe; prints held-out accuracy every --eval-every steps and, at the end, the binding
metrics on 100 held-out scenes (each object asked in turn): the share of scenes whose answers change with the asked
shape, and the per-question accuracy. Training data are drawn fresh every step (--pool N to reuse a fixed pool).

  python benchmarks/binding/textbind.py --steps 2000 --bs 32 --seed 0 [--format chat|nosys|raw] [--dense K]
      [--arch llama|qknorm] [--sched const|cosine] [--lr 1e-3] [--pool 3000] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from sphinx_x.config import PRESETS, LLMConfig
from sphinx_x.constants import IGNORE_INDEX
from sphinx_x.data.encode import DialogueEncoder
from sphinx_x.data.synth.common import COLORS
from sphinx_x.data.synth.scenes import SHAPES
from sphinx_x.llm import llm_hf_config
from sphinx_x.tokenizer import load_tokenizer

COLOR_NAMES = list(COLORS)


# ---- scenes ------------------------------------------------------------------------------------
def make_scene(rng: random.Random) -> list[tuple[str, str]]:
    """2-4 objects with distinct shapes and distinct colours, as (colour, shape) in the order written."""
    n = rng.choice([2, 3, 4])
    return list(zip(rng.sample(COLOR_NAMES, n), rng.sample(SHAPES, n)))


def single_token_words(tok) -> list[str]:
    """Lower-case words the nano BPE writes as one token with their leading space (about 220)."""
    out = []
    for i in range(len(tok)):
        w = tok.decode([i])
        if w.startswith(" ") and w[1:].isalpha() and w[1:].islower() and len(w) > 3 \
                and tok.encode(w, add_special_tokens=False) == [i]:
            out.append(w[1:])
    return out


class GenericScenes:
    """Scenes of 6-10 (value, key) pairs of arbitrary one-token words, asked as "What color is the <key>?" ->
    <value>. With this many objects and values drawn from ~100 words, naming a value of the scene without reading
    the question (the bag-of-colours shortcut) earns little; only the lookup pays."""

    def __init__(self, tok, n_min: int = 6, n_max: int = 10):
        fixed = set(COLOR_NAMES) | set(SHAPES)
        words = [w for w in single_token_words(tok) if w not in fixed]
        self.keys = list(SHAPES) + words[0::2]
        self.values = COLOR_NAMES + words[1::2]
        self.n_min, self.n_max = n_min, n_max

    def scene(self, rng: random.Random) -> list[tuple[str, str]]:
        n = rng.randint(self.n_min, self.n_max)
        return list(zip(rng.sample(self.values, n), rng.sample(self.keys, n)))


def scene_text(scene) -> str:
    return "Scene: " + ", ".join(f"{c} {s}" for c, s in scene) + "."


class Format:
    """How a scene and its questions become token ids and labels.

    chat:  the accessory template with its system prompt (as nano is trained), one Human/Assistant turn per question.
    nosys: the same without the system prompt (the template's markers stay).
    raw:   plain text "Scene: ... What color is the star? yellow. What color is the circle? red." (no template).
    kv:    raw, but shape before colour and no "?": "Scene: square purple, star yellow. What color is the star yellow."
           The answer then follows the asked word itself: a plain induction lookup (find the earlier "star", copy
           the word after it), with no need to carry the asked word to a later position.
    """

    def __init__(self, tok, kind: str):
        self.tok, self.kind = tok, kind
        self.enc = DialogueEncoder(tok, "accessory", max_len=512)

    @property
    def _qmark(self) -> str:
        return "" if self.kind == "kv" else "?"

    def _scene(self, scene) -> str:
        if self.kind == "kv":
            return "Scene: " + ", ".join(f"{s} {c}" for c, s in scene) + "."
        return scene_text(scene)

    def _msgs(self, scene, asked):
        msgs = [] if self.kind == "chat" else [{"role": "system", "content": ""}]
        for i, k in enumerate(asked):
            q = (scene_text(scene) + " " if i == 0 else "") + f"What color is the {scene[k][1]}?"
            msgs += [{"role": "user", "content": q}, {"role": "assistant", "content": scene[k][0]}]
        return msgs

    def train_item(self, scene, asked) -> tuple[list[int], list[int]]:
        if self.kind in ("raw", "kv"):
            ids, labels = [self.tok.bos_token_id], [IGNORE_INDEX]
            prefix = self._scene(scene)
            for k in asked:
                q = self.tok.encode(f"{prefix} What color is the {scene[k][1]}{self._qmark}", add_special_tokens=False)
                a = self.tok.encode(f" {scene[k][0]}.", add_special_tokens=False)
                ids += q + a
                labels += [IGNORE_INDEX] * len(q) + a
                prefix = ""
            return ids, labels
        e = self.enc.encode(self._msgs(scene, asked), [])
        return e.input_ids, e.labels

    def prompt(self, scene, k) -> list[int]:
        if self.kind in ("raw", "kv"):
            return [self.tok.bos_token_id] + self.tok.encode(
                f"{self._scene(scene)} What color is the {scene[k][1]}{self._qmark}", add_special_tokens=False)
        msgs = self._msgs(scene, [k])[:-1]
        return self.enc.encode_prompt(msgs, [])


# ---- induction: a random word sequence, then the same sequence again (every repeated token supervised) --------
class Induction:
    """BOS w1 .. wL w1 .. wL: from the second copy's second token on, each next token is found by looking up the
    current token's earlier occurrence and copying what followed it (an induction head). No shortcut exists: the
    words are drawn from `vocab` ids at random, so before the circuit forms the loss stays near ln(len(vocab))."""

    def __init__(self, tok, length: int = 12, vocab: int = 400):
        self.tok, self.length = tok, length
        self.words = list(range(100, 100 + vocab))  # ordinary BPE tokens (ids 0-3 special, low ids bytes)

    def item(self, rng: random.Random):
        seq = rng.sample(self.words, self.length)
        ids = [self.tok.bos_token_id] + seq + seq
        labels = [IGNORE_INDEX] * (2 + self.length) + seq[1:]
        return ids, labels

    def accuracy(self, model, n: int = 200, seed: int = 999_999) -> float:
        rng = random.Random(seed)
        items = [self.item(rng) for _ in range(n)]
        ids, mask, lab = collate(items, self.tok.pad_token_id)
        was = model.training
        model.eval()
        with torch.no_grad():
            pred = model(input_ids=ids, attention_mask=mask).logits[:, :-1].argmax(-1)
        model.train(was)
        tgt = lab[:, 1:]
        keep = tgt != IGNORE_INDEX
        return float((pred[keep] == tgt[keep]).float().mean())


# ---- model -------------------------------------------------------------------------------------
def nano_llm_config(**overrides) -> LLMConfig:
    data = dict(PRESETS["nano"]["llm"])
    data.update(overrides)
    return LLMConfig(**data)


def build_model(arch: str, seed: int, init_std: float | None = None, **overrides):
    """nano's LLM (llama), or the same dims as Qwen3 (Llama + RMSNorm on q and k per head: QK-norm)."""
    torch.manual_seed(seed)
    cfg = nano_llm_config(**overrides)
    if arch == "llama":
        hf = llm_hf_config(cfg)
        if init_std:
            hf.initializer_range = init_std
        from transformers import LlamaForCausalLM
        return LlamaForCausalLM._from_config(hf)
    if arch == "qknorm":
        from transformers import Qwen3Config, Qwen3ForCausalLM
        hf = llm_hf_config(cfg).to_dict()
        keep = {k: hf[k] for k in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                                   "num_attention_heads", "num_key_value_heads", "max_position_embeddings",
                                   "rms_norm_eps", "rope_parameters", "tie_word_embeddings", "hidden_act")}
        q3 = Qwen3Config(**keep, head_dim=cfg.hidden_size // cfg.num_heads, attention_bias=False,
                         initializer_range=init_std or 0.02)
        return Qwen3ForCausalLM._from_config(q3)
    raise SystemExit(f"unknown --arch {arch!r}")


# ---- data --------------------------------------------------------------------------------------
def make_item(fmt: Format, rng: random.Random, dense: int, scene=None):
    """One training sample; `dense` > 0 asks that many questions about random objects (with replacement, so the
    last answers cannot be had by elimination), every answer supervised."""
    scene = scene or make_scene(rng)
    asked = [rng.randrange(len(scene)) for _ in range(max(1, dense))]
    return fmt.train_item(scene, asked)


def collate(items, pad_id):
    width = max(len(x) for x, _ in items)
    ids = torch.full((len(items), width), pad_id)
    lab = torch.full((len(items), width), IGNORE_INDEX)
    mask = torch.zeros((len(items), width), dtype=torch.long)
    for b, (x, y) in enumerate(items):
        ids[b, : len(x)] = torch.tensor(x)
        lab[b, : len(y)] = torch.tensor(y)
        mask[b, : len(x)] = 1
    return ids, mask, lab


# ---- eval --------------------------------------------------------------------------------------
@torch.no_grad()
def first_tokens(model, prompts: list[list[int]], pad_id: int) -> list[int]:
    """Greedy first answer token at the end of each prompt (left padded, positions from 0)."""
    was = model.training
    model.eval()
    preds = []
    for i in range(0, len(prompts), 100):
        chunk = prompts[i: i + 100]
        width = max(len(x) for x in chunk)
        ids = torch.full((len(chunk), width), pad_id)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for b, x in enumerate(chunk):
            ids[b, width - len(x):] = torch.tensor(x)
            mask[b, width - len(x):] = 1
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        preds += model(input_ids=ids, attention_mask=mask, position_ids=pos).logits[:, -1].argmax(-1).tolist()
    model.train(was)
    return preds


class Evaluator:
    def __init__(self, fmt: Format, n: int = 200, n_scenes: int = 100, seed: int = 999_999):
        rng = random.Random(seed)
        self.fmt = fmt
        self.held = [(s, rng.randrange(len(s))) for s in (make_scene(rng) for _ in range(n))]
        self.scenes = [s for s, _ in self.held[:n_scenes]]
        self.ans = {c: fmt.tok.encode(" " + c, add_special_tokens=False)[0] for c in COLOR_NAMES}

    def accuracy(self, model) -> float:
        preds = first_tokens(model, [self.fmt.prompt(s, k) for s, k in self.held], self.fmt.tok.pad_token_id)
        return sum(p == self.ans[s[k][0]] for p, (s, k) in zip(preds, self.held)) / len(self.held)

    def binding(self, model) -> tuple[float, float]:
        """(share of scenes whose answer changes with the asked shape, per-question accuracy)."""
        qs = [(i, s, k) for i, s in enumerate(self.scenes) for k in range(len(s))]
        preds = first_tokens(model, [self.fmt.prompt(s, k) for _, s, k in qs], self.fmt.tok.pad_token_id)
        by: dict[int, set] = {}
        for (i, _, _), p in zip(qs, preds):
            by.setdefault(i, set()).add(p)
        changes = sum(len(v) > 1 for v in by.values()) / len(self.scenes)
        right = sum(p == self.ans[s[k][0]] for (_, s, k), p in zip(qs, preds)) / len(qs)
        return changes, right


# ---- training ----------------------------------------------------------------------------------
def lr_factor(step: int, steps: int, warmup: int, sched: str) -> float:
    if step < warmup:
        return (step + 1) / warmup
    if sched == "const":
        return 1.0
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))


def train(args, log=print) -> dict:
    torch.set_num_threads(args.threads)
    tok = load_tokenizer("nano")
    fmt = Format(tok, args.format)
    model = build_model(args.arch, args.seed, init_std=args.init_std)
    model.train()
    ev = Evaluator(fmt)
    rng = random.Random(args.seed + 1000)
    induct = Induction(tok) if args.task == "induct" else None
    helper = Induction(tok)
    generic = GenericScenes(tok)

    def draw():
        if induct:
            return induct.item(rng)
        if args.induct_share and rng.random() < args.induct_share:  # induction sequences mixed into the batches
            return helper.item(rng)
        if args.generic_share and rng.random() < args.generic_share:
            return make_item(fmt, rng, args.dense, generic.scene(rng))
        return make_item(fmt, rng, args.dense)
    pool = [draw() for _ in range(args.pool)] if args.pool else None
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=args.lr, betas=(0.9, 0.95), weight_decay=args.wd)
    warmup = max(1, int(args.warmup * args.steps))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, args.steps, warmup, args.sched))
    records, losses, t0 = [], [], time.time()
    for step in range(1, args.steps + 1):
        items = [pool[rng.randrange(len(pool))] if pool else draw() for _ in range(args.bs)]
        ids, mask, lab = collate(items, tok.pad_token_id)
        hidden = model.get_decoder()(input_ids=ids, attention_mask=mask).last_hidden_state[:, :-1]
        tgt = lab[:, 1:]
        keep = tgt != IGNORE_INDEX
        loss = F.cross_entropy(model.get_output_embeddings()(hidden[keep]).float(), tgt[keep])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, args.clip)
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
        if step % args.eval_every == 0 or step == args.steps:
            acc = induct.accuracy(model) if induct else ev.accuracy(model)
            rec = {"step": step, "acc": acc, "loss": round(sum(losses) / len(losses), 4),
                   "t": round(time.time() - t0)}
            losses = []
            if not induct and (step == args.steps or args.binding_every):
                rec["q_changes"], rec["q_acc"] = ev.binding(model)
            records.append(rec)
            log(json.dumps(rec), flush=True) if log is print else log(rec)
    if args.save:
        args.save.parent.mkdir(parents=True, exist_ok=True)
        torch.save(model.state_dict(), args.save)
    return {"args": vars(args), "records": records}


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--bs", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--wd", type=float, default=0.0)
    ap.add_argument("--clip", type=float, default=8.0)
    ap.add_argument("--warmup", type=float, default=0.03, help="warm-up share of the steps")
    ap.add_argument("--sched", choices=["const", "cosine"], default="const")
    ap.add_argument("--task", choices=["bind", "induct"], default="bind")
    ap.add_argument("--induct-share", type=float, default=0.0, help="share of samples that are induction sequences")
    ap.add_argument("--generic-share", type=float, default=0.0,
                    help="share of samples that are 6-10 object scenes of arbitrary words (GenericScenes)")
    ap.add_argument("--format", choices=["chat", "nosys", "raw", "kv"], default="chat")
    ap.add_argument("--dense", type=int, default=0, help="questions per scene (random objects, all supervised)")
    ap.add_argument("--pool", type=int, default=0, help="reuse a fixed pool of N samples (0: fresh every step)")
    ap.add_argument("--arch", choices=["llama", "qknorm"], default="llama")
    ap.add_argument("--init-std", type=float, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--eval-every", type=int, default=250)
    ap.add_argument("--binding-every", action="store_true", help="binding metrics at every eval, not only the end")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--save", type=Path, default=None, help="write the trained LLM's state dict here")
    ap.add_argument("--json", type=Path, default=None, help="write the records here")
    return ap


def main(argv=None) -> None:
    args = parser().parse_args(argv)
    result = train(args)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        result["args"] = {k: str(v) if isinstance(v, Path) else v for k, v in result["args"].items()}
        args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    sys.exit(main())
