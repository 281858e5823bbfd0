"""benchmarks/mix_extras.py: the extra sources it writes and the mix that uses them."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))


def test_dense_phase_and_drills(tmp_path):
    from mix_extras import main

    from sphinx_x.data.synth import generate_corpus

    generate_corpus(tmp_path, 8, 0, 0, seed=0, progress=False)
    mix = main([str(tmp_path), "--name", "dense", "--dense", "6", "--phased"])
    meta = yaml.safe_load(mix.read_text())["META"]
    assert meta[0] == {"path": "train/dense6.jsonl", "type": "image_text", "root": ".", "phase": 0}
    assert all(m["phase"] == 1 for m in meta[1:]) and len(meta) > 1
    for line in (tmp_path / "train" / "dense6.jsonl").read_text().splitlines():
        row = json.loads(line)
        questions = [t["value"] for t in row["conversations"][::2]]
        assert 2 <= len(questions) <= 4 and len(set(questions)) == len(questions)
        assert all(q.startswith(("What color is the ", "What shape is the ")) for q in questions)
        assert (tmp_path / row["image"]).is_file()
    mix = main([str(tmp_path), "--name", "drills", "--drills", "3"])
    assert yaml.safe_load(mix.read_text())["META"][-1] == {"path": "train/drills3.jsonl", "type": "text", "root": "."}
    rows = [json.loads(line) for line in (tmp_path / "train" / "drills3.jsonl").read_text().splitlines()]
    for row in rows:
        turns = row["conversations"]
        assert 8 <= len(turns) <= 16 and "image" not in row
        for q, a in zip(turns[::2], turns[1::2]):
            x, op, y = q["value"].removeprefix("What is ").removesuffix("?").split()
            assert int(a["value"]) == (int(x) + int(y) if op == "+" else int(x) - int(y))
