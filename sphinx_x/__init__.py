"""SPHINX-X: multimodal LLMs with a mixture of visual experts, sub-images and skip tokens."""

from sphinx_x.config import SphinxXConfig

__version__ = "0.1.0"
__all__ = ["SphinxXConfig", "__version__"]
