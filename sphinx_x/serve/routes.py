"""The routes: `GET /health`, `GET /v1/models`, `POST /v1/chat/completions` (JSON or server-sent events).

A request is encoded in a worker thread (`sphinx_x/serve/convert.py`), submitted to the engine (429 when its
queue is full), and answered from the job's updates. A client that goes away cancels its job, which frees
its queue place or engine slot: a streaming response is cancelled by Starlette when the client disconnects
(its generator's `finally` sets the flag), and a non-streaming one watches the connection while it waits.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response, StreamingResponse

from sphinx_x.infer.generate import Generation
from sphinx_x.serve.convert import RequestEncoder
from sphinx_x.serve.engine import EngineBase, Job, QueueFull
from sphinx_x.serve.errors import APIError, error_response
from sphinx_x.serve.schemas import ChatCompletionRequest, chunk, completion, new_id, usage
from sphinx_x.serve.settings import ServerSettings

Updates = asyncio.Queue  # of (kind, value) from the job's sink: "piece", "done" or "error"


def _sse(data: dict | str) -> str:
    return f"data: {data if isinstance(data, str) else json.dumps(data)}\n\n"


async def _disconnected(request: Request) -> None:
    """Returns when the client closes the connection (the body is read already, so the next ASGI message
    is the disconnect)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _result_unless_gone(request: Request, updates: Updates) -> tuple[str, Any] | None:
    """The job's final update ("done" or "error"), or None when the client went away first."""
    watcher = asyncio.ensure_future(_disconnected(request))
    try:
        while True:
            getter = asyncio.ensure_future(updates.get())
            await asyncio.wait({getter, watcher}, return_when=asyncio.FIRST_COMPLETED)
            if not getter.done():
                getter.cancel()
                return None
            kind, value = getter.result()
            if kind != "piece":
                return kind, value
    finally:
        watcher.cancel()


def build_router(engine: EngineBase, encoder: RequestEncoder, settings: ServerSettings) -> APIRouter:
    """The endpoints, answering from `engine` (started and stopped by the app's lifespan)."""
    router = APIRouter()
    name = settings.model_name

    @router.get("/health")
    async def health() -> dict:
        return {"status": "ok", "model": name, "queued": engine.queued}

    @router.get("/v1/models")
    async def models() -> dict:
        return {"object": "list", "data": [{"id": name, "object": "model", "created": 0, "owned_by": "sphinx-x"}]}

    @router.post("/v1/chat/completions")
    async def chat_completions(req: ChatCompletionRequest, request: Request) -> Any:
        if req.model is not None and req.model != name:
            raise APIError(404, f"model {req.model!r} is not served here; available: {name}", "model")
        prompt, cfg = await run_in_threadpool(encoder.encode, req)
        loop = asyncio.get_running_loop()
        updates: Updates = asyncio.Queue()
        job = Job(prompt, cfg, lambda kind, value: loop.call_soon_threadsafe(updates.put_nowait, (kind, value)))
        try:
            engine.submit(job)
        except QueueFull:
            busy = f"server busy: {settings.max_queue} requests are already waiting; retry later"
            raise APIError(429, busy) from None
        cid = new_id()
        if req.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            return StreamingResponse(_stream(cid, updates, job, include_usage), media_type="text/event-stream")
        try:
            final = await _result_unless_gone(request, updates)
        finally:
            job.cancelled.set()  # a no-op for the engine once the job is done; frees the slot otherwise
        if final is None:
            return Response(status_code=499)  # "client closed request" (nginx's code): only logs see it
        kind, value = final
        if kind == "done":
            return completion(cid, name, value)
        return error_response(500, f"generation failed: {value}")

    async def _stream(cid: str, updates: Updates, job: Job, include_usage: bool) -> AsyncIterator[str]:
        created = int(time.time())
        try:
            yield _sse(chunk(cid, name, created, {"role": "assistant", "content": ""}))
            while True:
                kind, value = await updates.get()
                if kind == "piece":
                    yield _sse(chunk(cid, name, created, {"content": value}))
                elif kind == "done":
                    result: Generation = value
                    yield _sse(chunk(cid, name, created, {}, result.finish_reason))
                    if include_usage:
                        yield _sse(chunk(cid, name, created, None, usage_counts=usage(result)))
                    break
                else:
                    yield _sse({"error": {"message": f"generation failed: {value}", "type": "server_error",
                                          "code": 500}})
                    break
            yield _sse("[DONE]")
        finally:
            job.cancelled.set()

    return router
