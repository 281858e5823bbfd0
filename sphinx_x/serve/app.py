"""The OpenAI-compatible HTTP service (FastAPI): `GET /health`, `GET /v1/models`, `POST /v1/chat/completions`.

Every refusal is an OpenAI-shaped error with a 4xx status: 400 malformed request (invalid JSON, wrong
types, bad image, too many images, max_tokens over the limit, prompt too long), 401 missing or wrong
API key, 404 unknown model, 413 body too large, 429 request queue full. Requests are encoded (images
decoded and tiled, text tokenised) in the request's thread, then queued for the engine's worker.

The pieces: `middleware.py` (API key, body size, error shapes), `convert.py` (request -> prompt and
generation options), `routes.py` (the endpoints), `engine.py` / `continuous.py` (the schedules).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI

from sphinx_x.serve import middleware
from sphinx_x.serve.continuous import ContinuousEngine
from sphinx_x.serve.convert import RequestEncoder, generation_config, request_turns
from sphinx_x.serve.engine import BatchEngine, EngineBase
from sphinx_x.serve.routes import build_router
from sphinx_x.serve.settings import ServerSettings

__all__ = ["create_app", "generation_config", "make_engine", "request_turns"]

ENGINES: dict[str, type[EngineBase]] = {"continuous": ContinuousEngine, "static": BatchEngine}


def make_engine(model: Any, settings: ServerSettings) -> EngineBase:
    """The engine `settings.engine` names, not started."""
    return ENGINES[settings.engine](model, settings.batch_size, settings.batch_wait_s, settings.max_queue)


def create_app(model: Any, settings: ServerSettings | None = None) -> FastAPI:
    """The app serving `model`; its engine runs from startup to shutdown (`app.state.engine`)."""
    settings = settings or ServerSettings()
    engine = make_engine(model, settings)

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
    middleware.install(app, settings)
    app.include_router(build_router(engine, RequestEncoder(model, settings), settings))
    return app
