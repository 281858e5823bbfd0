"""The training dataset over a data mix, its collate function, and the DataLoader builder.

`MixDataset[i]` reads one record (lazily for JSONL), validates it, loads its images, encodes the
dialogue (template, image tokens, labels, truncation) and cuts the images into expert views. It
returns an `Item`, or a `Skipped` marker for a sample that cannot be trained on: in lenient mode any
bad sample, in both modes a sample with no supervised token after truncation. Strict mode (the
default) raises `DataError` for malformed data, naming file, line or index, and field.

Counters: `dataset.skipped` / `dataset.truncated` count what this process saw. DataLoader workers are
other processes, so every collated batch also carries its own `skipped` Counter and `truncated`
count; the trainer adds those up (`SkipReport.add(batch)`) and prints `SkipReport.summary()`.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from sphinx_x.canvas import ImageError, ImageViews, collate_images, load_image, prepare_image
from sphinx_x.config import VisionConfig
from sphinx_x.constants import IGNORE_INDEX
from sphinx_x.data.conversation import Sample, parse_sample
from sphinx_x.data.encode import DialogueEncoder, SampleRejected
from sphinx_x.data.readers import DataError, Mix, expand_ratio, load_mix
from sphinx_x.data.sampler import TypeGroupedBatchSampler
from sphinx_x.data.templates import Template, TemplateError
from sphinx_x.fileio import atomic_path
from sphinx_x.image_tokens import check_max_len, visual_token_count

_EXIF_ORIENTATION = 0x0112


@dataclass
class Item:
    """One encoded training sample: ids and labels (IGNORE_INDEX where no loss), its images' views, the
    mix type it came from, its dataset index, and whether truncation cut it."""

    input_ids: torch.Tensor  # (T,) long
    labels: torch.Tensor  # (T,) long
    images: list[ImageViews]
    type: str
    index: int
    num_visual_tokens: int
    truncated: bool = False


@dataclass
class Skipped:
    """A sample that cannot be trained on: the reason (a short key such as "image_missing"), a message
    naming the file / line and field, and its dataset index."""

    reason: str
    message: str
    index: int


def image_header_size(path: str | Path) -> tuple[int, int]:
    """(width, height) as `load_image` will return it, read from the header only (no decoding)."""
    with Image.open(path) as im:
        w, h = im.size
        if im.getexif().get(_EXIF_ORIENTATION) in (5, 6, 7, 8):  # rotated by 90 degrees on load
            w, h = h, w
    return w, h


class MixDataset(Dataset):
    """The training samples of a data mix (a mix YAML path or a loaded `Mix`), each source repeated or
    sub-sampled by its `ratio` (seeded by `seed`). Indexing returns an `Item` or a `Skipped` marker (see the
    module docstring); `Collator` pads a list of them into a batch.

    `tokenizer` and `template` encode the dialogues; `vision` (the model's VisionConfig) decides how many
    image tokens each image takes and how it is cut into views; `max_len` truncates (it must hold one full
    image); `lenient` skips bad samples instead of raising `DataError`; `cache_dir` caches the sample-length
    estimates that `lengths()` computes for batching."""

    def __init__(
        self,
        mix: Mix | str | Path,
        tokenizer: Any,
        vision: VisionConfig,
        *,
        template: Template | str = "accessory",
        max_len: int | None = 2048,
        lenient: bool = False,
        seed: int = 0,
        cache_dir: str | Path | None = None,
    ):
        self.mix = mix if isinstance(mix, Mix) else load_mix(mix)
        self.vision = vision
        self.tokenizer = tokenizer
        self.encoder = DialogueEncoder(tokenizer, template, max_len)
        check_max_len(max_len, vision)
        self.lenient = lenient
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.readers = [src.open() for src in self.mix.sources]
        rng = np.random.default_rng(seed)
        records = [expand_ratio(len(r), s.ratio, rng) for r, s in zip(self.readers, self.mix.sources)]
        self.source_of = np.concatenate([np.full(len(r), i, dtype=np.int32) for i, r in enumerate(records)])
        self.record_of = np.concatenate(records)
        self.type_names = self.mix.types
        source_type = np.array([self.type_names.index(s.type) for s in self.mix.sources], dtype=np.int64)
        self.type_ids = source_type[self.source_of]  # per index
        self.phase_ids = np.array([s.phase for s in self.mix.sources], dtype=np.int64)[self.source_of]
        self.skipped: Counter[str] = Counter()
        self.truncated = 0
        self._lengths: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.record_of)

    def type_of(self, i: int) -> str:
        """The mix type (the source's `type`) of index i."""
        return self.type_names[self.type_ids[i]]

    # ---- reading -----------------------------------------------------------------------------
    def sample(self, i: int) -> Sample:
        """The validated record behind index i (raises DataError)."""
        s, r = int(self.source_of[i]), int(self.record_of[i])
        src, reader = self.mix.sources[s], self.readers[s]
        return parse_sample(reader.read(r), reader.location(r), src.root, src.type)

    def load_images(self, sample: Sample) -> list[Image.Image]:
        """The sample's images, decoded and EXIF-rotated; a missing or unreadable file is a DataError."""
        out = []
        for k, path in enumerate(sample.images):
            name = "image" if len(sample.images) == 1 else f"image[{k}]"
            if not path.is_file():
                raise DataError(sample.location, f"file not found: {path}", field=name, reason="image_missing")
            try:
                out.append(load_image(path, max_pixels=self.vision.canvas.max_pixels,
                                      background=self.vision.canvas.pad_color))
            except ImageError as e:
                raise DataError(sample.location, str(e), field=name, reason="image_unreadable") from e
        return out

    def __getitem__(self, i: int) -> Item | Skipped:
        try:
            sample = self.sample(i)
            images = self.load_images(sample)
            counts = [visual_token_count(im.width, im.height, self.vision) for im in images]
            try:
                enc = self.encoder.encode(sample.messages, counts)
            except TemplateError as e:
                raise DataError(sample.location, str(e), field="conversations", reason="template_error") from e
        except DataError as e:
            if not self.lenient:
                raise
            return self._skip(e.reason, str(e), i)
        except SampleRejected as e:  # too long to keep any answer: rejected in both modes
            return self._skip(e.reason, f"{sample.location}: {e}", i)
        truncated = bool(enc.dropped_turns or enc.cut_inside_turn)
        self.truncated += truncated
        return Item(
            input_ids=torch.tensor(enc.input_ids, dtype=torch.long),
            labels=torch.tensor(enc.labels, dtype=torch.long),
            images=[prepare_image(im, self.vision) for im in images[: enc.num_images]],
            type=sample.type,
            index=i,
            num_visual_tokens=enc.num_visual_tokens,
            truncated=truncated,
        )

    def _skip(self, reason: str, message: str, i: int) -> Skipped:
        self.skipped[reason] += 1
        return Skipped(reason, message, i)

    # ---- length estimates for bucketing ------------------------------------------------------
    def lengths(self) -> np.ndarray:
        """Estimated token length per index: template text tokens (chars x a per-source tokens/char
        ratio measured on its first records) + visual tokens from image headers. Bad records get 0
        (their errors surface when they are read). Cached in memory and, with `cache_dir`, on disk."""
        if self._lengths is None:
            per_source = [self._source_lengths(s) for s in range(len(self.readers))]
            offsets = np.cumsum([0] + [len(p) for p in per_source])[:-1]
            flat = np.concatenate(per_source + [np.zeros(0, dtype=np.int64)])
            self._lengths = flat[offsets[self.source_of] + self.record_of]
        return self._lengths

    def _source_lengths(self, s: int) -> np.ndarray:
        src, reader = self.mix.sources[s], self.readers[s]
        cache = self._cache_path(src) if self.cache_dir is not None else None
        if cache is not None and cache.is_file():
            cached = np.load(cache)
            if len(cached) == len(reader):
                return cached
        chars = np.zeros(len(reader), dtype=np.int64)
        visual = np.zeros(len(reader), dtype=np.int64)
        texts: list[str] = []
        for r in range(len(reader)):
            try:
                sample = parse_sample(reader.read(r), reader.location(r), src.root, src.type)
                text, _ = self.encoder.template.render(sample.messages)
            except (DataError, TemplateError):
                continue
            chars[r] = len(text)
            if len(texts) < 256:
                texts.append(text)
            visual[r] = sum(self._header_tokens(p) for p in sample.images)
        ratio = sum(self.encoder.count_text_tokens(texts)) / max(1, sum(len(t) for t in texts)) if texts else 0.3
        out = np.ceil(chars * ratio).astype(np.int64) + visual
        if cache is not None:
            with atomic_path(cache) as tmp:  # a concurrent reader never sees half a file
                np.save(tmp, out)
        return out

    def _header_tokens(self, path: Path) -> int:
        try:
            w, h = image_header_size(path)
        except (OSError, ValueError, Image.DecompressionBombError):
            return 0
        return visual_token_count(w, h, self.vision) if w > 0 and h > 0 else 0

    def _cache_path(self, src: Any) -> Path:
        st = src.path.stat()
        c = self.vision.canvas
        key = json.dumps([
            str(src.path), st.st_size, st.st_mtime_ns, str(src.root), self.encoder.template.name,
            getattr(self.tokenizer, "name_or_path", ""), len(self.tokenizer), c.grid, c.pad_anchor,
            c.skip_padded_cells, self.vision.tokens_per_view,
        ])
        return self.cache_dir / f"lengths-{hashlib.sha256(key.encode()).hexdigest()[:24]}.npy"


# ---- collation ---------------------------------------------------------------------------------
@dataclass
class Collator:
    """Pads a list of `Item`s (dropping `Skipped`) into the batch dict the model and trainer use."""

    pad_id: int
    vision: VisionConfig

    def __call__(self, items: Sequence[Item | Skipped]) -> dict[str, Any]:
        """The batch: right-padded `input_ids`, `labels`, `attention_mask` (B, T), `images` (an ImageBatch),
        and the counts the trainer logs (`type`, token counts, `skipped`, `truncated`, `indices`)."""
        kept = [it for it in items if isinstance(it, Item)]
        skipped = Counter(it.reason for it in items if isinstance(it, Skipped))
        width = max((len(it.input_ids) for it in kept), default=0)
        input_ids = torch.full((len(kept), width), self.pad_id, dtype=torch.long)
        labels = torch.full((len(kept), width), IGNORE_INDEX, dtype=torch.long)
        attention_mask = torch.zeros((len(kept), width), dtype=torch.long)
        for b, it in enumerate(kept):  # right padding
            n = len(it.input_ids)
            input_ids[b, :n] = it.input_ids
            labels[b, :n] = it.labels
            attention_mask[b, :n] = 1
        types = {it.type for it in kept}
        num_visual = sum(it.num_visual_tokens for it in kept)
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "labels": labels,
            "images": collate_images([v for it in kept for v in it.images], self.vision),
            "type": types.pop() if len(types) == 1 else ("mixed" if types else ""),
            "num_text_tokens": int(attention_mask.sum()) - num_visual,
            "num_visual_tokens": num_visual,
            "skipped": skipped,
            "truncated": sum(it.truncated for it in kept),
            "indices": [it.index for it in kept],
        }


def pad_token_id(tokenizer: Any) -> int:
    """The tokenizer's pad id, else EOS, else 0 (padding is masked out, so any id is safe)."""
    for attr in ("pad_token_id", "eos_token_id"):
        value = getattr(tokenizer, attr, None)
        if value is not None:
            return int(value)
    return 0


@dataclass
class SkipReport:
    """Adds up the per-batch `skipped` / `truncated` counts in the main process."""

    skipped: Counter = field(default_factory=Counter)
    truncated: int = 0
    samples: int = 0

    def add(self, batch: dict[str, Any]) -> None:
        """Count one collated batch's samples, skips and truncations."""
        self.skipped.update(batch["skipped"])
        self.truncated += batch["truncated"]
        self.samples += batch["input_ids"].shape[0]

    def summary(self) -> str:
        """Samples used, truncated and skipped so far, then one line per skip reason."""
        parts = [f"{self.samples} samples used, {self.truncated} truncated, {sum(self.skipped.values())} skipped"]
        parts += [f"  {reason}: {n}" for reason, n in sorted(self.skipped.items())]
        return "\n".join(parts)


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)  # image work is per-sample; avoid workers x cores thread oversubscription


def build_dataloader(
    dataset: MixDataset,
    *,
    global_batch_size: int,
    micro_batch_size: int,
    world_size: int = 1,
    rank: int = 0,
    seed: int = 0,
    drop_last: bool = True,
    num_workers: int = 0,
    pin_memory: bool = False,
) -> DataLoader:
    """A DataLoader yielding this rank's micro-batches; `loader.batch_sampler` is the
    `TypeGroupedBatchSampler` (call its `set_epoch`, `state_dict`, `load_state_dict`)."""
    sampler = TypeGroupedBatchSampler(
        dataset.lengths(), dataset.type_ids, global_batch_size, micro_batch_size,
        world_size=world_size, rank=rank, seed=seed, drop_last=drop_last, phases=dataset.phase_ids,
    )
    return DataLoader(
        dataset,
        batch_sampler=sampler,
        collate_fn=Collator(pad_token_id(dataset.tokenizer), dataset.vision),
        num_workers=num_workers,
        pin_memory=pin_memory,
        worker_init_fn=_worker_init if num_workers else None,
        persistent_workers=num_workers > 0,
    )
