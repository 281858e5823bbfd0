import json

import pytest

from sphinx_x.config import PRESETS, ConfigError, SphinxXConfig


@pytest.mark.parametrize("name", list(PRESETS))
def test_presets_round_trip_yaml_and_json(name, tmp_path):
    config = SphinxXConfig.from_name(name)
    for suffix in (".yaml", ".json"):
        path = tmp_path / f"c{suffix}"
        config.save(path)
        assert SphinxXConfig.load(path) == config


def test_registry_has_the_family():
    assert set(PRESETS) == {"nano", "tiny", "intern2", "plus", "plus-2k", "moe", "sphinx", "sphinx-1k", "sphinx-v2-1k",
                            "sphinx-tiny", "sphinx-tiny-1k", "sphinx-moe", "sphinx-moe-1k"}
    assert SphinxXConfig.from_name("plus-2k").vision.canvas.grid == 3
    assert SphinxXConfig.from_name("moe").llm.num_experts == 8
    assert SphinxXConfig.from_name("tiny").vision.tokens_per_view == 257
    assert SphinxXConfig.from_name("tiny").vision.channels == 3072 + 1536


def test_unknown_key_is_named(tmp_path):
    data = SphinxXConfig.from_name("nano").to_dict()
    data["vision"]["canvas"]["gird"] = 3
    with pytest.raises(ConfigError, match=r"vision\.canvas\.gird.*valid keys: grid"):
        SphinxXConfig.from_dict(data)
    path = tmp_path / "bad.yaml"
    path.write_text("name: x\nvision: {experts: []}\nllm: {}\nbogus: 1\n")
    with pytest.raises(ConfigError, match=rf"{path}.*unknown key bogus"):
        SphinxXConfig.load(path)


def test_bad_values_are_named():
    with pytest.raises(ConfigError, match="pad_anchor"):
        SphinxXConfig.from_name("nano", vision={"experts": [], "canvas": {"pad_anchor": "middle"}})
    with pytest.raises(ConfigError, match="unknown preset 'huge'"):
        SphinxXConfig.from_name("huge")
    data = SphinxXConfig.from_name("nano").to_dict()
    data["llm"]["num_layers"] = "four"
    with pytest.raises(ConfigError, match=r"llm\.num_layers: expected int"):
        SphinxXConfig.from_dict(data)


def test_resolve_reads_a_preset_a_model_directory_or_a_config_file(tmp_path, monkeypatch):
    nano = SphinxXConfig.from_name("nano")
    assert SphinxXConfig.resolve("nano") == nano
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text(json.dumps(dict(nano.to_dict(), name="from-dir", format_version=1)))
    assert SphinxXConfig.resolve(tmp_path / "m") == SphinxXConfig.from_dict(dict(nano.to_dict(), name="from-dir"))
    SphinxXConfig.from_name("tiny").save(tmp_path / "t.yaml")
    assert SphinxXConfig.resolve(str(tmp_path / "t.yaml")) == SphinxXConfig.from_name("tiny")
    # a preset name wins over a directory of that name; `./nano` names the directory
    monkeypatch.chdir(tmp_path)
    (tmp_path / "nano").mkdir()
    assert SphinxXConfig.resolve("nano") == nano
    with pytest.raises(FileNotFoundError, match="not a SPHINX-X model directory"):
        SphinxXConfig.resolve("./nano")
    with pytest.raises(ConfigError, match="unknown preset 'huge' and no model directory or config file of that "
                                          "name; valid presets: nano, tiny"):
        SphinxXConfig.resolve("huge")


def test_resolve_merges_overrides_as_strictly_as_a_file():
    nano = SphinxXConfig.from_name("nano")
    cfg = SphinxXConfig.resolve("nano", {"vision": {"canvas": {"grid": 3}}, "llm": {"num_layers": 2}})
    assert (cfg.vision.canvas.grid, cfg.llm.num_layers, cfg.llm.hidden_size) == (3, 2, nano.llm.hidden_size)
    frozen = SphinxXConfig.resolve("nano", {"vision": {"experts": [{"frozen": True}, {"frozen": True}]}})
    assert [(e.name, e.frozen) for e in frozen.vision.experts] == [("clip_convnext", True), ("dinov2", True)]
    assert SphinxXConfig.resolve("nano", {}) == nano == nano.with_overrides({})
    with pytest.raises(ConfigError, match=r"unknown key llm\.layers"):
        SphinxXConfig.resolve("nano", {"llm": {"layers": 2}})


def test_old_config_files_with_the_projector_key_still_load(tmp_path):
    """`projector: {kind: linear_ln}` was written into every config.json but never read; it is accepted with a
    DeprecationWarning and dropped; any other value is refused instead of silently ignored."""
    nano = SphinxXConfig.from_name("nano")
    assert "projector" not in nano.to_dict()
    data = dict(nano.to_dict(), projector={"kind": "linear_ln"})
    path = tmp_path / "old.json"
    path.write_text(json.dumps(data))
    with pytest.warns(DeprecationWarning, match="config key 'projector' is deprecated and ignored"):
        assert SphinxXConfig.load(path) == nano
    data["projector"] = {"kind": "mlp2x_gelu"}
    with pytest.raises(ConfigError, match=r"projector: \{'kind': 'mlp2x_gelu'\} is not supported"):
        SphinxXConfig.from_dict(data)
