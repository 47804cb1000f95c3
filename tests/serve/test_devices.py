"""Several engine loops behind one :class:`DeviceGroup`, in process (two CPU loops of the fast Gaussian engine):
routing by queued draws, certificates identical to one loop, exact splits, a device failing while serving, a
device failing to load."""

import os
import threading
import time

import numpy as np
import pytest
import torch
from serve_loop_helpers import SHAPE, Brightness, engine_factory, wait_admitted, work

from densepure.certify.tasks import CertifyTask, PredictTask, SequentialTask
from densepure.errors import ConfigError
from densepure.serve.devices import DeviceGroup, DeviceLoadError, cpu_threads, device_labels, resolve_devices
from densepure.serve.loop import EngineLoop, FailKind, LoopState, NotAccepting, WorkFailed, WorkResult
from densepure.serve.settings import Placement


def make_group(n=2, split_min_draws=0, slots=2, factories=None):
    modules = [Brightness() for _ in range(n)]
    factories = factories or [engine_factory(m, slots) for m in modules]
    loops = [EngineLoop(f, max_queue=16, max_queued_draws=10**8, name=f"cpu#{i}") for i, f in enumerate(factories)]
    group = DeviceGroup(loops, [f"cpu#{i}" for i in range(n)], split_min_draws=split_min_draws)
    group.modules = modules
    group.start()
    return group


@pytest.fixture
def group():
    g = make_group()
    assert g.wait_ready(60)
    yield g
    g.stop()


@pytest.fixture
def splitting():
    g = make_group(split_min_draws=50)
    assert g.wait_ready(60)
    yield g
    g.stop()


@pytest.fixture
def single():
    g = make_group(n=1)
    assert g.wait_ready(60)
    yield g
    g.stop()


def images_for(n):
    return torch.linspace(0.3, 0.7, n).reshape(n, 1, 1, 1).expand(n, *SHAPE).contiguous()


def test_requests_go_to_the_device_with_the_fewest_queued_draws(group):
    big, big_waiter = work(PredictTask(n=10**6), torch.full((1, *SHAPE), 0.5))
    group.submit(big)
    smalls = [work(PredictTask(n=10**5), torch.full((1, *SHAPE), 0.5)) for _ in range(3)]
    for w, _ in smalls:
        group.submit(w)  # 1e5 each: three of them still weigh less than the big one
    queued = sorted(loop.queued_draws() for loop in group.loops)
    assert queued == [3 * 10**5, 10**6]
    busy = next(loop for loop in group.loops if loop.queued_draws() == 10**6)
    assert busy.progress(big.id) is not None and all(busy.progress(w.id) is None for w, _ in smalls)
    for w, waiter in [(big, big_waiter), *smalls]:
        group.cancel(w.id)
        assert waiter.get().kind is FailKind.CANCELLED
    assert group.queued_draws() == 0


def test_idle_devices_take_turns(group):
    held = [work(PredictTask(n=10**6), torch.full((1, *SHAPE), 0.5)) for _ in range(2)]
    for w, _ in held:
        group.submit(w)
    assert [loop.queued_draws() for loop in group.loops] == [10**6, 10**6]  # one each, not both on one
    for w, waiter in held:
        group.cancel(w.id)
        waiter.get()


def results(g, task, images, seed):
    out = []
    for i in range(0, len(images), 2):
        w, waiter = work(task, images[i:i + 2], seed=seed, noise_id=i)
        g.submit(w)
        outcome = waiter.get()
        assert isinstance(outcome, WorkResult), outcome
        out += outcome.images
    return out


