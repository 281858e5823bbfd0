"""Load any tokenizer SPHINX-X trains or runs with as one `transformers` fast tokenizer.

`load_tokenizer(spec)` accepts:
  - "nano": the byte-level BPE shipped in `sphinx_x/assets/nano_tokenizer.json` (the `nano` preset);
  - a directory holding `tokenizer.json` and/or `tokenizer_config.json` (read with `AutoTokenizer`,
    local files only), or a direct path to a `tokenizer.json`;
  - a SentencePiece model file (e.g. Mistral/Mixtral/LLaMA `tokenizer.model`, or mistral-common's
    `*.model.v3`), converted with transformers' SentencePiece converter so it encodes exactly like
    `sentencepiece` itself.

The result always has bos, eos and pad tokens. Pad policy: a tokenizer's own pad token is kept;
otherwise pad = unk (LLaMA/Mistral convention: unk never occurs in real text, and keeping pad apart from
eos keeps "stop here" distinguishable from "padding"); otherwise pad = eos. Padding carries no loss and
no attention either way. A tokenizer without bos or eos is refused with a clear error.

With `add_special_tokens=True` (the transformers default) the nano and SentencePiece tokenizers prepend
BOS and never append EOS, like LLaMA tokenizers; a directory tokenizer follows its own config.

The nano BPE itself is built by `train_nano_bpe` (driven by `scripts/build_nano_tokenizer.py`): byte-level
BPE, every digit its own token, the template markers and `<p>`, `</p>`, `<Mark` as single (non-special)
tokens, specials `<s>` `</s>` `<pad>` `<unk>` at ids 0-3, and `<reserved_i>` specials filling the
vocabulary up to exactly `NANO_VOCAB_SIZE` (the corpus text has fewer distinct words than that).
"""

from __future__ import annotations

import json
import re
import weakref
from collections.abc import Iterable, Sequence
from pathlib import Path

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

NANO_TOKENIZER_PATH = Path(__file__).resolve().parent / "assets" / "nano_tokenizer.json"
NANO_VOCAB_SIZE = 2048  # must equal PRESETS["nano"]["llm"]["vocab_size"] in sphinx_x/config.py

BOS, EOS, PAD, UNK = "<s>", "</s>", "<pad>", "<unk>"
NANO_SPECIAL_TOKENS = [BOS, EOS, PAD, UNK]  # ids 0..3, in this order
# Kept whole (one token each) but not "special": they are ordinary text the model reads and writes,
# and decoding with skip_special_tokens=True keeps them.
NANO_ADDED_TOKENS = [" Human:", " Assistant:", "\n###", "<p>", "</p>", "<Mark"]
# GPT-2's pre-tokenisation regex with one change: every digit is its own piece (optionally with the
# space before it), so numbers and coordinates are read digit by digit and never merged.
NANO_SPLIT_PATTERN = r"'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"


class TokenizerError(ValueError):
    """A tokenizer spec cannot be loaded; the message names the spec and what is wrong."""


# ---- loading -----------------------------------------------------------------------------------
def load_tokenizer(spec: str | Path) -> PreTrainedTokenizerFast:
    """Load "nano", a local tokenizer directory / tokenizer.json, or a SentencePiece .model file."""
    if str(spec) == "nano":
        if not NANO_TOKENIZER_PATH.is_file():
            raise TokenizerError(f"nano: the shipped tokenizer {NANO_TOKENIZER_PATH} is missing; "
                                 "rebuild it with `python scripts/build_nano_tokenizer.py`")
        return _from_tokenizers_file(NANO_TOKENIZER_PATH)
    path = Path(spec)
    if path.is_dir():
        tok = _from_directory(path)
    elif path.is_file() and path.name.endswith(".json"):
        tok = _from_tokenizers_file(path)
    elif path.is_file() and _is_sentencepiece(path):
        tok = _from_sentencepiece(path)
    elif path.exists():
        raise TokenizerError(
            f"{path}: not a tokenizer; expected a directory with tokenizer.json / tokenizer_config.json, "
            "a tokenizer.json, or a SentencePiece .model file"
        )
    else:
        raise TokenizerError(
            f"unknown tokenizer {str(spec)!r}: not 'nano' and no such file or directory "
            "(expected 'nano', a tokenizer directory, a tokenizer.json or a SentencePiece .model file)"
        )
    return _with_required_specials(tok, str(spec))


