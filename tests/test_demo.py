"""`sphinx-x demo` without a browser: upload checks, the streamed reply and its drawing, multi-turn, errors
as page messages, reset, the page's components and the command line. The real-browser test is
tests/test_demo_browser.py."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import gradio as gr
import pytest
from _helpers.infer import noise_image
from PIL import Image

import sphinx_x.demo.conversation as conversation
from sphinx_x.cli import build_parser, main
from sphinx_x.demo.app import CSS, build_app, launch_options
from sphinx_x.demo.callbacks import RESET_OUTPUTS, SUBMIT_OUTPUTS, UPLOAD_OUTPUTS, DemoCallbacks
from sphinx_x.demo.conversation import Conversation, DemoSettings, check_uploads
from sphinx_x.demo.examples import EXAMPLE_PROMPTS
from sphinx_x.demo.render import annotation_rows, chat_text
from sphinx_x.infer.draw import answer_annotations, draw_answer
from sphinx_x.infer.generate import Generation
from sphinx_x.model import SphinxX

GEN = {"max_new_tokens": 12, "temperature": 0.0, "top_p": 1.0}


@pytest.fixture(scope="module")
def model(nano_model_dir):
    return SphinxX.from_pretrained(nano_model_dir)


@pytest.fixture
def files(tmp_path) -> dict[str, str]:
    paths = {}
    for i, size in enumerate([(64, 48), (40, 40), (32, 56)]):
        paths[f"img{i}"] = str(tmp_path / f"img{i}.png")
        noise_image(*size, seed=i).save(paths[f"img{i}"])
    paths["notes"] = str(tmp_path / "notes.txt")
    Path(paths["notes"]).write_text("not an image\n")
    return paths


def as_dict(names, values) -> dict:
    assert len(names) == len(values)
    return dict(zip(names, values))


def is_skip(value) -> bool:
    return isinstance(value, dict) and value == gr.skip()


def run_submit(cb: DemoCallbacks, question: str, conv: Conversation, **gen) -> list[dict]:
    gen = {**GEN, **gen}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # gr.Warning outside a page
        return [as_dict(SUBMIT_OUTPUTS, s) for s in cb.submit(question, conv, gen["max_new_tokens"],
                                                               gen["temperature"], gen["top_p"])]


def answer_of(step: dict) -> str:
    return step["chat"][-1]["content"]


# ---- uploads -------------------------------------------------------------------------------------------
def test_uploads_keep_images_and_name_every_refused_file(files):
    settings = DemoSettings(max_images=2, max_image_pixels=50 * 50)
    uploads, problems = check_uploads([files["img0"], files["notes"], files["img1"], files["img2"]], settings)
    # img0 is 64x48 = 3072 pixels > 2500: refused; the text file is not an image
    assert [u.name for u in uploads] == ["img1.png", "img2.png"]
    assert [u.image.size for u in uploads] == [(40, 40), (32, 56)]
    assert len(problems) == 2
    assert problems[0].startswith("img0.png: 64x48 = 3072 pixels exceeds the limit of 2500")
    assert problems[1].startswith("notes.txt: not a readable image")
    assert files["notes"] not in problems[1]  # the server's path is not shown, the file's name is

    uploads, problems = check_uploads([files["img1"], files["img2"], files["img1"]], settings)
    assert [u.name for u in uploads] == ["img1.png", "img2.png"]
    assert problems == ["img1.png: left out, a question takes at most 2 image(s)"]


def test_upload_callback_reports_bad_files_in_the_page(model, files):
    cb = DemoCallbacks(model, DemoSettings())
    conv = Conversation()
    with pytest.warns(UserWarning, match="notes.txt: not a readable image"):  # gr.Warning: the page's toast
        out = as_dict(UPLOAD_OUTPUTS, cb.upload([files["notes"], files["img1"]], conv))
    assert "**Upload refused:** notes.txt: not a readable image" in out["status"]
    assert "Attached to the next question: img1.png." in out["status"]
    assert "Traceback" not in out["status"]
    assert [u.name for u in conv.pending] == ["img1.png"]
    assert out["overlay"] is conv.pending[0].image
    # emptied by the page after a question: the drawing and the status stay as they are
    conv.pending = []
    out = as_dict(UPLOAD_OUTPUTS, cb.upload(None, conv))
    assert is_skip(out["overlay"]) and is_skip(out["status"])


def test_settings_refuse_bad_limits():
    with pytest.raises(ValueError, match="max_images must be an int >= 1"):
        DemoSettings(max_images=0)
    assert DemoSettings(max_new_tokens=64, default_max_new_tokens=256).default_max_new_tokens == 64


# ---- answers ---------------------------------------------------------------------------------------------
def test_submit_streams_the_library_answer_and_continues_the_conversation(model, files):
    cb = DemoCallbacks(model, DemoSettings())
    conv = Conversation()
    cb.upload([files["img0"]], conv)
    image = conv.pending[0].image
    steps = run_submit(cb, "What is in the image?", conv)

    expected, history = model.chat(image, "What is in the image?", max_new_tokens=GEN["max_new_tokens"])
    assert expected
    first, last = steps[0], steps[-1]
    assert first["question"] == "" and first["status"] == "Generating…" and answer_of(first) == ""
    assert first["chat"][0] == {"role": "user", "content": {"path": files["img0"]}}
    assert answer_of(last) == chat_text(expected)
    # streamed: the answer grows through several steps, each a prefix of the next
    texts = [answer_of(s) for s in steps]
    assert len(set(texts)) > 2
    assert all(b.startswith(a) for a, b in zip(texts, texts[1:]))
    assert last["status"].startswith("Answered: ") and "drawn on the image" in last["status"]
    assert last["upload"] is None  # the file box empties once its images are sent
    assert last["overlay"].size == image.size
    assert conv.pending == [] and conv.image is image and conv.messages == last["chat"]

    # a second question without images: same answer as the library given the same history
    steps = run_submit(cb, "And what colour is it?", conv)
    expected2, _ = model.chat(None, "And what colour is it?", history, max_new_tokens=GEN["max_new_tokens"])
    assert answer_of(steps[-1]) == chat_text(expected2)
    assert [m["role"] for m in conv.messages] == ["user", "user", "assistant", "user", "assistant"]
    assert len(conv.history) == 4 and conv.history[-1]["content"] == expected2


def test_answer_geometry_is_drawn_as_it_streams(model, files, monkeypatch):
    """A hand-made answer with a grounded phrase, a plain box and a point (a random nano model writes none)."""
    pieces = ["<p>a cat</p> [0.10,0.20", ",0.50,0.60] and ", "[0.20,0.20,0.30,0.40] at [0.8,0.3]."]
    answer = "".join(pieces)

    def fake_stream(model, prompts, config):
        for i, piece in enumerate(pieces):
            done = Generation(answer, "stop", 10, len(pieces)) if i == len(pieces) - 1 else None
            yield 0, piece, done

    monkeypatch.setattr(conversation, "stream_generate", fake_stream)
    cb = DemoCallbacks(model, DemoSettings())
    conv = Conversation()
    cb.upload([files["img0"]], conv)
    image = conv.pending[0].image
    steps = run_submit(cb, "Describe it with boxes.", conv)

    anchor = model.config.vision.canvas.pad_anchor
    expected_image, anns = draw_answer(image, answer, anchor)
    assert [(a.kind, a.label) for a in anns] == [("box", "a cat"), ("box", "1"), ("point", "2")]
    last = steps[-1]
    assert answer_of(last) == "&lt;p&gt;a cat&lt;/p&gt; [0.10,0.20,0.50,0.60] and [0.20,0.20,0.30,0.40] at [0.8,0.3]."
    assert last["overlay"].tobytes() == expected_image.tobytes()
    assert last["overlay"].tobytes() != image.tobytes()
    assert last["annotations"] == annotation_rows(anns)
    assert "3 box(es)/point(s) drawn" in last["status"]
    # the first box was drawn as soon as it was complete (second piece), not only at the end
    assert steps[2]["annotations"] == annotation_rows(answer_annotations(pieces[0] + pieces[1], *image.size, anchor))
    assert len(steps[2]["annotations"]) == 1
    assert conv.history[-1]["content"] == answer


def test_problems_become_page_messages_and_leave_the_conversation_as_it_was(model, files):
    cb = DemoCallbacks(model, DemoSettings())
    conv = Conversation()
    cb.upload([files["img1"]], conv)
    (step,) = run_submit(cb, "   ", conv)
    assert step["status"] == "Type a question first." and is_skip(step["chat"])
    (step,) = run_submit(cb, "Hi", conv, top_p=0.0)
    assert step["status"] == "generation option: top_p must be in (0, 1]"
    context = model.llm.config.max_position_embeddings
    steps = run_submit(cb, "Hi", conv, max_new_tokens=context)  # prompt + answer exceed the context
    last = steps[-1]
    assert last["status"].startswith("Cannot answer: ") and "exceed the model's context" in last["status"]
    assert last["chat"] == [] and last["question"] == "Hi"
    assert conv.history == [] and [u.name for u in conv.pending] == ["img1.png"]


def test_reset_starts_a_new_conversation(model, files):
    cb = DemoCallbacks(model, DemoSettings())
    conv = Conversation()
    cb.upload([files["img1"]], conv)
    run_submit(cb, "What is this?", conv)
    out = as_dict(RESET_OUTPUTS, cb.reset())
    assert out["state"] == Conversation() and out["state"] is not conv
    assert out["chat"] == [] and out["overlay"] is None and out["upload"] is None and out["question"] == ""


def test_chat_text_keeps_tags_visible():
    assert chat_text("<p>dog</p> [0.1,0.2,0.3,0.4] <Mark 1> & 2") == \
        "&lt;p&gt;dog&lt;/p&gt; [0.1,0.2,0.3,0.4] &lt;Mark 1&gt; &amp; 2"


# ---- the page and the command --------------------------------------------------------------------------
def test_the_page_has_its_components_and_example_prompts(model):
    app = build_app(model, DemoSettings(max_new_tokens=64), name="nano", api=False)
    ids = {c.get("props", {}).get("elem_id") for c in app.config["components"]}
    assert {"upload", "overlay", "annotations", "chat", "question", "send", "reset", "status",
            "max-new-tokens", "temperature", "top-p"} <= ids
    slider = next(c for c in app.config["components"] if c.get("props", {}).get("elem_id") == "max-new-tokens")
    assert slider["props"]["maximum"] == 64
    labels = [label for label, _ in EXAMPLE_PROMPTS]
    assert {"Describe with boxes", "Detect all X", "Read the text", "Referring expression"} <= set(labels)
    # the Send button and the question's Enter share one queue slot: never two answers at once
    asks = [f for f in app.fns.values() if getattr(f.fn, "__name__", "") == "submit"]
    assert len(asks) == 2 and {f.concurrency_id for f in asks} == {"model"}
    visibility = {d["api_visibility"] for d in app.config["dependencies"]}
    assert "public" not in visibility and "private" in visibility  # api=False: nothing on the API page
    public = build_app(model, DemoSettings(), name="nano", api=True)
    assert "public" in {d["api_visibility"] for d in public.config["dependencies"]}


def test_launch_options():
    opts = launch_options(share=False, share_nothing=True, max_upload_mb=2)
    assert opts == {"share": False, "max_file_size": 2 * 2**20, "mcp_server": False, "footer_links": [],
                    "css": CSS}
    assert "footer_links" not in launch_options(share=True, share_nothing=False, max_upload_mb=1)


def test_demo_command_line(tmp_path, capsys, monkeypatch):
    args = build_parser().parse_args(["demo", "--model", "m", "--port", "9999", "--share-nothing"])
    assert (args.port, args.share_nothing, args.share, args.host) == (9999, True, False, "127.0.0.1")
    with pytest.raises(SystemExit):
        build_parser().parse_args(["demo", "--model", "m", "--share", "--share-nothing"])
    assert main(["demo", "--model", str(tmp_path / "missing")]) == 2
    assert "sphinx-x demo: cannot load model" in capsys.readouterr().err
    assert main(["demo", "--model", str(tmp_path), "--max-images", "0"]) == 2
    assert "max_images must be an int >= 1" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "gradio", None)  # as if the demo extra were not installed
    assert main(["demo", "--model", str(tmp_path)]) == 2
    assert "sphinx-x demo needs the 'gradio' package, which is not installed: pip install 'sphinx-x[demo]'" in \
        capsys.readouterr().err


def test_images_of_several_turns_are_drawn_on_the_latest(model, files):
    cb = DemoCallbacks(model, DemoSettings())
    conv = Conversation()
    cb.upload([files["img0"], files["img1"]], conv)
    assert conv.draw_target is conv.pending[1].image  # the last image of the question
    run_submit(cb, "Compare them.", conv, max_new_tokens=4)
    assert conv.image.size == (40, 40)
    cb.upload([files["img2"]], conv)
    steps = run_submit(cb, "And this one?", conv, max_new_tokens=4)
    assert steps[-1]["overlay"].size == Image.open(files["img2"]).size
    assert [len(t.get("images") or []) for t in conv.history] == [2, 0, 1, 0]
