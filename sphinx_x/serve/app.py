"""The OpenAI-compatible HTTP service (FastAPI): `GET /health`, `GET /v1/models`, `POST /v1/chat/completions`.

Every refusal is an OpenAI-shaped error with a 4xx status: 400 malformed request (invalid JSON, wrong
types, bad image, too many images, max_tokens over the limit, prompt too long), 401 missing or wrong
API key, 404 unknown model, 413 body too large, 429 request queue full. Requests are encoded (images
decoded and tiled, text tokenised) in the request's thread, then queued for the batching worker.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from sphinx_x.infer.generate import Generation
from sphinx_x.infer.options import GenerationConfig
from sphinx_x.infer.prompts import EncodedPrompt, PromptEncoder, PromptError, Turn
from sphinx_x.serve.engine import BatchEngine, Job, QueueFull
from sphinx_x.serve.errors import APIError, error_response
from sphinx_x.serve.images import load_image_url
from sphinx_x.serve.schemas import ChatCompletionRequest, ImagePart, chunk, completion, new_id, usage
from sphinx_x.serve.settings import ServerSettings


class Guard:
    """ASGI middleware run before any body is read: API key on /v1/*, then the body size limit
    (Content-Length when given, counted bytes otherwise)."""

    def __init__(self, app: Any, settings: ServerSettings):
        self.app = app
        self.settings = settings

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        key = self.settings.api_key
        if key is not None and scope["path"].startswith("/v1/"):
            auth = headers.get("authorization", "")
            scheme, _, given = auth.partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), key.encode()):
                message = "missing API key (send 'Authorization: Bearer <key>')" if not auth else "invalid API key"
                resp = error_response(401, message, headers={"WWW-Authenticate": "Bearer"})
                return await resp(scope, receive, send)
        limit = self.settings.max_body_bytes
        length = headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            return await error_response(413, f"request body of {length} bytes exceeds the limit of {limit} bytes")(
                scope, receive, send)
        seen = 0

        async def counted_receive() -> dict:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:  # HTTPException passes through FastAPI's body reading unchanged
                    raise StarletteHTTPException(413, f"request body exceeds the limit of {limit} bytes")
            return message

        await self.app(scope, counted_receive, send)


def _validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    errors = exc.errors()
    first = errors[0] if errors else {}
    if first.get("type") == "json_invalid":
        return f"request body is not valid JSON: {first.get('ctx', {}).get('error', first.get('msg'))}", None
    loc = [str(p) for p in first.get("loc", ()) if p != "body"]
    field = ".".join(loc) or "body"
    more = f" (and {len(errors) - 1} more problem(s))" if len(errors) > 1 else ""
    return f"invalid request: {field}: {first.get('msg', 'invalid value')}{more}", field


def request_turns(req: ChatCompletionRequest, settings: ServerSettings) -> list[Turn]:
    """OpenAI messages -> conversation turns with decoded images (a blocking call: run it in a thread)."""
    n_images = sum(isinstance(p, ImagePart) for m in req.messages if isinstance(m.content, list) for p in m.content)
    if n_images > settings.max_images:
        raise APIError(400, f"request holds {n_images} images; this server accepts at most {settings.max_images}",
                       "messages")
    turns: list[Turn] = []
    for i, m in enumerate(req.messages):
        role = "system" if m.role == "developer" else m.role
        texts, images = [], []
        if isinstance(m.content, str):
            texts.append(m.content)
        elif m.content is not None:
            for j, part in enumerate(m.content):
                if isinstance(part, ImagePart):
                    images.append(load_image_url(part.image_url.url, settings, f"messages[{i}].content[{j}].image_url"))
                else:
                    texts.append(part.text)
        if images and role != "user":
            raise APIError(400, f"messages[{i}]: only user messages may carry images (role is {m.role!r})",
                           f"messages[{i}]")
        turns.append({"role": role, "content": "\n".join(texts), "images": images})
    return turns


def generation_config(req: ChatCompletionRequest, settings: ServerSettings, template_stops: tuple[str, ...]
                      ) -> GenerationConfig:
    max_tokens = req.max_completion_tokens or req.max_tokens or settings.default_max_tokens
    if max_tokens > settings.max_tokens_limit:
        raise APIError(400, f"max_tokens {max_tokens} exceeds this server's limit of {settings.max_tokens_limit}",
                       "max_tokens")
    extra = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
    if any(not s for s in extra):
        raise APIError(400, "stop strings must be non-empty", "stop")
    return GenerationConfig(
        max_new_tokens=max_tokens, temperature=req.temperature or 0.0, top_p=req.top_p or 1.0, top_k=req.top_k or 0,
        repetition_penalty=req.repetition_penalty or 1.0, stop_strings=tuple(template_stops) + tuple(extra),
        seed=req.seed,
    )


def _sse(data: dict | str) -> str:
    return f"data: {data if isinstance(data, str) else json.dumps(data)}\n\n"


def create_app(model: Any, settings: ServerSettings | None = None) -> FastAPI:
    settings = settings or ServerSettings()
    engine = BatchEngine(model, settings.batch_size, settings.batch_wait_s, settings.max_queue)
    encoder = PromptEncoder.for_model(model)
    context = model.llm.config.max_position_embeddings

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine.start()
        try:
            yield
        finally:
            engine.stop()

    app = FastAPI(title="SPHINX-X", lifespan=lifespan)
    app.state.engine = engine
    app.state.settings = settings
    app.add_middleware(Guard, settings=settings)

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError) -> JSONResponse:
        return error_response(exc.status, exc.message, exc.param, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(400, *_validation_message(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error_response(exc.status_code, str(exc.detail))

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok", "model": settings.model_name, "queued": engine.queued}

    @app.get("/v1/models")
    async def models() -> dict:
        return {"object": "list", "data": [{"id": settings.model_name, "object": "model", "created": 0,
                                            "owned_by": "sphinx-x"}]}

    def encode(req: ChatCompletionRequest) -> tuple[EncodedPrompt, GenerationConfig]:
        cfg = generation_config(req, settings, encoder.stop_strings)
        try:
            prompt = encoder.encode(request_turns(req, settings))
        except PromptError as e:
            raise APIError(400, f"messages: {e}", "messages") from e
        if len(prompt.input_ids) + cfg.max_new_tokens > context:
            raise APIError(400, f"the prompt has {len(prompt.input_ids)} tokens (images included); with max_tokens "
                                f"{cfg.max_new_tokens} it exceeds the model's context of {context}", "messages")
        return prompt, cfg

    @app.post("/v1/chat/completions")
    async def chat_completions(req: ChatCompletionRequest) -> Any:
        if req.model is not None and req.model != settings.model_name:
            raise APIError(404, f"model {req.model!r} is not served here; available: {settings.model_name}", "model")
        prompt, cfg = await run_in_threadpool(encode, req)
        loop = asyncio.get_running_loop()
        updates: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        job = Job(prompt, cfg, lambda kind, value: loop.call_soon_threadsafe(updates.put_nowait, (kind, value)))
        try:
            engine.submit(job)
        except QueueFull:
            busy = f"server busy: {settings.max_queue} requests are already waiting; retry later"
            raise APIError(429, busy) from None
        cid = new_id()
        if not req.stream:
            try:
                while True:
                    kind, value = await updates.get()
                    if kind == "done":
                        return completion(cid, settings.model_name, value)
                    if kind == "error":
                        return error_response(500, f"generation failed: {value}")
            finally:
                job.cancelled.set()
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        return StreamingResponse(_stream(cid, updates, job, include_usage), media_type="text/event-stream")

    async def _stream(cid: str, updates: asyncio.Queue, job: Job, include_usage: bool) -> AsyncIterator[str]:
        created, name = int(time.time()), settings.model_name
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

    return app