def _from_tokenizers_file(path: Path) -> PreTrainedTokenizerFast:
    """A raw `tokenizers` JSON; special-token roles are the nano names when present."""
    try:
        backend = Tokenizer.from_file(str(path))
    except Exception as e:  # the Rust side raises plain Exception subclasses
        raise TokenizerError(f"{path}: not a valid tokenizers JSON file ({e})") from e
    vocab = backend.get_vocab(with_added_tokens=True)
    roles = {role: tok for role, tok in (("bos_token", BOS), ("eos_token", EOS), ("pad_token", PAD),
                                         ("unk_token", UNK)) if tok in vocab}
    return _with_required_specials(PreTrainedTokenizerFast(tokenizer_object=backend, **roles), str(path))


def _from_directory(path: Path) -> PreTrainedTokenizerFast:
    if not any((path / n).is_file() for n in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")):
        raise TokenizerError(f"{path}: no tokenizer.json, tokenizer_config.json or tokenizer.model in this directory")
    if not (path / "tokenizer.json").is_file() and (path / "tokenizer.model").is_file():
        return _from_sentencepiece(path / "tokenizer.model")  # a LLaMA/Mistral-style checkpoint directory
    try:
        tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True, use_fast=True)
    except Exception as e:  # transformers raises many types (OSError, ValueError, KeyError...)
        raise TokenizerError(f"{path}: cannot load tokenizer ({type(e).__name__}: {e})") from e
    if not getattr(tok, "is_fast", False):
        raise TokenizerError(f"{path}: transformers returned a slow tokenizer; a fast (tokenizers) one is required")
    return tok


def _is_sentencepiece(path: Path) -> bool:
    """`.model` files and mistral-common's `*.model.vN` names."""
    return path.suffix == ".model" or ".model." in path.name


