"""Pretraining nano's experts on synthetic scenes: labels, learning, and loading the result as frozen experts."""

from __future__ import annotations

import random

import pytest
import torch
from safetensors.torch import load_file

from sphinx_x.cli import main as cli_main
from sphinx_x.config import SphinxXConfig
from sphinx_x.data.synth.common import COLORS
from sphinx_x.data.synth.scenes import SHAPES, make_scene
from sphinx_x.model import SphinxX
from sphinx_x.train.expert_pretrain import NUM_CLASSES, SceneStream, scene_example

VISION = SphinxXConfig.from_name("nano").vision


def test_scene_labels_name_every_drawn_object_by_colour():
    for index in range(20):
        views, labels = scene_example(VISION, seed=3, index=index)
        scene = make_scene(random.Random(3 * 1_000_003 + index))  # the same draw
        expected = {(o.color, o.shape) for o in scene.objects}
        got = {(list(COLORS)[c], SHAPES[k - 1]) for c, k in enumerate(labels.tolist()) if k}
        assert got == expected
        assert labels.max() < NUM_CLASSES
        for e in VISION.experts:
            assert views[e.name].dtype == torch.uint8 and views[e.name].shape == (3, e.view_size, e.view_size)
    again_views, again = scene_example(VISION, seed=3, index=19)
    assert torch.equal(again, labels) and torch.equal(again_views["dinov2"], views["dinov2"])


def test_stream_workers_draw_consecutive_disjoint_batches():
    """Two DataLoader workers take turns; together they yield scenes 0, 1, 2, ... in order."""
    from torch.utils.data import DataLoader

    loader = DataLoader(SceneStream(VISION, batch_size=2, seed=0), batch_size=None, num_workers=2)
    it = iter(loader)
    for b in range(4):
        _, labels = next(it)
        for i in range(2):
            assert torch.equal(labels[i], scene_example(VISION, 0, 2 * b + i)[1]), (b, i)


@pytest.mark.slow
def test_pretrained_experts_learn_and_load_frozen(tmp_path):
    from sphinx_x.train.expert_pretrain import write_pretrained

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


@pytest.mark.slow
def test_cli_writes_weights_and_refuses_bad_arguments(tmp_path, capsys):
    out = tmp_path / "e"
    assert cli_main(["pretrain-experts", "--out", str(out), "--steps", "2", "--batch-size", "2", "--quiet"]) == 0
    assert {p.name for p in out.iterdir()} == {"clip_convnext.safetensors", "dinov2.safetensors", "model.yaml"}
    assert "model.preset=" in capsys.readouterr().out
    assert cli_main(["pretrain-experts", "--out", str(tmp_path / "x"), "--preset", "nope"]) == 2
    assert "unknown preset 'nope'" in capsys.readouterr().err
    (tmp_path / "file").write_text("")
    assert cli_main(["pretrain-experts", "--out", str(tmp_path / "file")]) == 2
    with pytest.raises(SystemExit):
        cli_main(["pretrain-experts", "--out", str(out), "--steps", "0"])


def test_token_labels_name_the_object_under_each_patch_and_treat_padding_as_background():
    from PIL import Image, ImageDraw

    from sphinx_x.train.expert_pretrain import NUM_COLORS, token_labels

    pad = (123, 117, 104)
    img = Image.new("RGB", (128, 128), (255, 255, 255))
    ImageDraw.Draw(img).rectangle((64, 32, 95, 63), fill=COLORS["purple"])  # exactly patch (row 1, col 2)
    ImageDraw.Draw(img).rectangle((0, 96, 127, 127), fill=pad)  # the bottom row is canvas padding
    view = torch.from_numpy(__import__("numpy").asarray(img).copy()).permute(2, 0, 1)
    purple, star = list(COLORS).index("purple"), SHAPES.index("star")
    labels = token_labels(view, {purple: star}, grid=4, pad=pad)
    assert labels.shape == (16, 2)
    assert labels[1 * 4 + 2].tolist() == [purple, star]
    others = [t for t in range(16) if t != 6]
    assert (labels[others, 0] == NUM_COLORS).all() and (labels[others, 1] == len(SHAPES)).all()


