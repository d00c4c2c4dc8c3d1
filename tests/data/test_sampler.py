"""StatefulDistributedSampler: partitioning across ranks and exact resume."""

import numpy as np
import pytest

from opensora_vae.data.sampler import StatefulDistributedSampler


def make_ranks(n, world, **kw):
    return [StatefulDistributedSampler(n, world, r, **kw) for r in range(world)]


def run_steps(samplers, batch_size, steps):
    """Simulate a trainer: each rank takes ``batch_size`` indices per step, then all advance."""
    world = len(samplers)
    iters = [iter(s) for s in samplers]
    taken = []
    for _ in range(steps):
        step = [[next(it) for _ in range(batch_size)] for it in iters]
        taken.append(step)
        for s in samplers:
            s.advance(batch_size * world)
    return taken


def test_ranks_partition_the_epoch_without_overlap():
    n = 23
    samplers = make_ranks(n, 2)
    per_rank = [list(s) for s in samplers]
    assert len(per_rank[0]) == len(per_rank[1]) == 11 == len(samplers[0])
    assert set(per_rank[0]).isdisjoint(per_rank[1])
    order = samplers[0].global_order()
    assert sorted(order.tolist()) == list(range(n))
    # Global position p goes to rank p % world; the one leftover sample is dropped.
    assert per_rank[0] == order[0:22:2].tolist() and per_rank[1] == order[1:22:2].tolist()
    assert order.tolist() != list(range(n))  # actually shuffled


def test_the_order_is_the_one_checkpoints_were_written_with():
    # Literal values from the sampler as of the first release: a saved position means these
    # indices, so any change to the order (or to how it is dealt) breaks resuming old runs.
    s = StatefulDistributedSampler(20, 3, 1, seed=42)
    assert list(s) == [9, 12, 19, 16, 18, 17]
    s.advance(6)
    assert list(s) == [19, 16, 18, 17]
    s.set_epoch(1)
    assert list(s) == [4, 3, 18, 12, 2, 15]
    tail = StatefulDistributedSampler(7, 2, 1, seed=3, drop_last=False)
    tail.advance(2)
    assert list(tail) == [1, 3, 5]


def test_a_large_epoch_is_yielded_lazily_in_the_same_order():
    # 3M indices: dealt in chunks, never one Python int per index of the epoch at once.
    s = StatefulDistributedSampler(3_000_000, 2, 1, seed=9)
    s.advance(10)
    it = iter(s)
    order = s.global_order()
    head = [next(it) for _ in range(5)]
    assert head == order[11:21:2].tolist()
    assert not isinstance(it, (list, type(iter([]))))
    rest = np.fromiter(it, dtype=np.int64)
    assert np.array_equal(rest, order[21::2][: len(s) - 5]) and len(rest) == len(s) - 5


def test_order_is_a_function_of_seed_and_epoch_only():
    a = StatefulDistributedSampler(50, 4, 1, seed=7)
    b = StatefulDistributedSampler(50, 4, 1, seed=7)
    assert list(a) == list(b)
    a.set_epoch(1)
    assert list(a) != list(b)
    b.set_epoch(1)
    assert list(a) == list(b)
    assert list(StatefulDistributedSampler(50, 4, 1, seed=8)) != list(StatefulDistributedSampler(50, 4, 1, seed=7))
    assert list(StatefulDistributedSampler(5, 1, 0, shuffle=False)) == [0, 1, 2, 3, 4]


