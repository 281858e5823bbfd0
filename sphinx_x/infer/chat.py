"""The user-facing Python API behind `SphinxX.chat`, `SphinxX.stream_chat` and `SphinxX.generate`.

    model = SphinxX.from_pretrained("out/nano")
    answer, history = model.chat("cat.jpg", "What is in the image?")
    answer, history = model.chat(None, "And what colour is it?", history)   # multi-turn
    for piece in model.stream_chat(["a.png", "b.png"], "Compare the two images."):
        print(piece, end="", flush=True)
    results = model.generate(["a text-only question", {"images": "cat.jpg", "question": "Describe it."}])
    for row, piece, done in model.stream_generate(["question one", "question two"]):   # batched streaming
        print(row, piece, done.finish_reason if done else "")

Generation options are keyword arguments (`max_new_tokens`, `min_new_tokens`, `temperature`, `top_p`, `top_k`,
`repetition_penalty`, `stop_strings`, `seed`, `eos_token_id`) or a `config=GenerationConfig(...)`.
History is a list of turns `{"role", "content", "images"}` (see `sphinx_x.infer.prompts`).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from sphinx_x.infer.generate import Generation, decode_batch, generate_batch
from sphinx_x.infer.options import GenerationConfig
from sphinx_x.infer.prompts import EncodedPrompt, ImageInput, PromptEncoder, PromptError, Turn, user_turn

PromptLike = str | dict[str, Any] | Sequence[Turn]


def _config(config: GenerationConfig | None, gen: dict[str, Any]) -> GenerationConfig:
    return GenerationConfig.from_kwargs(config, **gen)


def as_turns(prompt: PromptLike) -> list[Turn]:
    """A question string, `{"question", "images"?, "history"?}`, or a full list of turns -> turns."""
    if isinstance(prompt, str):
        return [user_turn(prompt)]
    if isinstance(prompt, dict):
        if "question" not in prompt:
            raise PromptError(f"a prompt dict needs a 'question' (keys: {', '.join(prompt) or 'none'})")
        history = list(prompt.get("history") or [])
        return history + [user_turn(prompt["question"], prompt.get("images"))]
    if isinstance(prompt, Sequence):
        return list(prompt)
    raise PromptError(f"a prompt is a string, a dict or a list of turns, got {type(prompt).__name__}")


def encode(model: Any, prompt: PromptLike) -> EncodedPrompt:
    """One prompt (see `as_turns`) as the model's token ids and image views, ready for `generate_batch`."""
    return PromptEncoder.for_model(model).encode(as_turns(prompt))


def generate(model: Any, prompts: Sequence[PromptLike], config: GenerationConfig | None = None, **gen: Any
             ) -> list[Generation]:
    """Answer every prompt in one batch (left padded; greedy results equal one-at-a-time results)."""
    if isinstance(prompts, (str, dict)):
        raise PromptError("generate takes a list of prompts; wrap a single prompt in a list")
    cfg = _config(config, gen)
    return generate_batch(model, [encode(model, p) for p in prompts], cfg)


def stream_generate(model: Any, prompts: Sequence[PromptLike],
                    config: GenerationConfig | Sequence[GenerationConfig] | None = None, **gen: Any
                    ) -> Iterator[tuple[int, str, Generation | None]]:
    """Answer every prompt in one batch, streaming: yields `(row, piece, done)` for every token of every
    row, `row` the prompt's index, `piece` the text it makes safe to show (may be ""), `done` the row's
    `Generation` on its last item, else None. Each row's pieces join to its `generate` text; a row's first
    item marks its first token. `config` may be one config per prompt."""
    if isinstance(prompts, (str, dict)):
        raise PromptError("stream_generate takes a list of prompts; wrap a single prompt in a list")
    if isinstance(config, Sequence):
        configs: Any = [_config(c, gen) for c in config]
    else:
        configs = _config(config, gen)
    for events in decode_batch(model, [encode(model, p) for p in prompts], configs):
        for ev in events:
            yield ev.index, ev.piece, ev.done


def _turns(images: ImageInput | Sequence[ImageInput] | None, question: str, history: Sequence[Turn] | None
           ) -> list[Turn]:
    return list(history or []) + [user_turn(question, images)]


def chat(model: Any, images: ImageInput | Sequence[ImageInput] | None, question: str,
         history: Sequence[Turn] | None = None, config: GenerationConfig | None = None, **gen: Any
         ) -> tuple[str, list[Turn]]:
    """One turn: `images` (this turn's, may be None) and `question` after `history`. Returns the answer
    and the history extended by this turn, ready for the next call."""
    turns = _turns(images, question, history)
    prompt = PromptEncoder.for_model(model).encode(turns)
    (result,) = generate_batch(model, [prompt], _config(config, gen))
    return result.text, turns + [{"role": "assistant", "content": result.text}]


def stream_chat(model: Any, images: ImageInput | Sequence[ImageInput] | None, question: str,
                history: Sequence[Turn] | None = None, config: GenerationConfig | None = None, **gen: Any
                ) -> Iterator[str]:
    """Like `chat`, yielding the answer in pieces as it is generated; the pieces join to `chat`'s answer."""
    prompt = PromptEncoder.for_model(model).encode(_turns(images, question, history))
    for events in decode_batch(model, [prompt], _config(config, gen)):
        for ev in events:
            if ev.piece:
                yield ev.piece
