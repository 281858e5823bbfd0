"""nano's stand-in LLM: the sample stream (text dialogues, arithmetic drills and slot scenes), the slot
embeddings, the loop, the held-out scoring and the model directory that `llm.path` loads."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from sphinx_x.config import SphinxXConfig
from sphinx_x.constants import IGNORE_INDEX, IMAGE_TOKEN_ID
from sphinx_x.data.synth.common import COLORS
from sphinx_x.standins import llm_data
from sphinx_x.standins.llm_data import LlmSample, held_out, sample_stream, scene_samples, text_samples
from sphinx_x.standins.llm_pretrain import (
    LlmPretrainConfig,
    answer_accuracy,
    build_nano_llm,
    collate,
    lm_loss,
    pretrain_llm,
    read_summary,
    slot_embeddings,
    write_llm_dir,
)
from sphinx_x.tokenizer import load_tokenizer


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer("nano")


def _supervised_text(tok, sample: LlmSample) -> str:
    return tok.decode([label for label in sample.labels if label != IGNORE_INDEX])


def test_text_samples_are_the_corpus_dialogues_with_answers_supervised(tok):
    from sphinx_x.data.synth.text import generate_text

    [sample] = text_samples(llm_data.sample_rng(0, "train", 5), tok)
    turns = generate_text(llm_data.sample_rng(0, "train", 5)).turns
    assert sample.kind == "text" and sample.slots == [] and sample.input_ids[0] == tok.bos_token_id
    text = tok.decode(sample.input_ids)
    assert all(f"Human: {q}" in text and f"Assistant: {a}" in text for q, a in turns)
    # exactly the answers (and the template's closing marker after each) carry loss
    assert _supervised_text(tok, sample) == "".join(f" {a}\n###" for _, a in turns)
    assert IMAGE_TOKEN_ID not in sample.input_ids


def test_scene_samples_put_one_slot_per_object_after_bos_and_ask_a_named_shape(tok):
    for i in range(20):
        [s] = scene_samples(llm_data.sample_rng(3, "train", i), tok)
        assert s.kind == "scene" and 2 <= len(s.slots) <= 4
        assert [p for p, _ in s.slots] == list(range(1, 1 + len(s.slots)))  # right after BOS, in order
        assert all(s.labels[p] == IGNORE_INDEX for p, _ in s.slots)
        objects = [tok.decode(ids).split() for _, ids in s.slots]  # [[colour, shape], ...]
        assert len({c for c, _ in objects}) == len({sh for _, sh in objects}) == len(objects)
        shape = tok.decode(s.input_ids).split("What color is the ")[1].split("?")[0]
        answer = _supervised_text(tok, s).removesuffix("\n###").strip()
        assert answer in COLORS and [answer, shape] in objects


def test_stream_is_deterministic_and_mixes_by_the_share(tok):
    first = [(s.input_ids, s.slots) for s in itertools.islice(sample_stream(tok, 1, 0.5), 40)]
    again = [(s.input_ids, s.slots) for s in itertools.islice(sample_stream(tok, 1, 0.5), 40)]
    assert first == again
    kinds = [s.kind for s in itertools.islice(sample_stream(tok, 1, 0.25), 400)]
    assert 0.17 < kinds.count("scene") / len(kinds) < 0.33
    assert {s.kind for s in itertools.islice(sample_stream(tok, 1, 0.0), 30)} == {"text"}
    assert {s.kind for s in itertools.islice(sample_stream(tok, 1, 1.0), 30)} == {"scene"}
    with pytest.raises(ValueError, match="scene_share"):
        next(sample_stream(tok, 1, 1.5))
    # the held-out sets are their own streams, not the training one
    sets = held_out(tok, 1, per_kind=5)
    assert {k: len(v) for k, v in sets.items()} == {"text": 5, "arithmetic": 5, "scene": 5}
    assert not {tuple(s.input_ids) for s in sets["text"]} & {tuple(ids) for ids, _ in first}


def test_arithmetic_drills_hold_several_right_answers_and_take_their_share(tok):
    for i in range(20):
        [s] = llm_data.arithmetic_drill_samples(llm_data.sample_rng(2, "train", i), tok)
        text = tok.decode(s.input_ids)
        questions = text.split("What is ")[1:]
        lo, hi = llm_data.ARITHMETIC_DRILL_TURNS
        assert s.kind == "arithmetic" and lo <= len(questions) <= hi
        answers = _supervised_text(tok, s).split("\n###")
        for q, answer in zip(questions, [a.strip() for a in answers if a.strip()], strict=True):
            a, op, b = q.split("?")[0].split()
            assert int(answer) == (int(a) + int(b) if op == "+" else int(a) - int(b)) >= 0, q
    kinds = [s.kind for s in itertools.islice(sample_stream(tok, 1, 0.25, arithmetic_share=0.5), 400)]
    assert 0.17 < kinds.count("scene") / 400 < 0.33 and 0.42 < kinds.count("arithmetic") / 400 < 0.58
    assert kinds.count("text") > 0
    # arithmetic_share 0 draws exactly the two-kind stream (the packaged LLM before drills was made with it)
    plain = [s.input_ids for s in itertools.islice(sample_stream(tok, 1, 0.25), 30)]
    assert plain == [s.input_ids for s in itertools.islice(sample_stream(tok, 1, 0.25, arithmetic_share=0.0), 30)]
    with pytest.raises(ValueError, match=r"scene_share \+ arithmetic_share must be <= 1"):
        next(sample_stream(tok, 1, 0.6, arithmetic_share=0.5))
    with pytest.raises(ValueError, match="arithmetic_share must be in"):
        LlmPretrainConfig(arithmetic_share=-0.1)


def test_slot_embeddings_overwrite_exactly_the_slot_positions_with_sums():
    embed = torch.nn.Embedding(10, 3)
    ids = torch.tensor([[1, 2, 3, 4], [5, 6, 7, 8]])
    out = slot_embeddings(embed, ids, [(0, 1, [7, 9]), (1, 3, [2]), (1, 0, [4, 4, 5])])
    w = embed.weight.detach()
    expected = w[ids].clone()
    expected[0, 1] = w[7] + w[9]
    expected[1, 3] = w[2]
    expected[1, 0] = 2 * w[4] + w[5]
    assert torch.allclose(out, expected)
    # the gradient reaches the slot members' embeddings (and not the overwritten ids')
    out.sum().backward()
    grad = embed.weight.grad
    assert torch.equal(grad[9], torch.ones(3)) and torch.equal(grad[4], 3 * torch.ones(3))  # 2 in a slot + 1 id
    assert torch.equal(grad[2], torch.ones(3))  # in a slot; its own position (0, 1) was overwritten
    assert torch.equal(grad[7], 2 * torch.ones(3))  # its own position and a slot
    assert torch.equal(grad[8], torch.zeros(3))  # only at (1, 3), which a slot overwrote
    assert torch.equal(slot_embeddings(embed, ids, []), embed(ids))


def test_collate_pads_and_masks_and_the_loss_counts_only_answers():
    a = LlmSample([0, 5, 6], [IGNORE_INDEX, IGNORE_INDEX, 6], [(1, [3, 4])])
    b = LlmSample([0, 7], [IGNORE_INDEX, 7])
    batch = collate([a, b], pad_id=9)
    assert batch["input_ids"].tolist() == [[0, 5, 6], [0, 7, 9]]
    assert batch["labels"].tolist() == [[IGNORE_INDEX, IGNORE_INDEX, 6], [IGNORE_INDEX, 7, IGNORE_INDEX]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]
    assert batch["slots"] == [(0, 1, [3, 4])]
    logits = torch.full((2, 3, 10), -30.0)
    logits[0, 1, 6] = 30.0  # predicts a's answer
    logits[1, 0, 7] = 30.0  # predicts b's answer
    logits[1, 1, 0] = 30.0  # padding: wrong, but unsupervised
    assert float(lm_loss(logits, batch["labels"])) == pytest.approx(0.0, abs=1e-6)
    logits[1, 0, 7] = -30.0  # b's position now uniform over 10 tokens: the mean of 0 and log(10)
    assert float(lm_loss(logits, batch["labels"])) == pytest.approx(math.log(10) / 2, abs=1e-5)
    with pytest.raises(ValueError, match="outside the sequence"):
        LlmSample([0, 1], [IGNORE_INDEX, 1], [(2, [3])])


class _Oracle(torch.nn.Module):
    """An 'LLM' whose argmax at position t is the id at t + 1 of a known sequence (or a wrong token)."""

    def __init__(self, next_ids: torch.Tensor):
        super().__init__()
        self.embed = torch.nn.Embedding(16, 2)
        self.next_ids = next_ids

    def get_input_embeddings(self):
        return self.embed

    def forward(self, inputs_embeds, attention_mask):
        logits = torch.nn.functional.one_hot(self.next_ids[:, : inputs_embeds.shape[1]], 16).float()
        return type("Out", (), {"logits": logits})()


def test_answer_accuracy_scores_whole_answers_under_teacher_forcing():
    # two answers in one sample: [3, 4] at positions 2-3 and [6] at position 5
    s = LlmSample([1, 2, 3, 4, 5, 6], [IGNORE_INDEX, IGNORE_INDEX, 3, 4, IGNORE_INDEX, 6])
    right = torch.tensor([[2, 3, 4, 5, 6, 0]])
    assert answer_accuracy(_Oracle(right), [s], pad_id=0) == 1.0
    one_off = torch.tensor([[2, 3, 9, 5, 6, 0]])  # the first answer's second token wrong
    assert answer_accuracy(_Oracle(one_off), [s], pad_id=0) == 0.5


def test_pretrain_writes_a_directory_that_llm_path_loads(tmp_path, tok):
    nano = SphinxXConfig.from_name("nano")
    tiny = nano.with_overrides({"llm": {"hidden_size": 32, "num_layers": 1, "num_heads": 2, "num_kv_heads": 1,
                                        "intermediate_size": 64}})
    llm = build_nano_llm(tiny, seed=0)
    before = {k: v.clone() for k, v in llm.state_dict().items()}
    cfg = LlmPretrainConfig(steps=3, batch_size=2, eval_per_kind=2, seed=0)
    logged = []
    result = pretrain_llm(llm, tok, cfg, log=lambda step, loss: logged.append(step))
    assert result.steps == 3 and logged == [3] and len(result.losses) == 1
    assert set(result.accuracy) == {"text", "arithmetic", "scene"}
    assert all(0.0 <= a <= 1.0 for a in result.accuracy.values())
    assert any(not torch.equal(before[k], v) for k, v in llm.state_dict().items())  # it trained
    out = write_llm_dir(llm, tok, tmp_path / "llm", cfg, result)
    assert (out / "config.json").is_file() and (out / "model.safetensors").is_file()
    assert read_summary(out)["config"]["steps"] == 3 and read_summary(out)["accuracy"] == result.accuracy

    from sphinx_x.model import SphinxX

    model = SphinxX(tiny.with_overrides({"llm": {"path": str(out)}}))  # the path real pretrained LLMs take
    assert model.config.llm.hidden_size == 32 and model.config.llm.path == str(out)
    loaded = model.llm.state_dict()
    assert all(torch.equal(v, loaded[k]) for k, v in llm.state_dict().items())
