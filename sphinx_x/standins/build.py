"""`build_standins`: nano's stand-in experts and LLM from nothing, with fixed seeds, into one folder with its
manifest and model card (the layout of sphinx_x/standins/__init__.py). `sphinx-x build-standins` runs it;
the set shipped in the package was made by the command its MODEL_CARD.md quotes."""

from __future__ import annotations

import hashlib
import json
import os
import platform
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sphinx_x.standins import CARD_NAME, CONNECTOR_NAME, MANIFEST_NAME, read_manifest
from sphinx_x.standins.expert_reading import ReadingSettings, read_stage, reading_line
from sphinx_x.standins.llm_pretrain import build_nano_llm, pretrain_llm, read_summary, write_llm_dir
from sphinx_x.standins.lookup_warmup import warm_up_llm_dir
from sphinx_x.standins.settings import (
    EXPERT_BATCH,
    EXPERT_LR,
    EXPERT_OCR_WEIGHT,
    EXPERT_SCENE_WEIGHT,
    EXPERT_STEPS,
    EXPERT_TOKEN_WEIGHT,
    LLM_STEPS,
    WARMUP_LOSS_REDUCTION,
    LlmPretrainConfig,
    LookupWarmupConfig,
)


@dataclass
class BuildSettings:
    seed: int = 0
    expert_steps: int = EXPERT_STEPS
    expert_batch: int = EXPERT_BATCH
    expert_lr: float = EXPERT_LR
    expert_scene_weight: float = EXPERT_SCENE_WEIGHT
    expert_token_weight: float = EXPERT_TOKEN_WEIGHT
    expert_ocr_weight: float = EXPERT_OCR_WEIGHT
    llm: LlmPretrainConfig | None = None  # None: LlmPretrainConfig(steps=LLM_STEPS, seed=seed)
    note: str = ""  # a line for the model card (e.g. what else ran on the machine)
    # A stand-ins set whose experts are copied instead of pretrained (rebuild only the LLM); the manifest keeps
    # that set's expert record and command, so the card still says how the experts were made.
    experts_from: str | None = None
    # A `sphinx-x pretrain-llm` output directory copied instead of pretraining the LLM; its pretrain_llm.json
    # supplies the LLM settings and scores the manifest records.
    llm_from: str | None = None
    # The LLM's lookup warm-up and text stage after its text pretraining (None: LookupWarmupConfig(seed=seed);
    # steps 0: none, the LLM as text pretraining left it).
    warmup: LookupWarmupConfig | None = None
    # The experts' reading stage after their scene pretraining (None: ReadingSettings(); steps 0: none). Experts
    # copied from a set that had one keep it (not run again).
    reading: ReadingSettings | None = None

    def reading_config(self) -> ReadingSettings:
        return self.reading or ReadingSettings()

    def llm_config(self) -> LlmPretrainConfig:
        return self.llm or LlmPretrainConfig(steps=LLM_STEPS, seed=self.seed)

    def warmup_config(self) -> LookupWarmupConfig:
        return self.warmup or LookupWarmupConfig(seed=self.seed)


