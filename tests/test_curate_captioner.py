"""The captioning path of `curate som` against a fake OpenAI-compatible FastAPI server on 127.0.0.1:
the marked image arrives as a data: URI, a 500 is retried, a 400 is not, and a rerun is served from
the on-disk cache without any request."""

from __future__ import annotations

import base64
import io
import json
import re
import socket
import threading
import time

import pytest
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from PIL import Image

from sphinx_x.curate.captioner import Captioner, CaptionError, api_base
from sphinx_x.curate.som import build_som
from sphinx_x.data.geometry import parse_marks


class FakeServer:
    """`POST /v1/chat/completions`: fails with `fail_status` for the first `failures` calls, then
    answers "Mark i: fake caption i" for every mark the prompt announces."""

    def __init__(self):
        self.calls: list[dict] = []
        self.failures = 0
        self.fail_status = 500
        app = FastAPI()

        @app.post("/v1/chat/completions")
        async def chat(request: Request):
            body = await request.json()
            self.calls.append(body)
            if self.failures > 0:
                self.failures -= 1
                return JSONResponse({"error": {"message": "boom", "type": "server_error"}},
                                    status_code=self.fail_status)
            text = next(p["text"] for p in body["messages"][0]["content"] if p["type"] == "text")
            n = int(re.search(r"has (\d+) numbered marks", text).group(1))
            answer = "\n".join(f"Mark {i}: fake caption {i}." for i in range(1, n + 1))
            return {"id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
                    "choices": [{"index": 0, "finish_reason": "stop",
                                 "message": {"role": "assistant", "content": answer}}],
                    "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="error"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self):
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("fake OpenAI server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(timeout=10)


@pytest.fixture()
def fake():
    with FakeServer() as server:
        yield server


def test_api_base():
    assert api_base("http://h:1") == "http://h:1/v1"
    assert api_base("http://h:1/v1/") == "http://h:1/v1"


def test_captioned_som_with_retry_and_cache(fake, tmp_path, two_block_coco):
    ann, images = two_block_coco
    out = tmp_path / "out"
    fake.failures = 1  # the first call gets a 500
    cap = Captioner(fake.url, "fake-model", cache_dir=out / "caption_cache", backoff_s=0.01)
    summary = build_som(ann, images, out, captioner=cap, progress=False)
    assert len(fake.calls) == 2 and cap.stats["retries"] == 1 and cap.stats["requests"] == 2
    assert summary["counts"]["marks:captioned"] == 2

    request = fake.calls[-1]
    assert request["model"] == "fake-model"
    url = next(p["image_url"]["url"] for p in request["messages"][0]["content"] if p["type"] == "image_url")
    assert url.startswith("data:image/jpeg;base64,")
    sent = base64.b64decode(url.split(",", 1)[1])
    marked = next((out / "marked").glob("*.jpg")).read_bytes()
    assert sent == marked  # the captioner sees the MARKED image
    prompt = next(p["text"] for p in request["messages"][0]["content"] if p["type"] == "text")
    assert "Mark 1: red block" in prompt and "Mark 2: blue block" in prompt

    sample = json.loads((out / "som.jsonl").read_text())
    assert sample["image"] == "a.png"  # trained on the unmarked image
    answer = sample["conversations"][1]["value"]
    assert answer.split("\n")[0].endswith(": fake caption 1.") and answer.split("\n")[1].endswith(": fake caption 2.")
    assert [i for i, _ in parse_marks(answer)] == [1, 2]
    assert parse_marks(answer) == parse_marks(sample["conversations"][0]["value"])

    # Rerun with a fresh client: everything comes from the cache, no request is made.
    again = Captioner(fake.url, "fake-model", cache_dir=out / "caption_cache", backoff_s=0.01)
    build_som(ann, images, out, captioner=again, progress=False)
    assert len(fake.calls) == 2 and again.stats["cache_hits"] == 1 and again.stats["requests"] == 0
    assert json.loads((out / "som.jsonl").read_text()) == sample


def test_client_errors_are_not_retried_and_failures_are_counted(fake, tmp_path, two_block_coco):
    ann, images = two_block_coco
    fake.failures, fake.fail_status = 5, 400
    cap = Captioner(fake.url, "m", backoff_s=0.01)
    with pytest.raises(CaptionError, match="400"):
        cap.caption(b"\xff\xd8fake", "hello")
    assert len(fake.calls) == 1
    fake.fail_status = 503  # transient, but more failures than retries: reported, sample not written
    fake.failures = 10
    cap = Captioner(fake.url, "m", max_retries=2, backoff_s=0.01)
    summary = build_som(ann, images, tmp_path / "out", captioner=cap, progress=False)
    assert cap.stats["requests"] == 3 and cap.stats["failures"] == 1
    assert summary["samples"] == 0 and summary["counts"]["images:caption_failed"] == 1
    assert "503" in summary["problems"][0]["reason"]


def test_unreachable_server_is_an_error_after_retries(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    cap = Captioner(f"http://127.0.0.1:{port}", "m", max_retries=1, backoff_s=0.01, timeout_s=5)
    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, format="PNG")
    with pytest.raises(CaptionError, match="APIConnectionError"):
        cap.caption(buf.getvalue(), "hi", mime="image/png")
    assert cap.stats["requests"] == 2 and cap.stats["retries"] == 1
