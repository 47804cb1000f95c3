"""Batch-size buckets and CUDA graphs for the torch backends.

A model call of ``B`` rows runs at the smallest bucket ``>= B``: the input is copied into the
bucket's static buffer, rows ``B..bucket-1`` are padding, and only rows ``0..B-1`` of the output
are returned (each row of a UNet or classifier depends only on its own input row, so padding never
reaches a result). On CUDA each bucket is captured once as a CUDA graph (all buckets share one
memory pool, largest captured first) and a call is one ``replay``; on CPU the same padding code runs
eagerly, so the bucket logic is tested without a GPU.

Two CUDA rules the engine depends on:

* **One capture stream per** :class:`BucketedCall`. PyTorch keys the cuBLAS workspace by (handle,
  stream), and a captured GEMM keeps the workspace address of the stream it was captured on. Graphs
  captured on one shared stream (``torch.cuda.graph``'s default) would share one workspace, and the
  engine replays the UNet's graph on the main stream while the classifier's runs on a side stream:
  two GEMMs at once could overwrite each other's scratch space and return wrong values silently.
  The buckets of one call replay one after another, so they may share their call's stream.
* **A size is captured once.** Re-capturing on every activation (every ``Engine.run``) would cost
  a capture per bucket per run, and destroying a graph can release the cuBLAS workspace that live
  graphs captured on the same stream still use (pytorch/pytorch#193402, open 2026-08): graphs live
  as long as their :class:`BucketedCall`.

Bucket sizes come from the device's free memory (:mod:`densepure.engine.memory`).

Several engines in one process (a server with one engine loop per GPU, :mod:`densepure.serve.devices`)
capture from several threads: captures take :data:`CAPTURE_LOCK` (one at a time in the process) and run
in CUDA's ``thread_local`` capture mode, so that another thread's synchronising calls (an engine step's
copy of its labels to the host) are not refused while this thread captures. With one engine per process,
nothing else calls CUDA during a capture and the mode changes nothing.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence

import torch

from densepure.artifacts.buckets import pad_into, pick_bucket
from densepure.errors import BackendError

Fn = Callable[..., tuple[torch.Tensor, ...]]
CAPTURE_LOCK = threading.Lock()  # one CUDA graph capture at a time in this process (module docstring)
CAPTURE_MODE = "thread_local"


class BucketedCall:
    """Run ``fn(*inputs) -> tuple of tensors`` at bucketed batch sizes (CUDA graphs on CUDA).

    ``example`` gives each input's per-row shape and dtype (a tensor with any batch size). Inputs
    must match them; outputs are float32 slices of the first ``B`` rows (copies when graphed, since
    the next replay overwrites the static outputs).
    """

    def __init__(self, fn: Fn, example: Sequence[torch.Tensor], buckets: Sequence[int], device: torch.device,
                 graphs: bool):
        if graphs and device.type != "cuda":
            raise BackendError(f"CUDA graphs need a CUDA device, not {device}")
        self.fn, self.device, self.graphs = fn, torch.device(device), graphs
        self.buckets = tuple(sorted(int(b) for b in buckets))
        self.row_specs = [(tuple(t.shape[1:]), t.dtype) for t in example]
        self.static_in: dict[int, list[torch.Tensor]] = {}
        self.static_out: dict[int, tuple[torch.Tensor, ...]] = {}
        self.captured: dict[int, torch.cuda.CUDAGraph] = {}
        self.pool = None
        # this call's own capture (and warm-up) stream: its own cuBLAS workspace (module docstring)
        self.stream = torch.cuda.Stream(self.device) if graphs else None

    def _buffers(self, size: int) -> list[torch.Tensor]:
        if size not in self.static_in:
            self.static_in[size] = [torch.zeros((size, *shape), dtype=dtype, device=self.device)
                                    for shape, dtype in self.row_specs]
        return self.static_in[size]

    def capture_all(self) -> None:
        """Capture every bucket not captured yet, largest first (so smaller graphs reuse the pool's
        memory). Captured graphs are kept: calling this again (each activation does) captures nothing."""
        if self.graphs:
            for size in sorted(self.buckets, reverse=True):
                if size not in self.captured:
                    self._capture(size)

    def _capture(self, size: int) -> None:
        with CAPTURE_LOCK, torch.cuda.device(self.device):  # one capture at a time; this call's device
            self._capture_on_device(size)

    def _capture_on_device(self, size: int) -> None:
        inputs = self._buffers(size)
        stream = self.stream
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream), torch.inference_mode():
            for _ in range(2):  # warm-up outside the graph: lazy init, cuDNN autotuning, compiles
                self.fn(*inputs)
        torch.cuda.current_stream(self.device).wait_stream(stream)
        if self.pool is None:
            self.pool = torch.cuda.graph_pool_handle()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool, stream=stream, capture_error_mode=CAPTURE_MODE), \
                torch.inference_mode():
            self.static_out[size] = tuple(self.fn(*inputs))
        self.captured[size] = graph

    def __call__(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        rows = int(inputs[0].shape[0])
        size = pick_bucket(self.buckets, rows)
        if not self.graphs and size == rows:
            return tuple(out.float() for out in self.fn(*inputs))
        static = self._buffers(size)
        for buf, x in zip(static, inputs, strict=True):
            pad_into(buf, x)
        if not self.graphs:
            return tuple(out[:rows].float() for out in self.fn(*static))
        if size not in self.captured:
            self._capture(size)
        self.captured[size].replay()
        return tuple(out[:rows].to(torch.float32, copy=True) for out in self.static_out[size])
