"""The stand-ins shipped in the package (size, format, nano's dims, the model config that uses them) and
`sphinx-x build-standins` (a tiny set built from nothing loads the same way)."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from sphinx_x.cli import main as cli_main
from sphinx_x.config import SphinxXConfig
from sphinx_x.standins import (
    CONNECTOR_NAME,
    MANIFEST_NAME,
    StandinsError,
    has_standins,
    model_config,
    nano_model_config,
    nano_model_yaml,
    read_manifest,
    standins_dir,
)
from sphinx_x.standins.build import BuildSettings, build_standins, command_line
from sphinx_x.standins.expert_reading import ReadingSettings
from sphinx_x.standins.settings import LlmPretrainConfig, LookupWarmupConfig

MAX_BYTES = 20 * 10**6  # what the package may ship
NANO = SphinxXConfig.from_name("nano")
NO_WARMUP = LookupWarmupConfig(steps=0)  # sets built without the LLM's lookup warm-up (tests/test_lookup_warmup.py)
NO_READING = ReadingSettings(steps=0)  # sets built without the experts' reading stage


def _safetensors_shapes(path) -> dict[str, tuple[int, ...]]:
    with safe_open(str(path), framework="pt") as f:
        return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}


def test_the_packaged_set_is_small_complete_and_has_nano_dims():
    import hashlib

    directory = standins_dir("nano")
    assert has_standins()
    manifest = read_manifest()
    files = [p for p in directory.rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) <= MAX_BYTES
    assert {p.name for p in directory.iterdir()} >= {MANIFEST_NAME, "MODEL_CARD.md", "experts", "llm", CONNECTOR_NAME}
    assert manifest["connector"] == CONNECTOR_NAME
    for rel, meta in manifest["files"].items():  # the manifest describes exactly what is there
        data = (directory / rel).read_bytes()
        assert len(data) == meta["bytes"] and hashlib.sha256(data).hexdigest() == meta["sha256"], rel
    # experts: timm state dicts with exactly the shapes of nano's trunks
    from sphinx_x.vision import VisionExpert

    for e in NANO.vision.experts:
        trunk = VisionExpert(e, NANO.vision.feature_grid).trunk
        expected = {k: tuple(v.shape) for k, v in trunk.state_dict().items()}
        assert _safetensors_shapes(directory / manifest["experts"][e.name]) == expected, e.name
    # the LLM: a transformers Llama directory with nano's dims
    from sphinx_x.llm import llm_config_from_pretrained

    loaded = llm_config_from_pretrained(directory / manifest["llm"])
    for key in ("arch", "vocab_size", "hidden_size", "num_layers", "num_heads", "num_kv_heads", "intermediate_size",
                "tie_word_embeddings", "rope_theta"):
        assert getattr(loaded, key) == getattr(NANO.llm, key), key
    shapes = _safetensors_shapes(directory / manifest["llm"] / "model.safetensors")
    assert shapes["model.embed_tokens.weight"] == (NANO.llm.vocab_size, NANO.llm.hidden_size)
    # the connector of its lookup warm-up: exactly nano's projector and image tags
    from sphinx_x.connector import is_connector_key
    from sphinx_x.model import SphinxX

    built = SphinxX.from_config_without_weights(NANO).state_dict()
    assert _safetensors_shapes(directory / CONNECTOR_NAME) == {
        k: tuple(v.shape) for k, v in built.items() if is_connector_key(k)}
    # the model card says how they were made and what they score
    card = (directory / "MODEL_CARD.md").read_text()
    assert manifest["made"]["command"] in card and "sphinx-x build-standins" in card
    for name, acc in manifest["scores"]["experts_held_out_shape_accuracy"].items():
        assert f"| expert {name} |" in card and f"{100 * acc:.1f}%" in card


def test_the_defaults_build_the_packaged_set():
    """The packaged set's from-nothing command, parsed by the CLI, asks for the build the defaults make (so
    `sphinx-x build-standins --out DIR` without flags rebuilds what ships)."""
    import shlex

    from sphinx_x.cli import build_parser
    from sphinx_x.commands.build_standins import settings_from_args

    rebuild = read_manifest()["made"]["rebuild_command"]
    assert rebuild.startswith("sphinx-x build-standins ")
    args = build_parser().parse_args(shlex.split(rebuild)[1:])
    assert command_line(settings_from_args(args)) == command_line(BuildSettings(seed=0))
    # a flag away from the defaults shows
    assert command_line(settings_from_args(build_parser().parse_args(
        [*shlex.split(rebuild)[1:], "--warmup-read-steps", "0"]))) != command_line(BuildSettings(seed=0))
    # and what the manifest records the stages ran with: the defaults (a set made under older defaults fails here)
    made, default_read, default_warm = read_manifest()["made"], ReadingSettings(), LookupWarmupConfig()
    reading = made["experts"].get("reading", {"steps": 0})
    assert reading["steps"] == default_read.steps
    if default_read.steps:
        assert (reading["lr"], reading["keep_weight"], tuple(reading["experts"])) == (
            default_read.lr, default_read.keep_weight, default_read.experts)
    warm = made["llm"]["lookup_warmup"]
    for key in ("steps", "samples", "text_steps", "box_steps", "box_mix_steps", "text_share", "rec_steps",
                "rec_rounds", "read_steps", "kinds", "box_mix_kinds", "rec_kinds", "read_kinds"):
        value = warm.get(key, 0)
        assert (tuple(value) if isinstance(value, list) else value) == getattr(default_warm, key), key


def test_nano_model_config_loads_the_packaged_weights_frozen(tmp_path):
    from sphinx_x.model import SphinxX

    directory = standins_dir("nano").resolve()
    manifest = read_manifest()
    config = nano_model_config()
    assert config.llm.path == str(directory / "llm")
    yaml_path = nano_model_yaml(tmp_path / "nano-standins.yaml")
    assert SphinxXConfig.load(yaml_path) == config
    model = SphinxX(SphinxXConfig.resolve(str(yaml_path)))  # as the trainer resolves model.preset
    for e in model.visual.experts.values():
        assert e.cfg.frozen and not any(p.requires_grad for p in e.trunk.parameters())
        saved = load_file(str(directory / manifest["experts"][e.cfg.name]))
        assert all(torch.equal(saved[k], v) for k, v in e.trunk.state_dict().items()), e.cfg.name
    saved = load_file(str(directory / "llm" / "model.safetensors"))
    state = model.llm.state_dict()
    assert all(torch.equal(v, state[k]) for k, v in saved.items())
    assert config.connector == str(directory / CONNECTOR_NAME)
    saved, state = load_file(config.connector), model.state_dict()
    assert saved and all(torch.equal(v, state[k]) for k, v in saved.items())
    # apart from the weight paths, it is the nano preset
    plain = config.to_dict()
    plain["llm"]["path"], plain["connector"] = None, None
    for e in plain["vision"]["experts"]:
        e["checkpoint"], e["frozen"] = None, False
    assert plain == NANO.to_dict()


def test_missing_or_broken_sets_are_named(tmp_path):
    assert not has_standins(tmp_path)
    with pytest.raises(StandinsError, match="manifest.json: missing"):
        read_manifest(tmp_path)
    (tmp_path / MANIFEST_NAME).write_text(json.dumps({"preset": "nano", "experts": {"dinov2": "experts/d.st"},
                                                      "llm": "llm"}))
    with pytest.raises(StandinsError, match=r"experts/d.st: missing \(listed in"):
        read_manifest(tmp_path)
    (tmp_path / MANIFEST_NAME).write_text("[]")
    with pytest.raises(StandinsError, match="not a stand-ins manifest"):
        model_config(tmp_path)


@pytest.mark.slow
def test_build_writes_a_set_that_loads_like_the_packaged_one(tmp_path, monkeypatch):
    from sphinx_x.model import SphinxX
    from sphinx_x.train import expert_pretrain

    monkeypatch.setattr(expert_pretrain, "HELD_OUT", 8)  # scenes in the experts' held-out score

    out = tmp_path / "standins"
    settings = BuildSettings(seed=1, expert_steps=1, expert_batch=2, expert_lr=2e-3, expert_scene_weight=0.0,
                             expert_token_weight=1.0,
                             llm=LlmPretrainConfig(steps=2, batch_size=2, seed=1, eval_per_kind=2),
                             warmup=LookupWarmupConfig(steps=2, samples=8, text_steps=1, seed=1, eval_per_kind=2,
                                                       box_steps=1, box_mix_steps=1, text_share=0.0,
                                                       kinds=("shape", "color"), box_mix_kinds=("box", "rec", "color"),
                                                       rec_steps=1, rec_rounds=2, rec_kinds=("rec", "shape"),
                                                       read_steps=1, read_kinds=("ocr", "rec")),
                             reading=ReadingSettings(steps=1, batch_size=2, keep_weight=0.5))
    logged = []
    threads = torch.get_num_threads()
    manifest = build_standins(out, settings, log=logged.append)
    assert json.loads(json.dumps(manifest)) == read_manifest(out) and has_standins(out)
    assert manifest["made"]["command"] == "sphinx-x build-standins --out DIR --seed 1 --expert-steps 1 --llm-steps 2" \
        " --expert-lr 0.002 --expert-scene-weight 0 --expert-read-steps 1 --expert-read-keep-weight 0.5" \
        " --llm-batch 2 --warmup-steps 2" \
        " --warmup-samples 8" \
        " --warmup-text-steps 1 --warmup-box-steps 1 --warmup-box-mix-steps 1 --warmup-text-share 0.0" \
        " --warmup-rec-steps 1 --warmup-rec-rounds 2 --warmup-read-steps 1 --warmup-kinds shape,color" \
        " --warmup-box-mix-kinds box,rec,color --warmup-rec-kinds rec,shape --warmup-read-kinds ocr,rec"
    assert manifest["scores"]["experts_held_out_shape_accuracy"] == {}  # no scene-level probe was trained
    assert set(manifest["scores"]["experts_held_out_token_accuracy"]) == {"clip_convnext", "dinov2"}
    assert manifest["made"]["llm"]["steps"] == 2 and manifest["made"]["experts"]["steps"] == 1
    assert set(manifest["scores"]["llm_held_out_answer_accuracy"]) == {"text", "arithmetic", "scene"}
    assert not any(out.parent.glob(".tmp-*"))  # written atomically, nothing left behind
    # the experts' reading stage tuned the ConvNeXt only, from the scene-pretrained experts, on its own seed stream
    assert any("[2/4] the experts' reading stage (clip_convnext): 1 steps of 2 scenes and 1 OCR pages" in line
               for line in logged)
    read = manifest["made"]["experts"]["reading"]
    assert (read["steps"], read["experts"], read["seed"], read["ocr_weight"]) == (1, ["clip_convnext"], 2, 1.0)
    assert read["keep_weight"] == 0.5 and "the scenes' tokens held near the starting trunk's x 0.5" in \
        (out / "MODEL_CARD.md").read_text()
    for key in ("experts_held_out_word_accuracy", "experts_held_out_word_view_accuracy",
                "experts_held_out_keep_cosine"):
        assert set(manifest["scores"][key]) == {"clip_convnext"}
    assert any("[3/4] pretraining nano's LLM" in line for line in logged)
    # the LLM's lookup warm-up ran after its text pretraining, and the set records it
    assert any("[4/4] nano's LLM: lookup warm-up (2 one-stage steps on 8 single shape / color questions, then 1 on "
               "boxes of a scene's only object and 1 on those, boxes among 2-4 and the lookups together, then 2 x 1 on "
               "rec / shape, then 1 on ocr / rec; experts frozen;" in line for line in logged)
    warm = manifest["made"]["llm"]["lookup_warmup"]
    assert (warm["steps"], warm["samples"], warm["text_steps"], warm["kinds"]) == (2, 8, 1, ["shape", "color"])
    assert (warm["box_steps"], warm["box_mix_steps"], warm["box_mix_kinds"]) == (1, 1, ["box", "rec", "color"])
    assert (warm["rec_steps"], warm["rec_rounds"], warm["rec_kinds"]) == (1, 2, ["rec", "shape"])
    assert (warm["read_steps"], warm["read_kinds"]) == (1, ["ocr", "rec"])
    card = (out / "MODEL_CARD.md").read_text()
    assert "then 2 rounds of 1 steps, each from the model before with a fresh schedule and fresh questions, on rec, " \
        "shape in turn" in card
    assert "then a reading stage of 1 steps on ocr, rec in turn" in card
    # scored on both lookups, both boxes (the named object's among 2-4, a lone object's) and the reading stage's words
    assert set(manifest["scores"]["llm_lookup_warmup_accuracy"]) == {"shape", "color", "rec", "box", "ocr"}
    assert set(manifest["scores"]["llm_text_pretraining_answer_accuracy"]) == {"text", "arithmetic", "scene"}
    summary = json.loads((out / "llm" / "pretrain_llm.json").read_text())
    assert summary["lookup_warmup"]["steps"] == 2 and summary["text_pretraining"]["steps"] == 2
    assert summary["steps"] == 1  # the text steps after the warm-up
    assert not any(out.parent.glob(".warmup-*"))  # its work folder (corpus, trained model) is removed
    model = SphinxX(model_config(out))
    for e in model.visual.experts.values():
        saved = load_file(str(out / "experts" / f"{e.cfg.name}.safetensors"))
        assert all(torch.equal(saved[k], v) for k, v in e.trunk.state_dict().items())
    saved = load_file(str(out / "llm" / "model.safetensors"))
    assert all(torch.equal(v, model.llm.state_dict()[k]) for k, v in saved.items())
    # the warm-up's projector and tags are in the set, and a model from the set starts from them
    assert manifest["connector"] == CONNECTOR_NAME and CONNECTOR_NAME in manifest["files"]
    saved = load_file(str(out / CONNECTOR_NAME))
    assert set(saved) >= {"image_start", "skip_token", "visual.projector.0.weight"}
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in saved.items())
    card = (out / "MODEL_CARD.md").read_text()
    assert "--expert-steps 1 --llm-steps 2" in card and "2 AdamW steps of 2 samples" in card
    assert "(the mixed stage's kinds in turn: box, rec, color)" in card and "Then 1 steps of the text" in card
    assert "lr 0.002" in card and "per-token x 1" in card and "scene-level" not in card
    assert "LLM lookup warm-up, after the text pretraining" in card and "2 steps on 8 single questions" in card
    assert "| LLM after its lookup warm-up (with the warm-up's own projector) | shape of the object" in card
    assert "then 1 steps of boxes of a scene's only object, and 1 steps of those" in card
    assert "| box of a scene's only object, IoU >= 0.5 |" in card
    assert "- Experts' reading stage (clip_convnext; sphinx_x/standins/expert_reading.py): fine-tuned from the " \
        "experts above, 1 AdamW steps of 2 scenes and 1 synth-bench OCR pages, lr 0.002, seed 2" in card
    assert "| expert clip_convnext | names the word from the sub-image view that holds it |" in card

    # the warm-up changed the LLM: the same set without it has the same experts and a different LLM (at the same
    # thread count: the warm-up's training sets its own, and the reading stage's bits depend on it)
    torch.set_num_threads(threads)
    plain = build_standins(tmp_path / "plain", dataclasses.replace(settings, warmup=NO_WARMUP),
                           log=lambda m: None)
    assert "lookup_warmup" not in plain["made"]["llm"] and "--warmup-steps 0" in plain["made"]["command"]
    assert "llm_lookup_warmup_accuracy" not in plain["scores"]
    assert "connector" not in plain and not (tmp_path / "plain" / CONNECTOR_NAME).exists()
    assert SphinxXConfig.from_dict(model_config(tmp_path / "plain").to_dict()).connector is None
    for rel in manifest["experts"].values():
        assert plain["files"][rel]["sha256"] == manifest["files"][rel]["sha256"]
    # without the reading stage the DINOv2 is the same and the ConvNeXt is the scene-pretrained one
    unread = build_standins(tmp_path / "unread", dataclasses.replace(settings, warmup=NO_WARMUP, reading=NO_READING),
                            log=lambda m: None)
    assert "reading" not in unread["made"]["experts"] and "--expert-read-steps 0" in unread["made"]["command"]
    assert "--expert-read-keep-weight" not in unread["made"]["command"]  # named only for a stage that runs
    for name, rel in manifest["experts"].items():
        same = unread["files"][rel]["sha256"] == manifest["files"][rel]["sha256"]
        assert same == (name == "dinov2"), name
    # experts copied from a set that had the stage keep it: it does not run again, and the commands say it ran
    logged.clear()
    copy = build_standins(tmp_path / "copy", BuildSettings(seed=1, experts_from=str(out), llm=settings.llm,
                                                           warmup=NO_WARMUP), log=logged.append)
    assert copy["made"]["experts"]["reading"] == read and not any("reading stage" in line for line in logged)
    assert "--expert-read-steps 1 --expert-read-keep-weight 0.5" in copy["made"]["rebuild_command"]
    convnext = manifest["experts"]["clip_convnext"]
    assert copy["files"][convnext] == manifest["files"][convnext]
    assert plain["files"]["llm/model.safetensors"]["sha256"] != manifest["files"]["llm/model.safetensors"]["sha256"]
    # a warmed LLM is not a `pretrain-llm` output: --llm-from refuses it
    with pytest.raises(ValueError, match="has had its lookup warm-up already"):
        build_standins(tmp_path / "again", BuildSettings(seed=1, llm_from=str(out / "llm")), log=print)


@pytest.mark.slow
def test_build_with_experts_from_copies_them_and_says_so(tmp_path, monkeypatch):
    from sphinx_x.train import expert_pretrain

    monkeypatch.setattr(expert_pretrain, "HELD_OUT", 8)
    first = tmp_path / "first"
    llm = LlmPretrainConfig(steps=1, batch_size=2, seed=1, eval_per_kind=2)
    made = build_standins(first, BuildSettings(seed=1, expert_steps=1, expert_batch=2, llm=llm, warmup=NO_WARMUP,
                                               reading=NO_READING), log=lambda m: None)
    second = tmp_path / "second"
    logged = []
    manifest = build_standins(second, BuildSettings(seed=1, experts_from=str(first), llm=llm, warmup=NO_WARMUP,
                                                    reading=NO_READING), log=logged.append)
    for name, rel in made["experts"].items():
        assert (second / rel).read_bytes() == (first / rel).read_bytes(), name
        assert manifest["files"][rel] == made["files"][rel]
    assert manifest["scores"]["experts_held_out_shape_accuracy"] == made["scores"]["experts_held_out_shape_accuracy"]
    e = manifest["made"]["experts"]
    assert e["steps"] == 1 and e["copied_from"]["command"] == made["made"]["command"]
    assert manifest["made"]["command"].startswith(f"sphinx-x build-standins --out DIR --seed 1 --experts-from {first}")
    assert "--experts-from" not in manifest["made"]["rebuild_command"]
    assert " --expert-steps 1 " in manifest["made"]["rebuild_command"]  # the copied experts' settings, not defaults
    assert any("copying nano's vision experts" in line for line in logged)
    card = (second / "MODEL_CARD.md").read_text()
    assert "copied from an earlier set" in card and manifest["made"]["rebuild_command"] in card
    # the set may rebuild its own LLM in place; a tampered expert file is refused
    again = build_standins(second, BuildSettings(seed=1, experts_from=str(second), llm=llm, warmup=NO_WARMUP,
                                                 reading=NO_READING), log=lambda m: None)
    assert (second / made["experts"]["dinov2"]).read_bytes() == (first / made["experts"]["dinov2"]).read_bytes()
    # a copy of a copy names the set the experts were trained in, not the one in between
    assert again["made"]["experts"]["copied_from"] == e["copied_from"]
    assert again["made"]["experts"]["copied_from"]["command"] == made["made"]["command"]
    # an LLM made alone by pretrain-llm is copied with the settings its summary records
    from sphinx_x.standins.llm_pretrain import build_nano_llm, pretrain_llm, write_llm_dir
    from sphinx_x.tokenizer import load_tokenizer

    alone_cfg = LlmPretrainConfig(steps=1, batch_size=2, seed=1, eval_per_kind=2, arithmetic_share=0.25)
    tok, llm_alone = load_tokenizer("nano"), build_nano_llm("nano", seed=1)
    write_llm_dir(llm_alone, tok, tmp_path / "llm-alone", alone_cfg, pretrain_llm(llm_alone, tok, alone_cfg))
    both = build_standins(tmp_path / "both", BuildSettings(seed=1, experts_from=str(first), warmup=NO_WARMUP,
                                                          reading=NO_READING, llm_from=str(tmp_path / "llm-alone")),
                          log=lambda m: None)
    assert (tmp_path / "both" / "llm" / "model.safetensors").read_bytes() == \
        (tmp_path / "llm-alone" / "model.safetensors").read_bytes()
    assert both["made"]["llm"]["arithmetic_share"] == 0.25 and both["made"]["llm"]["steps"] == 1
    with pytest.raises(ValueError, match="pretrained with seed 1, the set's seed is 0"):
        build_standins(tmp_path / "x", BuildSettings(seed=0, llm_from=str(tmp_path / "llm-alone")), log=print)
    assert both["made"]["command"].endswith(f"--llm-from {tmp_path / 'llm-alone'} --warmup-steps 0")
    assert "--expert-read-steps 0 " in both["made"]["command"]  # no reading stage: not the default (800)
    assert "--llm-steps 1" in both["made"]["rebuild_command"] and "--arithmetic-share 0.25" in \
        both["made"]["rebuild_command"] and "-from" not in both["made"]["rebuild_command"]
    assert "`sphinx-x pretrain-llm --out DIR --seed 1 --steps 1 --batch 2 --lr 0.001 --arithmetic-share 0.25 " \
        "--scene-share 0`, and copied in (`--llm-from`)" in (tmp_path / "both" / "MODEL_CARD.md").read_text()
    (second / made["experts"]["dinov2"]).write_bytes(b"not the listed bytes")
    with pytest.raises(ValueError, match="sha256 differs"):
        build_standins(tmp_path / "third", BuildSettings(seed=1, experts_from=str(second), llm=llm,
                                                         warmup=NO_WARMUP, reading=NO_READING), log=print)
    assert not (tmp_path / "third").exists()


def test_the_command_names_the_experts_settings_when_the_llm_is_copied():
    """The experts are pretrained in the run even when the LLM comes from --llm-from: their settings stay in it."""
    assert command_line(BuildSettings(seed=0, expert_steps=5, expert_lr=1e-3, expert_token_weight=0.0,
                                      llm_from="L")) == \
        "sphinx-x build-standins --out DIR --seed 0 --expert-steps 5 --expert-lr 0.001 --expert-token-weight 0 " \
        "--llm-from L"
    assert command_line(BuildSettings(seed=0, experts_from="E", llm_from="L")) == \
        "sphinx-x build-standins --out DIR --seed 0 --experts-from E --llm-from L"
    # the warm-up's settings: named when they differ from the defaults, its text steps only when it runs
    assert command_line(BuildSettings(seed=0, experts_from="E", llm_from="L",
                                      warmup=LookupWarmupConfig(steps=0, text_steps=5))).endswith(
        "--llm-from L --warmup-steps 0")
    assert command_line(BuildSettings(seed=0, experts_from="E", llm_from="L",
                                      warmup=LookupWarmupConfig(samples=9, text_steps=5))).endswith(
        "--llm-from L --warmup-samples 9 --warmup-text-steps 5")


def test_cli_refuses_outputs_it_did_not_write(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    assert cli_main(["build-standins", "--out", str(tmp_path / "file")]) == 2
    assert "not a directory" in capsys.readouterr().err
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    assert cli_main(["build-standins", "--out", str(tmp_path / "other")]) == 2
    assert "holds no manifest.json; refusing to replace it" in capsys.readouterr().err
    assert cli_main(["pretrain-llm", "--out", str(tmp_path / "other")]) == 2
    assert "holds no pretrain_llm.json" in capsys.readouterr().err
    assert cli_main(["pretrain-llm", "--out", str(tmp_path / "x"), "--scene-share", "2"]) == 2
    assert "scene_share must be in [0, 1]" in capsys.readouterr().err
    assert cli_main(["build-standins", "--out", str(tmp_path / "x"), "--experts-from", str(tmp_path / "none")]) == 2
    assert "--experts-from" in capsys.readouterr().err and not (tmp_path / "x").exists()
    # the warm-up's kinds reach its settings, which name what is wrong
    assert cli_main(["build-standins", "--out", str(tmp_path / "x"), "--warmup-read-kinds", "ocr, count"]) == 2
    assert "read_kinds must be among color, shape, rec, box, ocr, got ['ocr', 'count']" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli_main(["build-standins", "--out", str(tmp_path / "x"), "--expert-read-keep-weight", "-1"])
    assert "expected a non-negative number, got -1.0" in capsys.readouterr().err
    assert (tmp_path / "other" / "notes.txt").read_text() == "mine"


@pytest.mark.slow
def test_pretrain_llm_cli_writes_an_llm_directory(tmp_path, capsys):
    out = tmp_path / "llm"
    rc = cli_main(["pretrain-llm", "--out", str(out), "--steps", "2", "--batch", "2", "--eval-per-kind", "2",
                   "--quiet"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "held-out answers right: text" in printed and f"LLM directory: {out}" in printed
    summary = json.loads((out / "pretrain_llm.json").read_text())
    assert summary["steps"] == 2 and summary["config"]["batch_size"] == 2
    config = NANO.with_overrides({"llm": {"path": str(out)}})
    from sphinx_x.model import SphinxX

    assert SphinxX(config).llm.config.hidden_size == NANO.llm.hidden_size
    # a second run replaces its own output
    assert cli_main(["pretrain-llm", "--out", str(out), "--steps", "1", "--batch", "2", "--eval-per-kind", "1",
                     "--quiet"]) == 0
    assert json.loads((out / "pretrain_llm.json").read_text())["steps"] == 1
