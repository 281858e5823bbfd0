"""Incremental detokenization: a row's answer text kept up to date one id at a time, equal at every step to
`TextDecoder.decode(ids)` (sphinx_x.tokenizer) without decoding the whole answer again per step.

- SentencePiece models (`TextDecoder.sentencepiece`): `SentencePieceStream` runs the same rules as
  `TextDecoder.decode` as a state machine (control ids write nothing, <unk> its surface, a run of byte
  pieces is decoded as one run, the dummy-prefix space is dropped from the first piece only while nothing
  was written). Text before the trailing byte run never changes again; the run is re-decoded as it grows.
- Byte-level BPE tokenizers (`tokenizers`' ByteLevel decoder alone, as the nano tokenizer): `ByteLevelStream`
  keeps each id's bytes (looked up once per id and tokenizer) and decodes only the new bytes with Python's
  incremental UTF-8 decoder; the decoder's own rule is "concatenate every kept token's bytes, then decode
  them as UTF-8 replacing each invalid sequence with U+FFFD", which an incremental decoder computes exactly
  (an incomplete trailing character is held back until its last byte arrives or it proves invalid).
- Other tokenizers: `WindowStream` decodes only the ids after the last commit point plus a few ids of
  look-back context, and takes the text beyond the context's own decoding (the scheme of vLLM and TGI:
  context keeps word-boundary spaces and merges right). A commit point is where the new text holds no
  U+FFFD, so an incomplete UTF-8 character is decoded again once its last byte arrives. If the context's
  text is not a prefix of the window's text (a decoder that rewrites across the boundary) it falls back to
  decoding all ids, so the text stays exact.

All three expose `text` (all ids so far), `stable` (length of the text that later ids cannot change) and
`prefix_text(k)` (the text of the first k ids), which the stop rule needs to cut or hold back trailing ids.
"""

from __future__ import annotations

import codecs
import weakref
from functools import lru_cache
from typing import Any

from sphinx_x.tokenizer import SPM_SPACE, SPM_UNKNOWN_SURFACE, TextDecoder, _decoder_chain, spm_bytes_to_text


class SentencePieceStream:
    """Incremental detokenisation for SentencePiece tokenizers: `push` one id at a time; `text` always equals
    decoding all ids so far, and `stable` is how much of it later ids can no longer change."""

    def __init__(self, decoder: TextDecoder):
        self.d = decoder
        self.ids: list[int] = []
        self.committed = ""  # text of every id before the trailing byte run
        self.run = bytearray()  # the trailing byte run, not yet followed by a piece
        self.marks: list[int] = []  # per id: len(committed) after it, -1 for byte pieces
        self.at_start, self.consumed_space = True, False  # SentencePiece's is_bos_ws / bos_ws_seen

    @property
    def text(self) -> str:
        return self.committed + spm_bytes_to_text(bytes(self.run)) if self.run else self.committed

    @property
    def stable(self) -> int:
        return len(self.committed)

    def push(self, i: int) -> None:
        d = self.d
        self.ids.append(i)
        if i in d.bytes:
            self.run.append(d.bytes[i])
            self.marks.append(-1)
            return
        if self.run:
            self.committed += spm_bytes_to_text(bytes(self.run))
            self.run.clear()
        if self.consumed_space or self.committed:
            self.at_start = False
        self.consumed_space = False
        if i in d.control or not 0 <= i < len(d.pieces):
            pass
        elif i == d.unk:
            self.committed += SPM_UNKNOWN_SURFACE
        else:
            piece = d.pieces[i]
            if self.at_start and d.strip_dummy_prefix and piece.startswith(SPM_SPACE):
                piece, self.consumed_space = piece[1:], True
            if piece:
                self.committed += piece.replace(SPM_SPACE, " ")
        self.marks.append(len(self.committed))

    def prefix_text(self, k: int) -> str:
        if k <= 0:
            return ""
        if self.marks[k - 1] >= 0:
            return self.committed[: self.marks[k - 1]]
        start = k - 1  # k ends inside a byte run: the text before the run, then the run's first bytes
        while start > 0 and self.marks[start - 1] < 0:
            start -= 1
        before = self.committed[: self.marks[start - 1]] if start > 0 else ""
        return before + spm_bytes_to_text(bytes(self.d.bytes[i] for i in self.ids[start:k]))


class WindowStream:
    """Incremental detokenisation for other tokenizers: re-decodes a window of recent ids (with `LOOKBACK` ids
    of context) as ids arrive; `text` and `stable` as in `SentencePieceStream`."""

    LOOKBACK = 6  # ids of context before the commit point

    def __init__(self, decoder: TextDecoder):
        self.d = decoder
        self.ids: list[int] = []
        self.committed = ""  # the text of ids[: self.done]
        self.done = 0
        self.tail = ""  # the text of ids[self.done:]

    @property
    def text(self) -> str:
        return self.committed + self.tail

    @property
    def stable(self) -> int:
        return len(self.committed)

    def _tail(self, end: int) -> str | None:
        """Text of ids[done:end] after the committed text, or None where the window cannot tell."""
        start = max(0, self.done - self.LOOKBACK)
        context = self.d.decode(self.ids[start : self.done]) if start < self.done else ""
        window = self.d.decode(self.ids[start:end])
        return window[len(context):] if window.startswith(context) else None

    def push(self, i: int) -> None:
        self.ids.append(i)
        tail = self._tail(len(self.ids))
        if tail is None:
            self.committed, self.done, self.tail = self.d.decode(self.ids), len(self.ids), ""
        elif "\ufffd" not in tail:
            self.committed, self.done, self.tail = self.committed + tail, len(self.ids), ""
        else:
            self.tail = tail

    def prefix_text(self, k: int) -> str:
        if k >= self.done:
            tail = self._tail(k)
            if tail is not None:
                return self.committed + tail
        return self.d.decode(self.ids[:k])


