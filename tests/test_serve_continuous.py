"""The continuous-batching engine, driven step by step (no thread, no timing): greedy outputs equal
one-at-a-time generation whatever joins or leaves the batch, and a cancelled request frees its slot."""

import pytest
import torch
from _helpers.infer import noise_image

from sphinx_x.config import SphinxXConfig
from sphinx_x.infer.chat import encode
from sphinx_x.infer.generate import generate_batch
from sphinx_x.infer.options import GenerationConfig
from sphinx_x.model import SphinxX
from sphinx_x.serve.continuous import ContinuousEngine
from sphinx_x.serve.engine import Job, QueueFull
from sphinx_x.tokenizer import load_tokenizer


@pytest.fixture(scope="module")
def model(nano_model_dir):
    return SphinxX.from_pretrained(nano_model_dir)


class Collected:
    """A job's sink: its pieces, its result, its errors (called from the engine, here the test's thread)."""

    def __init__(self):
        self.pieces, self.done, self.errors = [], None, []

    def __call__(self, kind, value):
        if kind == "piece":
            self.pieces.append(value)
        elif kind == "done":
            self.done = value
        else:
            self.errors.append(value)


def job(model, prompt, **gen):
    sink = Collected()
    return Job(encode(model, prompt), GenerationConfig(**gen), sink), sink


def run_until_done(engine, sinks, limit=500):
    for _ in range(limit):
        if all(s.done is not None or s.errors for s in sinks):
            return
        engine.step()
    raise AssertionError("the engine did not finish its jobs")


def single(model, prompt, **gen):
    return generate_batch(model, [encode(model, prompt)], GenerationConfig(**gen))[0]


PROMPTS = [
    ("What is here?", dict(max_new_tokens=9)),
    ({"question": "Describe it.", "images": noise_image(64, 32, 1)}, dict(max_new_tokens=3)),
    ("A much longer question about nothing in particular, asked to vary the prompt length.",
     dict(max_new_tokens=12, min_new_tokens=12, stop_strings=())),
    ({"question": "Two images?", "images": [noise_image(40, 40, 2), noise_image(48, 64, 3)]},
     dict(max_new_tokens=6)),
    ("hi", dict(max_new_tokens=1)),
    ({"question": "Colour?", "images": noise_image(56, 56, 4)}, dict(max_new_tokens=10, repetition_penalty=1.3)),
]


def test_greedy_outputs_equal_single_request_generation_for_mixed_lengths(model):
    engine = ContinuousEngine(model, batch_size=3, max_queue=16)  # 6 requests through 3 slots: rows join and leave
    jobs = [job(model, p, **g) for p, g in PROMPTS]
    for j, _ in jobs:
        engine.submit(j)
    run_until_done(engine, [s for _, s in jobs])
    assert engine.largest_batch == 3 and engine.admitted == len(PROMPTS) and engine.running == 0
    for (prompt, gen), (_, sink) in zip(PROMPTS, jobs):
        expected = single(model, prompt, **gen)
        assert not sink.errors
        assert sink.done.token_ids == expected.token_ids
        assert sink.done.text == expected.text and "".join(sink.pieces) == expected.text
        assert sink.done.finish_reason == expected.finish_reason
        assert sink.done.prompt_tokens == expected.prompt_tokens
    lengths = [len(s.done.token_ids) for _, s in jobs]
    assert lengths[2] == 12 and len(set(lengths)) >= 4, lengths  # mixed lengths: rows left at different steps


def test_a_request_joining_mid_flight_gets_the_same_output(model):
    engine = ContinuousEngine(model, batch_size=4, max_queue=4)
    long_prompt = {"question": "Tell a long story.", "images": noise_image(64, 64, 5)}
    fixed = dict(max_new_tokens=14, min_new_tokens=14, stop_strings=())
    first, first_sink = job(model, long_prompt, **fixed)
    engine.submit(first)
    for _ in range(4):
        engine.step()
    assert len(engine.batch.rows[0].tokens) == 5 and first_sink.done is None  # prefill's token + 4 decode steps
    late, late_sink = job(model, "And a short one?", max_new_tokens=5)
    engine.submit(late)
    engine.step()
    assert engine.running == 2  # joined the running row: one batch, different prompt lengths and positions
    run_until_done(engine, [first_sink, late_sink])
    assert first_sink.done.token_ids == single(model, long_prompt, **fixed).token_ids
    assert late_sink.done.token_ids == single(model, "And a short one?", max_new_tokens=5).token_ids
    assert len(first_sink.done.token_ids) == 14


