"""Inference side by side with transformers' LLaVA-NeXT: same LLM weights, towers matched on FLOPs.

    python benchmarks/bench_vs_llava_next.py [--sizes nano,45m] [--dtypes fp32,bf16] [--reps 5]
        [--new-tokens 32] [--threads 1] [--compile] [--clock wall|cpu] [--preprocess-baseline REV]
        [--device cpu|cuda] [--retain-host-memory]
    python benchmarks/bench_vs_llava_next.py --gpu     # the `tiny` size, bf16, on one GPU (see below)

One process builds both models per (size, dtype) and runs every measurement as alternating
repetitions (ours, theirs, ours, theirs, ...) after one warm-up each, so slow drift of a shared machine
hits both sides alike. Reported: the median time (or rate) of each side, and ours-vs-theirs as a speed-up
(> 1 = ours faster) taken per adjacent pair, median with [min, max] over the pairs. A fixed fp32 matmul
(`measure_matmul_peak`, 512^3) is timed at start and end: if the two GFLOP/s figures differ much, the
machine was busy and every number in between is suspect. Random weights; nothing is downloaded.

Why each setting is fair:
- Same LLM, same weights: the `nano` Llama (or a ~45M one: d 640 x 10 layers, GQA 10/5) is built once
  by `SphinxX`; its `LlamaConfig` is LLaVA-NeXT's `text_config` and its state dict is copied into
  LLaVA-NeXT's language model and LM head (checked: identical text-only logits). The nano tokenizer
  serves both; LLaVA-NeXT's image token is one of its reserved special tokens, so the vocabulary and
  the embedding matrix are the same too.
- Vision matched on FLOPs, not on design: SPHINX-X nano runs two experts (ConvNeXt on 128-px views,
  DINOv2-style ViT on 56-px views) over a global view + 2x2 cells; LLaVA-NeXT runs one CLIP ViT
  (patch 32, width 128, 4 layers) on 128-px views with `image_grid_pinpoints=[[256, 256]]`, i.e. the
  same global view + 2x2 grid. FLOPs of both vision paths (towers + projectors) are counted with
  `torch.utils.flop_counter` and printed. Both drop work on padding: SPHINX-X skips cells that hold
  only padding (a skip token each), LLaVA-NeXT unpads its feature grid; visual token counts per image
  are printed (they differ by design: 95/59 vs 88/52 for 1:1/2:1 in nano).
- Same text: the prompt is built by our template; LLaVA-NeXT gets the same text with its image token
  where ours has the image (the text ids are compared and printed).
- Same work per generation: greedy, no stop condition (ours: no stop strings, EOS -1; theirs: no EOS),
  exactly `--new-tokens` per sample, so neither side stops early.
- Each side through its public path: ours `decode_batch` / `SphinxX.generate` (prompt encoder,
  stop rule, incremental text), theirs `LlavaNextProcessor` + `generate` (+ `batch_decode` end to end).
  Time to first token = from the call to the first generated token (a streamer's first put for theirs,
  the first event for ours) from preprocessed inputs; decode tokens/s = the tokens after the first over
  the time after it; batch-8 throughput = 8 x new tokens over the whole call (4 images 1:1, 4 images 2:1,
  left padded); end to end = PNG bytes + question -> answer text, batch 1; preprocessing = PNG bytes ->
  model-ready tensors (ours `load_image` + `prepare_image`, theirs PIL open + `LlavaNextImageProcessor`,
  the default torchvision backend).
- `--compile` wraps both LLMs' forward in `torch.compile(dynamic=True)` the same way (ours through
  `compile_for_generation`); compilation happens in the warm-up repetitions, which are not timed.
- `--clock cpu` times with the process's CPU time (`time.process_time`) instead of wall time: on a shared
  machine a wall-clock interval also holds the time this process waited for a core, which lands on
  whichever side happened to be running; CPU time counts only the work done (all of the process's
  threads, so it suits `--threads 1`, where the work is the same). Both sides use the same clock.
- `--retain-host-memory` keeps freed host memory in the process (`sphinx_x.hostmem`, what the `sphinx-x`
  inference commands do at start); it is process-wide, so it holds for both sides.
- `--preprocess-baseline REV` adds one row: our preprocessing now against `sphinx_x/canvas.py` as of git
  revision REV (`load_image` + `prepare_image` of that file, read with `git show`), alternating as above.
- Same threads (`--threads`, default 1 because the machine is shared) and dtype for both; bf16 runs
  both models in bfloat16 (the CPU's AVX512-BF16 support decides whether bf16 is fast; `lscpu` tells).

The `tiny` size (`--gpu` = `--sizes tiny --dtypes bf16 --device cuda --reps 5 --clock wall`) compares the
designs at SPHINX-Tiny's scale, not matched on FLOPs: ours is the `tiny` preset (TinyLlama-1.1B dims, CLIP
ConvNeXt-XXL on 512-px views and DINOv2-g on 224-px views, 2x2 grid), theirs LLaVA-NeXT's own tower (CLIP
ViT-L/14 at 336 px, features of its second-last layer, its two-layer projector) with
`image_grid_pinpoints=[[672, 672]]` (the same global view + 2x2 grid) over the same LLM weights. Inputs are
1024x1024 and 1024x512 PNGs. The tokenizer is nano's with added tokens up to the LLM's 32000 ids (random
weights generate any id; no model hub is reachable), so both sides encode and decode the same ids. On a GPU
every clock reading is preceded by `torch.cuda.synchronize()`, so a time covers the kernels it launched.
"""