def assert_same(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert (x.label, x.radius, x.draws) == (y.label, y.radius, y.draws)
        np.testing.assert_array_equal(x.selection_counts, y.selection_counts)
        np.testing.assert_array_equal(x.estimation_counts, y.estimation_counts)


TASKS = {"certify": CertifyTask(n0=20, n=300, alpha=0.01), "predict": PredictTask(n=250, alpha=0.01),
         "sequential": SequentialTask(n0=20, radius=0.1, alpha=0.01, n_max=400)}


@pytest.mark.parametrize("name", list(TASKS))
def test_certificates_are_one_devices_for_the_same_seed_whole_or_split(name, single, group, splitting):
    task, images = TASKS[name], images_for(4)
    one = results(single, task, images, seed=11)
    assert len({tuple(o.estimation_counts) for o in one}) > 1  # the images differ
    assert_same(results(group, task, images, seed=11), one)
    before = [loop.engine.stats.classifier_rows for loop in splitting.loops]
    assert_same(results(splitting, task, images, seed=11), one)
    after = [loop.engine.stats.classifier_rows for loop in splitting.loops]
    assert all(b > a for a, b in zip(before, after, strict=True))  # both devices drew for every request


def test_a_split_request_is_split_only_when_it_pays(splitting):
    busy, waiter = work(PredictTask(n=10**6), torch.full((1, *SHAPE), 0.5))
    splitting.loops[0].submit(busy)  # one device holds 1e6 queued draws: a split would wait for it
    idle = splitting.loops[1]
    rows = idle.engine.stats.classifier_rows
    w, small_waiter = work(PredictTask(n=200), torch.full((1, *SHAPE), 0.5), seed=3)
    splitting.submit(w)
    assert isinstance(small_waiter.get(), WorkResult)
    assert idle.engine.stats.classifier_rows - rows == 200  # it ran whole on the idle device
    splitting.loops[0].cancel(busy.id)
    waiter.get()


def test_a_split_request_cancels_and_reports_progress(splitting):
    w, waiter = work(PredictTask(n=10**5), torch.full((2, *SHAPE), 0.5))
    splitting.submit(w)
    deadline = time.monotonic() + 30
    while not (progress := splitting.progress(w.id))[0] or progress[1] == 0:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert all(loop.queued_draws() == 10**5 for loop in splitting.loops)  # each holds half of each image
    splitting.cancel(w.id)
    assert waiter.get().kind is FailKind.CANCELLED
    assert splitting.queued_draws() == 0 and splitting.progress(w.id) is None


def test_a_failing_device_leaves_rotation_its_queued_work_moves_its_running_work_is_503():
    group = make_group(slots=1)
    try:
        assert group.wait_ready(60)
        ballast, ballast_waiter = work(PredictTask(n=10**6), torch.full((1, *SHAPE), 0.5))
        group.submit(ballast)  # the healthy device is the busier one
        healthy = next(loop for loop in group.loops if loop.progress(ballast.id) is not None)
        failing = next(loop for loop in group.loops if loop is not healthy)
        running, running_waiter = work(PredictTask(n=10**5), torch.full((1, *SHAPE), 0.5))
        queued, queued_waiter = work(PredictTask(n=40), torch.full((1, *SHAPE), 0.5), seed=5)
        group.submit(running)
        wait_admitted(failing, running)
        group.submit(queued)  # one slot: it waits behind `running`
        assert failing.progress(queued.id) == (False, 0)
        group.modules[group.loops.index(failing)].nan = True
        outcome = running_waiter.get()
        assert isinstance(outcome, WorkFailed) and outcome.kind is FailKind.UNAVAILABLE
        assert failing.name in outcome.message and "retry" in outcome.message
        assert failing.state is LoopState.FAILED and group.state is LoopState.READY
        group.cancel(ballast.id)  # room on the healthy device: the moved request runs there
        ballast_waiter.get()
        moved = queued_waiter.get()
        assert isinstance(moved, WorkResult) and moved.images[0].draws == 40
        again, again_waiter = work(PredictTask(n=40), torch.full((1, *SHAPE), 0.5), seed=5)
        group.submit(again)  # only the healthy device takes work now; the same seed, the same answer
        np.testing.assert_array_equal(again_waiter.get().images[0].estimation_counts,
                                      moved.images[0].estimation_counts)
        group.modules[group.loops.index(healthy)].nan = True
        last, last_waiter = work(PredictTask(n=40), torch.full((1, *SHAPE), 0.5))
        group.submit(last)
        assert last_waiter.get().kind is FailKind.MODEL_ERROR  # no device left: the server fails as one loop does
        assert group.state is LoopState.FAILED
        with pytest.raises(NotAccepting):
            group.submit(work(PredictTask(n=5), torch.full((1, *SHAPE), 0.5))[0])
    finally:
        group.stop()


def test_ready_only_once_every_device_is_warm():
    gate = threading.Event()
    slow_engine = engine_factory(Brightness())

    def slow():
        assert gate.wait(60)
        return slow_engine()

    group = make_group(factories=[engine_factory(Brightness()), slow])
    try:
        assert group.loops[0].wait_ready(60)
        assert group.state is LoopState.LOADING and not group.loaded  # one device warm is not enough
        with pytest.raises(NotAccepting):
            group.submit(work(PredictTask(n=5), torch.full((1, *SHAPE), 0.5))[0])
        gate.set()
        assert group.wait_ready(60) and group.state is LoopState.READY
    finally:
        gate.set()
        group.stop()


def test_a_device_that_cannot_load_is_a_start_up_error_naming_it():
    def broken():
        raise ConfigError("no such checkpoint")

    group = make_group(factories=[engine_factory(Brightness()), broken])
    try:
        assert not group.wait_ready(60)
        assert group.state is LoopState.FAILED and not group.loaded
        error = group.load_error
        assert isinstance(error, DeviceLoadError) and str(error) == "device cpu#1 could not load the models: no " \
                                                                   "such checkpoint"
    finally:
        group.stop()


def test_device_names_labels_and_threads():
    assert resolve_devices(("cpu", "cpu"), "auto") == ["cpu", "cpu"]
    assert resolve_devices((), "cpu") == ["cpu"]
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="no CUDA device"):
            resolve_devices(("all",), "auto")
    assert device_labels(["cpu", "cpu", "cuda:0"]) == ["cpu#0", "cpu#1", "cuda:0"]
    assert cpu_threads(["cuda:0", "cuda:1"], None) == [None, None]
    assert cpu_threads(["cpu"], None) == [None]  # one CPU loop keeps torch's threads
    assert all(setup is not None for setup in cpu_threads(["cpu", "cpu"], None))
    pinned, before = [], os.sched_getaffinity(0)
    for setup in cpu_threads(["cpu", "cpu"], 1, pin=True):  # each on a core of its own, in its own thread
        thread = threading.Thread(target=lambda setup=setup: (setup(), pinned.append(os.sched_getaffinity(0))))
        thread.start()
        thread.join()
    if len(os.sched_getaffinity(0)) >= 2:
        assert len(pinned) == 2 and all(len(cores) == 1 for cores in pinned) and pinned[0] != pinned[1]
    assert os.sched_getaffinity(0) == before  # only the loops' threads are pinned
    with pytest.raises(ConfigError, match="cpu, cuda or cuda:N"):
        Placement(devices=("cpu", "tpu"))
    with pytest.raises(ConfigError, match="stands alone"):
        Placement(devices=("all", "cpu"))


