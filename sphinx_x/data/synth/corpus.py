"""Write the synthetic multi-domain corpus: images, per-domain JSONL, the mixes and the synth-bench.

Layout of `out/`:
    synth.json                 what was generated (seed, counts per split / domain / bench task)
    train.yaml, val.yaml       data mixes, `META: [{path, type, root}]`, one entry per domain file
    train/<domain>.jsonl       LLaVA/Accessory rows; image paths relative to `out/` (root: .)
    train/drills.jsonl         with `drills` > 0: arithmetic drill dialogues (text), also in train.yaml
    val/<domain>.jsonl
    bench.jsonl                the held-out test split as synth-bench rows (issue 6 format)
    images/<split>/<index>.png

Determinism: sample `index` of `split` is made only from `sample_rng(seed, split, index)`; its domain
(or bench task) is a fixed function of the index; PNGs are written with fixed settings and no metadata,
JSON with sorted keys. So reruns are byte-identical and the worker count does not change the output.
"""

from __future__ import annotations

import io
import json
import multiprocessing as mp
import shutil
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import yaml

from sphinx_x.data.synth.charts import generate_chart
from sphinx_x.data.synth.common import Sample, sample_rng
from sphinx_x.data.synth.ocr import generate_ocr
from sphinx_x.data.synth.scenes import generate_caption, generate_grounding, generate_vqa
from sphinx_x.data.synth.som import generate_som
from sphinx_x.data.synth.text import arithmetic, generate_text

MARKER = "synth.json"
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Domain:
    generate: Callable[..., Sample]
    type: str  # the mix `type`: every global batch holds one type
    weight: int  # share of the train/val splits


# Weights favour the short-answer domains: a global batch's loss is a mean over its answer tokens, so one
# detailed caption or layout (30-60 tokens) outweighs dozens of one-word VQA answers; the quickstart's
# 10-minute budget learns colour / shape / count / OCR / REC / arithmetic faster with more of those. VQA has a
# large share because its lookup questions (the colour of the named shape) only start to work after ~10,000 of
# them: at weight 8 the quickstart corpus held 3,800 and colour stayed at the bag level; at 16 (9,900) colour
# reached 86%, at 24 (11,700) 97.5% on 200 held-out rows (docs/experiments.md, stops 30-31). Grounding as much: at
# weight 3 the one-stage run wore down the boxes the stand-ins' warm-up had taught (a lone object's box 88% -> 20%),
# at 12 it kept them (67%); its dialogues ask a box question first; at 24 the quickstart's REC is 35.8 ± 3.8 against
# 30.0 ± 8.7 at 12, the other tasks unchanged (docs/experiments.md, stops 36-37).
# OCR pages at weight 8 (of 63) instead of 3, with experts and a warm-up that read: the quickstart's OCR 37.5 ± 2.5
# against 28.3 ± 10.1, REC and count unchanged (docs/experiments.md, stop 40); on the shipped stand-ins 33.3 ± 6.3.
# At 12, OCR 38.3 ± 2.9 (inside the spreads) and count fell to 60.0 ± 2.5 (stop 41).
DOMAINS: dict[str, Domain] = {
    "vqa": Domain(generate_vqa, "image_text", 24),
    "caption": Domain(generate_caption, "image_text", 1),
    "grounding": Domain(generate_grounding, "image_text", 24),
    "ocr": Domain(generate_ocr, "image_text", 8),
    "chart": Domain(generate_chart, "image_text", 1),
    "som": Domain(generate_som, "image_text", 1),
    "text": Domain(generate_text, "text", 4),
}

# synth-bench tasks (the test split cycles through them) and the domain that asks each.
BENCH_TASKS: dict[str, str] = {
    "color": "vqa", "shape": "vqa", "count": "vqa", "spatial": "vqa", "pope": "vqa", "mc": "vqa",
    "caption": "caption", "rec": "grounding", "ocr": "ocr", "chart": "chart", "som": "som",
    "arithmetic": "text", "code": "text",
}


def _schedule(domains: dict[str, Domain] | None = None) -> list[str]:
    """Weighted round robin: the first len(domains) indices cover every domain once."""
    domains = DOMAINS if domains is None else domains
    out = []
    for r in range(max(d.weight for d in domains.values())):
        out += [name for name, d in domains.items() if d.weight > r]
    return out


SCHEDULE = _schedule()