def test_scene_example_gives_token_labels_for_the_global_view_and_a_sub_image():
    views, labels = scene_example(VISION, seed=3, index=5)
    drawn = {c for c, k in enumerate(labels.tolist()) if k}
    for e in VISION.experts:
        assert views[f"{e.name}.crop"].shape == (3, e.view_size, e.view_size)
        g = VISION.feature_grid
        for key in (f"{e.name}.tokens", f"{e.name}.crop.tokens"):
            assert views[key].shape == (g * g, 2)
        named = set(views[f"{e.name}.tokens"][:, 0].tolist()) - {len(COLORS)}
        assert named == drawn  # every drawn object covers some patch of the global view, nothing else is named


def test_token_boxes_give_each_covered_token_its_objects_box_in_the_views_coordinates():
    views, _ = scene_example(VISION, seed=3, index=5)
    g = VISION.feature_grid
    for e in VISION.experts:
        for key in (e.name, f"{e.name}.crop"):
            labels, boxes = views[f"{key}.tokens"], views[f"{key}.boxes"]
            assert boxes.shape == (g * g, 4)
            covered = labels[:, 0] < len(COLORS)
            assert covered.any() and boxes[covered].isfinite().all() and boxes[~covered].isnan().all()
            for t in covered.nonzero().flatten().tolist():  # the token's patch overlaps its object's box
                row, col = divmod(t, g)
                x1, y1, x2, y2 = boxes[t].tolist()
                assert x1 < (col + 1) / g and x2 > col / g and y1 < (row + 1) / g and y2 > row / g
            same = labels[covered, 0]  # tokens of one object share one box
            for c in same.unique().tolist():
                rows = boxes[labels[:, 0] == c]
                assert torch.equal(rows, rows[:1].expand_as(rows))
        # the global view's boxes are canvas-normalised, so a sub-image's are twice as large
        glob = views[f"{e.name}.boxes"]
        crop = views[f"{e.name}.crop.boxes"]
        for c in set(views[f"{e.name}.tokens"][:, 0].tolist()) & set(views[f"{e.name}.crop.tokens"][:, 0].tolist()):
            if c == len(COLORS):
                continue
            b = glob[views[f"{e.name}.tokens"][:, 0] == c][0]
            k = crop[views[f"{e.name}.crop.tokens"][:, 0] == c][0]
            assert torch.allclose(k[2:] - k[:2], 2 * (b[2:] - b[:2]), atol=1e-5)


def test_box_objective_trains_the_box_heads_and_reports_their_accuracy(tmp_path):
    from sphinx_x.train.expert_pretrain import box_iou, pretrain_experts

    boxed = pretrain_experts(VISION, tmp_path, steps=2, batch_size=4, seed=0, num_workers=0, token_weight=1.0,
                             box_weight=1.0)
    plain = pretrain_experts(VISION, tmp_path / "plain", steps=2, batch_size=4, seed=0, num_workers=0,
                             token_weight=1.0)
    assert set(boxed.box_accuracy) == {"clip_convnext", "dinov2"} and plain.box_accuracy == {}
    assert all(0.0 <= a <= 1.0 for a in boxed.box_accuracy.values())
    assert boxed.losses[0] > plain.losses[0]  # same init and batch: the box loss is added
    a = torch.tensor([[0.0, 0.0, 0.5, 0.5], [0.0, 0.0, 0.5, 0.5], [0.0, 0.0, 0.2, 0.2]])
    b = torch.tensor([[0.0, 0.0, 0.5, 0.5], [0.25, 0.0, 0.75, 0.5], [0.5, 0.5, 0.6, 0.6]])
    assert box_iou(a, b).tolist() == pytest.approx([1.0, 1 / 3, 0.0])
    with pytest.raises(ValueError, match="box_weight"):
        pretrain_experts(VISION, tmp_path / "x", steps=1, box_weight=-1.0)


