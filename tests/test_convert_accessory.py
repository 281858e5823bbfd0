"""`sphinx-x convert accessory`: tiny synthetic checkpoints in the released LLaMA2-Accessory layout
(random weights, split into model-parallel shards by the official rules) are converted and checked:
merged tensors equal the originals, transformers' rotate-half model computes what a Meta-style
interleaved-rotary forward computes on the official weights, the directory loads, and every bad input
fails with a message naming the file and key, leaving nothing behind."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
import sentencepiece as spm
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from sphinx_x.cli import main
from sphinx_x.config import SphinxXConfig
from sphinx_x.convert.accessory import SOURCE_NOTE, convert_accessory
from sphinx_x.convert.rotary import interleaved_to_rotate_half
from sphinx_x.convert.shards import ConversionError, parallel_kind
from sphinx_x.model_io import load_weights

SPM_MODEL = Path(spm.__file__).resolve().parents[1] / "mistral_common" / "data" / "tokenizer.model.v1"
VOCAB = 32000  # the Mistral / LLaMA SentencePiece vocabulary


# ---- a tiny official checkpoint ------------------------------------------------------------------
@dataclass
class Dims:
    dim: int = 32
    layers: int = 2
    heads: int = 4
    kv_heads: int = 2
    hidden: int = 48
    experts: int = 0  # 0: dense Llama (llama_ens5_light); else the sparse MoE (mixtral_sparse_ens5)


def official_state(d: Dims, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights under the official names (MetaModel -> `llma.` + the model file's modules)."""
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g) * 0.2

    hd = d.dim // d.heads
    s = {"llma.tok_embeddings.weight": rnd(VOCAB, d.dim)}
    for i in range(d.layers):
        p = f"llma.layers.{i}."
        s[p + "attention.wq.weight"] = rnd(d.heads * hd, d.dim)
        s[p + "attention.wk.weight"] = rnd(d.kv_heads * hd, d.dim)
        s[p + "attention.wv.weight"] = rnd(d.kv_heads * hd, d.dim)
        s[p + "attention.wo.weight"] = rnd(d.dim, d.heads * hd)
        if d.experts:
            s[p + "feed_forward.gate.weight"] = rnd(d.experts, d.dim)
            for w in ("w1", "w2", "w3"):
                s[p + f"feed_forward.{w}"] = rnd(d.experts * d.hidden, d.dim)
        else:
            s[p + "feed_forward.w1.weight"] = rnd(d.hidden, d.dim)
            s[p + "feed_forward.w2.weight"] = rnd(d.dim, d.hidden)
            s[p + "feed_forward.w3.weight"] = rnd(d.hidden, d.dim)
        s[p + "attention_norm.weight"] = norm(rnd(d.dim))
        s[p + "ffn_norm.weight"] = norm(rnd(d.dim))
    s["llma.norm.weight"] = norm(rnd(d.dim))
    s["llma.output.weight"] = rnd(VOCAB, d.dim)
    for name, value in TEST_VISION.items():  # the non-LLM part, replicated in every shard
        s[name] = value(d.dim, g)
    return s


def norm(noise: torch.Tensor) -> torch.Tensor:
    """Norm weights are stored in bf16 in the shards (dtypes may differ per tensor): exact in bf16."""
    return (1 + noise).bfloat16().float()


def split(state: dict[str, torch.Tensor], mp: int, experts: int = 0) -> list[dict[str, torch.Tensor]]:
    """What each of `mp` model-parallel ranks holds: fairscale's column (dim 0) / row (dim 1) /
    embedding (dim 1) partitions, the MoE's per-expert slices of the hidden dim, full replicas."""
    shards: list[dict[str, torch.Tensor]] = [{} for _ in range(mp)]
    for key, t in state.items():
        kind = parallel_kind(key)
        if kind == "experts":
            parts = [c.reshape(-1, t.shape[1]) for c in t.view(experts, -1, t.shape[1]).chunk(mp, dim=1)]
        elif kind == "replicated":
            parts = [t] * mp
        else:
            parts = list(t.chunk(mp, dim=0 if kind == "column" else 1))
        for shard, part in zip(shards, parts):
            shard[key] = part.clone().to(torch.bfloat16 if key.endswith("norm.weight") else torch.float32)
    return shards


