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
from sphinx_x.standins import settings as warm  # the packaged set's warm-up, which --from-scratch scales
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


def test_plan_spends_the_budget_at_the_idle_rates(monkeypatch):
    # the packaged stand-ins: all the training time goes to the one-stage run
    plan = qs.plan_run(10, 8000, 520)
    assert plan.total_s == pytest.approx(600, abs=1.0)  # whole steps: under a second lost to rounding
    assert (plan.expert_steps, plan.llm_steps, plan.from_scratch) == (0, 0, False) and not plan.starved
    train_s = 600 - plan.corpus_s - plan.eval_s - plan.reserve_s
    assert plan.train_steps == int(train_s / 60 * qs.TRAIN_STEPS_PER_MIN)
    assert qs.plan_run(20, 8000, 520).train_steps > 2 * plan.train_steps - 2
    assert qs.plan_run(10, 8000, 520, train_cap=5).train_steps == 5
    # --from-scratch: the experts and the LLM get their shares first
    scratch = qs.plan_run(10, 8000, 520, from_scratch=True)
    assert scratch.total_s == pytest.approx(600, abs=3.0) and scratch.from_scratch and not scratch.starved  # rounding
    spent = scratch.expert_s + scratch.read_s + scratch.llm_s + scratch.warmup_s + scratch.train_s
    # the experts' share holds their reading stage (none while the packaged set has none)
    assert (scratch.expert_s + scratch.read_s) / spent == pytest.approx(qs.SCRATCH_EXPERTS_SHARE, abs=0.01)
    assert scratch.read_steps == int(scratch.expert_steps * qs.SCRATCH_READ_RATIO)
    assert (scratch.read_steps > 0) == (qs.EXPERT_READ_STEPS > 0)
    assert scratch.llm_s / spent == pytest.approx(qs.SCRATCH_LLM_SHARE, abs=0.01)
    assert scratch.warmup_s / spent == pytest.approx(qs.SCRATCH_WARMUP_SHARE, abs=0.01)
    assert scratch.warmup_steps > 0  # its text steps in the packaged set's ratio
    assert scratch.warmup_text_steps == scratch.warmup_steps * warm.WARMUP_TEXT_STEPS // warm.WARMUP_STEPS
    assert scratch.warmup_box_steps == (scratch.warmup_steps * warm.WARMUP_BOX_STEPS // warm.WARMUP_STEPS,
                                        scratch.warmup_steps * warm.WARMUP_BOX_MIX_STEPS // warm.WARMUP_STEPS)
    assert scratch.warmup_rec_steps == scratch.warmup_steps * warm.WARMUP_REC_STEPS // warm.WARMUP_STEPS
    # the warm-up's reading stage in the packaged set's ratio too (none while it has none), inside the warm-up's share
    assert scratch.warmup_read_steps == scratch.warmup_steps * warm.WARMUP_READ_STEPS // warm.WARMUP_STEPS
    monkeypatch.setattr(qs, "WARMUP_READ_STEPS", 2000)
    reading = qs.plan_run(10, 8000, 520, from_scratch=True)
    assert reading.warmup_read_steps == reading.warmup_steps // 2 > 0
    assert reading.warmup_box_text.endswith(f" + {qs.WARMUP_REC_ROUNDS} x {reading.warmup_rec_steps}")
    spent = reading.expert_s + reading.read_s + reading.llm_s + reading.warmup_s + reading.train_s
    assert reading.warmup_s / spent == pytest.approx(qs.SCRATCH_WARMUP_SHARE, abs=0.01)
    monkeypatch.undo()
    capped = qs.plan_run(10, 8000, 520, expert_cap=3, train_cap=5, from_scratch=True, llm_cap=4, warmup_cap=6)
    assert (capped.expert_steps, capped.llm_steps, capped.train_steps, capped.warmup_steps) == (3, 4, 5, 6)
    assert qs.plan_run(10, 8000, 520, from_scratch=True, warmup_cap=0).warmup_steps == 0
    starved = qs.plan_run(0.1, 8000, 520, from_scratch=True)
    assert starved.starved and (starved.expert_steps, starved.llm_steps, starved.train_steps) == (1, 1, 1)


def test_nano_yaml_by_hand_commands_match_the_quickstart_defaults():
    """configs/nano.yaml's by-hand commands reproduce the quickstart: its planned steps and its drills."""
    text = (REPO / "configs" / "nano.yaml").read_text()
    planned = qs.plan_run(10, qs.TRAIN_SAMPLES, qs.BENCH_ROWS).train_steps
    assert f"--train.max_steps={planned}\n" in text and f"# ({planned}: the quickstart's plan" in text
    assert f"--drills {qs.ARITHMETIC_DRILLS}\n" in text


def _phases(plan, slowdown):
    return [qs.Phase("corpus", "x", plan.corpus_s, plan.corpus_s * slowdown),
            qs.Phase("expert pretraining", "x", plan.expert_s, plan.expert_s * slowdown, plan.expert_steps,
                     plan.expert_steps, qs.EXPERT_STEPS_PER_MIN),
            qs.Phase("LLM pretraining", "x", plan.llm_s, plan.llm_s * slowdown, plan.llm_steps,
                     plan.llm_steps, qs.LLM_STEPS_PER_MIN),
            qs.Phase("one-stage training", "x", plan.train_s, plan.train_s * slowdown, plan.train_steps,
                     plan.train_steps, qs.TRAIN_STEPS_PER_MIN),
            qs.Phase("evaluation", "x", plan.eval_s, plan.eval_s * slowdown)]


def test_summary_warns_only_when_the_machine_overran_the_plan():
    plan = qs.plan_run(10, 8000, 520, from_scratch=True)
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
    short[3].steps = 7
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


def _rec(i, prediction):
    return {"id": f"r{i}", "task": "rec", "metric": "rec", "question": "q", "prompt": "q", "prediction": prediction,
            "gt_box": [0, 0, 50, 50], "width": 100, "height": 100, "image": f"images/test/{i}.png"}


def test_demo_prefers_the_tightest_right_box_over_a_better_scored_task():
    records = [_record(1, "color", "red", "red"), _rec(2, "[0.00, 0.00, 0.60, 0.60]"),  # IoU 0.69: right
               _rec(3, "[0.00, 0.00, 0.52, 0.50]"),  # IoU 0.96: right, tightest
               _rec(4, "[0.50, 0.50, 1.00, 1.00]"), _rec(5, "no box")]  # wrong
    scores = {"tasks": {"color": {"score": 100.0}, "rec": {"score": 50.0}}}
    assert qs.box_fit(records[2], "top-left") == pytest.approx(0.96, abs=0.01)
    assert qs.box_fit(records[4], "top-left") == 0.0
    assert qs.pick_demo(records, [], scores, "top-left")["id"] == "r3"
    # no box right: the best-scored task's right row, as before
    assert qs.pick_demo([records[0], records[3]], [], scores, "top-left")["id"] == "t1"


def _assert_started_from(model, experts: dict, llm_dir, steps: int, connector=None) -> None:
    """`model` trained `steps` steps from these experts (kept frozen, so equal), this LLM and this connector
    (projector and image tags; each AdamW step moves a weight by about the learning rate at most, far less
    than a random init differs)."""
    import torch
    from safetensors.torch import load_file

    for name, expert in model.visual.experts.items():
        assert expert.cfg.frozen
        pretrained = load_file(str(experts[name]))
        assert all(torch.equal(pretrained[k], v) for k, v in expert.trunk.state_dict().items()), name
    start = load_file(str(llm_dir / "model.safetensors"))
    state = model.llm.state_dict()
    moved = max(float((state[k] - v).abs().max()) for k, v in start.items())
    assert 0 < moved <= 3 * steps * RECIPE["optim"]["lr"]
    start, state = load_file(str(connector)), model.state_dict()
    assert {"skip_token", "visual.projector.0.weight"} <= set(start)
    moved = max(float((state[k] - v).abs().max()) for k, v in start.items())
    assert moved <= 3 * steps * RECIPE["optim"]["lr"]  # 0 when its steps drew only text batches


def _run_summary(lines: list[str]) -> str:
    start = next(i for i, line in enumerate(lines) if line.startswith("run summary (stand-in experts and LLM: "))
    return "\n".join(lines[start:])


@pytest.mark.slow
def test_quickstart_end_to_end(tmp_path, capsys, monkeypatch):
    from time import perf_counter

    from sphinx_x.standins import read_manifest, standins_dir

    # a clock 50x slower than the real one: the run overruns its plan, as on a busy machine
    monkeypatch.setattr(qs, "clock", lambda: 50 * perf_counter())
    out = tmp_path / "qs"
    rc = cli_main(["quickstart", "--out", str(out), "--minutes", "0.5", "--train-samples", "40",
                   "--bench-rows", str(len(BENCH_TASKS)), "--max-steps", "2", "--quiet"])
    assert rc == 0
    captured = capsys.readouterr()
    printed, err = captured.out, captured.err

    # the corpus, the model, the evaluation files and the demo drawing
    sizes = json.loads((out / "data" / "synth.json").read_text())["sizes"]
    assert sizes["train"] == 40 and sizes["drills"] == qs.ARITHMETIC_DRILLS  # the arithmetic drills by default
    assert "train/drills.jsonl" in (out / "data" / "train.yaml").read_text()
    assert f"40 training samples + {qs.ARITHMETIC_DRILLS} arithmetic drills" in printed
    final = out / "train" / "final"
    assert (final / "config.json").is_file()
    # the model started from the packaged stand-ins: their experts kept frozen, their LLM as initialisation
    from sphinx_x.model import SphinxX

    model = SphinxX.from_pretrained(final)
    packaged = standins_dir("nano").resolve()
    manifest = read_manifest(packaged)
    _assert_started_from(model, {n: packaged / rel for n, rel in manifest["experts"].items()}, packaged / "llm", 2,
                         packaged / manifest["connector"])
    assert "[2/5] starting from the packaged pretrained stand-ins" in printed and "pretraining nano's" not in printed
    assert "[3/5] training nano (experts frozen, LLM and projector from the stand-ins) on CPU" in printed
    assert not (out / "experts").exists() and not (out / "llm").exists()
    steps = [json.loads(line)["step"] for line in (out / "train" / "metrics.jsonl").read_text().splitlines()]
    assert steps[-1] == 2

    # the summary states the steps each phase ran and what the stand-ins were, and the overrun is warned about
    lines = printed.splitlines()
    assert "plan for --minutes 0.5 on 2 idle CPU cores: the packaged pretrained stand-ins, 2 one-stage steps" in printed
    summary = _run_summary(lines)
    assert f"stand-in experts and LLM: packaged ({standins_dir()})" in summary
    assert "| stand-ins | packaged (nano: experts + LLM + projector, no pretraining) |" in summary
    assert "| one-stage training | 2 of 2 planned steps |" in summary
    assert f"| corpus | 40 samples + {qs.ARITHMETIC_DRILLS} drills + {len(BENCH_TASKS)} bench rows |" in summary
    assert "warning: this machine was too busy (or slower) for the plan" in err
    assert (out / "summary.md").read_text().startswith(f"stand-in experts and LLM: packaged ({standins_dir()})")

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


def test_quickstart_standins_option_uses_the_given_set_and_refuses_a_bad_one(tmp_path, capsys):
    import shutil

    from sphinx_x.config import SphinxXConfig
    from sphinx_x.standins import read_manifest, standins_dir

    # a set elsewhere (a copy of the packaged one): the model config points at its files, not the package's
    given = tmp_path / "mine"
    shutil.copytree(standins_dir("nano"), given)
    out = tmp_path / "qs"
    out.mkdir()
    phases: list = []
    model_yaml = qs.use_packaged(out, phases, given)
    config = SphinxXConfig.load(model_yaml)
    manifest = read_manifest(given)
    assert [Path(e.checkpoint) for e in config.vision.experts] == [
        given.resolve() / manifest["experts"][e.name] for e in config.vision.experts]
    assert Path(config.llm.path) == given.resolve() / "llm"
    assert Path(config.connector) == given.resolve() / manifest["connector"]
    assert "[2/5] starting from the given (--standins) pretrained stand-ins in " + str(given.resolve()) in (
        capsys.readouterr().out)
    assert phases[0].work == "given (mine: experts + LLM + projector, no pretraining)"

    # an incomplete set: a clear error naming the missing file, nothing trained
    (given / "llm" / "config.json").unlink()
    assert cli_main(["quickstart", "--out", str(tmp_path / "q2"), "--standins", str(given), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "--standins" in err and str(given / "llm" / "config.json") in err and "missing" in err
    assert not (tmp_path / "q2").exists()
    # and it cannot be combined with --from-scratch
    assert cli_main(["quickstart", "--out", str(tmp_path / "q3"), "--standins", str(given), "--from-scratch"]) == 2
    assert "exclude each other" in capsys.readouterr().err


@pytest.mark.slow
def test_quickstart_from_scratch_pretrains_the_standins_itself(tmp_path, capsys, monkeypatch):
    from time import perf_counter

    from sphinx_x.model import SphinxX
    from sphinx_x.standins.llm_pretrain import read_summary

    monkeypatch.setattr(qs, "clock", lambda: 50 * perf_counter())
    monkeypatch.setattr(qs, "LLM_EVAL_PER_KIND", 2)
    monkeypatch.setattr(qs, "SCRATCH_READ_RATIO", 0.25)  # with the experts' reading stage, whatever the defaults
    out = tmp_path / "qs"
    # 0.7 minutes: the warm-up's share buys its 2 capped steps and so a box stage and the named-box rounds
    rc = cli_main(["quickstart", "--out", str(out), "--minutes", "0.7", "--train-samples", "30",
                   "--bench-rows", str(len(BENCH_TASKS)), "--max-steps", "2", "--expert-steps", "4",
                   "--llm-steps", "2", "--warmup-steps", "2", "--from-scratch", "--quiet"])
    assert rc == 0
    captured = capsys.readouterr()
    printed, err = captured.out, captured.err
    # the box stages and the named-box rounds, all in the set's ratios to its lookup steps
    boxes = (2 * warm.WARMUP_BOX_STEPS // warm.WARMUP_STEPS, 2 * warm.WARMUP_BOX_MIX_STEPS // warm.WARMUP_STEPS)
    rounds = f" + {warm.WARMUP_REC_ROUNDS} x {2 * warm.WARMUP_REC_STEPS // warm.WARMUP_STEPS}"
    reading = 2 * warm.WARMUP_READ_STEPS // warm.WARMUP_STEPS  # the warm-up's reading stage
    box_plan = f"{boxes[0]} + {boxes[1]}{rounds} box, " + (f"{reading} reading, " if reading else "")
    assert "plan for --minutes 0.7 on 2 idle CPU cores: 4 expert, 1 reading and 2 LLM pretraining steps, 2 lookup " \
        "warm-up, " \
        f"{box_plan}{2 * warm.WARMUP_TEXT_STEPS // warm.WARMUP_STEPS} text steps, 2 one-stage" in printed
    assert "[2/5] pretraining nano's vision experts" in printed and "[2/5] pretraining nano's LLM" in printed
    assert "[2/5] the experts' reading stage (clip_convnext): 1 steps of 64 scenes and 32 OCR pages" in printed
    assert "held-out: clip_convnext reads the word of " in printed and "from the sub-image view holding it" in printed
    assert "[2/5] nano's LLM: lookup warm-up on single colour / shape questions, 2 one-stage steps" in printed
    assert "held-out lookups right: shape " in printed
    llm_summary = read_summary(out / "llm")  # text pretraining, then the warm-up, then 1 text step
    assert llm_summary["text_pretraining"]["steps"] == 2 and llm_summary["lookup_warmup"]["steps"] == 2
    assert llm_summary["steps"] == 2 * warm.WARMUP_TEXT_STEPS // warm.WARMUP_STEPS
    model = SphinxX.from_pretrained(out / "train" / "final")
    _assert_started_from(model, {n: out / "experts" / f"{n}.safetensors" for n in model.visual.experts},
                         out / "llm", 2, out / "connector.safetensors")
    summary = _run_summary(printed.splitlines())
    assert "stand-in experts and LLM: pretrained in this run (--from-scratch)" in summary
    assert "| expert pretraining | 4 of 4 planned steps |" in summary
    assert "| LLM pretraining | 2 of 2 planned steps |" in summary and "| expert reading stage | 1 steps |" in summary
    text_steps = 2 * warm.WARMUP_TEXT_STEPS // warm.WARMUP_STEPS
    box_work = f"{boxes[0]} + {boxes[1]}{rounds} box steps + " + (f"{reading} reading steps + " if reading else "")
    assert f"| LLM lookup warm-up | 2 of 2 planned steps + {box_work}{text_steps} text steps |" in summary
    assert "note: expert pretraining ran" in err  # the early note, before the LLM and one-stage training
