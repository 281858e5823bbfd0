"""The OCR-intensive set: PDF pages rendered with PyMuPDF, with three tasks per kept page.

    transcription   the page's text in reading order (lines joined by newlines, blocks by a blank line)
    spotting        every kept line as a grounded phrase "<p>text</p> [x1, y1, x2, y2]"
    layout          every layout block as "<p>kind</p> [box]" (kinds: title, text, image)

Boxes are canvas-normalised (README "How an image becomes tokens") through `CanvasGeometry` of the rendered page.

Output directory:
    images/<doc>/page-0001.png          rendered pages
    shards/<doc>/<task>.jsonl            one document's samples (written by its worker)
    manifest/<doc>.json                  one record per PDF: status ok | skipped | error, reason, counts
    <task>.jsonl, mix.yaml, summary.json assembled from the shards of this run's PDFs

A document is done once its manifest record exists: the worker writes images, then shards, then the
record, each atomically, so an interrupted run resumes by redoing only documents without a record
(or with status "error", or built with other options). `<doc>` is the file stem plus a hash of the
file's bytes, so the same PDF under two names is built once (the second is skipped as a duplicate).
"""

from __future__ import annotations

import glob
import hashlib
import json
import re
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pymupdf
import yaml
from tqdm import tqdm

from sphinx_x.canvas import CanvasGeometry
from sphinx_x.curate.pdf_pages import PageContent, PdfOpenError, extract_page, open_pdf, page_rejection
from sphinx_x.curate.text_quality import QualityConfig, dehyphenate
from sphinx_x.data.geometry import format_phrase
from sphinx_x.data.synth.ocr import LAYOUT_PROMPT, SPOTTING_PROMPT  # SPHINX's prompts, one definition
from sphinx_x.fileio import write_atomic

TRANSCRIBE_PROMPT = "Transcribe all the text in the image in reading order."
TASKS = ("transcription", "spotting", "layout")
DATA_TYPE = "image_text"  # the mix `type` of every curated source
MANIFEST_VERSION = 1


@dataclass(frozen=True)
class OcrOptions:
    dpi: float = 150.0
    max_side: int | None = 1536
    spotting_level: str = "line"  # "line" or "word"
    max_answer_chars: int = 8000  # longer answers are dropped (and counted), never truncated
    anchor: str = "top-left"  # canvas anchoring of the boxes (SPHINX-X default)
    title_ratio: float = 1.25
    quality: QualityConfig = field(default_factory=QualityConfig)

    def __post_init__(self):
        if self.spotting_level not in ("line", "word"):
            raise ValueError(f"spotting_level must be 'line' or 'word', got {self.spotting_level!r}")
        if self.dpi <= 0 or (self.max_side is not None and self.max_side < 32):
            raise ValueError(f"dpi must be > 0 and max_side >= 32, got dpi={self.dpi}, max_side={self.max_side}")

    def fingerprint(self) -> dict:
        return asdict(self)


# ---- files -------------------------------------------------------------------------------------
def find_pdfs(spec: str | Path) -> list[Path]:
    """A directory (searched recursively for *.pdf, any case), a single file, or a glob pattern."""
    path = Path(spec)
    if path.is_dir():
        found = [p for p in path.rglob("*") if p.is_file() and p.suffix.lower() == ".pdf"]
    elif path.is_file():
        found = [path]
    else:
        found = [Path(p) for p in glob.glob(str(spec), recursive=True) if Path(p).is_file()]
    return sorted(p.resolve() for p in found)


def file_sha1(path: Path) -> str:
    h = hashlib.sha1()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def doc_id_for(path: Path, sha1: str) -> str:
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", path.stem).strip("._")[:40] or "doc"
    return f"{stem}-{sha1[:12]}"


def read_manifest(out: Path, doc_id: str) -> dict | None:
    path = out / "manifest" / f"{doc_id}.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None  # missing or half-written by a crashed run: the document is redone


# ---- samples -----------------------------------------------------------------------------------
def _record(sample_id: str, image: str, prompt: str, answer: str) -> dict:
    # No `<image>` placeholder: the page goes right after BOS, where every SPHINX model sees its image.
    return {"id": sample_id, "image": image, "conversations": [
        {"from": "human", "value": prompt}, {"from": "gpt", "value": answer}]}


def transcription_text(content: PageContent, dehyphenate_lines: bool) -> str:
    """Lines joined by newlines, a blank line between extractor blocks (reading order as extracted)."""
    paragraphs: list[list[str]] = []
    last_block = None
    for line in content.lines:
        if line.block != last_block:
            paragraphs.append([])
            last_block = line.block
        paragraphs[-1].append(line.text)
    if dehyphenate_lines:
        paragraphs = [dehyphenate(p) for p in paragraphs]
    return "\n\n".join("\n".join(p) for p in paragraphs)


