"""The engine loop in-process: isolation, queue bounds, cancellation, model errors, load failures.

A Gaussian-smoothing engine with a tiny classifier keeps these fast; the HTTP tests use the real models.
"""

import numpy as np
import pytest
import torch
from serve_loop_helpers import SHAPE, Brightness, engine_factory, wait_admitted, work

from densepure.certify.tasks import CertifyTask, PredictTask
from densepure.errors import ConfigError
from densepure.serve.loop import EngineLoop, FailKind, LoopState, NotAccepting, QueueFull, WorkFailed, WorkResult


def started(max_queue=8, max_queued_draws=10**7):
    module = Brightness()
    loop = EngineLoop(engine_factory(module), max_queue=max_queue, max_queued_draws=max_queued_draws)
    loop.module = module
    loop.start()
    assert loop.wait_ready(60)
    return loop


@pytest.fixture
def loop():
    loop = started()
    yield loop
    loop.stop()


def test_results_are_per_request_and_match_one_at_a_time(loop):
    images = torch.linspace(0.3, 0.7, 6).reshape(6, 1, 1, 1).expand(6, *SHAPE).contiguous()
    task = CertifyTask(n0=10, n=60, alpha=0.01)
    together = [work(task, images[2 * i:2 * i + 2], seed=100 + i) for i in range(3)]
    for w, _ in together:  # 2 slots, 2 waiting: 6 images in 3 requests share the engine
        loop.submit(w)
    first = [image for _, waiter in together for image in waiter.get().images]
    alone = []
    for i in range(6):
        w, waiter = work(task, images[i:i + 1], seed=100 + i // 2, noise_id=i % 2)
        loop.submit(w)
        alone.append(waiter.get().images[0])
    for a, b in zip(first, alone, strict=True):
        assert (a.label, a.radius, a.draws) == (b.label, b.radius, b.draws) == (a.label, a.radius, 70)
        np.testing.assert_array_equal(a.estimation_counts, b.estimation_counts)
    assert len({tuple(o.estimation_counts) for o in first}) > 1  # different images, different counts


def test_a_batch_is_its_images_with_consecutive_noise_ids(loop):
    images = torch.full((3, *SHAPE), 0.5)
    batch, waiter = work(PredictTask(n=40), images, seed=7, noise_id=10)
    loop.submit(batch)
    together = waiter.get()
    for j in range(3):
        single, w = work(PredictTask(n=40), images[j:j + 1], seed=7, noise_id=10 + j)
        loop.submit(single)
        np.testing.assert_array_equal(w.get().images[0].estimation_counts, together.images[j].estimation_counts)


@pytest.fixture
def short_queue():
    loop = started(max_queue=2)
    yield loop
    loop.stop()


def test_queue_bounds_and_cancel_free_the_slots(short_queue):
    loop = short_queue
    long = PredictTask(n=10**6)
    running = [work(long, torch.full((1, *SHAPE), 0.5)) for _ in range(2)]  # two slots
    for w, _ in running:
        loop.submit(w)
        wait_admitted(loop, w)
    queued = [work(long, torch.full((1, *SHAPE), 0.5)) for _ in range(2)]  # max_queue=2 waiting
    for w, _ in queued:
        loop.submit(w)
    extra, _ = work(PredictTask(n=10), torch.full((1, *SHAPE), 0.5))
    with pytest.raises(QueueFull, match="queue is full") as info:
        loop.submit(extra)
    assert info.value.retry_after >= 1
    for w, waiter in running + queued:
        loop.cancel(w.id)
        assert isinstance(waiter.get(), WorkFailed) and waiter.get().kind is FailKind.CANCELLED
    assert loop.queued_draws() == 0
    small, waiter = work(PredictTask(n=10), torch.full((1, *SHAPE), 0.5))
    loop.submit(small)
    assert isinstance(waiter.get(), WorkResult)
    assert loop.engine.free_slots == 2 and loop.engine.idle


def test_queued_draws_cap():
    loop = started(max_queued_draws=1_500_000)
    try:
        first, waiter = work(PredictTask(n=10**6), torch.full((1, *SHAPE), 0.5))  # stays in flight
        loop.submit(first)
        second, _ = work(PredictTask(n=10**6), torch.full((1, *SHAPE), 0.5))
        with pytest.raises(QueueFull, match="draws queued"):
            loop.submit(second)
        loop.cancel(first.id)
        assert waiter.get().kind is FailKind.CANCELLED and loop.queued_draws() == 0
        loop.submit(second)  # room again
    finally:
        loop.stop()


def test_a_model_error_fails_in_flight_work_and_stops_serving(loop):
    loop.module.nan = True
    w, waiter = work(PredictTask(n=50), torch.full((1, *SHAPE), 0.5))
    loop.submit(w)
    outcome = waiter.get()
    assert isinstance(outcome, WorkFailed) and outcome.kind is FailKind.MODEL_ERROR and "non-finite" in outcome.message
    assert loop.state is LoopState.FAILED
    with pytest.raises(NotAccepting):
        loop.submit(work(PredictTask(n=5), torch.full((1, *SHAPE), 0.5))[0])


def test_a_load_failure_is_reported():
    failures = []

    def factory():
        raise ConfigError("no such checkpoint")

    loop = EngineLoop(factory, 1, 1, on_fatal=failures.append)
    loop.start()
    assert not loop.wait_ready(30)
    assert loop.state is LoopState.FAILED and str(loop.load_error) == "no such checkpoint" and len(failures) == 1


def test_queued_work_enters_the_engine_by_priority_then_arrival(loop):
    """Triton's priority: 1 first; equal priorities first come first served; a running image keeps its slot."""
    long = [work(PredictTask(n=10**6), torch.full((1, *SHAPE), 0.5)) for _ in range(2)]
    for w, _ in long:  # both slots taken
        loop.submit(w)
        wait_admitted(loop, w)
    finished = []
    queued = []
    for name, priority in (("b", 9), ("c", 1), ("d", 5), ("e", 5), ("f", 1)):
        w, waiter = work(PredictTask(n=10), torch.full((1, *SHAPE), 0.5))
        w.priority, w.on_done = priority, (lambda outcome, name=name, waiter=waiter: (finished.append(name),
                                                                                      waiter(outcome)))
        queued.append((w, waiter))
        loop.submit(w)
    loop.cancel(long[0][0].id)  # one slot frees: the queue goes through it one request at a time
    for _, waiter in queued:
        assert isinstance(waiter.get(), WorkResult)
    assert finished == ["c", "f", "d", "e", "b"]
    assert loop.progress(long[1][0].id) is not None  # still running, never displaced
    loop.cancel(long[1][0].id)
    assert long[1][1].get().kind is FailKind.CANCELLED
