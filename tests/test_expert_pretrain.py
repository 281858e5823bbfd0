"""Pretraining nano's experts on synthetic scenes: labels, learning, and loading the result as frozen experts."""

from __future__ import annotations

import random

import pytest
import torch
from safetensors.torch import load_file

from sphinx_x.canvas import CanvasGeometry, prepare_image
from sphinx_x.cli import main as cli_main
from sphinx_x.config import SphinxXConfig
from sphinx_x.data.synth.common import COLORS
from sphinx_x.data.synth.scenes import SHAPES, make_scene
from sphinx_x.model import SphinxX
from sphinx_x.train.expert_pretrain import (
    NUM_CLASSES,
    SceneStream,
    object_class,
    scene_example,
    scene_labels,
)

VISION = SphinxXConfig.from_name("nano").vision
G = VISION.feature_grid


def _scene(seed, index):
    from sphinx_x.data.synth.scenes import render_scene

    scene = make_scene(random.Random(seed * 1_000_003 + index))  # the same draw as scene_example's
    return scene, render_scene(scene)


def test_global_view_targets_put_each_object_at_the_token_of_its_centre():
    for index in range(20):
        views, classes, boxes = scene_example(VISION, seed=3, index=index)
        scene, image = _scene(3, index)
        prepared = prepare_image(image, VISION)
        for e in VISION.experts:  # exactly the model's own global view
            assert torch.equal(views[e.name], prepared.views[e.name][0])
        geometry = CanvasGeometry(*image.size, VISION.canvas.pad_anchor)
        expected = {}
        for o in scene.objects:
            x1, y1, x2, y2 = geometry.to_canvas(o.box)
            token = int((y1 + y2) / 2 * G) * G + int((x1 + x2) / 2 * G)
            expected[token] = (object_class(o.color, o.shape), [x1, y1, x2, y2])
        assert {t for t in range(G * G) if classes[t]} == set(expected)
        for token, (cls, box) in expected.items():
            assert int(classes[token]) == cls and 0 < cls < NUM_CLASSES
            assert torch.allclose(boxes[token], torch.tensor(box), atol=1e-6)
        assert not boxes[classes == 0].any()
    again_views, again, _ = scene_example(VISION, seed=3, index=19)
    assert torch.equal(again, classes) and torch.equal(again_views["dinov2"], views["dinov2"])


def test_cell_view_targets_are_in_the_cells_coordinates():
    g = VISION.canvas.grid
    seen = 0
    for index in range(30):
        views, classes, boxes = scene_example(VISION, seed=5, index=index, cell_share=1.0)
        scene, image = _scene(5, index)
        prepared = prepare_image(image, VISION)
        kept = [c for c, skip in enumerate(prepared.skipped.tolist()) if not skip]
        convnext = prepared.views["clip_convnext"]
        tile = next(k for k in range(len(kept)) if torch.equal(views["clip_convnext"], convnext[1 + k]))
        assert torch.equal(views["dinov2"], prepared.views["dinov2"][1 + tile])  # the same cell for every expert
        row, col = divmod(kept[tile], g)
        geometry = CanvasGeometry(*image.size, VISION.canvas.pad_anchor)
        inside = []
        for o in scene.objects:
            x1, y1, x2, y2 = geometry.to_canvas(o.box)
            cx, cy = (x1 + x2) / 2 * g - col, (y1 + y2) / 2 * g - row
            if 0 <= cx < 1 and 0 <= cy < 1:  # centred in this cell: labelled at 2x scale
                inside.append(o)
                token = int(cy * G) * G + int(cx * G)
                assert int(classes[token]) == object_class(o.color, o.shape)
                assert torch.allclose(boxes[token], torch.tensor(
                    [x1 * g - col, y1 * g - row, x2 * g - col, y2 * g - row]).clamp(0, 1), atol=1e-6)
        assert int((classes > 0).sum()) == len(inside)
        seen += len(inside)
    assert seen > 0


def test_scene_labels_name_the_shape_of_every_colour_in_view():
    for index in range(10):
        _, classes, _ = scene_example(VISION, seed=3, index=index)
        scene, _ = _scene(3, index)
        labels = scene_labels(classes[None])[0]
        got = {(list(COLORS)[c], SHAPES[k - 1]) for c, k in enumerate(labels.tolist()) if k}
        assert got == {(o.color, o.shape) for o in scene.objects}


def test_stream_workers_draw_consecutive_disjoint_batches():
    """Two DataLoader workers take turns; together they yield scenes 0, 1, 2, ... in order."""
    from torch.utils.data import DataLoader

    loader = DataLoader(SceneStream(VISION, batch_size=2, seed=0), batch_size=None, num_workers=2)
    it = iter(loader)
    for b in range(4):
        _, classes, boxes = next(it)
        for i in range(2):
            _, want_classes, want_boxes = scene_example(VISION, 0, 2 * b + i)
            assert torch.equal(classes[i], want_classes) and torch.equal(boxes[i], want_boxes), (b, i)


def test_pretrained_experts_learn_and_load_frozen(tmp_path):
    from sphinx_x.commands.pretrain_experts import write_pretrained

    torch.set_num_threads(2)
    config = SphinxXConfig.from_name("nano")
    result, model_yaml = write_pretrained(config, tmp_path / "experts", steps=40, batch_size=16, lr=2e-3,
                                          num_workers=0)
    assert result.steps == 40 and len(result.losses) == 40
    assert sum(result.losses[-5:]) / 5 < 0.8 * result.losses[0]  # it learns (first the "none" majority)
    assert set(result.accuracy) == {"clip_convnext", "dinov2"} and all(0 <= a <= 1 for a in result.accuracy.values())

    loaded = SphinxXConfig.load(model_yaml)
    assert all(e.frozen and e.checkpoint for e in loaded.vision.experts)
    model = SphinxX(loaded)  # the real-weights path: VisionExpert reads each checkpoint
    for name, expert in model.visual.experts.items():
        saved = load_file(str(result.paths[name]))
        assert saved.keys() == expert.trunk.state_dict().keys()
        assert all(torch.equal(saved[k], v) for k, v in expert.trunk.state_dict().items())
        assert not any(p.requires_grad for p in expert.trunk.parameters())


def test_cli_writes_weights_and_refuses_bad_arguments(tmp_path, capsys):
    out = tmp_path / "e"
    assert cli_main(["pretrain-experts", "--out", str(out), "--steps", "2", "--batch-size", "2", "--quiet"]) == 0
    assert {p.name for p in out.iterdir()} == {"clip_convnext.safetensors", "dinov2.safetensors", "model.yaml"}
    assert "model.preset=" in capsys.readouterr().out
    assert cli_main(["pretrain-experts", "--out", str(tmp_path / "x"), "--preset", "nope"]) == 2
    assert "unknown preset 'nope'" in capsys.readouterr().err
    assert cli_main(["pretrain-experts", "--out", str(tmp_path / "x"), "--cell-share", "1.5"]) == 2
    assert "--cell-share must be in [0, 1]" in capsys.readouterr().err
    (tmp_path / "file").write_text("")
    assert cli_main(["pretrain-experts", "--out", str(tmp_path / "file")]) == 2
    with pytest.raises(SystemExit):
        cli_main(["pretrain-experts", "--out", str(out), "--steps", "0"])
