"""The lean LLM step (sphinx_x/infer/fastpath.py) computes what `SphinxX.forward` computes."""

import pytest
import torch
from _helpers.infer import noise_image

from sphinx_x.canvas import collate_images
from sphinx_x.infer import fastpath
from sphinx_x.infer.chat import encode
from sphinx_x.infer.fastpath import LeanLLM, StaticKV, step_mask
from sphinx_x.model import SphinxX

N = 6


@pytest.fixture(scope="module")
def model(nano_model_dir):
    return SphinxX.from_pretrained(nano_model_dir)


def prompts():
    return [
        "Tell me a story.",
        {"images": noise_image(64, 64, 1), "question": "What is this?"},
        {"images": noise_image(80, 40, 2), "question": "Where is the cat?"},
    ]


def test_nano_llm_takes_the_lean_path(model):
    assert LeanLLM.supports(model.llm)


def test_lean_logits_equal_forward_logits_padded_batch(model):
    """Prefill and two cached steps over a left-padded batch: the same last-position logits as the model's
    forward with the 2-D mask and transformers' own mask building."""
    encoded = [encode(model, p) for p in prompts()[1:]]  # two prompt lengths: row 1 is left padded
    width = max(len(p.input_ids) for p in encoded)
    ids = torch.zeros(2, width, dtype=torch.long)
    mask = torch.zeros(2, width, dtype=torch.long)
    for i, p in enumerate(encoded):
        ids[i, width - len(p.input_ids):] = torch.tensor(p.input_ids)
        mask[i, width - len(p.input_ids):] = 1
    assert (mask == 0).any()
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    images = collate_images([v for p in encoded for v in p.images], model.config.vision)
    lean = LeanLLM(model.llm)
    with torch.inference_mode():
        embeds = model.embed_inputs(ids, images)
        ref = model(ids, attention_mask=mask, position_ids=positions, inputs_embeds=embeds, use_cache=True)
        cache = lean.new_cache(2, width + 2)
        got = lean(embeds, positions, cache, mask.bool())  # packed: row 1 is padded
        torch.testing.assert_close(got[:, -1], ref.logits[:, -1], rtol=1e-5, atol=1e-5)
        ref_cache, pos, full = ref.cache, positions[:, -1:], mask
        for token in (5, 17):
            step = torch.full((2, 1), token)
            pos, full = pos + 1, torch.cat([full, torch.ones(2, 1, dtype=torch.long)], dim=1)
            ref = model(step, attention_mask=full, position_ids=pos, cache=ref_cache, use_cache=True)
            ref_cache = ref.cache
            got = lean(lean.embed(step), pos, cache, full.bool())
            torch.testing.assert_close(got[:, -1], ref.logits[:, -1], rtol=1e-5, atol=1e-5)


def test_generate_same_answers_with_and_without_lean_path(model, monkeypatch):
    lean = model.generate(prompts(), max_new_tokens=N, stop_strings=())
    monkeypatch.setattr(fastpath.LeanLLM, "supports", staticmethod(lambda llm: False))
    plain = model.generate(prompts(), max_new_tokens=N, stop_strings=())
    assert [g.token_ids for g in lean] == [g.token_ids for g in plain]
    assert [g.text for g in lean] == [g.text for g in plain]
    assert len({tuple(g.token_ids) for g in lean}) == 3  # answers depend on the prompt


def test_step_mask_causal_and_padding():
    assert step_mask(None, 4) is None
    keys = torch.tensor([[False, True, True], [True, True, True]])
    one = step_mask(keys, 1)
    assert one.shape == (2, 1, 1, 3) and one[0, 0, 0].tolist() == [False, True, True]
    full = step_mask(keys, 3)
    assert full[1, 0].tolist() == [[True, False, False], [True, True, False], [True, True, True]]
    # row 0's padding query sees only itself (finite softmax); its real queries never see the padding
    assert full[0, 0].tolist() == [[True, False, False], [False, True, False], [False, True, True]]


def test_unsupported_models_keep_their_forward(model):
    class Hooked(torch.nn.Module):
        pass

    assert not LeanLLM.supports(Hooked())
    handle = model.llm.get_decoder().layers[0].mlp.register_forward_hook(lambda m, i, o: None)
    try:
        assert not LeanLLM.supports(model.llm)
    finally:
        handle.remove()
    assert LeanLLM.supports(model.llm)


