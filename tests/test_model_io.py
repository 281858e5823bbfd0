"""Model directories load tensor by tensor onto a meta-built model: values, dtypes, ties and buffers."""

from __future__ import annotations

import json

import pytest
import torch

from sphinx_x.config import SphinxXConfig
from sphinx_x.model import SphinxX
from sphinx_x.model_io import load_weights


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    torch.manual_seed(0)
    model = SphinxX(SphinxXConfig.from_name("nano")).eval()
    directory = tmp_path_factory.mktemp("io") / "nano"
    model.save_pretrained(directory, max_shard_bytes=2**20)  # several shards + an index
    return model, directory


def _all_tensors(model):
    named = dict(model.named_parameters())
    named.update(model.named_buffers())  # includes the non-persistent rotary frequencies
    return named


def test_loaded_model_equals_the_eager_one_bit_for_bit(saved):
    model, directory = saved
    assert (directory / "model.safetensors.index.json").is_file()
    loaded = SphinxX.from_pretrained(directory)
    want, got = _all_tensors(model), _all_tensors(loaded)
    assert sorted(want) == sorted(got)
    for name, t in want.items():
        assert got[name].dtype == t.dtype and torch.equal(got[name], t), name
    assert loaded.llm.lm_head.weight is loaded.llm.get_input_embeddings().weight  # tie restored
    assert not any(t.is_meta for t in got.values())
    ids = torch.tensor([[1, 5, 9, 3]])
    assert torch.equal(model(ids).logits, loaded(ids).logits)


def test_dtype_casts_or_keeps_the_stored_dtype(saved, tmp_path):
    model, directory = saved
    bf16 = SphinxX.from_pretrained(directory, dtype=torch.bfloat16)
    assert {p.dtype for p in bf16.parameters()} == {torch.bfloat16}
    assert torch.equal(bf16.image_start, model.image_start.to(torch.bfloat16))
    # A bf16 directory: None upcasts to fp32 (training), "auto" keeps bf16 without an fp32 copy.
    bf16.save_pretrained(tmp_path / "bf16")
    assert {p.dtype for p in SphinxX.from_pretrained(tmp_path / "bf16").parameters()} == {torch.float32}
    auto = SphinxX.from_pretrained(tmp_path / "bf16", dtype="auto")
    assert {p.dtype for p in auto.parameters()} == {torch.bfloat16}
    assert torch.equal(auto.llm.get_input_embeddings().weight, bf16.llm.get_input_embeddings().weight)
    with pytest.raises(ValueError, match="dtype must be"):
        SphinxX.from_pretrained(directory, dtype="float16")


def test_trainable_flags_survive_and_training_does_not_touch_the_files(saved, tmp_path):
    model, directory = saved
    model.save_pretrained(tmp_path / "m")
    before = load_weights(tmp_path / "m")
    loaded = SphinxX.from_pretrained(tmp_path / "m", dtype="auto")
    assert all(p.requires_grad for p in loaded.llm.parameters())
    with torch.no_grad():
        for p in loaded.parameters():
            p.add_(1.0)  # in place, as an optimizer step would
    after = load_weights(tmp_path / "m")
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_a_mismatched_directory_names_the_tensor(saved, tmp_path):
    model, _ = saved
    model.save_pretrained(tmp_path / "m")
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    cfg["llm"]["intermediate_size"] += 8
    (tmp_path / "m" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=r"mlp\.\w+_proj\.weight is stored with shape"):
        SphinxX.from_pretrained(tmp_path / "m")
