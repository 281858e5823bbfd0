"""What a run shows and leaves behind: a tqdm progress bar, `metrics.jsonl`, TensorBoard events, and
the final `loss_lr.png`. Only rank 0 logs.

`metrics.jsonl` holds one JSON object per logged optimizer step. On resume, records after the
checkpoint's step are dropped first, so the file always reads as one uninterrupted run.
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path
from typing import Any

from sphinx_x.fileio import open_jsonl_append, save_figure, write_atomic

METRICS_NAME = "metrics.jsonl"
PLOT_NAME = "loss_lr.png"


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    path = Path(path)
    if path.is_dir():
        path = path / METRICS_NAME
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            break  # a line cut by a crash ends the usable log
    return records


def truncate_metrics(path: Path, last_step: int) -> None:
    """Keep only records with step <= last_step (atomically rewritten)."""
    kept = [r for r in read_metrics(path) if r.get("step", 0) <= last_step]
    write_atomic(path, "".join(json.dumps(r) + "\n" for r in kept))


def _tensorboard_writer(log_dir: Path, start_step: int) -> Any:
    """A SummaryWriter, or None with a warning when TensorBoard (an optional extra) is not installed: the run
    goes on and its metrics still go to metrics.jsonl."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        warnings.warn("output.tensorboard: the tensorboard package is not installed (pip install "
                      "'sphinx-x[tensorboard]'); metrics go to metrics.jsonl only", stacklevel=3)
        return None
    return SummaryWriter(log_dir=str(log_dir), purge_step=start_step + 1)


class RunLogger:
    def __init__(self, out_dir: Path, total_steps: int, start_step: int, enabled: bool,
                 tensorboard: bool = True, progress: bool = True):
        self.enabled = enabled
        self.out_dir = out_dir
        self.metrics_path = out_dir / METRICS_NAME
        self._file = None
        self._tb = None
        self._bar = None
        if not enabled:
            return
        out_dir.mkdir(parents=True, exist_ok=True)
        if start_step > 0 and self.metrics_path.exists():
            truncate_metrics(self.metrics_path, start_step)
        elif start_step == 0 and self.metrics_path.exists():
            self.metrics_path.unlink()  # a fresh run starts a fresh log
        self._file = open_jsonl_append(self.metrics_path)  # kept open for the whole run
        if tensorboard:
            self._tb = _tensorboard_writer(out_dir / "tensorboard", start_step)
        if progress:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total_steps, initial=start_step, desc="train", unit="step", dynamic_ncols=True)

    def log(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        if self._tb is not None:
            step = record["step"]
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)) and math.isfinite(value):
                    self._tb.add_scalar(f"train/{key}", value, step)

    def set_total(self, total_steps: int) -> None:
        """The run's length changed (a wall-clock budget re-plans it): the progress bar follows."""
        if self._bar is not None:
            self._bar.total = total_steps
            self._bar.refresh()

    def progress(self, steps: int, record: dict[str, Any]) -> None:
        if self._bar is None:
            return
        self._bar.update(steps)
        self._bar.set_postfix(
            loss=f"{record['loss']:.4f}",
            lr=f"{record['lr']:.2e}",
            text_tok_s=f"{record['text_tokens_per_s']:.0f}",
            vis_tok_s=f"{record['visual_tokens_per_s']:.0f}",
            refresh=False,
        )

    def write(self, message: str) -> None:
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.write(message)
        else:
            print(message, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        if self._tb is not None:
            self._tb.close()
        if self._file is not None:
            self._file.close()


def plot_loss_lr(metrics_path: Path, out_png: Path) -> bool:
    """Loss (left axis) and learning rate (right axis) against the step; False when nothing to plot."""
    records = [r for r in read_metrics(metrics_path) if "loss" in r]
    if not records:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r["step"] for r in records]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    ax.plot(steps, [r["loss"] for r in records], color="tab:blue", label="loss")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss", color="tab:blue")
    ax2 = ax.twinx()
    ax2.plot(steps, [r["lr"] for r in records], color="tab:orange", label="learning rate")
    ax2.set_ylabel("learning rate", color="tab:orange")
    ax.set_title("training loss and learning rate")
    ax.grid(alpha=0.3)
    save_figure(fig, out_png, dpi=100)
    return True
