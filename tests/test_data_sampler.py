"""TypeGroupedBatchSampler: one type per global batch, length buckets, determinism, resume, rank slices."""

from __future__ import annotations

import numpy as np
import pytest

from sphinx_x.data.sampler import TypeGroupedBatchSampler

N = 203
RNG = np.random.default_rng(0)
LENGTHS = RNG.integers(10, 500, size=N)
TYPES = np.array(["text"] * 90 + ["image"] * 77 + ["ocr"] * 36)[RNG.permutation(N)]


def make(**kw):
    args = dict(lengths=LENGTHS, types=TYPES, global_batch_size=16, micro_batch_size=2, world_size=1, rank=0, seed=3)
    args.update(kw)
    return TypeGroupedBatchSampler(**args)


def test_one_type_per_global_batch_and_length_sorted():
    sampler = make()
    batches = sampler.global_batches()
    assert len(batches) == 90 // 16 + 77 // 16 + 36 // 16
    for batch in batches:
        assert len(batch) == 16
        assert len(set(TYPES[batch])) == 1
        assert list(LENGTHS[batch]) == sorted(LENGTHS[batch], reverse=True)  # a slice of a length-sorted bucket
    flat = np.concatenate(batches)
    assert len(set(flat.tolist())) == len(flat)  # drop_last: no sample twice
    # types are interleaved, not one type after another
    seq = [TYPES[b[0]] for b in batches]
    assert sum(a != b for a, b in zip(seq, seq[1:])) >= 3


def test_bucketing_reduces_padding_against_random_batches():
    sampler = make(bucket_batches=100)
    spread = np.mean([np.ptp(LENGTHS[b]) for b in sampler.global_batches()])
    random_batches = np.random.default_rng(1).permutation(N)[: 16 * 10].reshape(10, 16)
    assert spread < 0.5 * np.mean([np.ptp(LENGTHS[b]) for b in random_batches])


def test_deterministic_per_seed_and_epoch():
    a, b = make(), make()
    assert list(a) == list(b)
    other_seed = make(seed=4)
    assert list(other_seed) != list(a)
    b.set_epoch(1)
    epoch1 = list(b)
    assert epoch1 != list(a)
    c = make()
    c.set_epoch(1)
    assert list(c) == epoch1


def test_len_matches_iteration_and_drop_last_false_covers_everything():
    s = make()
    assert len(s) == len(list(s))
    full = make(drop_last=False)
    mbs = list(full)
    assert len(full) == len(mbs) == (6 + 5 + 3) * 8
    seen = {i for mb in mbs for i in mb}
    assert seen == set(range(N))
    for batch in full.global_batches():
        assert len(batch) == 16 and len(set(TYPES[batch])) == 1


@pytest.mark.parametrize("stop", [1, 7, 8, 37])
def test_resume_mid_epoch_continues_identically(stop):
    ref = make(world_size=2, rank=1, micro_batch_size=2, global_batch_size=8)
    ref.set_epoch(2)
    expected = list(ref)
    run = make(world_size=2, rank=1, micro_batch_size=2, global_batch_size=8)
    run.set_epoch(2)
    it = iter(run)
    got = [next(it) for _ in range(stop)]
    state = run.state_dict()
    assert state["epoch"] == 2 and state["global_batches_done"] * 2 + state["micro_steps_done"] == stop
    resumed = make(world_size=2, rank=1, micro_batch_size=2, global_batch_size=8)
    resumed.load_state_dict(state)
    assert got + list(resumed) == expected
    # the following epoch starts from its beginning again
    resumed.set_epoch(3)
    fresh = make(world_size=2, rank=1, micro_batch_size=2, global_batch_size=8)
    fresh.set_epoch(3)
    assert list(resumed) == list(fresh)


def test_resume_uses_consumed_count_not_prefetched_count():
    run = make()
    it = iter(run)
    for _ in range(20):  # a DataLoader prefetched 20 micro-batches ...
        next(it)
    state = run.state_dict(consumed_micro_batches=12)  # ... but training consumed 12
    resumed = make()
    resumed.load_state_dict(state)
    assert list(resumed) == list(make())[12:]


