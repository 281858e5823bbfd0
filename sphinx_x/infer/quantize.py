"""Quantized inference: the LLM decoder's Linear layers in 8 or 4 bits, everything else as loaded.

What is quantized: every `nn.Linear` inside the LLM's decoder (attention and MLP projections). What is not:
the vision experts and the projector (a small share of the weights at every size; their outputs feed every
visual token), the token embeddings and the LM head (tied to the embeddings in most presets, so an int8 copy
would add memory; bitsandbytes skips `lm_head` by default for the same accuracy reason), and the Mixtral
router. transformers stores Mixtral's experts as fused 3-D tensors, not Linear layers, so a Mixtral model
gets only its attention quantized.

Methods (`METHODS`; docs/quantization.md has the measured speed, memory and agreement of each):

- `int8`: 8-bit weights with the kernel that is fast on the device. On CPU, PyTorch's dynamic int8
  quantization (fbgemm/x86 kernels: int8 weights per output channel, activations quantized per batch at run
  time): on this project's CPUs it is the only int8 path that beats float32, in prefill and in decode
  (torchao's CPU paths dequantize the weights at every call in eager mode). On CUDA, torchao's int8
  weight-only.
- `int8-weight-only`: torchao `Int8WeightOnlyConfig` on any device (activations stay float: the closest to
  the full model; on CPU it saves memory but, without `torch.compile`, not time).
- `int8-dynamic`: torchao `Int8DynamicActivationInt8WeightConfig` on any device (int8 matmuls).
- `nf4`, `fp4`: bitsandbytes 4-bit weights (QLoRA's NormalFloat4, or FP4) with bfloat16 / the model's
  dtype for compute; CUDA only (bitsandbytes' CPU 4-bit path runs slower than float32 here).
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import nn

from sphinx_x.extras import require_extra

METHODS = ("int8", "int8-weight-only", "int8-dynamic", "nf4", "fp4")
CUDA_ONLY = ("nf4", "fp4")


class QuantizeError(ValueError):
    """An unknown method, or one the device or the model's dtype cannot run; the message says what works."""


def quantize_model(model: Any, method: str | None, device: str | torch.device | None = None) -> Any:
    """Quantize `model.llm`'s decoder Linear layers with `method` (one of METHODS; None or "none": unchanged)
    and move the model to `device` (default: where it is). Layers are quantized one by one as they move, so a
    model loaded on the CPU fits a GPU that holds only its quantized size. Sets `model.quantization` to the
    method. Raises QuantizeError for an unknown method, a CUDA-only method without CUDA, or `int8` on CPU
    with non-float32 weights; MissingExtraError (sphinx_x/extras.py) when torchao or bitsandbytes is missing."""
    if method in (None, "none"):
        return model if device is None else model.to(device)
    device = torch.device(device) if device is not None else next(model.llm.parameters()).device
    check_method(method, device)
    if getattr(model, "quantization", None):
        raise QuantizeError(f"quantize: the model is already quantized ({model.quantization})")
    decoder = model.llm.get_decoder()
    if method == "int8" and device.type == "cpu":
        _dynamic_int8_cpu(decoder)
    elif method in CUDA_ONLY:
        _bnb_4bit(decoder, method, compute_dtype=_float_dtype(decoder), device=device)
    else:
        _torchao(decoder, "int8-weight-only" if method == "int8" else method, device)
    model.to(device)
    model.quantization = method
    return model


def check_method(method: str, device: torch.device) -> None:
    """Raise QuantizeError unless `method` is one of METHODS and runs on `device` (what `quantize_model` checks
    first; `SphinxX.from_pretrained` calls it before reading any weights)."""
    if method not in METHODS:
        raise QuantizeError(f"quantize: unknown method {method!r}; choose one of {', '.join(METHODS)} (or none)")
    if method in CUDA_ONLY and device.type != "cuda":
        raise QuantizeError(
            f"quantize {method}: bitsandbytes 4-bit needs a CUDA GPU (device is {device}); "
            "on CPU use --quantize int8"
        )


def _float_dtype(module: nn.Module) -> torch.dtype:
    return next(p.dtype for p in module.parameters() if p.is_floating_point())


def _dynamic_int8_cpu(decoder: nn.Module) -> None:
    from torch.ao.quantization import default_dynamic_qconfig, per_channel_dynamic_qconfig, quantize_dynamic

    if _float_dtype(decoder) != torch.float32:
        raise QuantizeError(
            f"quantize int8 on CPU: PyTorch's int8 kernels take float32 activations, but the LLM is "
            f"{_float_dtype(decoder)}; load it as float32 (the CPU default: drop --dtype)"
        )
    # Per-channel weight scales where the x86/fbgemm engine has them (qnnpack, on ARM, has per-tensor only).
    per_channel = torch.backends.quantized.engine in ("x86", "fbgemm")
    qconfig = per_channel_dynamic_qconfig if per_channel else default_dynamic_qconfig
    with warnings.catch_warnings():
        # torch.ao's eager quantization is deprecated in favour of torchao, whose CPU int8 paths measured
        # slower than float32 here (docs/quantization.md); torch is pinned, so this API stays.
        warnings.simplefilter("ignore")
        quantize_dynamic(decoder, {nn.Linear: qconfig}, dtype=torch.qint8, inplace=True)


def _torchao(decoder: nn.Module, method: str, device: torch.device) -> None:
    ao = require_extra("quant", "torchao.quantization", f"--quantize {method}")
    config = ao.Int8WeightOnlyConfig() if method == "int8-weight-only" else ao.Int8DynamicActivationInt8WeightConfig()
    ao.quantize_(decoder, config, device=device)


def _bnb_4bit(decoder: nn.Module, quant_type: str, compute_dtype: torch.dtype, device: torch.device) -> None:
    """Swap each Linear for a bitsandbytes `Linear4bit`; its weight is quantized when moved to `device`."""
    bnb = require_extra("quant", "bitsandbytes", f"--quantize {quant_type}")
    for parent in list(decoder.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is not nn.Linear:
                continue
            with torch.device("meta"):  # the placeholder weight that Linear4bit builds is replaced below
                q = bnb.nn.Linear4bit(child.in_features, child.out_features, bias=child.bias is not None,
                                      compute_dtype=compute_dtype, quant_type=quant_type)
            q.weight = bnb.nn.Params4bit(child.weight.data, requires_grad=False, quant_type=quant_type)
            if child.bias is not None:
                q.bias = nn.Parameter(child.bias.data, requires_grad=False)
            setattr(parent, name, q.to(device))
