"""nano's pretrained stand-ins: vision experts (for the paper's CLIP / DINOv2) and an LLM (for its pretrained
LLM), how they are made (`sphinx-x pretrain-experts`, `sphinx-x pretrain-llm`, `sphinx-x build-standins`) and
the set shipped in the package under sphinx_x/assets/standins/nano/ (docs/standins.md):

    manifest.json                 what the set holds, how it was made and what it scored (build.py writes it)
    MODEL_CARD.md                 the same for people
    experts/<expert>.safetensors  each expert's trunk (timm state dict), as `sphinx-x pretrain-experts` writes it
    llm/                          a transformers LlamaForCausalLM directory, as `sphinx-x pretrain-llm` writes it
    connector.safetensors         the projector and image tags of the LLM's lookup warm-up (sets made with one)

A model config uses them through the paths real weights take: `vision.experts[i].checkpoint` (frozen) and
`llm.path`, and the connector through `connector` (sphinx_x/connector.py). `nano_model_config()` builds that
config with absolute paths into wherever the package is installed; `nano_model_yaml(path)` writes it for
`model.preset` / `--model.preset=`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sphinx_x.config import SphinxXConfig

STANDINS_ROOT = Path(__file__).resolve().parent.parent / "assets" / "standins"
MANIFEST_NAME = "manifest.json"
CARD_NAME = "MODEL_CARD.md"
CONNECTOR_NAME = "connector.safetensors"


class StandinsError(FileNotFoundError):
    """A stand-ins directory is missing or incomplete; the message names the file."""


def standins_dir(preset: str = "nano") -> Path:
    """The package's stand-ins folder for `preset` (it may not exist: see `has_standins`)."""
    return STANDINS_ROOT / preset


def read_manifest(directory: str | Path | None = None) -> dict[str, Any]:
    """The manifest of a stand-ins directory (default: the packaged nano set), its files checked present."""
    directory = Path(directory) if directory is not None else standins_dir()
    path = directory / MANIFEST_NAME
    if not path.is_file():
        raise StandinsError(f"{path}: missing; build the stand-ins with `sphinx-x build-standins --out {directory}`")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
        files = [*manifest["experts"].values(), manifest["llm"] + "/config.json",
                 *([manifest["connector"]] if manifest.get("connector") else [])]
    except (json.JSONDecodeError, KeyError, AttributeError, TypeError) as e:
        raise StandinsError(f"{path}: not a stand-ins manifest ({e})") from e
    for rel in files:
        if not (directory / rel).is_file():
            raise StandinsError(f"{directory / rel}: missing (listed in {path})")
    return manifest


def has_standins(directory: str | Path | None = None) -> bool:
    """Whether a complete stand-ins set is there (default: the packaged nano set)."""
    try:
        read_manifest(directory)
    except StandinsError:
        return False
    return True


def model_config(directory: str | Path | None = None) -> SphinxXConfig:
    """The stand-ins' preset with its experts loaded frozen from `experts/`, its LLM from `llm/` and, where the set
    has one, its connector (absolute paths), default: the packaged nano set."""
    directory = (Path(directory) if directory is not None else standins_dir()).resolve()
    manifest = read_manifest(directory)
    config = SphinxXConfig.from_name(manifest["preset"])
    missing = [e.name for e in config.vision.experts if e.name not in manifest["experts"]]
    if missing:
        raise StandinsError(f"{directory / MANIFEST_NAME}: no weights for the {manifest['preset']} expert(s) {missing}")
    experts = [{"checkpoint": str(directory / manifest["experts"][e.name]), "frozen": True}
               for e in config.vision.experts]
    connector = {"connector": str(directory / manifest["connector"])} if manifest.get("connector") else {}
    return config.with_overrides({"vision": {"experts": experts}, "llm": {"path": str(directory / manifest["llm"])},
                                  **connector})


def nano_model_config() -> SphinxXConfig:
    """nano with the packaged stand-in experts (frozen) and its LLM initialised from the packaged stand-in LLM."""
    return model_config(standins_dir("nano"))


def nano_model_yaml(path: str | Path, directory: str | Path | None = None) -> Path:
    """Write `model_config(directory)` (default: the packaged nano set) to `path` (.yaml) and return it:
    a file for `model.preset`, e.g. `sphinx-x train configs/nano.yaml --model.preset=PATH`."""
    path = Path(path)
    model_config(directory if directory is not None else standins_dir("nano")).save(path)
    return path