# The training mix as it was when the shipped nano tokenizer was built (VQA at weight 8 without lookups first,
# grounding at weight 3 without a box question first, OCR at weight 3 with its kinds 3:2:2:2):
# scripts/build_nano_tokenizer.py trains on it, so the tokenizer the stand-in LLM knows stays reproducible.
TOKENIZER_OCR_KINDS = {"word": 3, "line": 2, "spotting": 2, "page": 2}
TOKENIZER_DOMAINS = {**DOMAINS, "vqa": Domain(partial(generate_vqa, lookups_first=False), "image_text", 8),
                     "grounding": Domain(partial(generate_grounding, rec_first=False), "image_text", 3),
                     "ocr": Domain(partial(generate_ocr, kind_weights=TOKENIZER_OCR_KINDS), "image_text", 3)}
TOKENIZER_SCHEDULE = _schedule(TOKENIZER_DOMAINS)


def tokenizer_sample(seed: int, index: int) -> Sample:
    """Training sample `index` of the tokenizer's mix (TOKENIZER_DOMAINS)."""
    domain = TOKENIZER_SCHEDULE[index % len(TOKENIZER_SCHEDULE)]
    return TOKENIZER_DOMAINS[domain].generate(sample_rng(seed, "train", index), None)

# Arithmetic drills (`generate_corpus(drills=N)`): text dialogues of 4-8 synth-bench arithmetic questions, added to
# the training mix beside the scheduled samples. The text domain's dialogues hold too few sums for nano's LLM to
# learn them in the quickstart's steps; 1600 drills lift synth-bench arithmetic from 18 to 52, 3200 to 73, and keep
# the visual tasks (docs/experiments.md, stops 28-29).
DRILL_TURNS = (4, 8)


def domain_of(split: str, index: int) -> tuple[str, str | None]:
    """(domain, bench task or None) of sample `index` of `split`."""
    if split == "test":
        task = list(BENCH_TASKS)[index % len(BENCH_TASKS)]
        return BENCH_TASKS[task], task
    return SCHEDULE[index % len(SCHEDULE)], None


def make_sample(seed: int, split: str, index: int) -> Sample:
    """The one sample at (seed, split, index); the same on every call and in every process."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    domain, task = domain_of(split, index)
    return DOMAINS[domain].generate(sample_rng(seed, split, index), task)


# ---- rows --------------------------------------------------------------------------------------
def encode_png(img) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=6)  # no metadata chunks: identical pixels, identical bytes
    return buf.getvalue()


def conversation_row(sample: Sample, sid: str, image: str | None) -> dict[str, Any]:
    """A training row in the LLaVA format: `sid`, the sample's turns as human / gpt pairs, `image` when given."""
    # No `<image>` placeholder: the image goes right after BOS (README's rule for a sample
    # without one), the same layout inference uses for "an image + a question" (`model.chat`, the
    # harness, synth-bench rows), so training and evaluation see identical prompts.
    conv = []
    for q, a in sample.turns:
        conv += [{"from": "human", "value": q}, {"from": "gpt", "value": a}]
    row: dict[str, Any] = {"id": sid, "conversations": conv}
    if image is not None:
        row["image"] = image
    return row


def _bench_row(sample: Sample, sid: str, image: str | None) -> dict[str, Any]:
    row = {"id": sid, "question": sample.turns[0][0], **sample.bench}
    if image is not None:
        row["image"] = image
    return row


def build(job: tuple[int, str, int]) -> tuple[str, str, bytes | None]:
    """Worker: (seed, split, index) -> (domain, JSON line, PNG bytes or None)."""
    seed, split, index = job
    sample = make_sample(seed, split, index)
    sid = f"{split}-{index:06d}"
    image = f"images/{split}/{index:06d}.png" if sample.image is not None else None
    row = _bench_row(sample, sid, image) if split == "test" else conversation_row(sample, sid, image)
    png = encode_png(sample.image) if sample.image is not None else None
    return sample.domain, json.dumps(row, sort_keys=True, ensure_ascii=False), png


# ---- the corpus --------------------------------------------------------------------------------
def _prepare_out(out: Path) -> None:
    """Refuse to write into a non-empty directory that is not a previous synth corpus; clear one that is."""
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out}: exists and is not a directory")
    if out.is_dir() and any(out.iterdir()):
        if not (out / MARKER).is_file():
            raise FileExistsError(f"{out}: directory is not empty and holds no {MARKER}; refusing to overwrite it")
        for name in ("images", "train", "val"):
            shutil.rmtree(out / name, ignore_errors=True)
        for name in (MARKER, "train.yaml", "val.yaml", "bench.jsonl"):
            (out / name).unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)


