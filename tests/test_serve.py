"""The OpenAI-compatible server, driven by the official `openai` client on 127.0.0.1, plus malformed requests."""

import base64
import json
import socket
import threading
import time

import httpx
import openai
import pytest
from _helpers.infer import data_uri, noise_image, png_bytes

from sphinx_x.model import SphinxX
from sphinx_x.serve.convert import generation_config
from sphinx_x.serve.engine import BatchEngine
from sphinx_x.serve.runner import BackgroundServer
from sphinx_x.serve.schemas import ChatCompletionRequest
from sphinx_x.serve.settings import ServerSettings

KEY = "test-key"
SETTINGS = dict(model_name="nano", api_key=KEY, max_image_pixels=100 * 100, max_body_bytes=200_000,
                max_tokens_limit=16, default_max_tokens=6, max_images=2, batch_wait_s=0.02)


@pytest.fixture(scope="module")
def model(nano_model_dir):
    return SphinxX.from_pretrained(nano_model_dir)


@pytest.fixture(scope="module")
def server(model):
    with BackgroundServer(model, ServerSettings(**SETTINGS)) as srv:
        yield srv


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.base_url + "/v1", api_key=KEY, max_retries=0, timeout=60)


def user(*parts):
    return [{"role": "user", "content": list(parts)}]


def text(t):
    return {"type": "text", "text": t}


def image(img_or_url):
    url = img_or_url if isinstance(img_or_url, str) else data_uri(img_or_url)
    return {"type": "image_url", "image_url": {"url": url}}


def test_models_and_health(server, client):
    assert [m.id for m in client.models.list().data] == ["nano"]
    health = httpx.get(server.base_url + "/health").json()
    assert health["status"] == "ok" and health["model"] == "nano"


@pytest.mark.parametrize("images", [[], [noise_image(64, 64, 1)], [noise_image(64, 32, 2), noise_image(40, 40, 3)]],
                         ids=["text-only", "one-image", "two-images"])
def test_completions_equal_the_python_api(model, client, images):
    r = client.chat.completions.create(model="nano", messages=user(text("What is here?"), *map(image, images)),
                                       max_tokens=6)
    expected = model.generate([{"question": "What is here?", "images": images}], max_new_tokens=6)[0]
    assert r.choices[0].message.content == expected.text
    assert r.choices[0].finish_reason == expected.finish_reason
    assert r.usage.prompt_tokens == expected.prompt_tokens
    assert r.usage.completion_tokens == expected.completion_tokens
    assert r.usage.total_tokens == expected.prompt_tokens + expected.completion_tokens


def test_streaming_matches_non_streaming(client):
    msgs = user(text("Describe it."), image(noise_image(48, 48, 4)))
    full = client.chat.completions.create(model="nano", messages=msgs, max_tokens=8)
    stream = client.chat.completions.create(model="nano", messages=msgs, max_tokens=8, stream=True,
                                            stream_options={"include_usage": True})
    chunks = list(stream)
    content = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(content) > 1 and "".join(content) == full.choices[0].message.content
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == full.choices[0].finish_reason
    assert chunks[-1].usage.completion_tokens == full.usage.completion_tokens


def test_stream_is_server_sent_events_ending_with_done(server):
    body = {"model": "nano", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3, "stream": True}
    with httpx.stream("POST", server.base_url + "/v1/chat/completions", json=body,
                      headers={"Authorization": f"Bearer {KEY}"}, timeout=60) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        lines = [ln for ln in r.iter_lines() if ln]
    assert all(ln.startswith("data: ") for ln in lines)
    assert lines[-1] == "data: [DONE]"


def post(server, body=None, content=None, key=KEY, headers=None):
    h = {"Authorization": f"Bearer {key}"} if key else {}
    h.update(headers or {})
    return httpx.post(server.base_url + "/v1/chat/completions", json=body, content=content, headers=h, timeout=60)


def ok_body(**kw):
    return {"model": "nano", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, **kw}