def _spm_model_class() -> type:
    """A protobuf message class for the part of SentencePiece's `ModelProto` the converter reads.

    transformers' and sentencepiece's generated `*_pb2` modules refuse to import unless the protobuf
    runtime is at least the version they were generated with (7.36 here), and other packages pin it
    lower (wandb: < 7). Declaring the few fields we need (numbers and proto2 defaults exactly as in
    sentencepiece_model.proto) lets any protobuf >= 4 runtime parse the file; other fields are kept
    as unknown fields and ignored."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    F = descriptor_pb2.FieldDescriptorProto
    fd = descriptor_pb2.FileDescriptorProto(name="sphinx_x_spm_subset.proto", package="sphinx_x_spm", syntax="proto2")

    def add(msg, name: str, number: int, kind: int, default: str | None = None, type_name: str | None = None,
            repeated: bool = False) -> None:
        f = msg.field.add(name=name, number=number, type=kind,
                          label=F.LABEL_REPEATED if repeated else F.LABEL_OPTIONAL)
        if default is not None:
            f.default_value = default
        if type_name:
            f.type_name = type_name

    trainer = fd.message_type.add(name="TrainerSpec")
    for name, number, kind, default in [
        ("model_type", 3, F.TYPE_INT32, "1"), ("byte_fallback", 35, F.TYPE_BOOL, "false"),
        ("unk_id", 40, F.TYPE_INT32, "0"), ("bos_id", 41, F.TYPE_INT32, "1"), ("eos_id", 42, F.TYPE_INT32, "2"),
        ("pad_id", 43, F.TYPE_INT32, "-1"), ("unk_piece", 45, F.TYPE_STRING, "<unk>"),
        ("bos_piece", 46, F.TYPE_STRING, "<s>"), ("eos_piece", 47, F.TYPE_STRING, "</s>"),
        ("pad_piece", 48, F.TYPE_STRING, "<pad>"),
    ]:
        add(trainer, name, number, kind, default)
    norm = fd.message_type.add(name="NormalizerSpec")
    for name, number, kind, default in [
        ("name", 1, F.TYPE_STRING, None), ("precompiled_charsmap", 2, F.TYPE_BYTES, None),
        ("add_dummy_prefix", 3, F.TYPE_BOOL, "true"), ("remove_extra_whitespaces", 4, F.TYPE_BOOL, "true"),
        ("escape_whitespaces", 5, F.TYPE_BOOL, "true"),
    ]:
        add(norm, name, number, kind, default)
    model = fd.message_type.add(name="ModelProto")
    piece = model.nested_type.add(name="SentencePiece")
    add(piece, "piece", 1, F.TYPE_STRING)
    add(piece, "score", 2, F.TYPE_FLOAT)
    add(piece, "type", 3, F.TYPE_INT32, "1")  # enum Type: NORMAL=1 ... USER_DEFINED=4, BYTE=6
    add(model, "pieces", 1, F.TYPE_MESSAGE, type_name=".sphinx_x_spm.ModelProto.SentencePiece", repeated=True)
    add(model, "trainer_spec", 2, F.TYPE_MESSAGE, type_name=".sphinx_x_spm.TrainerSpec")
    add(model, "normalizer_spec", 3, F.TYPE_MESSAGE, type_name=".sphinx_x_spm.NormalizerSpec")
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fd)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("sphinx_x_spm.ModelProto"))


def _from_sentencepiece(path: Path) -> PreTrainedTokenizerFast:
    from google.protobuf.message import DecodeError
    from transformers.convert_slow_tokenizer import SpmConverter

    proto = _spm_model_class()()
    try:
        proto.ParseFromString(path.read_bytes())
    except (DecodeError, OSError) as e:
        raise TokenizerError(f"{path}: not a readable SentencePiece model ({e})") from e
    if not proto.pieces:
        raise TokenizerError(f"{path}: not a SentencePiece model (no pieces)")
    spec = proto.trainer_spec
    if spec.model_type == 1:  # UNIGRAM: the converter wants (piece, score) pairs
        vocab = [(p.piece, p.score) for p in proto.pieces]
    elif spec.model_type == 2:  # BPE: merges are rebuilt from the piece scores
        vocab = {p.piece: i for i, p in enumerate(proto.pieces)}
    else:
        raise TokenizerError(f"{path}: SentencePiece model type {spec.model_type} (word/char) is not supported")
    backend = SpmConverter.build_tokenizer_from_spm_proto(proto=proto, vocab=vocab)

    def piece(idx: int) -> str | None:
        return proto.pieces[idx].piece if 0 <= idx < len(proto.pieces) else None

    bos, eos, unk, pad = piece(spec.bos_id), piece(spec.eos_id), piece(spec.unk_id), piece(spec.pad_id)
    if bos is not None:
        backend.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, spec.bos_id)]
        )
    roles = {k: v for k, v in (("bos_token", bos), ("eos_token", eos), ("unk_token", unk), ("pad_token", pad)) if v}
    return PreTrainedTokenizerFast(tokenizer_object=backend, **roles)


def _with_required_specials(tok: PreTrainedTokenizerFast, name: str) -> PreTrainedTokenizerFast:
    for role in ("bos_token", "eos_token"):
        if getattr(tok, role) is None:
            raise TokenizerError(f"{name}: the tokenizer defines no {role}; set it in tokenizer_config.json")
    if tok.pad_token is None:
        tok.pad_token = tok.unk_token if tok.unk_token is not None else tok.eos_token
    return tok


# ---- decoding ----------------------------------------------------------------------------------
SPM_SPACE = "\u2581"  # SentencePiece's whitespace symbol
SPM_UNKNOWN_SURFACE = " \u2047 "  # what SentencePiece writes for <unk> (its kDefaultUnknownSymbol)
_BYTE_PIECE = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")
_UTF8_SIZES = ((0xE0, 0xC0, 2), (0xF0, 0xE0, 3), (0xF8, 0xF0, 4))  # (lead mask, lead bits, sequence size)


def spm_bytes_to_text(run: bytes) -> str:
    """One run of byte pieces as SentencePiece decodes it: a valid UTF-8 character where the bytes at the
    current position form one, otherwise one U+FFFD for the single byte there (SentencePiece consumes one
    byte per error; Python's errors="replace" would cover a whole truncated sequence with one U+FFFD)."""
    out, i = [], 0
    while i < len(run):
        size = 1 if run[i] < 0x80 else next((n for mask, lead, n in _UTF8_SIZES if run[i] & mask == lead), 0)
        try:
            out.append(run[i : i + size].decode("utf-8") if size and i + size <= len(run) else None)
        except UnicodeDecodeError:  # bad trail byte, overlong form, surrogate or beyond U+10FFFF
            out.append(None)
        if out[-1] is None:
            out[-1], size = "\ufffd", 1
        i += size
    return "".join(out)


class TextDecoder:
    """Token ids -> text, the way the tokenizer's own library decodes them.

    A SentencePiece model converted to `tokenizers` (its decoder chain has ByteFallback) is decoded with
    SentencePiece's rules, which that chain does not reproduce exactly: control tokens write nothing,
    <unk> writes " \u2047 ", each run of byte pieces is decoded with `spm_bytes_to_text` (tokenizers
    writes one U+FFFD per byte of an invalid run, valid bytes included), and the dummy-prefix space is
    dropped only from the first piece that starts with one, if nothing was written before it (a lone "\u2581"
    first piece writes ""; a leading byte piece " " is kept). `sentencepiece.decode` gives the same text
    (tests compare them) without making sentencepiece a runtime dependency.
    Any other tokenizer is decoded by itself, special tokens skipped."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        backend = getattr(tokenizer, "backend_tokenizer", None)
        chain = _decoder_chain(backend)
        self.sentencepiece = bool(chain) and any(d["type"] == "ByteFallback" for d in chain) and all(
            _is_spm_step(d) for d in chain)
        if not self.sentencepiece:
            return
        self.strip_dummy_prefix = any(_strips_dummy_prefix(d) for d in chain)
        size = max(len(tokenizer), backend.get_vocab_size(with_added_tokens=True))
        self.pieces = [backend.id_to_token(i) or "" for i in range(size)]
        self.bytes = {i: int(m.group(1), 16) for i, p in enumerate(self.pieces) if (m := _BYTE_PIECE.match(p))}
        self.unk = tokenizer.unk_token_id
        self.control = set(tokenizer.all_special_ids) - {self.unk}

    def decode(self, ids: Sequence[int]) -> str:
        if not self.sentencepiece:
            return self.tokenizer.decode(list(ids), skip_special_tokens=True, clean_up_tokenization_spaces=False)
        out: list[str] = []
        run = bytearray()
        at_start, consumed_space = True, False  # SentencePiece's is_bos_ws / bos_ws_seen
        for i in ids:
            if i in self.bytes:
                run.append(self.bytes[i])
                continue
            if run:
                out.append(spm_bytes_to_text(bytes(run)))
                run.clear()
            if consumed_space or out:  # every entry of `out` is non-empty
                at_start = False
            consumed_space = False
            if i in self.control or not 0 <= i < len(self.pieces):
                continue
            if i == self.unk:
                out.append(SPM_UNKNOWN_SURFACE)
                continue
            piece = self.pieces[i]
            if at_start and self.strip_dummy_prefix and piece.startswith(SPM_SPACE):
                piece, consumed_space = piece[1:], True
            if piece:
                out.append(piece.replace(SPM_SPACE, " "))
        if run:
            out.append(spm_bytes_to_text(bytes(run)))
        return "".join(out)


def _decoder_chain(backend) -> list[dict] | None:
    decoder = getattr(backend, "decoder", None)
    if decoder is None:
        return None
    spec = json.loads(decoder.__getstate__())
    return spec.get("decoders", []) if spec.get("type") == "Sequence" else [spec]


def _is_spm_step(d: dict) -> bool:
    """A step of the decoder chains transformers builds for SentencePiece models."""
    kind = d.get("type")
    if kind == "Replace":
        return d.get("pattern", {}).get("String") == SPM_SPACE and d.get("content") == " "
    if kind == "Strip":
        return d.get("content") == " " and d.get("stop") == 0
    if kind == "Metaspace":
        return d.get("replacement") == SPM_SPACE
    return kind in ("ByteFallback", "Fuse")


def _strips_dummy_prefix(d: dict) -> bool:
    if d.get("type") == "Strip":
        return d.get("start", 0) >= 1
    if d.get("type") == "Metaspace":
        return d.get("prepend_scheme", "always") in ("first", "always") and d.get("add_prefix_space", True)
    return False


_DECODERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def text_decoder(tokenizer) -> TextDecoder:
    """The (cached) `TextDecoder` of a tokenizer."""
    dec = _DECODERS.get(tokenizer)
    if dec is None:
        dec = _DECODERS[tokenizer] = TextDecoder(tokenizer)
    return dec


# ---- building the nano BPE ---------------------------------------------------------------------
def train_nano_bpe(texts: Iterable[str], vocab_size: int = NANO_VOCAB_SIZE) -> Tokenizer:
    """Train the nano byte-level BPE on `texts`; its total vocabulary (added and reserved tokens
    included) is exactly `vocab_size`. Deterministic for the same texts in the same order."""
    extra = len(NANO_ADDED_TOKENS)
    tok = Tokenizer(models.BPE(unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(NANO_SPLIT_PATTERN), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - extra,
        min_frequency=2,
        special_tokens=NANO_SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    tok.add_tokens([AddedToken(t, normalized=False, special=False) for t in NANO_ADDED_TOKENS])
    # The synthetic corpus has a few hundred distinct words, so BPE runs out of merges well before
    # `vocab_size`; the rest are reserved special tokens so ids stay aligned with llm.vocab_size.
    missing = vocab_size - tok.get_vocab_size(with_added_tokens=True)
    tok.add_special_tokens([AddedToken(f"<reserved_{i}>", normalized=False, special=True) for i in range(missing)])
    bos_id = tok.token_to_id(BOS)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, bos_id)]
    )
    if tok.get_vocab_size(with_added_tokens=True) != vocab_size:
        raise ValueError(f"nano BPE has {tok.get_vocab_size(with_added_tokens=True)} tokens, expected {vocab_size}")
    return tok