def test_token_objective_trains_the_per_token_heads(tmp_path):
    from sphinx_x.train.expert_pretrain import pretrain_experts

    result = pretrain_experts(VISION, tmp_path, steps=3, batch_size=4, seed=0, num_workers=0, token_weight=1.0)
    plain = pretrain_experts(VISION, tmp_path / "plain", steps=3, batch_size=4, seed=0, num_workers=0)
    assert result.steps == 3
    # The per-token cross-entropy (two heads, 7 and 5 classes, global view and sub-image) adds ~2 x (ln 7 + ln 5)
    assert result.losses[0] > plain.losses[0] + 2.0


def test_token_objective_alone_leaves_the_scene_probe_out(tmp_path):
    from sphinx_x.train.expert_pretrain import pretrain_experts

    alone = pretrain_experts(VISION, tmp_path, steps=2, batch_size=4, seed=0, num_workers=0, token_weight=1.0,
                             scene_weight=0.0)
    both = pretrain_experts(VISION, tmp_path / "both", steps=2, batch_size=4, seed=0, num_workers=0, token_weight=1.0)
    assert alone.accuracy == {} and set(alone.token_accuracy) == {"clip_convnext", "dinov2"}
    assert set(both.accuracy) == {"clip_convnext", "dinov2"}
    # Same initialisation and first batch: the first loss differs by the two experts' scene cross-entropies
    # (each about ln 5 at initialisation: 6 colours x 5 classes, none or a shape).
    assert both.losses[0] - alone.losses[0] == pytest.approx(2 * torch.log(torch.tensor(5.0)).item(), abs=0.5)
    with pytest.raises(ValueError, match="must be >= 0 and not all 0"):
        pretrain_experts(VISION, tmp_path / "x", steps=1, token_weight=0.0, scene_weight=0.0)


def test_reading_targets_name_the_word_in_the_tokens_over_it():
    from sphinx_x.train.expert_words import BACKGROUND, IGNORED, word_token_labels

    def grid(box):
        return word_token_labels(box, 4, 7).view(4, 4)

    inside = grid((0.05, 0.05, 0.2, 0.2))  # within token (0, 0)
    assert inside[0, 0] == 7 and (inside.flatten()[1:] == BACKGROUND).all()
    halves = grid((0.15, 0.05, 0.35, 0.15))  # half in token (0, 0), half in (0, 1)
    assert halves[0, 0] == 7 and halves[0, 1] == 7 and halves[0, 2] == BACKGROUND
    edge = grid((0.05, 0.05, 0.26, 0.1))  # 5% of the word in token (0, 1): no target there
    assert edge[0, 0] == 7 and edge[0, 1] == IGNORED
    large = grid((0.0, 0.0, 1.0, 0.5))  # a word larger than a cell: the cells it covers name it
    assert (large[:2] == 7).all() and (large[2:] == BACKGROUND).all()
    beyond = grid((0.8, 0.8, 1.3, 1.1))  # a word leaving the view: the share inside counts
    assert beyond[3, 3] == 7


