"""A malformed-data corpus: every defect gives its documented error in strict mode, its count in
lenient mode, and a `path:line: message` line from `sphinx-x data check`."""

from __future__ import annotations

import json
import re
from collections import Counter

import pytest
from PIL import Image

from sphinx_x import cli
from sphinx_x.config import SphinxXConfig
from sphinx_x.data.check import check_mix
from sphinx_x.data.dataset import Item, MixDataset, Skipped
from sphinx_x.data.readers import DataError
from sphinx_x.tokenizer import load_tokenizer

VISION = SphinxXConfig.from_name("nano").vision
MAX_LEN = 200


def h(text):
    return {"from": "human", "value": text}


def g(text):
    return {"from": "gpt", "value": text}


GOOD = {"image": "ok.png", "conversations": [h("<image>\nWhat?"), g("A square.")]}

# (raw JSONL line, reason code, field named in the error (None: no field), fragment of the message)
DEFECTS = [
    ('{"conversations": [', "invalid_json", None, "invalid JSON"),
    (b'{"conversations": "caf\xe9"}', "invalid_json", None, "not valid UTF-8"),
    ("[1, 2, 3]", "not_object", None, "must be a JSON object"),
    ({"image": "ok.png"}, "missing_conversations", "conversations", "missing"),
    ({"conversations": "hello"}, "conversations_not_list", "conversations", "must be a list"),
    ({"conversations": []}, "empty_conversations", "conversations", "is empty"),
    ({"conversations": ["hi", g("x")]}, "message_not_object", "conversations[0]", "must be an object"),
    ({"conversations": [{"value": "hi"}, g("x")]}, "missing_from", "conversations[0].from", "missing"),
    ({"conversations": [h("hi"), {"from": "gpt"}]}, "missing_value", "conversations[1].value", "missing"),
    ({"conversations": [h("hi"), {"from": "gpt", "value": 42}]}, "value_not_string", "conversations[1].value",
     "must be a string"),
    ({"conversations": [h("hi"), {"from": "bot", "value": "x"}]}, "unknown_role", "conversations[1].from",
     "unknown role 'bot'"),
    ({"conversations": [g("x"), h("hi")]}, "bad_alternation", "conversations[0].from", "must alternate"),
    ({"conversations": [h("a"), h("b"), g("c")]}, "bad_alternation", "conversations[1].from", "must alternate"),
    ({"conversations": [h("a"), {"from": "system", "value": "s"}, g("c")]}, "bad_alternation",
     "conversations[1].from", "system message after the start"),
    ({"conversations": [h("a"), g("b"), h("c")]}, "no_final_answer", "conversations", "must end with a gpt answer"),
    ({"image": "ok.png", "conversations": [h("<image> and <image>"), g("x")]}, "placeholder_mismatch",
     "conversations", "2 <image> placeholder(s) but 1 image(s)"),
    ({"conversations": [h("<image>\nWhat?"), g("x")]}, "placeholder_mismatch", "conversations",
     "1 <image> placeholder(s) but 0 image(s)"),
    ({"image": "ok.png", "conversations": [h("<image>"), g("see <image>")]}, "placeholder_in_answer",
     "conversations[1].value", "belong in human messages"),
    ({"image": 5, "conversations": [h("q"), g("a")]}, "bad_image_field", "image", "non-empty path string"),
    ({"image": ["ok.png", ""], "conversations": [h("q"), g("a")]}, "bad_image_field", "image[1]",
     "non-empty path string"),
    ({"image": "nope.png", "conversations": [h("<image>"), g("a")]}, "image_missing", "image", "file not found"),
    ({"image": "garbage.png", "conversations": [h("<image>"), g("a")]}, "image_unreadable", "image",
     "not a readable image"),
    ({"image": "truncated.png", "conversations": [h("<image>"), g("a")]}, "image_unreadable", "image",
     "cannot decode"),
    ({"conversations": [h("question " * 250), g("a")]}, "no_supervised_tokens", None, "would be rejected"),
]


def _line(raw):
    if isinstance(raw, bytes):
        return raw
    return (raw if isinstance(raw, str) else json.dumps(raw)).encode()


@pytest.fixture(scope="module")
def nano():
    return load_tokenizer("nano")