def test_resume_mid_epoch_gives_the_same_sequence():
    n, world, batch, steps = 40, 2, 3, 6
    straight = run_steps(make_ranks(n, world, seed=3), batch, steps)

    first = make_ranks(n, world, seed=3)
    half = run_steps(first, batch, steps // 2)
    state = first[0].state_dict()
    assert state["epoch"] == 0 and state["global_consumed"] == (steps // 2) * batch * world

    resumed = make_ranks(n, world, seed=3)
    for s in resumed:
        s.load_state_dict(state)
        s.set_epoch(state["epoch"])  # same epoch: must keep the position
    rest = run_steps(resumed, batch, steps - steps // 2)
    assert half + rest == straight


def test_resume_with_a_different_world_and_batch_size_continues_the_global_order():
    n = 30
    old = make_ranks(n, 2, seed=1)
    consumed = run_steps(old, batch_size=2, steps=3)  # 12 global samples
    state = old[1].state_dict()
    new = make_ranks(n, 3, seed=1)
    for s in new:
        s.load_state_dict(state)
    after = run_steps(new, batch_size=1, steps=2)  # 6 more

    order = new[0].global_order()
    seen_before = sorted(i for step in consumed for rank in step for i in rank)
    assert seen_before == sorted(order[:12].tolist())
    # New ranks pick up exactly global positions 12..17, dealt round-robin.
    assert [rank[0] for rank in after[0]] == order[12:15].tolist()
    assert [rank[0] for rank in after[1]] == order[15:18].tolist()


def test_epoch_end_and_next_epoch():
    s = StatefulDistributedSampler(8, 2, 0, seed=0)
    s.advance(8)
    assert s.epoch_finished and len(s) == 0 and list(s) == []
    s.set_epoch(1)
    assert s.state_dict()["global_consumed"] == 0 and len(s) == 4
    assert list(s) == s.global_order(1)[0:8:2].tolist()


def test_without_drop_last_the_tail_wraps_around():
    samplers = make_ranks(5, 2, drop_last=False, shuffle=False)
    assert list(samplers[0]) == [0, 2, 4] and list(samplers[1]) == [1, 3, 0]


def test_invalid_arguments_are_refused():
    with pytest.raises(ValueError):
        StatefulDistributedSampler(10, 2, 2)
    with pytest.raises(ValueError):
        StatefulDistributedSampler(0, 1, 0)


@pytest.mark.parametrize("now,changed", [(dict(dataset_len=10), {"dataset_len": (11, 10)}),
                                         (dict(seed=2), {"seed": (1, 2)}),
                                         (dict(dataset_len=12, seed=5), {"dataset_len": (11, 12), "seed": (1, 5)})])
def test_a_changed_table_or_seed_restarts_the_saved_epoch_in_the_new_order(now, changed):
    # A trainer saved mid-epoch 2; the resumed run has another table length or seed.
    saved = make_ranks(11, 2, seed=1)
    for s in saved:
        s.set_epoch(2)
    run_steps(saved, batch_size=2, steps=1)
    kw = {"dataset_len": 11, "seed": 1, **now}
    resumed = make_ranks(kw.pop("dataset_len"), 2, **kw)
    reports = [s.load_state_dict(saved[0].state_dict()) for s in resumed]
    assert all(r.changed == changed and r.epoch == 2 and r.saved_position == 4 for r in reports)
    for s in resumed:
        s.set_epoch(2)  # what the trainer does next: the same epoch, so the position stays 0
    order = resumed[0].global_order(2)
    # The whole epoch of the new order, dealt round-robin from position 0: no row left out.
    assert [list(s) for s in resumed] == [order[0:len(order) // 2 * 2:2].tolist(),
                                          order[1:len(order) // 2 * 2:2].tolist()]
    for key, (old, _) in changed.items():
        assert f"{key}={old!r}" in str(reports[0])  # the warning names what changed


def test_an_unchanged_order_reports_nothing_and_keeps_the_position():
    saved = StatefulDistributedSampler(11, 1, 0, seed=1)
    saved.advance(3)
    resumed = StatefulDistributedSampler(11, 1, 0, seed=1)
    assert resumed.load_state_dict(saved.state_dict()) is None
    assert resumed.global_consumed == 3 and list(resumed) == list(saved)


def test_sampler_drives_a_dataloader():
    from torch.utils.data import DataLoader

    s = StatefulDistributedSampler(12, 3, 2, seed=5)
    got = [b.tolist() for b in DataLoader(np.arange(12), batch_size=2, sampler=s)]
    order = s.global_order()
    assert got == [order[[2, 5]].tolist(), order[[8, 11]].tolist()]
