"""`sphinx-x curate ocr`: PDFs written with PyMuPDF with known text at known positions (several fonts
and sizes, two columns, a rotated page, an image-only page, a garbled page) plus an encrypted, a
truncated and an empty file. Extracted text must equal the written text, boxes must land on the
written positions after the canvas mapping, and every bad file or page must be accounted for."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pymupdf
import pytest
from PIL import Image

from sphinx_x.canvas import CanvasGeometry
from sphinx_x.cli import main
from sphinx_x.curate.ocr_builder import TASKS, TRANSCRIBE_PROMPT, OcrOptions, build_ocr, find_pdfs
from sphinx_x.curate.text_quality import QualityConfig
from sphinx_x.data.geometry import parse_phrases

DPI = 96  # scale 4/3: boxes must follow the render scale, not the PDF points
TOL = 0.01  # canvas units (a 792 pt page side: about 8 pt)
W, H = 612, 792

# (text, x, baseline y, size, font) of page 1: a title, two columns in different fonts and sizes.
TITLE = ("Quarterly Report", 72, 80, 24, "hebo")
LEFT = [(f"Left column line {i} about revenue", 72, 140 + 15 * i, 11, "tiro") for i in range(8)]
RIGHT = [(f"Right column {i}: costs and margins", 330, 140 + 12 * i, 9, "cour") for i in range(8)]
FOOT = ("Footnote in Helvetica", 72, 700, 10, "helv")
ROTATED = ("Rotated page heading", 100, 200, 18, "helv")


def expected_box_pt(text, x, y, size, fontname):
    """Where PyMuPDF's `insert_text` puts a line: advance width horizontally, font ascender and
    descender around the baseline."""
    font = pymupdf.Font(fontname)
    return (x, y - font.ascender * size, x + pymupdf.get_text_length(text, fontname, size), y - font.descender * size)


def _png(w=200, h=120) -> bytes:
    arr = np.zeros((h, w, 3), dtype=np.uint8)
    arr[..., 0] = np.linspace(0, 255, w, dtype=np.uint8)[None, :]
    arr[: h // 2, :, 2] = 200
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def make_known_pdf(path: Path) -> None:
    doc = pymupdf.open()
    p1 = doc.new_page(width=W, height=H)
    for text, x, y, size, fontname in [TITLE, *LEFT, *RIGHT, FOOT]:
        p1.insert_text((x, y), text, fontsize=size, fontname=fontname)
    p2 = doc.new_page(width=W, height=H)
    p2.insert_text(ROTATED[1:3], ROTATED[0], fontsize=ROTATED[3], fontname=ROTATED[4])
    p2.set_rotation(90)
    p3 = doc.new_page(width=W, height=H)  # image-only page (a scan): no text layer, so no samples
    p3.insert_image(pymupdf.Rect(50, 50, 550, 350), stream=_png())
    p4 = doc.new_page(width=W, height=H)  # text whose extraction is broken: control characters
    for i in range(5):
        p4.insert_text((72, 100 + 20 * i), f"broken\x07line {i}", fontsize=12)
    p5 = doc.new_page(width=W, height=H)  # text plus a figure: layout must report both
    p5.insert_text((72, 100), "Figure page caption text", fontsize=12)
    p5.insert_image(pymupdf.Rect(72, 150, 372, 330), stream=_png())
    doc.save(path)


def make_bad_pdfs(folder: Path) -> dict[str, str]:
    doc = pymupdf.open()
    doc.new_page().insert_text((72, 72), "secret", fontsize=12)
    doc.save(folder / "encrypted.pdf", encryption=pymupdf.PDF_ENCRYPT_AES_256, user_pw="user", owner_pw="owner")
    data = doc.tobytes()
    (folder / "truncated.pdf").write_bytes(data[: len(data) // 2])
    (folder / "empty.pdf").write_bytes(b"")
    return {"encrypted.pdf": "encrypted", "truncated.pdf": "corrupt", "empty.pdf": "empty"}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("curate_ocr")
    pdfs = root / "pdfs"
    pdfs.mkdir()
    make_known_pdf(pdfs / "known.pdf")
    bad = make_bad_pdfs(pdfs)
    out = root / "out"
    summary = build_ocr(find_pdfs(pdfs), out, OcrOptions(dpi=DPI, max_side=None), workers=1, progress=False)
    return root, out, summary, bad


def _records(out: Path, task: str) -> dict[str, dict]:
    return {r["id"]: r for r in map(json.loads, (out / f"{task}.jsonl").read_text().splitlines())}


def _page_geom(out: Path, record: dict) -> CanvasGeometry:
    with Image.open(out / record["image"]) as im:
        return CanvasGeometry(im.width, im.height, "top-left")


def _answer(record: dict) -> str:
    return record["conversations"][1]["value"]


def _known_manifest(out: Path) -> dict:
    return next(json.loads(p.read_text()) for p in (out / "manifest").glob("known-*.json"))


def test_transcription_equals_written_text_in_reading_order(built):
    _, out, _, _ = built
    recs = _records(out, "transcription")
    page1 = next(r for k, r in recs.items() if k.endswith("p0001-transcription"))
    lines = [ln for ln in _answer(page1).split("\n") if ln]
    assert lines == [t[0] for t in [TITLE, *LEFT, *RIGHT, FOOT]]  # columns are never interleaved
    assert page1["conversations"][0]["value"] == TRANSCRIBE_PROMPT  # no placeholder: the page goes after BOS
    page2 = next(r for k, r in recs.items() if k.endswith("p0002-transcription"))
    assert _answer(page2) == ROTATED[0]


def test_spotting_boxes_land_on_written_positions_after_canvas_mapping(built):
    _, out, _, _ = built
    recs = _records(out, "spotting")
    page1 = next(r for k, r in recs.items() if k.endswith("p0001-spotting"))
    geom = _page_geom(out, page1)
    assert (geom.width, geom.height) == (round(W * DPI / 72), round(H * DPI / 72))
    phrases = dict(parse_phrases(_answer(page1)))
    written = [TITLE, *LEFT, *RIGHT, FOOT]
    assert list(phrases) == [t[0] for t in written]
    scale = DPI / 72
    for text, x, y, size, fontname in written:
        want = geom.to_canvas([v * scale for v in expected_box_pt(text, x, y, size, fontname)])
        (got,) = phrases[text]
        assert got == pytest.approx(want, abs=TOL), text


def test_rotated_page_boxes_match_the_rendered_ink(built):
    """On a /Rotate 90 page the text box must follow the rotation: compare with the dark pixels."""
    _, out, _, _ = built
    rec = next(r for k, r in _records(out, "spotting").items() if k.endswith("p0002-spotting"))
    geom = _page_geom(out, rec)
    assert (geom.width, geom.height) == (round(H * DPI / 72), round(W * DPI / 72))  # landscape after rotation
    ink = np.asarray(Image.open(out / rec["image"]).convert("L")) < 128
    ys, xs = np.nonzero(ink)
    want = geom.to_canvas([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
    ((text, (box,)),) = parse_phrases(_answer(rec))
    assert text == ROTATED[0]
    assert box[3] - box[1] > 3 * (box[2] - box[0])  # vertical text
    assert box == pytest.approx(want, abs=TOL)


def test_layout_has_title_text_and_image_blocks(built):
    _, out, _, _ = built
    recs = _records(out, "layout")
    page1 = next(r for k, r in recs.items() if k.endswith("p0001-layout"))
    kinds = [k for k, _ in parse_phrases(_answer(page1))]
    assert kinds[0] == "title" and kinds.count("title") == 1 and set(kinds) == {"title", "text"}
    geom = _page_geom(out, page1)
    title_box = parse_phrases(_answer(page1))[0][1][0]
    want = geom.to_canvas([v * DPI / 72 for v in expected_box_pt(*TITLE)])
    assert title_box == pytest.approx(want, abs=TOL)
    page5 = next(r for k, r in recs.items() if k.endswith("p0005-layout"))
    blocks = parse_phrases(_answer(page5))
    assert [k for k, _ in blocks] == ["text", "image"]
    assert blocks[1][1][0] == pytest.approx(_page_geom(out, page5).to_canvas(
        [v * DPI / 72 for v in (72, 150, 372, 330)]), abs=TOL)


def test_filtered_pages_and_lines_are_counted_not_lost(built):
    _, out, summary, _ = built
    rec = _known_manifest(out)
    assert rec["status"] == "ok" and rec["pages"] == 5 and rec["pages_kept"] == 3
    assert rec["filtered"]["pages"] == {"no_text": 1, "garbled_text": 1}
    assert rec["filtered"]["lines"] == {"replacement_char": 5}
    assert rec["samples"] == {"transcription": 3, "spotting": 3, "layout": 3}
    assert summary["samples"] == {"transcription": 3, "spotting": 3, "layout": 3}
    assert summary["filtered"]["pages"] == {"no_text": 1, "garbled_text": 1}
    images = sorted(p.name for p in (out / "images").rglob("*.png"))
    assert images == ["page-0001.png", "page-0002.png", "page-0005.png"]  # filtered pages write nothing


def test_bad_files_are_in_the_manifest_and_summary(built):
    _, out, summary, bad = built
    records = {Path(r["file"]).name: r for r in (json.loads(p.read_text()) for p in (out / "manifest").glob("*.json"))}
    for name, reason in bad.items():
        assert records[name]["status"] == "skipped", name
        assert records[name]["reason"].startswith(reason + ":"), records[name]["reason"]
    assert summary["status"] == {"ok": 1, "skipped": 3}
    assert {Path(p["file"]).name for p in summary["problems"]} == set(bad)


def test_resume_skips_done_files_and_redoes_errors_and_changed_options(built, tmp_path):
    root, out, summary, _ = built
    pdfs = find_pdfs(root / "pdfs")
    manifest = sorted((out / "manifest").glob("*.json"))
    before = {p: p.stat().st_mtime_ns for p in manifest}
    again = build_ocr(pdfs, out, OcrOptions(dpi=DPI, max_side=None), workers=1, progress=False)
    assert {p: p.stat().st_mtime_ns for p in manifest} == before  # nothing was rebuilt
    assert again["samples"] == summary["samples"]

    copy = tmp_path / "out"
    build_ocr(pdfs, copy, OcrOptions(dpi=DPI, max_side=None), workers=1, progress=False)
    known = next((copy / "manifest").glob("known-*.json"))
    rec = json.loads(known.read_text())
    rec["status"] = "error"  # as after a crash: must be redone
    known.write_text(json.dumps(rec))
    enc = next((copy / "manifest").glob("encrypted-*.json"))
    enc_mtime = enc.stat().st_mtime_ns
    build_ocr(pdfs, copy, OcrOptions(dpi=DPI, max_side=None), workers=1, progress=False)
    assert json.loads(known.read_text())["status"] == "ok"
    assert enc.stat().st_mtime_ns == enc_mtime
    build_ocr(pdfs, copy, OcrOptions(dpi=72, max_side=None), workers=1, progress=False)  # other options
    assert json.loads(known.read_text())["options"]["dpi"] == 72
    with Image.open(copy / _records(copy, "transcription").popitem()[1]["image"]) as im:
        assert max(im.size) == H


def test_parallel_workers_give_the_same_output(built, tmp_path):
    root, out, _, _ = built
    build_ocr(find_pdfs(root / "pdfs"), tmp_path / "par", OcrOptions(dpi=DPI, max_side=None), workers=2,
              progress=False)
    for task in TASKS:
        assert (tmp_path / "par" / f"{task}.jsonl").read_text() == (out / f"{task}.jsonl").read_text()


def test_duplicate_pdf_is_built_once(tmp_path):
    make_known_pdf(tmp_path / "a.pdf")
    (tmp_path / "b.pdf").write_bytes((tmp_path / "a.pdf").read_bytes())
    s = build_ocr(find_pdfs(tmp_path), tmp_path / "out", OcrOptions(dpi=36), progress=False)
    assert s["status"] == {"ok": 1, "skipped": 1}
    assert s["problems"][0]["reason"].startswith("duplicate of")


def test_max_side_caps_the_render(tmp_path):
    make_known_pdf(tmp_path / "a.pdf")
    build_ocr([tmp_path / "a.pdf"], tmp_path / "out", OcrOptions(dpi=300, max_side=400), progress=False)
    rec = _records(tmp_path / "out", "spotting").popitem()[1]
    with Image.open(tmp_path / "out" / rec["image"]) as im:
        assert max(im.size) == 400


def test_outputs_pass_data_check(built, capsys):
    _, out, _, _ = built
    meta = (out / "mix.yaml").read_text()
    assert all(f"path: {t}.jsonl" in meta for t in TASKS) and "type: image_text" in meta
    assert main(["data", "check", str(out / "mix.yaml")]) == 0, capsys.readouterr().out


def test_cli_curate_ocr(tmp_path, capsys):
    make_known_pdf(tmp_path / "doc.pdf")
    code = main(["curate", "ocr", "--pdfs", str(tmp_path / "*.pdf"), "--out", str(tmp_path / "out"), "--dpi", "36",
                 "--workers", "1", "--no-progress", "--json"])
    assert code == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["status"] == {"ok": 1} and summary["samples"]["transcription"] == 3
    assert main(["curate", "ocr", "--pdfs", str(tmp_path / "nothing-*.pdf"), "--out", str(tmp_path / "o2")]) == 2


def test_slightly_truncated_pdf_is_repaired_used_and_flagged(tmp_path):
    """Cut before its xref table, MuPDF rebuilds the document: it is used, but flagged as repaired
    in the manifest and listed among the run's problems."""
    make_known_pdf(tmp_path / "full.pdf")
    data = (tmp_path / "full.pdf").read_bytes()
    (tmp_path / "cut.pdf").write_bytes(data[: int(len(data) * 0.995)])
    s = build_ocr([tmp_path / "cut.pdf"], tmp_path / "out", OcrOptions(dpi=36), progress=False)
    rec = json.loads(next((tmp_path / "out" / "manifest").glob("cut-*.json")).read_text())
    assert rec["status"] == "ok" and rec["repaired"] is True and rec["pages_kept"] >= 1
    assert any("repair" in w for w in rec["warnings"])
    assert s["problems"] == [{"file": str((tmp_path / "cut.pdf").resolve()), "status": "ok", "reason": None,
                              "repaired": True}]


def test_word_level_spotting_and_dehyphenation(tmp_path):
    doc = pymupdf.open()
    page = doc.new_page(width=300, height=200)
    page.insert_text((20, 40), "A careful trans-", fontsize=12)
    page.insert_text((20, 56), "lation of text", fontsize=12)
    doc.save(tmp_path / "h.pdf")
    options = OcrOptions(dpi=72, spotting_level="word", quality=QualityConfig(dehyphenate=True))
    build_ocr([tmp_path / "h.pdf"], tmp_path / "out", options, progress=False)
    (trans,) = _records(tmp_path / "out", "transcription").values()
    assert _answer(trans) == "A careful translation\nof text"
    (spot,) = _records(tmp_path / "out", "spotting").values()
    phrases = parse_phrases(_answer(spot))
    assert [t for t, _ in phrases] == ["A", "careful", "trans-", "lation", "of", "text"]  # boxes keep the page's words
    geom = _page_geom(tmp_path / "out", spot)
    x_end = 20 + pymupdf.get_text_length("A careful trans-", "helv", 12)
    assert phrases[2][1][0][2] == pytest.approx(geom.to_canvas([x_end, 0])[0], abs=TOL)
