"""The faster decode loop gives the same answers: incremental text == decoding all ids at every step, stop
strings searched on new text == searched on the whole text, logits at the last position == the last
position of all logits, `min_new_tokens`, and the batched streaming API (`stream_generate`)."""

from __future__ import annotations

import random
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from _helpers.infer import noise_image

from sphinx_x.config import SphinxXConfig
from sphinx_x.infer.chat import encode
from sphinx_x.infer.detok import ByteLevelStream, SentencePieceStream, text_stream
from sphinx_x.infer.generate import _Row, generate_batch
from sphinx_x.infer.options import GenerationConfig
from sphinx_x.infer.prompts import EncodedPrompt
from sphinx_x.infer.stopping import stop_rule
from sphinx_x.model import SphinxX
from sphinx_x.tokenizer import load_tokenizer, text_decoder

SPM_MODEL = Path(__file__).parent / "fixtures" / "accessory" / "llama_ens5_light" / "tokenizer.model"


@pytest.fixture(scope="module")
def spm_tok():
    return load_tokenizer(SPM_MODEL)


@pytest.fixture(scope="module")
def nano_tok():
    return load_tokenizer("nano")


@pytest.fixture(scope="module")
def model(nano_model_dir):
    torch.manual_seed(0)
    return SphinxX.from_pretrained(nano_model_dir)


def random_ids(tok, rng: random.Random, n: int) -> list[int]:
    """Ordinary pieces mixed with byte pieces (UTF-8 lead and continuation bytes), specials and text ids."""
    vocab = len(tok)
    byte_ids = [i for i in range(vocab) if tok.convert_ids_to_tokens(i).startswith("<0x")]
    text = tok.encode("caf\u00e9 \u20ac5 \U0001F600 a\nb ### the cat", add_special_tokens=False)
    specials = list(tok.all_special_ids)
    pools = [range(vocab), byte_ids or range(vocab), text, specials]
    return [rng.choice(rng.choice(pools)) for _ in range(n)]


@pytest.mark.parametrize("which", ["spm", "nano"])
def test_incremental_text_equals_decoding_all_ids_at_every_step(which, spm_tok, nano_tok):
    tok = spm_tok if which == "spm" else nano_tok
    dec = text_decoder(tok)
    rng = random.Random(0)
    for _ in range(150):
        ids = random_ids(tok, rng, rng.randint(1, 24))
        stream = text_stream(dec)
        assert isinstance(stream, SentencePieceStream if which == "spm" else ByteLevelStream)
        for k, i in enumerate(ids, 1):
            stream.push(i)
            full = dec.decode(ids[:k])
            assert stream.text == full
            assert full.startswith(stream.text[: stream.stable])
        assert [stream.prefix_text(k) for k in range(len(ids) + 1)] == [dec.decode(ids[:k]) for k in
                                                                       range(len(ids) + 1)]


def whole_text_reference(dec, ids, rule, max_new_tokens):
    """The loop before incremental decoding: decode all ids and search the whole text every step."""
    for k in range(1, len(ids) + 1):
        end = rule.match(ids[:k])
        if end is not None:
            return dec.decode(ids[:end]), "stop", k
        text = dec.decode(ids[:k])
        cut = rule.text_cut(text)
        if cut >= 0:
            return text[:cut], "stop", k
        if k >= max_new_tokens:
            return text, "length", k
    return dec.decode(ids), None, len(ids)


@pytest.mark.parametrize("which", ["spm", "nano"])
def test_rows_stop_as_with_whole_text_search(which, spm_tok, nano_tok):
    tok = spm_tok if which == "spm" else nano_tok
    dec = text_decoder(tok)
    rng = random.Random(1)
    stops = ("\n###", "the cat", "\u20ac5", "b #")
    for _ in range(150):
        ids = random_ids(tok, rng, rng.randint(1, 30))
        rule = stop_rule(tok, stops, ("\n###",), tok.eos_token_id)
        row = _Row(dec, 0, GenerationConfig(max_new_tokens=24), rule)
        pieces = []
        for i in ids:
            row.push(i)
            pieces.append(row.take_piece())
            if row.finished:
                break
        text, reason, used = whole_text_reference(dec, ids, rule, 24)
        assert (row.text, row.finish_reason, len(row.tokens)) == (text, reason, used)
        if row.finished:
            assert "".join(pieces) == row.answer()


