"""One model-directory writer: `save_pretrained`, a training checkpoint and the training run's final model
give byte-identical directories for the same model, tied weights stored once and re-tied on load; a crash
just before a checkpoint is published keeps the previous one."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from sphinx_x.config import SphinxXConfig
from sphinx_x.model import SphinxX
from sphinx_x.model_io import load_weights, write_model_dir
from sphinx_x.tokenizer import load_tokenizer
from sphinx_x.train import checkpoint as ckpt


@pytest.fixture(scope="module")
def model() -> SphinxX:
    torch.manual_seed(0)
    model = SphinxX(SphinxXConfig.from_name("nano")).eval()
    model.tokenizer = load_tokenizer("nano")  # the directories hold the tokenizer files too
    assert model.config.llm.tie_word_embeddings  # what the test is about
    return model


def files(directory) -> dict[str, bytes]:
    return {p.relative_to(directory).as_posix(): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def test_save_pretrained_checkpoint_and_final_model_write_identical_directories(model, tmp_path):
    model.save_pretrained(tmp_path / "pretrained")
    state = model.state_dict()
    checkpoint = ckpt.save_checkpoint(tmp_path / "ckpt", 3, model.config, state, {"step": 3}, model.tokenizer)
    # Under FSDP the gathered full state dict holds separate copies of the tied tensors: still stored once.
    gathered = {k: v.clone() for k, v in state.items()}
    write_model_dir(tmp_path / "final", model.config, gathered, model.tokenizer)

    want = files(tmp_path / "pretrained")
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= set(want)
    got_ckpt = files(checkpoint)
    assert got_ckpt.pop(ckpt.TRAINER_STATE)  # the checkpoint's only extra file
    assert got_ckpt == want
    assert files(tmp_path / "final") == want
    assert "llm.lm_head.weight" not in load_weights(tmp_path / "pretrained")  # tied: stored once

    ids = torch.tensor([[1, 5, 9, 3, 7]])
    reference = model(ids).logits
    for name in ("pretrained", "final", "ckpt/step-000003"):
        loaded = SphinxX.from_pretrained(tmp_path / name)
        assert loaded.llm.lm_head.weight is loaded.llm.get_input_embeddings().weight, name  # re-tied
        assert torch.equal(loaded(ids).logits, reference), name


def test_untied_tensors_sharing_storage_are_stored_as_copies(model, tmp_path):
    config = SphinxXConfig.from_name("nano")
    config.llm = dataclasses.replace(config.llm, tie_word_embeddings=False)
    untied = SphinxX(config).eval()
    untied.load_state_dict(model.state_dict())
    untied.llm.lm_head.weight = untied.llm.get_input_embeddings().weight  # shared storage, not declared tied
    untied.save_pretrained(tmp_path / "untied")
    stored = load_weights(tmp_path / "untied")
    assert torch.equal(stored["llm.lm_head.weight"], stored["llm.model.embed_tokens.weight"])
    loaded = SphinxX.from_pretrained(tmp_path / "untied")  # both stored: nothing missing
    ids = torch.tensor([[2, 4, 6]])
    assert torch.equal(loaded(ids).logits, untied(ids).logits)


def test_a_crash_before_publishing_a_checkpoint_keeps_the_previous_one(model, tmp_path, monkeypatch):
    root = tmp_path / "ckpt"
    state = model.state_dict()
    ckpt.save_checkpoint(root, 2, model.config, state, {"step": 2})
    published: list[str] = []

    def crash(tmp, final):
        published.append(final.name)
        assert (tmp / ckpt.TRAINER_STATE).is_file() and (tmp / "config.json").is_file()  # all written
        raise KeyboardInterrupt  # what a kill at this moment leaves, minus the temporary directory

    monkeypatch.setattr(ckpt, "before_publish", crash)
    with pytest.raises(KeyboardInterrupt):
        ckpt.save_checkpoint(root, 4, model.config, state, {"step": 4})
    assert published == ["step-000004"]
    assert [s for s, _ in ckpt.list_checkpoints(root)] == [2] and sorted(p.name for p in root.iterdir()) == [
        "step-000002"]
    assert ckpt.load_trainer_state(root / "step-000002") == {"step": 2}
