"""Inference: prompt building, batched KV-cached generation, the chat API, and drawing answer geometry."""

from sphinx_x.infer.generate import Generation, decode_batch, generate_batch
from sphinx_x.infer.options import GenerationConfig
from sphinx_x.infer.prompts import EncodedPrompt, PromptEncoder, PromptError

__all__ = [
    "EncodedPrompt",
    "Generation",
    "GenerationConfig",
    "PromptEncoder",
    "PromptError",
    "decode_batch",
    "generate_batch",
]
