"""`build_standins`: nano's stand-in experts and LLM from nothing, with fixed seeds, into one folder with its
manifest and model card (the layout of sphinx_x/standins/__init__.py). `sphinx-x build-standins` runs it;
the set shipped in the package was made by the command its MODEL_CARD.md quotes."""

from __future__ import annotations

import hashlib
import json
import os
import platform
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sphinx_x.standins import CARD_NAME, MANIFEST_NAME
from sphinx_x.standins.llm_pretrain import build_nano_llm, pretrain_llm, write_llm_dir
from sphinx_x.standins.settings import (
    EXPERT_BATCH,
    EXPERT_LR,
    EXPERT_SCENE_WEIGHT,
    EXPERT_STEPS,
    EXPERT_TOKEN_WEIGHT,
    LLM_STEPS,
    LlmPretrainConfig,
)


@dataclass
class BuildSettings:
    seed: int = 0
    expert_steps: int = EXPERT_STEPS
    expert_batch: int = EXPERT_BATCH
    expert_lr: float = EXPERT_LR
    expert_scene_weight: float = EXPERT_SCENE_WEIGHT
    expert_token_weight: float = EXPERT_TOKEN_WEIGHT
    llm: LlmPretrainConfig | None = None  # None: LlmPretrainConfig(steps=LLM_STEPS, seed=seed)
    note: str = ""  # a line for the model card (e.g. what else ran on the machine)

    def llm_config(self) -> LlmPretrainConfig:
        return self.llm or LlmPretrainConfig(steps=LLM_STEPS, seed=self.seed)


def command_line(s: BuildSettings) -> str:
    """The `sphinx-x build-standins` command that makes this set again."""
    llm, default = s.llm_config(), LlmPretrainConfig()
    parts = ["sphinx-x build-standins --out DIR", f"--seed {s.seed}", f"--expert-steps {s.expert_steps}",
             f"--llm-steps {llm.steps}"]
    for flag, value, default_value in (("--expert-lr", s.expert_lr, EXPERT_LR),
                                       ("--expert-scene-weight", s.expert_scene_weight, EXPERT_SCENE_WEIGHT),
                                       ("--expert-token-weight", s.expert_token_weight, EXPERT_TOKEN_WEIGHT)):
        if value != default_value:
            parts.append(f"{flag} {value:g}")
    for flag, attr in (("--llm-batch", "batch_size"), ("--llm-lr", "lr"), ("--scene-share", "scene_share")):
        if getattr(llm, attr) != getattr(default, attr):
            parts.append(f"{flag} {getattr(llm, attr)}")
    return " ".join(parts)