def test_reading_examples_show_the_page_as_the_model_sees_it(tmp_path):
    import random

    from sphinx_x.canvas import make_canvas, to_uint8_tensor
    from sphinx_x.data.synth.ocr import WORDS, generate_ocr
    from sphinx_x.train import expert_words
    from sphinx_x.train.expert_pretrain import pretrain_experts

    views, word = expert_words.word_example(VISION, 3, 5)
    sample = generate_ocr(random.Random("sphinx-x-expert-words:3:5"), task="ocr")
    assert WORDS[word] == sample.bench["answer"]
    side = max(sample.image.size)
    x1, y1, x2, y2 = (v / side for v in sample.meta["words"][0]["box"])
    i, j = int(y1 + y2 >= 1), int(x1 + x2 >= 1)  # the quadrant holding the word's centre
    for e in VISION.experts:
        r = e.view_size
        assert torch.equal(views[e.name], to_uint8_tensor(make_canvas(sample.image, r, VISION.canvas)))
        big = to_uint8_tensor(make_canvas(sample.image, 2 * r, VISION.canvas))
        assert torch.equal(views[f"{e.name}.crop"], big[:, i * r:(i + 1) * r, j * r:(j + 1) * r])
    # nearly every view's targets name the word somewhere (not where a word straddles cells so that none holds 30%
    # of it); the zoomed views show it larger than the global views
    ink = lambda v: int((v.float().mean(0) < 70).sum())  # noqa: E731  (the inks; paper and padding are lighter)
    batch, words = expert_words.word_batch(VISION, 3, 0, 12)
    assert batch["labels"].shape == (36, VISION.feature_grid ** 2)
    named = (batch["labels"] == words.repeat(3)[:, None]).any(dim=1)
    assert named.sum() >= 30 and set(batch["labels"].unique().tolist()) <= {*words.tolist(), 24, -100}
    name = VISION.experts[0].name
    assert sum(map(ink, batch[name][24:])) > 2 * sum(map(ink, batch[name][:12]))
    result = pretrain_experts(VISION, tmp_path, steps=2, batch_size=4, seed=0, num_workers=0, scene_weight=0.0,
                              ocr_weight=1.0, ocr_batch=3)
    assert result.accuracy == {} and result.token_accuracy == {}
    assert set(result.word_accuracy) == set(result.word_view_accuracy) == {"clip_convnext", "dinov2"}
    assert all(0.0 <= a <= 1.0 for a in [*result.word_accuracy.values(), *result.word_view_accuracy.values()])
    # at initialisation each expert's reading loss is about ln 25 (24 words and background)
    assert result.losses[0] == pytest.approx(2 * torch.log(torch.tensor(25.0)).item(), abs=0.6)


def test_a_stage_can_start_from_saved_trunks(tmp_path):
    from safetensors.torch import load_file

    from sphinx_x.train.expert_pretrain import pretrain_experts

    first = pretrain_experts(VISION, tmp_path / "a", steps=1, batch_size=2, seed=0, num_workers=0)
    tuned = pretrain_experts(VISION, tmp_path / "b", steps=1, batch_size=2, seed=5, num_workers=0, lr=1e-12,
                             init_from=first.paths)
    fresh = pretrain_experts(VISION, tmp_path / "c", steps=1, batch_size=2, seed=5, num_workers=0, lr=1e-12)
    for name in first.paths:
        a, b, c = (load_file(r.paths[name]) for r in (first, tuned, fresh))
        assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)  # from the saved trunk (lr ~0: unchanged)
        assert not all(torch.allclose(a[k], c[k], atol=1e-6) for k in a)  # a random init otherwise
    with pytest.raises(ValueError, match="init_from names experts"):
        pretrain_experts(VISION, tmp_path / "d", steps=1, init_from={"nope": first.paths["dinov2"]})


