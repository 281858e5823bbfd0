"""benchmarks/binding/jointbind.py --init-llm: the pseudo-image testbed starts from given LLM weights."""
import json
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks" / "binding"))
import jointbind  # noqa: E402


def _run(tmp_path: Path, name: str, *extra: str) -> tuple[dict, dict]:
    out, log = tmp_path / f"{name}.safetensors", tmp_path / f"{name}.json"
    jointbind.main(["--steps", "1", "--bs", "2", "--q", "1", "--lr", "1e-9", "--eval-every", "1",
                    "--save", str(out), "--json", str(log), *extra])
    return load_file(str(out)), json.loads(log.read_text())


def test_init_llm_starts_from_the_given_weights(tmp_path):
    first, _ = _run(tmp_path, "a", "--seed", "0")
    # Another seed gives another random init; --init-llm must replace it with the saved weights
    # (lr 1e-9: one step barely moves them).
    other, _ = _run(tmp_path, "b", "--seed", "1")
    key = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.allclose(first[key], other[key])
    started, record = _run(tmp_path, "c", "--seed", "1", "--init-llm", str(tmp_path / "a.safetensors"))
    torch.testing.assert_close(started[key], first[key], atol=1e-6, rtol=0)
    assert record["records"][-1]["step"] == 1


def test_init_llm_rejects_weights_of_another_model(tmp_path):
    bad = tmp_path / "bad.safetensors"
    save_file({"model.layers.0.self_attn.q_proj.weight": torch.zeros(3, 3)}, str(bad))
    with pytest.raises((SystemExit, RuntimeError), match="init-llm|size mismatch"):
        jointbind.main(["--steps", "1", "--init-llm", str(bad)])