def _write_split(out: Path, seed: int, split: str, n: int, pool, progress) -> Counter:
    (out / "images" / split).mkdir(parents=True, exist_ok=True)
    jobs = [(seed, split, i) for i in range(n)]
    results = pool.imap(build, jobs, chunksize=16) if pool is not None else map(build, jobs)
    handles: dict[str, Any] = {}
    counts: Counter = Counter()
    try:
        for (_, _, index), (domain, line, png) in zip(jobs, results):
            if png is not None:
                (out / "images" / split / f"{index:06d}.png").write_bytes(png)
            key = "bench" if split == "test" else domain
            if key not in handles:
                path = out / "bench.jsonl" if split == "test" else out / split / f"{domain}.jsonl"
                path.parent.mkdir(parents=True, exist_ok=True)
                handles[key] = path.open("w", encoding="utf-8", newline="\n")
            handles[key].write(line + "\n")
            counts[json.loads(line)["task"] if split == "test" else domain] += 1
            if progress is not None:
                progress.update(1)
    finally:
        for h in handles.values():
            h.close()
    if split == "test" and n == 0:
        (out / "bench.jsonl").write_text("")
    return counts


def _write_mix(out: Path, split: str, counts: Counter) -> None:
    meta = [{"path": f"{split}/{name}.jsonl", "type": d.type, "root": "."}
            for name, d in DOMAINS.items() if counts.get(name)]
    if counts.get("drills"):
        meta.append({"path": f"{split}/drills.jsonl", "type": "text", "root": "."})
    (out / f"{split}.yaml").write_text(yaml.safe_dump({"META": meta}, sort_keys=False))


def drill_sample(seed: int, index: int) -> Sample:
    """Arithmetic drill `index` of corpus `seed`: one text dialogue of 4-8 synth-bench arithmetic questions."""
    rng = sample_rng(seed, "drills", index)
    return Sample("drills", [arithmetic(rng) for _ in range(rng.randint(*DRILL_TURNS))], None)


def _write_drills(out: Path, seed: int, n: int) -> None:
    with (out / "train" / "drills.jsonl").open("w", encoding="utf-8", newline="\n") as f:
        for i in range(n):
            row = conversation_row(drill_sample(seed, i), f"drill-{i:06d}", None)
            f.write(json.dumps(row, sort_keys=True, ensure_ascii=False) + "\n")


def generate_corpus(out: str | Path, train: int, val: int, test: int, seed: int = 0, workers: int = 1,
                    progress: bool = False, drills: int = 0) -> dict[str, Any]:
    """Generate the corpus into `out`; returns the summary also written to `out/synth.json`. `drills` > 0 adds
    that many arithmetic drill dialogues (`drill_sample`) to the training mix, beside the `train` samples."""
    for name, n in (("train", train), ("val", val), ("test", test), ("drills", drills)):
        if n < 0:
            raise ValueError(f"--{name} must be >= 0, got {n}")
    if workers < 1:
        raise ValueError(f"--workers must be >= 1, got {workers}")
    out = Path(out)
    _prepare_out(out)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=train + val + test, unit="sample", desc="synth")
    pool = mp.get_context().Pool(workers) if workers > 1 else None  # platform default start method
    try:
        counts = {split: _write_split(out, seed, split, n, pool, bar)
                  for split, n in (("train", train), ("val", val), ("test", test))}
    finally:
        if pool is not None:
            pool.close()
            pool.join()
        if bar is not None:
            bar.close()
    if drills:
        (out / "train").mkdir(parents=True, exist_ok=True)
        _write_drills(out, seed, drills)
        counts["train"]["drills"] = drills
    _write_mix(out, "train", counts["train"])
    _write_mix(out, "val", counts["val"])
    summary = {
        "seed": seed,
        "sizes": {"train": train, "val": val, "test": test, "drills": drills},
        "domains": {split: dict(sorted(counts[split].items())) for split in ("train", "val")},
        "bench_tasks": dict(sorted(counts["test"].items())),
    }
    (out / MARKER).write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    return summary
