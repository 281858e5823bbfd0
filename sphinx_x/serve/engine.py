"""The serving engines: a bounded queue of encoded requests and one worker thread that generates them.

Two schedules share the queue, the job type and the life cycle (`EngineBase`):
- `BatchEngine` ("static"): takes up to `batch_size` requests (waiting at most `batch_wait_s` for more after
  the first arrives) and generates them together until the last one finishes; a finished request's slot
  stays idle until then.
- `ContinuousEngine` ("continuous", `sphinx_x/serve/continuous.py`): a finished or cancelled request frees
  its slot at once and waiting requests join between decode steps.

Only the worker thread touches the model. Each job reports to its own `sink(kind, value)` callback
("piece" -> str, "done" -> Generation, "error" -> Exception), called from the worker thread; the web
layer forwards them into its event loop. Setting `job.cancelled` (a client went away) drops the job.
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
    """One request: its encoded prompt, generation options and where its results go."""

    prompt: EncodedPrompt
    config: GenerationConfig
    sink: Sink
    cancelled: threading.Event = field(default_factory=threading.Event)


def shutting_down() -> RuntimeError:
    """The error every unfinished job receives when the engine stops."""
    return RuntimeError("server shutting down")


class EngineBase:
    """The waiting queue (bounded: `submit` raises `QueueFull`), the worker thread and shutdown; a subclass
    implements `_work()`, one round of the worker (it must return within about 0.1 s when idle), and
    `_fail_running(exc)`, which ends whatever the worker holds when it stops."""

    def __init__(self, model: Any, batch_size: int = 8, batch_wait_s: float = 0.01, max_queue: int = 64):
        self.model = model
        self.batch_size = batch_size
        self.batch_wait_s = batch_wait_s
        self._queue: queue.Queue[Job] = queue.Queue(maxsize=max_queue)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.largest_batch = 0  # statistics, read by tests and benchmarks

    def start(self) -> None:
        """Start the worker thread (no-op when it is running)."""
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="sphinx-x-batcher", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the worker (waiting up to `timeout` s for it), then fail the running and the waiting jobs
        with `shutting_down()`."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        self._fail_running(shutting_down())
        while True:  # fail whatever was still waiting
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                break
            job.sink("error", shutting_down())

    def submit(self, job: Job) -> None:
        """Queue `job` for the worker; QueueFull when `max_queue` jobs already wait. Results go to `job.sink`."""
        try:
            self._queue.put_nowait(job)
        except queue.Full:
            raise QueueFull from None

    @property
    def queued(self) -> int:
        """Jobs waiting in the queue (not yet taken by the worker)."""
        return self._queue.qsize()

    def _take(self, limit: int, first_timeout: float | None) -> list[Job]:
        """Up to `limit` waiting jobs that are not cancelled. With `first_timeout`, wait that long for the
        first, then up to `batch_wait_s` for more; without, take only what is already waiting."""
        batch: list[Job] = []
        if first_timeout is not None:
            try:
                batch.append(self._queue.get(timeout=first_timeout))
            except queue.Empty:
                return []
            deadline = time.monotonic() + self.batch_wait_s
        while len(batch) < limit:
            remaining = deadline - time.monotonic() if first_timeout is not None else 0
            try:
                batch.append(self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait())
            except queue.Empty:
                break
        return [job for job in batch if not job.cancelled.is_set()]

    def _run(self) -> None:
        while not self._stop.is_set():
            self._work()

    def _work(self) -> None:
        raise NotImplementedError

    def _fail_running(self, exc: Exception) -> None:
        pass


class BatchEngine(EngineBase):
    """The static schedule: one batch at a time, generated until its longest request finishes.

    Usage (what `sphinx-x serve --engine static` does; `ContinuousEngine` is used the same way):

        engine = BatchEngine(model, batch_size=8, batch_wait_s=0.01, max_queue=64)
        engine.start()                        # the worker thread; only it touches the model
        engine.submit(Job(PromptEncoder.for_model(model).encode(turns), GenerationConfig(), sink))
        ...                                   # sink("piece", str) per streamed piece, then
                                              # sink("done", Generation) or sink("error", exc)
        engine.stop()                         # fails running and waiting jobs with "server shutting down"

    `submit` raises QueueFull when `max_queue` requests already wait. Setting `job.cancelled` drops a
    waiting job; a running batch stops early once every unfinished job in it is cancelled."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.batches_run = 0

    def _work(self) -> None:
        batch = self._take(self.batch_size, first_timeout=0.1)
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
                    job.sink("error", shutting_down())
        except Exception as e:  # one bad batch must not kill the worker; its requests get a 500
            log.exception("generation failed for a batch of %d", len(batch))
            for f, job in zip(finished, batch):
                if not f:
                    job.sink("error", e)
