"""`sphinx-x score`: JSON output shape, readable summary, exit codes and error messages naming file/line/field."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from sphinx_x.cli import main


def write_rows(path: Path, rows: list, blank_lines_before: int = 0) -> Path:
    path.write_text("\n" * blank_lines_before + "\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows))
    return path


def run_score(capsys, *args: str) -> tuple[int, str, str]:
    code = main(["score", *args])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_json_output_is_exactly_one_object(tmp_path, capsys):
    rows = [
        {"prediction": "two", "answers": ["2"] * 2 + ["3"] * 8},  # 0.6
        {"prediction": "a dog", "answers": ["dog"] * 10},  # 1.0
    ]
    path = write_rows(tmp_path / "rows.jsonl", rows)
    code, out, _ = run_score(capsys, "--metric", "vqa", "--input", str(path), "--json")
    assert code == 0
    result = json.loads(out)  # the whole of stdout parses as one JSON value
    assert set(result) == {"metric", "score", "per_row", "details"}
    assert result["metric"] == "vqa"
    assert result["score"] == pytest.approx(80.0)
    assert result["per_row"] == pytest.approx([0.6, 1.0])
    assert isinstance(result["details"], dict)


def test_readable_summary_for_mme(tmp_path, capsys):
    rows = [
        {"prediction": "Yes", "answer": "yes", "category": "OCR", "image_id": 7},
        {"prediction": "No", "answer": "no", "category": "OCR", "image_id": 7},
    ]
    path = write_rows(tmp_path / "mme.jsonl", rows)
    code, out, _ = run_score(capsys, "--metric", "mme", "--input", str(path))
    assert code == 0
    assert out.startswith("mme: 200.00 over 2 rows")
    assert "OCR: group=perception, acc=100.00, acc_plus=100.00" in out


def test_rec_anchor_option(tmp_path, capsys):
    # 200x100 image; the answer box maps to [50, 60, 150, 90] (top-left) or [50, 10, 150, 40] (center)
    row = {"prediction": "[0.25, 0.30, 0.75, 0.45]", "gt_box": [50, 10, 150, 40], "width": 200, "height": 100}
    path = write_rows(tmp_path / "rec.jsonl", [row])
    scores = {}
    for anchor in ("top-left", "center"):
        code, out, _ = run_score(capsys, "--metric", "rec", "--input", str(path), "--anchor", anchor, "--json")
        assert code == 0
        scores[anchor] = json.loads(out)
    assert scores["top-left"]["score"] == 0.0
    assert scores["center"]["score"] == 100.0
    assert scores["center"]["details"]["anchor"] == "center"


def test_missing_field_names_file_line_and_field(tmp_path, capsys):
    rows = [{"prediction": "a", "answer": "a"}, {"prediction": "b"}]
    path = write_rows(tmp_path / "rows.jsonl", rows, blank_lines_before=2)  # rows on lines 3 and 4
    code, out, err = run_score(capsys, "--metric", "exact", "--input", str(path), "--json")
    assert code == 2
    assert out == ""
    assert f"{path}:4: missing field 'answer'" in err


def test_bad_json_bad_value_and_missing_file(tmp_path, capsys):
    path = write_rows(tmp_path / "bad.jsonl", [{"prediction": "a", "answer": "a"}, "{not json"])
    code, _, err = run_score(capsys, "--metric", "exact", "--input", str(path))
    assert (code, f"{path}:2: not valid JSON" in err) == (2, True)

    # a content error found inside the metric still reports the file line (blank line 2 is skipped)
    path = write_rows(
        tmp_path / "mc.jsonl", [{"prediction": "B", "answer": "B"}, "", {"prediction": "B", "answer": "cat"}]
    )
    code, _, err = run_score(capsys, "--metric", "mc", "--input", str(path))
    assert code == 2
    assert f"{path}:3: field 'answer' must be an option letter" in err

    code, _, err = run_score(capsys, "--metric", "exact", "--input", str(tmp_path / "nope.jsonl"))
    assert code == 2
    assert "nope.jsonl: cannot read" in err

    path = write_rows(tmp_path / "empty.jsonl", [""])
    code, _, err = run_score(capsys, "--metric", "exact", "--input", str(path))
    assert (code, "no rows to score" in err) == (2, True)


def test_unknown_metric_is_a_usage_error(tmp_path):
    with pytest.raises(SystemExit) as exc:
        main(["score", "--metric", "bleu", "--input", str(tmp_path / "x.jsonl")])
    assert exc.value.code == 2


@pytest.mark.slow
def test_console_script_end_to_end(tmp_path):
    script = Path(sys.executable).with_name("sphinx-x")
    rows = [{"prediction": "104.9", "answer": "100"}, {"prediction": "106", "answer": "100"}]
    path = write_rows(tmp_path / "chart.jsonl", rows)
    done = subprocess.run(
        [str(script), "score", "--metric", "relaxed", "--input", str(path), "--json"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {
        "metric": "relaxed",
        "score": 50.0,
        "per_row": [1.0, 0.0],
        "details": {"rows": 2, "tolerance": 0.05},
    }
    bad = write_rows(tmp_path / "bad.jsonl", [{"prediction": "1"}])
    done = subprocess.run(
        [str(script), "score", "--metric", "relaxed", "--input", str(bad)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 2
    assert "missing field 'answer'" in done.stderr
