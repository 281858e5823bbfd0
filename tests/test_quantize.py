"""Quantized inference (sphinx_x/infer/quantize.py) on nano: what is replaced, closeness to float32, errors.

Tolerances come from measuring the `nano_model_dir` fixture (random LLM weights of std 0.08, which makes
nano's logits chaotic: a trained nano agrees more, docs/quantization.md) on the prompts below, with about
1.5x headroom on the differences: measured max / mean abs logit difference and top-1 agreement were
int8 0.91 / 0.115 / 82.8%, int8-weight-only 0.23 / 0.029 / 93.7%, int8-dynamic 0.39 / 0.047 / 92.0%
(logit std 1.27). A broken quantization (wrong scales, a transposed weight) gives differences of the size
of the logits themselves and top-1 agreement near chance.
"""

from __future__ import annotations

import sys

import pytest
import torch
from torch import nn

from sphinx_x.canvas import collate_images
from sphinx_x.cli import main
from sphinx_x.data.synth.corpus import make_sample
from sphinx_x.extras import MissingExtraError
from sphinx_x.infer.prompts import PromptEncoder, user_turn
from sphinx_x.infer.quantize import METHODS, QuantizeError, quantize_model
from sphinx_x.model import SphinxX

CPU_METHODS = ["int8", "int8-weight-only", "int8-dynamic"]
# method: (max abs logit diff, mean abs logit diff, min top-1 agreement)
TOLERANCE = {"int8": (1.4, 0.17, 0.75), "int8-weight-only": (0.35, 0.045, 0.88), "int8-dynamic": (0.6, 0.07, 0.85)}


@pytest.fixture(scope="module")
def reference(nano_model_dir):
    """The float32 model, six synth-bench prompts with their images, and its logits at every prompt position."""
    model = SphinxX.from_pretrained(nano_model_dir)
    encoder = PromptEncoder.for_model(model)
    prompts = []
    for i in range(6):
        sample = make_sample(0, "test", i)
        prompts.append(encoder.encode([user_turn(sample.turns[0][0], [sample.image] if sample.image else [])]))
    return model, prompts, prompt_logits(model, prompts)


def prompt_logits(model: SphinxX, prompts: list) -> torch.Tensor:
    with torch.inference_mode():
        return torch.cat([model(torch.tensor([p.input_ids]), images=collate_images(p.images, model.config.vision))
                          .logits[0].float() for p in prompts])


def plain_linears(module: nn.Module) -> list[str]:
    """Linear layers with ordinary float weights (torchao keeps the module and swaps its weight for a tensor
    subclass; PyTorch's dynamic int8 and bitsandbytes swap the module)."""
    return [name for name, m in module.named_modules()
            if type(m) is nn.Linear and type(m.weight) in (torch.Tensor, nn.Parameter)]


@pytest.mark.parametrize("method", CPU_METHODS)
def test_quantized_nano_keeps_to_its_float32_logits(method, nano_model_dir, reference):
    base, prompts, ref = reference
    model = SphinxX.from_pretrained(nano_model_dir, quantize=method)
    assert model.quantization == method
    assert plain_linears(model.llm.get_decoder()) == []  # every decoder projection is quantized ...
    assert type(model.llm.lm_head) is nn.Linear  # ... the LM head is not, and stays tied to the embeddings
    assert model.llm.lm_head.weight is model.llm.get_input_embeddings().weight
    assert plain_linears(model.visual) == plain_linears(base.visual)  # vision experts untouched

    logits = prompt_logits(model, prompts)
    diff = (logits - ref).abs()
    top1 = (logits.argmax(-1) == ref.argmax(-1)).float().mean().item()
    max_tol, mean_tol, min_top1 = TOLERANCE[method]
    assert 1e-4 < diff.mean().item() < mean_tol, diff.mean().item()  # quantized (not a no-op), and close
    assert diff.max().item() < max_tol, diff.max().item()
    assert top1 >= min_top1, top1


