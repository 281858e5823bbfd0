"""`sphinx-x chat` (one-shot, interactive, --draw-boxes) and `sphinx-x generate` (batches, resume, bad rows)."""

import io
import json
import sys

import numpy as np
import pytest
import torch
from _helpers.infer import noise_image
from PIL import Image

from sphinx_x.cli import main as cli_main
from sphinx_x.commands.chat import Session
from sphinx_x.model import SphinxX


@pytest.fixture(scope="module")
def model(nano_model_dir):
    torch.manual_seed(0)
    return SphinxX.from_pretrained(nano_model_dir)


@pytest.mark.slow
def test_chat_one_shot_streams_the_answer_and_draws(nano_model_dir, model, tmp_path, capsys):
    noise_image(80, 40, 1).save(tmp_path / "a.png")
    out = tmp_path / "drawn.png"
    code = cli_main(["chat", "--model", str(nano_model_dir), "--image", str(tmp_path / "a.png"), "What is it?",
                     "--max-new-tokens", "6", "--draw-boxes", str(out)])
    assert code == 0
    expected, _ = model.chat(tmp_path / "a.png", "What is it?", max_new_tokens=6)
    assert capsys.readouterr().out == expected + "\n"
    assert Image.open(out).size == (80, 40)


def test_session_draws_answer_boxes_on_the_latest_image(model, tmp_path):
    args = type("A", (), dict(max_new_tokens=4, temperature=0.0, top_p=1.0, top_k=0, repetition_penalty=1.0,
                             seed=None, draw_boxes=str(tmp_path / "boxes.png")))()
    session = Session(model, args, out=io.StringIO())
    white = tmp_path / "w.png"
    Image.new("RGB", (100, 100), (255, 255, 255)).save(white)
    session.add_image(str(white))
    session.draw("<p>thing</p> [0.20, 0.20, 0.60, 0.60]")
    arr = np.asarray(Image.open(tmp_path / "boxes.png"))
    assert (arr[40, 20] != 255).any() and (arr[40, 40] == 255).all()  # left edge drawn, inside untouched


@pytest.mark.slow
def test_chat_interactive_commands(nano_model_dir, model, tmp_path, monkeypatch, capsys):
    noise_image(64, 64, 2).save(tmp_path / "b.png")
    script = (f"/image {tmp_path / 'b.png'}\nWhat?\n/image {tmp_path / 'missing.png'}\n"
              "/reset\nHello\n/bogus\n/quit\nNever\n")
    monkeypatch.setattr(sys, "stdin", io.StringIO(script))
    assert cli_main(["chat", "--model", str(nano_model_dir), "--max-new-tokens", "5"]) == 0
    captured = capsys.readouterr()
    first, _ = model.chat(tmp_path / "b.png", "What?", max_new_tokens=5)
    second, _ = model.chat(None, "Hello", max_new_tokens=5)  # /reset dropped the image and the history
    assert captured.out == f"{first}\n{second}\n"
    assert "file not found" in captured.err and "unknown command /bogus" in captured.err


def test_chat_reports_a_bad_model_dir(tmp_path, capsys):
    assert cli_main(["chat", "--model", str(tmp_path / "nope"), "hi"]) == 2
    assert "cannot load model" in capsys.readouterr().err


def write_rows(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))


@pytest.mark.slow
def test_generate_batches_resumes_and_reports_bad_rows(nano_model_dir, model, tmp_path, capsys):
    noise_image(64, 32, 3).save(tmp_path / "c.png")
    src, dst = tmp_path / "q.jsonl", tmp_path / "a.jsonl"
    rows = [
        {"id": 1, "question": "Tell me."},
        {"id": "two", "question": "What is it?", "image": "c.png"},
        '{"id": 3, "question": ',  # line 3: invalid JSON
        {"id": 4, "question": "Where?", "image": "missing.png"},  # line 4: unreadable image
        {"id": 5},  # line 5: no question
        {"id": 6, "question": "And this?", "image": ["c.png", "c.png"]},
        {"id": 1, "question": "duplicate id"},
    ]
    write_rows(src, rows)
    args = ["generate", "--model", str(nano_model_dir), "--input", str(src), "--output", str(dst), "--batch-size", "2",
            "--max-new-tokens", "4"]
    assert cli_main(args) == 1  # the run finished, but some rows failed
    err = capsys.readouterr().err
    assert f"{src}:3: not valid JSON" in err and f"{src}:4: image:" in err and f"{src}:5: missing 'question'" in err
    out = [json.loads(line) for line in dst.read_text().splitlines()]
    assert [r["id"] for r in out] == [1, "two", 6]
    expected = model.generate([rows[0]["question"], {"question": "What is it?", "images": tmp_path / "c.png"},
                               {"question": "And this?", "images": [tmp_path / "c.png"] * 2}], max_new_tokens=4)
    assert [r["answer"] for r in out] == [e.text for e in expected]
    assert [r["prompt_tokens"] for r in out] == [e.prompt_tokens for e in expected]

    # Resume: a crash left a partial line; new rows are answered, answered ones are not repeated.
    with open(dst, "a") as f:
        f.write('{"id": 7, "answ')
    write_rows(src, rows[:2] + [{"id": 7, "question": "New one."}])
    assert cli_main(args) == 0
    assert "answered 1, skipped 2" in capsys.readouterr().err
    out = [json.loads(line) for line in dst.read_text().splitlines()]
    assert [r["id"] for r in out] == [1, "two", 6, 7]
