"""The experts' reading objective: name the word a synth-bench OCR image shows (the stand-in for CLIP's
ability to read text in images, which real ConvNeXt-XXL / DINOv2 features have and the scene objectives of
sphinx_x/train/expert_pretrain.py do not teach: a linear probe on those experts' tokens reads the word at
chance, docs/experiments.md 2026-12-02).

An example is one word of sphinx_x/data/synth/ocr.py's lexicon rendered as synth-bench renders it (`generate_ocr`
with task "ocr": random page size, font, ink, paper and place). Trained on whole pages from the start, a
from-scratch expert did not learn the words in 600 steps (loss flat at ln 24); on crops around the word it did
within 300. So the training view is a crop centred on the word whose half-side grows, over the first
`curriculum_steps` steps, from 0.55x the word's size (the word fills the view) towards the whole page
(log-uniform between the two, the upper end rising with training), and a share of whole pages throughout.
The held-out score is on whole pages, the global view the one-stage model sees.
"""

from __future__ import annotations

import random

import torch
import torch.nn.functional as F
from torch import nn

from sphinx_x.canvas import make_canvas, to_uint8_tensor
from sphinx_x.config import VisionConfig
from sphinx_x.data.synth.ocr import WORDS, generate_ocr

TIGHT = 0.55  # the tightest crop: half-side = 0.55 x the word's longer side
WHOLE_PAGE_SHARE = 0.2  # examples shown as the whole page whatever the curriculum's progress


def word_example(vision: VisionConfig, seed: int, index: int,
                 progress: float | None) -> tuple[dict[str, torch.Tensor], int]:
    """Word image `index` of stream `seed`: each expert's view of it (uint8, 3 x r x r) and the word's index in
    WORDS. `progress` in [0, 1] sets how wide the crops may be (see the module doc); None: the whole page."""
    rng = random.Random(f"sphinx-x-expert-words:{seed}:{index}")
    sample = generate_ocr(rng, task="ocr")
    image = sample.image
    if progress is not None and rng.random() >= WHOLE_PAGE_SHARE:
        x1, y1, x2, y2 = sample.meta["words"][0]["box"]
        size = max(x2 - x1, y2 - y1, 1)
        half = TIGHT * size * (max(image.size) / (TIGHT * size)) ** (rng.random() * min(1.0, max(0.0, progress)))
        cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
        w, h = image.size
        image = image.crop((max(0, int(cx - half)), max(0, int(cy - half)), min(w, int(cx + half)),
                            min(h, int(cy + half))))
    views = {e.name: to_uint8_tensor(make_canvas(image, e.view_size, vision.canvas)) for e in vision.experts}
    return views, WORDS.index(sample.bench["answer"])


def word_batch(vision: VisionConfig, seed: int, start: int, n: int,
               progress: float | None) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Examples start .. start + n - 1 stacked: {expert: (n, 3, r, r) uint8}, (n,) word indices."""
    examples = [word_example(vision, seed, start + i, progress) for i in range(n)]
    views = {name: torch.stack([v[name] for v, _ in examples]) for name in examples[0][0]}
    return views, torch.tensor([y for _, y in examples])


class WordHead(nn.Module):
    """Each grid token -> logits over the OCR lexicon; the page's logits are their maximum over the tokens (the
    word covers a few tokens of a whole page, and the one-stage LLM can attend to those: a mean over all tokens
    stayed at chance on whole pages after the curriculum in our runs, the maximum did not)."""

    def __init__(self, channels: int):
        super().__init__()
        self.linear = nn.Linear(channels, len(WORDS))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.linear(tokens[:, 1:]).amax(dim=1)  # token 0 is the view's summary

    def loss(self, tokens: torch.Tensor, words: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(self(tokens), words)


@torch.no_grad()
def held_out_word_accuracy(vision: VisionConfig, experts: nn.ModuleDict, heads: nn.ModuleDict, seed: int,
                           n: int, device: str) -> dict[str, float]:
    """Per expert, the share of `n` held-out whole pages (their own seed stream) whose word the head names."""
    views, words = word_batch(vision, seed + 7_919, 0, n, None)
    experts.eval()
    acc = {name: float((heads[name](experts[name](views[name].to(device))).argmax(-1).cpu() == words).float().mean())
           for name in experts}
    experts.train()
    return acc
