"""Add a curriculum's first phase to a synthetic corpus: `basics` samples plus a mix that trains them first.

    python benchmarks/curriculum_mix.py CORPUS --samples 1200 [--mixed] [--seed 0]

writes CORPUS/train/basics<N>.jsonl (+ images) and CORPUS/basics<N>_phased.yaml (basics in phase 0, the
corpus's train.yaml sources in phase 1) or, with --mixed, CORPUS/basics<N>_mixed.yaml (one phase: the
same samples shuffled in with the rest, the control). Train on it with bench_nano_recipe.py:

    --variant "basics::--data CORPUS/basics1200_phased.yaml"

A basics sample is the simplest question that can only be answered by reading the image: one object on
the canvas asked its colour or its shape, or one word on a page to transcribe (a quarter of them). One
question each: a second would name the object ("What color is the circle?" - "red", then "What shape is
the red object?") and could be answered from the text. docs/experiments.md (2026-11-26, "A fixed step count on
an H100") has the sweep that used it (no gain after the full budget, so the quickstart does not).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

import yaml

from sphinx_x.data.synth.common import Sample, sample_rng
from sphinx_x.data.synth.corpus import conversation_row, encode_png
from sphinx_x.data.synth.ocr import generate_ocr
from sphinx_x.data.synth.scenes import ask_color, ask_shape, make_scene, render_scene

WORD_SHARE = 0.25


def basics_sample(rng: random.Random) -> Sample:
    if rng.random() < WORD_SHARE:
        sample = generate_ocr(rng, "ocr")  # one word, one transcription turn
        sample.domain, sample.bench = "basics", {}
        return sample
    scene = make_scene(rng, n_objects=1)
    image = render_scene(scene)
    return Sample("basics", [rng.choice([ask_color, ask_shape])(scene, rng)], image)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("corpus", type=Path, help="a `sphinx-x data synth` output directory")
    p.add_argument("--samples", type=int, default=1200, help="basics samples (default 1200 = 150 steps of 8)")
    p.add_argument("--mixed", action="store_true", help="one phase (the control) instead of basics first")
    p.add_argument("--seed", type=int, default=99, help="sample seed (default 99, the sweep's)")
    args = p.parse_args()
    mix = args.corpus / "train.yaml"
    if not mix.is_file():
        p.error(f"{mix}: not found; CORPUS must be a `sphinx-x data synth` output directory")
    n = args.samples
    rows = args.corpus / "train" / f"basics{n}.jsonl"
    (args.corpus / "images" / f"basics{n}").mkdir(parents=True, exist_ok=True)
    with rows.open("w", encoding="utf-8") as f:
        for i in range(n):
            sample = basics_sample(sample_rng(args.seed, "basics", i))
            image = f"images/basics{n}/{i:06d}.png"
            (args.corpus / image).write_bytes(encode_png(sample.image))
            f.write(json.dumps(conversation_row(sample, f"basics-{i:06d}", image), sort_keys=True) + "\n")
    meta = yaml.safe_load(mix.read_text())["META"]
    for entry in meta:
        entry["phase"] = 0 if args.mixed else 1
    meta.insert(0, {"path": f"train/basics{n}.jsonl", "type": "image_text", "root": ".", "phase": 0})
    out = args.corpus / f"basics{n}_{'mixed' if args.mixed else 'phased'}.yaml"
    out.write_text(yaml.safe_dump({"META": meta}, sort_keys=False))
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
