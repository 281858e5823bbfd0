"""One ladder run: build the model a control asks for, train it on fresh samples, evaluate the held-out set.

The model is the real SphinxX built from the training recipe (configs/nano.yaml plus any `--model.*` /
`--optim.*` overrides), samples go through the project's DialogueEncoder / prepare_image / collate_images,
the schedule is the recipe's warm-up + cosine, and answers are decoded with the project's greedy
`generate_batch` (the path `sphinx-x generate` and the evaluation harness use).
"""

from __future__ import annotations

import importlib.util
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from sphinx_x.canvas import collate_images, prepare_image
from sphinx_x.config import SphinxXConfig
from sphinx_x.constants import IGNORE_INDEX
from sphinx_x.data.encode import DialogueEncoder
from sphinx_x.data.geometry import parse_box
from sphinx_x.eval.metrics import box_iou
from sphinx_x.image_tokens import visual_token_count
from sphinx_x.infer.generate import generate_batch
from sphinx_x.infer.options import GenerationConfig
from sphinx_x.infer.prompts import EncodedPrompt
from sphinx_x.model import SphinxX
from sphinx_x.tokenizer import load_tokenizer
from sphinx_x.train.build import model_config, param_groups, set_experts_frozen
from sphinx_x.train.config import TrainConfig
from sphinx_x.train.optim import build_optimizer
from sphinx_x.train.schedule import build_scheduler

from .controls import CeilingCNN, Control
from .tasks import SIDE, Item, Task, heldout, train_stream


@dataclass
class RunSpec:
    task: Task
    control: Control
    seed: int
    steps: int
    batch: int
    eval_every: int
    eval_n: int
    binding_n: int
    recipe: TrainConfig
    init_llm: str | None = None
    optim: str = "adamw"
    experts: str | None = None
    patches: list[str] = field(default_factory=list)  # FILE.py:FUNC, each called as FUNC(model)
    log: Callable[[str], None] = print
    save_llm: str | None = None  # write the trained LLM here (safetensors, --init-llm reads it)
    dense: int = 1  # single-question sequences per training image (Encoder.expand); needs the task's probes
    extra: dict[str, Any] = field(default_factory=dict)


# ---- model -------------------------------------------------------------------------------------
def build_model(spec: RunSpec) -> SphinxX:
    cfg = spec.recipe
    if spec.control.needs_experts:
        if not spec.experts:
            raise ValueError(f"control {spec.control.name!r} needs --experts DIR/model.yaml "
                             "(written by sphinx-x pretrain-experts)")
        cfg.model.preset = spec.experts
    data = model_config(cfg).to_dict()
    if spec.control.edit_config:
        spec.control.edit_config(data)
    config = SphinxXConfig.from_dict(data)
    torch.manual_seed(spec.seed)
    model = SphinxX(config)
    if cfg.model.frozen_experts is not None:
        set_experts_frozen(model, cfg.model.frozen_experts)
    if spec.control.patch:
        spec.control.patch(model)
    for patch in spec.patches:
        load_patch(patch)(model)
    if spec.init_llm:
        load_llm(model, spec.init_llm)
    model.tokenizer = load_tokenizer(config.tokenizer or config.llm.path)
    model.train()
    return model


def load_patch(spec: str) -> Callable[[SphinxX], None]:
    """`path/to/file.py:func`: a function that changes the built model in place (an experimental lever,
    e.g. swapping the LLM for one with QK-norm) without touching the project's code."""
    file, _, name = spec.rpartition(":")
    if not file or not Path(file).is_file():
        raise FileNotFoundError(f"--patch {spec!r}: expected FILE.py:FUNC with an existing file")
    module_spec = importlib.util.spec_from_file_location(f"ladder_patch_{Path(file).stem}", file)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    if not callable(getattr(module, name, None)):
        raise AttributeError(f"--patch {spec!r}: {file} has no function {name!r}")
    return getattr(module, name)


def load_llm(model: SphinxX, path: str) -> None:
    """`load_llm_weights` into a SphinxX's LLM."""
    load_llm_weights(model.llm, path)


def load_llm_weights(llm: torch.nn.Module, path: str | Path) -> None:
    """LLM weights from a safetensors file (or a directory holding model.safetensors): keys of the LLM
    module itself (`model.layers.0...`), or of a whole SphinxX (`llm.` prefix, which is stripped)."""
    p = Path(path)
    if p.is_dir():
        p = p / "model.safetensors"
    if not p.is_file():
        raise FileNotFoundError(f"--init-llm {path}: no safetensors file there")
    state = load_file(str(p))
    if any(k.startswith("llm.") for k in state):
        state = {k[4:]: v for k, v in state.items() if k.startswith("llm.")}
    missing, unexpected = llm.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("lm_head.weight")]  # tied head
    if missing or unexpected:
        raise ValueError(f"--init-llm {p}: does not match the model's LLM (missing {missing[:3]}, "
                         f"unexpected {unexpected[:3]})")