from __future__ import annotations

import argparse
import io
import statistics
import subprocess
import sys
import time
import types
from collections.abc import Callable
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.flop_counter import FlopCounterMode
from transformers import (
    CLIPVisionConfig,
    LlavaNextConfig,
    LlavaNextForConditionalGeneration,
    LlavaNextImageProcessor,
    LlavaNextProcessor,
)

from sphinx_x.canvas import collate_images, load_image, prepare_image
from sphinx_x.config import CLIP_MEAN, CLIP_STD, SphinxXConfig
from sphinx_x.constants import IMAGE_TOKEN_ID
from sphinx_x.hostmem import retain_freed_host_memory
from sphinx_x.infer.chat import encode
from sphinx_x.infer.generate import compile_for_generation, decode_batch
from sphinx_x.infer.options import GenerationConfig
from sphinx_x.model import SphinxX, detach_weight_paths
from sphinx_x.tokenizer import load_tokenizer
from sphinx_x.train.flops import measure_matmul_peak

LLM_SIZES = {
    "nano": {},
    "45m": dict(hidden_size=640, num_layers=10, num_heads=10, num_kv_heads=5, intermediate_size=1728),
    "tiny": None,  # the `tiny` preset as it is, vision included
}
CPU = torch.device("cpu")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
CLIP_TOWER = dict(hidden_size=128, intermediate_size=512, num_hidden_layers=4, num_attention_heads=4,
                  image_size=128, patch_size=32)
CLIP_VIT_L_336 = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                      image_size=336, patch_size=14)  # LLaVA-NeXT's tower (openai/clip-vit-large-patch14-336)
IMAGE_TOKEN = "<reserved_1179>"  # an existing special token of the nano tokenizer: LLaVA-NeXT's image token
IMAGES = {"1:1": (384, 384), "2:1": (512, 256)}  # input sizes (width, height) before preprocessing
TINY_IMAGES = {"1:1": (1024, 1024), "2:1": (1024, 512)}
QUESTION = "Describe the image in detail."
GPU = dict(sizes="tiny", dtypes="bf16", device="cuda", reps=5, clock="wall")
now = time.perf_counter  # --clock cpu: time.process_time; on a GPU, after a synchronize (`make_clock`)


def make_clock(kind: str, device: torch.device) -> Callable[[], float]:
    base = time.process_time if kind == "cpu" else time.perf_counter
    if device.type != "cuda":
        return base

    def synced() -> float:
        torch.cuda.synchronize(device)
        return base()

    return synced


def images_for(size: str) -> dict[str, tuple[int, int]]:
    return TINY_IMAGES if size == "tiny" else IMAGES


def bench_tokenizer(vocab_size: int):
    """The nano tokenizer, with added tokens `<extra_i>` up to `vocab_size` ids when the LLM has more."""
    tok = load_tokenizer("nano")
    if len(tok) < vocab_size:
        tok.add_tokens([f"<extra_{i}>" for i in range(len(tok), vocab_size)])
    return tok


