"""Type-grouped, length-bucketed batch sampling with exact mid-epoch resume and rank slicing.

Plan of one epoch (a function of `seed`, `epoch`, the lengths and types only; never of world size):
  1. per type, shuffle its indices, cut the permutation into chunks of `bucket_batches` global
     batches, sort each chunk by length (longest first), and cut it into global batches, so a
     global batch holds samples of one type and of similar length;
  2. a type's incomplete last global batch is dropped (`drop_last=True`) or filled up with the
     type's first indices of the permutation (`drop_last=False`), so every global batch is full;
  3. the global batches of all types are shuffled together.
With curriculum `phases` (one integer per sample, from the mix's per-source `phase`), steps 1-3 run
for each phase in turn and the phases' global batches follow each other in increasing order, so every
epoch trains all of phase 0 before any of phase 1. With one phase the plan is exactly the plan above.

How the trainer consumes it: a global batch has `global_batch_size = micro_batch_size * world_size *
accum_steps` samples. Rank r yields, for every global batch in turn, `accum_steps` micro-batches: at
accumulation step s it gets micro-batch `s * world_size + r` of the global batch. So every rank runs
`accum_steps` forward/backward micro-steps per optimizer step, the ranks' micro-batches at a step are
of similar length (they sit next to each other in the length order), and the ranks' slices are
disjoint and together cover the global batch exactly.

Resume: `state_dict()` records the epoch and the number of global batches (plus micro-steps) done.
The DataLoader prefetches, so the sampler's own count runs ahead of training; the trainer passes what
it actually consumed: `state_dict(consumed_micro_batches=n)` (n = micro-batches this rank trained on
this epoch). Because the plan ignores the world size, a resume at an optimizer-step boundary works
with a different number of ranks too.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
from torch.utils.data import Sampler


class TypeGroupedBatchSampler(Sampler[list[int]]):
    """A DataLoader `batch_sampler` yielding this rank's micro-batches (lists of dataset indices) in the
    plan of the module docstring: each global batch of one data type and of similar lengths.

    `lengths` and `types` (and optional curriculum `phases`) give one value per dataset index;
    `global_batch_size` must be a multiple of `micro_batch_size * world_size` (the quotient is the
    gradient-accumulation steps). `seed` and the epoch (`set_epoch`) fix the plan; `bucket_batches` is how
    many global batches of a type are sorted by length together; `drop_last` drops or fills a type's
    incomplete last global batch."""

    def __init__(
        self,
        lengths: Sequence[int] | np.ndarray,
        types: Sequence[Any] | np.ndarray,
        global_batch_size: int,
        micro_batch_size: int,
        world_size: int = 1,
        rank: int = 0,
        seed: int = 0,
        drop_last: bool = True,
        bucket_batches: int = 32,
        phases: Sequence[int] | np.ndarray | None = None,
    ):
        lengths = np.asarray(lengths, dtype=np.int64)
        if len(lengths) != len(types):
            raise ValueError(f"{len(lengths)} lengths but {len(types)} types")
        phases = np.zeros(len(lengths), dtype=np.int64) if phases is None else np.asarray(phases, dtype=np.int64)
        if len(phases) != len(lengths):
            raise ValueError(f"{len(lengths)} lengths but {len(phases)} phases")
        if micro_batch_size < 1 or world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"bad micro_batch_size={micro_batch_size}, world_size={world_size}, rank={rank}")
        if global_batch_size % (micro_batch_size * world_size):
            raise ValueError(
                f"global_batch_size {global_batch_size} must be a multiple of micro_batch_size {micro_batch_size} "
                f"x world_size {world_size}"
            )
        self.lengths = lengths
        self.type_names, self.type_ids = np.unique(np.asarray(types), return_inverse=True)
        self.phase_values, self.phase_ids = np.unique(phases, return_inverse=True)
        self.global_batch_size = global_batch_size
        self.micro_batch_size = micro_batch_size
        self.world_size = world_size
        self.rank = rank
        self.seed = seed
        self.drop_last = drop_last
        self.bucket_batches = bucket_batches
        self.accum_steps = global_batch_size // (micro_batch_size * world_size)
        self.epoch = 0
        self._start = 0  # micro-batches (of this rank) to skip at the start of the next iteration
        self._yielded = 0

    # ---- the plan ----------------------------------------------------------------------------
    def global_batches(self, epoch: int | None = None) -> list[np.ndarray]:
        """Every global batch of an epoch, in order (same on every rank)."""
        epoch = self.epoch if epoch is None else epoch
        rng = np.random.default_rng([self.seed, epoch])
        plan: list[np.ndarray] = []
        for phase in range(len(self.phase_values)):
            plan += self._phase_batches(rng, self.phase_ids == phase)
        return plan

    def _phase_batches(self, rng: np.random.Generator, in_phase: np.ndarray) -> list[np.ndarray]:
        """Steps 1-3 of the plan over the samples where `in_phase` is true."""
        g = self.global_batch_size
        batches: list[np.ndarray] = []
        for t in range(len(self.type_names)):
            perm = rng.permutation(np.flatnonzero((self.type_ids == t) & in_phase))
            if len(perm) == 0:
                continue
            if len(perm) % g and not self.drop_last:
                perm = np.concatenate([perm, np.resize(perm, g - len(perm) % g)])
            usable = len(perm) - len(perm) % g
            chunk = g * self.bucket_batches
            for c in range(0, usable, chunk):
                part = perm[c : min(c + chunk, usable)]
                # Stable sort, longest first: ties keep the shuffled order.
                part = part[np.argsort(-self.lengths[part], kind="stable")]
                batches.extend(part[i : i + g] for i in range(0, len(part), g))
        order = rng.permutation(len(batches))
        return [batches[i] for i in order]

    def micro_batches(self, epoch: int | None = None) -> list[list[int]]:
        """This rank's micro-batches of an epoch, in order (accum_steps per global batch)."""
        m, w, r = self.micro_batch_size, self.world_size, self.rank
        out = []
        for batch in self.global_batches(epoch):
            for s in range(self.accum_steps):
                k = s * w + r
                out.append(batch[k * m : (k + 1) * m].tolist())
        return out

    # ---- Sampler protocol --------------------------------------------------------------------
    def set_epoch(self, epoch: int) -> None:
        """Plan `epoch` next; moving to a new epoch forgets a resume position loaded for another."""
        if epoch != self.epoch:
            self._start = 0
        self.epoch = epoch

    def __iter__(self) -> Iterator[list[int]]:
        plan = self.micro_batches()
        start, self._start = self._start, 0
        self._yielded = start
        for mb in plan[start:]:
            self._yielded += 1
            yield mb

    def __len__(self) -> int:
        """Micro-batches this rank yields in a full epoch."""
        groups = self.phase_ids * len(self.type_names) + self.type_ids  # one count per (phase, type)
        counts = np.bincount(groups, minlength=len(self.phase_values) * len(self.type_names))
        g = self.global_batch_size
        per_type = counts // g if self.drop_last else -(-counts // g)
        return int(per_type.sum()) * self.accum_steps

    # ---- resume ------------------------------------------------------------------------------
    def state_dict(self, consumed_micro_batches: int | None = None) -> dict[str, Any]:
        """The resume position: the epoch and the global batches (plus micro-steps) done, counted from
        `consumed_micro_batches` (what training used; default: what this sampler yielded), with the seed,
        batch size and dataset size that `load_state_dict` checks."""
        done = self._yielded if consumed_micro_batches is None else consumed_micro_batches
        return {
            "epoch": self.epoch,
            "global_batches_done": done // self.accum_steps,
            "micro_steps_done": done % self.accum_steps,
            "seed": self.seed,
            "global_batch_size": self.global_batch_size,
            "num_samples": len(self.lengths),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a `state_dict()`: the next iteration starts at the recorded position. A state from a
        different seed, global batch size or dataset size is a ValueError (the plan would differ)."""
        for key in ("seed", "global_batch_size", "num_samples"):
            mine = self.seed if key == "seed" else self.global_batch_size if key == "global_batch_size" \
                else len(self.lengths)
            if state[key] != mine:
                raise ValueError(f"sampler state has {key}={state[key]} but this sampler has {mine}; "
                                 "the data plan would differ, so it cannot resume")
        if state["micro_steps_done"] >= self.accum_steps:
            raise ValueError("sampler state stopped inside a global batch with a different accumulation layout")
        self.epoch = int(state["epoch"])
        self._start = int(state["global_batches_done"]) * self.accum_steps + int(state["micro_steps_done"])
        self._yielded = self._start
