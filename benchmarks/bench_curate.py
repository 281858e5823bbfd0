"""Pages per second of the OCR builder (`sphinx-x curate ocr`) on multi-page PDFs made here.

    .venv/bin/python benchmarks/bench_curate.py [--pages 40] [--docs 4] [--dpi 150] [--max-side 1536]
                                                [--workers 1 2]

Each document is a letter-size page repeated: a title and two columns of body text. Every worker
count builds into a fresh folder (no resume), timing the whole run: open, render, extract, filter,
write PNGs and JSONL. Prints one line per worker count: pages, seconds, pages/s.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import pymupdf

from sphinx_x.curate.ocr_builder import OcrOptions, build_ocr

WORDS = ("data model image text layout page column figure table result method training vision language "
         "token box region detect transcribe document").split()


def make_pdf(path: Path, pages: int, seed: int) -> None:
    doc = pymupdf.open()
    for p in range(pages):
        page = doc.new_page(width=612, height=792)
        page.insert_text((72, 72), f"Document {seed} page {p + 1}", fontsize=20, fontname="hebo")
        for col, x in enumerate((72, 324)):
            for i in range(45):
                words = [WORDS[(seed * 7 + p * 13 + col * 5 + i * 3 + k) % len(WORDS)] for k in range(6)]
                page.insert_text((x, 110 + 14 * i), " ".join(words), fontsize=10, fontname="tiro")
    doc.save(path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pages", type=int, default=40, help="pages per document")
    ap.add_argument("--docs", type=int, default=4, help="documents (the unit of parallel work)")
    ap.add_argument("--dpi", type=float, default=150.0)
    ap.add_argument("--max-side", type=int, default=1536)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        pdfs = []
        for d in range(args.docs):
            pdfs.append(tmp / f"doc{d}.pdf")
            make_pdf(pdfs[-1], args.pages, d)
        options = OcrOptions(dpi=args.dpi, max_side=args.max_side)
        print(f"{'workers':>7} {'pages':>6} {'seconds':>8} {'pages/s':>8}")
        for workers in args.workers:
            t0 = time.perf_counter()
            summary = build_ocr(pdfs, tmp / f"out-{workers}", options, workers=workers, progress=False)
            seconds = time.perf_counter() - t0
            assert summary["pages_kept"] == summary["pages"] == args.pages * args.docs, summary
            print(f"{workers:>7} {summary['pages']:>6} {seconds:>8.2f} {summary['pages'] / seconds:>8.2f}")


if __name__ == "__main__":
    main()
