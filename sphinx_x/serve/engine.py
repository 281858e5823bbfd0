"""The batching engine: a bounded queue of encoded requests and one worker thread that generates them in
batches (up to `batch_size`, waiting at most `batch_wait_s` for more after the first arrives).

Only the worker thread touches the model. Each job reports to its own `sink(kind, value)` callback
("piece" -> str, "done" -> Generation, "error" -> Exception), called from the worker thread; the web
layer forwards them into its event loop.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sphinx_x.infer.generate import decode_batch
from sphinx_x.infer.options import GenerationConfig
from sphinx_x.infer.prompts import EncodedPrompt

log = logging.getLogger(__name__)
Sink = Callable[[str, Any], None]


class QueueFull(Exception):
    """The engine already holds `max_queue` waiting requests."""


@dataclass
class Job:
    prompt: EncodedPrompt
    config: GenerationConfig
    sink: Sink
    cancelled: threading.Event = field(default_factory=threading.Event)


class BatchEngine:
    def __init__(self, model: Any, batch_size: int = 8, batch_wait_s: float = 0.01, max_queue: int = 64):
        self.model = model
        self.batch_size = batch_size
        self.batch_wait_s = batch_wait_s
        self._queue: queue.Queue[Job] = queue.Queue(maxsize=max_queue)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.batches_run = 0  # statistics, read by tests and benchmarks
        self.largest_batch = 0

    def start(self) -> None:
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="sphinx-x-batcher", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        while True:  # fail whatever was still waiting
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                break
            job.sink("error", RuntimeError("server shutting down"))

    def submit(self, job: Job) -> None:
        try:
            self._queue.put_nowait(job)
        except queue.Full:
            raise QueueFull from None

    @property
    def queued(self) -> int:
        return self._queue.qsize()

    # ---- worker ------------------------------------------------------------------------------
    def _collect(self) -> list[Job]:
        try:
            first = self._queue.get(timeout=0.1)
        except queue.Empty:
            return []
        batch = [first]
        deadline = time.monotonic() + self.batch_wait_s
        while len(batch) < self.batch_size:
            remaining = deadline - time.monotonic()
            try:
                batch.append(self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait())
            except queue.Empty:
                break
        return [job for job in batch if not job.cancelled.is_set()]

    def _run(self) -> None:
        while not self._stop.is_set():
            batch = self._collect()
            if batch:
                self._generate(batch)

    def _generate(self, batch: list[Job]) -> None:
        self.batches_run += 1
        self.largest_batch = max(self.largest_batch, len(batch))
        finished = [False] * len(batch)
        try:
            for events in decode_batch(self.model, [j.prompt for j in batch], [j.config for j in batch]):
                for ev in events:
                    job = batch[ev.index]
                    if ev.piece:
                        job.sink("piece", ev.piece)
                    if ev.done is not None:
                        finished[ev.index] = True
                        job.sink("done", ev.done)
                if self._stop.is_set() or all(f or j.cancelled.is_set() for f, j in zip(finished, batch)):
                    break
            for f, job in zip(finished, batch):  # left unfinished only by a shutdown
                if not f and not job.cancelled.is_set():
                    job.sink("error", RuntimeError("server shutting down"))
        except Exception as e:  # one bad batch must not kill the worker; its requests get a 500
            log.exception("generation failed for a batch of %d", len(batch))
            for f, job in zip(finished, batch):
                if not f:
                    job.sink("error", e)
