"""Validate a whole data mix without training (`sphinx-x data check`).

Every record of every source is read and validated exactly as the training dataset does (same
parser, same image loader, same encoder), but problems are collected instead of raised, one line
each as `path:line: message`. Per-type statistics count samples and tokens (before truncation).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from sphinx_x.canvas import ImageError, load_image
from sphinx_x.config import VisionConfig
from sphinx_x.data.conversation import parse_sample
from sphinx_x.data.dataset import image_header_size
from sphinx_x.data.encode import DialogueEncoder, SampleRejected
from sphinx_x.data.readers import DataError, Location, load_mix
from sphinx_x.data.templates import Template, TemplateError
from sphinx_x.image_tokens import check_max_len, visual_token_count


@dataclass
class TypeStats:
    records: int = 0  # records in the files (before ratio)
    effective: float = 0.0  # records after each source's ratio
    clean: int = 0  # records without any problem
    text_tokens: int = 0
    visual_tokens: int = 0
    images: int = 0
    longest: int = 0
    too_long: int = 0


@dataclass
class CheckReport:
    problems: list[str] = field(default_factory=list)
    stats: dict[str, TypeStats] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        head = f"{'type':<20} {'records':>8} {'effective':>10} {'clean':>8} {'text tok':>10} {'visual tok':>11} " \
               f"{'images':>7} {'longest':>8} {'too long':>8}"
        lines = [head]
        for name, s in sorted(self.stats.items()):
            lines.append(f"{name:<20} {s.records:>8} {s.effective:>10.0f} {s.clean:>8} {s.text_tokens:>10} "
                         f"{s.visual_tokens:>11} {s.images:>7} {s.longest:>8} {s.too_long:>8}")
        lines.append(f"{len(self.problems)} problem(s)")
        return "\n".join(lines)


def check_mix(
    mix_path: str | Path,
    tokenizer: Any,
    vision: VisionConfig,
    *,
    template: Template | str = "accessory",
    max_len: int | None = 2048,
    decode_images: bool = True,
    on_problem: Callable[[str], None] | None = None,
) -> CheckReport:
    """Check every record; `on_problem` sees each problem line as it is found (for streaming output)."""
    report = CheckReport()

    def problem(line: str) -> None:
        report.problems.append(line)
        if on_problem is not None:
            on_problem(line)

    check_max_len(max_len, vision)
    try:
        mix = load_mix(mix_path)
    except DataError as e:
        problem(str(e))
        return report
    encoder = DialogueEncoder(tokenizer, template, max_len)
    for src in mix.sources:
        stats = report.stats.setdefault(src.type, TypeStats())
        try:
            reader = src.open()
        except DataError as e:
            problem(str(e))
            continue
        stats.effective += len(reader) * src.ratio
        for location, raw in reader:
            stats.records += 1
            found = _check_record(raw, location, src.root, src.type, vision, encoder, stats, decode_images)
            for line in found:
                problem(line)
            stats.clean += not found
    return report


def _check_record(raw: Any, location: Location, root: Path, type_: str, vision: VisionConfig,
                  encoder: DialogueEncoder, stats: TypeStats, decode: bool) -> list[str]:
    if isinstance(raw, DataError):
        return [str(raw)]
    try:
        sample = parse_sample(raw, location, root, type_)
    except DataError as e:
        return [str(e)]
    problems, sizes = [], []
    for k, path in enumerate(sample.images):
        name = "image" if len(sample.images) == 1 else f"image[{k}]"
        try:
            sizes.append(_image_size(path, vision, decode))
        except DataError as e:
            problems.append(f"{location}: {name}: {e.detail}")
    if problems:
        return problems
    counts = [visual_token_count(w, h, vision) for w, h in sizes]
    try:
        enc = encoder.encode(sample.messages, counts)
    except TemplateError as e:
        return [f"{location}: conversations: {e}"]
    except SampleRejected as e:
        stats.too_long += 1
        return [f"{location}: sample is longer than max length {encoder.max_len} and would be rejected: {e}"]
    stats.text_tokens += enc.full_length - sum(counts)
    stats.visual_tokens += sum(counts)
    stats.images += len(counts)
    stats.longest = max(stats.longest, enc.full_length)
    if enc.dropped_turns or enc.cut_inside_turn:
        stats.too_long += 1
        what = f"{enc.dropped_turns} trailing turn(s) would be dropped" if not enc.cut_inside_turn \
            else "its first turn would be cut"
        return [f"{location}: sample has {enc.full_length} tokens, longer than max length {encoder.max_len}; {what}"]
    return []


def _image_size(path: Path, vision: VisionConfig, decode: bool) -> tuple[int, int]:
    """(width, height) as training will see it; raises DataError when it is missing or unreadable."""
    if not path.is_file():
        raise DataError("", f"file not found: {path}", reason="image_missing")
    try:
        if decode:
            return load_image(path, max_pixels=vision.canvas.max_pixels, background=vision.canvas.pad_color).size
        return image_header_size(path)
    except ImageError as e:
        raise DataError("", str(e), reason="image_unreadable") from e
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise DataError("", f"{path}: not a readable image ({e})", reason="image_unreadable") from e
