"""Images in requests: `data:` URIs (base64), or local files under an allow-listed root; never the network."""

from __future__ import annotations

import base64
import binascii
from pathlib import Path
from urllib.parse import unquote, urlparse

from PIL import Image

from sphinx_x.canvas import ImageError, load_image
from sphinx_x.serve.errors import APIError
from sphinx_x.serve.settings import ServerSettings


def load_image_url(url: str, settings: ServerSettings, where: str) -> Image.Image:
    """Open the image an `image_url.url` names; every refusal is a 400 naming `where` and the reason."""
    if url.startswith("data:"):
        raw = _data_uri_bytes(url, where)
        source: bytes | Path = raw
    else:
        scheme = urlparse(url).scheme.lower()
        if scheme in ("http", "https", "ftp"):
            raise APIError(400, f"{where}: remote image URLs ({scheme}://) are not fetched because this server runs "
                                "offline; send the image inline as a data: URI (data:image/png;base64,...)", where)
        if scheme not in ("", "file"):
            raise APIError(400, f"{where}: unsupported image URL scheme {scheme!r}; use a data: URI", where)
        source = _local_path(unquote(urlparse(url).path) if scheme == "file" else url, settings, where)
    try:
        return load_image(source, max_pixels=settings.max_image_pixels)
    except ImageError as e:
        message = str(e).replace("<image>", where, 1) if str(e).startswith("<image>") else f"{where}: {e}"
        raise APIError(400, message, where) from e


def _data_uri_bytes(url: str, where: str) -> bytes:
    header, sep, payload = url.partition(",")
    if not sep:
        raise APIError(400, f"{where}: malformed data URI (no ',' before the data)", where)
    if not header.endswith(";base64"):
        raise APIError(400, f"{where}: data URI must be base64-encoded (data:image/...;base64,...)", where)
    try:
        raw = base64.b64decode(payload.strip(), validate=True)
    except (binascii.Error, ValueError) as e:
        raise APIError(400, f"{where}: invalid base64 in data URI ({e})", where) from e
    if not raw:
        raise APIError(400, f"{where}: data URI holds no bytes", where)
    return raw


def _local_path(path: str, settings: ServerSettings, where: str) -> Path:
    if settings.image_root is None:
        raise APIError(400, f"{where}: local image paths are disabled on this server (start it with --image-root "
                            "DIR to allow files under DIR); send the image as a data: URI", where)
    root = settings.image_root
    candidate = (root / path).resolve() if not Path(path).is_absolute() else Path(path).resolve()
    if not candidate.is_relative_to(root):
        raise APIError(400, f"{where}: {path} is outside the allowed image root", where)
    if not candidate.is_file():
        raise APIError(400, f"{where}: no such image file under the image root: {path}", where)
    return candidate
