"""Regenerate tests/fixtures/accessory/ by running the official LLaMA2-Accessory SPHINX code on CPU.

NOT run in CI and not imported by the package. It needs a checkout of LLaMA2-Accessory, a checkout of
facebookresearch/dinov2, fairscale, and open_clip_torch 2.23 (the open_clip API the official code was
written against: its CLIP transformer takes LND input). See README.md next to this file.

What it does, per architecture (llama_type):
1. builds the official ``MetaModel`` with tiny experts of the same families (open_clip CLIP ViT and
   timm ConvNeXt through open_clip's factory, DINOv2 through the dinov2 hub builder, transformers
   Blip2Model) and a tiny LLM, perturbs every parameter with seeded noise and saves the checkpoint the
   way the official trainer does (``consolidated.XX-of-YY.model.pth`` = {"model": state_dict} in bf16,
   config.json, meta.json, tokenizer.model);
2. reloads it with the official ``SPHINXModel.from_pretrained`` in float32 and records the official
   outputs: logits of ``compute_logits`` for each (image, question) prompt and the greedy answer of
   ``generate_response`` (temperature 0);
3. for the two-shard variants, reloads the one-shard checkpoint at model-parallel size 2 (torchrun,
   gloo), saves both shards with the official split and records outputs of the two-rank model.

Patches (all listed here, nothing else is changed):
- the official model files hard-code the expert widths in ``visual_proj`` / ``qformer_proj`` and in one
  assert (3072, 1024, 1536, 768); these literals are replaced by tiny widths when the module is loaded;
- ``open_clip`` model configs 'ViT-L-14' / 'convnext_xxlarge' and timm's ConvNeXt depths/dims are made tiny;
- ``torch.hub.load('facebookresearch/dinov2', 'dinov2_vitg14')`` builds a tiny ViT with the hub's
  dinov2_vitg14 settings (swiglufused FFN, layerscale, 518 px / 37x37 position table, offset 0.1);
- ``Blip2Config.from_pretrained`` returns the official blip2-opt-2.7b config shrunk; with transformers >= 5
  ``get_qformer_features`` returns a tensor, so it is wrapped to expose ``.last_hidden_state`` again;
- ``torch.Tensor.cuda`` is the identity (the official inference code calls .cuda());
- mixtral_sparse_ens*: megablocks/stk are stubbed so the class builds; the official MoE forward needs
  their CUDA kernels, so ``MoE.forward`` is replaced by ``plain_moe_forward`` below, an independent
  dense implementation of the official routing math (fp32 softmax, top-k, renormalise, SwiGLU per
  expert with w2 used untransposed, all-reduce over model-parallel ranks).
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import types
from pathlib import Path

ARCHS = {
    # name: (llama_type, model-parallel size)
    "llama_ens": ("llama_ens", 1),
    "llama_ens5": ("llama_ens5", 1),
    "llama_ens_light": ("llama_ens_light", 1),
    "llama_ens5_light": ("llama_ens5_light", 1),
    "mixtral_sparse_ens": ("mixtral_sparse_ens", 1),
    "mixtral_sparse_ens5": ("mixtral_sparse_ens5", 1),
    "llama_ens5_light_mp2": ("llama_ens5_light", 2),
    "mixtral_sparse_ens_mp2": ("mixtral_sparse_ens", 2),
}
# Tiny expert widths (the real ones are ConvNeXt 3072, CLIP 1024, DINOv2 1536, Q-Former 768); all distinct
# so that a converter mixing up the feature order fails loudly.
W_CONVNEXT, W_CLIP, W_DINOV2, W_QFORMER = 48, 32, 40, 24
SEED = 20240101
MAX_GEN_LEN = 16
QUESTIONS = {
    "square": "What is in the image?",
    "wide": "Describe the picture in detail.",
    "tall": "How many shapes are there?",
}
# One extra two-turn case (the image comes with the first question) for these fixtures.
MULTI_TURN = {"name": "multiturn", "image": "square",
              "qas": [["What is in the image?", "A red circle and a blue square."], ["Where is the circle?", None]]}
MULTI_TURN_FIXTURES = ("llama_ens5", "llama_ens_light")
LLM_CONFIGS = {  # tiny ModelArgs overrides per family (the rest stays at the official defaults)
    "llama": {"dim": 64, "n_layers": 2, "n_heads": 4, "multiple_of": 32, "norm_eps": 1e-5, "rope_theta": 10000},
    "llama_light": {"dim": 64, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2, "multiple_of": 32,
                    "norm_eps": 1e-5, "rope_theta": 10000},
    "mixtral": {"dim": 64, "hidden_dim": 32, "head_dim": 16, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2,
                "norm_eps": 1e-5, "rope_theta": 1000000.0,
                "moe": {"num_experts": 4, "num_experts_per_tok": 2}},
}
WIDTH_SUBSTITUTIONS = [  # (regex on the official source, replacement)
    (r"nn\.Linear\(3072 \+ 1024 \+ 1536,", "nn.Linear(_W_CONVNEXT + _W_CLIP + _W_DINOV2,"),
    (r"nn\.Linear\(3072 \+ 1536,", "nn.Linear(_W_CONVNEXT + _W_DINOV2,"),
    (r"nn\.Linear\(768,", "nn.Linear(_W_QFORMER,"),
    (r"== \(3072, (8|16), (8|16)\)", r"== (_W_CONVNEXT, \1, \2)"),
]


def family(llama_type: str) -> str:
    if llama_type.startswith("mixtral"):
        return "mixtral"
    return "llama_light" if "light" in llama_type else "llama"


# ----------------------------------------------------------------------------------------------- patches
def install_patches(accessory_root: Path, dinov2_root: Path) -> None:
    """Make the official classes build tiny experts; see the module docstring for the full list."""
    from open_clip.version import __version__ as oc_version
    if tuple(int(p) for p in oc_version.split(".")[:2]) >= (2, 24):
        sys.exit(f"open_clip {oc_version} found; the official clip_encode_image feeds LND tensors, which needs "
                 "open_clip < 2.24 (pip install --no-deps --target DIR open_clip_torch==2.23.0; PYTHONPATH=DIR)")
    sys.path[:0] = [str(accessory_root), str(dinov2_root)]
    sys.modules.setdefault("h5py", types.ModuleType("h5py"))  # imported by the training dataset only
    for name in ("megablocks", "megablocks.ops", "stk", "stk.ops"):
        sys.modules.setdefault(name, types.ModuleType(name))
    sys.modules["megablocks"].ops = sys.modules["megablocks.ops"]
    sys.modules["stk"].Matrix = object  # used in a return annotation at class-definition time
    sys.modules["stk"].ops = sys.modules["stk.ops"]

    import torch
    torch.Tensor.cuda = lambda self, *a, **k: self

    # open_clip: tiny ViT-L-14 / convnext_xxlarge configs through the real factory
    from open_clip import factory, timm_model
    tiny_text = {"context_length": 8, "vocab_size": 32, "width": 16, "heads": 2, "layers": 1}
    vit = json.loads(json.dumps(factory._MODEL_CONFIGS["ViT-L-14"]))
    vit.update(embed_dim=16, text_cfg=tiny_text)
    vit["vision_cfg"].update(width=W_CLIP, layers=2, head_width=16)
    cnx = json.loads(json.dumps(factory._MODEL_CONFIGS["convnext_xxlarge"]))
    cnx.update(embed_dim=16, text_cfg=tiny_text)
    factory._MODEL_CONFIGS["ViT-L-14"], factory._MODEL_CONFIGS["convnext_xxlarge"] = vit, cnx
    real_timm_create = timm_model.timm.create_model

    def tiny_timm_create(name, *args, **kwargs):
        if name == "convnext_xxlarge":
            kwargs.update(depths=(1, 1, 2, 1), dims=(8, 16, 24, W_CONVNEXT))
        return real_timm_create(name, *args, **kwargs)
    timm_model.timm = types.SimpleNamespace(**{**vars(timm_model.timm), "create_model": tiny_timm_create})

    # DINOv2: the hub's dinov2_vitg14 recipe with a tiny ViT
    from dinov2.hub import backbones
    from dinov2.layers import MemEffAttention
    from dinov2.layers.block import NestedTensorBlock
    from dinov2.models import vision_transformer as vits

    def vit_giant2_tiny(patch_size=16, num_register_tokens=0, **kwargs):
        return vits.DinoVisionTransformer(
            patch_size=patch_size, embed_dim=W_DINOV2, depth=2, num_heads=2, mlp_ratio=4,
            block_fn=functools.partial(NestedTensorBlock, attn_class=MemEffAttention),
            num_register_tokens=num_register_tokens, **kwargs)
    vits.vit_giant2_tiny = vit_giant2_tiny
    real_hub_load = torch.hub.load

    def hub_load(repo, model, *args, pretrained=True, **kwargs):
        if repo == "facebookresearch/dinov2" and model == "dinov2_vitg14":
            assert not pretrained
            return backbones._make_dinov2_model(arch_name="vit_giant2_tiny", ffn_layer="swiglufused",
                                                pretrained=False)
        return real_hub_load(repo, model, *args, pretrained=pretrained, **kwargs)
    torch.hub.load = hub_load

    # BLIP-2: the official config, shrunk
    import transformers
    real_from_pretrained = transformers.Blip2Config.from_pretrained.__func__

    def tiny_blip2_config(cls, path, *args, **kwargs):
        cfg = real_from_pretrained(cls, path, *args, **kwargs)
        v, q, t = cfg.vision_config, cfg.qformer_config, cfg.text_config
        v.hidden_size, v.intermediate_size, v.num_hidden_layers, v.num_attention_heads = 32, 64, 1, 2
        q.hidden_size, q.intermediate_size, q.num_hidden_layers, q.num_attention_heads = W_QFORMER, 48, 2, 2
        q.encoder_hidden_size = v.hidden_size
        t.hidden_size, t.ffn_dim, t.num_hidden_layers, t.num_attention_heads = 16, 32, 1, 2
        t.word_embed_proj_dim, t.vocab_size, t.max_position_embeddings = 16, 64, 32
        return cfg
    transformers.Blip2Config.from_pretrained = classmethod(tiny_blip2_config)
    real_qformer_features = transformers.Blip2Model.get_qformer_features

    def get_qformer_features(self, *args, **kwargs):
        out = real_qformer_features(self, *args, **kwargs)
        return types.SimpleNamespace(last_hidden_state=out) if torch.is_tensor(out) else out
    transformers.Blip2Model.get_qformer_features = get_qformer_features


def load_patched_llm_module(accessory_root: Path, llama_type: str):
    """Import accessory.model.LLM.<llama_type> with the expert widths replaced (see WIDTH_SUBSTITUTIONS)."""
    name = f"accessory.model.LLM.{llama_type}"
    path = accessory_root / "accessory" / "model" / "LLM" / f"{llama_type}.py"
    source = path.read_text()
    for pattern, repl in WIDTH_SUBSTITUTIONS:
        source = re.sub(pattern, repl, source)
    leftover = [ln for ln in source.splitlines() if re.search(r"\b(3072|1536|768)\b", ln.split("#")[0])]
    assert not leftover, leftover
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    module.__dict__.update(_W_CONVNEXT=W_CONVNEXT, _W_CLIP=W_CLIP, _W_DINOV2=W_DINOV2, _W_QFORMER=W_QFORMER)
    sys.modules[name] = module
    exec(compile(source, str(path), "exec"), module.__dict__)
    if hasattr(module, "MoE"):
        module.MoE.forward = plain_moe_forward
    return module


def plain_moe_forward(self, x):
    """Dense re-implementation of the official sparse MoE math (megablocks kernels unavailable on CPU)."""
    import torch
    import torch.nn.functional as F
    from fairscale.nn.model_parallel.layers import copy_to_model_parallel_region, reduce_from_model_parallel_region
    shape = x.shape
    x = x.view(-1, shape[-1])
    x_ffn = copy_to_model_parallel_region(x)
    probs = F.softmax(self.gate(x), dim=1, dtype=torch.float)
    weights, experts = torch.topk(probs, self.num_experts_per_tok, dim=-1)
    weights = (weights / weights.sum(dim=-1, keepdim=True)).to(x.dtype)
    hidden = self.hidden_dim_per_partition
    y = torch.zeros_like(x_ffn)
    for e in range(self.num_experts):
        token, slot = torch.where(experts == e)
        if token.numel() == 0:
            continue
        rows = slice(e * hidden, (e + 1) * hidden)
        xe = x_ffn[token]
        he = F.silu(xe @ self.w1[rows].t()) * (xe @ self.w3[rows].t())
        y.index_add_(0, token, (he @ self.w2[rows]) * weights[token, slot, None])
    return reduce_from_model_parallel_region(y).view(shape)


# ------------------------------------------------------------------------------------------------ inputs
def make_tokenizer(path: Path) -> None:
    """A LLaMA-style SentencePiece BPE model (byte fallback, identity normalisation, bos 1 / eos 2), 512 pieces."""
    import random

    import sentencepiece as spm
    rng = random.Random(SEED)
    words = ("the a an image picture photo of in on with and is are there red green blue yellow circle square "
             "triangle shape shapes large small left right top bottom middle background object objects two three "
             "what how many describe detail human assistant chat curious helpful polite answers questions "
             "artificial intelligence gives detailed").split()
    system = ("A chat between a curious human and an artificial intelligence assistant. The assistant gives "
              "helpful, detailed, and polite answers to the human's questions.")
    lines = [system] * 20 + [f"### Human: {q}\n### Assistant:" for q in QUESTIONS.values()] * 20
    lines += [" ".join(rng.choice(words) for _ in range(rng.randint(4, 14))).capitalize() + rng.choice(".?!")
              for _ in range(3000)]
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "corpus.txt"
        corpus.write_text("\n".join(lines))
        spm.SentencePieceTrainer.train(
            input=str(corpus), model_prefix=str(Path(tmp) / "tok"), vocab_size=512, model_type="bpe",
            byte_fallback=True, normalization_rule_name="identity", split_digits=True, unk_id=0, bos_id=1,
            eos_id=2, pad_id=-1, add_dummy_prefix=True, remove_extra_whitespaces=False, num_threads=1,
            character_coverage=1.0, minloglevel=2)
        from sentencepiece import sentencepiece_model_pb2
        proto = sentencepiece_model_pb2.ModelProto()
        proto.ParseFromString((Path(tmp) / "tok.model").read_bytes())
        del proto.trainer_spec.input[:]  # temporary paths: keep the file byte-for-byte reproducible
        proto.trainer_spec.model_prefix = "tokenizer"
        path.write_bytes(proto.SerializeToString())


def make_images(folder: Path) -> None:
    """Three small synthetic pictures: square, wide (odd padding offset) and tall."""
    import numpy as np
    from PIL import Image, ImageDraw
    rng = np.random.default_rng(SEED)
    for name, (w, h) in {"square": (64, 64), "wide": (97, 60), "tall": (41, 70)}.items():
        yy, xx = np.mgrid[0:h, 0:w]
        base = np.stack([xx * 255 / w, yy * 255 / h, (xx + yy) * 127 / (w + h)], -1)
        base += rng.normal(0, 12, base.shape)
        img = Image.fromarray(np.clip(base, 0, 255).astype("uint8"))
        draw = ImageDraw.Draw(img)
        draw.ellipse([w // 6, h // 5, w // 2, h // 2], fill=(220, 30, 40))
        draw.rectangle([w // 2, h // 2, w - 4, h - 6], fill=(30, 40, 210))
        img.save(folder / f"{name}.png")


# --------------------------------------------------------------------------------------------- building
def build_checkpoint(args, name: str, llama_type: str, out: Path) -> None:
    """Build the tiny official model at MP=1, perturb it, save it in the released layout."""
    import torch
    import torch.distributed as dist
    from accessory.util.tensor_type import default_tensor_type
    from fairscale.nn.model_parallel import initialize as fs_init
    from SPHINX.sphinx import SPHINXModel

    load_patched_llm_module(args.accessory, llama_type)
    out.mkdir(parents=True, exist_ok=True)
    shutil.copy(args.work / "tokenizer.model", out / "tokenizer.model")
    overrides = LLM_CONFIGS[family(llama_type)]
    (args.work / f"{name}.overrides.json").write_text(json.dumps(overrides))
    fs_init._MODEL_PARALLEL_GROUP = dist.new_group(ranks=[dist.get_rank()])
    torch.manual_seed(SEED)
    with default_tensor_type(dtype=torch.float32, device="cpu"):
        model = SPHINXModel(llama_type, [str(args.work / f"{name}.overrides.json")], str(out / "tokenizer.model"),
                          with_visual=True, max_seq_len=4096)
    gen = torch.Generator().manual_seed(SEED + 1)
    with torch.no_grad():  # every parameter matters: layer scales, norms and biases move away from 1 / 0
        for _, p in sorted(model.named_parameters()):
            p.add_(torch.randn(p.shape, generator=gen) * 0.1)
            p.copy_(p.to(torch.bfloat16))  # the model in memory is the one that gets saved
    model.eval()
    endings = engineer_stops(args, model)
    state = {"model": {k: v.to(torch.bfloat16) for k, v in model.state_dict().items()}}
    torch.save(state, out / "consolidated.00-of-01.model.pth")
    (out / "config.json").write_text(json.dumps(dataclasses.asdict(model.llma.args), indent=2))
    (out / "meta.json").write_text(json.dumps({"llama_type": llama_type}, indent=2))
    (args.work / f"{name}.endings.json").write_text(json.dumps(endings))


def greedy_trace(model, qas: list, image) -> tuple[list[int], list, str]:
    """Official greedy answer: its ids (captured from generate's decode call), the final hidden state of each
    step, and the answer text returned by generate_response."""
    captured, hiddens = [], []
    real_decode = model.tokenizer.decode
    model.tokenizer.decode = lambda ids: captured.append(list(ids)) or real_decode(ids)
    hook = model.llma.norm.register_forward_hook(lambda m, i, o: hiddens.append(o[0, -1].detach().clone()))
    try:
        answer = model.generate_response(qas, image, max_gen_len=MAX_GEN_LEN, temperature=0.0,
                                         top_p=0.5, seed=0)
    finally:
        model.tokenizer.decode = real_decode
        hook.remove()
    return captured[-1], hiddens, answer


def engineer_stops(args, model) -> dict[str, str]:
    """Set the output rows of the stop tokens so that the three greedy answers end in the three possible ways.

    A random model never emits eos or "\\n###". The row of a stop token is set to a multiple of the part of
    the final hidden state at the chosen step that is orthogonal to the hidden states of all other generation
    steps, so it wins at that step (logit = the step's top logit + 1) and scores ~0 at every other step. One
    answer then ends with the tokens of "\\n###" (cut off by the official post-processing), one with eos, and
    one runs to max_gen_len. Cases and steps are chosen to keep these rows small (logits stay O(1)).
    Returns {case: "stop_sequence" | "eos" | "max_gen_len"}.
    """
    import torch
    from PIL import Image
    out_w = model.llma.output.weight
    images = {c: Image.open(args.inputs / f"{c}.png").convert("RGB") for c in QUESTIONS}
    trace = {c: greedy_trace(model, [[q, None]], images[c])[:2] for c, q in QUESTIONS.items()}
    stop_seq = model.tokenizer.encode_wo_prefix_space("\n###")

    def solve(case: str, step: int):
        hiddens = [h.clone() for h in trace[case][1]]  # (plain tensors, not inference-mode ones)
        others = [h.clone() for c, (_, hs) in trace.items() if c != case for h in hs] + hiddens[:step]
        with torch.no_grad():
            basis = torch.linalg.qr(torch.stack(others).T).Q  # orthonormal span of the other steps' states
            h = hiddens[step]
            u = h - basis @ (basis.T @ h)
            return u * ((out_w @ h).max().abs().item() + 1.0) / u.dot(h)

    def place(row: int, case: str, step: int) -> None:
        with torch.no_grad():
            out_w[row] = solve(case, step).to(torch.bfloat16).float()

    def best(cases, steps) -> tuple[str, int]:  # the (case, step) needing the smallest row
        return min(((c, k) for c in cases for k in steps), key=lambda ck: solve(*ck).norm().item())

    seq_case, k = best(QUESTIONS, range(2, MAX_GEN_LEN - len(stop_seq)))
    answers = {c: ids for c, (ids, _) in trace.items()}
    answers[seq_case] = answers[seq_case][:k]
    for j, token in enumerate(stop_seq):
        place(token, seq_case, k + j)
        trace[seq_case] = greedy_trace(model, [[QUESTIONS[seq_case], None]], images[seq_case])[:2]
        expected = answers[seq_case] + stop_seq[:j + 1] if j + 1 < len(stop_seq) else answers[seq_case]
        assert trace[seq_case][0][:len(expected)] == expected, (trace[seq_case][0], expected)
    eos_case, k_eos = best([c for c in QUESTIONS if c != seq_case], range(2, MAX_GEN_LEN))
    answers[eos_case] = answers[eos_case][:k_eos]
    place(model.tokenizer.eos_id, eos_case, k_eos)
    for case, question in QUESTIONS.items():
        assert greedy_trace(model, [[question, None]], images[case])[0] == answers[case], case
    norms = out_w.norm(dim=1)
    print(f"stop rows: norms {[round(norms[t].item(), 2) for t in stop_seq + [model.tokenizer.eos_id]]}, "
          f"median row norm {norms.median().item():.2f}; {seq_case} stops with the sequence after {k} tokens, "
          f"{eos_case} with eos after {k_eos}", flush=True)
    return {c: "stop_sequence" if c == seq_case else "eos" if c == eos_case else "max_gen_len" for c in QUESTIONS}


def record_outputs(args, ckpt: Path, out: Path, mp_group) -> None:
    """Official outputs of a checkpoint: compute_logits per prompt and the greedy generate_response answer."""
    import torch
    import torch.distributed as dist
    from accessory.data.conversation import default_conversation
    from accessory.data.transform import get_transform
    from PIL import Image
    from safetensors.torch import save_file
    from SPHINX.sphinx import SPHINXModel

    endings = json.loads((args.work / f"{out.name}.endings.json").read_text())
    model = SPHINXModel.from_pretrained(str(ckpt), with_visual=True, mp_group=mp_group, dtype=torch.float32,
                                        device="cpu", max_seq_len=4096)
    runs = [(case, case, [[question, None]]) for case, question in QUESTIONS.items()]
    if out.name in MULTI_TURN_FIXTURES:
        runs.append((MULTI_TURN["name"], MULTI_TURN["image"], MULTI_TURN["qas"]))
    tensors, cases = {}, []
    for case, image_name, qas in runs:
        image = Image.open(args.inputs / f"{image_name}.png").convert("RGB")
        conv = default_conversation()
        conv.load_qas(qas)
        prompt = conv.get_prompt()
        ids = model.tokenizer.encode(prompt, bos=True, eos=False)
        pixels = get_transform("padded_resize", model.llma.image_size)(image)
        logits = model.compute_logits([ids], pixels[None])[0]
        answer_ids, _, answer = greedy_trace(model, qas, image)
        tensors[f"logits.{case}"] = logits.float().contiguous()
        tensors[f"input_ids.{case}"] = torch.tensor(ids, dtype=torch.int64)
        ending = endings.get(case) or ("max_gen_len" if len(answer_ids) == MAX_GEN_LEN else "stop")
        cases.append({"name": case, "image": f"../inputs/{image_name}.png", "question": qas[-1][0],
                      "history": qas[:-1], "prompt": prompt, "answer": answer, "answer_ids": answer_ids,
                      "ending": ending, "image_size": model.llma.image_size, "image_words": model.llma.image_words})
        print(f"{ckpt.name} {case}: answer={answer!r}", flush=True)
    if dist.get_rank() == 0:
        save_file(tensors, str(out / "reference.safetensors"))
        (out / "reference.json").write_text(json.dumps({
            "llama_type": json.loads((ckpt / "meta.json").read_text())["llama_type"],
            "model_parallel_size": dist.get_world_size(mp_group), "dtype": "float32",
            "max_gen_len": MAX_GEN_LEN, "temperature": 0.0, "cases": cases}, indent=2, ensure_ascii=False))


def check_merge(sharded: Path, single: Path, mp_group) -> None:
    """The official loader at MP=1 merges the two shards back into exactly the one-shard tensors."""
    import torch
    from SPHINX.sphinx import SPHINXModel
    model = SPHINXModel.from_pretrained(str(sharded), with_visual=True, mp_group=mp_group, dtype=torch.bfloat16,
                                        device="cpu")
    reference = torch.load(single / "consolidated.00-of-01.model.pth", weights_only=True)["model"]
    merged = model.state_dict()
    assert merged.keys() == reference.keys()
    bad = [k for k in reference if not torch.equal(merged[k], reference[k])]
    assert not bad, f"official merge of {sharded} differs from {single} at {bad}"
    print(f"{sharded.name}: official merge of the 2 shards == the 1-shard checkpoint ({len(merged)} tensors)")


def mp2_worker(args) -> None:
    """torchrun --nproc_per_node 2: split an MP=1 checkpoint the official way, save both shards, record outputs."""
    import torch
    import torch.distributed as dist
    dist.init_process_group("gloo")
    torch.set_num_threads(1)
    llama_type = json.loads((args.src / "meta.json").read_text())["llama_type"]
    module = load_patched_llm_module(args.accessory, llama_type)
    if hasattr(module, "_sparse_expert_split"):
        # The official split returns (E, H/mp, dim) chunks, which cannot be loaded into the (E*H/mp, dim)
        # parameters, so the official loader cannot reshard MoE checkpoints. Flattening each chunk gives the
        # layout that an MP=2 run saves (per expert, this rank's slice of the hidden rows); the main process
        # checks that the official merge restores the MP=1 tensors from it.
        real_split = module._sparse_expert_split
        module._sparse_expert_split = lambda w, n, num_experts: [
            c.reshape(-1, c.shape[-1]) for c in real_split(w, n, num_experts)]
    group = dist.new_group(ranks=[0, 1])
    from SPHINX.sphinx import SPHINXModel
    model = SPHINXModel.from_pretrained(str(args.src), with_visual=True, mp_group=group, dtype=torch.float32,
                                        device="cpu")
    rank = dist.get_rank()
    args.dst.mkdir(parents=True, exist_ok=True)
    state = {"model": {k: v.to(torch.bfloat16) for k, v in model.state_dict().items()}}
    torch.save(state, args.dst / f"consolidated.{rank:02d}-of-02.model.pth")
    if rank == 0:
        for f in ("config.json", "meta.json", "tokenizer.model"):
            shutil.copy(args.src / f, args.dst / f)
    del model
    dist.barrier()
    record_outputs(args, args.dst, args.dst, group)
    dist.barrier()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--accessory", type=Path, required=True, help="LLaMA2-Accessory checkout (has accessory/)")
    parser.add_argument("--dinov2", type=Path, required=True, help="facebookresearch/dinov2 checkout")
    parser.add_argument("--out", type=Path, default=Path("tests/fixtures/accessory"))
    parser.add_argument("--only", nargs="*", choices=sorted(ARCHS), help="regenerate only these fixtures")
    parser.add_argument("--mp2-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--src", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--dst", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.accessory, args.dinov2, args.out = args.accessory.resolve(), args.dinov2.resolve(), args.out.resolve()
    args.inputs, args.work = args.out / "inputs", args.out / ".work"
    install_patches(args.accessory, args.dinov2)
    if args.mp2_worker:
        return mp2_worker(args)

    import torch
    import torch.distributed as dist
    torch.set_num_threads(1)
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29533")
    dist.init_process_group("gloo", rank=0, world_size=1)
    args.inputs.mkdir(parents=True, exist_ok=True)
    args.work.mkdir(parents=True, exist_ok=True)
    make_images(args.inputs)
    make_tokenizer(args.work / "tokenizer.model")
    for name in args.only or list(ARCHS):
        llama_type, mp = ARCHS[name]
        out = args.out / name
        shutil.rmtree(out, ignore_errors=True)
        if mp == 1:
            build_checkpoint(args, name, llama_type, out)
            record_outputs(args, out, out, dist.new_group(ranks=[0]))
            continue
        src = args.work / f"{name}.mp1"
        shutil.rmtree(src, ignore_errors=True)
        build_checkpoint(args, name, llama_type, src)
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_PORT": "29534"}
        subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                        "--master_port", "29534", __file__, "--accessory", str(args.accessory),
                        "--dinov2", str(args.dinov2), "--out", str(args.out), "--mp2-worker",
                        "--src", str(src), "--dst", str(out)], check=True, env=env)
        check_merge(out, src, dist.new_group(ranks=[0]))
    shutil.rmtree(args.work)


if __name__ == "__main__":
    main()
