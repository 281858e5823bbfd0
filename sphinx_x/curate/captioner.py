"""Captioning marked images through any OpenAI-compatible `/v1/chat/completions` endpoint.

The image goes as a `data:` URI in an `image_url` content part (what OpenAI, vLLM, SGLang and
`sphinx-x serve` accept). Transient failures (connection errors, timeouts, 408/409/429, 5xx) are
retried with exponential backoff and jitter; client errors (400, 401, 404, ...) are not. Answers are
cached on disk keyed by SHA-256 of (model, prompt, image bytes), one JSON file per key written
atomically, so an interrupted curation run resumes without paying for the same caption twice.
"""

from __future__ import annotations

import base64
import hashlib
import json
import random
import time
from collections import Counter
from pathlib import Path

from sphinx_x.fileio import write_atomic

RETRYABLE_STATUS = {408, 409, 429}


class CaptionError(RuntimeError):
    """The endpoint did not give a caption (after retries, or a non-retryable error)."""


def data_uri(image_bytes: bytes, mime: str = "image/jpeg") -> str:
    return f"data:{mime};base64,{base64.b64encode(image_bytes).decode('ascii')}"


def api_base(url: str) -> str:
    """The OpenAI client's base URL: the server root or a URL already ending in /v1."""
    url = url.rstrip("/")
    return url if url.endswith("/v1") else url + "/v1"


class CaptionCache:
    """Captions on disk: `<dir>/<key[:2]>/<key>.json` holding the model, prompt and answer."""

    def __init__(self, directory: str | Path):
        self.dir = Path(directory)

    @staticmethod
    def key(model: str, prompt: str, image_bytes: bytes) -> str:
        h = hashlib.sha256()
        for part in (model.encode(), prompt.encode(), image_bytes):
            h.update(len(part).to_bytes(8, "little"))  # length-prefixed: no ambiguity between parts
            h.update(part)
        return h.hexdigest()

    def _path(self, key: str) -> Path:
        return self.dir / key[:2] / f"{key}.json"

    def get(self, key: str) -> str | None:
        try:
            return json.loads(self._path(key).read_text(encoding="utf-8"))["answer"]
        except (OSError, json.JSONDecodeError, KeyError, TypeError):
            return None  # missing or unreadable entries are simply asked again

    def put(self, key: str, model: str, prompt: str, answer: str) -> None:
        write_atomic(self._path(key), json.dumps({"model": model, "prompt": prompt, "answer": answer},
                                                 ensure_ascii=False))


class Captioner:
    """`caption(image_bytes, prompt)` -> the endpoint's answer text, cached and retried."""

    def __init__(self, url: str, model: str, api_key: str | None = None, cache_dir: str | Path | None = None,
                 max_retries: int = 4, backoff_s: float = 1.0, timeout_s: float = 120.0, max_tokens: int = 1024,
                 temperature: float = 0.0):
        try:
            import openai
        except ImportError as e:  # an optional dependency of the curation tools only
            raise CaptionError("captioning needs the `openai` client: pip install 'sphinx-x[curate]'") from e
        self._openai = openai
        # Our own retry loop (max_retries=0 here) so attempts are counted and the backoff is ours.
        self.client = openai.OpenAI(base_url=api_base(url), api_key=api_key or "not-needed", max_retries=0,
                                    timeout=timeout_s)
        self.model = model
        self.cache = CaptionCache(cache_dir) if cache_dir else None
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.max_tokens = max_tokens
        self.temperature = temperature
        self.stats: Counter = Counter()

    def _retryable(self, err: Exception) -> bool:
        o = self._openai
        if isinstance(err, (o.APIConnectionError, o.APITimeoutError)):
            return True
        if isinstance(err, o.APIStatusError):
            return err.status_code >= 500 or err.status_code in RETRYABLE_STATUS
        return False

    def _request(self, image_bytes: bytes, prompt: str, mime: str) -> str:
        messages = [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": data_uri(image_bytes, mime)}},
            {"type": "text", "text": prompt}]}]
        for attempt in range(self.max_retries + 1):
            self.stats["requests"] += 1
            try:
                resp = self.client.chat.completions.create(model=self.model, messages=messages,
                                                           max_tokens=self.max_tokens, temperature=self.temperature)
            except self._openai.OpenAIError as e:
                if not self._retryable(e) or attempt == self.max_retries:
                    self.stats["failures"] += 1
                    raise CaptionError(f"captioner {self.client.base_url}: {type(e).__name__}: {e}") from e
                self.stats["retries"] += 1
                time.sleep(self.backoff_s * (2**attempt) * (0.5 + random.random()))
                continue
            if not resp.choices or resp.choices[0].message.content is None:
                self.stats["failures"] += 1
                raise CaptionError(f"captioner {self.client.base_url}: response has no message content")
            return resp.choices[0].message.content
        raise AssertionError("unreachable")

    def caption(self, image_bytes: bytes, prompt: str, mime: str = "image/jpeg") -> str:
        key = CaptionCache.key(self.model, prompt, image_bytes)
        if self.cache is not None:
            cached = self.cache.get(key)
            if cached is not None:
                self.stats["cache_hits"] += 1
                return cached
        answer = self._request(image_bytes, prompt, mime)
        if self.cache is not None:
            self.cache.put(key, self.model, prompt, answer)
        return answer
