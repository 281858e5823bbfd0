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
