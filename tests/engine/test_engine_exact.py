"""Exactness: engine counts equal the plain path's (no sharing, no early exit, one image at a time)."""

import numpy as np
import pytest
import torch
from engine_helpers import CLASSES, SCHEDULE, PatchSign, micro_unet  # noqa: E402
from torch import nn

from densepure.certify.procedures import certify_sequential
from densepure.certify.tasks import SequentialTask
from densepure.diffusion import Mode, SmoothingConfig
from densepure.engine.backends import Backends, TorchClassifier, TorchDenoiser
from densepure.engine.engine import Engine, EngineConfig, ImageRequest
from densepure.engine.policy import FixedPolicy
from densepure.engine.reference import ReferenceSampler
from densepure.errors import ConfigError, InputError
from densepure.models.classifiers import Classifier, Preprocess
from densepure.noise import NoisePhase


@pytest.fixture(scope="module")
def parts():
    clf = Classifier(PatchSign(), Preprocess()).eval()
    torch.manual_seed(2)
    return micro_unet(), clf, torch.rand(3, 3, 8, 8) * 0.2 + 0.4


def smoothing(mode, k, b):
    dense = mode is Mode.DENSEPURE
    return SmoothingConfig(mode, 0.5, k if dense else 1, b if dense else 1, schedule=SCHEDULE)


def plain(unet, clf, mode, k, b, seed=6):
    return ReferenceSampler(smoothing(mode, k, b), clf, CLASSES, denoiser=unet, seed=seed, batch_size=8)


def engine(unet, clf, mode, k, b, early=True, prefixes=(), **cfg):
    config = EngineConfig(**{"unet_rows": 19, "classifier_rows": 11, "draw_capacity": 5, "image_slots": 2,
                             "early_exit": early, "chain_prefixes": prefixes, **cfg})
    backends = Backends(TorchDenoiser(unet), TorchClassifier(clf, CLASSES, (3, 8, 8)))
    return Engine(smoothing(mode, k, b), backends, (3, 8, 8), "cpu", config)


def requests(images, policy, seed=6):
    return (ImageRequest(i, images[i], policy(), seed, noise_id=i) for i in range(len(images)))


@pytest.mark.parametrize("mode,k,b", [pytest.param(Mode.DENSEPURE, 5, 2, marks=pytest.mark.slow),
                                      pytest.param(Mode.DENSEPURE, 3, 3, marks=pytest.mark.slow), (Mode.DENSEPURE, 1, 2),
                                      (Mode.ONESTEP, 1, 1), (Mode.ONESTEP_DDS, 1, 1), (Mode.GAUSSIAN, 1, 1)])
def test_fixed_n_counts_equal_plain_path(parts, mode, k, b):
    unet, clf, images = parts
    n0, n = 6, 24
    ref = plain(unet, clf, mode, k, b)
    expected = {i: (ref.count(images[i], i, NoisePhase.SELECTION, 0, n0),
                    ref.count(images[i], i, NoisePhase.ESTIMATION, 0, n)) for i in range(3)}
    assert sum(int(np.count_nonzero(e[1])) for e in expected.values()) >= 4, "labels must vary for a real test"
    for early in (True, False):
        eng = engine(unet, clf, mode, k, b, early)
        phases = {NoisePhase.SELECTION: n0, NoisePhase.ESTIMATION: n}
        got = {r.key: r.policy for r in eng.run(requests(images, lambda phases=phases: FixedPolicy(CLASSES, phases)))}
        for i in range(3):
            assert np.array_equal(got[i].counts[NoisePhase.SELECTION], expected[i][0])
            assert np.array_equal(got[i].counts[NoisePhase.ESTIMATION], expected[i][1])
        if mode is Mode.DENSEPURE and k >= 2:
            naive = 3 * (n0 + n) * k * b
            assert eng.stats.unet_rows <= 3 * (n0 + n) * (1 + k * (b - 1)) < naive


def test_sequential_engine_equals_plain_sequential(parts):
    unet, clf, images = parts
    task = SequentialTask(n0=4, radius=0.1, alpha=0.1, n_max=40)
    ref = plain(unet, clf, Mode.ONESTEP, 1, 1)
    expected = [certify_sequential(ref, images[i], i, task) for i in range(3)]
    eng = engine(unet, clf, Mode.ONESTEP, 1, 1)
    got = {r.key: r.policy for r in eng.run(requests(images, lambda: task.policy(CLASSES, eng.smoothing.sigma)))}
    for i in range(3):
        assert got[i].result == expected[i].result
        assert np.array_equal(got[i].counts[NoisePhase.ESTIMATION], expected[i].counts_estimation)


@pytest.mark.slow  # K separate runs beside one K-chain run: ~4-5 s of CPU each
@pytest.mark.parametrize("k,b,prefixes", [(5, 2, (1, 3)), (4, 3, (1, 2, 3))])
def test_chain_prefix_counts_equal_separate_runs(parts, k, b, prefixes):
    """One K-chain run's prefix counts equal separate k-chain runs (plain path) with the same seed."""
    unet, clf, images = parts
    n0, n = 5, 20
    phases = {NoisePhase.SELECTION: n0, NoisePhase.ESTIMATION: n}
    eng = engine(unet, clf, Mode.DENSEPURE, k, b, prefixes=prefixes)
    got = {r.key: r.policy for r in eng.run(requests(images, lambda phases=phases: FixedPolicy(CLASSES, phases)))}
    varied = 0
    for kp in prefixes:
        ref = plain(unet, clf, Mode.DENSEPURE, kp, b)
        for i in range(3):
            for phase, size in phases.items():
                expected = ref.count(images[i], i, phase, 0, size)
                assert np.array_equal(got[i].prefix_counts[kp][phase], expected), (kp, i, phase)
                varied += int(np.count_nonzero(expected) > 1)
    assert varied >= 2, "labels must vary for a real test"
    for i in range(3):  # the K-chain counts are unchanged by tracking prefixes
        ref = plain(unet, clf, Mode.DENSEPURE, k, b)
        assert np.array_equal(got[i].counts[NoisePhase.ESTIMATION], ref.count(images[i], i, NoisePhase.ESTIMATION, 0, n))


