"""Add extra sources to a `sphinx-x data synth` corpus for one-change experiments (docs/experiments.md, stop 25).

    python benchmarks/mix_extras.py CORPUS --name NAME --dense N [--phased]   # N scenes of 2-4 objects, 2-4
                                                                            # colour/shape questions each
    python benchmarks/mix_extras.py CORPUS --name NAME --drills N             # N text dialogues of 4-8 arithmetic
                                                                            # questions (synth-bench's form)

writes the rows under CORPUS/train/ (images under CORPUS/images/) and the mix CORPUS/NAME.yaml: the corpus's
train.yaml sources plus the new ones (--phased: the dense scenes in phase 0, the rest in phase 1). Questions
about an object an earlier turn named are left out, as in the corpus's own VQA dialogues.
"""
import argparse
import json
from pathlib import Path

import yaml

from sphinx_x.data.synth.common import Sample, sample_rng
from sphinx_x.data.synth.corpus import conversation_row, drill_sample, encode_png
from sphinx_x.data.synth.scenes import ask_color, ask_shape, distinct_turns, make_scene, render_scene, revealed


def _scene_turns(scene, rng) -> list[tuple[str, str]]:
    """Up to 4 different colour/shape questions about `scene`, none about an object an earlier turn named."""
    turns: list[tuple[str, str]] = []

    def ask(fn):
        named = revealed(scene, turns)
        return fn(scene, rng, [o for o in scene.objects if o not in named])

    askers = [rng.choice([ask_color, ask_shape]) for _ in range(12)]
    return distinct_turns((lambda f=f: ask(f) for f in askers), 4, turns)


def dense_sample(rng) -> Sample:
    """A scene of 2-4 objects with 2-4 colour/shape questions (scenes allowing fewer are drawn again)."""
    while True:
        scene = make_scene(rng, n_objects=rng.choice([2, 3, 4, 4]))
        image = render_scene(scene)
        turns = _scene_turns(scene, rng)
        if len(turns) >= 2:
            return Sample("vqa", turns, image)


def main(argv=None) -> Path:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("corpus", type=Path)
    p.add_argument("--dense", type=int, default=0)
    p.add_argument("--phased", action="store_true")
    p.add_argument("--drills", type=int, default=0)
    p.add_argument("--name", required=True)
    a = p.parse_args(argv)
    meta = yaml.safe_load((a.corpus / "train.yaml").read_text())["META"]
    if a.dense:
        rows = a.corpus / "train" / f"dense{a.dense}.jsonl"
        (a.corpus / "images" / f"dense{a.dense}").mkdir(parents=True, exist_ok=True)
        nturns = 0
        with rows.open("w") as f:
            for i in range(a.dense):
                s = dense_sample(sample_rng(77, "dense", i))
                nturns += len(s.turns)
                img = f"images/dense{a.dense}/{i:06d}.png"
                (a.corpus / img).write_bytes(encode_png(s.image))
                f.write(json.dumps(conversation_row(s, f"dense-{i:06d}", img), sort_keys=True) + "\n")
        print("dense turns", nturns)
        for e in meta:
            e["phase"] = 1 if a.phased else 0
        meta.insert(0, {"path": f"train/dense{a.dense}.jsonl", "type": "image_text", "root": ".", "phase": 0})
    if a.drills:
        rows = a.corpus / "train" / f"drills{a.drills}.jsonl"
        with rows.open("w") as f:
            for i in range(a.drills):
                s = drill_sample(78, i)  # the generator's drills (`sphinx-x data synth --drills`), seed 78
                f.write(json.dumps(conversation_row(s, f"drill-{i:06d}", None), sort_keys=True) + "\n")
        meta.append({"path": f"train/drills{a.drills}.jsonl", "type": "text", "root": "."})
    out = a.corpus / f"{a.name}.yaml"
    out.write_text(yaml.safe_dump({"META": meta}, sort_keys=False))
    print(out)
    return out


if __name__ == "__main__":
    main()