# ---- inputs ----------------------------------------------------------------------------------------
def test_image(w: int, h: int, seed: int) -> Image.Image:
    """A smooth image with some texture (PNG-compressible like a photo, unlike pure noise)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([xx * 255 / w, yy * 255 / h, (xx + yy) * 127 / (w + h)], -1)
    return Image.fromarray(np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8))


def png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


# ---- models ----------------------------------------------------------------------------------------
@contextmanager
def built_in(device: torch.device, dtype: torch.dtype):
    """Modules constructed inside are allocated on `device` in `dtype` (no fp32 copy of a 3B model on the host)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            yield
    finally:
        torch.set_default_dtype(previous)


def build_ours(size: str, dtype: torch.dtype, device: torch.device = CPU) -> SphinxX:
    if size == "tiny":
        config = detach_weight_paths(SphinxXConfig.from_name("tiny"))  # random weights from the dims
    else:
        config = SphinxXConfig.from_name("nano")
        for k, v in LLM_SIZES[size].items():
            setattr(config.llm, k, v)
    torch.manual_seed(0)
    with built_in(device, dtype if size == "tiny" else torch.float32):
        model = SphinxX(config)
    if size != "tiny":  # larger weights than init's std 0.02 so greedy answers vary with the input (at the
        with torch.no_grad():  # tiny size the init's scale is kept: 22 layers of width 2048)
            for p in model.llm.parameters():
                if p.dim() >= 2:
                    p.normal_(0, 0.08)
    model.tokenizer = bench_tokenizer(config.llm.vocab_size)
    return model.to(device, dtype).eval()


def build_theirs(ours: SphinxX, dtype: torch.dtype, size: str = "nano"
                 ) -> tuple[LlavaNextForConditionalGeneration, LlavaNextProcessor]:
    tok = bench_tokenizer(ours.llm.config.vocab_size)
    tok.padding_side = "left"
    tower = CLIP_VIT_L_336 if size == "tiny" else CLIP_TOWER
    side = tower["image_size"]
    pinpoints = [[2 * side, 2 * side]]  # every image: the global view + a 2x2 grid, as ours
    config = LlavaNextConfig(
        vision_config=CLIPVisionConfig(**tower),
        text_config=ours.llm.config.to_dict(),
        image_token_index=tok.convert_tokens_to_ids(IMAGE_TOKEN),
        image_grid_pinpoints=pinpoints,
        vision_feature_layer=-2 if size == "tiny" else -1,  # LLaVA's own choice at its real scale
        vision_feature_select_strategy="default",
    )
    torch.manual_seed(1)
    device = ours.llm.lm_head.weight.device
    with built_in(device, dtype if size == "tiny" else torch.float32):
        theirs = LlavaNextForConditionalGeneration(config)
    theirs.model.language_model.load_state_dict(ours.llm.get_decoder().state_dict())
    theirs.lm_head.load_state_dict(ours.llm.get_output_embeddings().state_dict())
    theirs.generation_config.eos_token_id = None
    theirs.generation_config.pad_token_id = tok.pad_token_id
    ip = LlavaNextImageProcessor(size={"shortest_edge": side}, crop_size={"height": side, "width": side},
                                 image_grid_pinpoints=pinpoints, image_mean=list(CLIP_MEAN),
                                 image_std=list(CLIP_STD))
    proc = LlavaNextProcessor(image_processor=ip, tokenizer=tok, patch_size=tower["patch_size"],
                              vision_feature_select_strategy="default", image_token=IMAGE_TOKEN,
                              num_additional_image_tokens=1)  # CLIP's CLS token
    return theirs.to(device, dtype).eval(), proc


def their_text(ours: SphinxX, question: str) -> str:
    """Our prompt text with LLaVA-NeXT's image token where our image run sits (right after BOS)."""
    ids = encode(ours, {"question": question, "images": test_image(64, 64, 0)}).input_ids
    text_ids = [i for i in ids[1:] if i != IMAGE_TOKEN_ID]
    return IMAGE_TOKEN + ours.tokenizer.decode(text_ids, skip_special_tokens=False)


