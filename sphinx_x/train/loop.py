"""The one-stage SPHINX-X training loop (README "Training"), written out explicitly.

One optimizer step = one global batch = `accum` micro-batches on each of `world` ranks. The loss of
a step is the summed token cross-entropy of the whole global batch divided by its number of
supervised tokens (counted before the forward passes and summed over ranks), not a mean of
micro-batch means; the MoE load-balancing loss is added with its coefficient, averaged over
micro-batches. Under FSDP the gradient reduction averages over ranks, so each rank scales its
summed loss by world / tokens.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from sphinx_x.canvas import collate_images, prepare_image
from sphinx_x.config import ConfigError
from sphinx_x.constants import IGNORE_INDEX, IMAGE_TOKEN_ID
from sphinx_x.data.dataset import SkipReport
from sphinx_x.image_tokens import visual_token_count
from sphinx_x.losses import loss_weights
from sphinx_x.model_io import write_model_dir
from sphinx_x.train import checkpoint as ckpt
from sphinx_x.train import distributed as D
from sphinx_x.train.build import (
    build_loader,
    build_training_model,
    check_max_len,
    param_groups,
    prepare_model,
    trainable_parameters,
)
from sphinx_x.train.config import TrainConfig
from sphinx_x.train.flops import batch_flops, measure_matmul_peak
from sphinx_x.train.logging import PLOT_NAME, RunLogger, plot_loss_lr
from sphinx_x.train.lora import is_lora_model, save_adapter_dir, write_adapter
from sphinx_x.train.optim import build_optimizer
from sphinx_x.train.schedule import build_scheduler, warmup_steps


def train(cfg: TrainConfig) -> Path:
    """Run training as configured; returns OUT/final (the final model directory)."""
    info = D.init_distributed(cfg.train.device)
    try:
        return Trainer(cfg, info).run()
    finally:
        D.shutdown_distributed()


def resume_checkpoint(cfg: TrainConfig, ckpt_root: Path) -> Path | None:
    """The checkpoint a run resumes from: None when `output.resume` is false or (when "auto") there is none;
    with `output.resume` true, a missing checkpoint is a FileNotFoundError."""
    resume = cfg.output.resume
    if resume is False:
        return None
    latest = ckpt.latest_checkpoint(ckpt_root)
    if latest is None and resume is True:
        raise FileNotFoundError(f"--resume: no checkpoint under {ckpt_root}")
    return latest


class Trainer:
    """Owns the model, optimizer, schedule and data of a run.

    `run()` trains as configured. `train_step(micro_batches)` is one optimizer step on batches the caller
    collates (the format of sphinx_x.data), the same step `run()` takes; with `model=` a Trainer wraps an
    existing single-process model and needs no data mix:

        trainer = Trainer(cfg, model=model)
        metrics = trainer.train_step([batch])   # loss, grad_norm, lr, tokens_per_s, mfu, ...

    The given model may be sharded with FSDP2 over a one-rank process group (`D.apply_fsdp`; the GPU
    benchmark `benchmarks/bench_train.py --fsdp` does this); bf16 compute then comes from FSDP's
    mixed-precision policy on GPU, as under torchrun.
    """

    def __init__(self, cfg: TrainConfig, info: D.DistInfo | None = None, model: torch.nn.Module | None = None,
                 tokenizer: Any = None):
        info = info or D.DistInfo(device=D.pick_device(cfg.train.device))
        if model is not None and info.distributed:
            raise ValueError("Trainer(model=...) wraps a model in one process; under torchrun the Trainer "
                             "builds and shards the model itself")
        self.cfg = cfg
        self.info = info
        self.accum = cfg.check_world(info.world_size)
        self.out = Path(cfg.output.dir)
        self.ckpt_root = self.out / "ckpt"
        if cfg.train.deterministic:
            torch.use_deterministic_algorithms(True)
        threads = cfg.train.cpu_threads
        if threads is None and info.distributed and info.device.type == "cpu":
            threads = max(1, (os.cpu_count() or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", info.world_size)))
        if threads:
            torch.set_num_threads(threads)
        self.resume_from = resume_checkpoint(cfg, self.ckpt_root)

        self.bf16 = cfg.train.precision == "bf16"
        if model is None:
            self.model, self.tokenizer = build_training_model(cfg, info, self.resume_from)
        else:
            placed = model if D.is_sharded(model) else model.to(info.device)  # FSDP2 placed it already
            self.model, self.tokenizer = prepare_model(placed, cfg), tokenizer
        self.model_config = self.model.config
        self.sharded = info.distributed or D.is_sharded(self.model)
        self.loader = self.sampler = None
        if model is None or cfg.data.mix:
            check_max_len(cfg, self.model_config)
            self.loader = build_loader(cfg, self.model_config, self.tokenizer, info.rank, info.world_size)
            self.sampler = self.loader.batch_sampler
            steps_per_epoch = len(self.sampler) // self.accum
            self.total_steps = cfg.train.max_steps or max(1, math.ceil(cfg.train.epochs * steps_per_epoch))
        else:
            self.total_steps = cfg.train.max_steps or 1
        self.planned_steps = self.total_steps  # the cap when train.max_minutes re-plans total_steps

        self.named_params = trainable_parameters(self.model)
        self.params = [p for _, p in self.named_params]
        o = cfg.optim
        # The fused kernel (CPU and CUDA) updates every tensor in one pass; torch's default on CPU loops over
        # the parameters in Python, 3-4x slower (benchmarks/bench_train_step.py).
        fused = True if o.fused and info.device.type in ("cpu", "cuda") else None
        self.optimizer = build_optimizer(o.name, self.named_params,
                                         param_groups(self.named_params, o.lr, o.vision_lr_scale, o.llm_lr_scale),
                                         lr=o.lr, betas=tuple(o.betas), eps=o.eps, weight_decay=o.weight_decay,
                                         fused=fused, sharded=self.sharded, muon_matrices=o.muon_matrices,
                                         muon_lr_scale=o.muon_lr_scale, muon_ns_steps=o.muon_ns_steps)
        self.scheduler = build_scheduler(self.optimizer, self.total_steps, o.warmup_ratio, o.decay_ratio)
        self.step = 0
        self.consumed = 0  # micro-batches of this rank consumed in the current epoch
        self.epoch = 0
        if self.resume_from is not None:
            self._load_trainer_state(ckpt.load_trainer_state(self.resume_from))
        self._dummy_image = None
        self.skips = SkipReport()  # samples skipped (lenient mode) or truncated, as this rank saw them
        self.peak_flops = cfg.train.peak_flops
        self._budget = None  # (seconds, loop start, logger) under train.max_minutes; set by run()

    # ---- setup -----------------------------------------------------------------------------------
    def _autocast(self):
        if not self.bf16 or (self.sharded and self.info.device.type == "cuda"):
            return contextlib.nullcontext()  # fp32, or bf16 handled by FSDP's MixedPrecisionPolicy
        return torch.autocast(self.info.device.type, dtype=torch.bfloat16)

    def _load_trainer_state(self, state: dict[str, Any]) -> None:
        D.load_optimizer_state(self.model, self.optimizer, state["optimizer"], self.info)
        # The schedule's shape (total and warm-up steps) comes from the current config, so a resume with a
        # larger --max-steps stretches the cosine instead of staying at zero; the step count is restored.
        sched = dict(state["scheduler"])
        sched["lr_lambdas"] = [None] * len(self.scheduler.lr_lambdas)  # None: keep the current multiplier
        self.scheduler.load_state_dict(sched)
        self.sampler.load_state_dict(state["sampler"])
        self.step = int(state["step"])
        self.epoch = int(state["sampler"]["epoch"])
        self.consumed = int(state["sampler"]["global_batches_done"]) * self.accum
        rngs = state["rng"]
        ckpt.set_rng_state(rngs[self.info.rank] if self.info.rank < len(rngs) else rngs[0])

    # ---- data ------------------------------------------------------------------------------------
    def _micro_batches(self) -> Iterator[dict[str, Any]]:
        """This rank's micro-batches, epoch after epoch, tracking what was consumed (for resume)."""
        while True:
            self.sampler.set_epoch(self.epoch)
            # A DataLoader iterator draws its base seed from the global RNG: kept off it, a resumed run's
            # dropout (LoRA's) continues from the checkpoint's RNG state exactly as the uninterrupted run.
            with torch.random.fork_rng(devices=[]):
                batches = iter(self.loader)
            for batch in batches:
                self.consumed += 1
                self.skips.add(batch)
                yield batch
            self.epoch += 1
            self.consumed = 0

    def _pad_for_collectives(self, batch: dict[str, Any], any_images: bool) -> dict[str, Any]:
        """Under FSDP every rank must run the same modules: a rank whose micro-batch is empty or has no
        image while another rank has one gets an extra row without labels (zero loss, zero gradient)."""
        rows = batch["input_ids"].shape[0]
        has_images = batch["images"] is not None and batch["images"].num_images > 0
        if rows and (has_images or not any_images):
            return batch
        vision = self.model_config.vision
        if any_images and not has_images:
            if self._dummy_image is None:
                img = Image.new("RGB", (1, 1), tuple(vision.canvas.pad_color))
                self._dummy_image = (prepare_image(img, vision), visual_token_count(1, 1, vision))
            views, n = self._dummy_image
            row = torch.full((1, n), IMAGE_TOKEN_ID, dtype=torch.long)
            images = collate_images([views], vision)
        else:
            row = torch.full((1, 1), int(self.tokenizer.bos_token_id or 0), dtype=torch.long)
            images = batch["images"]
        width = max(row.shape[1], batch["input_ids"].shape[1])
        pad = lambda t, v: torch.nn.functional.pad(t, (0, width - t.shape[1]), value=v)  # noqa: E731
        new = dict(batch)
        new["input_ids"] = torch.cat([pad(batch["input_ids"], 0), pad(row, 0)])
        new["labels"] = torch.cat([pad(batch["labels"], IGNORE_INDEX), torch.full((1, width), IGNORE_INDEX)])
        new["attention_mask"] = torch.cat([pad(batch["attention_mask"], 0), pad(torch.ones_like(row), 0)])
        new["images"] = images
        return new

    # ---- one optimizer step ----------------------------------------------------------------------
    def _forward_backward(self, micro: list[dict[str, Any]]) -> dict[str, float]:
        """Accumulate the gradients of one global batch (this rank's `accum` micro-batches)."""
        reduction = self.cfg.optim.loss_reduction
        local = [loss_weights(b["labels"][:, 1:], reduction)[1] for b in micro]  # tokens, or answer turns
        supervised = sum(float((b["labels"][:, 1:] != IGNORE_INDEX).sum()) for b in micro)
        text = sum(b["num_text_tokens"] for b in micro)
        visual = sum(b["num_visual_tokens"] for b in micro)
        flops = sum(batch_flops(self.model_config, b) for b in micro if b["input_ids"].numel())
        n_global, supervised, text, visual, flops = D.all_reduce_sum([sum(local), supervised, text, visual, flops],
                                                                     self.info)
        if n_global == 0:
            raise RuntimeError(f"step {self.step + 1}: the global batch has no supervised token")
        scale = self.info.world_size / n_global
        coef = self.model_config.llm.router_aux_loss_coef
        device = self.info.device
        loss_sum_total = torch.zeros((), dtype=torch.float64)
        aux_total = 0.0
        for i, batch in enumerate(micro):
            if self.info.distributed:
                has = batch["images"] is not None and batch["images"].num_images > 0
                batch = self._pad_for_collectives(batch, D.all_reduce_max(float(has), self.info) > 0)
            elif batch["input_ids"].shape[0] == 0:
                continue  # every sample of this micro-batch was skipped (lenient mode)
            D.set_gradient_sync(self.model, i == len(micro) - 1)
            images = batch["images"].to(device) if batch["images"] is not None else None
            with self._autocast():
                out = self.model(
                    input_ids=batch["input_ids"].to(device),
                    attention_mask=batch["attention_mask"].to(device),
                    labels=batch["labels"].to(device),
                    images=images,
                    loss_reduction=reduction,
                )
            # The skip token is unused by micro-batches without a padded cell. Under FSDP every rank must
            # reduce the same gradients, so it always gets one (zero when unused); same in one process.
            loss = out.loss_sum * scale + 0.0 * _root_param(self.model, "skip_token").sum()
            if out.aux_loss is not None:
                loss = loss + coef * out.aux_loss / len(micro)
                aux_total += float(out.aux_loss.detach()) / len(micro)
            loss.backward()
            loss_sum_total += out.loss_sum.detach().double().cpu()
        loss_sum, aux = D.all_reduce_sum([float(loss_sum_total), aux_total], self.info)
        return {"loss": loss_sum / n_global, "aux_loss": aux / self.info.world_size, "tokens": supervised,
                "text": text, "visual": visual, "flops": flops}

    def _train_step(self, stream: Iterator[dict[str, Any]]) -> dict[str, Any]:
        t0 = time.perf_counter()
        micro = [next(stream) for _ in range(self.accum)]
        return self.train_step(micro, started=t0)

    def train_step(self, micro_batches: list[dict[str, Any]], started: float | None = None) -> dict[str, Any]:
        """One optimizer step on this rank's micro-batches (gradient accumulation over them): forward,
        backward, clipping, AdamW, schedule. Returns the step's metrics (what `run()` logs); the timing
        runs from `started` (default: now), so `run()` counts the wait for data in its step time."""
        if self.peak_flops is None:
            self.peak_flops = self.measure_peak()
        t0 = time.perf_counter() if started is None else started
        stats = self._forward_backward(list(micro_batches))
        grad_norm = self._clip()
        lr = self.scheduler.get_last_lr()[0]
        self.optimizer.step()
        if self._budget is not None:
            self._follow_budget(self.step + 1)  # before scheduler.step(): the next rate follows the new plan
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        dt = D.all_reduce_max(time.perf_counter() - t0, self.info)
        tokens = stats["text"] + stats["visual"]
        record = {
            "step": self.step,
            "loss": stats["loss"],
            "lr": lr,
            "grad_norm": grad_norm,
            "tokens_per_s": tokens / dt,
            "text_tokens_per_s": stats["text"] / dt,
            "visual_tokens_per_s": stats["visual"] / dt,
            "supervised_tokens": int(stats["tokens"]),
            "step_time_s": dt,
            "epoch": self.epoch,
        }
        if self.model_config.llm.arch == "mixtral":
            record["aux_loss"] = stats["aux_loss"]
        if self.peak_flops:
            record["mfu"] = stats["flops"] / dt / (self.peak_flops * self.info.world_size)
            record["model_tflops"] = stats["flops"] / 1e12
        return record

    def _clip(self) -> float:
        max_norm = self.cfg.optim.grad_clip if self.cfg.optim.grad_clip > 0 else float("inf")
        # One norm kernel over all gradients instead of one per tensor (torch only defaults to it on GPU).
        foreach = True if not self.sharded else None
        norm = torch.nn.utils.clip_grad_norm_(self.params, max_norm, foreach=foreach)
        if hasattr(norm, "full_tensor"):  # a DTensor under FSDP
            norm = norm.full_tensor()
        return float(norm)

    # ---- checkpoints -----------------------------------------------------------------------------
    def save(self) -> Path:
        """Write a resumable checkpoint of the current step (model or LoRA adapter, optimizer, schedule,
        sampler position, RNG states) under OUT/ckpt, keeping the last `output.keep_last`; returns its path.
        Every rank must call it (the state is gathered); rank 0 writes."""
        info = self.info
        lora = is_lora_model(self.model)  # its checkpoints hold the adapter, not the frozen base
        state = {} if lora else D.full_state_dict(self.model, info)
        optim = D.full_optimizer_state(self.model, self.optimizer, info)
        rngs = D.gather_objects(ckpt.rng_state(), info)
        path = self.ckpt_root / ckpt.step_dir_name(self.step)
        if info.is_main:
            trainer_state = {
                "step": self.step,
                "optimizer": optim,
                "scheduler": self.scheduler.state_dict(),
                "sampler": ({**self.sampler.state_dict(consumed_micro_batches=self.consumed), "epoch": self.epoch}
                            if self.sampler is not None else None),
                "rng": rngs,
                "world_size": info.world_size,
                "config": self.cfg.to_dict(),
            }
            ckpt.save_checkpoint(self.ckpt_root, self.step, self.model_config, state, trainer_state,
                                 self.tokenizer, self.cfg.output.keep_last,
                                 write_model=(lambda d: write_adapter(self.model, d)) if lora else None)
        D.barrier(info)
        return path

    def save_final(self) -> Path:
        """Write OUT/final: a model directory `SphinxX.from_pretrained` loads (for a LoRA run, the adapter
        directory). Every rank must call it; returns the path."""
        if is_lora_model(self.model):  # the adapter (peft's format); `sphinx-x lora merge` makes a model of it
            return save_adapter_dir(self.model, self.out / "final")
        state = D.full_state_dict(self.model, self.info)
        final = self.out / "final"
        if self.info.is_main:
            write_model_dir(final, self.model_config, state, self.tokenizer)
        D.barrier(self.info)
        return final

    # ---- the run ---------------------------------------------------------------------------------
    def _follow_budget(self, steps_done: int) -> None:
        """Under `train.max_minutes`: stop once the budget is spent, else re-plan the run's length as the
        steps that fit the budget at the step rate measured so far (capped by max_steps / epochs), so the
        warm-up + cosine schedule spans the budget instead of being cut off part-way."""
        budget_s, started, logger = self._budget
        elapsed_s = D.all_reduce_max(time.perf_counter() - started, self.info)  # all ranks decide alike
        if elapsed_s >= budget_s:
            total = steps_done
        else:
            total = min(self.planned_steps, max(steps_done + 1, math.ceil(steps_done * budget_s / elapsed_s)))
        if total != self.total_steps:
            self.total_steps = total
            shape = self.scheduler.lr_lambdas[0]
            shape.total_steps = total
            shape.warmup = min(warmup_steps(total, self.cfg.optim.warmup_ratio), total)
            logger.set_total(total)

    def measure_peak(self) -> float:
        """The device's matmul peak FLOP/s in the training precision (the denominator of the logged MFU)."""
        dtype = torch.bfloat16 if self.bf16 else torch.float32
        return measure_matmul_peak(self.info.device, dtype, seconds=0.3)

    def run(self) -> Path:
        """Train from the current step to `total_steps` (or until `train.max_minutes`), logging to
        OUT/metrics.jsonl and saving a checkpoint every `output.save_every` steps and at the end; returns
        OUT/final. Raises FloatingPointError on a non-finite loss and ConfigError without a data mix."""
        cfg, info = self.cfg, self.info
        if self.loader is None:
            raise ConfigError("Trainer.run() needs data: set data.mix (a Trainer built around a model without "
                              "one can only take train_step() calls)")
        measured = self.peak_flops is None
        if measured:
            self.peak_flops = self.measure_peak()
        logger = RunLogger(self.out, self.total_steps, self.step, info.is_main,
                           cfg.output.tensorboard, cfg.output.progress)
        logger.write(f"MFU is against a matmul peak of {self.peak_flops / 1e12:.4f} TFLOP/s per rank "
                     f"({'measured now' if measured else 'train.peak_flops'})")
        if self.resume_from is not None:
            logger.write(f"resumed from {self.resume_from} at step {self.step}")
        if self.step >= self.total_steps:
            logger.write(f"nothing to do: step {self.step} >= {self.total_steps} steps")
        stream = self._micro_batches()
        self._budget = (cfg.train.max_minutes * 60, time.perf_counter(), logger) if cfg.train.max_minutes else None
        try:
            while self.step < self.total_steps:
                record = self._train_step(stream)
                if not math.isfinite(record["loss"]):
                    raise FloatingPointError(f"step {self.step}: loss is {record['loss']}")
                if self.step % cfg.output.log_every == 0 or self.step == self.total_steps:
                    logger.log(record)
                logger.progress(1, record)
                if cfg.output.save_every and self.step % cfg.output.save_every == 0 \
                        and self.step < self.total_steps:
                    self.save()
            if not (self.ckpt_root / ckpt.step_dir_name(self.step)).is_dir():
                self.save()
            final = self.save_final()
        finally:
            logger.close()
        if info.is_main:
            if self.skips.truncated or self.skips.skipped:
                print(f"data (rank 0): {self.skips.summary()}", flush=True)
            plot_loss_lr(self.out / "metrics.jsonl", self.out / PLOT_NAME)
            print(f"final model: {final}", flush=True)
        return final



def _root_param(model: torch.nn.Module, name: str) -> torch.Tensor:
    """A parameter of the root module as the forward used it (FSDP2 keeps the root unsharded until backward)."""
    return getattr(model, name)
