"""`sphinx-x demo` end to end in a real browser: Debian's Chromium, headless, driven by Playwright for Python.

The demo runs as a subprocess (`python -m sphinx_x.cli demo --share-nothing`) on a free port. The test uploads
a file that is not an image (the page says so), then a synthetic scene, fills the question from the
"Describe with boxes" example, sends it, waits for the streamed answer, and checks the answer is the
library's (`SphinxX.chat`, same image and settings), that the drawn image appears at the image's size with
one table row per box or point, that the page fetched nothing from outside the machine, and that Reset
empties the chat. A full-page screenshot is saved as `demo.png` in $SPHINX_X_TEST_ARTIFACTS (default: the
test's tmp dir). The model is $SPHINX_X_DEMO_MODEL when set (docs/img/demo.png was taken with the quickstart's
trained model), else the session's random nano model.

Chromium comes from Debian (`.ci/run` installs it), never from `playwright install`; the test skips, with the
reason printed, only where Chromium is absent or cannot start.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from urllib.parse import urlparse

import pytest
from _helpers.server import cli_server, free_port
from PIL import Image
from playwright.sync_api import expect

from sphinx_x.canvas import load_image
from sphinx_x.data.synth.scenes import GROUNDED_CAPTION_PROMPT, make_scene, render_scene
from sphinx_x.demo.render import annotation_rows
from sphinx_x.infer.draw import answer_annotations
from sphinx_x.model import SphinxX

pytestmark = pytest.mark.slow

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
MAX_NEW_TOKENS = 64
# Failure deadlines (not speed checks): model loading and generation on a busy 2-core CPU.
START_TIMEOUT_S = 300
ANSWER_TIMEOUT_MS = 300_000
PAGE_TIMEOUT_MS = 120_000  # any other wait in the page (uploads, table updates)


def skip_because(reason: str) -> None:
    print(f"SKIPPED tests/test_demo_browser.py: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        skip_because(f"Debian's chromium is not installed at {CHROMIUM} (.ci/run installs it with apt-get)")
    from playwright.sync_api import Error, sync_playwright

    pw = sync_playwright().start()
    try:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, timeout=120_000)
    except Error as e:
        pw.stop()
        skip_because(f"chromium cannot start: {str(e).splitlines()[0]}")
    yield chromium
    chromium.close()
    pw.stop()


@pytest.fixture(scope="module")
def model_dir(request) -> Path:
    chosen = os.environ.get("SPHINX_X_DEMO_MODEL")
    return Path(chosen) if chosen else request.getfixturevalue("nano_model_dir")


@pytest.fixture(scope="module")
def demo_url(model_dir, tmp_path_factory):
    port = free_port()
    log_path = tmp_path_factory.mktemp("demo_server") / "server.log"
    args = ["demo", "--model", str(model_dir), "--port", str(port), "--share-nothing", "--default-max-new-tokens",
            str(MAX_NEW_TOKENS)]
    url = f"http://127.0.0.1:{port}/"
    with cli_server(args, url, log_path, timeout_s=START_TIMEOUT_S):
        yield url


@pytest.fixture
def scene(tmp_path) -> Path:
    path = tmp_path / "scene.png"
    render_scene(make_scene(random.Random(3))).save(path)
    return path


def artifacts_dir(tmp_path: Path) -> Path:
    out = Path(os.environ.get("SPHINX_X_TEST_ARTIFACTS") or tmp_path)
    out.mkdir(parents=True, exist_ok=True)
    return out


def test_demo_in_a_real_browser(browser, demo_url, model_dir, scene, tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("not an image\n")
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.set_default_timeout(PAGE_TIMEOUT_MS)
    outside: list[str] = []
    page.on("request", lambda r: outside.append(r.url)
            if urlparse(r.url).scheme in ("http", "https", "ws", "wss")
            and urlparse(r.url).hostname not in ("127.0.0.1", "localhost") else None)
    page.goto(demo_url)
    upload = page.locator("#upload input[type=file]")
    upload.wait_for(state="attached")
    status = page.locator("#status")

    # a file that is not an image: a message in the page, no traceback
    upload.set_input_files(str(notes))
    page.wait_for_function("document.querySelector('#status').innerText.includes('Upload refused')")
    assert "notes.txt: not a readable image" in status.inner_text()
    # the scene (the file box now holds both; the text file is refused again, the scene attached)
    upload.set_input_files(str(scene))
    page.wait_for_function("document.querySelector('#status').innerText.includes('Attached to the next')")
    assert "Attached to the next question: scene.png." in status.inner_text()

    page.get_by_role("button", name="Describe with boxes").click()
    question = page.locator("#question textarea")
    page.wait_for_function(f"document.querySelector('#question textarea').value === {GROUNDED_CAPTION_PROMPT!r}")
    page.click("#send")
    page.wait_for_function("document.querySelector('#status').innerText.includes('Answered:')",
                           timeout=ANSWER_TIMEOUT_MS)
    answer = page.locator("#chat [data-testid=bot] .message-content").last
    shown = answer.inner_text()
    # shown as written (runs of spaces kept: sphinx_x.demo.app.CSS), so the text compares exactly
    assert answer.evaluate("e => getComputedStyle(e.querySelector('span.md')).whiteSpace") == "pre-wrap"

    model = SphinxX.from_pretrained(model_dir)
    image = load_image(scene)
    expected, _ = model.chat(image, GROUNDED_CAPTION_PROMPT, max_new_tokens=MAX_NEW_TOKENS)
    assert expected.strip()
    assert shown == expected
    assert question.input_value() == ""

    overlay = page.locator("#overlay img")
    overlay.wait_for(state="visible")
    page.wait_for_function("(() => { const i = document.querySelector('#overlay img');"
                           " return i && i.complete && i.naturalWidth > 0; })()")
    size = overlay.evaluate("i => [i.naturalWidth, i.naturalHeight]")
    assert tuple(size) == Image.open(scene).size
    drawn = answer_annotations(expected, *image.size, model.config.vision.canvas.pad_anchor)
    assert f"{len(drawn)} box(es)/point(s) drawn" in status.inner_text()
    table = page.locator("#annotations")
    for label, written, pixels in annotation_rows(drawn):  # expect() waits: the table may render after the status
        expect(table).to_contain_text(label)
        expect(table).to_contain_text(written)
        expect(table).to_contain_text(pixels)
    if not drawn:
        assert "," not in table.inner_text()  # no coordinates listed
    assert "Traceback" not in page.content()

    shot = artifacts_dir(tmp_path) / "demo.png"
    page.screenshot(path=str(shot), full_page=True)
    print(f"screenshot: {shot}")
    assert shot.stat().st_size > 0

    page.click("#reset")
    page.wait_for_function("document.querySelector('#status').innerText.includes('New conversation')")
    assert page.locator("#chat [data-testid=bot]").count() == 0
    assert outside == [], f"the page fetched from outside the machine: {outside}"
    page.close()