def test_packed_prefill_equals_unpadded_rows_and_fills_the_cache_left_padded(model):
    """Three rows of three lengths: the packed prefill's logits are each row's own (batch 1, no padding)
    logits, and the cache holds each row's K and V in its last columns, zeros in the padding."""
    lean = LeanLLM(model.llm)
    torch.manual_seed(0)
    lengths, d = [7, 12, 3], model.llm.config.hidden_size
    width = max(lengths)
    embeds = torch.randn(3, width, d)
    keys = torch.zeros(3, width, dtype=torch.bool)
    for i, n in enumerate(lengths):
        keys[i, width - n:] = True
    positions = (keys.long().cumsum(-1) - 1).clamp(min=0)
    with torch.inference_mode():
        packed = StaticKV(4, 3, lean.kv_heads, width + 1, lean.head_dim, torch.float32, torch.device("cpu"))
        got = lean(embeds, positions, packed, keys)
        assert got.shape == (3, 1, model.config.llm.vocab_size) and packed.length == width
        for i, n in enumerate(lengths):
            own = lean.new_cache(1, n)
            ref = lean(embeds[i:i + 1, width - n:], positions[i:i + 1, width - n:], own, None)
            torch.testing.assert_close(got[i], ref[0], rtol=1e-5, atol=1e-5)
            for layer in range(len(packed.keys)):
                torch.testing.assert_close(packed.keys[layer][i, :, width - n:width], own.keys[layer][0],
                                           rtol=1e-5, atol=1e-5)
                assert not packed.values[layer][i, :, :width - n].any()
        # the cached step after the packed prefill: each row's next logits equal its own cached step
        step = torch.full((3, 1), 9)
        grown = torch.cat([keys, torch.ones(3, 1, dtype=torch.bool)], 1)
        nxt = lean(lean.embed(step), positions[:, -1:] + 1, packed, grown)
        for i, n in enumerate(lengths):
            own = lean.new_cache(1, n + 1)
            lean(embeds[i:i + 1, width - n:], positions[i:i + 1, width - n:], own, None)
            ref = lean(lean.embed(step[i:i + 1]), positions[i:i + 1, -1:] + 1, own, None)
            torch.testing.assert_close(nxt[i], ref[0], rtol=1e-5, atol=1e-5)


def test_several_new_positions_after_the_cache_are_causal(model):
    """A prefill split in two calls (no padding) gives the one-call logits: the second call's queries see
    the cached keys and their own past, not their future."""
    lean = LeanLLM(model.llm)
    torch.manual_seed(1)
    embeds = torch.randn(2, 10, model.llm.config.hidden_size)
    positions = torch.arange(10).expand(2, 10)
    with torch.inference_mode():
        whole = lean(embeds, positions, lean.new_cache(2, 10), None)
        split = lean.new_cache(2, 10)
        lean(embeds[:, :6], positions[:, :6], split, None)
        got = lean(embeds[:, 6:], positions[:, 6:], split, None)
        torch.testing.assert_close(got, whole, rtol=1e-5, atol=1e-5)
        with pytest.raises(ValueError, match="cannot take"):
            lean(embeds[:, :1], positions[:, :1], split, None)


def test_rotation_by_roll_equals_transformers_rotary_exactly(model):
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    lean = LeanLLM(model.llm)
    torch.manual_seed(2)
    q, k = torch.randn(2, 4, 5, lean.head_dim), torch.randn(2, 2, 5, lean.head_dim)
    positions = torch.tensor([[0, 1, 2, 3, 4], [7, 8, 9, 10, 11]])
    cos, sin = model.llm.get_decoder().rotary_emb(q, position_ids=positions)
    ref_q, ref_k = apply_rotary_pos_emb(q, k, cos, sin)
    rotary = lean._rotary(q, positions)
    assert torch.equal(lean._rotate(q, *rotary), ref_q) and torch.equal(lean._rotate(k, *rotary), ref_k)


def test_a_non_silu_llama_keeps_its_forward(model, monkeypatch):
    monkeypatch.setattr(model.llm.config, "hidden_act", "gelu")
    assert not LeanLLM.supports(model.llm)


def test_int8_quantized_llm_keeps_its_forward_and_generates(nano_model_dir):
    quantized = SphinxX.from_pretrained(nano_model_dir, quantize="int8")
    assert not LeanLLM.supports(quantized.llm)  # its projections are no longer nn.Linear: F.linear would misread
    (out,) = quantized.generate(["Tell me a story."], max_new_tokens=N, min_new_tokens=N)
    assert out.completion_tokens == N and len(out.token_ids) == N and out.finish_reason == "length"