def test_resume_at_step_boundary_with_another_world_size():
    one = make(world_size=1, micro_batch_size=2)
    it = iter(one)
    for _ in range(3 * one.accum_steps):  # three optimizer steps
        next(it)
    state = one.state_dict()
    ranks = [make(world_size=4, rank=r, micro_batch_size=2) for r in range(4)]
    for r in ranks:
        r.load_state_dict(state)
    remaining = {i for r in ranks for mb in r for i in mb}
    expected = {int(i) for b in one.global_batches()[3:] for i in b}
    assert remaining == expected


def test_mismatched_state_is_refused():
    state = make().state_dict()
    with pytest.raises(ValueError, match="global_batch_size=16 but this sampler has 32"):
        make(global_batch_size=32).load_state_dict(state)
    with pytest.raises(ValueError, match="seed=3 but this sampler has 5"):
        make(seed=5).load_state_dict(state)


@pytest.mark.parametrize("world,micro", [(2, 2), (4, 1), (4, 4), (8, 2)])
def test_rank_slices_are_disjoint_and_complete(world, micro):
    g = 16
    samplers = [make(world_size=world, rank=r, micro_batch_size=micro, global_batch_size=g) for r in range(world)]
    accum = g // (micro * world)
    per_rank = [list(s) for s in samplers]
    assert len({len(p) for p in per_rank}) == 1  # every rank runs the same number of micro-steps
    for k, batch in enumerate(samplers[0].global_batches()):
        slices = [mb for p in per_rank for mb in p[k * accum : (k + 1) * accum]]
        assert all(len(mb) == micro for mb in slices)
        flat = [i for mb in slices for i in mb]
        assert len(flat) == len(set(flat)) == g  # disjoint
        assert set(flat) == set(batch.tolist())  # complete
    # at one accumulation step, the ranks' micro-batches are neighbours in the length order
    first = samplers[0].global_batches()[0]
    assert per_rank[1 % world][0] == first[(1 % world) * micro : (1 % world + 1) * micro].tolist()


def test_bad_arguments():
    with pytest.raises(ValueError, match="multiple of micro_batch_size 3 x world_size 2"):
        make(global_batch_size=16, micro_batch_size=3, world_size=2)
    with pytest.raises(ValueError, match="5 lengths but 4 types"):
        TypeGroupedBatchSampler([1] * 5, ["a"] * 4, 2, 1)


# ---- curriculum phases (the mix's per-source `phase`) --------------------------------------------
PHASES = np.where(RNG.random(N) < 0.3, 0, 2)  # any integers; only their order matters


def test_phases_train_every_lower_phase_first_in_every_epoch():
    sampler = make(phases=PHASES)
    for epoch in (0, 1):
        batches = sampler.global_batches(epoch)
        phase_seq = [int(PHASES[b[0]]) for b in batches]
        assert phase_seq == sorted(phase_seq) and set(phase_seq) == {0, 2}
        for batch in batches:  # one phase and one type per global batch
            assert len(set(PHASES[batch])) == 1 and len(set(TYPES[batch])) == 1
        # inside a phase the types are still shuffled together
        first = [TYPES[b[0]] for b in batches if PHASES[b[0]] == 2]
        assert sum(a != b for a, b in zip(first, first[1:])) >= 3
    counts = [((TYPES == t) & (PHASES == p)).sum() // 16 for t in set(TYPES) for p in (0, 2)]
    assert len(sampler.global_batches()) == sum(counts)
    assert len(sampler) == sum(counts) * 8  # micro-batches of 2 in global batches of 16


def test_one_phase_gives_exactly_the_plan_without_phases():
    plain = make().global_batches(1)
    same = make(phases=np.full(N, 5)).global_batches(1)
    assert [b.tolist() for b in plain] == [b.tolist() for b in same]


@pytest.mark.parametrize("stop", [3, 40])
def test_resume_inside_and_after_the_first_phase(stop):
    expected = list(make(phases=PHASES))
    run = make(phases=PHASES)
    it = iter(run)
    got = [next(it) for _ in range(stop)]
    resumed = make(phases=PHASES)
    resumed.load_state_dict(run.state_dict())
    assert got + list(resumed) == expected


def test_phases_must_match_the_samples():
    with pytest.raises(ValueError, match="203 lengths but 5 phases"):
        make(phases=[0] * 5)
