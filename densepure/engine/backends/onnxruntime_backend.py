"""The onnxruntime backend: graphs exported by :mod:`densepure.export` behind the engine's seam.

An artifact is opened through its manifest (``<name>.onnx.manifest.json``): the manifest gives kind,
shapes and the ONNX content sha256, which is checked when the session is created (an edited or
truncated file is an :class:`ArtifactError`, not a wrong answer).

Execution providers are chosen explicitly (:class:`OrtProvider`); a requested provider that this
onnxruntime build lacks, or that fails to load (onnxruntime would silently fall back to CPU), is a
:class:`BackendError` naming the providers available. I/O (:class:`IoMode`):

* ``BINDING`` (default): torch tensors are bound by data pointer (``IOBinding.bind_input`` /
  ``bind_output`` with ``buffer_ptr``): no copies, on CPU as on CUDA. Outputs are preallocated torch
  tensors on the backend's device. On CUDA the session computes on the backend's own torch stream
  (``user_compute_stream``), ordered after the caller's current stream and before its next work.
* ``COPY``: ``session.run`` with numpy arrays (inputs copied to host, outputs back to the device).

Graph inputs/outputs are float32 whatever the graph's compute precision, so outputs are float32
tensors on the backend's device. INT8 (Q/DQ) graphs run with onnxruntime's int8 kernels on the CPU
provider (one graph optimizer off: :data:`~densepure.artifacts.quantized.ORT_INT8_DISABLED_OPTIMIZERS`).
"""

from __future__ import annotations

import enum
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from densepure.artifacts.manifest import (
    ArtifactFormat,
    ArtifactKind,
    ArtifactManifest,
    manifest_path_for,
    verify_graph_signature,
    verify_onnx,
)
from densepure.artifacts.quantized import ort_disabled_optimizers
from densepure.engine.backends.base import ClassifierBackend, DenoiserBackend
from densepure.errors import ArtifactError, BackendError, install_hint


class OrtProvider(enum.Enum):
    CPU = "CPUExecutionProvider"
    CUDA = "CUDAExecutionProvider"
    TENSORRT = "TensorrtExecutionProvider"


class IoMode(enum.Enum):
    BINDING = "binding"
    COPY = "copy"


def default_providers(device: torch.device) -> tuple[OrtProvider, ...]:
    """CPU for a CPU device; CUDA (CPU for the nodes CUDA lacks) for a CUDA device."""
    return (OrtProvider.CPU,) if device.type == "cpu" else (OrtProvider.CUDA, OrtProvider.CPU)


def select_providers(requested: Sequence[OrtProvider], available: Sequence[str], device: torch.device,
                     trt_cache_dir: str | os.PathLike | None = None) -> list[tuple[str, dict[str, str]]]:
    """(provider name, options) in priority order, after checking availability and the device.

    Raises :class:`BackendError` naming the available providers when one is missing, and when the
    providers do not fit ``device`` (a GPU provider for a CPU device or the reverse).
    """
    requested = tuple(OrtProvider(p) for p in requested)
    if not requested:
        raise BackendError("onnxruntime: at least one execution provider is required")
    missing = [p.value for p in requested if p.value not in available]
    if missing:
        raise BackendError(f"onnxruntime: {', '.join(missing)} requested but not available here; available: "
                           f"{', '.join(available) or 'none'} (CUDA/TensorRT need the onnxruntime-gpu package and "
                           "a GPU; see `densepure doctor`)")
    gpu = [p for p in requested if p is not OrtProvider.CPU]
    if device.type == "cpu" and gpu:
        raise BackendError(f"onnxruntime: {gpu[0].value} requested for a CPU device; use a cuda device or CPU only")
    if device.type == "cuda" and not gpu:
        raise BackendError("onnxruntime: a CUDA device needs CUDAExecutionProvider or TensorrtExecutionProvider")
    if device.type not in ("cpu", "cuda"):
        raise BackendError(f"onnxruntime: unsupported device {device}")
    index = str(device.index or 0)
    out = []
    for p in requested:
        options: dict[str, str] = {}
        if p is OrtProvider.CUDA:
            # the CUDA provider runs float32 MatMul/Conv in TF32 unless told not to (use_tf32 defaults to 1):
            # an fp32 graph must compute in float32, as the torch backend's fp32 does
            options = {"device_id": index, "use_tf32": "0"}
        elif p is OrtProvider.TENSORRT:
            options = {"device_id": index}
            if trt_cache_dir is not None:
                options.update(trt_engine_cache_enable="True", trt_engine_cache_path=str(trt_cache_dir),
                               trt_timing_cache_enable="True", trt_timing_cache_path=str(trt_cache_dir))
        out.append((p.value, options))
    return out


