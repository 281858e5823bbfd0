"""An lmms-eval model (`lmms`) for SPHINX-X model directories, registered as `sphinx_x`.

    pip install 'sphinx-x[lmms]'    # lmms-eval >= 0.7
    python -m lmms_eval --model sphinx_x --model_args pretrained=out/nano,batch_size=8 --tasks mme

Registration: lmms-eval >= 0.7 finds models through the Python entry-point group `lmms_eval.models`;
sphinx-x's pyproject declares `sphinx_x = "sphinx_x.eval.lmms_adapter:model_manifest"` there.

Requests follow lmms-eval's `Instance.args` contract:
    generate_until   (context, gen_kwargs, doc_to_visual, doc_id, task, split)
    loglikelihood    (context, doc_to_target, doc_to_visual, doc_id, task, split)
where `doc_to_visual(self.task_dict[task][split][doc_id])` returns the document's images (PIL) and
`doc_to_target` is the continuation or a function of the document giving it.

Decoding is greedy whatever `gen_kwargs` ask (README "Evaluation": evaluation never samples); `until` strings
are honoured on top of the template's own stop strings and `max_new_tokens` is the answer budget.
`loglikelihood` scores the continuation as the assistant's answer to `context` (the template's
rendering decides the text between cue and answer, e.g. the accessory template's leading space).
Without lmms-eval installed the class still works (plain base class), which is how it is unit-tested
when the package is absent.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

try:  # the real base class when lmms-eval is installed
    from lmms_eval.api.model import lmms as _LmmsBase
except ImportError:  # pragma: no cover - exercised only where lmms-eval is absent

    class _LmmsBase:  # the attributes lmms-eval's base class sets up and the adapter uses
        def __init__(self) -> None:
            self._rank, self._world_size, self.task_dict = 0, 1, {}
            self.cache_hook = _NoCache()

        @property
        def rank(self) -> int:
            return self._rank

        @property
        def world_size(self) -> int:
            return self._world_size

    class _NoCache:
        def add_partial(self, attr: str, req: Any, res: Any) -> None:
            pass


MODEL_NAME = "sphinx_x"
CLASS_PATH = "sphinx_x.eval.lmms_adapter.SphinxXLmms"


def model_manifest():
    """Entry point for lmms-eval's `lmms_eval.models` group."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(model_id=MODEL_NAME, simple_class_path=CLASS_PATH)


