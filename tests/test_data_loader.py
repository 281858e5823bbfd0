"""Readers, the mix YAML, MixDataset and collation with real images through a DataLoader."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from sphinx_x.canvas import skipped_cells
from sphinx_x.config import SphinxXConfig
from sphinx_x.constants import IGNORE_INDEX, IMAGE_TOKEN_ID
from sphinx_x.data.dataset import MixDataset, SkipReport, build_dataloader
from sphinx_x.data.readers import DataError, JsonlReader, JsonReader, expand_ratio, load_mix
from sphinx_x.image_tokens import visual_token_count
from sphinx_x.tokenizer import load_tokenizer

VISION = SphinxXConfig.from_name("nano").vision


@pytest.fixture(scope="module")
def nano():
    return load_tokenizer("nano")


def conv(*pairs):
    out = []
    for q, a in pairs:
        out += [{"from": "human", "value": q}, {"from": "gpt", "value": a}]
    return out


def write_jsonl(path, records, blank_lines=False):
    lines = []
    for r in records:
        lines.append(json.dumps(r))
        if blank_lines:
            lines.append("")
    path.write_text("\n".join(lines) + "\n")


# ---- readers -----------------------------------------------------------------------------------
def test_jsonl_is_indexed_lazily_with_line_numbers(tmp_path):
    path = tmp_path / "d.jsonl"
    write_jsonl(path, [{"k": i, "conversations": []} for i in range(5)], blank_lines=True)
    reader = JsonlReader(path)
    assert len(reader) == 5
    assert not hasattr(reader, "_items")  # nothing decoded up front
    assert reader.read(3) == {"k": 3, "conversations": []}
    assert str(reader.location(3)) == f"{path}:7"  # blank lines counted in line numbers
    assert [loc.line for loc, _ in reader] == [1, 3, 5, 7, 9]


def test_json_array_items_know_their_lines(tmp_path):
    path = tmp_path / "d.json"
    path.write_text('[\n  {"a": 1},\n\n  {"a": [1,\n 2]},\n  {"a": 3}\n]\n')
    reader = JsonReader(path)
    assert [reader.read(i)["a"] for i in range(3)] == [1, [1, 2], 3]
    assert [reader.location(i).line for i in range(3)] == [2, 4, 6]
    assert str(reader.location(1)) == f"{path}:4: item 1"
    bad = tmp_path / "bad.json"
    bad.write_text('[\n {"a": 1},\n {"a": }\n]')
    with pytest.raises(DataError, match=r"bad.json:3: invalid JSON"):
        JsonReader(bad)


def test_ratio_subsamples_and_repeats_deterministically():
    rng = lambda: np.random.default_rng(7)  # noqa: E731
    half = expand_ratio(10, 0.5, rng())
    assert len(half) == 5 and len(set(half.tolist())) == 5
    assert half.tolist() == expand_ratio(10, 0.5, rng()).tolist()
    assert half.tolist() != expand_ratio(10, 0.5, np.random.default_rng(8)).tolist()
    more = expand_ratio(10, 2.5, rng())
    counts = np.bincount(more, minlength=10)
    assert len(more) == 25 and set(counts.tolist()) == {2, 3}


def test_mix_yaml_paths_roots_and_errors(tmp_path):
    (tmp_path / "data").mkdir()
    write_jsonl(tmp_path / "data" / "a.jsonl", [{"conversations": conv(("q", "a"))}])
    mix = tmp_path / "mix.yaml"
    mix.write_text("META:\n  - path: data/a.jsonl\n    type: t\n  - path: data/a.jsonl\n    type: u\n"
                   "    root: imgs\n    ratio: 2\n")
    m = load_mix(mix)
    assert [s.type for s in m.sources] == ["t", "u"]
    assert m.sources[0].root == (tmp_path / "data").resolve()  # default: the data file's directory
    assert m.sources[1].root == (tmp_path / "imgs").resolve()  # relative to the YAML file
    assert m.sources[1].ratio == 2.0
    mix.write_text("META:\n  - path: data/a.jsonl\n    type: t\n  - path: data/missing.jsonl\n    type: t\n")
    with pytest.raises(DataError, match=r"mix.yaml:4: META\[1\].path: data file not found"):
        load_mix(mix)
    mix.write_text("META:\n  - path: data/a.jsonl\n    type: t\n    ratio: -1\n")
    with pytest.raises(DataError, match=r"mix.yaml:2: META\[0\].ratio: must be a positive number"):
        load_mix(mix)
    mix.write_text("META:\n  - path: data/a.jsonl\n    typ: t\n")
    with pytest.raises(DataError, match="unknown key 'typ'"):
        load_mix(mix)
    assert [s.phase for s in m.sources] == [0, 0]  # no curriculum unless asked for
    mix.write_text("META:\n  - path: data/a.jsonl\n    type: t\n    phase: 1\n  - path: data/a.jsonl\n    type: t\n")
    assert [s.phase for s in load_mix(mix).sources] == [1, 0]
    for bad in ("-1", "0.5", "first", "true"):
        mix.write_text(f"META:\n  - path: data/a.jsonl\n    type: t\n    phase: {bad}\n")
        with pytest.raises(DataError, match=r"mix.yaml:2: META\[0\].phase: must be an integer >= 0"):
            load_mix(mix)


# ---- dataset + collate + DataLoader with real images ---------------------------------------------
SIZES = [(64, 64), (80, 40), (40, 80), (90, 30), (64, 48), (30, 90), (48, 64)]  # 1:1 2:1 1:2 3:1 4:3 1:3 3:4


@pytest.fixture()
def image_mix(tmp_path):
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    for k, (w, h) in enumerate(SIZES):
        Image.new("RGB", (w, h), (k * 30, 200 - k * 20, 90)).save(imgs / f"im{k}.png")
    records = []
    for k in range(len(SIZES)):  # one image with a placeholder
        records.append({"image": f"im{k}.png", "conversations": conv((f"<image>\nWhat is {k}?", f"Answer {k}."))})
    records.append({"image": "im1.png", "conversations": conv(("No placeholder here.", "Still an image."))})
    records.append({"image": ["im3.png", "im5.png"],
                    "conversations": conv(("<image> then", "ok"), ("and <image>?", "two images"))})
    write_jsonl(tmp_path / "vision.jsonl", records)
    (tmp_path / "text.json").write_text(json.dumps(
        [{"conversations": conv((f"Say {k}", f"{k} " * (k + 1)), ("Again", "done"))} for k in range(6)]))
    (tmp_path / "mix.yaml").write_text(
        "META:\n  - path: vision.jsonl\n    type: image\n    root: imgs\n  - path: text.json\n    type: text\n")
    return tmp_path


def expected_sizes(ds, index):
    return [Image.open(p).size for p in ds.sample(index).images]


def check_batch(ds, batch, bos):
    ids, mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
    assert ids.dtype == mask.dtype == labels.dtype == torch.long and ids.shape == mask.shape == labels.shape
    all_sizes = []
    for row, index in enumerate(batch["indices"]):
        n = int(mask[row].sum())
        assert mask[row, :n].all() and not mask[row, n:].any()  # right padding
        assert (labels[row, n:] == IGNORE_INDEX).all() and (ids[row, n:] == ds.encoder.tokenizer.pad_token_id).all()
        assert ids[row, 0] == bos
        sizes = expected_sizes(ds, index)
        all_sizes += sizes
        expected = sum(visual_token_count(w, h, VISION) for w, h in sizes)
        assert int((ids[row] == IMAGE_TOKEN_ID).sum()) == expected
        assert (labels[row][ids[row] == IMAGE_TOKEN_ID] == IGNORE_INDEX).all()
        assert ds.type_of(index) == batch["type"]
    assert batch["num_visual_tokens"] == int((ids == IMAGE_TOKEN_ID).sum())
    assert batch["num_text_tokens"] + batch["num_visual_tokens"] == int(mask.sum())
    if not all_sizes:
        assert batch["images"] is None
        return 0
    images = batch["images"]
    assert images.num_images == len(all_sizes)
    skipped = torch.tensor([skipped_cells(w, h, VISION.canvas) for w, h in all_sizes])
    assert torch.equal(images.skipped, skipped)
    encoded = int(len(all_sizes) + (~skipped).sum())
    for expert in VISION.experts:
        r = expert.view_size
        assert images.views[expert.name].shape == (encoded, 3, r, r)
        assert images.views[expert.name].dtype == torch.uint8
    return len(all_sizes)


@pytest.mark.parametrize("num_workers", [0, 1])
def test_dataloader_batches_with_real_images(image_mix, nano, num_workers):
    ds = MixDataset(image_mix / "mix.yaml", nano, VISION, max_len=512, seed=1)
    assert len(ds) == 9 + 6 and ds.type_names == ["image", "text"]
    lengths = ds.lengths()
    assert (lengths[:9] > 95 - 20).all() and (lengths[9:] < 95).all()  # visual tokens counted from headers
    loader = build_dataloader(ds, global_batch_size=4, micro_batch_size=2, seed=1, drop_last=False,
                              num_workers=num_workers)
    images = seen = 0
    report = SkipReport()
    for batch in loader:
        images += check_batch(ds, batch, nano.bos_token_id)
        seen += len(batch["indices"])
        report.add(batch)
    assert seen == 20  # 9 image samples -> 3 global batches of 4 (filled up), 6 text -> 2 batches of 4
    assert images >= 10 and report.skipped == {} and report.samples == 20


def test_curriculum_phase_trains_its_source_first(image_mix, nano):
    """The text source in phase 0, images in phase 1: the loader yields every text sample before any image."""
    (image_mix / "phased.yaml").write_text(
        "META:\n  - path: vision.jsonl\n    type: image\n    root: imgs\n    phase: 1\n"
        "  - path: text.json\n    type: text\n    phase: 0\n")
    ds = MixDataset(image_mix / "phased.yaml", nano, VISION, max_len=512, seed=1)
    assert ds.phase_ids.tolist() == [1] * 9 + [0] * 6
    loader = build_dataloader(ds, global_batch_size=2, micro_batch_size=2, seed=1, num_workers=0)
    for epoch in (0, 1):
        loader.batch_sampler.set_epoch(epoch)
        kinds = [batch["type"] for batch in loader]
        assert kinds == ["text"] * 3 + ["image"] * 4  # 6 text samples, 9 images (drop_last: 8)


def test_image_without_placeholder_sits_after_bos(image_mix, nano):
    ds = MixDataset(image_mix / "mix.yaml", nano, VISION, max_len=512)
    item = ds[7]  # the "No placeholder here." record
    n = visual_token_count(80, 40, VISION)
    assert item.input_ids[0] == nano.bos_token_id
    assert (item.input_ids[1 : 1 + n] == IMAGE_TOKEN_ID).all() and item.input_ids[1 + n] != IMAGE_TOKEN_ID
    assert len(item.images) == 1 and item.images[0].size == (80, 40)


def test_length_cache_on_disk(image_mix, nano, tmp_path):
    cache = tmp_path / "cache"
    a = MixDataset(image_mix / "mix.yaml", nano, VISION, max_len=512, cache_dir=cache).lengths()
    files = sorted(cache.glob("lengths-*.npy"))
    assert len(files) == 2
    vision_file = next(f for f in files if len(np.load(f)) == 9)  # one file per source
    np.save(vision_file, np.load(vision_file) + 1000)  # prove the second dataset reads the cache
    b = MixDataset(image_mix / "mix.yaml", nano, VISION, max_len=512, cache_dir=cache).lengths()
    assert (b[:9] - a[:9] == 1000).all() and (b[9:] == a[9:]).all()


def test_truncation_and_rejection_are_counted(tmp_path, nano):
    long = {"conversations": conv(("Q1", "a " * 60), ("Q2", "b " * 60), ("Q3", "c " * 60))}
    hopeless = {"conversations": conv(("question " * 200, "x"))}
    write_jsonl(tmp_path / "t.jsonl", [long, hopeless])
    (tmp_path / "mix.yaml").write_text("META:\n  - path: t.jsonl\n    type: text\n")
    ds = MixDataset(tmp_path / "mix.yaml", nano, VISION, max_len=200)
    item = ds[0]
    assert item.truncated and len(item.input_ids) <= 200 and ds.truncated == 1
    skipped = ds[1]  # rejected even in strict mode: it is well formed, just too long to keep an answer
    assert skipped.reason == "no_supervised_tokens" and ds.skipped == {"no_supervised_tokens": 1}
    with pytest.raises(ValueError, match="max_len 90 is shorter than one image's visual tokens"):
        MixDataset(tmp_path / "mix.yaml", nano, VISION, max_len=90)
