"""Incremental detokenization: a row's answer text kept up to date one id at a time, equal at every step to
`TextDecoder.decode(ids)` (sphinx_x.tokenizer) without decoding the whole answer again per step.

- SentencePiece models (`TextDecoder.sentencepiece`): `SentencePieceStream` runs the same rules as
  `TextDecoder.decode` as a state machine (control ids write nothing, <unk> its surface, a run of byte
  pieces is decoded as one run, the dummy-prefix space is dropped from the first piece only while nothing
  was written). Text before the trailing byte run never changes again; the run is re-decoded as it grows.
- Other tokenizers: `WindowStream` decodes only the ids after the last commit point plus a few ids of
  look-back context, and takes the text beyond the context's own decoding (the scheme of vLLM and TGI:
  context keeps word-boundary spaces and merges right). A commit point is where the new text holds no
  U+FFFD, so an incomplete UTF-8 character is decoded again once its last byte arrives. If the context's
  text is not a prefix of the window's text (a decoder that rewrites across the boundary) it falls back to
  decoding all ids, so the text stays exact.

Both expose `text` (all ids so far), `stable` (length of the text that later ids cannot change) and
`prefix_text(k)` (the text of the first k ids), which the stop rule needs to cut or hold back trailing ids.
"""

from __future__ import annotations

from typing import Any

from sphinx_x.tokenizer import SPM_SPACE, SPM_UNKNOWN_SURFACE, TextDecoder, spm_bytes_to_text


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


def text_stream(decoder: TextDecoder) -> Any:
    """The incremental detokeniser for `decoder`: SentencePiece's own rules, else a decode window."""
    return SentencePieceStream(decoder) if decoder.sentencepiece else WindowStream(decoder)
