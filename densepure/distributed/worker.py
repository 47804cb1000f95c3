"""A cluster worker: one engine on one device, built once, fed chunks by the driver.

:class:`CertifyWorker` is a plain class; the driver makes it a Ray actor (:mod:`densepure.distributed.cluster`)
and tests call it in process. It loads the models with :func:`~densepure.certify.job.build_engine`, the
function a single-process job uses, from the same options (the seed included: drawn once on the driver),
so every worker runs exactly the same models and noise.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from densepure.certify.job import JobOptions, build_engine
from densepure.certify.runner import certify_images
from densepure.certify.tasks import ImageResult
from densepure.distributed.work import DrawPart, PartLabels, RangeLabels, WholeImage
from densepure.engine.engine import ImageRequest
from densepure.errors import DensePureError


@dataclass(frozen=True)
class WorkerInfo:
    """Where a worker runs and what its engine says (the driver checks that all workers agree)."""

    host: str
    pid: int
    device: str
    num_classes: int
    sigma: float

    def describe(self) -> str:
        return f"{self.host}:{self.pid} on {self.device}"


class CertifyWorker:
    """Certifies whole images (:meth:`certify`) or samples draw ranges (:meth:`sample`) with one engine.

    ``options.execution.device`` is the worker's own device (the driver replaces ``--device``: "cuda" is the GPU
    Ray assigned to this worker). A user error while loading the models (a missing checkpoint on this
    node, say) is kept and raised by :meth:`info`, so the driver reports it as one line.
    """

    def __init__(self, options: JobOptions, image_shape: tuple[int, int, int], num_classes: int | None,
                 threads: int):
        torch.set_num_threads(max(1, int(threads)))
        self._task, self._seed, self._prefixes = options.task(), int(options.sampling.seed), options.sampling.also_chains
        self._error: DensePureError | None = None
        self._engine = None
        try:
            self._engine = build_engine(options, image_shape, num_classes)
            self._engine.__enter__()  # backends stay active (graphs captured, sessions open) for the worker's life
        except DensePureError as exc:
            self._error = exc

    def info(self) -> WorkerInfo:
        if self._error is not None:
            raise self._error
        engine = self._engine
        return WorkerInfo(socket.gethostname(), os.getpid(), str(engine.device), int(engine.num_classes),
                          float(engine.smoothing.sigma))

    def certify(self, items: Sequence[WholeImage]) -> list[ImageResult]:
        """The results of whole images, in completion order (the single-process runner's code)."""
        self.info()
        shipped = _ShippedImages(items)
        with torch.inference_mode():
            return list(certify_images(self._engine, shipped, [item.idx for item in items], self._task, self._seed,
                                       self._prefixes))

    def sample(self, parts: Sequence[DrawPart]) -> list[PartLabels]:
        """The label of every draw of each part's ranges (and of its chain prefixes)."""
        self.info()
        engine = self._engine
        requests = [ImageRequest(n, _tensor(part.image), RangeLabels(engine.num_classes, part.ranges, self._prefixes),
                                 self._seed, noise_id=part.idx) for n, part in enumerate(parts)]
        start = time.perf_counter()
        with torch.inference_mode():
            policies = {request.key: request.policy for request in engine.run(requests)}
        share = (time.perf_counter() - start) / max(1, len(parts))  # the parts ran together: equal shares
        return [policies[n].labelled(part.key, share) for n, part in enumerate(parts)]

    def close(self) -> None:
        if self._engine is not None:
            self._engine.__exit__(None, None, None)
            self._engine = None


class _ShippedImages:
    """The images of a chunk as a :class:`~densepure.data.datasets.Dataset` keyed by dataset index."""

    name = "shipped"
    num_classes = None

    def __init__(self, items: Sequence[WholeImage]):
        self._items = {item.idx: item for item in items}

    def __len__(self) -> int:
        return len(self._items)

    def __getitem__(self, idx: int) -> tuple[torch.Tensor, int]:
        item = self._items[idx]
        return _tensor(item.image), item.label


def _tensor(image: np.ndarray) -> torch.Tensor:
    # arrays from Ray's object store are read-only; the engine gets its own copy
    return torch.from_numpy(np.array(image, dtype=np.float32, copy=True))

