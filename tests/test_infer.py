"""Generation: batched greedy == single greedy, KV cache == recompute, streaming == non-streaming, stops."""

import pytest
import torch
from _helpers.infer import noise_image

from sphinx_x.canvas import collate_images
from sphinx_x.constants import IMAGE_TOKEN_ID
from sphinx_x.image_tokens import visual_token_count
from sphinx_x.infer.chat import encode
from sphinx_x.infer.generate import _Row
from sphinx_x.infer.options import GenerationConfig
from sphinx_x.infer.prompts import PromptEncoder, PromptError, layout_messages, user_turn
from sphinx_x.infer.stopping import stop_rule
from sphinx_x.model import SphinxX
from sphinx_x.tokenizer import text_decoder

N = 8  # new tokens per test: enough to see divergence, small enough for 2 CPU cores


@pytest.fixture(scope="module")
def model(nano_model_dir):
    torch.manual_seed(0)
    return SphinxX.from_pretrained(nano_model_dir)


def mixed_prompts():
    return [
        "Tell me a story.",  # text-only
        {"images": noise_image(64, 64, 1), "question": "What is this?"},  # 1:1, no skipped cell
        {"images": noise_image(80, 40, 2), "question": "Where is the cat?"},  # 2:1, bottom cells skipped
        {"images": [noise_image(48, 48, 3), noise_image(30, 60, 4)], "question": "Compare them."},  # two images
    ]


@pytest.mark.slow
def test_batched_greedy_equals_one_at_a_time(model):
    prompts = mixed_prompts()
    batched = model.generate(prompts, max_new_tokens=N, stop_strings=())
    singles = [model.generate([p], max_new_tokens=N, stop_strings=())[0] for p in prompts]
    assert [b.token_ids for b in batched] == [s.token_ids for s in singles]
    assert [b.text for b in batched] == [s.text for s in singles]
    # The batch really mixes lengths (so left padding is exercised) and the outputs depend on the input.
    assert len({b.prompt_tokens for b in batched}) == 4
    assert len({tuple(b.token_ids) for b in batched}) == 4
    assert all(b.completion_tokens == N and b.finish_reason == "length" for b in batched)
    vision = model.config.vision
    assert visual_token_count(80, 40, vision) < visual_token_count(64, 64, vision)  # skip tokens in play


def reference_greedy(model, prompt, steps):
    """No cache: re-run the whole sequence every step and take the argmax."""
    x = torch.tensor([prompt.input_ids])
    out = []
    with torch.no_grad():
        embeds = model.embed_inputs(x, collate_images(prompt.images, model.config.vision))  # images encoded once
        for _ in range(steps):
            mask = torch.ones(embeds.shape[:2], dtype=torch.long)
            logits = model(x, attention_mask=mask, inputs_embeds=embeds).logits
            tok = int(logits[0, -1].argmax())
            out.append(tok)
            embeds = torch.cat([embeds, model.llm.get_input_embeddings()(torch.tensor([[tok]]))], dim=1)
    return out


@pytest.mark.parametrize("which", [0, 2, 3])
@pytest.mark.slow
def test_kv_cached_generation_equals_cache_free_reference(model, which):
    prompt = mixed_prompts()[which]
    cached = model.generate([prompt], max_new_tokens=6, stop_strings=(), eos_token_id=-1)[0]
    assert cached.token_ids == reference_greedy(model, encode(model, prompt), 6)


@pytest.mark.slow
def test_streaming_text_equals_non_streaming(model):
    image = noise_image(80, 40, 2)
    answer, history = model.chat(image, "Describe it.", max_new_tokens=12, stop_strings=())
    pieces = list(model.stream_chat(image, "Describe it.", max_new_tokens=12, stop_strings=()))
    assert len(pieces) > 1
    assert "".join(pieces) == answer
    assert history[-1] == {"role": "assistant", "content": answer}


