"""Parity with the official LLaMA2-Accessory SPHINX code on every released architecture.

`tests/fixtures/accessory/<arch>/` holds tiny checkpoints in the released layout and the outputs of the
official code on them (made by scripts/accessory_reference/make_fixtures.py, which runs the official
model classes on CPU; the MoE fixtures' expert FFNs are an independent dense implementation of the
official routing math because the official one needs CUDA kernels). Each fixture is converted with
`sphinx-x convert accessory` and must reproduce, in float32:
- the official prompt tokens and the logits at every text position (max |diff| <= 1e-4), for a square,
  a wide and a tall picture;
- the official greedy answers (text and tokens) through our generate with the same template, including
  the stop rule: one answer per fixture ends with the tokens of "\\n###", one with eos, one at the
  token budget; llama_ens5 and llama_ens_light add a two-turn conversation (image with the first question).
The fixtures' experts are tiny stand-ins of the released ones (same families, small widths), so the
test converts with `--config`: the released preset with the stand-ins' sizes.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from sphinx_x.accessory_keys import PRESET_BY_LLAMA_TYPE
from sphinx_x.canvas import collate_images
from sphinx_x.cli import main
from sphinx_x.config import SphinxXConfig
from sphinx_x.constants import IMAGE_TOKEN_ID
from sphinx_x.infer.prompts import PromptEncoder, user_turn
from sphinx_x.model import SphinxX

FIXTURES = Path(__file__).parent / "fixtures" / "accessory"
ARCHS = [
    "llama_ens",
    "llama_ens5",
    "llama_ens_light",
    "llama_ens5_light",
    "mixtral_sparse_ens",
    "mixtral_sparse_ens5",
    "llama_ens5_light_mp2",
    "mixtral_sparse_ens_mp2",
]
LOGIT_TOLERANCE = 1e-4

# The stand-in experts of the fixtures (see make_fixtures.py: W_CONVNEXT, W_CLIP, W_DINOV2, W_QFORMER).
TINY_EXPERTS = {
    "qformer": dict(
        channels=24,
        arch_kwargs={
            "vision_config": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2),
            "qformer_config": dict(hidden_size=24, intermediate_size=48, num_hidden_layers=2, num_attention_heads=2,
                                   encoder_hidden_size=32),
        },
    ),
    "clip": dict(channels=32, arch_kwargs={"vision_cfg": {"width": 32, "layers": 2, "head_width": 16},
                                           "embed_dim": 16}),
    "clip_convnext": dict(channels=48, timm_kwargs={"depths": [1, 1, 2, 1], "dims": [8, 16, 24, 48]}),
    # dinov2 hub ViT: width 40, 2 blocks, 2 heads, SwiGLU hidden (int(160 * 2 / 3) + 7) // 8 * 8 = 112 (w12: 224)
    "dinov2": dict(channels=40, timm_kwargs={"embed_dim": 40, "depth": 2, "num_heads": 2, "mlp_ratio": 5.6,
                                             "init_values": 1.0}),
}


def tiny_config(llama_type: str, path: Path) -> Path:
    """The released preset of `llama_type` with the fixtures' stand-in expert sizes."""
    cfg = SphinxXConfig.from_name(PRESET_BY_LLAMA_TYPE[llama_type]).to_dict()
    for expert in cfg["vision"]["experts"]:
        tiny = TINY_EXPERTS[expert["name"]]
        expert["channels"] = tiny["channels"]
        for key in ("arch_kwargs", "timm_kwargs"):
            for name, value in tiny.get(key, {}).items():
                if isinstance(value, dict):
                    expert[key][name] = {**expert[key].get(name, {}), **value}
                else:
                    expert[key][name] = value
    path.write_text(json.dumps(cfg, indent=2))
    return path


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """name -> (model, reference.json, reference tensors): the fixture converted with the CLI (float32) and
    loaded, once per module."""
    root = tmp_path_factory.mktemp("accessory_parity")
    cache: dict[str, tuple[SphinxX, dict, dict]] = {}

    def get(name: str) -> tuple[SphinxX, dict, dict]:
        if name not in cache:
            src = FIXTURES / name
            llama_type = json.loads((src / "meta.json").read_text())["llama_type"]
            cfg = tiny_config(llama_type, root / f"{name}.json")
            dst = root / name
            main(["convert", "accessory", str(src), "--out", str(dst), "--dtype", "float32", "--config", str(cfg),
                  "--quiet"])
            model = SphinxX.from_pretrained(dst, dtype=torch.float32).eval()
            reference = json.loads((src / "reference.json").read_text())
            cache[name] = (model, reference, load_file(str(src / "reference.safetensors")))
        return cache[name]

    return get