def command_line(s: BuildSettings) -> str:
    """The `sphinx-x build-standins` command that makes this set again."""
    llm, default = s.llm_config(), LlmPretrainConfig()
    parts = ["sphinx-x build-standins --out DIR", f"--seed {s.seed}", f"--expert-steps {s.expert_steps}",
             f"--llm-steps {llm.steps}"]
    if s.experts_from:
        parts = [*parts[:2], f"--experts-from {s.experts_from}", parts[3]]
    else:  # the experts' settings, also when the LLM is copied
        for flag, value, default_value in (("--expert-lr", s.expert_lr, EXPERT_LR),
                                           ("--expert-scene-weight", s.expert_scene_weight, EXPERT_SCENE_WEIGHT),
                                           ("--expert-token-weight", s.expert_token_weight, EXPERT_TOKEN_WEIGHT),
                                           ("--expert-ocr-weight", s.expert_ocr_weight, EXPERT_OCR_WEIGHT)):
            if value != default_value:
                parts.append(f"{flag} {value:g}")
    read, default_read = s.reading_config(), ReadingSettings()
    for flag, attr in (("--expert-read-steps", "steps"), ("--expert-read-lr", "lr"),
                       ("--expert-read-keep-weight", "keep_weight")):
        if getattr(read, attr) != getattr(default_read, attr) and (attr == "steps" or read.steps > 0):
            parts.append(f"{flag} {getattr(read, attr):g}")
    if s.llm_from:
        parts = [p for p in parts if not p.startswith("--llm-steps")] + [f"--llm-from {s.llm_from}"]
    else:
        for flag, attr in (("--llm-batch", "batch_size"), ("--llm-lr", "lr"), ("--scene-share", "scene_share"),
                           ("--arithmetic-share", "arithmetic_share")):
            if getattr(llm, attr) != getattr(default, attr):
                parts.append(f"{flag} {getattr(llm, attr)}")
    warm, default_warm = s.warmup_config(), LookupWarmupConfig()
    for flag, attr in (("--warmup-steps", "steps"), ("--warmup-samples", "samples"),
                       ("--warmup-text-steps", "text_steps"), ("--warmup-box-steps", "box_steps"),
                       ("--warmup-box-mix-steps", "box_mix_steps"), ("--warmup-text-share", "text_share"),
                       ("--warmup-rec-steps", "rec_steps"), ("--warmup-rec-rounds", "rec_rounds"),
                       ("--warmup-read-steps", "read_steps")):
        if getattr(warm, attr) != getattr(default_warm, attr) and (attr == "steps" or warm.steps > 0):
            parts.append(f"{flag} {getattr(warm, attr)}")
    if warm.steps > 0 and tuple(warm.kinds) != default_warm.kinds:
        parts.append(f"--warmup-kinds {','.join(warm.kinds)}")
    if warm.steps > 0 and warm.box_mix_kinds:
        parts.append(f"--warmup-box-mix-kinds {','.join(warm.box_mix_kinds)}")
    if warm.steps > 0 and tuple(warm.rec_kinds) != default_warm.rec_kinds:
        parts.append(f"--warmup-rec-kinds {','.join(warm.rec_kinds)}")
    if warm.steps > 0 and warm.read_steps and tuple(warm.read_kinds) != default_warm.read_kinds:
        parts.append(f"--warmup-read-kinds {','.join(warm.read_kinds)}")
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
    llm_summary = read_summary(settings.llm_from) if settings.llm_from else None
    if llm_summary is not None:  # the copied LLM's own settings, so the manifest and commands say what made it
        settings = replace(settings, llm=config_from_summary(llm_summary, settings.llm_from))
        if settings.llm.seed != settings.seed:  # one seed makes the set: the rebuild command has one --seed
            raise ValueError(f"{settings.llm_from}: pretrained with seed {settings.llm.seed}, the set's seed is "
                             f"{settings.seed}")
    if llm_summary is not None and "lookup_warmup" in llm_summary:
        raise ValueError(f"{settings.llm_from}: this LLM has had its lookup warm-up already; --llm-from takes a "
                         "`sphinx-x pretrain-llm` output (text pretraining only)")
    llm_cfg, warm = settings.llm_config(), settings.warmup_config()
    out = Path(out)
    source = read_manifest(settings.experts_from) if settings.experts_from else None
    read_copied = source is not None and "reading" in source["made"]["experts"]
    if read_copied:  # the copied experts read already: their stage's settings, so the commands say what made them
        r = source["made"]["experts"]["reading"]
        settings = replace(settings, reading=ReadingSettings(steps=r["steps"], lr=r["lr"], experts=tuple(r["experts"]),
                                                             batch_size=r["batch_size"],
                                                             keep_weight=r.get("keep_weight", 0.0)))
    read = settings.reading_config()
    reading = read.steps > 0 and not read_copied
    stages = 2 + reading + (warm.steps > 0)
    if source is not None:  # the copied experts' own settings, so the from-nothing command makes them again
        e = source["made"]["experts"]
        if source["made"]["seed"] != settings.seed:
            raise ValueError(f"{settings.experts_from}: experts pretrained with seed {source['made']['seed']}, the "
                             f"set's seed is {settings.seed}")
        settings = replace(settings, expert_steps=e["steps"], expert_batch=e["batch_size"],
                           expert_lr=e.get("lr", EXPERT_LR), expert_scene_weight=e.get("scene_weight", 1.0),
                           expert_token_weight=e.get("token_weight", 0.0), expert_ocr_weight=e.get("ocr_weight", 0.0))
    with atomic_directory(out) as tmp:
        if source is None:
            log(f"[1/{stages}] pretraining {preset}'s vision experts: {settings.expert_steps} steps of "
                f"{settings.expert_batch} scenes")
            experts = pretrain_experts(config.vision, tmp / "experts", steps=settings.expert_steps,
                                       batch_size=settings.expert_batch, lr=settings.expert_lr, seed=settings.seed,
                                       scene_weight=settings.expert_scene_weight,
                                       token_weight=settings.expert_token_weight,
                                       ocr_weight=settings.expert_ocr_weight, progress=progress)
            expert_paths, expert_scores = experts.paths, {"experts_held_out_shape_accuracy": experts.accuracy,
                                                          "experts_held_out_token_accuracy": experts.token_accuracy,
                                                          "experts_held_out_word_accuracy": experts.word_accuracy}
            experts_made = {"steps": experts.steps, "batch_size": settings.expert_batch, "lr": settings.expert_lr,
                            "scene_weight": settings.expert_scene_weight,
                            "token_weight": settings.expert_token_weight, "ocr_weight": settings.expert_ocr_weight,
                            "wall_s": round(experts.seconds, 1)}
        else:
            log(f"[1/{stages}] copying {preset}'s vision experts from {settings.experts_from}")
            expert_paths, expert_scores, experts_made = copy_experts(Path(settings.experts_from), source, tmp)
        log_expert_scores(log, expert_scores)
        if reading:
            log(f"[2/{stages}] the experts' reading stage ({', '.join(read.experts)}): {read.steps} steps of "
                f"{read.batch_size} scenes and {read.batch_size // 2} OCR pages, from the experts above")
            expert_paths, read_scores, experts_made["reading"] = read_stage(
                config.vision, expert_paths, tmp / "experts", read, settings.seed, settings.expert_scene_weight,
                settings.expert_token_weight, progress)
            for key, per_expert in read_scores.items():
                expert_scores[key] = {**expert_scores.get(key, {}), **per_expert}
            log_expert_scores(log, read_scores)
        stage = 2 + reading
        tokenizer = load_tokenizer(config.tokenizer or "nano")
        if llm_summary is None:
            log(f"[{stage}/{stages}] pretraining {preset}'s LLM: {llm_cfg.steps} steps of {llm_cfg.batch_size} samples "
                f"({100 * llm_cfg.scene_share:.0f}% scene draws, {100 * llm_cfg.arithmetic_share:.0f}% arithmetic "
                "drills)")
            llm = build_nano_llm(config, seed=llm_cfg.seed)
            result = pretrain_llm(llm, tokenizer, llm_cfg, progress=progress)
            write_llm_dir(llm, tokenizer, tmp / "llm", llm_cfg, result)
            llm_accuracy, llm_seconds = result.accuracy, result.seconds
        else:
            import shutil

            log(f"[{stage}/{stages}] copying {preset}'s LLM from {settings.llm_from}")
            shutil.copytree(settings.llm_from, tmp / "llm")
            llm_accuracy, llm_seconds = llm_summary["accuracy"], llm_summary["seconds"]
        log("      held-out: " + ", ".join(f"{k} {100 * a:.1f}%" for k, a in llm_accuracy.items()))
        warmup_made, warmup_scores = {}, {}
        if warm.steps > 0:
            boxes = (f", then {warm.box_steps} on boxes of a scene's only object and {warm.box_mix_steps} on those, "
                     "boxes among 2-4 and the lookups together") if warm.box_steps or warm.box_mix_steps else ""
            if warm.rec_steps and warm.rec_rounds:
                boxes += f", then {warm.rec_rounds} x {warm.rec_steps} on {' / '.join(warm.rec_kinds)}"
            if warm.read_steps:
                boxes += f", then {warm.read_steps} on {' / '.join(warm.read_kinds)}"
            text = f"; text dialogues {100 * warm.text_share:g}% of every stage's samples" if warm.text_share else ""
            log(f"[{stages}/{stages}] {preset}'s LLM: lookup warm-up ({warm.steps} one-stage steps on {warm.samples} "
                f"single {' / '.join(warm.kinds)} questions{boxes}{text}; experts frozen; its projector and tags "
                f"kept), then {warm.text_steps} text steps")
            warmup_made, warmup_scores = warm_up_llm_dir(tmp / "llm", expert_paths, tokenizer, llm_cfg, warm,
                                                         llm_accuracy, tmp / CONNECTOR_NAME, progress, preset)
            log("      held-out lookups after the warm-up: " + ", ".join(
                f"{k} {100 * a:.1f}%" for k, a in warmup_scores["llm_lookup_warmup_accuracy"].items())
                + "; the LLM's text answers: " + ", ".join(
                f"{k} {100 * a:.1f}%" for k, a in warmup_scores["llm_held_out_answer_accuracy"].items()))
        files = sorted(p for p in tmp.rglob("*") if p.is_file())
        manifest = {
            "preset": preset,
            "experts": {name: f"experts/{Path(p).name}" for name, p in expert_paths.items()},
            "llm": "llm",
            **({"connector": CONNECTOR_NAME} if warmup_made else {}),
            "made": {
                "command": command_line(settings),
                # from nothing: the same settings with the experts pretrained instead of copied
                "rebuild_command": command_line(replace(settings, experts_from=None, llm_from=None)),
                "seed": settings.seed,
                "experts": experts_made,
                "llm": {**asdict(llm_cfg), "wall_s": round(llm_seconds, 1),
                        **({"copied_from": settings.llm_from} if settings.llm_from else {}),
                        **({"lookup_warmup": warmup_made} if warmup_made else {})},
                "machine": machine(),
                "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
                "note": settings.note,
            },
            "scores": {**{k: {n: round(a, 4) for n, a in v.items()} for k, v in expert_scores.items()},
                       "llm_held_out_answer_accuracy": {k: round(a, 4) for k, a in llm_accuracy.items()},
                       **{k: {n: round(a, 4) for n, a in v.items()} for k, v in warmup_scores.items()}},
            "files": {str(p.relative_to(tmp)): {"bytes": p.stat().st_size, "sha256": _sha256(p)} for p in files},
        }
        (tmp / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n")
        (tmp / CARD_NAME).write_text(model_card(manifest, config))
    return manifest


def log_expert_scores(log: Any, scores: dict[str, dict[str, float]]) -> None:
    """One "held-out:" line with each expert's scores (the manifest's score names, shortened)."""
    names = {"experts_held_out_shape_accuracy": "scene", "experts_held_out_token_accuracy": "tokens",
             "experts_held_out_word_accuracy": "words", "experts_held_out_word_view_accuracy": "words (sub-image)",
             "experts_held_out_keep_cosine": "scene tokens' cosine to the starting trunk"}
    log("      held-out: " + ", ".join(f"{n} {names[k]} {100 * a:.1f}%" for k in names
                                       for n, a in scores.get(k, {}).items()))


def config_from_summary(summary: dict[str, Any], directory: str) -> LlmPretrainConfig:
    """The LlmPretrainConfig a `pretrain-llm` run recorded in its pretrain_llm.json (runs from before arithmetic
    drills existed had none: arithmetic_share 0)."""
    try:
        recorded = dict(summary["config"])
        recorded.setdefault("arithmetic_share", 0.0)
        recorded["betas"] = tuple(recorded["betas"])
        return LlmPretrainConfig(**recorded)
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{directory}: pretrain_llm.json does not describe a pretrain-llm run ({e})") from e


def copy_experts(directory: Path, source: dict[str, Any], tmp: Path) -> tuple[dict[str, Path], dict, dict]:
    """The experts of the stand-ins set in `directory` (its manifest `source`) copied into tmp/experts, checked
    against the sha256 that manifest lists; returns their paths, scores and the record of how they were made
    (that set's, plus the set they were trained in: a set that copied them itself passes its own record on)."""
    import shutil

    paths = {}
    (tmp / "experts").mkdir(parents=True, exist_ok=True)
    for name, rel in source["experts"].items():
        listed = source.get("files", {}).get(rel, {}).get("sha256")
        if listed and _sha256(directory / rel) != listed:
            raise ValueError(f"{directory / rel}: sha256 differs from {directory / MANIFEST_NAME}; refusing to copy")
        paths[name] = tmp / "experts" / Path(rel).name
        shutil.copyfile(directory / rel, paths[name])
    scores = {k: dict(source["scores"].get(k, {})) for k in ("experts_held_out_shape_accuracy",
                                                               "experts_held_out_token_accuracy",
                                                               "experts_held_out_word_accuracy",
                                                               "experts_held_out_word_view_accuracy",
                                                               "experts_held_out_keep_cosine")}
    made = dict(source["made"]["experts"])
    made.setdefault("copied_from", {"command": source["made"]["command"], "date": source["made"]["date"],
                                    "machine": source["made"]["machine"]})
    return paths, scores, made


def objectives(e: dict[str, Any]) -> str:
    """The experts' objectives in words, with their weights (the manifest's made.experts)."""
    parts = []
    if e.get("scene_weight", 1.0) > 0:
        parts.append(f"scene-level x {e.get('scene_weight', 1.0):g} (a linear probe on the mean token names, for each "
                     "colour, the shape of that colour in the scene)")
    if e.get("token_weight", 0.0) > 0:
        parts.append(f"per-token x {e['token_weight']:g} (every grid token of the global view and of one sub-image "
                     "view names the colour and shape of the object under it, or background)")
    if e.get("ocr_weight", 0.0) > 0:
        parts.append(f"reading x {e['ocr_weight']:g} (every grid token over the word of a synth-bench OCR page names "
                     "it)")
    return "; ".join(parts)


def copied(e: dict[str, Any]) -> str:
    """The model card's words for experts copied from an earlier set (`--experts-from`), else ''."""
    src = e.get("copied_from")
    if not src:
        return ""
    return (f" These experts were copied from an earlier set (made {src['date']} on {src['machine']} by "
            f"`{src['command']}`).")


def copied_llm(llm: dict[str, Any]) -> str:
    """The model card's words for an LLM made alone and copied in (`--llm-from`), else ''."""
    if not llm.get("copied_from"):
        return ""
    command = (f"sphinx-x pretrain-llm --out DIR --seed {llm['seed']} --steps {llm['steps']} --batch "
               f"{llm['batch_size']} --lr {llm['lr']:g} --arithmetic-share {llm.get('arithmetic_share', 0.0):g} "
               f"--scene-share {llm['scene_share']:g}")
    return f" This LLM was made alone, by `{command}`, and copied in (`--llm-from`)."


def warmup_line(w: dict[str, Any], seed: int) -> str:
    """The model card's words for the LLM's lookup warm-up and the text stage after it."""
    from sphinx_x.train.recipe import RECIPE

    optim, batch = RECIPE["optim"], RECIPE["train"]["global_batch"]
    box, mixed = w.get("box_steps", 0), w.get("box_mix_steps", 0)  # sets made before stop 36 had no box stages
    boxes = (f"; then {box} steps of boxes of a scene's only object, and {mixed} steps of those, boxes of the named "
             f"object among 2-4 and the lookups together (from the model before; without the lone boxes first the "
             f"model draws one wide box for every question: docs/experiments.md, stops 35-36)") if box or mixed else ""
    if w.get("box_mix_kinds"):
        boxes += f" (the mixed stage's kinds in turn: {', '.join(w['box_mix_kinds'])})"
    rounds, rec_steps = w.get("rec_rounds", 0), w.get("rec_steps", 0)  # sets made before stop 38 had no rounds
    if rounds and rec_steps:
        boxes += (f"; then {rounds} round{'s' * (rounds != 1)} of {rec_steps} steps, each from the model before with "
                  f"a fresh schedule and fresh questions, on {', '.join(w['rec_kinds'])} in turn (boxes of the named "
                  f"object more often: docs/experiments.md, stop 38)")
    if w.get("read_steps"):  # sets made before stop 40 had no reading stage
        boxes += (f"; then a reading stage of {w['read_steps']} steps on {', '.join(w['read_kinds'])} in turn (the "
                  f"word on a page beside the boxes, after the rounds: docs/experiments.md, stop 40)")
    share = w.get("text_share", 0.0)  # sets made before stop 37 had no text in the warm-up
    if share:
        boxes += (f"; text dialogues (the corpus's text domain) {100 * share:g}% of every stage's samples, so the LLM "
                  f"keeps its text without text steps after it (docs/experiments.md, stop 37)")
    counts = {k: w["kinds"].count(k) for k in dict.fromkeys(w["kinds"])}  # "shape, shape, color": shape twice
    kinds = " and ".join(k if n == 1 else f"{k} ({n} in {len(w['kinds'])})" for k, n in counts.items())
    text = (f"Then {w['text_steps']} steps of the text pretraining above again (the LLM only). "
            if w["text_steps"] else "No text steps after it. ")
    wall = f"{w['wall_s'] / 60:.1f}" + (f" + {w['text_wall_s'] / 60:.1f}" if w["text_steps"] else "")
    return (f"- LLM lookup warm-up, after the text pretraining (sphinx_x/standins/lookup_warmup.py): a one-stage run "
            f"with nano's recipe ({optim['name']}, lr {optim['lr']:g}, batch {batch}; the loss averaged over "
            f"{WARMUP_LOSS_REDUCTION}s) and the experts above frozen, "
            f"{w['steps']} steps on "
            f"{w['samples']} single questions about scenes of 2-4 objects, {kinds} lookups in turn "
            f"(\"What shape is the red object?\", \"What color is the star?\"), seed {seed}{boxes}. "
            f"Its LLM and its connector (projector and image tags, {CONNECTOR_NAME}) are kept, and the one-stage run "
            f"starts from both. {text}Why: nano's LLM learns one "
            f"lookup in the one-stage mix and then not the other; one that learnt both first keeps them, and keeps "
            f"them on more seeds when its warm-up projector comes with it (docs/experiments.md, stops 31-35). "
            f"Wall time {wall} min.")


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
        *([] if made.get("rebuild_command", made["command"]) == made["command"] else
          ["", f"From nothing (the experts pretrained too): `{made['rebuild_command']}`."]),
        "",
        f"- Date: {made['date']}; machine: {made['machine']}." + (f" Note: {made['note']}" if made.get("note") else ""),
        f"- Experts ({experts}): `sphinx-x pretrain-experts`, {e['steps']} AdamW steps of {e['batch_size']} "
        f"synthetic scenes, lr {e.get('lr', 1e-3):g}, seed {made['seed']}; objectives: {objectives(e)}. "
        f"Wall time {e['wall_s'] / 60:.1f} min." + copied(e),
        *([reading_line(e["reading"])] if e.get("reading") else []),
        f"- LLM (transformers LlamaForCausalLM, {d.num_layers} layers, width {d.hidden_size}, {d.num_heads} heads / "
        f"{d.num_kv_heads} KV heads, MLP {d.intermediate_size}, vocabulary {d.vocab_size}: the shipped nano BPE, "
        f"tied embeddings): `sphinx-x pretrain-llm`, {llm['steps']} AdamW steps of {llm['batch_size']} samples, "
        f"lr {llm['lr']:g} (warm-up {llm['warmup_ratio']:g} then cosine), grad clip {llm['grad_clip']:g}, seed "
        f"{llm['seed']}. Data (sphinx_x/standins/llm_data.py): the synthetic corpus's text-only dialogues in "
        f"nano's `{llm['template']}` template; for {100 * llm.get('arithmetic_share', 0.0):.0f}% of the draws, "
        "arithmetic drills (4-8 synth-bench arithmetic questions in one dialogue); for "
        f"{100 * llm['scene_share']:.0f}% of the draws, slot scenes: objects given as bag-of-words soft tokens "
        "right after BOS (where image tokens go), asked about by content. "
        f"Wall time {llm['wall_s'] / 60:.1f} min." + copied_llm(llm),
        *([warmup_line(llm["lookup_warmup"], made["seed"])] if llm.get("lookup_warmup") else []),
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
    lines += [f"| expert {n} | names the word of a whole synth-bench OCR page (24 words, chance 4%) | {100 * a:.1f}% |"
              for n, a in scores.get("experts_held_out_word_accuracy", {}).items()]
    lines += [f"| expert {n} | names the word from the sub-image view that holds it | {100 * a:.1f}% |"
              for n, a in scores.get("experts_held_out_word_view_accuracy", {}).items()]
    lines += [f"| expert {n} | scene tokens: mean cosine to the trunk before its reading stage | {a:.3f} |"
              for n, a in scores.get("experts_held_out_keep_cosine", {}).items()]
    what = {"text": "answers of the text dialogues (facts, arithmetic, code), greedy exact",
            "arithmetic": "synth-bench-style arithmetic (`What is a + b?`), greedy exact",
            "scene": "slot scenes (`What color is the <shape>?`), greedy exact"}
    lines += [f"| LLM | {what.get(k, k)} | {100 * a:.1f}% |"
              for k, a in scores["llm_held_out_answer_accuracy"].items()]
    lines += [f"| LLM before its lookup warm-up | {what.get(k, k)} | {100 * a:.1f}% |"
              for k, a in scores.get("llm_text_pretraining_answer_accuracy", {}).items()]
    warmed = {"color": "color of the object a question names, among 2-4 objects, greedy exact",
              "shape": "shape of the object a question names, among 2-4 objects, greedy exact",
              "rec": "box of the object a question names, among 2-4 objects, IoU >= 0.5",
              "box": "box of a scene's only object, IoU >= 0.5",
              "ocr": "the word on a synth-bench OCR page, greedy exact"}
    lines += [f"| LLM after its lookup warm-up (with the warm-up's own projector) | {warmed.get(k, k)} | "
              f"{100 * a:.1f}% |" for k, a in scores.get("llm_lookup_warmup_accuracy", {}).items()]
    lines += ["", f"## Files ({total / 2**20:.1f} MiB)", "", "| file | bytes | sha256 |", "|---|---:|---|"]
    lines += [f"| {name} | {f['bytes']} | `{f['sha256'][:16]}…` |" for name, f in manifest["files"].items()]
    return "\n".join(lines) + "\n"