BAD_B64 = "data:image/png;base64,@@@not-base64@@@"
NOT_IMAGE = "data:image/png;base64," + base64.b64encode(b"definitely not an image").decode()


@pytest.mark.parametrize("case, request_kw, status, needle", [
    ("invalid JSON", dict(content=b'{"messages": [', headers={"Content-Type": "application/json"}), 400, "JSON"),
    ("messages not a list", dict(body={"messages": "hello"}), 400, "messages"),
    ("max_tokens wrong type", dict(body=ok_body(max_tokens="many")), 400, "max_tokens"),
    ("content part wrong type", dict(body={"messages": [{"role": "user", "content": [{"type": "video"}]}]}), 400,
     "messages"),
    ("bad base64", dict(body={"messages": user(text("x"), image(BAD_B64))}), 400, "base64"),
    ("non-image bytes", dict(body={"messages": user(text("x"), image(NOT_IMAGE))}), 400, "not a readable image"),
    ("oversized image", dict(body={"messages": user(text("x"), image(noise_image(120, 100)))}), 400, "exceeds"),
    ("http URL", dict(body={"messages": user(text("x"), image("http://example.com/a.png"))}), 400, "offline"),
    ("local path without root", dict(body={"messages": user(text("x"), image("/etc/passwd"))}), 400, "disabled"),
    ("too many images", dict(body={"messages": user(*[image(noise_image(8, 8, i)) for i in range(3)])}), 400,
     "at most 2"),
    ("too many tokens", dict(body=ok_body(max_tokens=17)), 400, "limit of 16"),
    ("missing key", dict(body=ok_body(), key=None), 401, "missing API key"),
    ("wrong key", dict(body=ok_body(), key="nope"), 401, "invalid API key"),
    ("body too large", dict(content=b"x" * 300_000, headers={"Content-Type": "application/json"}), 413, "exceeds"),
    ("unknown model", dict(body=ok_body(model="gpt-4")), 404, "not served"),
])
def test_malformed_requests_get_clear_4xx_and_the_server_keeps_answering(server, client, case, request_kw, status,
                                                                          needle):
    r = post(server, **request_kw)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert needle in error["message"] and error["code"] == status
    after = client.chat.completions.create(model="nano", messages=[{"role": "user", "content": "hi"}], max_tokens=2)
    assert after.usage.completion_tokens >= 1


