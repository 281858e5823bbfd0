"""One-stage SPHINX-X training: config, loop, schedule, checkpoints, FSDP2, FLOPs and logs."""

from sphinx_x.train.config import TrainConfig, load_train_config

__all__ = ["TrainConfig", "load_train_config", "train"]


def train(cfg: TrainConfig):
    """Run training (single process, or FSDP2 under torchrun); returns the final model directory."""
    from sphinx_x.train.loop import train as _train

    return _train(cfg)
