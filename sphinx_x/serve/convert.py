"""Request conversion: an OpenAI chat-completions request -> the encoded prompt and generation options a
serving engine runs (`RequestEncoder.encode`), with every refusal a 400 naming the field."""

from __future__ import annotations

from typing import Any

from sphinx_x.infer.options import GenerationConfig
from sphinx_x.infer.prompts import EncodedPrompt, PromptEncoder, PromptError, Turn
from sphinx_x.serve.errors import APIError
from sphinx_x.serve.images import load_image_url
from sphinx_x.serve.schemas import ChatCompletionRequest, ImagePart
from sphinx_x.serve.settings import ServerSettings


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
    """The request's sampling options, token budget (`max_completion_tokens` or `max_tokens`, and the
    `min_tokens` extension) and stop strings (the template's, then the request's)."""
    max_tokens = req.max_completion_tokens or req.max_tokens or settings.default_max_tokens
    if max_tokens > settings.max_tokens_limit:
        raise APIError(400, f"max_tokens {max_tokens} exceeds this server's limit of {settings.max_tokens_limit}",
                       "max_tokens")
    min_tokens = req.min_tokens or 0
    if min_tokens > max_tokens:
        raise APIError(400, f"min_tokens {min_tokens} exceeds max_tokens {max_tokens}", "min_tokens")
    extra = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
    if any(not s for s in extra):
        raise APIError(400, "stop strings must be non-empty", "stop")
    return GenerationConfig(
        max_new_tokens=max_tokens, min_new_tokens=min_tokens, temperature=req.temperature or 0.0,
        top_p=req.top_p or 1.0, top_k=req.top_k or 0, repetition_penalty=req.repetition_penalty or 1.0,
        stop_strings=tuple(template_stops) + tuple(extra), seed=req.seed,
    )


class RequestEncoder:
    """Turns a validated request into what the engine runs; checks that prompt plus answer fit the context."""

    def __init__(self, model: Any, settings: ServerSettings):
        self.settings = settings
        self.prompts = PromptEncoder.for_model(model)
        self.context = model.llm.config.max_position_embeddings

    def encode(self, req: ChatCompletionRequest) -> tuple[EncodedPrompt, GenerationConfig]:
        """Blocking (images are decoded and tiled, text tokenised): run it in a thread."""
        cfg = generation_config(req, self.settings, self.prompts.stop_strings)
        try:
            prompt = self.prompts.encode(request_turns(req, self.settings))
        except PromptError as e:
            raise APIError(400, f"messages: {e}", "messages") from e
        if len(prompt.input_ids) + cfg.max_new_tokens > self.context:
            raise APIError(400, f"the prompt has {len(prompt.input_ids)} tokens (images included); with max_tokens "
                                f"{cfg.max_new_tokens} it exceeds the model's context of {self.context}", "messages")
        return prompt, cfg
