"""Continuous batching: a finished or cancelled request frees its slot at once, and waiting requests join
the running batch between decode steps.

Each round of the worker (`step`): drop rows whose client went away, admit waiting requests into the free
slots (their prompts are prefilled together, their first tokens picked, then their KV caches merged into
the running batch: `sphinx_x/serve/running.py`), then run one decode step for every row and hand each job
its piece; finished rows leave before the next round. Prefilling before decoding keeps slots full; a
request's prompt costs one forward of the joining group, shared by whoever joins in the same round.

Compared with the static schedule (`BatchEngine`), short answers no longer wait for the longest answer in
their batch, and a request waiting in the queue starts as soon as any slot frees: benchmarks/
bench_serve_load.py measures both.
"""

from __future__ import annotations

import logging
from typing import Any

from sphinx_x.serve.engine import EngineBase, Job
from sphinx_x.serve.running import Event, RunningBatch, check_fits

log = logging.getLogger(__name__)


class ContinuousEngine(EngineBase):
    """Up to `batch_size` requests in flight; the queue, `submit`, `start` and `stop` of `EngineBase`."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.batch = RunningBatch(self.model)
        self.steps = 0  # decode steps run (statistics, read by tests and benchmarks)
        self.admitted = 0

    @property
    def running(self) -> int:
        """Requests holding a slot now."""
        return len(self.batch)

    def step(self) -> None:
        """One round without waiting for requests (the worker thread's round, callable directly when the
        engine is not started, as tests do)."""
        self._work(block=False)

    def _work(self, block: bool = True) -> None:
        self._drop_cancelled()
        free = self.batch_size - len(self.batch)
        if free > 0:
            jobs = self._take(free, first_timeout=0.1 if block and not self.batch else None)
            if jobs:
                self._admit(jobs)
        if self.batch:
            self._decode()

    def _drop_cancelled(self) -> None:
        keep = [i for i, job in enumerate(self.batch.jobs) if not job.cancelled.is_set()]
        self.batch.keep(keep)

    def _admit(self, jobs: list[Job]) -> None:
        fitting = []
        for job in jobs:
            try:
                check_fits(self.model, job)
                fitting.append(job)
            except ValueError as e:
                job.sink("error", e)
        if not fitting:
            return
        try:
            joined, events = RunningBatch.prefill(self.model, fitting)
        except Exception as e:  # a bad prompt fails the requests joining with it, not the running ones
            log.exception("prefill failed for %d joining request(s)", len(fitting))
            for job in fitting:
                job.sink("error", e)
            return
        self.admitted += len(fitting)
        joined.keep(self._deliver(events))
        self.batch.extend(joined)
        self.largest_batch = max(self.largest_batch, len(self.batch))

    def _decode(self) -> None:
        try:
            events = self.batch.step()
        except Exception as e:  # one bad step must not kill the worker; its requests get a 500
            log.exception("decode step failed for a batch of %d", len(self.batch))
            self._fail_running(e)
            return
        self.steps += 1
        self.batch.keep(self._deliver(events))

    @staticmethod
    def _deliver(events: list[Event]) -> list[int]:
        """Send every event to its job; returns the indices of the rows that go on."""
        going_on = []
        for i, (job, piece, done) in enumerate(events):
            if piece:
                job.sink("piece", piece)
            if done is not None:
                job.sink("done", done)
            elif not job.cancelled.is_set():
                going_on.append(i)
        return going_on

    def _fail_running(self, exc: Exception) -> None:
        for job in self.batch.jobs:
            if not job.cancelled.is_set():
                job.sink("error", exc)
        self.batch.keep([])
