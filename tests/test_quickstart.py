"""`sphinx-x quickstart` end to end with a tiny corpus and budget (seconds), and its recipe = configs/nano.yaml."""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image

from sphinx_x.cli import main as cli_main
from sphinx_x.commands.quickstart import RECIPE, train_config
from sphinx_x.data.synth import BENCH_TASKS
from sphinx_x.train.config import load_train_config

REPO = Path(__file__).resolve().parents[1]


def test_recipe_is_configs_nano_yaml(tmp_path):
    """The quickstart trains with exactly the settings of configs/nano.yaml (paths and budget aside)."""
    from_yaml = load_train_config(REPO / "configs" / "nano.yaml").to_dict()
    ours = train_config(tmp_path / "out", tmp_path / "mix.yaml", 5.0, 0, None, True).to_dict()
    for section in ("model", "optim"):
        assert ours[section] == from_yaml[section], section
    for key in ("max_len", "num_workers", "template", "lenient"):
        assert ours["data"][key] == from_yaml["data"][key], key
    for key in RECIPE["train"]:
        assert ours["train"][key] == from_yaml["train"][key], key
    assert ours["train"]["max_minutes"] == 5.0 and ours["data"]["mix"] == str(tmp_path / "mix.yaml")


def test_quickstart_end_to_end(tmp_path, capsys):
    out = tmp_path / "qs"
    rc = cli_main(["quickstart", "--out", str(out), "--minutes", "0.5", "--train-samples", "40",
                   "--bench-rows", str(len(BENCH_TASKS)), "--max-steps", "2", "--expert-steps", "2", "--quiet"])
    assert rc == 0
    printed = capsys.readouterr().out

    # the corpus, the model, the evaluation files and the demo drawing
    assert json.loads((out / "data" / "synth.json").read_text())["sizes"]["train"] == 40
    final = out / "train" / "final"
    assert (final / "config.json").is_file()
    # the model was trained on the pretrained experts, which it kept frozen
    import torch
    from safetensors.torch import load_file

    from sphinx_x.model import SphinxX

    model = SphinxX.from_pretrained(final)
    for name, expert in model.visual.experts.items():
        assert expert.cfg.frozen
        pretrained = load_file(str(out / "experts" / f"{name}.safetensors"))
        assert all(torch.equal(pretrained[k], v) for k, v in expert.trunk.state_dict().items()), name
    assert "[2/5] pretraining nano's vision experts" in printed
    steps = [json.loads(line)["step"] for line in (out / "train" / "metrics.jsonl").read_text().splitlines()]
    assert steps[-1] <= 2
    scores = json.loads((out / "eval" / "scores.json").read_text())["benchmarks"]["synth-bench"]
    assert scores["n"] == len(BENCH_TASKS) and set(scores["tasks"]) == set(BENCH_TASKS)
    preds = (out / "eval" / "synth-bench" / "predictions.jsonl").read_text().splitlines()
    assert len(preds) == len(BENCH_TASKS)
    with Image.open(out / "answer.png") as im:
        rec = next(json.loads(line) for line in (out / "data" / "bench.jsonl").read_text().splitlines()
                   if json.loads(line)["task"] == "rec")
        assert im.size == Image.open(out / "data" / rec["image"]).size  # drawn on the REC row's image

    # the printed per-task table: header, one row per task with its metric, and the overall mean
    lines = printed.splitlines()
    header = lines.index("| benchmark | task | metric | n | score |")
    rows = [line.split("|")[1:-1] for line in lines[header + 2 : header + 2 + len(BENCH_TASKS)]]
    assert sorted(r[1].strip() for r in rows) == sorted(BENCH_TASKS)
    for r in rows:
        assert r[0].strip() == "synth-bench" and r[3].strip() == "1" and 0 <= float(r[4]) <= 100
        assert r[2].strip() == scores["tasks"][r[1].strip()]["metric"]
    assert "**overall** (mean over tasks)" in lines[header + 2 + len(BENCH_TASKS)]
    assert "answer:" in printed and str(out / "answer.png") in printed and str(final) in printed


def test_quickstart_refuses_a_file_as_output(tmp_path, capsys):
    target = tmp_path / "file"
    target.write_text("x")
    assert cli_main(["quickstart", "--out", str(target), "--quiet"]) == 2
    assert "not a directory" in capsys.readouterr().err