def save_llm(model: SphinxX, path: str) -> None:
    from safetensors.torch import save_file

    state = {k: v.detach().contiguous() for k, v in model.llm.state_dict().items()}
    if model.llm.config.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    save_file(state, path)


def build_optimizers(model: SphinxX, spec: RunSpec) -> list[torch.optim.Optimizer]:
    """The run's optimizer, as `sphinx-x train` builds it (`--optim muon`: Muon for the LLM's hidden matrices,
    AdamW for the rest; sphinx_x/train/optim.py)."""
    o = spec.recipe.optim
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    return [build_optimizer(spec.optim, named, param_groups(named, o.lr, o.vision_lr_scale), lr=o.lr,
                            betas=tuple(o.betas), eps=o.eps, weight_decay=o.weight_decay)]


# ---- encoding ----------------------------------------------------------------------------------
class Encoder:
    """Items -> training tensors and generation prompts (image right after BOS, as the corpus)."""

    def __init__(self, model: SphinxX, task: Task, text_scene: bool, dense: int = 1, seed: int = 0,
                 oracle: bool = False):
        if dense > 1 and not task.probes:
            raise ValueError(f"--dense {dense}: rung {task.rung} ({task.name}) has no per-object questions")
        self.model, self.task, self.dense = model, task, dense
        self.rng = random.Random(f"dense:{seed}")
        self.oracle = oracle
        self.vision = model.config.vision
        self.use_image = task.has_image and not text_scene
        self.text_scene = text_scene
        self.enc = DialogueEncoder(model.tokenizer, model.config.template, max_len=512)
        self.counts = [visual_token_count(SIDE, SIDE, self.vision)] if self.use_image else []
        tok = model.tokenizer
        self.pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id

    def _question(self, item: Item, question: str | None) -> str:
        q = question or item.question
        return self.task.describe(item) + q if self.text_scene else q

    def expand(self, items: list[Item]) -> list[tuple[Item, str, str]]:
        """(item, question, answer) sequences: one per item, or with `dense` > 1 that many per item about
        different objects (its per-object questions; again from the start when there are fewer objects), each a
        dialogue of its own, so no answer can be inferred from another one by elimination."""
        if self.dense <= 1:
            return [(it, it.question, it.answer) for it in items]
        out = []
        for it in items:
            probes = self.task.probes(it)
            self.rng.shuffle(probes)
            out += [(it, *probes[k % len(probes)]) for k in range(self.dense)]
        return out

    def train_tensors(self, items: list[Item]):
        seqs = self.expand(items)
        items = [it for it, _, _ in seqs]
        encs = [self.enc.encode([{"role": "user", "content": self._question(it, q)},
                                 {"role": "assistant", "content": a}], self.counts) for it, q, a in seqs]
        width = max(len(e.input_ids) for e in encs)
        ids = torch.full((len(items), width), self.pad_id)
        labels = torch.full((len(items), width), IGNORE_INDEX)
        mask = torch.zeros((len(items), width), dtype=torch.long)
        for b, e in enumerate(encs):
            ids[b, : len(e.input_ids)] = torch.tensor(e.input_ids)
            labels[b, : len(e.labels)] = torch.tensor(e.labels)
            mask[b, : len(e.input_ids)] = 1
        images = collate_images([self.views(it) for it in items], self.vision) if self.use_image else None
        return ids, mask, labels, images

    def prompt(self, item: Item, question: str | None = None) -> EncodedPrompt:
        ids = self.enc.encode_prompt([{"role": "user", "content": self._question(item, question)}], self.counts)
        return EncodedPrompt(ids, [self.views(item)] if self.use_image else [])

    def views(self, item: Item):
        views = prepare_image(item.image, self.vision)
        if self.oracle:
            from .oracle import register

            register(views, self.vision.experts[0].name, item.objects)
        return views


def correct(task: Task, prediction: str, answer: str) -> bool:
    if task.metric == "iou":
        box = parse_box(prediction)
        return box is not None and box_iou(box, parse_box(answer)) >= 0.5
    return prediction.strip().rstrip(".").lower() == answer.lower()


@torch.no_grad()
def answers(model: SphinxX, encoder: Encoder, prompts: list[EncodedPrompt], chunk: int = 50) -> list[str]:
    model.eval()
    gen = GenerationConfig(max_new_tokens=encoder.task.max_new_tokens)
    out = []
    for i in range(0, len(prompts), chunk):
        out += [g.text for g in generate_batch(model, prompts[i : i + chunk], gen)]
    model.train()
    return out


def binding(model: SphinxX, encoder: Encoder, items: list[Item]) -> dict[str, float]:
    """Ask about each object of each image in turn: the share of images whose answer changes with the
    question (0 = the model ignores which object is named), and the accuracy over all those questions."""
    probes = [(k, q, a) for k, it in enumerate(items) for q, a in encoder.task.probes(it)]
    preds = answers(model, encoder, [encoder.prompt(items[k], q) for k, q, _ in probes])
    by_item: dict[int, set[str]] = {}
    for (k, _, _), p in zip(probes, preds):
        by_item.setdefault(k, set()).add(p.strip())
    right = sum(correct(encoder.task, p, a) for (_, _, a), p in zip(probes, preds))
    return {"changes": sum(len(v) > 1 for v in by_item.values()) / len(items), "probe_acc": right / len(probes)}