def test_quantized_model_answers_through_the_chat_command(nano_model_dir, capsys):
    code = main(["chat", "--model", str(nano_model_dir), "--quantize", "int8", "--max-new-tokens", "6",
                 "Describe the image."])
    assert code == 0
    assert capsys.readouterr().out.strip()  # an answer was streamed


def test_unknown_method_fails_before_loading(tmp_path, reference):
    with pytest.raises(QuantizeError, match="unknown method 'int3'.*int8"):
        SphinxX.from_pretrained(tmp_path / "no-such-model", quantize="int3")  # not FileNotFoundError
    with pytest.raises(QuantizeError, match="choose one of " + ", ".join(METHODS)):
        quantize_model(reference[0], "int3")
    with pytest.raises(SystemExit) as e:
        main(["chat", "--model", str(tmp_path), "--quantize", "int3", "hi"])
    assert e.value.code == 2  # argparse's choices


@pytest.mark.parametrize("method", ["nf4", "fp4"])
def test_4bit_without_cuda_is_a_clear_error(method, nano_model_dir, capsys):
    with pytest.raises(QuantizeError, match=f"quantize {method}: bitsandbytes 4-bit needs a CUDA GPU.*int8"):
        SphinxX.from_pretrained(nano_model_dir, device="cpu", quantize=method)
    assert main(["chat", "--model", str(nano_model_dir), "--device", "cpu", "--quantize", method, "hi"]) == 2
    assert "needs a CUDA GPU" in capsys.readouterr().err


def test_cpu_int8_needs_float32_weights(nano_model_dir):
    with pytest.raises(QuantizeError, match="float32 activations.*torch.bfloat16"):
        SphinxX.from_pretrained(nano_model_dir, dtype=torch.bfloat16, quantize="int8")


def test_quantized_model_is_not_saved_or_quantized_twice(nano_model_dir, tmp_path):
    model = SphinxX.from_pretrained(nano_model_dir, quantize="int8-weight-only")
    with pytest.raises(ValueError, match="quantized to int8-weight-only cannot be saved"):
        model.save_pretrained(tmp_path / "q")
    assert not (tmp_path / "q").exists()
    with pytest.raises(QuantizeError, match="already quantized"):
        quantize_model(model, "int8")


def test_missing_torchao_names_the_quant_extra(nano_model_dir, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "torchao.quantization", None)  # importing it now fails
    with pytest.raises(MissingExtraError, match=r"pip install 'sphinx-x\[quant\]'"):
        SphinxX.from_pretrained(nano_model_dir, quantize="int8-weight-only")
    assert main(["chat", "--model", str(nano_model_dir), "--quantize", "int8-dynamic", "hi"]) == 2
    assert "error: --quantize int8-dynamic needs the 'torchao' package" in capsys.readouterr().err


def test_4bit_swap_replaces_each_decoder_linear(nano_model_dir):
    """The nf4 path's module swap, run on the CPU (bitsandbytes quantizes there too, slower than float32, so
    `quantize_model` refuses it): every projection becomes a Linear4bit whose output stays near the original
    (measured relative error 0.093 for NF4 on Gaussian weights) and the model still runs."""
    import bitsandbytes as bnb  # the [quant] extra, part of [test]

    from sphinx_x.infer.quantize import _bnb_4bit

    model = SphinxX.from_pretrained(nano_model_dir)
    original = model.llm.get_decoder().layers[0].mlp.up_proj
    x = torch.randn(5, original.in_features)
    expected = original(x).detach()
    _bnb_4bit(model.llm.get_decoder(), "nf4", torch.float32, torch.device("cpu"))
    assert plain_linears(model.llm.get_decoder()) == []
    swapped = model.llm.get_decoder().layers[0].mlp.up_proj
    assert isinstance(swapped, bnb.nn.Linear4bit) and swapped.weight.quant_type == "nf4"
    with torch.inference_mode():
        rel = ((swapped(x) - expected).norm() / expected.norm()).item()
        logits = model(torch.tensor([[1, 2, 3, 4]])).logits
    assert 0.01 < rel < 0.15, rel
    assert torch.isfinite(logits).all()