def page_samples(content: PageContent, image_rel: str, prefix: str, options: OcrOptions) -> tuple[dict, Counter]:
    """The three task records of one kept page; answers over the length cap are counted, not written."""
    geom = CanvasGeometry(content.size[0], content.size[1], options.anchor)
    items = content.lines if options.spotting_level == "line" else content.words
    answers = {
        "transcription": (TRANSCRIBE_PROMPT, transcription_text(content, options.quality.dehyphenate)),
        "spotting": (SPOTTING_PROMPT, ", ".join(format_phrase(it.text, geom.to_canvas(it.box)) for it in items)),
        "layout": (LAYOUT_PROMPT, ", ".join(format_phrase(b.kind, geom.to_canvas(b.box)) for b in content.blocks)),
    }
    records, dropped = {}, Counter()
    for task, (prompt, answer) in answers.items():
        if not answer:
            dropped[f"{task}:empty"] += 1
        elif len(answer) > options.max_answer_chars:
            dropped[f"{task}:answer_too_long"] += 1
        else:
            records[task] = _record(f"{prefix}-{task}", image_rel, prompt, answer)
    return records, dropped


# ---- one document (runs in a worker) -----------------------------------------------------------
def process_pdf(path: str | Path, out: str | Path, options: OcrOptions, doc_id: str, sha1: str) -> dict:
    """Build one PDF's images and shards and write its manifest record; returns the record.

    Never raises for bad input: unreadable documents are `skipped`, unexpected failures `error`."""
    path, out = Path(path), Path(out)
    start = time.perf_counter()
    record: dict = {"version": MANIFEST_VERSION, "file": str(path), "doc_id": doc_id, "sha1": sha1,
                    "options": options.fingerprint(), "status": "ok", "reason": None, "pages": 0, "pages_kept": 0,
                    "samples": dict.fromkeys(TASKS, 0), "filtered": {"lines": {}, "pages": {}, "samples": {}},
                    "merged_lines": 0, "dropped_images": 0, "repaired": False, "warnings": []}
    pymupdf.TOOLS.mupdf_display_errors(False)  # MuPDF's messages go to the record, not the terminal
    pymupdf.TOOLS.reset_mupdf_warnings()
    try:
        doc = open_pdf(path)
    except PdfOpenError as e:
        record.update(status="skipped", reason=f"{e.reason}: {e.detail}")
    else:
        try:
            _build_document(doc, out, options, doc_id, record)
        except Exception as e:  # noqa: BLE001 - one bad document must not stop the run; it is recorded
            record.update(status="error", reason=f"{type(e).__name__}: {e}")
        finally:
            record["repaired"] = bool(getattr(doc, "is_repaired", False))
            doc.close()
    record["warnings"] = (record["warnings"] + [w for w in pymupdf.TOOLS.mupdf_warnings().splitlines() if w])[:50]
    record["seconds"] = round(time.perf_counter() - start, 3)
    write_atomic(out / "manifest" / f"{doc_id}.json", json.dumps(record, indent=1, ensure_ascii=False))
    return record


def _build_document(doc: pymupdf.Document, out: Path, options: OcrOptions, doc_id: str, record: dict) -> None:
    shards: dict[str, list[str]] = {t: [] for t in TASKS}
    lines, pages, samples = Counter(), Counter(), Counter()
    record["pages"] = doc.page_count
    for number in range(doc.page_count):
        try:
            content = extract_page(doc[number], options.dpi, options.max_side, options.quality, options.title_ratio)
        except Exception as e:  # noqa: BLE001 - a damaged page is counted; the others are still used
            pages["page_error"] += 1
            record["warnings"].append(f"page {number + 1}: {type(e).__name__}: {e}")
            continue
        lines.update(content.rejected_lines)
        record["merged_lines"] += content.merged_lines
        record["dropped_images"] += content.dropped_images
        reason = page_rejection(content, options.quality)
        if reason:
            pages[reason] += 1
            continue
        image_rel = f"images/{doc_id}/page-{number + 1:04d}.png"
        (out / image_rel).parent.mkdir(parents=True, exist_ok=True)
        content.pixmap.save(str(out / image_rel))
        records, dropped = page_samples(content, image_rel, f"{doc_id}-p{number + 1:04d}", options)
        samples.update(dropped)
        for task, rec in records.items():
            shards[task].append(json.dumps(rec, ensure_ascii=False))
        record["pages_kept"] += 1
    for task in TASKS:
        write_atomic(out / "shards" / doc_id / f"{task}.jsonl", "".join(s + "\n" for s in shards[task]))
        record["samples"][task] = len(shards[task])
    record["filtered"] = {"lines": dict(lines), "pages": dict(pages), "samples": dict(samples)}
    if record["pages_kept"] == 0:
        record.update(status="skipped", reason="no usable page (" + ", ".join(f"{k}: {v}" for k, v in pages.items())
                      + ")")


