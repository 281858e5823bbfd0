"""Optional extras (sphinx_x/extras.py, pyproject.toml): a command whose extra is missing names it, the core
dependencies hold none of the optional packages, and every extra the code names exists."""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

import pytest
from _helpers.accessory import tiny_accessory_config

from sphinx_x.cli import main
from sphinx_x.experts import VisionExpert
from sphinx_x.extras import MissingExtraError, require_extra
from sphinx_x.train.logging import RunLogger

ROOT = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def names(requirements: list[str]) -> set[str]:
    return {re.split(r"[<>=!\[ ;]", r, maxsplit=1)[0].lower() for r in requirements}


def test_require_extra_returns_the_module_or_names_the_extra(monkeypatch):
    assert require_extra("serve", "json").dumps([]) == "[]"
    monkeypatch.setitem(sys.modules, "fastapi", None)  # as if not installed
    with pytest.raises(MissingExtraError, match=r"^sphinx-x serve needs the 'fastapi' package, which is not "
                                                r"installed: pip install 'sphinx-x\[serve\]'$"):
        require_extra("serve", "fastapi", "sphinx-x serve")


def test_serve_without_its_extra_exits_naming_it(monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, "uvicorn", None)
    assert main(["serve", "--model", str(tmp_path)]) == 2  # before the model is read
    assert "error: sphinx-x serve needs the 'uvicorn' package" in capsys.readouterr().err


def test_curate_som_without_its_extra_exits_naming_it(monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, "pycocotools", None)
    code = main(["curate", "som", "--annotations", str(tmp_path / "a.json"), "--images", str(tmp_path),
                 "--out", str(tmp_path / "out")])
    assert code == 2
    assert "pip install 'sphinx-x[curate]'" in capsys.readouterr().err


def test_clip_expert_without_open_clip_names_the_clip_extra(monkeypatch):
    clip = next(e for e in tiny_accessory_config("sphinx").vision.experts if e.kind == "clip_vit")
    monkeypatch.setitem(sys.modules, "open_clip", None)
    with pytest.raises(MissingExtraError, match=r"clip_vit vision expert.*'open_clip'.*sphinx-x\[clip\]"):
        VisionExpert(clip, 2)


def test_training_without_tensorboard_warns_and_logs_to_jsonl(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    with pytest.warns(UserWarning, match=r"tensorboard package is not installed.*sphinx-x\[tensorboard\]"):
        logger = RunLogger(tmp_path, total_steps=2, start_step=0, enabled=True, tensorboard=True, progress=False)
    logger.log({"step": 1, "loss": 2.5})
    logger.close()
    assert '"loss": 2.5' in (tmp_path / "metrics.jsonl").read_text()
    assert not (tmp_path / "tensorboard").exists()


def test_core_install_holds_no_optional_package():
    core = names(PROJECT["dependencies"])
    extras = PROJECT["optional-dependencies"]
    for extra, requirements in extras.items():
        if extra != "test":
            assert not core & names(requirements), (extra, core & names(requirements))
    assert {"fastapi", "uvicorn", "gradio", "pymupdf", "pycocotools", "scipy", "tensorboard", "open_clip_torch",
            "torchao", "peft"}.isdisjoint(core)
    # [test] installs every extra but lmms (lmms-eval's own dependencies; its test skips without it)
    assert set(extras) - {"test", "lmms"} <= set(re.search(r"\[(.*)\]", extras["test"][0]).group(1).split(","))


def test_every_extra_the_code_names_exists():
    named = set()
    for path in (ROOT / "sphinx_x").rglob("*.py"):
        if path.name == "extras.py":  # its docstrings name a placeholder
            continue
        named |= set(re.findall(r"require_extra\(\s*\"(\w+)\"", path.read_text()))
        named |= set(re.findall(r"sphinx-x\[(\w+)\]", path.read_text()))
    assert named, "no extra named in the code"
    assert named <= set(PROJECT["optional-dependencies"]), named - set(PROJECT["optional-dependencies"])
