"""Fixtures shared by several test modules. Plain helper code lives in `tests/_helpers/`; a test module
imports from there or asks for a fixture here, never imports another test module.

Run the fast loop with `pytest -m "not slow"`; CI runs everything (`pytest`)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from _helpers.infer import make_model_dir
from _helpers.train import make_corpus
from PIL import Image


@pytest.fixture(scope="session")
def nano_model_dir(tmp_path_factory) -> Path:
    """A nano model directory with re-drawn LLM weights (see `_helpers.infer.make_model_dir`), built once per
    session. Tests read it and must not write into it; a test that changes a model saves its own copy."""
    return make_model_dir(tmp_path_factory.mktemp("nano_model") / "nano")


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> Path:
    """The 48-sample synthetic training mix (seed 0), built once per session; returns its train.yaml."""
    return make_corpus(tmp_path_factory.mktemp("synth"))


@pytest.fixture
def two_block_coco(tmp_path) -> tuple[Path, Path]:
    """A COCO detection file with one 160x120 image holding a red and a blue block: (coco.json, images dir)."""
    images = tmp_path / "images"
    images.mkdir()
    arr = np.full((120, 160, 3), 80, dtype=np.uint8)
    arr[10:50, 10:60] = (220, 40, 40)
    arr[60:110, 90:150] = (40, 40, 220)
    Image.fromarray(arr).save(images / "a.png")
    coco = {"images": [{"id": 7, "file_name": "a.png", "width": 160, "height": 120}],
            "annotations": [{"id": 1, "image_id": 7, "category_id": 1, "bbox": [10, 10, 50, 40]},
                            {"id": 2, "image_id": 7, "category_id": 2, "bbox": [90, 60, 60, 50]}],
            "categories": [{"id": 1, "name": "red block"}, {"id": 2, "name": "blue block"}]}  # fmt: skip
    (tmp_path / "coco.json").write_text(json.dumps(coco))
    return tmp_path / "coco.json", images
