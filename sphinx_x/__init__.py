"""SPHINX-X: multimodal LLMs with a mixture of visual experts, sub-images and skip tokens."""

import logging

from sphinx_x.config import SphinxXConfig

# torchao (the [quant] extra) is imported by transformers whenever it is installed, and registers Enum
# types that torch 2.14 logs a deprecation warning about, on every command's stderr. Only that message is
# dropped; other pytree warnings still show.
logging.getLogger("torch.utils._pytree").addFilter(
    lambda record: "is an Enum subclass and is now natively supported" not in record.getMessage()
)

__version__ = "0.1.0"
__all__ = ["SphinxXConfig", "__version__"]