def machine() -> str:
    import torch

    threads = torch.get_num_threads()
    return (f"{platform.machine()} {platform.processor() or ''} {os.cpu_count()} CPUs, torch {torch.__version__} "
            f"with {threads} thread{'s' * (threads != 1)}, Python {platform.python_version()}").replace("  ", " ")


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def build_standins(out: str | Path, settings: BuildSettings, progress: bool = False, log: Any = print,
                   preset: str = "nano") -> dict[str, Any]:
    """Pretrain `preset`'s experts then its LLM (seeded by settings.seed) into `out`, atomically replacing a
    previous set; write manifest.json and MODEL_CARD.md. Returns the manifest."""
    from sphinx_x.config import SphinxXConfig
    from sphinx_x.fileio import atomic_directory
    from sphinx_x.tokenizer import load_tokenizer
    from sphinx_x.train.expert_pretrain import pretrain_experts

    config = SphinxXConfig.from_name(preset)
    llm_cfg = settings.llm_config()
    out = Path(out)
    with atomic_directory(out) as tmp:
        log(f"[1/2] pretraining {preset}'s vision experts: {settings.expert_steps} steps of {settings.expert_batch} "
            "scenes")
        experts = pretrain_experts(config.vision, tmp / "experts", steps=settings.expert_steps,
                                   batch_size=settings.expert_batch, lr=settings.expert_lr, seed=settings.seed,
                                   scene_weight=settings.expert_scene_weight,
                                   token_weight=settings.expert_token_weight, progress=progress)
        log("      held-out: " + ", ".join([f"{n} scene {100 * a:.1f}%" for n, a in experts.accuracy.items()]
                                           + [f"{n} tokens {100 * a:.1f}%" for n, a in experts.token_accuracy.items()]))
        log(f"[2/2] pretraining {preset}'s LLM: {llm_cfg.steps} steps of {llm_cfg.batch_size} samples "
            f"({100 * llm_cfg.scene_share:.0f}% scene draws)")
        tokenizer = load_tokenizer(config.tokenizer or "nano")
        llm = build_nano_llm(config, seed=llm_cfg.seed)
        result = pretrain_llm(llm, tokenizer, llm_cfg, progress=progress)
        write_llm_dir(llm, tokenizer, tmp / "llm", llm_cfg, result)
        log("      held-out: " + ", ".join(f"{k} {100 * a:.1f}%" for k, a in result.accuracy.items()))
        files = sorted(p for p in tmp.rglob("*") if p.is_file())
        manifest = {
            "preset": preset,
            "experts": {name: f"experts/{Path(p).name}" for name, p in experts.paths.items()},
            "llm": "llm",
            "made": {
                "command": command_line(settings),
                "seed": settings.seed,
                "experts": {"steps": experts.steps, "batch_size": settings.expert_batch, "lr": settings.expert_lr,
                            "scene_weight": settings.expert_scene_weight,
                            "token_weight": settings.expert_token_weight, "wall_s": round(experts.seconds, 1)},
                "llm": {**asdict(llm_cfg), "wall_s": round(result.seconds, 1)},
                "machine": machine(),
                "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
                "note": settings.note,
            },
            "scores": {"experts_held_out_shape_accuracy": {n: round(a, 4) for n, a in experts.accuracy.items()},
                       "experts_held_out_token_accuracy": {n: round(a, 4) for n, a in experts.token_accuracy.items()},
                       "llm_held_out_answer_accuracy": {k: round(a, 4) for k, a in result.accuracy.items()}},
            "files": {str(p.relative_to(tmp)): {"bytes": p.stat().st_size, "sha256": _sha256(p)} for p in files},
        }
        (tmp / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n")
        (tmp / CARD_NAME).write_text(model_card(manifest, config))
    return manifest


def objectives(e: dict[str, Any]) -> str:
    """The experts' objectives in words, with their weights (the manifest's made.experts)."""
    parts = []
    if e.get("scene_weight", 1.0) > 0:
        parts.append(f"scene-level x {e.get('scene_weight', 1.0):g} (a linear probe on the mean token names, for each "
                     "colour, the shape of that colour in the scene)")
    if e.get("token_weight", 0.0) > 0:
        parts.append(f"per-token x {e['token_weight']:g} (every grid token of the global view and of one sub-image "
                     "view names the colour and shape of the object under it, or background)")
    return "; ".join(parts)


def model_card(manifest: dict[str, Any], config: Any) -> str:
    """MODEL_CARD.md: what the stand-ins are, how they were made, what they score, the files."""
    made, scores = manifest["made"], manifest["scores"]
    llm, e = made["llm"], made["experts"]
    total = sum(f["bytes"] for f in manifest["files"].values())
    d = config.llm
    experts = ", ".join(f"{x.name} ({x.kind}, {x.timm_model}, {x.view_size} px views)" for x in config.vision.experts)
    lines = [
        f"# {manifest['preset']} stand-ins: pretrained vision experts and LLM",
        "",
        f"The weights `sphinx-x quickstart` starts from by default: `{manifest['preset']}`'s two vision experts "
        "(the stand-ins for the paper's pretrained CLIP ConvNeXt and DINOv2, frozen in the one-stage run) and its "
        "language model (the stand-in for the paper's pretrained LLM; the one-stage run initialises from it). "
        "They are trained from random initialisation on generated data only (sphinx_x/data/synth), with fixed "
        "seeds, by one command; `sphinx-x quickstart --from-scratch` runs the same chain itself instead. "
        "See docs/standins.md.",
        "",
        "## How they were made",
        "",
        "```bash",
        made["command"],
        "```",
        "",
        f"- Date: {made['date']}; machine: {made['machine']}." + (f" Note: {made['note']}" if made.get("note") else ""),
        f"- Experts ({experts}): `sphinx-x pretrain-experts`, {e['steps']} AdamW steps of {e['batch_size']} "
        f"synthetic scenes, lr {e.get('lr', 1e-3):g}, seed {made['seed']}; objectives: {objectives(e)}. "
        f"Wall time {e['wall_s'] / 60:.1f} min.",
        f"- LLM (transformers LlamaForCausalLM, {d.num_layers} layers, width {d.hidden_size}, {d.num_heads} heads / "
        f"{d.num_kv_heads} KV heads, MLP {d.intermediate_size}, vocabulary {d.vocab_size}: the shipped nano BPE, "
        f"tied embeddings): `sphinx-x pretrain-llm`, {llm['steps']} AdamW steps of {llm['batch_size']} samples, "
        f"lr {llm['lr']:g} (warm-up {llm['warmup_ratio']:g} then cosine), grad clip {llm['grad_clip']:g}, seed "
        f"{llm['seed']}. Data (sphinx_x/standins/llm_data.py): the synthetic corpus's text-only dialogues in "
        f"nano's `{llm['template']}` template, and, for {100 * llm['scene_share']:.0f}% of the draws, slot scenes: "
        "objects given as bag-of-words soft tokens right after BOS (where image tokens go), asked about by "
        f"content. Wall time {llm['wall_s'] / 60:.1f} min.",
        "",
        "## What they score (held-out)",
        "",
        "| part | held-out task | accuracy |",
        "|---|---|---:|",
    ]
    lines += [f"| expert {n} | names the shape of each drawn object by its colour (chance 20%) | {100 * a:.1f}% |"
              for n, a in scores["experts_held_out_shape_accuracy"].items()]
    lines += [f"| expert {n} | per grid token of the global view covered by an object: names its colour and shape "
              f"| {100 * a:.1f}% |" for n, a in scores.get("experts_held_out_token_accuracy", {}).items()]
    what = {"text": "answers of the text dialogues (facts, arithmetic, code), greedy exact",
            "arithmetic": "synth-bench-style arithmetic (`What is a + b?`), greedy exact",
            "scene": "slot scenes (`What color is the <shape>?`), greedy exact"}
    lines += [f"| LLM | {what.get(k, k)} | {100 * a:.1f}% |"
              for k, a in scores["llm_held_out_answer_accuracy"].items()]
    lines += ["", f"## Files ({total / 2**20:.1f} MiB)", "", "| file | bytes | sha256 |", "|---|---:|---|"]
    lines += [f"| {name} | {f['bytes']} | `{f['sha256'][:16]}…` |" for name, f in manifest["files"].items()]
    return "\n".join(lines) + "\n"
