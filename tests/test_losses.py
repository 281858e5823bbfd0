"""Token- vs turn-averaged loss: the runs, the weights, the model's loss and the trainer's global batch."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from _helpers.dialogue import DIALOGUE
from _helpers.dialogue import supervised_runs as reference_runs
from _helpers.train import NANO_YAML, fast_overrides, make_corpus

from sphinx_x.config import ConfigError
from sphinx_x.constants import IGNORE_INDEX
from sphinx_x.data.encode import DialogueEncoder
from sphinx_x.losses import loss_weights, supervised_runs
from sphinx_x.tokenizer import load_tokenizer
from sphinx_x.train.config import load_train_config

I = IGNORE_INDEX  # noqa: E741


def test_runs_and_weights_on_a_hand_made_batch():
    targets = torch.tensor([[I, 5, 6, I, I, 7, I], [8, I, 9, 9, 9, I, I]])
    run_id, lengths = supervised_runs(targets)
    assert run_id.tolist() == [0, 0, 1, 2, 3, 3, 3]  # a run never continues into the next row
    assert lengths.tolist() == [2, 1, 1, 3]
    weights, norm = loss_weights(targets, "turn")
    torch.testing.assert_close(weights, torch.tensor([1 / 2, 1 / 2, 1, 1, 1 / 3, 1 / 3, 1 / 3]))
    assert norm == 4.0 and float(weights.sum()) == pytest.approx(4.0)  # every turn weighs 1 in all
    assert loss_weights(targets, "token") == (None, 7.0)
    assert loss_weights(torch.full((2, 3), I), "turn")[1] == 0.0
    with pytest.raises(ValueError, match="loss reduction must be one of token, turn"):
        loss_weights(targets, "sample")


def test_runs_are_the_answers_of_an_encoded_dialogue():
    out = DialogueEncoder(load_tokenizer("nano")).encode(DIALOGUE, [11, 7])
    labels = torch.tensor(out.labels)[None]
    _, lengths = supervised_runs(labels[:, 1:])
    assert lengths.tolist() == [len(r) for r in reference_runs(out.labels)]
    assert len(lengths) == sum(m["role"] == "assistant" for m in DIALOGUE)


def per_turn_mean(logits: torch.Tensor, labels: torch.Tensor) -> list[torch.Tensor]:
    """Each answer turn's mean cross-entropy, computed turn by turn from full logits."""
    means = []
    for row in range(labels.shape[0]):
        targets, row_logits = labels[row, 1:], logits[row, :-1]
        pos = (targets != I).nonzero().flatten().tolist()
        turn: list[int] = []
        for p in pos + [None]:
            if turn and (p is None or p != turn[-1] + 1):
                means.append(F.cross_entropy(row_logits[turn], targets[turn]))
                turn = []
            if p is not None:
                turn.append(p)
    return means


def test_trainer_averages_over_the_turns_of_the_whole_global_batch(tmp_path):
    from sphinx_x.train.distributed import DistInfo
    from sphinx_x.train.loop import Trainer

    mix = make_corpus(tmp_path / "synth", n=16)
    stats, expected = {}, {}
    for reduction in ("token", "turn"):
        cfg = load_train_config(NANO_YAML, fast_overrides(mix, tmp_path / reduction,
                                                          **{"optim.loss_reduction": reduction}))
        trainer = Trainer(cfg, DistInfo())
        stream = trainer._micro_batches()
        micro = [next(stream) for _ in range(trainer.accum)]
        assert len(micro) == 2  # two micro-batches: the average must span both
        stats[reduction] = trainer._forward_backward(micro)
        turns, tokens = [], []
        with torch.no_grad():
            for b in micro:
                logits = trainer.model(input_ids=b["input_ids"], attention_mask=b["attention_mask"],
                                       images=b["images"]).logits.float()
                turns += per_turn_mean(logits, b["labels"])
                keep = b["labels"][:, 1:] != I
                tokens.append(F.cross_entropy(logits[:, :-1][keep], b["labels"][:, 1:][keep], reduction="none"))
        expected[reduction] = (float(torch.stack(turns).mean()) if reduction == "turn"
                               else float(torch.cat(tokens).mean()))
        assert stats[reduction]["tokens"] == sum(len(t) for t in tokens)  # logged as tokens either way
    for reduction in ("token", "turn"):
        assert stats[reduction]["loss"] == pytest.approx(expected[reduction], rel=1e-4)
    assert stats["turn"]["loss"] != pytest.approx(stats["token"]["loss"], rel=1e-3)


def test_config_names_the_valid_reductions():
    with pytest.raises(ConfigError, match=r"optim.loss_reduction must be one of token, turn, got 'sample'"):
        load_train_config(NANO_YAML, ["--optim.loss_reduction=sample"])