# ---- the whole run -----------------------------------------------------------------------------
def _is_done(record: dict | None, options: OcrOptions, sha1: str) -> bool:
    return (record is not None and record.get("status") in ("ok", "skipped") and record.get("sha1") == sha1
            and record.get("options") == json.loads(json.dumps(options.fingerprint())))


def build_ocr(pdfs: list[Path], out: str | Path, options: OcrOptions | None = None, workers: int = 1,
              progress: bool = True) -> dict:
    """Build (or resume) the OCR set for `pdfs` into `out`; returns the run summary."""
    options = options or OcrOptions()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    todo, records, first_of = [], {}, {}
    for path in pdfs:
        try:
            sha1 = file_sha1(path)
        except OSError as e:  # vanished or unreadable since it was listed
            records[str(path)] = {"file": str(path), "doc_id": path.name, "status": "skipped", "pages": 0,
                                  "reason": f"unreadable: {e.strerror or e}", "samples": {}}
            continue
        doc_id = doc_id_for(path, sha1)
        if sha1 in first_of:  # identical bytes under another name: built once
            records[str(path)] = {"file": str(path), "doc_id": doc_id, "status": "skipped",
                                  "reason": f"duplicate of {first_of[sha1]}", "pages": 0, "samples": {}}
            continue
        first_of[sha1] = str(path)
        done = read_manifest(out, doc_id)
        if _is_done(done, options, sha1):
            records[str(path)] = {**done, "resumed": True}
        else:
            todo.append((path, doc_id, sha1))

    bar = tqdm(total=len(pdfs), initial=len(pdfs) - len(todo), desc="curate ocr", unit="pdf", disable=not progress)
    pages_done = 0
    if workers <= 1:
        for path, doc_id, sha1 in todo:
            rec = process_pdf(path, out, options, doc_id, sha1)
            records[str(path)] = rec
            pages_done += rec.get("pages", 0)
            bar.set_postfix(pages=pages_done)
            bar.update()
    else:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            futures = {pool.submit(process_pdf, p, out, options, d, s): (p, d, s) for p, d, s in todo}
            for fut in as_completed(futures):
                path, doc_id, sha1 = futures[fut]
                try:
                    rec = fut.result()
                except Exception as e:  # noqa: BLE001 - a crashed worker (e.g. a MuPDF abort): retried on resume
                    rec = {"file": str(path), "doc_id": doc_id, "sha1": sha1, "status": "error",
                           "reason": f"worker failed: {type(e).__name__}: {e}", "pages": 0, "samples": {}}
                records[str(path)] = rec
                pages_done += rec.get("pages", 0)
                bar.set_postfix(pages=pages_done)
                bar.update()
    bar.close()
    return _assemble(out, [records[str(p)] for p in pdfs])


def _assemble(out: Path, records: list[dict]) -> dict:
    """Concatenate the shards of the documents that built, write the mix YAML and the summary."""
    summary: dict = {"files": len(records), "status": Counter(), "pages": 0, "pages_kept": 0,
                     "samples": Counter(), "filtered": {"lines": Counter(), "pages": Counter(), "samples": Counter()},
                     "merged_lines": 0, "dropped_images": 0, "problems": []}
    ok = sorted((r for r in records if r.get("status") == "ok"), key=lambda r: r["doc_id"])
    for r in records:
        summary["status"][r["status"]] += 1
        summary["pages"] += r.get("pages", 0)
        summary["pages_kept"] += r.get("pages_kept", 0)
        summary["merged_lines"] += r.get("merged_lines", 0)
        summary["dropped_images"] += r.get("dropped_images", 0)
        for kind in ("lines", "pages", "samples"):
            summary["filtered"][kind].update(r.get("filtered", {}).get(kind, {}))
        if r["status"] != "ok" or r.get("repaired"):
            summary["problems"].append({"file": r["file"], "status": r["status"], "reason": r.get("reason"),
                                        "repaired": r.get("repaired", False)})
    meta = []
    for task in TASKS:
        parts = []
        for r in ok:
            shard = out / "shards" / r["doc_id"] / f"{task}.jsonl"
            parts.append(shard.read_text(encoding="utf-8"))
        text = "".join(parts)
        write_atomic(out / f"{task}.jsonl", text)
        summary["samples"][task] = text.count("\n")
        if text:
            meta.append({"path": f"{task}.jsonl", "type": DATA_TYPE})
    if meta:
        write_atomic(out / "mix.yaml", yaml.safe_dump({"META": meta}, sort_keys=False))
    else:  # a mix with no data file is invalid; do not leave a stale one from an earlier run
        (out / "mix.yaml").unlink(missing_ok=True)
    summary = json.loads(json.dumps(summary))  # Counters to plain dicts
    write_atomic(out / "summary.json", json.dumps(summary, indent=1, ensure_ascii=False))
    return summary