def test_cancelling_frees_the_slot_for_a_waiting_request(model):
    engine = ContinuousEngine(model, batch_size=1, max_queue=4)
    fixed = dict(max_new_tokens=40, min_new_tokens=40, stop_strings=())
    held, held_sink = job(model, "Keep going.", **fixed)
    waiting, waiting_sink = job(model, {"question": "Next?", "images": noise_image(32, 32, 6)}, max_new_tokens=4)
    engine.submit(held)
    engine.submit(waiting)
    engine.step()
    engine.step()
    assert engine.batch.jobs == [held] and engine.queued == 1  # the only slot is taken
    held.cancelled.set()  # what the web layer does when the client disconnects
    engine.step()
    assert engine.batch.jobs == [waiting] and engine.queued == 0  # the slot went to the waiting request at once
    run_until_done(engine, [waiting_sink])
    assert held_sink.done is None and not held_sink.errors and len(held_sink.pieces) <= 2
    expected = single(model, {"question": "Next?", "images": noise_image(32, 32, 6)}, max_new_tokens=4)
    assert waiting_sink.done.token_ids == expected.token_ids
    assert engine.steps < 40  # the cancelled request's remaining 38 tokens were never decoded


def test_a_cancelled_request_never_takes_a_slot(model):
    engine = ContinuousEngine(model, batch_size=2, max_queue=4)
    gone, gone_sink = job(model, "gone", max_new_tokens=3)
    gone.cancelled.set()
    engine.submit(gone)
    engine.step()
    assert engine.admitted == 0 and engine.running == 0 and gone_sink.done is None


def test_a_full_queue_refuses_and_an_oversized_request_fails_alone(model):
    engine = ContinuousEngine(model, batch_size=2, max_queue=2)
    ok, ok_sink = job(model, "fine", max_new_tokens=3)
    too_long, too_long_sink = job(model, "too long", max_new_tokens=model.llm.config.max_position_embeddings)
    engine.submit(ok)
    engine.submit(too_long)
    with pytest.raises(QueueFull):
        engine.submit(job(model, "third", max_new_tokens=3)[0])
    run_until_done(engine, [ok_sink, too_long_sink])
    assert "exceed the model's context" in str(too_long_sink.errors[0]) and too_long_sink.done is None
    assert ok_sink.done.token_ids == single(model, "fine", max_new_tokens=3).token_ids


def test_stop_fails_the_running_and_the_waiting_requests(model):
    engine = ContinuousEngine(model, batch_size=1, max_queue=2)
    running, running_sink = job(model, "one", max_new_tokens=30, min_new_tokens=30, stop_strings=())
    waiting, waiting_sink = job(model, "two", max_new_tokens=3)
    engine.submit(running)
    engine.submit(waiting)
    engine.step()
    engine.stop()
    assert [str(e) for e in running_sink.errors] == ["server shutting down"]
    assert [str(e) for e in waiting_sink.errors] == ["server shutting down"]
    assert engine.running == 0


def test_a_mixtral_llm_batches_continuously_with_the_same_outputs():
    config = SphinxXConfig.from_name("nano")
    config.llm.arch, config.llm.num_experts = "mixtral", 4
    torch.manual_seed(0)
    moe = SphinxX(config).eval()
    moe.tokenizer = load_tokenizer("nano")
    with torch.no_grad():  # larger weights than init's, so greedy answers vary with the prompt
        for p in moe.llm.parameters():
            if p.dim() >= 2:
                p.normal_(0, 0.08)
    cases = [("hello", 5), ("a longer question about things", 9), ("x", 3), ("what now?", 7)]
    engine = ContinuousEngine(moe, batch_size=2, max_queue=8)
    jobs = [job(moe, prompt, max_new_tokens=n) for prompt, n in cases]
    for j, _ in jobs:
        engine.submit(j)
    run_until_done(engine, [s for _, s in jobs])
    for (prompt, n), (_, sink) in zip(cases, jobs):
        assert sink.done.token_ids == single(moe, prompt, max_new_tokens=n).token_ids
