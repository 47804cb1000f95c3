"""The TensorRT backend: engines built by :mod:`densepure.export.tensorrt_build`, on torch's CUDA streams.

Loading checks the engine's manifest against this machine first (TensorRT version, GPU name, compute
capability, platform: :func:`~densepure.artifacts.cache.read_engine`) and the engine bytes against their
sha256. Execution uses TensorRT's name-based API with torch tensors as buffers: one execution context
per optimization profile (= batch bucket), static input/output buffers per bucket bound once with
``set_input_shape`` + ``set_tensor_address``, and ``execute_async_v3`` on the backend's own torch CUDA
stream. With :attr:`GraphMode.CUDA_GRAPHS` (default) each bucket's ``execute_async_v3`` is captured
once into a ``torch.cuda.CUDAGraph`` after a warm-up run, and a call becomes: copy rows into the
bucket's static inputs, replay, copy rows out. A batch is split into chunks, each padded up to the
smallest bucket that holds it (:func:`plan_chunks`); rows are independent in these models (GroupNorm
is per sample), so padding rows never change real rows. No cuda-python is needed: torch provides the
stream, the memory and the graphs.

``import tensorrt`` happens only when a backend is activated; the planning helpers are pure.
"""

from __future__ import annotations

import enum
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from densepure.artifacts.buckets import pad_into, plan_chunks
from densepure.artifacts.cache import engine_file
from densepure.artifacts.manifest import ArtifactFormat, ArtifactKind, ArtifactManifest, manifest_path_for
from densepure.engine.backends.base import ClassifierBackend, DenoiserBackend
from densepure.engine.backends.graphs import CAPTURE_LOCK, CAPTURE_MODE
from densepure.errors import ArtifactError, BackendError


class GraphMode(enum.Enum):
    CUDA_GRAPHS = "cuda-graphs"
    EAGER = "eager"


def read_engine_manifest(path: str | os.PathLike, kind: ArtifactKind) -> tuple[Path, ArtifactManifest]:
    """(engine file, manifest) for an engine directory, ``.plan`` file or manifest, checked to be ``kind``."""
    p = engine_file(path)
    manifest = ArtifactManifest.read(manifest_path_for(p))
    if manifest.format is not ArtifactFormat.TENSORRT or manifest.kind is not kind:
        raise ArtifactError(f"{p} is a {manifest.kind.value} {manifest.format.value} artifact; expected a "
                            f"{kind.value} TensorRT engine")
    return p, manifest


_DTYPES = {"FLOAT": torch.float32, "HALF": torch.float16, "BF16": torch.bfloat16, "INT32": torch.int32,
           "INT64": torch.int64, "BOOL": torch.bool, "INT8": torch.int8, "UINT8": torch.uint8}


@dataclass
class _Bucket:
    size: int
    context: object
    inputs: dict[str, torch.Tensor]
    outputs: dict[str, torch.Tensor]
    graph: torch.cuda.CUDAGraph | None = None


