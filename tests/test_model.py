"""The assembled SPHINX-X model: sequence layout, skipping, loss positions, save/load, CLI counts."""

import json

import pytest
import torch
from PIL import Image

from sphinx_x.canvas import collate_images, prepare_image
from sphinx_x.cli import main as cli_main
from sphinx_x.config import SphinxXConfig
from sphinx_x.constants import IGNORE_INDEX, IMAGE_TOKEN_ID
from sphinx_x.image_tokens import visual_token_count
from sphinx_x.model import SphinxX
from sphinx_x.model_io import INDEX_NAME


def nano(**llm):
    config = SphinxXConfig.from_name("nano")
    for k, v in llm.items():
        setattr(config.llm, k, v)
    torch.manual_seed(0)
    return SphinxX(config)


def image(w, h, seed=0):
    g = torch.Generator().manual_seed(seed)
    arr = torch.randint(0, 255, (h, w, 3), generator=g, dtype=torch.uint8).numpy()
    return Image.fromarray(arr)


def sample(model, images, n_text=6, seed=0):
    """ids: BOS-like token, then each image's run of IMAGE_TOKEN_ID, then text; labels on the last 3 tokens."""
    g = torch.Generator().manual_seed(seed)
    ids = [1]
    for im in images:
        ids += [IMAGE_TOKEN_ID] * visual_token_count(im.width, im.height, model.config.vision)
        ids += torch.randint(3, 100, (2,), generator=g).tolist()
    ids += torch.randint(3, 100, (n_text,), generator=g).tolist()
    labels = [IGNORE_INDEX] * (len(ids) - 3) + ids[-3:]
    return ids, labels


def batch_of(model, samples_images):
    rows = [sample(model, ims, seed=i) for i, ims in enumerate(samples_images)]
    T = max(len(r[0]) for r in rows)
    ids = torch.full((len(rows), T), 0)
    labels = torch.full((len(rows), T), IGNORE_INDEX)
    mask = torch.zeros((len(rows), T), dtype=torch.long)
    for i, (x, y) in enumerate(rows):
        ids[i, : len(x)] = torch.tensor(x)
        labels[i, : len(y)] = torch.tensor(y)
        mask[i, : len(x)] = 1
    views = [prepare_image(im, model.config.vision) for ims in samples_images for im in ims]
    return dict(input_ids=ids, labels=labels, attention_mask=mask, images=collate_images(views, model.config.vision))


def test_sequence_layout_tags_and_skip_tokens():
    model = nano().eval()
    vision = model.config.vision
    im = image(200, 100)  # 2:1 -> bottom row skipped
    batch = collate_images([prepare_image(im, vision)], vision)
    with torch.no_grad():
        seq = model.image_embeddings(batch)
        views = model.visual(batch)
    L = vision.tokens_per_view
    assert seq.shape[0] == visual_token_count(200, 100, vision) == 3 * (L + 2) + 2
    # [start] global [end] [start] cell0 [end] [start] cell1 [end] [skip] [skip]
    for v in range(3):
        block = seq[v * (L + 2) : (v + 1) * (L + 2)]
        assert torch.equal(block[0], model.image_start)
        assert torch.equal(block[-1], model.image_end)
        assert torch.equal(block[1:-1], views[v])
    assert torch.equal(seq[-1], model.skip_token) and torch.equal(seq[-2], model.skip_token)


def test_skipping_is_exact_against_encoding_every_view():
    model = nano().eval()
    ims = [image(300, 100, 1), image(100, 300, 2), image(64, 64, 3)]
    skip_cfg = model.config.vision
    all_cfg = SphinxXConfig.from_dict(model.config.to_dict()).vision
    all_cfg.canvas.skip_padded_cells = False
    with torch.no_grad():
        kept = model.visual(collate_images([prepare_image(i, skip_cfg) for i in ims], skip_cfg))
        every = model.visual(collate_images([prepare_image(i, all_cfg) for i in ims], all_cfg))
    # every: 5 views per image; keep the global view and non-skipped cells
    keep_rows = []
    for n, im in enumerate(ims):
        skipped = prepare_image(im, skip_cfg).skipped.tolist()
        keep_rows += [5 * n] + [5 * n + 1 + c for c, s in enumerate(skipped) if not s]
    assert kept.shape[0] == len(keep_rows) < every.shape[0]
    torch.testing.assert_close(kept, every[keep_rows], rtol=1e-5, atol=1e-5)


def test_forward_backward_on_a_mixed_batch_and_loss_positions():
    model = nano().train()
    b = batch_of(model, [[], [image(64, 64)], [image(128, 64)], [image(40, 120)], [image(64, 64, 5), image(90, 30, 6)]])
    out = model(**b)
    assert torch.isfinite(out.loss)
    n_expected = int((b["labels"][:, 1:] != IGNORE_INDEX).sum())
    assert out.num_tokens == n_expected == 5 * 3
    torch.testing.assert_close(out.loss, out.loss_sum / n_expected)
    out.loss.backward()
    for p in (model.skip_token, model.image_start, model.image_end, model.visual.projector[0].weight):
        assert p.grad is not None and p.grad.abs().sum() > 0
    # Loss positions: changing a label-free token's target cannot change the loss, a supervised one does.
    with torch.no_grad():
        ref = model(**b).loss
        labels = b["labels"].clone()
        i, j = (labels != IGNORE_INDEX).nonzero()[0].tolist()
        labels[i, j] = (labels[i, j] + 1) % 100
        assert model(**{**b, "labels": labels}).loss != ref
        ids = b["input_ids"].clone()
        ids[0, -1] = 7  # padding position of the shortest (text-only) sample
        assert model(**{**b, "input_ids": ids}).loss == pytest.approx(ref.item(), abs=1e-6)


