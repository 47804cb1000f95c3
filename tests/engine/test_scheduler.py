"""Scheduler invariants with a fake executor: no tensors, labels a pure function of identity."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from densepure.certify.policies import SequentialPolicy
from densepure.certify.sequential import SequentialPlan
from densepure.engine.policy import FixedPolicy
from densepure.engine.scheduler import RowKind, Scheduler
from densepure.noise import NoisePhase

CLASSES = 3


def label_of(image, phase, draw, chain, bias):
    """A deterministic 'chain label': mostly label 0 for biased images, mixed otherwise."""
    h = (image * 7919 + phase * 104729 + draw * 1299709 + chain * 15485863) % 1000
    return 0 if h < bias else (1 if h % 2 else 2)


def full_vote(labels):
    return max(labels, key=labels.count)


def drive(scheduler, images, unet_rows, cls_rows, b):
    """Run to completion; returns per-(slot) policies, and the per-chain step log."""
    steps_seen: dict[tuple, list[int]] = {}
    starts: dict[tuple, int] = {}
    slot_owner: dict[int, tuple] = {}
    for _ in range(100_000):
        ran = False
        rows = scheduler.next_unet(unet_rows) if scheduler.uses_unet else None
        if rows is not None:
            ran = True
            for i in range(len(rows)):
                key = (int(rows.image_slot[i]), int(rows.phase[i]), int(rows.draw[i]))
                if rows.kind[i] == RowKind.START:
                    starts[key] = starts.get(key, 0) + 1
                    assert int(rows.step[i]) == 0
                    owner = slot_owner.get(int(rows.draw_slot[i]))
                    assert owner is None, "a draw slot was reused while in flight"
                    slot_owner[int(rows.draw_slot[i])] = key
                else:
                    assert slot_owner[int(rows.draw_slot[i])] == key
                    steps_seen.setdefault(key + (int(rows.chain[i]),), []).append(int(rows.step[i]))
            scheduler.unet_done(rows)
        rows = scheduler.next_classify(cls_rows)
        if rows is not None:
            ran = True
            labels = np.array([label_of(images[int(rows.image_slot[i])][0], int(rows.phase[i]), int(rows.draw[i]),
                                        int(rows.chain[i]), images[int(rows.image_slot[i])][1])
                               for i in range(len(rows))])
            scheduler.classified(rows, labels)
            for i in range(len(rows)):
                slot = int(rows.draw_slot[i])
                key = (int(rows.image_slot[i]), int(rows.phase[i]), int(rows.draw[i]))
                if scheduler._by_slot.get(slot) is None and slot_owner.get(slot) == key:
                    del slot_owner[slot]
        if not ran:
            return steps_seen, starts
    raise AssertionError("did not finish")


@settings(max_examples=40, deadline=None)
@given(k=st.integers(1, 7), b=st.integers(1, 4), cap=st.integers(1, 9), unet_rows=st.integers(1, 17),
       cls_rows=st.integers(1, 13), early=st.booleans(), bias=st.sampled_from([200, 600, 950]))
def test_counts_match_full_votes_and_chains_take_b_steps(k, b, cap, unet_rows, cls_rows, early, bias):
    n0, n = 3, 8
    images = {0: (11, bias), 1: (12, 1000 - bias)}
    sched = Scheduler(steps=b, chains=k, num_classes=CLASSES, draw_capacity=cap, early_exit=early)
    policies = {slot: FixedPolicy(CLASSES, {NoisePhase.SELECTION: n0, NoisePhase.ESTIMATION: n}) for slot in images}
    for slot, policy in policies.items():
        sched.add_image(slot, policy)
    steps_seen, starts = drive(sched, images, unet_rows, cls_rows, b)
    assert set(sched.pop_finished()) == set(images)
    eff_k = k if b >= 2 else 1
    for slot, (image, bs) in images.items():
        for phase, total in ((NoisePhase.SELECTION, n0), (NoisePhase.ESTIMATION, n)):
            expected = np.zeros(CLASSES, dtype=np.int64)
            for d in range(total):
                expected[full_vote([label_of(image, int(phase), d, c, bs) for c in range(eff_k)])] += 1
                assert starts[(slot, int(phase), d)] == 1  # the shared first step ran exactly once
            assert np.array_equal(policies[slot].counts[phase], expected)
    # every chain that ran advanced through steps 1..b-1 exactly once each, in order
    for key, steps in steps_seen.items():
        assert steps == list(range(1, b)), (key, steps)
    if not early and b >= 2:
        assert len(steps_seen) == 2 * (n0 + n) * k
    if b >= 2:
        assert sched.unet_rows == sum(len(s) for s in steps_seen.values()) + sum(starts.values())


def test_early_exit_saves_chains_on_confident_inputs():
    images = {0: (5, 1000)}  # every chain says 0
    sched = Scheduler(steps=2, chains=10, num_classes=CLASSES, draw_capacity=8)
    sched.add_image(0, FixedPolicy(CLASSES, {NoisePhase.ESTIMATION: 20}))
    drive(sched, images, 16, 16, 2)
    assert sched.cls_rows == 20 * 6  # 6 unanimous chains decide 10
    assert sched.unet_rows == 20 * (1 + 6)


def test_sequential_policy_reads_prefixes_and_stops_at_a_look():
    plan = SequentialPlan.geometric(0.25, 0.25, 0.001, n_max=10_000)
    images = {0: (3, 1000)}
    sched = Scheduler(steps=1, chains=1, num_classes=CLASSES, draw_capacity=64, uses_unet=False)
    policy = SequentialPolicy(CLASSES, 10, plan)
    sched.add_image(0, policy)
    drive(sched, images, 64, 64, 1)
    assert policy.done and policy.result.certified
    assert policy.result.n_used in plan.looks and policy.result.n_used == int(policy.counts[NoisePhase.ESTIMATION].sum())
