"""Ray: connecting to a cluster (or starting a local one), and a pool of :class:`CertifyWorker` actors.

``ray`` is imported here only, inside functions, so that densepure imports without it; a run that needs
it and cannot import it stops with one line saying how to install it.

Resources. A GPU worker asks Ray for one GPU (or an equal share when there are more workers than GPUs)
and runs on the GPU Ray assigns it ("cuda"). A CPU worker runs ``threads`` torch threads and asks Ray
for less than a whole CPU (``cpus / (workers + 1)`` at most), so that the actors never hold every CPU
slot of a small machine, where anything else Ray has to schedule would wait for them.
"""

from __future__ import annotations

import logging
import math
import os
import secrets
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import Any

from densepure.certify.job import JobOptions
from densepure.distributed.reaper import start_reaper
from densepure.distributed.work import Chunk
from densepure.distributed.worker import CertifyWorker, WorkerInfo
from densepure.errors import DensePureError, install_hint

LOCAL = "local"
INSTALL_HINT = f"{install_hint('ray')} (or pip install ray)"
# Ray (checked with 2.60) resolves 127.0.0.1 to the host's outward address on Linux, so a local instance's
# servers listen on every interface; with this variable off it keeps the loopback address and binds there.
# It can go once Ray binds local instances to loopback by default.
_LOOPBACK_ONLY = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


class ClusterError(DensePureError):
    """The cluster cannot run the job: Ray missing or unreachable, workers that cannot start, or all lost."""


class WorkerLost(Exception):
    """A worker died (or became unreachable) with a chunk in flight; the chunk can run elsewhere."""


def require_ray() -> Any:
    """The ``ray`` module, or a ClusterError that says how to install it."""
    try:
        import ray
    except ImportError as exc:
        raise ClusterError(f"--ray needs Ray, which is not installed here: {INSTALL_HINT}") from exc
    return ray


@contextmanager
def connect(address: str, *, num_cpus: int | None = None, num_gpus: int | None = None,
            object_store_mb: int = 512) -> Iterator[Any]:
    """Connect to the Ray cluster ``address`` for the duration of the block; yields the ``ray`` module.

    ``local`` starts a Ray instance on this machine (``num_cpus``: default all; ``num_gpus``: default the GPUs
    detected, more are logical GPUs for tests; servers on
    the loopback address; no dashboard; token authentication as Ray sets it up, ~/.ray/auth_token on Ray
    >= 2.59) and stops it afterwards. ``auto`` joins the cluster this machine belongs to (``ray start``,
    KubeRay, Slurm); any other value is its address (``host:6379`` or ``ray://host:10001``). If this process
    is already connected, that connection is used and left open. A local instance is watched by a reaper
    process (:mod:`densepure.distributed.reaper`): if this process dies, even by SIGKILL, no process of the
    instance outlives it by more than a second or so.
    """
    with _loopback_only(address == LOCAL):
        ray = require_ray()
        if ray.is_initialized():
            yield ray
            return
        # a local instance dies with this process, even by SIGKILL (densepure.distributed.reaper)
        reaper = start_reaper(os.path.dirname(ray.__file__)) if address == LOCAL else None
        try:
            try:
                if address == LOCAL:
                    ray.init(address="local", num_cpus=num_cpus or os.cpu_count(), num_gpus=num_gpus,
                             include_dashboard=False, object_store_memory=int(object_store_mb) * 2**20,
                             logging_level=logging.WARNING)
                else:
                    ray.init(address=address, logging_level=logging.WARNING)
            except Exception as exc:  # ray raises ConnectionError, RuntimeError, ValueError or its AuthenticationError
                raise ClusterError(_connect_message(ray, address, exc)) from exc
            try:
                yield ray
            finally:
                ray.shutdown()
        finally:
            if reaper is not None:
                reaper.close()


@contextmanager
def _loopback_only(local: bool) -> Iterator[None]:
    """For a local instance: the variable for ray's import and the processes it starts, and ray's constant
    if it was imported already; both restored afterwards (a later join must advertise the outward address)."""
    if not local or os.environ.get(_LOOPBACK_ONLY) is not None:
        yield
        return
    os.environ[_LOOPBACK_ONLY] = "0"
    constants = sys.modules.get("ray._private.ray_constants")
    if constants is not None and hasattr(constants, "ENABLE_RAY_CLUSTER"):
        constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        del os.environ[_LOOPBACK_ONLY]
        constants = sys.modules.get("ray._private.ray_constants")
        if constants is not None and hasattr(constants, "ENABLE_RAY_CLUSTER"):
            constants.ENABLE_RAY_CLUSTER = not getattr(constants, "IS_WINDOWS_OR_OSX", False)


def _connect_message(ray: Any, address: str, exc: Exception) -> str:
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    where = "start a local Ray instance" if address == LOCAL else f"connect to the Ray cluster at {address!r}"
    auth_error = getattr(getattr(ray, "exceptions", None), "AuthenticationError", ())
    if isinstance(exc, auth_error) or "auth" in first.lower():
        return (f"cannot {where}: token authentication failed ({first}); give this driver the cluster's token: "
                "RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token (`ray get-auth-token` on the head node)")
    return f"cannot {where}: {first}"


@dataclass(frozen=True)
class WorkerPlan:
    """How many workers, and what each asks Ray for and runs on."""

    workers: int
    num_cpus: float
    num_gpus: float
    device: str  # the worker's --device: "cuda" (the GPU Ray assigned) or "cpu"
    threads: int  # torch threads per worker

    def describe(self) -> str:
        share = f"{self.num_gpus:g} GPU" if self.num_gpus else f"{self.threads} thread(s)"
        return f"{self.workers} worker(s) on {self.device}, each {share} and {self.num_cpus:g} CPU slot(s)"