def test_logits_path_equals_training_path():
    model = nano().eval()
    b = batch_of(model, [[image(64, 64)], []])
    with torch.no_grad():
        logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"], images=b["images"]).logits
        out = model(**b)
    targets = b["labels"][:, 1:]
    keep = targets != IGNORE_INDEX
    ce = torch.nn.functional.cross_entropy(logits[:, :-1][keep], targets[keep], reduction="sum")
    torch.testing.assert_close(ce, out.loss_sum, rtol=1e-5, atol=1e-5)


def test_mismatched_image_positions_are_refused():
    model = nano().eval()
    b = batch_of(model, [[image(64, 64)]])
    b["input_ids"] = b["input_ids"][:, 2:]
    b["attention_mask"], b["labels"] = b["attention_mask"][:, 2:], b["labels"][:, 2:]
    with pytest.raises(ValueError, match="visual tokens but input_ids hold"):
        model(**b)


def test_frozen_experts_get_no_gradient():
    config = SphinxXConfig.from_name("nano")
    for e in config.vision.experts:
        e.frozen = True
    model = SphinxX(config).train()
    assert all(not e.training for e in model.visual.experts.values())
    b = batch_of(model, [[image(128, 64)]])  # 2:1, so a skip token is used
    model(**b).loss.backward()
    assert all(p.grad is None for p in model.visual.experts.parameters())
    assert model.skip_token.grad is not None and model.visual.projector[0].weight.grad is not None


def test_mixtral_backbone_adds_router_loss():
    config = SphinxXConfig.from_name("nano")
    config.llm.arch, config.llm.num_experts, config.llm.num_experts_per_tok = "mixtral", 4, 2
    torch.manual_seed(0)
    model = SphinxX(config)
    b = batch_of(model, [[image(64, 64)], []])
    out = model(**b)
    assert out.aux_loss is not None and torch.isfinite(out.aux_loss) and out.aux_loss > 0
    torch.testing.assert_close(out.loss, out.loss_sum / out.num_tokens + 0.01 * out.aux_loss)


@pytest.mark.parametrize("shard", [False, True])
def test_save_and_load_round_trip_is_bit_exact(tmp_path, shard):
    model = nano().eval()
    model.save_pretrained(tmp_path / "m", max_shard_bytes=200_000 if shard else 5 * 2**30)
    assert (tmp_path / "m" / INDEX_NAME).exists() == shard
    loaded = SphinxX.from_pretrained(tmp_path / "m")
    assert loaded.config == model.config
    a, b = model.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    for name, buf in model.named_buffers():
        assert torch.equal(buf, dict(loaded.named_buffers())[name]), name
    batch = batch_of(model, [[image(100, 50)], []])
    with torch.no_grad():
        assert torch.equal(model(**batch).loss, loaded(**batch).loss)
    assert not list(tmp_path.glob(".m.tmp-*"))  # the temporary directory was renamed into place


@pytest.mark.slow
def test_info_counts_match_published_sizes(capsys):
    expected = {"tiny": 1.10e9, "intern2": 7.74e9, "plus": 13.0e9, "moe": 46.7e9}
    for preset, llm in expected.items():
        assert cli_main(["info", preset, "--json", "--image-size", "1024x1024"]) == 0
        out = json.loads(capsys.readouterr().out)
        assert out["preset"] == preset
        assert abs(out["params"]["llm"] - llm) / llm < 0.01, (preset, out["params"]["llm"])
        experts = out["params"]["vision_experts"]
        assert abs(experts["clip_convnext"] - 0.85e9) / 0.85e9 < 0.01
        assert abs(experts["dinov2"] - 1.14e9) / 1.14e9 < 0.01
        assert out["params"]["projector"] == (3072 + 1536) * out["params"]["projector"] // (3072 + 1536)
        assert out["params"]["total"] > out["params"]["llm"] + sum(experts.values())
        assert out["visual_tokens"] == {"1024x1024": 1295}
    assert cli_main(["info", "plus-2k", "--json", "--image-size", "800x2400"]) == 0
    assert json.loads(capsys.readouterr().out)["visual_tokens"] == {"800x2400": 1042}


def test_init_writes_a_loadable_model_dir(tmp_path, capsys):
    assert cli_main(["init", "nano", "--out", str(tmp_path / "m"), "--seed", "3"]) == 0
    model = SphinxX.from_pretrained(tmp_path / "m")
    assert model.tokenizer is not None and model.tokenizer.bos_token_id is not None
    assert cli_main(["info", str(tmp_path / "m"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["preset"] == "nano"
