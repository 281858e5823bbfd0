"""Images go in one place everywhere: right after BOS, then the template's text.

Training samples from every builder (`curate ocr`, `curate som`, `data synth`, LLaVA-style user rows
with a leading or trailing `<image>`) are read through the real data pipeline; the same image and
question are asked through every inference front-end (chat, generate, the eval harness, the server's
request parsing, the lmms-eval adapter). Each inference prompt must be exactly the training sample's
prefix up to its first answer token, with the image run starting right after BOS."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pymupdf
import pytest
import yaml
from _helpers.infer import data_uri
from PIL import Image

from sphinx_x.commands.init import init_model
from sphinx_x.constants import IGNORE_INDEX, IMAGE_TOKEN_ID
from sphinx_x.curate.ocr_builder import OcrOptions, build_ocr
from sphinx_x.curate.som import build_som
from sphinx_x.data.dataset import MixDataset
from sphinx_x.data.encode import DialogueEncoder, images_after_bos
from sphinx_x.data.synth import generate_corpus
from sphinx_x.eval.harness import generate_answers
from sphinx_x.eval.lmms_adapter import SphinxXLmms
from sphinx_x.image_tokens import visual_token_count
from sphinx_x.infer.prompts import PromptEncoder
from sphinx_x.model import SphinxX
from sphinx_x.serve.app import request_turns
from sphinx_x.serve.schemas import ChatCompletionRequest
from sphinx_x.serve.settings import ServerSettings


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    out = tmp_path_factory.mktemp("placement_model") / "nano"
    init_model("nano", str(out), 0)
    return SphinxX.from_pretrained(out).eval()


def _ocr_rows(root: Path) -> list[tuple[dict, Path]]:
    doc = pymupdf.open()
    doc.new_page(width=300, height=200).insert_text((30, 60), "Placement test line", fontsize=14)
    (root / "pdfs").mkdir()
    doc.save(root / "pdfs" / "one.pdf")
    out = root / "ocr"
    build_ocr([root / "pdfs" / "one.pdf"], out, OcrOptions(dpi=72, max_side=None), workers=1, progress=False)
    rows = [json.loads(line) for line in (out / "transcription.jsonl").read_text().splitlines()]
    return [(rows[0], out)]


def _som_rows(root: Path) -> list[tuple[dict, Path]]:
    images = root / "som_images"
    images.mkdir()
    arr = np.full((90, 140, 3), 200, dtype=np.uint8)
    arr[20:70, 30:100] = (200, 30, 30)
    Image.fromarray(arr).save(images / "scene.png")
    coco = {"images": [{"id": 1, "file_name": "scene.png", "width": 140, "height": 90}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [30, 20, 70, 50],
                             "segmentation": None, "area": 3500.0, "iscrowd": 0}],
            "categories": [{"id": 1, "name": "box"}]}
    (root / "coco.json").write_text(json.dumps(coco))
    build_som(root / "coco.json", images, root / "som", progress=False)
    rows = [json.loads(line) for line in (root / "som" / "som.jsonl").read_text().splitlines()]
    return [(rows[0], images)]


def _synth_rows(root: Path) -> list[tuple[dict, Path]]:
    generate_corpus(root / "synth", train=8, val=0, test=0, seed=0)
    for path in sorted((root / "synth" / "train").glob("*.jsonl")):
        for line in path.read_text().splitlines():
            row = json.loads(line)
            if "image" in row:
                return [(row, root / "synth")]
    raise AssertionError("the synthetic corpus has no image row")


def _user_rows(root: Path) -> list[tuple[dict, Path]]:
    """LLaVA-shaped rows as users bring them: the placeholder opens or closes the first question."""
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 96, 3), dtype=np.uint8)).save(root / "u.png")
    lead = {"image": "u.png", "conversations": [{"from": "human", "value": "<image>\nWhat is shown?"},
                                                {"from": "gpt", "value": "Noise."}]}
    trail = {"image": "u.png", "conversations": [{"from": "human", "value": "What is shown here?\n<image>"},
                                                 {"from": "gpt", "value": "Noise again."}]}
    return [(lead, root), (trail, root)]


@pytest.fixture(scope="module")
def samples(tmp_path_factory, model):
    """(name, image path, question, raw first human text, training input_ids, labels) per builder's row."""
    root = tmp_path_factory.mktemp("placement")
    named = {"curate-ocr": _ocr_rows(root), "curate-som": _som_rows(root), "synth": _synth_rows(root),
             "user": _user_rows(root)}
    meta, expected = [], []
    for name, rows in named.items():
        for k, (row, image_root) in enumerate(rows):
            path = root / f"{name}-{k}.jsonl"
            path.write_text(json.dumps(row) + "\n")
            meta.append({"path": path.name, "type": "image_text", "root": str(image_root)})
            raw = row["conversations"][0]["value"]
            expected.append((f"{name}-{k}", image_root / row["image"], raw.replace("<image>", "").strip(), raw))
    (root / "mix.yaml").write_text(yaml.safe_dump({"META": meta}))
    ds = MixDataset(root / "mix.yaml", model.tokenizer, model.config.vision, max_len=None)
    assert len(ds) == len(expected)
    out = []
    for i, (name, image, question, raw) in enumerate(expected):  # one record per source, in META order
        item = ds[i]
        out.append((name, image, question, raw, item.input_ids.tolist(), item.labels.tolist()))
    return out