@lru_cache(maxsize=1)
def _byte_level_chars() -> dict[str, int]:
    """The byte-level alphabet (GPT-2's `bytes_to_unicode`) inverted: character -> byte."""
    printable = {*range(ord("!"), ord("~") + 1), *range(ord("\u00a1"), ord("\u00ac") + 1),
                 *range(ord("\u00ae"), ord("\u00ff") + 1)}
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[chr(b)] = b
        else:
            chars[chr(256 + extra)] = b
            extra += 1
    return chars


class ByteLevelTable:
    """Each id's bytes as the ByteLevel decoder writes them, looked up on first use: a skipped special token
    or an id without a token writes nothing; a token whose every character is in the byte-level alphabet
    writes those bytes, any other token (an added token such as " Human:") its own UTF-8 bytes."""

    def __init__(self, tokenizer: Any):
        self.backend = tokenizer.backend_tokenizer
        added = self.backend.get_added_tokens_decoder()
        self.special = {tok.content for tok in added.values() if tok.special}  # skipped by content, as tokenizers does
        self.chars = _byte_level_chars()
        self.cache: dict[int, bytes] = {}

    def __getitem__(self, i: int) -> bytes:
        out = self.cache.get(i)
        if out is None:
            token = self.backend.id_to_token(i) if i >= 0 else None
            if token is None or token in self.special:
                out = b""
            else:
                try:
                    out = bytes(self.chars[c] for c in token)
                except KeyError:
                    out = token.encode("utf-8")
            self.cache[i] = out
        return out


def byte_level_table(decoder: TextDecoder) -> ByteLevelTable | None:
    """The (cached) byte table of `decoder`'s tokenizer where `TextDecoder.decode` is exactly the ByteLevel
    rule: a `tokenizers` backend whose decoder is ByteLevel alone, decoded by transformers' own `_decode`
    (special tokens skipped, no clean-up); None otherwise."""
    if decoder in _TABLES:
        return _TABLES[decoder]
    table = None
    tok = decoder.tokenizer
    backend = getattr(tok, "backend_tokenizer", None)
    if not decoder.sentencepiece and backend is not None and _plain_decode(tok):
        chain = _decoder_chain(backend)
        if chain is not None and len(chain) == 1 and chain[0].get("type") == "ByteLevel":
            table = ByteLevelTable(tok)
    _TABLES[decoder] = table
    return table


def _plain_decode(tokenizer: Any) -> bool:
    try:
        from transformers.tokenization_utils_tokenizers import TokenizersBackend
    except ImportError:  # an older transformers: only the window stream
        return False
    return getattr(type(tokenizer), "_decode", None) is TokenizersBackend._decode


_TABLES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


class ByteLevelStream:
    """Incremental detokenisation for byte-level BPE tokenizers: each id appends its bytes; `text`, `stable`
    and `prefix_text` as in `SentencePieceStream`, equal to `TextDecoder.decode` of the same ids."""

    def __init__(self, decoder: TextDecoder, table: ByteLevelTable):
        self.table = table
        self.ids: list[int] = []
        self.ends: list[int] = []  # per id: the length of `data` after it
        self.data = bytearray()  # every id's bytes
        self.utf8 = codecs.getincrementaldecoder("utf-8")("replace")
        self.committed = ""  # the decoding of data[: self.done]: everything but an incomplete last character
        self.done = 0

    @property
    def text(self) -> str:
        if self.done == len(self.data):
            return self.committed
        return self.committed + self.data[self.done:].decode("utf-8", "replace")

    @property
    def stable(self) -> int:
        return len(self.committed)

    def push(self, i: int) -> None:
        piece = self.table[i]
        self.ids.append(i)
        self.data += piece
        self.ends.append(len(self.data))
        if piece:
            self.committed += self.utf8.decode(piece)
            self.done = len(self.data) - len(self.utf8.getstate()[0])

    def prefix_text(self, k: int) -> str:
        end = self.ends[k - 1] if k > 0 else 0
        if end >= self.done:  # the committed text ends on a character boundary: decode only the rest
            return self.committed + self.data[self.done : end].decode("utf-8", "replace")
        return self.data[:end].decode("utf-8", "replace")


def text_stream(decoder: TextDecoder) -> Any:
    """The incremental detokeniser for `decoder`: SentencePiece's own rules, a byte-level BPE's bytes, else a
    decode window."""
    if decoder.sentencepiece:
        return SentencePieceStream(decoder)
    table = byte_level_table(decoder)
    return ByteLevelStream(decoder, table) if table is not None else WindowStream(decoder)