def test_openai_client_sees_typed_errors(client):
    with pytest.raises(openai.BadRequestError, match="offline"):
        client.chat.completions.create(model="nano", messages=user(image("https://example.com/x.png")))
    bad = openai.OpenAI(base_url=client.base_url, api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()


def test_local_images_only_under_the_allowed_root(model, tmp_path):
    (tmp_path / "ok.png").write_bytes(png_bytes(noise_image(32, 32, 5)))
    settings = ServerSettings(**{**SETTINGS, "api_key": None, "image_root": tmp_path})
    with BackgroundServer(model, settings) as srv:
        good = post(srv, {"messages": user(text("x"), image("ok.png")), "max_tokens": 2}, key=None)
        assert good.status_code == 200
        outside = post(srv, {"messages": user(text("x"), image("../../etc/hostname")), "max_tokens": 2}, key=None)
        assert outside.status_code == 400 and "outside the allowed image root" in outside.json()["error"]["message"]


def _hold_worker(app):
    """Make the worker wait on an event before each batch (static engine) or admission (continuous engine);
    returns (engine, entered, release)."""
    engine = app.state.engine
    entered, release = threading.Event(), threading.Event()
    name = "_generate" if isinstance(engine, BatchEngine) else "_admit"
    original = getattr(engine, name)

    def held(jobs):
        entered.set()
        release.wait(30)
        original(jobs)

    setattr(engine, name, held)
    return engine, entered, release


@pytest.mark.parametrize("engine_kind", ["static", "continuous"])
def test_full_queue_answers_429_and_pending_requests_are_batched(model, engine_kind):
    settings = ServerSettings(**{**SETTINGS, "api_key": None, "max_queue": 3, "batch_size": 4, "engine": engine_kind})
    with BackgroundServer(model, settings) as srv:
        engine, entered, release = _hold_worker(srv.app)
        questions = ["first", "second", "third", "fourth"]
        answers = {}

        def ask(q):
            answers[q] = post(srv, {"messages": [{"role": "user", "content": q}], "max_tokens": 4, "min_tokens": 4},
                              key=None)

        threads = [threading.Thread(target=ask, args=(questions[0],))]
        threads[0].start()
        assert entered.wait(30)  # the worker holds "first"
        for q in questions[1:]:
            threads.append(threading.Thread(target=ask, args=(q,)))
            threads[-1].start()
        deadline = time.monotonic() + 30
        while engine.queued < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert engine.queued == 3
        busy = post(srv, ok_body(), key=None)
        assert busy.status_code == 429 and "busy" in busy.json()["error"]["message"]
        release.set()
        for t in threads:
            t.join(60)
        # static: the three waiting requests ran as one batch after "first"; continuous: they joined "first"
        assert engine.largest_batch == (3 if engine_kind == "static" else 4)
        for q in questions:
            assert answers[q].status_code == 200
            expected = model.generate([q], max_new_tokens=4, min_new_tokens=4)[0]
            assert answers[q].json()["choices"][0]["message"]["content"] == expected.text
            assert answers[q].json()["usage"]["completion_tokens"] == expected.completion_tokens
        assert post(srv, ok_body(), key=None).status_code == 200


def _hang_up_after_submit(srv, engine, body):
    """Send `body` on a raw connection, close it once the engine has the job; returns the job."""
    submitted, jobs = threading.Event(), []
    original = engine.submit

    def submit(job):
        original(job)
        jobs.append(job)
        submitted.set()

    engine.submit = submit
    data = json.dumps(body).encode()
    head = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(data)}\r\n\r\n").encode()
    with socket.create_connection(("127.0.0.1", srv.port)) as conn:
        conn.sendall(head + data)
        assert submitted.wait(30)
    return jobs[0]


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_a_client_that_hangs_up_cancels_its_request(model, stream):
    settings = ServerSettings(**{**SETTINGS, "api_key": None, "batch_size": 1})
    with BackgroundServer(model, settings) as srv:
        engine, entered, release = _hold_worker(srv.app)
        blocker = threading.Thread(target=post, args=(srv, ok_body()), kwargs={"key": None})
        blocker.start()
        assert entered.wait(30)  # the worker is busy with the blocker; the next request waits in the queue
        job = _hang_up_after_submit(srv, engine, {**ok_body(max_tokens=16, min_tokens=16), "stream": stream})
        assert job.cancelled.wait(30)  # the disconnect reached the job
        release.set()
        blocker.join(60)
        assert post(srv, ok_body(), key=None).status_code == 200
        assert engine.admitted == 2  # the blocker and the last request: the cancelled one never took a slot


def test_min_tokens_is_passed_to_generation(model, client):
    msgs = user(text("Say something."))
    r = client.chat.completions.create(model="nano", messages=msgs, max_tokens=12, extra_body={"min_tokens": 12})
    expected = model.generate(["Say something."], max_new_tokens=12, min_new_tokens=12)[0]
    assert r.choices[0].message.content == expected.text
    assert r.usage.completion_tokens == expected.completion_tokens
    req = ChatCompletionRequest(messages=msgs, max_tokens=12, min_tokens=5)
    assert generation_config(req, ServerSettings(**SETTINGS), ()).min_new_tokens == 5
    with pytest.raises(openai.BadRequestError, match="min_tokens 13 exceeds max_tokens 12"):
        client.chat.completions.create(model="nano", messages=msgs, max_tokens=12, extra_body={"min_tokens": 13})