@pytest.fixture()
def corpus(tmp_path):
    """bad.jsonl: a good record, then the defects each followed by a good record (so line numbers
    are not simply consecutive); the defect on line L is DEFECTS[(L - 2) // 2]."""
    Image.new("RGB", (40, 30), (200, 10, 10)).save(tmp_path / "ok.png")
    (tmp_path / "garbage.png").write_bytes(b"this is not a png at all")
    full = tmp_path / "full.png"
    Image.new("RGB", (64, 64), (0, 0, 255)).save(full)
    (tmp_path / "truncated.png").write_bytes(full.read_bytes()[:60])  # header intact, pixel data cut
    lines = [_line(GOOD)]
    for raw, *_ in DEFECTS:
        lines += [_line(raw), _line(GOOD)]
    (tmp_path / "bad.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    (tmp_path / "mix.yaml").write_text("META:\n  - path: bad.jsonl\n    type: vision\n")
    return tmp_path


def defect_lines():
    return [2 + 2 * k for k in range(len(DEFECTS))]


def test_corpus_has_at_least_15_distinct_defects():
    assert len(DEFECTS) >= 15 and len({d[0] if isinstance(d[0], (str, bytes)) else json.dumps(d[0])
                                       for d in DEFECTS}) == len(DEFECTS)
    assert len({d[1] for d in DEFECTS}) >= 15


@pytest.mark.parametrize("k", range(len(DEFECTS)))
def test_strict_mode_raises_the_documented_error(corpus, nano, k):
    raw, reason, field, fragment = DEFECTS[k]
    ds = MixDataset(corpus / "mix.yaml", nano, VISION, max_len=MAX_LEN)
    index = 1 + 2 * k
    where = f"{corpus / 'bad.jsonl'}:{defect_lines()[k]}: "
    if reason == "no_supervised_tokens":  # well formed but too long: rejected, not an error
        item = ds[index]
        assert isinstance(item, Skipped) and item.reason == reason and item.message.startswith(where)
        return
    with pytest.raises(DataError) as err:
        ds[index]
    assert err.value.reason == reason
    message = str(err.value)
    assert message.startswith(where + (f"{field}: " if field else "")), message
    assert fragment.split(" (")[0] in message or reason == "no_supervised_tokens", message
    assert isinstance(ds[index + 1], Item)  # the good neighbour still loads


def test_lenient_mode_skips_and_counts_by_reason(corpus, nano, capsys):
    ds = MixDataset(corpus / "mix.yaml", nano, VISION, max_len=MAX_LEN, lenient=True)
    items = [ds[i] for i in range(len(ds))]
    good = [it for it in items if isinstance(it, Item)]
    assert len(good) == len(DEFECTS) + 1
    assert ds.skipped == Counter(reason for _, reason, _, _ in DEFECTS)
    assert all(isinstance(items[1 + 2 * k], Skipped) for k in range(len(DEFECTS)))


def test_data_check_reports_every_defect_with_its_line(corpus, nano):
    report = check_mix(corpus / "mix.yaml", nano, VISION, max_len=MAX_LEN)
    assert not report.ok
    by_line = {}
    path = str(corpus / "bad.jsonl")
    for problem in report.problems:
        m = re.match(rf"{re.escape(path)}:(\d+): (.*)", problem)
        assert m, problem
        by_line.setdefault(int(m.group(1)), []).append(m.group(2))
    assert sorted(by_line) == defect_lines()  # no false alarms on the good lines
    for line, (_, reason, field, fragment) in zip(defect_lines(), DEFECTS):
        (message,) = by_line[line]
        if field:
            assert message.startswith(field + ": "), message
        assert fragment in message, (reason, message)
    stats = report.stats["vision"]
    assert stats.records == 2 * len(DEFECTS) + 1 and stats.clean == len(DEFECTS) + 1


def test_data_check_command_exit_codes_and_output(corpus, capsys):
    assert cli.main(["data", "check", str(corpus / "mix.yaml"), "--max-len", str(MAX_LEN)]) == 1
    out = capsys.readouterr().out
    for line in defect_lines():
        assert f"bad.jsonl:{line}: " in out
    assert f"{len(DEFECTS)} problem(s)" in out and "vision" in out
    # a clean mix exits 0
    (corpus / "good.jsonl").write_text(json.dumps(GOOD) + "\n")
    (corpus / "clean.yaml").write_text("META:\n  - path: good.jsonl\n    type: vision\n")
    assert cli.main(["data", "check", str(corpus / "clean.yaml"), "--model", "nano"]) == 0
    assert "0 problem(s)" in capsys.readouterr().out


def test_data_check_reports_long_samples_and_mix_errors(corpus, nano):
    long = {"conversations": [h("q1"), g("a " * 80), h("q2"), g("b " * 80)]}
    (corpus / "long.json").write_text(json.dumps([GOOD, long], indent=1))
    (corpus / "long.yaml").write_text("META:\n  - path: long.json\n    type: text\n")
    report = check_mix(corpus / "long.yaml", nano, VISION, max_len=MAX_LEN)
    (problem,) = report.problems
    line = 1 + (json.dumps([GOOD, long], indent=1).split("\n").index(" {", 2))
    assert problem.startswith(f"{corpus / 'long.json'}:{line}: item 1: sample has ")
    assert f"longer than max length {MAX_LEN}; 1 trailing turn(s) would be dropped" in problem
    (corpus / "broken.yaml").write_text("META:\n  - path: bad.jsonl\n    type: t\n  - path: gone.jsonl\n    type: t\n")
    (problem,) = check_mix(corpus / "broken.yaml", nano, VISION, max_len=MAX_LEN).problems
    assert problem.startswith(f"{corpus / 'broken.yaml'}:4: META[1].path: data file not found")