def write_checkpoint(root: Path, d: Dims, mp: int = 1, seed: int = 0, llama_type: str | None = None,
                     state: dict | None = None) -> tuple[Path, dict[str, torch.Tensor]]:
    """SRC_DIR in the released layout; returns it and the full (unsplit) official state."""
    state = official_state(d, seed) if state is None else state
    root.mkdir(parents=True, exist_ok=True)
    for rank, shard in enumerate(split(state, mp, d.experts)):
        torch.save({"model": shard}, root / f"consolidated.{rank:02d}-of-{mp:02d}.model.pth")
    args = {"dim": d.dim, "n_layers": d.layers, "n_heads": d.heads, "n_kv_heads": d.kv_heads, "norm_eps": 1e-5}
    if d.experts:
        args.update(hidden_dim=d.hidden, rope_theta=1e6, moe={"num_experts": d.experts, "num_experts_per_tok": 2})
    (root / "config.json").write_text(json.dumps(args))
    llama_type = llama_type or ("mixtral_sparse_ens5" if d.experts else "llama_ens5_light")
    (root / "meta.json").write_text(json.dumps({"llama_type": llama_type}))
    shutil.copyfile(SPM_MODEL, root / "tokenizer.model")
    return root, state


# ---- the non-LLM part: tiny stand-ins and the key map the converter is given -----------------------
def _tags(dim: int, g: torch.Generator) -> torch.Tensor:
    return torch.rand(1, 1, dim, generator=g)


TEST_VISION = {
    "llma.visual_proj.0.weight": lambda dim, g: torch.randn(dim, 224, generator=g) * 0.05,
    "llma.visual_proj.0.bias": lambda dim, g: torch.zeros(dim),
    "llma.visual_proj.1.weight": lambda dim, g: torch.ones(dim),
    "llma.visual_proj.1.bias": lambda dim, g: torch.zeros(dim),
    "llma.start_img": _tags,
    "llma.end_img": _tags,
}


OFFICIAL_EXPERTS = {"visual.experts.clip_convnext.trunk.": "llma.openclip_convnext_xxl.",
                    "visual.experts.dinov2.trunk.": "llma.dinov2_vitg14."}


@dataclass
class StandIn:
    """The `nano` experts under the official module names (what sphinx_x.accessory_keys maps back), and
    the `--config` file that describes them."""

    experts: dict[str, torch.Tensor]  # official key -> tensor
    ours: dict[str, str]  # official key -> our key
    config: Path


@pytest.fixture(scope="module")
def stand_in(tmp_path_factory) -> StandIn:
    from sphinx_x.model import SphinxX

    torch.manual_seed(0)
    config = SphinxXConfig.from_name("nano")
    experts, ours = {}, {}
    for name, value in SphinxX(config).state_dict().items():
        for our_prefix, official_prefix in OFFICIAL_EXPERTS.items():
            if name.startswith(our_prefix):
                key = official_prefix + name[len(our_prefix):]
                experts[key], ours[key] = value.clone(), name
    experts["llma.dinov2_vitg14.mask_token"] = torch.zeros(1, 96)  # in the release, dropped on conversion
    path = tmp_path_factory.mktemp("config") / "nano.json"
    config.save(path)
    return StandIn(experts, ours, path)


def checkpoint(tmp_path: Path, stand_in: StandIn, d: Dims, mp: int = 1, **kw) -> tuple[Path, dict]:
    state = {**official_state(d, kw.pop("seed", 0)), **stand_in.experts}
    return write_checkpoint(tmp_path / f"src{mp}", d, mp, state=state, **kw)


def convert(src: Path, dst: Path, stand_in: StandIn, **kw) -> Path:
    kw.setdefault("config", stand_in.config)
    return convert_accessory(src, dst, dtype=kw.pop("dtype", "float32"), progress=False, **kw)


# ---- a Meta-style reference forward on the official weights ---------------------------------------
def rms(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5) * w