def check_same_llm(ours: SphinxX, theirs: LlavaNextForConditionalGeneration) -> float:
    ids = ours.tokenizer(QUESTION, return_tensors="pt").input_ids.to(ours.llm.lm_head.weight.device)
    with torch.inference_mode():
        a = ours(ids).logits.float()
        b = theirs(input_ids=ids).logits.float()
    return float((a - b).abs().max())


def vision_flops(fn: Callable[[], object]) -> float:
    with FlopCounterMode(display=False) as fc, torch.inference_mode():
        fn()
    return fc.get_total_flops()


# ---- one generation, timed ---------------------------------------------------------------------------
class FirstTokenTimer:
    """A `generate` streamer: the second `put` is the first generated token."""

    def __init__(self) -> None:
        self.puts, self.first = 0, None

    def put(self, value: torch.Tensor) -> None:
        self.puts += 1
        if self.puts == 2:
            self.first = now()

    def end(self) -> None:
        pass


def run_ours(model: SphinxX, prompts: list, n: int) -> tuple[float, float, int]:
    cfg = GenerationConfig(max_new_tokens=n, stop_strings=(), eos_token_id=-1)
    start, first, tokens = now(), None, 0
    for events in decode_batch(model, prompts, cfg):
        first = first or now()
        tokens += sum(ev.done.completion_tokens for ev in events if ev.done)
    return first - start, now() - start, tokens


def run_theirs(model: LlavaNextForConditionalGeneration, inputs: dict, n: int) -> tuple[float, float, int]:
    timer = FirstTokenTimer()
    start = now()
    with torch.inference_mode():
        out = model.generate(**inputs, max_new_tokens=n, do_sample=False, streamer=timer)
    end = now()
    return timer.first - start, end - start, out[:, inputs["input_ids"].shape[1]:].numel()


def record(results: list, run: Callable, *args) -> float:
    """Run one timed generation, keep its (ttft, total, tokens), return its time to first token."""
    results.append(run(*args))
    return results[-1][0]


def prep_ours(data: bytes, vision) -> float:
    t = now()
    prepare_image(load_image(data), vision)
    return now() - t


def prep_theirs(data: bytes, image_processor) -> float:
    t = now()
    image_processor(Image.open(io.BytesIO(data)).convert("RGB"), return_tensors="pt")
    return now() - t


def canvas_at(rev: str):
    """`sphinx_x/canvas.py` as of git revision `rev`, imported as its own module (for the baseline row)."""
    source = subprocess.run(["git", "show", f"{rev}:sphinx_x/canvas.py"], check=True, capture_output=True,
                            text=True, cwd=Path(__file__).resolve().parents[1]).stdout
    module = types.ModuleType(f"canvas_{rev}")
    sys.modules[module.__name__] = module  # dataclasses look their module up
    exec(compile(source, f"{rev}:sphinx_x/canvas.py", "exec"), module.__dict__)
    return module


def preprocess_vs_baseline(rev: str, reps: int) -> list[str]:
    old = canvas_at(rev)
    vision = SphinxXConfig.from_name("nano").vision
    lines = [f"\n### image preprocessing, now vs `sphinx_x/canvas.py` at {rev}\n",
             f"| measurement | now | {rev} | speed-up (now vs {rev}) [min, max] |", "|---|---|---|---|"]
    for i, (aspect, (w, h)) in enumerate(IMAGES.items()):
        data = png(test_image(w, h, i))
        a, b = alternate(partial(prep_ours, data, vision), partial(prep_with, old, data, vision), max(reps, 10))
        lines.append(row(f"PNG bytes -> views, {w}x{h} ({aspect})", "s", a, b, higher_is_better=False))
    return lines


def prep_with(canvas_module, data: bytes, vision) -> float:
    t = now()
    canvas_module.prepare_image(canvas_module.load_image(data), vision)
    return now() - t


# ---- the comparison -------------------------------------------------------------------------------
def alternate(ours: Callable[[], float], theirs: Callable[[], float], reps: int) -> tuple[list[float], list[float]]:
    ours(), theirs()  # warm-up
    a, b = [], []
    for _ in range(reps):
        a.append(ours())
        b.append(theirs())
    return a, b