def turns(case: dict, image: Image.Image) -> list[dict]:
    """The case's conversation: earlier (question, answer) pairs, the image with the first question."""
    out = []
    for question, answer in case["history"]:
        out += [user_turn(question, None if out else image), {"role": "assistant", "content": answer}]
    return out + [user_turn(case["question"], None if out else image)]


def official_rows(model: SphinxX, case: dict, image: Image.Image) -> tuple[list[int], torch.Tensor]:
    """Our prompt ids without the image positions, and our logits at the rows the official
    `compute_logits` returns: it drops the first `image_words` positions of [BOS, image block, text], so
    its rows are the last image position (the end tag, which predicts the first text token) and then
    every text token after BOS."""
    prompt = PromptEncoder.for_model(model).encode(turns(case, image))
    ids = torch.tensor([prompt.input_ids])
    with torch.no_grad():
        logits = model(ids, images=collate_images(prompt.images, model.config.vision)).logits[0]
    is_image = ids[0] == IMAGE_TOKEN_ID
    return ids[0][~is_image].tolist(), logits[int(is_image.sum()):].float()


@pytest.mark.parametrize("name", ARCHS)
def test_logits_match_the_official_code(converted, name):
    model, reference, tensors = converted(name)
    worst = 0.0
    for case in reference["cases"]:
        image = Image.open(FIXTURES / name / case["image"]).convert("RGB")
        ids, logits = official_rows(model, case, image)
        assert ids == tensors[f"input_ids.{case['name']}"].tolist(), f"{name}/{case['name']}: prompt tokens differ"
        expected = tensors[f"logits.{case['name']}"]
        assert logits.shape == expected.shape
        diff = (logits - expected).abs().max().item()
        worst = max(worst, diff)
        assert diff <= LOGIT_TOLERANCE, f"{name}/{case['name']}: max |logit diff| {diff:.3g}"
    print(f"{name}: max |logit diff| {worst:.3g}")


@pytest.mark.parametrize("name", ARCHS)
def test_greedy_answers_match_the_official_chat_path(converted, name):
    model, reference, _ = converted(name)
    endings, mismatches = set(), []
    for case in reference["cases"]:
        image = Image.open(FIXTURES / name / case["image"]).convert("RGB")
        *history, last = turns(case, image)
        (result,) = model.generate([{"question": last["content"], "images": last["images"], "history": history}],
                                   max_new_tokens=reference["max_gen_len"], temperature=0.0)
        official = case["answer_ids"]
        finish = "length" if case["ending"] == "max_gen_len" else "stop"
        if result.token_ids[: len(official)] != official:
            mismatches.append(f"{case['name']}: tokens {result.token_ids} vs official {official}")
        elif (result.text, result.finish_reason) != (case["answer"], finish):
            mismatches.append(f"{case['name']}: {result.text!r} ({result.finish_reason}) vs official "
                              f"{case['answer']!r} ({finish}, {case['ending']})")
        endings.add(case["ending"])
    assert not mismatches, f"{name}: " + "; ".join(mismatches)
    assert {"stop_sequence", "eos", "max_gen_len"} <= endings  # the fixture exercises every stop rule


def test_cli_generate_answers_as_the_official_chat_path(converted, tmp_path):
    """`sphinx-x generate` on a converted two-shard checkpoint, all cases in one left-padded batch."""
    name = "llama_ens5_light_mp2"
    model, reference, _ = converted(name)
    model.save_pretrained(tmp_path / "model")
    questions = tmp_path / "q.jsonl"
    questions.write_text("".join(
        json.dumps({"id": c["name"], "question": c["question"], "image": str(FIXTURES / name / c["image"])}) + "\n"
        for c in reference["cases"] if not c["history"]))
    answers = tmp_path / "a.jsonl"
    main(["generate", "--model", str(tmp_path / "model"), "--dtype", "float32", "--input", str(questions),
          "--output", str(answers), "--batch-size", "3", "--max-new-tokens", str(reference["max_gen_len"])])
    got = {row["id"]: row["answer"] for row in map(json.loads, answers.read_text().splitlines())}
    assert got == {c["name"]: c["answer"] for c in reference["cases"] if not c["history"]}
