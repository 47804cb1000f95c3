"""Scheduler invariants with a fake executor: no tensors, labels a pure function of identity."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from densepure.certify.policies import SequentialPolicy
from densepure.engine.policy import FixedPolicy
from densepure.engine.scheduler import RowKind, Scheduler
from densepure.noise import NoisePhase
from densepure.stats.sequential import SequentialPlan

CLASSES = 3


def label_of(image, phase, draw, chain, bias):
    """A deterministic 'chain label': mostly label 0 for biased images, mixed otherwise."""
    h = (image * 7919 + phase * 104729 + draw * 1299709 + chain * 15485863) % 1000
    return 0 if h < bias else (1 if h % 2 else 2)


def full_vote(labels):
    return max(labels, key=labels.count)


def drive(scheduler, images, unet_rows, cls_rows, b, probe=None):
    """Run to completion; returns per-(slot) policies, and the per-chain step log. ``probe.before(queued)``
    and ``probe.after()`` are called around the making of each UNet batch (``queued``: rows queued before)."""
    steps_seen: dict[tuple, list[int]] = {}
    starts: dict[tuple, int] = {}
    slot_owner: dict[int, tuple] = {}
    for _ in range(100_000):
        ran = False
        if probe is not None:
            probe.before(len(scheduler.unet_ready) + len(scheduler.starts))
        rows = scheduler.next_unet(unet_rows) if scheduler.uses_unet else None
        if probe is not None:
            probe.after()
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



class TakeProbe:
    """Logs every ``take`` of the policies it wraps as (lookahead, draws handed out), and checks around each
    UNet batch that look-ahead draws took no more rows than the batch had left beyond the queued work."""

    def __init__(self, max_rows: int):
        self.max_rows, self.log, self.batches = max_rows, [], []

    def wrap(self, policy):
        take = policy.take

        def logged(limit, lookahead=True):
            out = take(limit, lookahead)
            self.log.append((lookahead, len(out)))
            return out

        policy.take = logged
        return policy

    def before(self, queued: int) -> None:
        self.queued, self.mark = queued, len(self.log)

    def after(self) -> None:
        new = self.log[self.mark:]
        needed = sum(n for spec, n in new if not spec)
        ahead = sum(n for spec, n in new if spec)
        self.batches.append((self.queued + needed, ahead))
        assert ahead <= max(0, self.max_rows - self.queued - needed), self.batches[-1]

    @property
    def ahead(self) -> int:
        return sum(n for spec, n in self.log if spec)


def _sequential_run(lookahead: bool, images: dict, unet_rows: int, capacity: int):
    plan = SequentialPlan.geometric(0.25, 0.25, 0.001, n_max=2_000)
    sched = Scheduler(steps=2, chains=4, num_classes=CLASSES, draw_capacity=capacity, lookahead=lookahead)
    probe = TakeProbe(unet_rows)
    policies = {slot: probe.wrap(SequentialPolicy(CLASSES, 10, plan)) for slot in images}
    for slot, policy in policies.items():
        sched.add_image(slot, policy)
    drive(sched, images, unet_rows, unet_rows, 2, probe)
    assert all(p.done for p in policies.values())
    return policies, probe, sched


def test_lookahead_only_fills_empty_rows_and_never_changes_a_decision():
    """Without look-ahead no draw past a stopping look is ever issued; with it, look-ahead draws fill
    empty rows of a lightly loaded batch (so a look costs no round trip), never more rows than the batch
    has left beyond the queued work (checked at every batch by the probe), and every count and decision
    is the same."""
    light = {0: (3, 1000)}
    exact, probe, _ = _sequential_run(False, light, 64, 256)
    assert probe.ahead == 0 and exact[0].result.certified
    assert exact[0].issued_est == exact[0].result.n_used  # nothing computed to be thrown away
    spec, probe, _ = _sequential_run(True, light, 64, 256)
    assert probe.ahead > 0 and spec[0].issued_est > spec[0].result.n_used  # look-ahead in empty rows
    assert spec[0].result == exact[0].result
    assert np.array_equal(spec[0].counts[NoisePhase.ESTIMATION], exact[0].counts[NoisePhase.ESTIMATION])

    loaded = {slot: (20 + slot, 1000 if slot % 3 else 700) for slot in range(12)}
    plain, _, plain_sched = _sequential_run(False, loaded, 16, 512)
    busy, probe, busy_sched = _sequential_run(True, loaded, 16, 512)
    assert any(rows >= 16 for rows, _ in probe.batches)  # full batches at times: no look-ahead in those
    assert all(spec == 0 for rows, spec in probe.batches if rows >= 16)
    for slot in loaded:
        assert busy[slot].result == plain[slot].result
        assert np.array_equal(busy[slot].counts[NoisePhase.ESTIMATION], plain[slot].counts[NoisePhase.ESTIMATION])
    assert busy_sched.unet_rows >= plain_sched.unet_rows