def _spy_prompts(monkeypatch) -> list[list[int]]:
    seen: list[list[int]] = []
    original = PromptEncoder.encode

    def encode(self, turns):
        prompt = original(self, turns)
        seen.append(list(prompt.input_ids))
        return prompt

    monkeypatch.setattr(PromptEncoder, "encode", encode)
    return seen


def _front_end_prompts(model, image: Path, question: str, monkeypatch) -> dict[str, list[int]]:
    """The prompt ids each inference path builds for one image and one question."""
    seen = _spy_prompts(monkeypatch)
    prompts = {}
    model.chat(str(image), question, max_new_tokens=1)
    prompts["chat"] = seen.pop()
    model.generate([{"images": str(image), "question": question}], max_new_tokens=1)
    prompts["generate"] = seen.pop()
    generate_answers(model, [{"question": question, "images": [str(image)]}], max_new_tokens=1)  # `sphinx-x eval`
    prompts["eval"] = seen.pop()
    with Image.open(image) as im:
        uri = data_uri(im.convert("RGB"))
    req = ChatCompletionRequest(messages=[{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": uri}}, {"type": "text", "text": question}]}])
    prompts["serve"] = PromptEncoder.for_model(model).encode(request_turns(req, ServerSettings())).input_ids
    lmms = SphinxXLmms(model=model)
    prompts["lmms"] = PromptEncoder.for_model(model).encode(lmms._turns(f"<image>\n{question}", [str(image)])).input_ids
    return prompts


@pytest.mark.slow
def test_every_builder_and_every_front_end_put_the_image_right_after_bos(model, samples, monkeypatch):
    tok = model.tokenizer
    text_only = DialogueEncoder(tok, model.config.template)
    assert {name.rsplit("-", 1)[0] for name, *_ in samples} == {"curate-ocr", "curate-som", "synth", "user"}
    for name, image, question, _, ids, labels in samples:
        with Image.open(image) as im:
            n = visual_token_count(im.width, im.height, model.config.vision)
        # BOS, the whole image run, then exactly the template's text of the question (no leftover "\n")
        assert ids[0] == tok.bos_token_id, name
        assert ids[1 : 1 + n] == [IMAGE_TOKEN_ID] * n and ids.count(IMAGE_TOKEN_ID) == n, name
        prompt_text = text_only.encode_prompt([{"role": "user", "content": question}])
        assert ids[1 + n : n + len(prompt_text)] == prompt_text[1:], name
        first_answer = n + len(prompt_text)
        assert labels[first_answer] != IGNORE_INDEX and all(x == IGNORE_INDEX for x in labels[:first_answer]), name
        # every inference path asks the same image + question with exactly the training prefix
        for front_end, prompt in _front_end_prompts(model, image, question, monkeypatch).items():
            assert prompt == ids[:first_answer], f"{name} vs {front_end}"


def test_our_builders_write_no_placeholder(samples):
    raw = {name: text for name, _, _, text, *_ in samples}
    for name in ("curate-ocr-0", "curate-som-0", "synth-0"):
        assert "<image>" not in raw[name] and raw[name] == raw[name].strip(), name
    assert raw["user-0"].startswith("<image>\n") and raw["user-1"].endswith("\n<image>")  # the user rows do


def test_placeholders_inside_the_text_still_place_each_image_where_it_stands(model):
    enc = DialogueEncoder(model.tokenizer, model.config.template)
    user = [{"role": "user", "content": "Compare <image> with <image> please."}, {"role": "assistant", "content": "ok"}]
    ids = enc.encode(user, [3, 2]).input_ids
    first = ids.index(IMAGE_TOKEN_ID)
    assert first > 1 and model.tokenizer.decode(ids[1:first]).rstrip().endswith("Human: Compare")
    # a later turn's image stays in that turn; only edge placeholders of the first question move
    later = [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Hello."},
             {"role": "user", "content": "<image>\nAnd this?"}, {"role": "assistant", "content": "A cat."}]
    assert images_after_bos(later, 1) == later
    assert enc.encode(later, [4]).input_ids.index(IMAGE_TOKEN_ID) > 1
    lead = [{"role": "user", "content": "<image>\n<image>\nBoth?"}, {"role": "assistant", "content": "Yes."}]
    assert images_after_bos(lead, 2)[0]["content"] == "Both?"
    # a count mismatch is left for the encoder to report
    with pytest.raises(ValueError, match="1 <image> placeholder"):
        enc.encode([{"role": "user", "content": "<image>\nq"}, {"role": "assistant", "content": "a"}], [3, 3])