class _EngineRunner:
    """A deserialized engine with one context, static buffers and (optionally) a CUDA graph per bucket."""

    def __init__(self, manifest: ArtifactManifest, engine_bytes: bytes, device: torch.device, mode: GraphMode):
        from densepure.artifacts.machine import import_tensorrt

        trt = import_tensorrt()
        self.manifest, self.device, self.mode = manifest, device, GraphMode(mode)
        self.runtime = trt.Runtime(trt.Logger(trt.Logger.ERROR))
        self.engine = self.runtime.deserialize_cuda_engine(engine_bytes)
        if self.engine is None:
            raise ArtifactError(f"TensorRT {trt.__version__} could not deserialize the engine: rebuild it here")
        names = {self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)}
        expected = {s.name for s in (*manifest.inputs, *manifest.outputs)}
        if names != expected:
            raise ArtifactError(f"engine tensors {sorted(names)} differ from its manifest's {sorted(expected)}")
        self.stream = torch.cuda.Stream(device)
        self.buckets = {p.max: self._bucket(k, p.max) for k, p in enumerate(manifest.engine.profiles)}

    def _bucket(self, profile: int, size: int) -> _Bucket:
        ctx = self.engine.create_execution_context()
        ctx.set_optimization_profile_async(profile, self.stream.cuda_stream)
        specs = {s.name: s for s in (*self.manifest.inputs, *self.manifest.outputs)}

        def buffer(name: str) -> torch.Tensor:
            dtype = _DTYPES[self.engine.get_tensor_dtype(name).name]
            t = torch.zeros(specs[name].with_batch(size), dtype=dtype, device=self.device)
            ctx.set_tensor_address(name, t.data_ptr())
            return t

        inputs = {s.name: buffer(s.name) for s in self.manifest.inputs}
        for name, t in inputs.items():
            if not ctx.set_input_shape(name, tuple(t.shape)):
                raise ArtifactError(f"engine rejects shape {tuple(t.shape)} for {name} in profile {profile}")
        bucket = _Bucket(size, ctx, inputs, {s.name: buffer(s.name) for s in self.manifest.outputs})
        with torch.cuda.stream(self.stream):
            self._execute(bucket)  # warm-up: TensorRT's shape-dependent setup must happen outside a capture
        self.stream.synchronize()
        if self.mode is GraphMode.CUDA_GRAPHS:
            bucket.graph = torch.cuda.CUDAGraph()
            with CAPTURE_LOCK, torch.cuda.graph(bucket.graph, stream=self.stream, capture_error_mode=CAPTURE_MODE):
                self._execute(bucket)  # one capture at a time in the process (graphs.py says why)
        return bucket

    def _execute(self, bucket: _Bucket) -> None:
        if not bucket.context.execute_async_v3(self.stream.cuda_stream):
            raise BackendError(f"TensorRT execute_async_v3 failed for batch bucket {bucket.size}")

    def run(self, feeds: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        rows = int(next(iter(feeds.values())).shape[0])
        out = {s.name: torch.empty(s.with_batch(rows), dtype=torch.float32, device=self.device)
               for s in self.manifest.outputs}
        current = torch.cuda.current_stream(self.device)
        self.stream.wait_stream(current)
        with torch.cuda.stream(self.stream):
            for chunk in plan_chunks(rows, tuple(sorted(self.buckets))):
                bucket = self.buckets[chunk.bucket]
                for name, t in feeds.items():
                    pad_into(bucket.inputs[name], t[chunk.start:chunk.stop])
                if bucket.graph is not None:
                    bucket.graph.replay()
                else:
                    self._execute(bucket)
                for name, t in out.items():
                    t[chunk.start:chunk.stop].copy_(bucket.outputs[name][: chunk.rows])
        current.wait_stream(self.stream)
        for t in (*feeds.values(), *out.values()):
            t.record_stream(self.stream)
        return out

    def close(self) -> None:
        self.stream.synchronize()
        self.buckets.clear()  # graphs and contexts before the engine that owns them
        self.engine = None
        self.runtime = None


class _TensorRTBackend:
    """Shared activation: machine check, sha check, deserialization (mixed into both seams)."""

    name = "tensorrt"

    def _init_engine(self, path: str | os.PathLike, kind: ArtifactKind, device: torch.device | str,
                     mode: GraphMode) -> ArtifactManifest:
        device = torch.device(device)
        if device.type != "cuda":
            raise BackendError(f"tensorrt: engines run on CUDA devices, got {device}")
        self.engine_path, manifest = read_engine_manifest(path, kind)
        self.mode, self.runner = GraphMode(mode), None
        return manifest

    def _activate_impl(self) -> None:
        from densepure.artifacts.cache import read_engine
        from densepure.artifacts.machine import machine_info

        manifest, data = read_engine(self.engine_path, machine_info(self.device))
        with torch.cuda.device(self.device):
            self.runner = _EngineRunner(manifest, data, self.device, self.mode)

    def _deactivate_impl(self) -> None:
        if self.runner is not None:
            self.runner.close()
        self.runner = None


class TensorRTDenoiser(_TensorRTBackend, DenoiserBackend):
    """A UNet engine (``x``, ``t`` -> ``eps``, ``v``, float32 at the boundary) behind the seam."""

    def __init__(self, path: str | os.PathLike, device: torch.device | str = "cuda",
                 mode: GraphMode = GraphMode.CUDA_GRAPHS):
        manifest = self._init_engine(path, ArtifactKind.UNET, device, mode)
        _, c, h, _ = manifest.input("x").shape
        DenoiserBackend.__init__(self, torch.device(device), int(c), int(h))
        self.manifest = manifest

    def _eps_and_var_impl(self, x: torch.Tensor, t_model: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.runner.run({"x": x, "t": t_model})
        return out["eps"], out["v"]


class TensorRTClassifier(_TensorRTBackend, ClassifierBackend):
    """A classifier engine (preprocessing inside): ``x`` in [-1, 1] -> ``logits`` float32."""

    def __init__(self, path: str | os.PathLike, device: torch.device | str = "cuda",
                 mode: GraphMode = GraphMode.CUDA_GRAPHS):
        manifest = self._init_engine(path, ArtifactKind.CLASSIFIER, device, mode)
        ClassifierBackend.__init__(self, torch.device(device), int(manifest.outputs[0].shape[1]),
                                   tuple(int(d) for d in manifest.input("x").shape[1:]))
        self.manifest = manifest

    def _logits_impl(self, x: torch.Tensor) -> torch.Tensor:
        return self.runner.run({"x": x})["logits"]