class SphinxXLmms(_LmmsBase):
    """lmms-eval model over `SphinxX.from_pretrained(pretrained)`; `model=` takes an already loaded model."""

    def __init__(self, pretrained: str | None = None, device: str = "auto", dtype: str = "float32",
                 batch_size: int | str = 1, max_new_tokens: int | str = 128, model: Any = None, **kwargs: Any):
        super().__init__()
        # lmms-eval's evaluator adds max_batch_size; some task configs pass the generic HF flags.
        unknown = sorted(set(kwargs) - {"max_batch_size", "trust_remote_code", "use_cache"})
        if unknown:
            raise TypeError(f"sphinx_x: unknown model_args {', '.join(unknown)}; valid: pretrained, device, dtype, "
                            "batch_size, max_new_tokens")
        if model is None:
            if pretrained is None:
                raise ValueError("sphinx_x: model_args needs pretrained=MODEL_DIR")
            from sphinx_x.infer.loading import load_for_inference

            model = load_for_inference(pretrained, device=None if device == "auto" else device, dtype=dtype)
        self.model = model.eval()
        self.batch_size = int(batch_size)
        self.max_new_tokens = int(max_new_tokens)
        if self.batch_size < 1 or self.max_new_tokens < 1:
            raise ValueError("sphinx_x: batch_size and max_new_tokens must be >= 1")

    # ---- helpers --------------------------------------------------------------------------------
    def _doc_images(self, doc_to_visual: Any, doc_id: Any, task: str, split: str) -> list[Any]:
        if doc_to_visual is None:
            return []
        visuals = doc_to_visual(self.task_dict[task][split][doc_id])
        if visuals is None:
            return []
        visuals = visuals if isinstance(visuals, (list, tuple)) else [visuals]
        return [v for v in visuals if v is not None]

    def _turns(self, context: str, images: Sequence[Any]) -> list[dict[str, Any]]:
        from sphinx_x.constants import IMAGE_PLACEHOLDER
        from sphinx_x.infer.prompts import user_turn

        if context.count(IMAGE_PLACEHOLDER) not in (0, len(images)):
            # Task prompts written for other models may carry their own image tokens; let our layout decide.
            context = context.replace(IMAGE_PLACEHOLDER, "").strip()
        return [user_turn(context, list(images) or None)]

    # ---- lmms API -------------------------------------------------------------------------------
    def generate_until(self, requests: Sequence[Any]) -> list[str]:
        from sphinx_x.infer.generate import generate_batch
        from sphinx_x.infer.options import GenerationConfig
        from sphinx_x.infer.prompts import PromptEncoder

        encoder = PromptEncoder.for_model(self.model)
        results: list[str | None] = [None] * len(requests)
        groups: dict[tuple, list[int]] = {}
        configs: dict[tuple, GenerationConfig] = {}
        for i, req in enumerate(requests):
            gen_kwargs = dict(req.args[1] or {})
            until = gen_kwargs.get("until") or []
            until = [until] if isinstance(until, str) else list(until)
            stops = tuple(dict.fromkeys([*encoder.stop_strings, *(s for s in until if s)]))
            budget = int(gen_kwargs.get("max_new_tokens") or self.max_new_tokens)
            key = (stops, budget)
            configs[key] = GenerationConfig(max_new_tokens=budget, temperature=0.0, stop_strings=stops)
            groups.setdefault(key, []).append(i)
        for key, indices in groups.items():
            for start in range(0, len(indices), self.batch_size):
                chunk = indices[start : start + self.batch_size]
                prompts = []
                for i in chunk:
                    context, _, doc_to_visual, doc_id, task, split = requests[i].args[:6]
                    images = self._doc_images(doc_to_visual, doc_id, task, split)
                    prompts.append(encoder.encode(self._turns(context, images)))
                for i, gen in zip(chunk, generate_batch(self.model, prompts, configs[key])):
                    results[i] = gen.text
                    self.cache_hook.add_partial("generate_until", (requests[i].args[0], requests[i].args[1]),
                                                gen.text)
        return results  # type: ignore[return-value]

    def loglikelihood(self, requests: Sequence[Any]) -> list[tuple[float, bool]]:
        """log p(continuation | context, images) summed over the continuation's tokens, and whether greedy
        decoding would produce exactly those tokens."""
        from sphinx_x.canvas import collate_images
        from sphinx_x.infer.prompts import PromptEncoder

        encoder = PromptEncoder.for_model(self.model)
        template, tokenizer = encoder.dialogue.template, self.model.tokenizer
        device = next(self.model.parameters()).device
        out = []
        for req in requests:
            context, doc_to_target, doc_to_visual, doc_id, task, split = req.args[:6]
            doc = self.task_dict[task][split][doc_id] if callable(doc_to_target) else None
            continuation = doc_to_target(doc) if callable(doc_to_target) else doc_to_target
            if isinstance(continuation, list):
                continuation = continuation[0]
            images = self._doc_images(doc_to_visual, doc_id, task, split)
            turns = self._turns(context, images)
            prompt = encoder.encode(turns)
            answer_text = self._answer_text(template, turns, str(continuation))
            cont_ids = tokenizer.encode(answer_text, add_special_tokens=False)
            if not cont_ids:
                out.append((0.0, True))
                continue
            ids = torch.tensor([prompt.input_ids + cont_ids], device=device)
            batch = collate_images(prompt.images, self.model.config.vision)
            with torch.inference_mode():
                logits = self.model(ids, images=batch.to(device) if batch is not None else None).logits[0]
            n = len(cont_ids)
            logprobs = torch.log_softmax(logits[-n - 1 : -1].float(), dim=-1)
            target = torch.tensor(cont_ids, device=device)
            total = float(logprobs.gather(1, target[:, None]).sum())
            greedy = bool((logprobs.argmax(-1) == target).all())
            out.append((total, greedy))
            self.cache_hook.add_partial("loglikelihood", (context, continuation), (total, greedy))
        return out

    @staticmethod
    def _answer_text(template: Any, turns: list[dict[str, Any]], continuation: str) -> str:
        """The text the template puts between the generation cue and the end of the answer."""
        messages = [{"role": t["role"], "content": t["content"]} for t in turns]
        cue, _ = template.render(messages, add_generation_prompt=True)
        full, _ = template.render(messages + [{"role": "assistant", "content": continuation}])
        end = full.find(continuation, len(cue)) if continuation else len(cue)
        if not full.startswith(cue) or end < 0:
            return continuation
        return full[len(cue) : end + len(continuation)]

    def generate_until_multi_round(self, requests: Sequence[Any]) -> list[str]:
        raise NotImplementedError("sphinx_x does not implement lmms-eval's multi-round generation")
