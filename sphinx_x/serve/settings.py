"""Server settings: limits, batching, auth. Plain data, filled from `sphinx-x serve` flags."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass
class ServerSettings:
    model_name: str = "sphinx-x"
    api_key: str | None = None  # when set, /v1/* needs "Authorization: Bearer <key>"
    max_body_bytes: int = 32 * 2**20  # request body; larger -> 413
    max_image_pixels: int = 25_000_000  # per image (width * height); larger -> 400
    max_images: int = 8  # per request; more -> 400
    max_tokens_limit: int = 1024  # the largest max_tokens a request may ask for; larger -> 400
    default_max_tokens: int = 256
    engine: str = "continuous"  # "continuous": requests join and leave between steps; "static": whole batches
    batch_size: int = 8  # requests generated together (slots of the continuous engine)
    batch_wait_s: float = 0.01  # how long the worker waits for more requests before starting a batch
    max_queue: int = 64  # requests waiting for the worker; when full -> 429
    image_root: Path | None = None  # local image paths are served only from under this directory

    def __post_init__(self) -> None:
        for name in ("max_body_bytes", "max_image_pixels", "max_images", "max_tokens_limit", "batch_size", "max_queue"):
            if getattr(self, name) < 1:
                raise ValueError(f"server setting {name} must be >= 1, got {getattr(self, name)}")
        if self.engine not in ("continuous", "static"):
            raise ValueError(f"server setting engine must be 'continuous' or 'static', got {self.engine!r}")
        if not 1 <= self.default_max_tokens <= self.max_tokens_limit:
            raise ValueError("server setting default_max_tokens must be in 1..max_tokens_limit")
        if self.image_root is not None:
            self.image_root = Path(self.image_root).resolve()
