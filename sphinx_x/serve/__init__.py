"""The OpenAI-compatible server: FastAPI app, batching engine, limits."""

from sphinx_x.serve.app import create_app
from sphinx_x.serve.settings import ServerSettings

__all__ = ["ServerSettings", "create_app"]