@pytest.mark.slow
def test_prefill_logits_at_the_last_position_equal_full_logits(model):
    p = encode(model, {"images": noise_image(80, 40, 2), "question": "Where is the cat?"})
    ids = torch.tensor([p.input_ids])
    from sphinx_x.canvas import collate_images

    with torch.inference_mode():
        embeds = model.embed_inputs(ids, collate_images(p.images, model.config.vision))
        full = model(ids, inputs_embeds=embeds).logits
        last = model(ids, inputs_embeds=embeds, logits_to_keep=1).logits
    assert full.shape[1] == ids.shape[1] and last.shape[1] == 1
    torch.testing.assert_close(last[:, 0], full[:, -1], rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_stream_generate_streams_every_row_and_joins_to_generate(model):
    prompts = ["Tell me a story.", {"images": noise_image(64, 64, 1), "question": "What is this?"},
               {"images": noise_image(80, 40, 2), "question": "Where is the cat?"}]
    gen = dict(max_new_tokens=10, stop_strings=(), eos_token_id=-1)
    expected = model.generate(prompts, **gen)
    pieces, done, order = [""] * 3, [None] * 3, []
    for row, piece, result in model.stream_generate(prompts, **gen):
        assert done[row] is None  # nothing after a row's last item
        pieces[row] += piece
        done[row] = result
        order.append(row)
    assert pieces == [g.text for g in expected]
    assert [(d.text, d.token_ids) for d in done] == [(g.text, g.token_ids) for g in expected]
    assert sorted(set(order[:3])) == [0, 1, 2]  # every row's first token comes in the first step
    # one config per prompt: each row keeps its own budget
    configs = [GenerationConfig(max_new_tokens=n, stop_strings=(), eos_token_id=-1) for n in (2, 5, 3)]
    lengths = {row: res.completion_tokens for row, _, res in model.stream_generate(prompts, configs) if res}
    assert lengths == {0: 2, 1: 5, 2: 3}


def test_stream_resumed_on_another_thread_every_step_gives_the_same_answer(model):
    # Gradio's demo resumes the answer's generator in a worker pool, one step at a time; inference mode is
    # thread-local, so a loop that held it across its yields failed on the next thread ("Inplace update to
    # inference tensor outside InferenceMode") when writing the KV cache
    prompts = [{"images": noise_image(64, 64, 1), "question": "What is this?"}, "Tell me a story."]
    gen = dict(max_new_tokens=6, stop_strings=(), eos_token_id=-1)
    expected = model.generate(prompts, **gen)
    stream = model.stream_generate(prompts, **gen)
    pieces, items = ["", ""], []
    while True:
        with ThreadPoolExecutor(max_workers=1) as fresh_thread:  # a new thread for every resumption
            item = fresh_thread.submit(next, stream, None).result()
        if item is None:
            break
        items.append(item)
        pieces[item[0]] += item[1]
    assert pieces == [g.text for g in expected]
    assert len([i for i in items if i[2] is not None]) == 2


class EosFirstModel(torch.nn.Module):
    """Every step's logits rank EOS first, then `second`: what min_new_tokens must override."""

    def __init__(self, tokenizer, second: int):
        super().__init__()
        self.tokenizer, self.second = tokenizer, second
        self.config = SphinxXConfig.from_name("nano")
        self.llm = SimpleNamespace(config=SimpleNamespace(max_position_embeddings=4096))
        self.anchor = torch.nn.Parameter(torch.zeros(1))

    def embed_inputs(self, ids, images):
        return torch.zeros(*ids.shape, 1)

    def forward(self, ids, attention_mask=None, position_ids=None, inputs_embeds=None, cache=None, use_cache=True):
        logits = torch.zeros(ids.shape[0], ids.shape[1], len(self.tokenizer))
        logits[:, -1, self.tokenizer.eos_token_id] = 2.0
        logits[:, -1, self.second] = 1.0
        return SimpleNamespace(logits=logits, cache=cache)


def test_min_new_tokens_masks_eos_until_reached(nano_tok):
    second = nano_tok.encode(" the", add_special_tokens=False)[0]
    model = EosFirstModel(nano_tok, second)
    prompt = EncodedPrompt([nano_tok.bos_token_id] + nano_tok.encode("Hi", add_special_tokens=False))
    (plain,) = generate_batch(model, [prompt], GenerationConfig(max_new_tokens=10))
    assert plain.token_ids == [nano_tok.eos_token_id] and plain.text == ""
    (held,) = generate_batch(model, [prompt], GenerationConfig(max_new_tokens=10, min_new_tokens=4))
    assert held.token_ids == [second] * 4 + [nano_tok.eos_token_id] and held.finish_reason == "stop"
    assert held.text == nano_tok.decode([second] * 4).lstrip()
    # sampling cannot draw the masked EOS either
    (sampled,) = generate_batch(model, [prompt], GenerationConfig(max_new_tokens=10, min_new_tokens=3,
                                                                  temperature=1.0, seed=0))
    assert nano_tok.eos_token_id not in sampled.token_ids[:3] and len(sampled.token_ids) >= 4
    with pytest.raises(ValueError, match="min_new_tokens"):
        GenerationConfig(min_new_tokens=-1)
