"""The connector (projector + image tags) saved on its own and loaded through the config's `connector`."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

from sphinx_x.config import SphinxXConfig
from sphinx_x.connector import connector_state, is_connector_key, load_connector, save_connector
from sphinx_x.errors import CheckpointError
from sphinx_x.model import SphinxX

NANO = SphinxXConfig.from_name("nano")


def _model(seed: int, **overrides) -> SphinxX:
    torch.manual_seed(seed)
    return SphinxX(NANO.with_overrides(overrides) if overrides else NANO)


def test_saved_connector_is_exactly_the_projector_and_tags(tmp_path):
    model = _model(0)
    path = save_connector(model, tmp_path / "connector.safetensors")
    saved = load_file(str(path))
    projector = {f"visual.projector.{k}" for k in model.visual.projector.state_dict()}
    assert set(saved) == projector | {"image_start", "image_end", "skip_token"}
    assert all(torch.equal(saved[k], v) for k, v in model.state_dict().items() if k in saved)
    assert not any(k.startswith(("llm.", "visual.experts.")) for k in saved)
    assert set(saved) == set(connector_state(model)) and is_connector_key("skip_token")
    assert not list(tmp_path.glob(".*"))  # written atomically: no temporary file left


def test_a_config_connector_starts_the_model_from_it(tmp_path):
    source = _model(0)
    path = save_connector(source, tmp_path / "connector.safetensors")
    model = _model(1, connector=str(path))
    fresh = _model(1)  # the same seed without it: the LLM is the same, the connector is not
    state, fresh_state, saved = model.state_dict(), fresh.state_dict(), load_file(str(path))
    assert all(torch.equal(state[k], v) for k, v in saved.items())
    assert not torch.equal(fresh_state["skip_token"], saved["skip_token"])
    assert all(torch.equal(v, fresh_state[k]) for k, v in state.items() if not is_connector_key(k))
    # a saved model directory loads on its own: the path is not read again (the file may be gone)
    model.save_pretrained(tmp_path / "model")
    path.unlink()
    again = SphinxX.from_pretrained(tmp_path / "model")
    assert again.config.connector == str(path)
    assert torch.equal(again.skip_token, saved["skip_token"])


def test_bad_connector_files_are_named(tmp_path):
    model = _model(0)
    with pytest.raises(CheckpointError, match="nope.safetensors: no such file"):
        load_connector(model, tmp_path / "nope.safetensors")
    state = connector_state(model)
    extra = tmp_path / "extra.safetensors"
    save_file({**state, "llm.lm_head.weight": torch.zeros(2, 2)}, str(extra))
    with pytest.raises(CheckpointError, match=r"extra.safetensors: keys do not match .*unexpected 1: llm.lm_head"):
        load_connector(model, extra)
    short = tmp_path / "short.safetensors"
    save_file({k: v for k, v in state.items() if k != "skip_token"}, str(short))
    with pytest.raises(CheckpointError, match="missing 1: skip_token"):
        SphinxX(NANO.with_overrides({"connector": str(short)}))
    wide = tmp_path / "wide.safetensors"
    save_file({**state, "skip_token": torch.zeros(7), "image_start": torch.zeros(256)}, str(wide))
    with pytest.raises(CheckpointError, match=r"wide.safetensors: shapes do not match .*skip_token \(7,\) vs \(256,\)"):
        load_connector(model, wide)
    assert torch.equal(model.image_start, state["image_start"])  # a refused file changes nothing