def read_onnx_manifest(path: str | os.PathLike, kind: ArtifactKind) -> ArtifactManifest:
    """The manifest of the ONNX artifact at ``path``, checked to be of ``kind``."""
    manifest = ArtifactManifest.read(manifest_path_for(path))
    if manifest.format is not ArtifactFormat.ONNX or manifest.kind is not kind:
        raise ArtifactError(f"{path} is a {manifest.kind.value} {manifest.format.value} artifact; "
                            f"expected a {kind.value} ONNX graph")
    return manifest


class _Session:
    """One onnxruntime session over a manifest-checked graph, with the chosen I/O mode."""

    def __init__(self, path: Path, manifest: ArtifactManifest, device: torch.device,
                 providers: Sequence[OrtProvider] | None, io_mode: IoMode, threads: int,
                 trt_cache_dir: str | os.PathLike | None):
        self.path, self.manifest, self.device = path, manifest, device
        self.providers = tuple(providers) if providers is not None else default_providers(device)
        self.io_mode, self.threads, self.trt_cache_dir = IoMode(io_mode), int(threads), trt_cache_dir
        self.session = None
        self.stream: torch.cuda.Stream | None = None

    def open(self) -> None:
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise BackendError(f"the onnxruntime backend needs onnxruntime: {install_hint('onnx')}") from exc
        verify_onnx(self.path, self.manifest)
        verify_graph_signature(self.path, self.manifest)
        chosen = select_providers(self.providers, ort.get_available_providers(), self.device, self.trt_cache_dir)
        if self.device.type == "cuda":
            self.stream = torch.cuda.Stream(self.device)
            for name, options in chosen:
                if name != OrtProvider.CPU.value:
                    options.update(has_user_compute_stream="1", user_compute_stream=str(self.stream.cuda_stream))
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        opts.intra_op_num_threads = self.threads
        try:
            self.session = ort.InferenceSession(str(self.path), opts, providers=[n for n, _ in chosen],
                                                provider_options=[o for _, o in chosen],
                                                disabled_optimizers=ort_disabled_optimizers(
                                                    self.manifest.precision.quantized))
        except Exception as exc:  # onnxruntime's own pybind error types
            raise BackendError(f"onnxruntime cannot open {self.path}: {str(exc).splitlines()[0]}") from exc
        loaded = self.session.get_providers()
        absent = [n for n, _ in chosen if n not in loaded]
        if absent:
            self.close()
            raise BackendError(f"onnxruntime did not load {', '.join(absent)} (it fell back to {', '.join(loaded)}); "
                               "check the CUDA/TensorRT libraries with `densepure doctor`")

    def close(self) -> None:
        self.session, self.stream = None, None

    def run(self, feeds: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """:meth:`_run` with onnxruntime's own errors turned into one :class:`BackendError` line."""
        try:
            return self._run(feeds)
        except Exception as exc:  # onnxruntime raises its own pybind error types
            if isinstance(exc, BackendError):
                raise
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise BackendError(f"onnxruntime failed to run {self.path.name}: {first}") from exc

    def _run(self, feeds: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Run on float32 contiguous ``feeds`` (on the device); outputs float32 on the device."""
        batch = int(next(iter(feeds.values())).shape[0])
        shapes = {spec.name: spec.with_batch(batch) for spec in self.manifest.outputs}
        if self.io_mode is IoMode.COPY:
            got = self.session.run(list(shapes), {n: t.detach().cpu().numpy() for n, t in feeds.items()})
            return {n: torch.from_numpy(a).to(self.device) for n, a in zip(shapes, got, strict=True)}
        outputs = {n: torch.empty(s, dtype=torch.float32, device=self.device) for n, s in shapes.items()}
        if self.stream is None:
            self._run_bound(feeds, outputs)
            return outputs
        current = torch.cuda.current_stream(self.device)
        self.stream.wait_stream(current)
        with torch.cuda.stream(self.stream):
            self._run_bound(feeds, outputs)
        current.wait_stream(self.stream)
        for t in (*feeds.values(), *outputs.values()):
            t.record_stream(self.stream)
        return outputs

    def _run_bound(self, feeds: dict[str, torch.Tensor], outputs: dict[str, torch.Tensor]) -> None:
        kind, index = self.device.type, self.device.index or 0
        binding = self.session.io_binding()
        for name, t in feeds.items():
            binding.bind_input(name, kind, index, np.float32, tuple(t.shape), t.data_ptr())
        for name, t in outputs.items():
            binding.bind_output(name, kind, index, np.float32, tuple(t.shape), t.data_ptr())
        self.session.run_with_iobinding(binding)


def _as_feed(x: torch.Tensor) -> torch.Tensor:
    return x.detach().to(torch.float32).contiguous()


class OnnxRuntimeDenoiser(DenoiserBackend):
    """An exported UNet (``x``, ``t`` -> ``eps``, ``v``) run by onnxruntime."""

    name = "onnxruntime"

    def __init__(self, path: str | os.PathLike, device: torch.device | str = "cpu",
                 providers: Sequence[OrtProvider] | None = None, io_mode: IoMode = IoMode.BINDING,
                 intra_op_threads: int = 0, trt_cache_dir: str | os.PathLike | None = None):
        manifest = read_onnx_manifest(path, ArtifactKind.UNET)
        _, c, h, w = manifest.input("x").shape
        if h != w:
            raise ArtifactError(f"{path}: the denoiser needs square images, the graph takes {h}x{w}")
        super().__init__(torch.device(device), int(c), int(h))
        self.manifest = manifest
        self._session = _Session(Path(path), manifest, self.device, providers, io_mode, intra_op_threads,
                                 trt_cache_dir)

    def _activate_impl(self) -> None:
        self._session.open()

    def _deactivate_impl(self) -> None:
        self._session.close()

    def _eps_and_var_impl(self, x: torch.Tensor, t_model: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self._session.run({"x": _as_feed(x), "t": _as_feed(t_model)})
        return out["eps"], out["v"]


class OnnxRuntimeClassifier(ClassifierBackend):
    """An exported classifier (preprocessing inside the graph): ``x`` in [-1, 1] -> ``logits``."""

    name = "onnxruntime"

    def __init__(self, path: str | os.PathLike, device: torch.device | str = "cpu",
                 providers: Sequence[OrtProvider] | None = None, io_mode: IoMode = IoMode.BINDING,
                 intra_op_threads: int = 0, trt_cache_dir: str | os.PathLike | None = None):
        manifest = read_onnx_manifest(path, ArtifactKind.CLASSIFIER)
        super().__init__(torch.device(device), int(manifest.outputs[0].shape[1]),
                         tuple(int(d) for d in manifest.input("x").shape[1:]))
        self.manifest = manifest
        self._session = _Session(Path(path), manifest, self.device, providers, io_mode, intra_op_threads,
                                 trt_cache_dir)

    def _activate_impl(self) -> None:
        self._session.open()

    def _deactivate_impl(self) -> None:
        self._session.close()

    def _logits_impl(self, x: torch.Tensor) -> torch.Tensor:
        return self._session.run({"x": _as_feed(x)})["logits"]
