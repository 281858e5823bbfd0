"""Peak memory of `sphinx-x convert accessory` on a synthetic multi-GB two-shard checkpoint.

    .venv/bin/python benchmarks/bench_convert_memory.py [--moe] [--layers N] [--max-shard-gb 2 0.5] [--workdir /tmp]

Writes, under a temporary folder of --workdir (deleted at the end), a `llama_ens5_light` checkpoint in the
released layout split over two model-parallel ranks by the official rules: a mid-size Llama (dim 2560,
20 heads, 4 KV heads, FFN 6912, 32000 vocab; 30 layers = 4.5 GB in bf16) with the `nano` stand-in
experts replicated in both shards. `--moe`: a `mixtral_sparse_ens5` one instead (dim 2048, 8 experts of
FFN 5632, each rank holding half of every expert; 8 layers = 4.9 GB), whose experts are fused on output.
Each conversion runs in a child process (the real CLI) while its /proc status is polled; prints, per
output shard size, the checkpoint size next to the child's peak resident memory (polled VmRSS; ru_maxrss
at the end), split into anonymous memory (what the converter allocates) and file-backed pages (shared
libraries and memory-mapped shard pages, which the kernel can drop at any time), and the wall time, after
a baseline: the same imports without converting anything.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from sphinx_x.config import SphinxXConfig

DENSE = dict(dim=2560, n_heads=20, n_kv_heads=4, hidden=6912, vocab=32000, experts=0, layers=30)  # 4.5 GB
MOE = dict(dim=2048, n_heads=16, n_kv_heads=4, hidden=5632, vocab=32000, experts=8, layers=8)  # 4.9 GB
LLM = dict(DENSE)
SPM_MODEL = Path(__import__("sentencepiece").__file__).resolve().parents[1] / "mistral_common/data/tokenizer.model.v1"
OFFICIAL_PREFIX = {  # our module -> the official module of llama_ens5_light
    "visual.experts.clip_convnext.trunk.": "llma.openclip_convnext_xxl.",
    "visual.experts.dinov2.trunk.": "llma.dinov2_vitg14.",
    "visual.projector.": "llma.visual_proj.",
}


def official_tensors(layers: int):
    """(key, shape, parallel split: dim 0/1, "experts" or None) of the LLM in the official layout."""
    d, hd = LLM["dim"], LLM["dim"] // LLM["n_heads"]
    yield "llma.tok_embeddings.weight", (LLM["vocab"], d), 1
    for i in range(layers):
        p = f"llma.layers.{i}."
        yield p + "attention.wq.weight", (LLM["n_heads"] * hd, d), 0
        yield p + "attention.wk.weight", (LLM["n_kv_heads"] * hd, d), 0
        yield p + "attention.wv.weight", (LLM["n_kv_heads"] * hd, d), 0
        yield p + "attention.wo.weight", (d, LLM["n_heads"] * hd), 1
        if LLM["experts"]:  # the sparse MoE: (experts * hidden, dim), each rank a slice of every expert
            yield p + "feed_forward.gate.weight", (LLM["experts"], d), None
            for w in ("w1", "w2", "w3"):
                yield p + f"feed_forward.{w}", (LLM["experts"] * LLM["hidden"], d), "experts"
        else:
            yield p + "feed_forward.w1.weight", (LLM["hidden"], d), 0
            yield p + "feed_forward.w2.weight", (d, LLM["hidden"]), 1
            yield p + "feed_forward.w3.weight", (LLM["hidden"], d), 0
        yield p + "attention_norm.weight", (d,), None
        yield p + "ffn_norm.weight", (d,), None
    yield "llma.norm.weight", (d,), None
    yield "llma.output.weight", (LLM["vocab"], d), 0


def stand_in_config(layers: int) -> SphinxXConfig:
    cfg = SphinxXConfig.from_name("nano")
    cfg.llm.hidden_size, cfg.llm.num_layers = LLM["dim"], layers
    cfg.llm.num_heads, cfg.llm.num_kv_heads = LLM["n_heads"], LLM["n_kv_heads"]
    cfg.llm.intermediate_size, cfg.llm.vocab_size, cfg.llm.tie_word_embeddings = LLM["hidden"], LLM["vocab"], False
    if LLM["experts"]:
        cfg.llm.arch, cfg.llm.num_experts = "mixtral", LLM["experts"]
    return cfg


def vision_tensors(cfg: SphinxXConfig) -> dict[str, torch.Tensor]:
    """The stand-in experts, projector and image tags under their official names (replicated)."""
    from sphinx_x.model import SphinxX

    torch.manual_seed(0)
    out = {}
    for name, t in SphinxX.from_config_without_weights(cfg).state_dict().items():
        if name.startswith("llm.") or name == "skip_token":
            continue
        if name in ("image_start", "image_end"):
            out["llma.start_img" if name == "image_start" else "llma.end_img"] = torch.rand(1, 1, t.shape[0])
            continue
        prefix = next(p for p in OFFICIAL_PREFIX if name.startswith(p))
        out[OFFICIAL_PREFIX[prefix] + name[len(prefix):]] = torch.randn(t.shape).bfloat16()
    return out


def full_tensor(index: int, shape: tuple[int, ...]) -> torch.Tensor:
    """The same random bf16 tensor for both ranks (seeded by its index), made without an fp32 copy."""
    g = torch.Generator().manual_seed(index)
    return torch.empty(shape, dtype=torch.bfloat16).uniform_(-0.05, 0.05, generator=g)


def write_checkpoint(src: Path, layers: int, cfg: SphinxXConfig) -> int:
    """Two shards; only one shard (half the LLM) is in memory at a time."""
    src.mkdir()
    vision = vision_tensors(cfg)
    for rank in range(2):
        shard = dict(vision)
        for i, (key, shape, dim) in enumerate(official_tensors(layers)):
            full = full_tensor(i, shape)
            if dim == "experts":
                part = full.view(LLM["experts"], -1, shape[1]).chunk(2, dim=1)[rank].reshape(-1, shape[1])
            else:
                part = full if dim is None else full.chunk(2, dim=dim)[rank].clone()
            shard[key] = part
        torch.save({"model": shard}, src / f"consolidated.{rank:02d}-of-02.model.pth")
        del shard
    args = {"dim": LLM["dim"], "n_layers": layers, "n_heads": LLM["n_heads"], "n_kv_heads": LLM["n_kv_heads"],
            "norm_eps": 1e-5, "rope_theta": 10000.0}
    if LLM["experts"]:
        args.update(hidden_dim=LLM["hidden"], moe={"num_experts": LLM["experts"], "num_experts_per_tok": 2})
    (src / "config.json").write_text(json.dumps(args))
    llama_type = "mixtral_sparse_ens5" if LLM["experts"] else "llama_ens5_light"
    (src / "meta.json").write_text(json.dumps({"llama_type": llama_type}))
    shutil.copyfile(SPM_MODEL, src / "tokenizer.model")
    return sum(p.stat().st_size for p in src.glob("*.pth"))


# What the CLI process loads before converting anything (torch, transformers, timm, the model code).
IMPORTS = "import sphinx_x.cli, sphinx_x.convert.accessory, sphinx_x.model, sphinx_x.tokenizer; " \
          "sphinx_x.cli.build_parser()"


def run_and_poll(cmd: list[str]) -> dict[str, float]:
    """Run `cmd`, polling /proc/PID/status for resident memory; returns peaks in bytes and seconds."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peaks = {"RssAnon": 0, "RssFile": 0, "VmRSS": 0}
    while proc.poll() is None:
        try:
            for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines():
                field, _, value = line.partition(":")
                if field in peaks:
                    peaks[field] = max(peaks[field], int(value.split()[0]) * 1024)
        except (FileNotFoundError, ProcessLookupError):
            pass
        time.sleep(0.05)
    output = proc.stdout.read()
    if proc.returncode:
        raise SystemExit(f"conversion failed ({proc.returncode}):\n{output}")
    peaks["seconds"] = time.perf_counter() - t0
    peaks["maxrss"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024  # max over children so far
    return peaks


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--moe", action="store_true", help="a Mixtral-style sparse MoE (mixtral_sparse_ens5, 8 experts)")
    ap.add_argument("--layers", type=int, default=None, help="layers (default: 30 dense = 4.5 GB, 8 MoE = 4.9 GB)")
    ap.add_argument("--max-shard-gb", type=float, nargs="+", default=[2.0, 0.5], help="output shard sizes to try")
    ap.add_argument("--workdir", default="/tmp", help="where the synthetic checkpoint and outputs go (deleted)")
    args = ap.parse_args()
    LLM.update(MOE if args.moe else DENSE)
    args.layers = args.layers or LLM["layers"]
    gb = 1e9
    with tempfile.TemporaryDirectory(dir=args.workdir, prefix="bench_convert_") as tmp:
        tmp = Path(tmp)
        cfg = stand_in_config(args.layers)
        cfg.save(tmp / "stand_in.json")
        t0 = time.perf_counter()
        size = write_checkpoint(tmp / "src", args.layers, cfg)
        print(f"synthetic checkpoint: 2 shards, {size / gb:.2f} GB on disk ({time.perf_counter() - t0:.0f} s to write)")
        base = run_and_poll([sys.executable, "-c", IMPORTS])
        print(f"baseline of the converter's imports alone: RSS {base['VmRSS'] / gb:.2f} GB "
              f"(anon {base['RssAnon'] / gb:.2f}, file {base['RssFile'] / gb:.2f})")
        print(f"{'shard GB':>8} {'ckpt GB':>8} {'out GB':>7} {'peak RSS GB':>11} {'anon GB':>8} {'file GB':>8} "
              f"{'seconds':>8}")
        for shard_gb in sorted(args.max_shard_gb, reverse=True):  # ru_maxrss is a running max: largest first
            out = tmp / f"out-{shard_gb}"
            cmd = [sys.executable, "-m", "sphinx_x.cli", "convert", "accessory", str(tmp / "src"), "--out", str(out),
                   "--config", str(tmp / "stand_in.json"), "--max-shard-gb", str(shard_gb), "--quiet"]
            peaks = run_and_poll(cmd)
            written = sum(p.stat().st_size for p in out.glob("*.safetensors"))
            print(f"{shard_gb:>8.2f} {size / gb:>8.2f} {written / gb:>7.2f} {peaks['VmRSS'] / gb:>11.2f} "
                  f"{peaks['RssAnon'] / gb:>8.2f} {peaks['RssFile'] / gb:>8.2f} {peaks['seconds']:>8.1f}")
            shutil.rmtree(out)
        print(f"ru_maxrss of the children (the largest run): {peaks['maxrss'] / gb:.2f} GB")


if __name__ == "__main__":
    main()