def plan_workers(device: str, workers: int, cpus: float, gpus: float, threads: int | None = None) -> WorkerPlan:
    """Workers for ``--device`` on a cluster with ``cpus`` and ``gpus`` available (``workers`` 0: one per GPU,
    or per CPU without GPUs; ``threads``: torch threads per CPU worker, default an equal share of the CPUs)."""
    device = str(device)
    use_gpu = device.startswith("cuda") or (device == "auto" and gpus >= 1)
    if device.startswith("cuda") and gpus <= 0:
        raise ClusterError(f"--device {device} but the Ray cluster has no GPU available")
    if not use_gpu and device not in ("cpu", "auto"):
        raise ClusterError(f"--device must be auto, cpu or cuda with --ray, got {device!r}")
    if use_gpu:
        n = workers or int(gpus)
        share = 1.0 if n <= gpus else math.floor(gpus / n * 10_000) / 10_000  # Ray's resolution: 1e-4
        return WorkerPlan(n, _cpu_slot(1, cpus, n), share, "cuda", threads or 1)
    n = workers or max(1, int(cpus))
    per = threads or max(1, int(cpus) // n)
    return WorkerPlan(n, _cpu_slot(per, cpus, n), 0.0, "cpu", per)


def _cpu_slot(threads: int, cpus: float, workers: int) -> float:
    return max(0.01, math.floor(min(float(threads), cpus / (workers + 1)) * 100) / 100)


class RayPool:
    """The workers of one run as Ray actors: start them, send chunks, collect results, drop lost ones."""

    def __init__(self, ray: Any, actors: Sequence[Any], infos: Sequence[WorkerInfo], plan: WorkerPlan):
        self._ray, self.plan = ray, plan
        self._actors = dict(enumerate(actors))
        self.infos = dict(enumerate(infos))
        self._started = len(self._actors)

    @classmethod
    def start(cls, ray: Any, options: JobOptions, image_shape: tuple[int, int, int], num_classes: int | None,
              threads: int | None = None, timeout_s: float = 600.0) -> RayPool:
        """Start ``options.workers`` workers (each loads the models once) and wait until all are ready."""
        available = ray.available_resources()
        plan = plan_workers(options.execution.device, options.cluster.workers, available.get("CPU", 0.0), available.get("GPU", 0.0),
                            threads)
        worker_options = options.replace(device=plan.device)
        actor_class = ray.remote(CertifyWorker)
        tag = secrets.token_hex(4)
        actors = [actor_class.options(num_cpus=plan.num_cpus, num_gpus=plan.num_gpus, max_restarts=0,
                                      scheduling_strategy="SPREAD", name=f"densepure-worker-{tag}-{i}").remote(
            worker_options, tuple(image_shape), num_classes, plan.threads) for i in range(plan.workers)]
        pool = cls(ray, actors, [], plan)
        try:
            pool.infos = dict(enumerate(pool._wait_ready(actors, timeout_s)))
        except BaseException:
            pool.close()
            raise
        return pool

    def _wait_ready(self, actors: Sequence[Any], timeout_s: float) -> list[WorkerInfo]:
        ray = self._ray
        refs = [actor.info.remote() for actor in actors]
        _, pending = ray.wait(refs, num_returns=len(refs), timeout=timeout_s)
        if pending:
            raise ClusterError(f"{len(pending)} of {len(refs)} workers did not start within {timeout_s:g} s: the "
                               f"cluster has {ray.available_resources()} free and {self.plan.describe()}; lower "
                               "--workers or add resources")
        infos = []
        for ref in refs:
            try:
                infos.append(ray.get(ref, timeout=timeout_s))
            except ray.exceptions.RayTaskError as err:
                _raise_user_error(err)
                raise
            except ray.exceptions.RayActorError as err:
                raise ClusterError(f"a worker could not start: {_last_line(err)} (see its Ray log)") from err
        if len({(info.num_classes, info.sigma) for info in infos}) != 1:
            raise ClusterError(f"workers disagree on the classes or sigma: {infos}")
        return infos

    def describe(self) -> str:
        return self.plan.describe()

    @property
    def live(self) -> list[int]:
        return list(self._actors)

    @property
    def started(self) -> int:
        return self._started

    def submit(self, worker: int, chunk: Chunk) -> Any:
        return getattr(self._actors[worker], chunk.method).remote(chunk.items)

    def wait(self, handles: Sequence[Any], timeout_s: float) -> list[Any]:
        ready, _ = self._ray.wait(list(handles), num_returns=1, timeout=timeout_s)
        return ready

    def result(self, handle: Any) -> Any:
        """The chunk's payload; WorkerLost if its worker died; the worker's user error (DensePureError) as is."""
        ray = self._ray
        try:
            return ray.get(handle, timeout=60.0)
        except ray.exceptions.RayTaskError as err:
            _raise_user_error(err)
            raise
        except (ray.exceptions.RayActorError, ray.exceptions.ObjectLostError) as err:
            raise WorkerLost(_last_line(err)) from err

    def discard(self, worker: int) -> bool:
        """Kill and forget ``worker``; False if it was gone already."""
        actor = self._actors.pop(worker, None)
        if actor is None:
            return False
        with suppress(Exception):  # a dead actor cannot be killed again; nothing to undo
            self._ray.kill(actor, no_restart=True)
        return True

    def close(self) -> None:
        for worker in list(self._actors):
            self.discard(worker)


def _raise_user_error(err: Exception) -> None:
    cause = getattr(err, "cause", None)
    if isinstance(cause, DensePureError):
        raise cause from None


def _last_line(err: Exception) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return lines[-1] if lines else type(err).__name__
