"""The stand-in experts' reading stage: after their scene pretraining, the experts that can read (the ConvNeXt, the
stand-in for CLIP) are fine-tuned with the reading objective (sphinx_x/train/expert_words.py) beside the scene
objectives they were trained with, so that their tokens name the word on a page as well as the objects of a scene.
Why a stage of its own: trained from scratch beside the scene objectives, reading reached 16% of whole pages and cost
the ConvNeXt its shapes (docs/experiments.md, stops 22-23); fine-tuned after them it reads and keeps them (stop 39).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from sphinx_x.standins.settings import (
    EXPERT_READ_EXPERTS,
    EXPERT_READ_KEEP_WEIGHT,
    EXPERT_READ_LR,
    EXPERT_READ_STEPS,
)

READ_WEIGHT = 1.0  # the reading objective's weight beside the scene objectives (their own weights)


@dataclass
class ReadingSettings:
    steps: int = EXPERT_READ_STEPS  # 0: no reading stage
    lr: float = EXPERT_READ_LR
    experts: tuple[str, ...] = EXPERT_READ_EXPERTS
    batch_size: int = 64  # scenes a step; half as many pages, each seen as a global, a sub-image and a zoomed view
    keep_weight: float = EXPERT_READ_KEEP_WEIGHT  # holds the scenes' tokens near the starting trunk's (`keep_loss`)


def read_stage(vision: Any, expert_paths: dict[str, Path], out: Path, settings: ReadingSettings, seed: int,
               scene_weight: float, token_weight: float, progress: bool = False) -> tuple[dict[str, Path], dict, dict]:
    """Fine-tune the experts `settings.experts` of `vision` from `expert_paths` into `out` (the others are left as
    they are); returns every expert's path, the held-out scores of the tuned ones (`pretrain_experts`' names) and the
    record of the stage for the manifest. Scenes and pages come from stream `seed` + 1, not the scene
    pretraining's."""
    from sphinx_x.train.expert_pretrain import pretrain_experts

    unknown = sorted(set(settings.experts) - set(expert_paths))
    if unknown:
        raise ValueError(f"reading stage: no such experts {unknown}; the set has {sorted(expert_paths)}")
    tuned = replace(vision, experts=[e for e in vision.experts if e.name in settings.experts])
    result = pretrain_experts(tuned, out, steps=settings.steps, batch_size=settings.batch_size, lr=settings.lr,
                              seed=seed + 1, scene_weight=scene_weight, token_weight=token_weight,
                              ocr_weight=READ_WEIGHT, init_from={n: expert_paths[n] for n in settings.experts},
                              keep_weight=settings.keep_weight, progress=progress)
    scores = {"experts_held_out_shape_accuracy": result.accuracy,
              "experts_held_out_token_accuracy": result.token_accuracy,
              "experts_held_out_word_accuracy": result.word_accuracy,
              "experts_held_out_word_view_accuracy": result.word_view_accuracy,
              "experts_held_out_keep_cosine": result.keep_cosine}
    record = {"steps": result.steps, "batch_size": settings.batch_size, "lr": settings.lr,
              "experts": list(settings.experts), "seed": seed + 1, "ocr_weight": READ_WEIGHT,
              "scene_weight": scene_weight, "token_weight": token_weight, "wall_s": round(result.seconds, 1),
              "keep_weight": settings.keep_weight}
    return {**expert_paths, **result.paths}, scores, record


def reading_line(r: dict[str, Any]) -> str:
    """The model card's words for the reading stage (the manifest's made.experts.reading)."""
    return (f"- Experts' reading stage ({', '.join(r['experts'])}; sphinx_x/standins/expert_reading.py): fine-tuned "
            f"from the experts above, {r['steps']} AdamW steps of {r['batch_size']} scenes and {r['batch_size'] // 2} "
            f"synth-bench OCR pages, lr {r['lr']:g}, seed {r['seed']}; objectives: the experts' own above and reading "
            f"x {r['ocr_weight']:g} (every grid token over the word names it, on the page's global "
            f"view, the sub-image view holding the word and a zoomed view)"
            + (f"; the scenes' tokens held near the starting trunk's x {r['keep_weight']:g}" if r.get("keep_weight")
               else "")  # sets made before stop 40 had no keep weight
            + f". Wall time {r['wall_s'] / 60:.1f} min.")
