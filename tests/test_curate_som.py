"""`sphinx-x curate som`: a COCO-style file built here (boxes, polygons, compressed and uncompressed
RLE) on images whose objects are drawn here, so every mark can be checked against the true object."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw
from pycocotools import mask as mask_utils

from sphinx_x.canvas import CanvasGeometry
from sphinx_x.cli import main
from sphinx_x.curate.coco import CocoObject, decode_mask, mark_point
from sphinx_x.curate.marks import PALETTE, contrast_ratio, place_labels, text_color
from sphinx_x.curate.som import build_som, parse_caption
from sphinx_x.data.geometry import parse_marks

IMG_W, IMG_H = 320, 240


def uncompressed_rle(mask: np.ndarray) -> dict:
    """COCO uncompressed RLE written independently of pycocotools: column-major runs, zeros first."""
    flat = mask.ravel(order="F").astype(np.uint8)
    counts, current, run = [], 0, 0
    for v in flat:
        if v == current:
            run += 1
        else:
            counts.append(run)
            current, run = v, 1
    counts.append(run)
    return {"size": [mask.shape[0], mask.shape[1]], "counts": counts}


def _ring(cx, cy, r_out, r_in) -> np.ndarray:
    yy, xx = np.mgrid[0:IMG_H, 0:IMG_W]
    d2 = (xx + 0.5 - cx) ** 2 + (yy + 0.5 - cy) ** 2
    return (d2 <= r_out**2) & (d2 >= r_in**2)


def _l_shape() -> np.ndarray:
    m = np.zeros((IMG_H, IMG_W), dtype=bool)
    m[140:230, 20:40] = True  # vertical bar
    m[210:230, 20:120] = True  # foot: the box centre (70, 185) is outside the L
    return m


def _bbox(mask: np.ndarray) -> list[float]:
    ys, xs = np.nonzero(mask)
    return [float(xs.min()), float(ys.min()), float(xs.max() + 1 - xs.min()), float(ys.max() + 1 - ys.min())]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """Images, annotations and the true mask of every annotation id."""
    root = tmp_path_factory.mktemp("som")
    images = root / "images"
    images.mkdir()
    truth: dict[int, np.ndarray] = {}
    anns = []

    def add(ann_id, image_id, cat, mask, segmentation):
        truth[ann_id] = mask
        anns.append({"id": ann_id, "image_id": image_id, "category_id": cat, "bbox": _bbox(mask),
                     "segmentation": segmentation, "area": float(mask.sum()), "iscrowd": 0})

    # Image 1: one object of each annotation kind.
    canvas = Image.new("RGB", (IMG_W, IMG_H), (90, 120, 90))
    draw = ImageDraw.Draw(canvas)
    box = np.zeros((IMG_H, IMG_W), dtype=bool)
    box[20:80, 30:110] = True
    draw.rectangle([30, 20, 109, 79], fill=(200, 40, 40))
    add(1, 1, 1, box, None)  # box only
    tri = [200.0, 20.0, 300.0, 20.0, 250.0, 110.0]
    draw.polygon(tri, fill=(40, 40, 200))
    tri_mask = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects([tri], IMG_H, IMG_W))).astype(bool)
    add(2, 1, 2, tri_mask, [tri])  # polygon
    ring = _ring(200, 175, 50, 35)
    rle = mask_utils.encode(np.asfortranarray(ring.astype(np.uint8)))
    add(3, 1, 3, ring, {"size": rle["size"], "counts": rle["counts"].decode()})  # compressed RLE
    ell = _l_shape()
    add(4, 1, 4, ell, uncompressed_rle(ell))  # uncompressed RLE
    arr = np.asarray(canvas).copy()
    arr[ring] = (230, 230, 40)
    arr[ell] = (40, 200, 200)
    Image.fromarray(arr).save(images / "one.png")
    tiny = np.zeros((IMG_H, IMG_W), dtype=bool)
    tiny[5:7, 5:7] = True
    add(5, 1, 1, tiny, None)  # 4 pixels: too small to mark

    # Image 2: a tight cluster of small boxes, labels must still not overlap.
    Image.new("RGB", (IMG_W, IMG_H), (250, 250, 250)).save(images / "two.jpg")
    for k, (r, c) in enumerate(itertools.product(range(3), range(3))):
        m = np.zeros((IMG_H, IMG_W), dtype=bool)
        m[100 + 14 * r : 110 + 14 * r, 140 + 14 * c : 150 + 14 * c] = True
        add(10 + k, 2, 1, m, None)

    # Image 3 is missing on disk, image 4 has the wrong size in the annotations.
    Image.new("RGB", (100, 80)).save(images / "four.png")
    coco = {
        "images": [{"id": 1, "file_name": "one.png", "width": IMG_W, "height": IMG_H},
                   {"id": 2, "file_name": "two.jpg", "width": IMG_W, "height": IMG_H},
                   {"id": 3, "file_name": "missing.png", "width": IMG_W, "height": IMG_H},
                   {"id": 4, "file_name": "four.png", "width": 50, "height": 50}],
        "annotations": anns,
        "categories": [{"id": 1, "name": "box"}, {"id": 2, "name": "triangle"}, {"id": 3, "name": "ring"},
                       {"id": 4, "name": "bracket"}],
    }
    (root / "coco.json").write_text(json.dumps(coco))
    return root, truth


@pytest.fixture(scope="module")
def built(dataset):
    root, truth = dataset
    out = root / "out"
    summary = build_som(root / "coco.json", root / "images", out, progress=False)
    samples = [json.loads(line) for line in (out / "som.jsonl").read_text().splitlines()]
    marks = {r["id"]: r for r in map(json.loads, (out / "marks.jsonl").read_text().splitlines())}
    return out, summary, samples, marks


def test_decode_mask_matches_truth_for_every_kind(dataset):
    root, truth = dataset
    coco = json.loads((root / "coco.json").read_text())
    for ann in coco["annotations"]:
        x, y, w, h = ann["bbox"]
        obj = CocoObject(ann["id"], "x", (x, y, x + w, y + h), ann["segmentation"])
        got = decode_mask(obj, IMG_H, IMG_W)
        if ann["id"] == 2:  # rasterised polygon vs the drawn one: edges may differ by a pixel
            assert (got ^ truth[2]).sum() <= 0.05 * truth[2].sum()
        else:
            assert np.array_equal(got, truth[ann["id"]]), ann["id"]


def test_mark_point_is_inside_non_convex_objects():
    ring = _ring(200, 175, 50, 35)
    x, y = mark_point(ring, (150, 125, 250, 225))
    assert ring[int(y), int(x)] and (x - 200) ** 2 + (y - 175) ** 2 > 35**2  # not in the hole
    ell = _l_shape()
    x, y = mark_point(ell, (20, 140, 120, 230))
    assert ell[int(y), int(x)]


def test_samples_reference_marks_inside_their_objects(built, dataset):
    out, summary, samples, marks = built
    _, truth = dataset
    assert [s["image"] for s in samples] == ["one.png", "two.jpg"]  # the UNMARKED images
    geom = CanvasGeometry(IMG_W, IMG_H, "top-left")
    for sample in samples:
        question, answer = (t["value"] for t in sample["conversations"])
        assert question.startswith("Provide a detailed description for each of the marks I've offered: ")  # no <image>
        asked, told = parse_marks(question), parse_marks(answer)
        rec = marks[sample["id"]]
        assert [i for i, _ in asked] == list(range(1, len(rec["marks"]) + 1))
        assert told == asked  # the answer describes the same marks at the same points
        for (number, point), mark in zip(asked, rec["marks"]):
            assert mark["number"] == number
            assert point == pytest.approx(geom.to_canvas(mark["point_px"]), abs=0.005)
            x, y = geom.to_pixels(point)  # what a model reading the text would point at
            m = truth[mark["ann_id"]]
            assert m[int(mark["point_px"][1]), int(mark["point_px"][0])], mark
            assert m[max(0, int(y) - 2) : int(y) + 3, max(0, int(x) - 2) : int(x) + 3].any(), mark


def test_templated_descriptions_name_the_categories(built):
    _, _, samples, marks = built
    answer = samples[0]["conversations"][1]["value"].split("\n")
    cats = [m["category"] for m in marks[samples[0]["id"]]["marks"]]
    assert sorted(cats) == ["box", "bracket", "ring", "triangle"]  # the 4-pixel object got no mark
    for line, cat in zip(answer, cats):
        assert f" {cat} in the " in line and line.endswith("of the image.")


def test_labels_do_not_overlap_and_stay_inside(built):
    _, summary, _, marks = built
    assert summary["counts"]["labels:overlapping"] == 0
    for rec in marks.values():
        boxes = [m["label_box_px"] for m in rec["marks"]]
        for b in boxes:
            assert 0 <= b[0] < b[2] <= IMG_W and 0 <= b[1] < b[3] <= IMG_H
        for a, b in itertools.combinations(boxes, 2):
            assert min(a[2], b[2]) <= max(a[0], b[0]) or min(a[3], b[3]) <= max(a[1], b[1]), (a, b)
    assert len(marks["som-2-two"]["marks"]) == 9


def test_marked_image_shows_labels_and_unmarked_is_untouched(built, dataset):
    out, _, _, marks = built
    root, _ = dataset
    rec = marks["som-1-one"]
    marked = np.asarray(Image.open(out / rec["marked_image"]).convert("RGB")).astype(int)
    original = np.asarray(Image.open(root / "images" / "one.png").convert("RGB")).astype(int)
    assert np.array_equal(np.asarray(Image.open(root / "images" / "one.png").convert("RGB")), original)
    for k, m in enumerate(rec["marks"]):
        x0, y0, x1, y1 = (round(v) for v in m["label_box_px"])
        background = np.median(marked[y0:y1, x0:x1].reshape(-1, 3), axis=0)  # most of a label is background
        assert np.abs(background - np.asarray(PALETTE[k])).max() < 30, (k, background)


def test_palette_text_is_readable():
    for color in PALETTE:
        assert contrast_ratio(color, text_color(color)) >= 4.5, color


def test_place_labels_counts_unavoidable_overlaps():
    pts = [(10.0 + i, 10.0) for i in range(30)]
    placement = place_labels(pts, [(12, 12)] * 30, [1.0] * 30, 40, 40)
    assert placement.overlapping > 0  # 30 labels of 12x12 cannot fit in 40x40
    free = place_labels([(50.0, 50.0), (52.0, 50.0)], [(20, 14)] * 2, [1.0, 2.0], 200, 200)
    a, b = free.boxes
    assert free.overlapping == 0 and (min(a[2], b[2]) <= max(a[0], b[0]) or min(a[3], b[3]) <= max(a[1], b[1]))


def test_bad_images_are_reported(built):
    _, summary, _, _ = built
    assert summary["counts"]["images:ok"] == 2
    assert summary["counts"]["images:unreadable"] == 1 and summary["counts"]["images:size_mismatch"] == 1
    assert summary["counts"]["objects:too_small"] == 1
    assert {Path(p["image"]).name for p in summary["problems"]} == {"missing.png", "four.png"}


def test_parse_caption_lines():
    text = "Mark 1: a red box.\n<Mark 2>: a blue triangle\n  mark 3 - a yellow ring\nnoise\nMark 1: again"
    assert parse_caption(text) == {1: "a red box.", 2: "a blue triangle", 3: "a yellow ring"}


def test_outputs_pass_data_check(built, capsys):
    out, _, _, _ = built
    assert main(["data", "check", str(out / "mix.yaml")]) == 0, capsys.readouterr().out


def test_cli_curate_som(dataset, tmp_path, capsys):
    root, _ = dataset
    code = main(["curate", "som", "--annotations", str(root / "coco.json"), "--images", str(root / "images"),
                 "--out", str(tmp_path / "out"), "--style", "box", "--no-progress", "--json"])
    assert code == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["samples"] == 2
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"images": [], "annotations": [{"image_id": 1}], "categories": []}))
    assert main(["curate", "som", "--annotations", str(bad), "--images", str(root), "--out", str(tmp_path)]) == 2
    assert "annotations[0]" in capsys.readouterr().err