@pytest.mark.parametrize("prefixes,early", [((0,), True), ((4,), True), ((6,), False), ((2,), True)])
def test_chain_prefixes_validated(parts, prefixes, early):
    unet, clf, _ = parts
    if prefixes == (2,):
        engine(unet, clf, Mode.DENSEPURE, 5, 2, early, prefixes=prefixes)  # 2 <= 5 // 2 + 1: first wave
    else:
        with pytest.raises(ConfigError, match="chain prefixes"):
            engine(unet, clf, Mode.DENSEPURE, 5, 2, early, prefixes=prefixes)


def test_densepure_refuses_one_step():
    with pytest.raises(ConfigError, match="b >= 2.*--mode onestep"):
        SmoothingConfig(Mode.DENSEPURE, 0.5, 4, 1, schedule=SCHEDULE)


@pytest.mark.slow
def test_batching_and_slots_do_not_change_counts(parts):
    """Counts are a function of the noise identities only: other batch sizes, pools and slot counts agree."""
    unet, clf, images = parts
    phases = {NoisePhase.SELECTION: 4, NoisePhase.ESTIMATION: 15}
    runs = []
    for cfg in ({}, {"unet_rows": 3, "classifier_rows": 2, "draw_capacity": 2, "image_slots": 1},
                {"unet_rows": 200, "classifier_rows": 200, "draw_capacity": 64, "image_slots": 3}):
        eng = engine(unet, clf, Mode.DENSEPURE, 5, 2, **cfg)
        got = {r.key: r.policy for r in eng.run(requests(images, lambda phases=phases: FixedPolicy(CLASSES, phases)))}
        runs.append({i: got[i].counts[NoisePhase.ESTIMATION].tolist() for i in range(3)})
    assert runs[0] == runs[1] == runs[2]


def test_submit_step_collect_drive_the_engine_and_cancel_frees_a_slot(parts):
    """The core API a server loop uses: submit, step until idle, collect; a cancelled request never returns."""
    unet, clf, images = parts
    eng = engine(unet, clf, Mode.DENSEPURE, 3, 2, image_slots=2)
    phases = {NoisePhase.SELECTION: 3, NoisePhase.ESTIMATION: 9}
    with eng:
        for i in range(3):
            eng.submit(ImageRequest(f"req{i}", images[i], FixedPolicy(CLASSES, phases), seed=100 + i))
        assert eng.free_slots == 0 and not eng.idle
        eng.step()
        assert eng.cancel("req1") and not eng.cancel("nope")
        done = []
        while not eng.idle:
            eng.step()
            done += eng.collect()
        done += eng.collect()
    assert sorted(r.key for r in done) == ["req0", "req2"]
    # per-request seeds: the same request alone, in a fresh engine, gets the same counts
    alone = engine(unet, clf, Mode.DENSEPURE, 3, 2)
    (again,) = list(alone.run([ImageRequest("req2", images[2], FixedPolicy(CLASSES, phases), seed=102)]))
    want = {r.key: r for r in done}["req2"].policy.counts
    assert all(np.array_equal(again.policy.counts[p], want[p]) for p in phases)


def test_submit_refuses_bad_images_and_identities(parts):
    unet, clf, images = parts
    eng = engine(unet, clf, Mode.ONESTEP, 1, 1)
    policy = FixedPolicy(CLASSES, {NoisePhase.ESTIMATION: 2})
    cases = [(images[0][:2], "shape"), (images[0] * 2, r"\[0, 1\]"), (images[0].clone().fill_(float("nan")), "NaN")]
    for x, match in cases:
        with pytest.raises(InputError, match=match):
            eng.submit(ImageRequest(0, x, policy, seed=1))
    with pytest.raises(InputError, match="seed"):
        eng.submit(ImageRequest(0, images[0], policy, seed=-1))
    with pytest.raises(InputError, match="noise_id"):
        eng.submit(ImageRequest(0, images[0], policy, seed=1, noise_id=1 << 24))
    with pytest.raises(InputError, match="draws"):
        eng.submit(ImageRequest(0, images[0], FixedPolicy(CLASSES, {NoisePhase.ESTIMATION: 1 << 40}), seed=1))
    assert eng.idle


class _Broken(nn.Module):
    def __init__(self, inner, where):
        super().__init__()
        self.inner, self.where = inner, where

    def eps_and_var(self, x, t):
        eps, v = self.inner.eps_and_var(x, t)
        return eps.clone().fill_(float("nan")) if self.where == "unet" else eps, v

    def forward(self, x):
        return self.inner(x) * float("nan")


@pytest.mark.parametrize("where,match", [("unet", "diffusion model"), ("classifier", "classifier")])
def test_non_finite_model_outputs_stop_the_run_before_any_count(parts, where, match):
    from densepure.errors import ModelOutputError

    unet, clf, images = parts
    eng = engine(unet, clf, Mode.DENSEPURE, 3, 2)
    if where == "unet":
        eng.executor.denoiser.model = _Broken(unet, "unet")
    else:
        eng.executor.classifier.module = _Broken(clf, "classifier")
    policy = FixedPolicy(CLASSES, {NoisePhase.ESTIMATION: 6})
    with pytest.raises(ModelOutputError, match=match):
        list(eng.run([ImageRequest(0, images[0], policy, seed=1)]))
    assert policy.total_draws == 0
