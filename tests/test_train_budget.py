"""`train.max_minutes`: training stops once the wall-clock budget is spent, saves, and its warm-up + cosine
schedule spans the budget (re-planned from the measured step rate). A fake clock makes it exact."""

from __future__ import annotations

import json
import math
import types

import pytest
from _helpers.train import NANO_YAML, fast_overrides, make_corpus

from sphinx_x.config import ConfigError
from sphinx_x.train.config import load_train_config
from sphinx_x.train.schedule import WarmupCosine, warmup_steps


class FakeClock:
    """perf_counter that advances one second per call. The loop reads it once when it starts (t = 0), and
    step k reads it three times: its start, the budget check (t = 3k - 1) and its end."""

    def __init__(self):
        self.now = -1.0

    def perf_counter(self) -> float:
        self.now += 1.0
        return self.now


def test_max_minutes_must_be_positive():
    with pytest.raises(ConfigError, match="train.max_minutes must be > 0"):
        load_train_config(NANO_YAML, ["--train.max_minutes=0"])


@pytest.mark.slow
def test_budget_stops_training_saves_and_the_cosine_spans_it(tmp_path, monkeypatch):
    from sphinx_x.model import SphinxX
    from sphinx_x.train import loop

    mix = make_corpus(tmp_path / "synth", n=24)
    out = tmp_path / "run"
    monkeypatch.setattr(loop, "time", types.SimpleNamespace(perf_counter=FakeClock().perf_counter))
    # 30 s of budget, max_steps 1000: the check of step k sees 3k - 1 s, so step 11 (32 s) is the last.
    cfg = load_train_config(NANO_YAML, fast_overrides(mix, out, **{
        "train.max_steps": 1000, "train.max_minutes": 0.5, "optim.warmup_ratio": 0.2, "output.log_every": 1}))
    final = loop.train(cfg)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(1, 12))
    # After step k the plan is the steps that fit at the rate so far, ceil(k x 30 / (3k - 1)) (at least
    # k + 1), and update k + 1 uses the warm-up + cosine of that plan.
    plans = [max(k + 1, math.ceil(k * 30 / (3 * k - 1))) for k in range(1, 11)]
    expected = [2e-3 * WarmupCosine(1000, warmup_steps(1000, 0.2))(0)]
    expected += [2e-3 * WarmupCosine(t, warmup_steps(t, 0.2))(k) for k, t in enumerate(plans, start=1)]
    assert [r["lr"] for r in records] == pytest.approx(expected)
    assert plans[-3:] == [11, 11, 11] and max(r["lr"] for r in records) == pytest.approx(2e-3)
    assert records[-1]["lr"] < 0.05 * 2e-3  # decayed to ~0 at the end of the budget, not cut off mid-way
    assert sorted(p.name for p in (out / "ckpt").iterdir()) == ["step-000011"]
    assert SphinxX.from_pretrained(final).config.name == "nano"


def test_max_steps_still_caps_a_budgeted_run(tmp_path, monkeypatch):
    from sphinx_x.train import loop

    mix = make_corpus(tmp_path / "synth", n=24)
    out = tmp_path / "run"
    monkeypatch.setattr(loop, "time", types.SimpleNamespace(perf_counter=FakeClock().perf_counter))
    cfg = load_train_config(NANO_YAML, fast_overrides(mix, out, **{
        "train.max_steps": 4, "train.max_minutes": 60, "output.log_every": 1}))
    loop.train(cfg)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3, 4]