def row(name: str, unit: str, a: list[float], b: list[float], higher_is_better: bool) -> str:
    ratios = [(x / y if higher_is_better else y / x) for x, y in zip(a, b)]
    return (f"| {name} | {statistics.median(a):.4g} {unit} | {statistics.median(b):.4g} {unit} | "
            f"{statistics.median(ratios):.2f}x [{min(ratios):.2f}, {max(ratios):.2f}] |")


def compare(size: str, dtype_name: str, reps: int, n: int, compile_llm: bool = False,
            device: torch.device = CPU) -> list[str]:
    dtype = DTYPES[dtype_name]
    ours = build_ours(size, dtype, device)
    theirs, proc = build_theirs(ours, dtype, size)
    images = images_for(size)
    if compile_llm:  # both LLMs, the same way; the warm-up repetitions absorb the compilation
        # both models' forwards share transformers' decorator code: room for every shape variant of both
        torch._dynamo.config.recompile_limit = 64
        compile_for_generation(ours)
        lm = theirs.model.language_model
        lm.forward = torch.compile(lm.forward, dynamic=True)
    text = their_text(ours, QUESTION)
    pngs = {k: png(test_image(w, h, i)) for i, (k, (w, h)) in enumerate(images.items())}
    pil = {k: Image.open(io.BytesIO(v)).convert("RGB") for k, v in pngs.items()}

    def ours_prompt(aspect: str):
        return encode(ours, {"question": QUESTION, "images": pil[aspect]})

    def theirs_inputs(aspects: list[str]) -> dict:
        inputs = proc(images=[pil[a] for a in aspects], text=[text] * len(aspects), return_tensors="pt",
                      padding=True)
        inputs["pixel_values"] = inputs["pixel_values"].to(dtype)
        return inputs.to(device)

    lines = []
    p_ours, p_theirs = ours_prompt("1:1"), theirs_inputs(["1:1"])
    ours_text = [i for i in p_ours.input_ids if i != IMAGE_TOKEN_ID]
    their_ids = p_theirs["input_ids"][0].tolist()
    their_text_ids = [i for i in their_ids if i != theirs.config.image_token_index]
    visual = {a: (sum(i == IMAGE_TOKEN_ID for i in ours_prompt(a).input_ids),
                  sum(i == theirs.config.image_token_index for i in theirs_inputs([a])["input_ids"][0].tolist()))
              for a in images}
    b_ours = collate_images(p_ours.images, ours.config.vision).to(device)
    f_ours = vision_flops(lambda: ours.visual(b_ours))
    f_theirs = vision_flops(lambda: theirs.model.get_image_features(p_theirs["pixel_values"], p_theirs["image_sizes"]))
    lines.append(f"\n### {size} LLM ({sum(p.numel() for p in ours.llm.parameters()) / 1e6:.1f}M), {dtype_name}, "
                 f"{n} new tokens, {reps} reps{', both LLMs torch.compiled' if compile_llm else ''}\n")
    lines.append(f"- text-only logits, ours vs theirs: max |diff| {check_same_llm(ours, theirs):.2e}; text ids "
                 f"equal: {ours_text == their_text_ids} ({len(ours_text)} text tokens)")
    lines.append(f"- vision MFLOP per 1:1 image (towers + projectors): ours {f_ours / 1e6:.0f}, theirs "
                 f"{f_theirs / 1e6:.0f}; visual tokens 1:1 / 2:1: ours {visual['1:1'][0]} / {visual['2:1'][0]}, "
                 f"theirs {visual['1:1'][1]} / {visual['2:1'][1]}\n")
    lines.append("| measurement | ours | LLaVA-NeXT | speed-up (ours vs theirs) [min, max] |")
    lines.append("|---|---|---|---|")
    for aspect in ("2:1", "1:1"):
        ra: list = []
        rb: list = []
        a, b = alternate(partial(record, ra, run_ours, ours, [ours_prompt(aspect)], n),
                         partial(record, rb, run_theirs, theirs, theirs_inputs([aspect]), n), reps)
        lines.append(row(f"time to first token, batch 1, {aspect}", "s", a, b, higher_is_better=False))
        if aspect == "2:1":
            rate = [[(t - 1) / (total - first) for first, total, t in r[1:]] for r in (ra, rb)]
            lines.append(row("decode tokens/s, batch 1", "tok/s", *rate, higher_is_better=True))
    aspects = ["1:1", "2:1"] * 4
    po8 = [ours_prompt(a) for a in aspects]
    pt8 = theirs_inputs(aspects)
    a, b = alternate(lambda: (lambda r: r[2] / r[1])(run_ours(ours, po8, n)),
                     lambda: (lambda r: r[2] / r[1])(run_theirs(theirs, pt8, n)), reps)
    lines.append(row("batch-8 generation throughput", "tok/s", a, b, higher_is_better=True))

    def e2e_ours() -> float:
        t = now()
        ours.generate([{"question": QUESTION, "images": pngs["2:1"]}], max_new_tokens=n, stop_strings=(),
                      eos_token_id=-1)
        return now() - t

    def e2e_theirs() -> float:
        t = now()
        img = Image.open(io.BytesIO(pngs["2:1"])).convert("RGB")
        inputs = proc(images=[img], text=[text], return_tensors="pt")
        inputs["pixel_values"] = inputs["pixel_values"].to(dtype)
        inputs = inputs.to(device)
        with torch.inference_mode():
            out = theirs.generate(**inputs, max_new_tokens=n, do_sample=False)
        proc.batch_decode(out[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
        return now() - t

    a, b = alternate(e2e_ours, e2e_theirs, reps)
    lines.append(row("end to end (PNG + question -> text), 2:1", "s", a, b, higher_is_better=False))
    for aspect in ("2:1", "1:1"):
        a, b = alternate(partial(prep_ours, pngs[aspect], ours.config.vision),
                         partial(prep_theirs, pngs[aspect], proc.image_processor), max(reps, 10))
        w, h = images[aspect]
        lines.append(row(f"image preprocessing, {w}x{h} PNG", "s", a, b, higher_is_better=False))
    return lines


def probe_peak(device: torch.device) -> str:
    """The fixed matmul probe: fp32 512^3 on a CPU, bf16 8192^3 on a GPU."""
    if device.type == "cuda":
        return f"bf16 matmul peak {measure_matmul_peak(device, torch.bfloat16) / 1e12:.0f} TFLOP/s"
    return f"fp32 matmul peak {measure_matmul_peak('cpu', torch.float32, n=512, seconds=1.0) / 1e9:.1f} GFLOP/s"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="nano,45m", help="nano, 45m, tiny (comma-separated)")
    p.add_argument("--dtypes", default="fp32,bf16")
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--compile", action="store_true", help="torch.compile both LLMs (dynamic shapes)")
    p.add_argument("--clock", choices=("wall", "cpu"), default="wall", help="wall time or the process's CPU time")
    p.add_argument("--preprocess-baseline", metavar="REV", help="also time preprocessing against canvas.py at REV")
    p.add_argument("--device", default="cpu", help="cpu or cuda (the models and their inputs; preprocessing is "
                   "on the CPU either way)")
    p.add_argument("--retain-host-memory", action="store_true",
                   help="glibc keeps freed blocks for reuse, as sphinx-x's inference commands set it (both sides)")
    p.add_argument("--gpu", action="store_true", help="the tiny size in bf16 on one GPU: " + str(GPU))
    args = p.parse_args()
    if args.gpu:
        for k, v in GPU.items():
            setattr(args, k, v)
    device = torch.device(args.device)
    if device.type == "cuda":
        device = torch.device("cuda", device.index or 0)
        torch.cuda.set_device(device)
        if args.clock == "cpu":
            p.error("--clock cpu times the host process, not the GPU's kernels: use --clock wall on a GPU")
    global now
    now = make_clock(args.clock, device)
    torch.set_num_threads(args.threads)
    retained = args.retain_host_memory and retain_freed_host_memory()
    malloc = "freed host memory retained" if retained else "the C library's malloc defaults"
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"{where}, {args.threads} thread(s), {args.clock} clock, {malloc}; at start: {probe_peak(device)}")
    if args.preprocess_baseline:
        print("\n".join(preprocess_vs_baseline(args.preprocess_baseline, args.reps)), flush=True)
    for size in args.sizes.split(","):
        for dtype in args.dtypes.split(","):
            print("\n".join(compare(size, dtype, args.reps, args.new_tokens, args.compile, device)), flush=True)
    print(f"\nat end: {probe_peak(device)}")

if __name__ == "__main__":
    main()
