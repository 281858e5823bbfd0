"""Running the app under uvicorn: in the foreground (`sphinx-x serve`) or in a background thread
(tests and benchmarks, always on 127.0.0.1 with a free port chosen by the OS)."""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

import uvicorn

from sphinx_x.serve.app import create_app
from sphinx_x.serve.settings import ServerSettings


def serve(model: Any, settings: ServerSettings, host: str = "127.0.0.1", port: int = 8000,
          log_level: str = "info") -> None:
    uvicorn.run(create_app(model, settings), host=host, port=port, log_level=log_level, timeout_graceful_shutdown=5)


class BackgroundServer:
    """`with BackgroundServer(model, settings) as srv: srv.base_url` - a live server on 127.0.0.1."""

    def __init__(self, model: Any, settings: ServerSettings | None = None, log_level: str = "warning"):
        self.app = create_app(model, settings)
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))  # the OS picks a free port; the bound socket is handed to uvicorn
        self.port = self._sock.getsockname()[1]
        config = uvicorn.Config(self.app, log_level=log_level, timeout_graceful_shutdown=2)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self._sock]}, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> BackgroundServer:
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the background server did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: Any) -> None:
        self._server.should_exit = True
        self._thread.join(10)
        self._sock.close()