def test_keep_weight_holds_the_scene_tokens_near_the_starting_trunk(tmp_path):
    """`keep_weight`: 0 at the start (the tokens are the reference's), then it pulls the tuned tokens back; the held-out
    cosine to the starting trunk is reported for any fine-tuning stage."""
    from sphinx_x.train.expert_pretrain import keep_loss, pretrain_experts

    x = torch.randn(2, 5, 8)
    assert keep_loss(x, x).item() == 0.0
    assert keep_loss(3 * (x + 1), 3 * x).item() == pytest.approx(keep_loss(x + 1, x).item(), rel=1e-5)  # scale-free
    first = pretrain_experts(VISION, tmp_path / "a", steps=1, batch_size=2, seed=0, num_workers=0)
    runs = {w: pretrain_experts(VISION, tmp_path / f"k{w}", steps=4, batch_size=2, seed=3, num_workers=0, lr=3e-2,
                                init_from=first.paths, keep_weight=w) for w in (0.0, 100.0)}
    assert runs[0.0].losses[0] == pytest.approx(runs[100.0].losses[0], rel=1e-6)  # nothing to pull back at step 1
    assert runs[0.0].losses[1] != pytest.approx(runs[100.0].losses[1], rel=1e-3)
    for name in first.paths:
        assert -1.0 <= runs[0.0].keep_cosine[name] < runs[100.0].keep_cosine[name] <= 1.0 + 1e-6, name
    assert first.keep_cosine == {}  # not a fine-tuning stage
    with pytest.raises(ValueError, match="keep_weight holds fine-tuned trunks near their starting weights"):
        pretrain_experts(VISION, tmp_path / "b", steps=1, keep_weight=1.0)
    with pytest.raises(ValueError, match="box_weight and keep_weight must be >= 0"):
        pretrain_experts(VISION, tmp_path / "b", steps=1, keep_weight=-1.0)


def test_cli_refuses_no_objective(tmp_path, capsys):
    assert cli_main(["pretrain-experts", "--out", str(tmp_path / "e"), "--scene-weight", "0"]) == 2
    assert "must be >= 0 and not all 0 (--scene-weight, --token-weight, --ocr-weight)" in capsys.readouterr().err
    assert cli_main(["build-standins", "--out", str(tmp_path / "s"), "--expert-scene-weight", "0",
                     "--expert-token-weight", "0"]) == 2
    assert "not all 0" in capsys.readouterr().err
    assert cli_main(["pretrain-experts", "--out", str(tmp_path / "e"), "--ocr-weight", "-1"]) == 2
    assert "reading -1" in capsys.readouterr().err
    assert cli_main(["pretrain-experts", "--out", str(tmp_path / "e"), "--box-weight", "-1"]) == 2
    assert "--box-weight must be >= 0, got -1" in capsys.readouterr().err
    assert cli_main(["pretrain-experts", "--out", str(tmp_path / "e"), "--keep-weight", "1"]) == 2
    assert "--keep-weight holds the tokens near the trunk a fine-tuning stage starts from" in capsys.readouterr().err
    assert not (tmp_path / "e").exists()


def test_cli_fine_tunes_some_experts_from_a_set(tmp_path, capsys):
    """`--init-from SET --experts NAME`: the reading stage by hand; model.yaml takes the other experts from the set."""
    from sphinx_x.standins import standins_dir

    out = tmp_path / "read"
    assert cli_main(["pretrain-experts", "--out", str(out), "--init-from", str(standins_dir()), "--experts",
                     "clip_convnext", "--steps", "1", "--batch-size", "2", "--ocr-weight", "1", "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "clip_convnext: reading held-out: names the word of" in printed and "dinov2" not in printed
    assert [p.name for p in out.glob("*.safetensors")] == ["clip_convnext.safetensors"]
    experts = {e.name: e.checkpoint for e in SphinxXConfig.load(out / "model.yaml").vision.experts}
    assert experts == {"clip_convnext": str((out / "clip_convnext.safetensors").resolve()),
                       "dinov2": str((standins_dir() / "experts" / "dinov2.safetensors").resolve())}
    assert cli_main(["pretrain-experts", "--out", str(tmp_path / "x"), "--experts", "clip_convnext,nope"]) == 2
    assert "--experts clip_convnext,nope: name experts among clip_convnext, dinov2" in capsys.readouterr().err
    assert cli_main(["pretrain-experts", "--out", str(tmp_path / "x"), "--init-from", str(tmp_path)]) == 2
    assert "no clip_convnext.safetensors, dinov2.safetensors in" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
