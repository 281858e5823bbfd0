"""The captioning path of `sphinx-x curate som` against `sphinx-x serve` (a separate process on
127.0.0.1, with an API key) running a `nano` model made by `sphinx-x init nano`.

The nano model has random weights, so its captions are noise: what is checked is the protocol
(the marked image as a data: URI is accepted, the key is sent, an answer comes back, it is cached
and reused) and that samples stay well formed whatever the captioner says (marks it does not
describe fall back to the templated description and are counted)."""

from __future__ import annotations

import json

import pytest
from _helpers.server import cli_server, free_port

from sphinx_x.cli import main
from sphinx_x.data.geometry import parse_marks

API_KEY = "curate-test-key"


@pytest.fixture(scope="module")
def nano_server(tmp_path_factory):
    model_dir = tmp_path_factory.mktemp("nano") / "model"
    assert main(["init", "nano", "--out", str(model_dir)]) == 0
    port = free_port()
    log = tmp_path_factory.mktemp("serve_log") / "serve.log"
    url = f"http://127.0.0.1:{port}"
    args = ["serve", "--model", str(model_dir), "--host", "127.0.0.1", "--port", str(port), "--model-name", "nano",
            "--device", "cpu", "--max-tokens", "64"]
    with cli_server(args, f"{url}/health", log, timeout_s=240, env={"SPHINX_X_API_KEY": API_KEY}):
        yield url


def _curate(ann, images, out, url, capsys) -> dict:
    code = main(["curate", "som", "--annotations", str(ann), "--images", str(images), "--out", str(out),
                 "--captioner-url", url, "--captioner-model", "nano", "--api-key", API_KEY,
                 "--captioner-max-tokens", "12", "--no-progress", "--json"])
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert code == 0, summary
    return summary


@pytest.mark.slow
def test_som_captioned_by_sphinx_x_serve_nano(nano_server, tmp_path, capsys, two_block_coco):
    ann, images = two_block_coco
    out = tmp_path / "out"
    summary = _curate(ann, images, out, nano_server, capsys)
    assert summary["captioner"]["requests"] == 1 and "failures" not in summary["captioner"]
    assert summary["samples"] == 1
    counts = summary["counts"]
    assert counts.get("marks:captioned", 0) + counts.get("marks:caption_missing_template_used", 0) == 2
    sample = json.loads((out / "som.jsonl").read_text())
    question, answer = (t["value"] for t in sample["conversations"])
    assert parse_marks(answer) == parse_marks(question) and [i for i, _ in parse_marks(answer)] == [1, 2]
    (entry,) = (out / "caption_cache").rglob("*.json")
    assert json.loads(entry.read_text())["model"] == "nano"

    again = _curate(ann, images, out, nano_server, capsys)  # resumed from the cache: no request
    assert again["captioner"] == {"cache_hits": 1}
    assert json.loads((out / "som.jsonl").read_text()) == sample


@pytest.mark.slow
def test_wrong_api_key_is_reported_not_retried(nano_server, tmp_path, capsys, two_block_coco):
    ann, images = two_block_coco
    code = main(["curate", "som", "--annotations", str(ann), "--images", str(images), "--out", str(tmp_path / "o"),
                 "--captioner-url", nano_server, "--captioner-model", "nano", "--api-key", "wrong",
                 "--no-progress", "--json"])
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert code == 1 and summary["samples"] == 0
    assert summary["captioner"] == {"requests": 1, "failures": 1}
    assert "401" in summary["problems"][0]["reason"]