# ---- training ----------------------------------------------------------------------------------
def run_llm(spec: RunSpec) -> dict[str, Any]:
    model = build_model(spec)
    encoder = Encoder(model, spec.task, spec.control.text_scene, spec.dense, spec.seed, spec.control.oracle)
    evalset = heldout(spec.task, spec.eval_n)
    stream = train_stream(spec.task, spec.seed, {it.key for it in evalset})
    opts = build_optimizers(model, spec)
    scheds = [build_scheduler(o, spec.steps, spec.recipe.optim.warmup_ratio) for o in opts]
    params = [p for o in opts for g in o.param_groups for p in g["params"]]
    clip = spec.recipe.optim.grad_clip
    reduction = spec.recipe.optim.loss_reduction
    torch.manual_seed(spec.seed)
    curve, losses, t0 = [], [], time.time()

    def evaluate(step: int) -> None:
        preds = answers(model, encoder, [encoder.prompt(it) for it in evalset])
        acc = sum(correct(spec.task, p, it.answer) for p, it in zip(preds, evalset)) / len(evalset)
        loss = sum(losses) / len(losses) if losses else float("nan")
        curve.append({"step": step, "acc": acc, "loss": round(loss, 4), "t": round(time.time() - t0, 1)})
        spec.log(f"  step {step:5d}  acc {acc:.3f}  loss {loss:.3f}  e.g. {preds[0]!r} (want {evalset[0].answer!r})")
        losses.clear()

    for step in range(1, spec.steps + 1):
        n_images = max(1, spec.batch // spec.dense)  # with --dense, `batch` counts sequences
        ids, mask, labels, images = encoder.train_tensors([next(stream) for _ in range(n_images)])
        loss = model(ids, attention_mask=mask, labels=labels, images=images, loss_reduction=reduction).loss
        value = float(loss.detach())
        if not math.isfinite(value):
            raise FloatingPointError(f"loss is {value} at step {step}")
        for o in opts:
            o.zero_grad(set_to_none=True)
        loss.backward()
        if clip > 0:
            torch.nn.utils.clip_grad_norm_(params, clip)
        for o, s in zip(opts, scheds):
            o.step()
            s.step()
        losses.append(value)
        if step % spec.eval_every == 0 or step == spec.steps:
            evaluate(step)
    result: dict[str, Any] = {"curve": curve}
    if spec.save_llm:
        save_llm(model, spec.save_llm)
    if spec.task.probes and spec.binding_n:
        result["binding"] = binding(model, encoder, evalset[: spec.binding_n])
        spec.log(f"  binding: answer changes with the named object on {result['binding']['changes']:.0%} of images")
    return result


def _pixels(items: list[Item]) -> torch.Tensor:
    arr = [torch.from_numpy(np.asarray(it.image.resize((128, 128)), dtype=np.float32)) for it in items]
    return torch.stack(arr).permute(0, 3, 1, 2) / 255.0


def run_ceiling(spec: RunSpec) -> dict[str, Any]:
    task = spec.task
    if not (task.answers and task.questions):
        raise ValueError(f"cnn-ceiling needs a closed answer and question set; rung {task.rung} has none")
    torch.manual_seed(spec.seed)
    net = CeilingCNN(len(task.questions), len(task.answers))
    o = spec.recipe.optim
    opt = torch.optim.AdamW(net.parameters(), lr=o.lr, betas=tuple(o.betas), weight_decay=o.weight_decay)
    sched = build_scheduler(opt, spec.steps, o.warmup_ratio)
    evalset = heldout(task, spec.eval_n)
    stream = train_stream(task, spec.seed, {it.key for it in evalset})

    def tensors(items):
        q = torch.tensor([task.questions.index(it.question) for it in items])
        return _pixels(items), q, torch.tensor([task.answers.index(it.answer) for it in items])

    ex, eq, ey = tensors(evalset)
    curve, losses, t0 = [], [], time.time()
    for step in range(1, spec.steps + 1):
        x, q, y = tensors([next(stream) for _ in range(spec.batch)])
        loss = F.cross_entropy(net(x, q), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
        if step % spec.eval_every == 0 or step == spec.steps:
            with torch.no_grad():
                acc = float((net(ex, eq).argmax(-1) == ey).float().mean())
            curve.append({"step": step, "acc": acc, "loss": round(sum(losses) / len(losses), 4),
                          "t": round(time.time() - t0, 1)})
            losses.clear()
            spec.log(f"  step {step:5d}  acc {acc:.3f}")
    return {"curve": curve}


def run_one(spec: RunSpec) -> dict[str, Any]:
    return run_ceiling(spec) if spec.control.ceiling else run_llm(spec)
