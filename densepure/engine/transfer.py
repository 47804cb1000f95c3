"""Moving a batch's integer columns to the device without stopping the host.

A batch needs a dozen small index arrays on the device (slots, steps, positions, noise row words). Each
``torch.from_numpy(a).to(cuda)`` from pageable memory is a synchronous copy: it waits for every kernel
already queued, so the first one after a UNet launch makes the host wait for the whole forward. Here
all of a batch's arrays travel as one flat int64 buffer: packed on the host, staged in pinned memory,
copied with ``non_blocking=True`` and split into views on the device. PyTorch's pinned-memory allocator
keeps a staging buffer alive until its copy has completed, so a buffer is never overwritten in flight.

An admitted image takes the same road (:meth:`Uploader.copy_into`): staged in pinned memory and
copied asynchronously into its slot, counted as an upload.

The only host synchronisation left in an engine step is the wait for a classifier batch's labels,
read one step late (:mod:`densepure.engine.engine`). :class:`SyncCounter` counts both, so a test can
hold the step loop to that budget.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch


class SyncCounter:
    """How many uploads and host waits the executor made (reset freely; read by tests and benchmarks)."""

    def __init__(self) -> None:
        self.uploads = 0
        self.waits = 0


class Uploader:
    """One asynchronous host-to-device copy per call for a mapping of int64 arrays (any shapes)."""

    def __init__(self, device: torch.device, counter: SyncCounter | None = None):
        self.device = torch.device(device)
        self.counter = counter if counter is not None else SyncCounter()

    def __call__(self, arrays: Mapping[str, np.ndarray]) -> dict[str, torch.Tensor]:
        """The arrays as int64 tensors on the device, in one copy (no copy at all on the CPU)."""
        self.counter.uploads += 1
        parts = [np.ascontiguousarray(a, dtype=np.int64) for a in arrays.values()]
        flat = np.concatenate([p.reshape(-1) for p in parts]) if parts else np.zeros(0, dtype=np.int64)
        host = torch.from_numpy(flat)
        if self.device.type == "cuda":
            staged = torch.empty(host.shape, dtype=torch.int64, pin_memory=True)
            staged.copy_(host)
            moved = staged.to(self.device, non_blocking=True)
        else:
            moved = host
        out, offset = {}, 0
        for name, part in zip(arrays, parts, strict=True):
            out[name] = moved[offset:offset + part.size].view(part.shape)
            offset += part.size
        return out

    def copy_into(self, dst: torch.Tensor, src: torch.Tensor) -> None:
        """``dst.copy_(src)`` (cast to ``dst``'s dtype) without a host wait: a host ``src`` bound for a CUDA
        ``dst`` is staged in pinned memory first (counted as an upload)."""
        self.counter.uploads += 1
        if dst.device.type == "cuda" and src.device.type == "cpu":
            staged = torch.empty(src.shape, dtype=dst.dtype, pin_memory=True)
            staged.copy_(src)
            src = staged
        dst.copy_(src, non_blocking=True)