@pytest.mark.slow
def test_stop_strings_cut_the_answer_and_stop_generation(model):
    prompt = mixed_prompts()[1]
    full = model.generate([prompt], max_new_tokens=12, stop_strings=())[0]
    text = full.text
    stop = text[len(text) // 2 : len(text) // 2 + 3]  # a string the model really writes, mid-answer
    assert len(stop) == 3 and text.find(stop) > 0
    cut = model.generate([prompt], max_new_tokens=12, stop_strings=(stop,))[0]
    assert cut.text == text[: text.find(stop)]
    assert stop not in cut.text
    assert cut.finish_reason == "stop" and cut.completion_tokens < 12
    assert cut.token_ids == full.token_ids[: cut.completion_tokens]  # same path, stopped early
    streamed = "".join(model.stream_chat(prompt["images"], prompt["question"], max_new_tokens=12, stop_strings=(stop,)))
    assert streamed == cut.text


def test_template_stop_string_is_the_default_and_is_held_back_while_streaming(model):
    tok = model.tokenizer
    assert PromptEncoder.for_model(model).stop_strings == ("\n###",)
    rule = stop_rule(tok, ("\n###",), ("\n###",), tok.eos_token_id)
    row = _Row(text_decoder(tok), 0, GenerationConfig(max_new_tokens=50), rule)
    ids = tok("Hello there\n### Human: more", add_special_tokens=False)["input_ids"]
    shown = []
    for t in ids:
        row.push(t)
        shown.append(row.take_piece())
        if row.finished:
            break
    assert row.finished and row.finish_reason == "stop"
    assert row.answer() == "Hello there" == "".join(shown)
    assert row.result().completion_tokens < len(ids)


def test_eos_stops_and_is_not_in_the_text(model):
    prompt = mixed_prompts()[0]
    full = model.generate([prompt], max_new_tokens=N, stop_strings=(), eos_token_id=-1)[0]
    eos = full.token_ids[3]
    first = full.token_ids.index(eos)
    out = model.generate([prompt], max_new_tokens=N, stop_strings=(), eos_token_id=eos)[0]
    assert out.finish_reason == "stop" and out.completion_tokens == first + 1
    assert out.text == model.tokenizer.decode(full.token_ids[:first], skip_special_tokens=True).lstrip()


@pytest.mark.slow
def test_sampling_is_seeded_per_sample_and_independent_of_the_batch(model):
    prompts = mixed_prompts()
    opts = dict(max_new_tokens=N, temperature=1.0, top_k=50, top_p=0.9, stop_strings=())
    a = model.generate(prompts, seed=7, **opts)
    b = model.generate(prompts[1:2], seed=7, **opts)
    c = model.generate(prompts[1:2], seed=8, **opts)
    assert a[1].token_ids == b[0].token_ids
    assert c[0].token_ids != b[0].token_ids
    greedy = model.generate(prompts[1:2], max_new_tokens=N, stop_strings=())[0]
    assert b[0].token_ids != greedy.token_ids


def test_repetition_penalty_avoids_repeats(model):
    prompt = {"images": noise_image(64, 64, 1), "question": "What is this?"}
    enc = encode(model, prompt)
    out = model.generate([prompt], max_new_tokens=12, stop_strings=(), eos_token_id=-1, repetition_penalty=1e4)[0]
    seen = {t for t in enc.input_ids if t != IMAGE_TOKEN_ID}
    assert len(set(out.token_ids)) == len(out.token_ids)
    assert not seen & set(out.token_ids)


def test_image_layout_in_prompts():
    a, b = noise_image(20, 20, 1), noise_image(30, 20, 2)
    # Images of the first turn only: no placeholder, the encoder puts them after BOS.
    msgs, ims = layout_messages([user_turn("hi", [a])])
    assert msgs[0]["content"] == "hi" and ims == [a]
    # Images in a later turn: every turn's images become leading placeholders.
    turns = [user_turn("one", [a]), {"role": "assistant", "content": "x"}, user_turn("two", [b])]
    msgs, ims = layout_messages(turns)
    assert [m["content"] for m in msgs] == ["<image>\none", "x", "<image>\ntwo"] and ims == [a, b]
    with pytest.raises(PromptError, match="placeholder"):
        layout_messages([user_turn("<image> and <image>", [a])])


@pytest.mark.slow
def test_multi_turn_chat_uses_the_history(model):
    image = noise_image(64, 64, 1)
    first, history = model.chat(image, "What is this?", max_new_tokens=4)
    second, history2 = model.chat(None, "And then?", history, max_new_tokens=4)
    assert len(history2) == 4 and history2[2]["content"] == "And then?"
    direct = model.generate([history + [user_turn("And then?")]], max_new_tokens=4)[0]
    assert direct.text == second
    ids = encode(model, history + [user_turn("And then?")]).input_ids
    text = model.tokenizer.decode([t for t in ids if t != IMAGE_TOKEN_ID])
    assert text.count(" Human:") == 2 and f" Assistant: {first}\n###" in text


def test_too_long_prompts_and_bad_options_are_refused(model):
    with pytest.raises(ValueError, match="context"):
        model.generate(["hi"], max_new_tokens=5000)
    with pytest.raises(ValueError, match="top_p"):
        model.generate(["hi"], top_p=0.0)
    with pytest.raises(TypeError, match="unknown generation option"):
        model.generate(["hi"], max_tokens=3)