def interleaved_rope(x: torch.Tensor, theta: float) -> torch.Tensor:
    """(T, H, hd): rotate consecutive feature pairs as complex numbers (Meta's apply_rotary_emb)."""
    t, hd = x.shape[0], x.shape[-1]
    freqs = 1.0 / theta ** (torch.arange(0, hd, 2).float() / hd)
    cis = torch.polar(torch.ones(t, hd // 2), torch.outer(torch.arange(t).float(), freqs))
    return torch.view_as_real(torch.view_as_complex(x.reshape(t, x.shape[1], -1, 2)) * cis[:, None]).flatten(2)


def meta_logits(s: dict[str, torch.Tensor], d: Dims, tokens: torch.Tensor, theta: float) -> torch.Tensor:
    s = {k: v.double() for k, v in s.items()}
    h = s["llma.tok_embeddings.weight"][tokens]
    t, hd, rep = len(tokens), d.dim // d.heads, d.heads // d.kv_heads
    causal = torch.ones(t, t, dtype=torch.bool).tril()
    for i in range(d.layers):
        p = f"llma.layers.{i}."
        x = rms(h, s[p + "attention_norm.weight"])
        q = interleaved_rope((x @ s[p + "attention.wq.weight"].T).view(t, d.heads, hd), theta)
        k = interleaved_rope((x @ s[p + "attention.wk.weight"].T).view(t, d.kv_heads, hd), theta)
        v = (x @ s[p + "attention.wv.weight"].T).view(t, d.kv_heads, hd)
        k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)  # kv head j serves j*rep..
        att = torch.einsum("qhd,khd->hqk", q, k) / hd**0.5
        att = att.masked_fill(~causal, float("-inf")).softmax(-1)
        h = h + torch.einsum("hqk,khd->qhd", att, v).reshape(t, -1) @ s[p + "attention.wo.weight"].T
        x = rms(h, s[p + "ffn_norm.weight"])
        h = h + (moe(s, p, x, d) if d.experts else swiglu(x, *(s[p + f"feed_forward.w{j}.weight"] for j in (1, 3, 2))))
    return rms(h, s["llma.norm.weight"]) @ s["llma.output.weight"].T


def swiglu(x: torch.Tensor, w1: torch.Tensor, w3: torch.Tensor, w2: torch.Tensor) -> torch.Tensor:
    """w1, w3: (hidden, dim); w2: (dim, hidden) as nn.Linear weights."""
    return (F.silu(x @ w1.T) * (x @ w3.T)) @ w2.T


def moe(s: dict[str, torch.Tensor], p: str, x: torch.Tensor, d: Dims) -> torch.Tensor:
    """The official sparse MoE: softmax router, top-2, renormalised; expert e uses rows e*H..(e+1)*H of
    w1, w2, w3 and computes (silu(x w1_e^T) * x w3_e^T) w2_e (w2 untransposed)."""
    probs = (x @ s[p + "feed_forward.gate.weight"].T).softmax(-1)
    weights, chosen = probs.topk(2, dim=-1)
    weights = weights / weights.sum(-1, keepdim=True)
    w1, w2, w3 = (s[p + f"feed_forward.{w}"].view(d.experts, d.hidden, d.dim) for w in ("w1", "w2", "w3"))
    out = torch.zeros_like(x)
    for tok in range(x.shape[0]):
        for weight, e in zip(weights[tok], chosen[tok]):
            out[tok] += weight * swiglu(x[tok], w1[e], w3[e], w2[e].T)
    return out


# ---- merging and permutation ---------------------------------------------------------------------
@pytest.mark.parametrize("mp", [1, 2])
def test_merged_tensors_equal_the_originals(tmp_path: Path, stand_in, mp: int) -> None:
    d = Dims()
    src, state = checkpoint(tmp_path, stand_in, d, mp)
    out = load_weights(convert(src, tmp_path / "out", stand_in))
    for i in range(d.layers):
        p, o = f"llma.layers.{i}.", f"llm.model.layers.{i}."
        assert torch.equal(out[o + "self_attn.q_proj.weight"],
                           interleaved_to_rotate_half(state[p + "attention.wq.weight"], d.heads))
        assert torch.equal(out[o + "self_attn.k_proj.weight"],
                           interleaved_to_rotate_half(state[p + "attention.wk.weight"], d.kv_heads))
        for ours, theirs in [("self_attn.v_proj", "attention.wv"), ("self_attn.o_proj", "attention.wo"),
                             ("mlp.gate_proj", "feed_forward.w1"), ("mlp.up_proj", "feed_forward.w3"),
                             ("mlp.down_proj", "feed_forward.w2")]:
            assert torch.equal(out[f"{o}{ours}.weight"], state[f"{p}{theirs}.weight"]), ours
        assert torch.equal(out[o + "input_layernorm.weight"], state[p + "attention_norm.weight"])
    assert torch.equal(out["llm.model.embed_tokens.weight"], state["llma.tok_embeddings.weight"])
    assert torch.equal(out["llm.lm_head.weight"], state["llma.output.weight"])
    assert torch.equal(out["image_start"], state["llma.start_img"].reshape(-1))
    assert torch.equal(out["visual.projector.0.weight"], state["llma.visual_proj.0.weight"])
    assert torch.equal(out["skip_token"], torch.zeros(d.dim))
    for key, name in stand_in.ours.items():
        assert torch.equal(out[name], stand_in.experts[key])
    assert len([k for k in out if k.startswith("visual.experts.")]) == len(stand_in.ours)  # mask_token dropped


FIXTURES = Path(__file__).parent / "fixtures" / "accessory"


@pytest.mark.parametrize("one, two", [("llama_ens5_light", "llama_ens5_light_mp2"),
                                      ("mixtral_sparse_ens", "mixtral_sparse_ens_mp2")])
def test_merge_undoes_the_official_split(one: str, two: str) -> None:
    """The parity fixtures' two-shard checkpoints were written by two ranks of the official loader from the
    one-shard ones (tensor_parallel._load_checkpoint_and_split_rank, the MoE's _sparse_expert_split):
    merging them gives back every tensor exactly."""
    from sphinx_x.convert.shards import ShardSet, find_shards

    experts = json.loads((FIXTURES / one / "config.json").read_text()).get("moe", {}).get("num_experts")
    single, double = (ShardSet(find_shards(FIXTURES / n), num_experts=experts) for n in (one, two))
    assert len(double.paths) == 2 and single.keys() == double.keys()
    kinds = {parallel_kind(k) for k in single.keys()}
    assert kinds == ({"column", "row", "embedding", "replicated"} | ({"experts"} if experts else set()))
    for key in single.keys():
        merged = double.merged(key)
        assert torch.equal(merged, single.merged(key)), key


def test_permutation_is_a_per_head_reordering() -> None:
    w = torch.arange(2 * 6 * 3, dtype=torch.float32).view(12, 3)  # 2 heads of head_dim 6
    rows = interleaved_to_rotate_half(w, 2)[:, 0].long().div(3, rounding_mode="floor").tolist()
    assert rows == [0, 2, 4, 1, 3, 5, 6, 8, 10, 7, 9, 11]  # evens then odds, head by head
    with pytest.raises(ValueError, match="even size"):
        interleaved_to_rotate_half(torch.zeros(10, 3), 2)


@pytest.mark.parametrize("mp", [1, 2])
def test_moe_experts_merge_per_expert(tmp_path: Path, stand_in, mp: int) -> None:
    d = Dims(experts=4)
    src, state = checkpoint(tmp_path, stand_in, d, mp)
    out = load_weights(convert(src, tmp_path / "out", stand_in))
    for i in range(d.layers):
        p, o = f"llma.layers.{i}.feed_forward.", f"llm.model.layers.{i}.mlp."
        gate_up, down = out[o + "experts.gate_up_proj"], out[o + "experts.down_proj"]
        assert gate_up.shape == (d.experts, 2 * d.hidden, d.dim) and down.shape == (d.experts, d.dim, d.hidden)
        for e in range(d.experts):
            rows = slice(e * d.hidden, (e + 1) * d.hidden)
            assert torch.equal(gate_up[e, : d.hidden], state[p + "w1"][rows])
            assert torch.equal(gate_up[e, d.hidden :], state[p + "w3"][rows])
            assert torch.equal(down[e], state[p + "w2"][rows].T)
        assert torch.equal(out[o + "gate.weight"], state[p + "gate.weight"])


@pytest.mark.parametrize("experts", [0, 4])
def test_converted_llm_computes_the_meta_interleaved_forward(tmp_path: Path, stand_in, experts: int) -> None:
    """transformers' rotate-half Llama / Mixtral on the converted weights == a direct Meta-style forward
    (interleaved complex rotary, repeat_kv GQA, official MoE routing) on the official weights."""
    from sphinx_x.model import SphinxX

    d = Dims(experts=experts)
    src, state = checkpoint(tmp_path, stand_in, d, mp=2)
    model = SphinxX.from_pretrained(convert(src, tmp_path / "out", stand_in))  # fp32 (Mixtral's grouped mm)
    tokens = torch.tensor([1, 415, 3608, 302, 272, 4469, 28804, 13, 28705, 7])
    theta = 1e6 if experts else 1e4
    with torch.no_grad():
        ours = model.llm(input_ids=tokens[None]).logits[0]
    ref = meta_logits({k: v for k, v in state.items() if k.startswith("llma.")}, d, tokens, theta)
    assert (ours.double() - ref).abs().max().item() < 1e-4  # fp32 model vs fp64 reference
    # Without the permutation the rotary layouts disagree: the check above can fail.
    q = model.llm.model.layers[0].self_attn.q_proj
    q.weight.data = state["llma.layers.0.attention.wq.weight"].clone()
    with torch.no_grad():
        assert (model.llm(input_ids=tokens[None]).logits[0].double() - ref).abs().max().item() > 1e-2


# ---- the model directory -------------------------------------------------------------------------
@pytest.mark.slow
def test_directory_loads_with_tokenizer_config_and_provenance(tmp_path: Path, stand_in) -> None:
    from sphinx_x.model import SphinxX

    d = Dims()
    src, _ = checkpoint(tmp_path, stand_in, d, mp=2)
    dst = convert(src, tmp_path / "out", stand_in, dtype="bfloat16", max_shard_bytes=2**20)
    files = sorted(p.name for p in dst.iterdir())
    assert "model.safetensors.index.json" in files and "tokenizer.model" in files and "tokenizer.json" in files
    assert len([f for f in files if f.endswith(".safetensors")]) > 1  # sharded at 1 MiB
    assert all(t.dtype == torch.bfloat16 for t in load_file(dst / f"model-00001-of-{_count(files)}").values())
    model = SphinxX.from_pretrained(dst)
    assert model.config.llm.hidden_size == d.dim and model.config.llm.num_kv_heads == d.kv_heads
    assert model.config.llm.vocab_size == VOCAB and not model.config.llm.tie_word_embeddings
    assert model.config.template == "accessory" and model.config.name == "nano"
    sp = spm.SentencePieceProcessor(model_file=str(SPM_MODEL))
    text = "### Human: what is in the image?\n### Assistant:"
    assert model.tokenizer(text)["input_ids"] == [sp.bos_id(), *sp.encode(text)]
    note = json.loads((dst / SOURCE_NOTE).read_text())
    assert note["llama_type"] == "llama_ens5_light" and note["unequal_replicas"] == []
    assert not list(tmp_path.glob(".out.*"))  # no temporary directory left


def _count(files: list[str]) -> str:
    return next(f for f in files if f.startswith("model-00001-of-")).split("-of-")[1]


@pytest.mark.slow
def test_unequal_replicas_take_shard_zero_and_are_reported(tmp_path: Path, stand_in, capsys) -> None:
    d = Dims()
    src, state = checkpoint(tmp_path, stand_in, d, mp=2)
    shard = torch.load(src / "consolidated.01-of-02.model.pth", weights_only=True)
    shard["model"]["llma.norm.weight"] = shard["model"]["llma.norm.weight"] + 1
    torch.save(shard, src / "consolidated.01-of-02.model.pth")
    out = load_weights(convert(src, tmp_path / "out", stand_in))
    assert torch.equal(out["llm.model.norm.weight"], state["llma.norm.weight"])
    note = json.loads((tmp_path / "out" / SOURCE_NOTE).read_text())
    assert note["unequal_replicas"] == ["llma.norm.weight (consolidated.01-of-02.model.pth)"]
    assert "llma.norm.weight" in capsys.readouterr().err
    convert(src, tmp_path / "unchecked", stand_in, check_replicas=False)
    assert json.loads((tmp_path / "unchecked" / SOURCE_NOTE).read_text())["unequal_replicas"] == []


# ---- errors --------------------------------------------------------------------------------------
def _edit(src: Path, fn) -> None:
    for path in sorted(src.glob("consolidated.*.pth")):
        shard = torch.load(path, weights_only=True)
        fn(shard["model"], path.name)
        torch.save(shard, path)


ERRORS = {
    "missing meta.json": (lambda s: (s / "meta.json").unlink(), r"meta\.json: missing"),
    "missing config.json": (lambda s: (s / "config.json").unlink(), r"config\.json: missing"),
    "missing tokenizer": (lambda s: (s / "tokenizer.model").unlink(), r"tokenizer\.model: missing"),
    "no shards": (lambda s: [p.unlink() for p in s.glob("*.pth")], r"no consolidated\.XX-of-YY\.model\.pth"),
    "unknown llama_type": (lambda s: (s / "meta.json").write_text('{"llama_type": "llama_ens9"}'),
                           r"meta\.json: unknown llama_type 'llama_ens9'; valid: llama_ens, llama_ens5, "
                           r"llama_ens_light, llama_ens5_light, mixtral_sparse_ens, mixtral_sparse_ens5"),
    "counts differ": (lambda s: (s / "consolidated.01-of-02.model.pth").rename(s / "consolidated.01-of-03.model.pth"),
                      r"different counts: consolidated\.00-of-02\.model\.pth \(of 2\); "
                      r"consolidated\.01-of-03\.model\.pth \(of 3\)"),
    "missing shard": (lambda s: (s / "consolidated.01-of-02.model.pth").unlink(),
                      r"missing shard files consolidated\.01-of-02\.model\.pth"),
    "missing key": (lambda s: _edit(s, lambda m, _: m.pop("llma.layers.1.attention.wk.weight")),
                    r"missing keys in consolidated\.00-of-02\.model\.pth: llma\.layers\.1\.attention\.wk\.weight"),
    "unexpected key": (lambda s: _edit(s, lambda m, _: m.update({"llma.extra.weight": torch.zeros(2)})),
                       r"unexpected keys in consolidated\.00-of-02\.model\.pth: llma\.extra\.weight"),
    "keys differ": (lambda s: _edit(s, lambda m, n: m.pop("llma.norm.weight") if "01-of" in n else None),
                    r"consolidated\.01-of-02\.model\.pth: keys differ from consolidated\.00-of-02\.model\.pth: "
                    r"lacks llma\.norm\.weight"),
    "shard shapes": (lambda s: _edit(s, lambda m, n: m.update(
        {"llma.layers.0.attention.wq.weight": torch.zeros(16, 31)}) if "01-of" in n else None),
        r"consolidated\.01-of-02\.model\.pth: llma\.layers\.0\.attention\.wq\.weight has shape \(16, 31\) but "
        r"consolidated\.00-of-02\.model\.pth has \(16, 32\); column-parallel"),
    "replica shapes": (lambda s: _edit(s, lambda m, n: m.update(
        {"llma.norm.weight": torch.zeros(3)}) if "01-of" in n else None),
        r"replicated tensor llma\.norm\.weight has shape \(3,\)"),
    "model shapes": (lambda s: _edit(s, lambda m, _: m.update({"llma.visual_proj.0.weight": torch.zeros(32, 5)})),
                     r"shape mismatch: llma\.visual_proj\.0\.weight \(32, 5\) for visual\.projector\.0\.weight "
                     r"\(32, 224\)"),
    "config vs tensors": (lambda s: (s / "config.json").write_text('{"dim": 64, "n_layers": 2, "n_heads": 4}'),
                          r"config\.json: dim=64 but llma\.tok_embeddings\.weight is \(32000, 32\)"),
    "layer count": (lambda s: (s / "config.json").write_text('{"dim": 32, "n_layers": 3, "n_heads": 4}'),
                    r"config\.json: n_layers=3 but the shards hold layers 0\.\.1 \(missing \[2\]\)"),
    "diff checkpoint": (lambda s: (s / "consolidated.00-of-02.model-diff.pth").write_bytes(b""),
                        r"consolidated\.00-of-02\.model-diff\.pth is a \*_diff checkpoint"),
    "corrupt shard": (lambda s: (s / "consolidated.00-of-02.model.pth").write_bytes(b"not a zip"),
                      r"consolidated\.00-of-02\.model\.pth: cannot read as a torch checkpoint"),
}


@pytest.mark.parametrize("case", list(ERRORS))
def test_errors_name_the_file_and_key_and_leave_nothing(tmp_path: Path, stand_in, case: str) -> None:
    src, _ = checkpoint(tmp_path, stand_in, Dims(), mp=2)
    damage, message = ERRORS[case]
    damage(src)
    with pytest.raises(ConversionError, match=message):
        convert(src, tmp_path / "out", stand_in)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src2"]


def test_legacy_format_shards_are_read_whole(tmp_path: Path, stand_in, capsys) -> None:
    src, state = checkpoint(tmp_path, stand_in, Dims(), mp=2)
    for path in src.glob("consolidated.*.pth"):  # torch's pre-zip format cannot be memory-mapped
        torch.save(torch.load(path, weights_only=True), path, _use_new_zipfile_serialization=False)
    out = load_weights(convert(src, tmp_path / "out", stand_in))
    assert torch.equal(out["llm.model.layers.1.mlp.down_proj.weight"], state["llma.layers.1.feed_forward.w2.weight"])
    assert "legacy (pre-zip) format" in capsys.readouterr().err


def test_tokenizer_size_must_match_the_embeddings(tmp_path: Path, stand_in) -> None:
    src, _ = checkpoint(tmp_path, stand_in, Dims(), mp=1)
    _edit(src, lambda m, _: m.update({k: m[k][:31999] for k in ("llma.tok_embeddings.weight", "llma.output.weight")}))
    with pytest.raises(ConversionError, match=r"tokenizer\.model: the tokenizer has 32000 tokens but "
                                              r"llma\.tok_embeddings\.weight has 31999 rows"):
        convert(src, tmp_path / "out", stand_in)
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_failure_while_writing_leaves_nothing_and_keeps_an_old_directory(tmp_path: Path, stand_in, monkeypatch) -> None:
    import sphinx_x.convert.writer as writer

    src, _ = checkpoint(tmp_path, stand_in, Dims(), mp=2)
    calls = []

    def failing_save(tensors, filename, metadata=None):
        calls.append(filename)
        if len(calls) == 3:
            raise OSError("disk full")
        return real_save(tensors, filename, metadata=metadata)

    real_save = writer.save_file
    monkeypatch.setattr(writer, "save_file", failing_save)
    with pytest.raises(OSError, match="disk full"):
        convert(src, tmp_path / "out", stand_in, max_shard_bytes=2**20)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src2"]

    old = tmp_path / "old"
    old.mkdir()
    (old / "keep.txt").write_text("previous model")
    with pytest.raises(ConversionError, match="already exists and is not empty"):
        convert(src, old, stand_in)
    with pytest.raises(ConversionError, match="must not be the source directory or inside it"):
        convert(src, src, stand_in, overwrite=True)
    calls.clear()
    with pytest.raises(OSError, match="disk full"):
        convert(src, old, stand_in, max_shard_bytes=2**20, overwrite=True)
    assert [p.name for p in old.iterdir()] == ["keep.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old", "src2"]
    monkeypatch.setattr(writer, "save_file", real_save)
    convert(src, old, stand_in, overwrite=True)
    assert (old / "config.json").is_file() and not (old / "keep.txt").exists()


def test_preset_follows_the_llama_type(tmp_path: Path, stand_in) -> None:
    """Without --config the preset of meta.json's llama_type is used: the nano stand-in experts do not fit
    SPHINX-Tiny-1k's ConvNeXt-XXL, and the error says which preset was tried."""
    src, _ = checkpoint(tmp_path, stand_in, Dims(), mp=1)
    message = r"\(llama_ens5_light -> preset sphinx-tiny-1k\): (missing|unexpected) keys"
    with pytest.raises(ConversionError, match=message):
        convert(src, tmp_path / "out", stand_in, config=None)
    assert not (tmp_path / "out").exists()


def test_cli_converts(tmp_path: Path, stand_in, capsys) -> None:
    from sphinx_x.model import SphinxX

    src, state = checkpoint(tmp_path, stand_in, Dims(experts=4), mp=2)
    dst = tmp_path / "out"
    rc = main(["convert", "accessory", str(src), "--out", str(dst), "--config", str(stand_in.config),
               "--dtype", "float32", "--quiet"])
    assert rc == 0 and f"wrote {dst}" in capsys.readouterr().out
    model = SphinxX.from_pretrained(dst)
    assert model.config.llm.arch == "mixtral" and model.config.llm.num_experts == 4
    assert model.config.llm.rope_theta == 1e6
    assert torch.equal(model.llm.model.layers[1].mlp.gate.weight, state["llma.layers.1.feed_forward.gate.weight"])


def test_cli_reports_errors(tmp_path: Path, capsys) -> None:
    (tmp_path / "src").mkdir()
    rc = main(["convert", "accessory", str(tmp_path / "src"), "--out", str(tmp_path / "out"), "--quiet"])
    assert rc == 2
    assert "src/meta.json: missing" in capsys.readouterr().out
    assert not (tmp_path / "out").exists()
