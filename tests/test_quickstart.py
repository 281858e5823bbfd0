"""`sphinx-x quickstart` end to end with a tiny corpus and budget (seconds), its plan and summary, the blind
baseline, the demo's choice, and its recipe = configs/nano.yaml."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from sphinx_x.cli import main as cli_main
from sphinx_x.commands import quickstart as qs
from sphinx_x.commands.quickstart import RECIPE, train_config
from sphinx_x.data.synth import BENCH_TASKS
from sphinx_x.train.config import load_train_config

REPO = Path(__file__).resolve().parents[1]


def test_recipe_is_configs_nano_yaml(tmp_path):
    """The quickstart trains with exactly the settings of configs/nano.yaml (paths and planned steps aside)."""
    from_yaml = load_train_config(REPO / "configs" / "nano.yaml").to_dict()
    ours = train_config(tmp_path / "out", tmp_path / "mix.yaml", 123, 0, True).to_dict()
    for section in ("model", "optim"):
        assert ours[section] == from_yaml[section], section
    for key in ("max_len", "num_workers", "template", "lenient"):
        assert ours["data"][key] == from_yaml["data"][key], key
    for key in RECIPE["train"]:
        if key != "max_steps":
            assert ours["train"][key] == from_yaml["train"][key], key
    assert RECIPE["train"]["max_steps"] == from_yaml["train"]["max_steps"]
    # fixed steps, no wall-clock cap: a busy machine takes longer instead of training less
    assert ours["train"]["max_steps"] == 123 and ours["train"]["max_minutes"] is None
    assert ours["data"]["mix"] == str(tmp_path / "mix.yaml")


def test_plan_spends_the_budget_at_the_idle_rates():
    plan = qs.plan_run(10, 8000, 260)
    assert plan.total_s == pytest.approx(600, abs=1.0)  # whole steps: under a second lost to rounding
    assert plan.expert_s / (plan.expert_s + plan.train_s) == pytest.approx(qs.EXPERTS_SHARE, abs=0.01)
    assert not plan.starved
    longer = qs.plan_run(20, 8000, 260)
    assert longer.expert_steps > plan.expert_steps and longer.train_steps > 2 * plan.train_steps - 2
    capped = qs.plan_run(10, 8000, 260, expert_cap=3, train_cap=5)
    assert (capped.expert_steps, capped.train_steps) == (3, 5)
    starved = qs.plan_run(0.1, 8000, 260)
    assert starved.starved and (starved.expert_steps, starved.train_steps) == (1, 1)


def _phases(plan, slowdown):
    return [qs.Phase("corpus", "x", plan.corpus_s, plan.corpus_s * slowdown),
            qs.Phase("expert pretraining", "x", plan.expert_s, plan.expert_s * slowdown, plan.expert_steps,
                     plan.expert_steps, qs.EXPERT_STEPS_PER_MIN),
            qs.Phase("one-stage training", "x", plan.train_s, plan.train_s * slowdown, plan.train_steps,
                     plan.train_steps, qs.TRAIN_STEPS_PER_MIN),
            qs.Phase("evaluation", "x", plan.eval_s, plan.eval_s * slowdown)]


def test_summary_warns_only_when_the_machine_overran_the_plan():
    plan = qs.plan_run(10, 8000, 260)
    table, warnings = qs.summary(_phases(plan, 0.9), plan, 10)
    assert warnings == []
    assert "| one-stage training | x |" in table and "| **total** | --minutes 10 | 10.0 min |" in table
    table, warnings = qs.summary(_phases(plan, 2.0), plan, 10)
    [warning] = warnings
    assert "too busy" in warning and "Every planned step ran" in warning
    half = f"one-stage training {qs.TRAIN_STEPS_PER_MIN / 2:.0f} steps/min against {qs.TRAIN_STEPS_PER_MIN:.0f}"
    assert half in warning
    # the early note after expert pretraining: the whole run's time at the measured pace
    assert qs.pace_note(_phases(plan, 0.9)[1], plan, 0.9 * (plan.corpus_s + plan.expert_s)) is None
    note = qs.pace_note(_phases(plan, 2.0)[1], plan, 2.0 * (plan.corpus_s + plan.expert_s))
    assert f"takes about {2 * plan.total_s / 60:.0f} min instead of 10.0" in note
    short = _phases(plan, 1.0)
    short[2].steps = 7
    _, warnings = qs.summary(short, plan, 10)
    assert warnings == [f"warning: one-stage training ran 7 of its {plan.train_steps} planned steps"]


def _record(i, task, prediction, answer, image=True):
    r = {"id": f"t{i}", "task": task, "metric": "exact", "question": "q", "prompt": "q", "prediction": prediction,
         "answer": answer}
    return {**r, "image": f"images/test/{i}.png"} if image else r


def test_demo_picks_a_right_row_of_the_best_task_the_image_made_right():
    records = [_record(0, "color", "red", "blue"), _record(1, "color", "red", "red"),
               _record(2, "color", "blue", "blue"), _record(3, "shape", "star", "star"),
               _record(4, "arithmetic", "4", "4", image=False)]
    blind = [_record(1, "color", "red", "red", image=False), _record(2, "color", "red", "blue", image=False)]
    scores = {"tasks": {"color": {"score": 66.7}, "shape": {"score": 40.0}, "arithmetic": {"score": 100.0}}}
    # color scored best among the tasks with an image; row 2 is right and its blind answer was wrong
    assert qs.pick_demo(records, blind, scores, "top-left")["id"] == "t2"
    # no blind-wrong row: the first right one
    assert qs.pick_demo(records, blind[:1] + [_record(2, "color", "blue", "blue", False)], scores, "top-left"
                        )["id"] == "t1"
    # nothing right with an image: None (the command says so)
    wrong = [_record(0, "color", "red", "blue"), _record(4, "arithmetic", "4", "4", image=False)]
    assert qs.pick_demo(wrong, [], scores, "top-left") is None


@pytest.mark.slow
def test_quickstart_end_to_end(tmp_path, capsys, monkeypatch):
    from time import perf_counter

    # a clock 50x slower than the real one: the run overruns its plan, as on a busy machine
    monkeypatch.setattr(qs, "clock", lambda: 50 * perf_counter())
    out = tmp_path / "qs"
    rc = cli_main(["quickstart", "--out", str(out), "--minutes", "0.5", "--train-samples", "40",
                   "--bench-rows", str(len(BENCH_TASKS)), "--max-steps", "2", "--expert-steps", "3", "--quiet"])
    assert rc == 0
    captured = capsys.readouterr()
    printed, err = captured.out, captured.err

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
    assert steps[-1] == 2

    # the summary states the steps each phase ran, and the (slow-clock) overrun is warned about
    lines = printed.splitlines()
    assert "plan for --minutes 0.5 on 2 idle CPU cores: 3 expert pretraining steps, 2 one-stage steps" in printed
    summary = lines[lines.index("run summary:") + 1:]
    assert "| expert pretraining | 3 of 3 planned steps |" in "\n".join(summary)
    assert "| one-stage training | 2 of 2 planned steps |" in "\n".join(summary)
    assert "warning: this machine was too busy (or slower) for the plan" in err
    assert "note: expert pretraining ran" in err  # the early note, before the one-stage training

    # both evaluations: with images and blind; the blind one sent no image at all
    scores = json.loads((out / "eval" / "scores.json").read_text())["benchmarks"]
    for name in ("synth-bench", "synth-bench-blind"):
        assert scores[name]["n"] == len(BENCH_TASKS) and set(scores[name]["tasks"]) == set(BENCH_TASKS)
    preds = [json.loads(line) for line in (out / "eval" / "synth-bench" / "predictions.jsonl").read_text().splitlines()]
    blind = [json.loads(line)
             for line in (out / "eval" / "synth-bench-blind" / "predictions.jsonl").read_text().splitlines()]
    assert len(preds) == len(blind) == len(BENCH_TASKS)
    assert sum("image" in p for p in preds) >= len(BENCH_TASKS) - 2 and not any("image" in b for b in blind)
    # the blind predictions are the model's answers to the questions alone
    from sphinx_x.eval.harness import generate_answers

    blind_by_id = {b["id"]: b["prediction"] for b in blind}
    with_image = [p for p in preds if "image" in p][:3]
    alone = generate_answers(model.eval(), [{"question": p["prompt"], "images": []} for p in with_image], 64)
    assert [a for a, _ in alone] == [blind_by_id[p["id"]] for p in with_image]

    # the printed per-task table: score with images, blind score, difference, and the overall means
    header = lines.index("| benchmark | task | metric | n | score | blind (question only, no image) | images add |")
    rows = [line.split("|")[1:-1] for line in lines[header + 2 : header + 2 + len(BENCH_TASKS)]]
    assert sorted(r[1].strip() for r in rows) == sorted(BENCH_TASKS)
    for r in rows:
        task = r[1].strip()
        assert r[0].strip() == "synth-bench" and r[3].strip() == "1"
        assert float(r[4]) == pytest.approx(scores["synth-bench"]["tasks"][task]["score"], abs=0.005)
        assert float(r[5]) == pytest.approx(scores["synth-bench-blind"]["tasks"][task]["score"], abs=0.005)
        assert float(r[6]) == pytest.approx(float(r[4]) - float(r[5]), abs=0.011)
    assert "**overall** (mean over tasks)" in lines[header + 2 + len(BENCH_TASKS)]
    assert (out / "eval" / "scores.md").read_text().splitlines()[0] == lines[header]

    # the demo: a right row of the best task when there is one, else a clear message
    from sphinx_x.commands.quickstart import pick_demo

    picked = pick_demo(preds, blind, scores["synth-bench"], "top-left")
    if picked is None:
        assert "no synth-bench question with an image was answered right" in printed
    else:
        assert f"question: {picked['question']}" in printed and "right: synth-bench's answer is" in printed
    demo_image = printed.split("image:    ")[1].splitlines()[0]
    with Image.open(out / "answer.png") as im:
        assert im.size == Image.open(demo_image).size  # drawn on the demo row's image
    assert "answer:" in printed and str(out / "answer.png") in printed and str(final) in printed


def test_quickstart_refuses_a_file_as_output(tmp_path, capsys):
    target = tmp_path / "file"
    target.write_text("x")
    assert cli_main(["quickstart", "--out", str(target), "--quiet"]) == 2
    assert "not a directory" in capsys.readouterr().err
