"""`sphinx-x curate ocr|som`: build the OCR-intensive PDF set and the Set-of-Mark set."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from sphinx_x.extras import require_extra


def _print_summary(summary: dict, out: Path, as_json: bool) -> None:
    if as_json:
        print(json.dumps(summary))
        return
    print(json.dumps({k: v for k, v in summary.items() if k != "problems"}, indent=1))
    for p in summary.get("problems", [])[:20]:
        print(f"  problem: {p}", file=sys.stderr)
    if len(summary.get("problems", [])) > 20:
        print(f"  ... {len(summary['problems']) - 20} more in {out / 'summary.json'}", file=sys.stderr)
    if (out / "mix.yaml").is_file():
        print(f"mix: {out / 'mix.yaml'}")


def run_ocr(args: argparse.Namespace) -> int:
    require_extra("curate", "pymupdf", "sphinx-x curate ocr")
    from sphinx_x.curate.ocr_builder import OcrOptions, build_ocr, find_pdfs
    from sphinx_x.curate.text_quality import QualityConfig

    pdfs = find_pdfs(args.pdfs)
    if not pdfs:
        print(f"error: --pdfs {args.pdfs}: no PDF files found", file=sys.stderr)
        return 2
    try:
        options = OcrOptions(dpi=args.dpi, max_side=args.max_side or None, spotting_level=args.spotting_level,
                             max_answer_chars=args.max_answer_chars,
                             quality=QualityConfig(min_text_density=args.min_text_density,
                                                   dehyphenate=args.dehyphenate))
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = Path(args.out)
    summary = build_ocr(pdfs, out, options, workers=args.workers, progress=not args.no_progress)
    _print_summary(summary, out, args.json)
    return 0 if summary["status"].get("ok", 0) else 1


def run_som(args: argparse.Namespace) -> int:
    require_extra("curate", "pycocotools", "sphinx-x curate som")
    require_extra("curate", "scipy", "sphinx-x curate som")
    from sphinx_x.curate.captioner import Captioner, CaptionError
    from sphinx_x.curate.coco import AnnotationError
    from sphinx_x.curate.som import SomOptions, build_som

    out = Path(args.out)
    captioner = None
    if args.captioner_url:
        if not args.captioner_model:
            print("error: --captioner-model is required with --captioner-url", file=sys.stderr)
            return 2
        try:
            captioner = Captioner(args.captioner_url, args.captioner_model,
                                  api_key=args.api_key or os.environ.get("OPENAI_API_KEY"),
                                  cache_dir=out / "caption_cache", max_retries=args.retries,
                                  max_tokens=args.captioner_max_tokens)
        except CaptionError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    try:
        options = SomOptions(style=args.style, max_marks=args.max_marks)
        summary = build_som(args.annotations, args.images, out, options, captioner, progress=not args.no_progress)
    except (AnnotationError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    _print_summary(summary, out, args.json)
    return 0 if summary["samples"] else 1


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("curate", help="build the OCR-intensive PDF set and the Set-of-Mark set")
    sub = parser.add_subparsers(dest="curate_command", required=True, metavar="CURATE_COMMAND")

    ocr = sub.add_parser("ocr", help="PDF pages -> transcription, text spotting and layout samples")
    ocr.add_argument("--pdfs", required=True, help="a folder (searched recursively), a PDF file or a glob")
    ocr.add_argument("--out", required=True, help="output folder (resumable: rerun to continue)")
    ocr.add_argument("--dpi", type=float, default=150.0, help="render resolution (default 150)")
    ocr.add_argument("--max-side", type=int, default=1536, help="cap on the rendered longer side, 0 for none")
    ocr.add_argument("--workers", type=int, default=1, help="parallel processes (one PDF each)")
    ocr.add_argument("--spotting-level", choices=["line", "word"], default="line")
    ocr.add_argument("--max-answer-chars", type=int, default=8000, help="longer answers are dropped and counted")
    ocr.add_argument("--min-text-density", type=float, default=0.2, help="kept characters per square inch")
    ocr.add_argument("--dehyphenate", action="store_true", help="rejoin words hyphenated at line ends")
    ocr.add_argument("--no-progress", action="store_true")
    ocr.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    ocr.set_defaults(func=run_ocr)

    som = sub.add_parser("som", help="COCO annotations -> Set-of-Mark marked images and samples")
    som.add_argument("--annotations", required=True, help="COCO-style JSON (boxes, polygons or RLE)")
    som.add_argument("--images", required=True, help="folder the annotations' file_name values are relative to")
    som.add_argument("--out", required=True, help="output folder")
    som.add_argument("--style", choices=["mask", "box", "label"], default="mask", help="what each mark draws")
    som.add_argument("--max-marks", type=int, default=20)
    som.add_argument("--captioner-url", help="OpenAI-compatible server (root or .../v1); default: templates")
    som.add_argument("--captioner-model", help="model name sent to the captioner")
    som.add_argument("--api-key", help="captioner API key (default: $OPENAI_API_KEY)")
    som.add_argument("--captioner-max-tokens", type=int, default=1024, help="max_tokens of each caption request")
    som.add_argument("--retries", type=int, default=4, help="retries per caption on transient errors")
    som.add_argument("--no-progress", action="store_true")
    som.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    som.set_defaults(func=run_som)