@pytest.mark.gpu
def test_two_loops_on_one_gpu_capture_graphs_and_answer_as_one():
    """Two engine loops on cuda:0 (CUDA graphs captured from two threads), requests whole and split at once:
    the certificates are one loop's."""
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    from concurrent.futures import ThreadPoolExecutor

    from serve_loop_helpers import Waiter

    from densepure.models.digits import load_digits_test_split
    from densepure.serve.runtime import Runtime
    from densepure.serve.settings import ServeOptions
    from densepure.serve.work import Work

    images = load_digits_test_split()[0][:8]
    common = {"n0": 20, "n": 300, "num_chains": 3, "access_log": False}
    runtimes = [Runtime(ServeOptions.build(device="cuda:0", **common)),
                Runtime(ServeOptions.build(devices=("cuda:0", "cuda:0"), split_min_draws=200, **common))]
    try:
        for rt in runtimes:
            rt.loop.start()
            assert rt.loop.wait_ready(600), rt.loop.load_error

        def run(rt, i):
            task = TASKS["certify"] if i % 2 else TASKS["sequential"]  # 320 and 420 draws: both split
            waiter = Waiter()
            rt.loop.submit(Work(images[i:i + 1], [task.policy(rt.num_classes, rt.smoothing.sigma)], task, waiter,
                                task.max_draws, seed=5, noise_id=i))
            outcome = waiter.get(600)
            assert isinstance(outcome, WorkResult), outcome
            return outcome.images[0]

        one = [run(runtimes[0], i) for i in range(8)]
        with ThreadPoolExecutor(8) as pool:
            two = list(pool.map(lambda i: run(runtimes[1], i), range(8)))
        assert_same(two, one)
    finally:
        for rt in runtimes:
            rt.loop.stop()
