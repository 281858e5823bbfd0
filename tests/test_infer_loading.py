"""`sphinx_x.infer.loading.load_for_inference`: the library's model loading behind `--model/--device/--dtype`."""

import pytest
import torch

from sphinx_x.config import SphinxXConfig
from sphinx_x.infer.loading import load_for_inference
from sphinx_x.model import SphinxX
from sphinx_x.tokenizer import load_tokenizer


@pytest.fixture(scope="module")
def nano_dirs(tmp_path_factory):
    """A nano model directory with its tokenizer and one without."""
    root = tmp_path_factory.mktemp("loading")
    torch.manual_seed(0)
    model = SphinxX(SphinxXConfig.from_name("nano"))
    model.save_pretrained(root / "with", tokenizer=load_tokenizer("nano"))
    model.save_pretrained(root / "without")
    return root / "with", root / "without"


def test_loads_on_cpu_in_the_stored_dtype_or_the_named_one(nano_dirs):
    with_tok, _ = nano_dirs
    model = load_for_inference(with_tok, device="cpu")
    assert model.tokenizer is not None and model.llm.get_input_embeddings().weight.dtype == torch.float32
    half = load_for_inference(with_tok, device="cpu", dtype="bfloat16")
    assert half.llm.get_input_embeddings().weight.dtype == torch.bfloat16


def test_refuses_a_directory_without_tokenizer_an_unknown_dtype_and_a_missing_dir(nano_dirs, tmp_path):
    with_tok, without = nano_dirs
    with pytest.raises(ValueError, match="holds no tokenizer files"):
        load_for_inference(without, device="cpu")
    with pytest.raises(ValueError, match="dtype must be one of float32, bfloat16, float16, got 'fp8'"):
        load_for_inference(with_tok, device="cpu", dtype="fp8")
    with pytest.raises(FileNotFoundError, match="no config.json"):
        load_for_inference(tmp_path / "nope", device="cpu")
