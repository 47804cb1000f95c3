"""TensorRT engines from exported ONNX graphs, built on this machine through TensorRT's Python API
(10.x and 11.x; never ``trtexec``), into the content-addressed :class:`~densepure.artifacts.cache.EngineCache`.

* Typing: ``STRONG`` (default) creates a strongly typed network (``NetworkDefinitionCreationFlag.
  STRONGLY_TYPED`` on 10.x; always on, flag ignored, on 11.x): TensorRT computes exactly the types in
  the graph, so the fp16 graph's float32 islands (GroupNorm, softmax, timestep embedding) are kept.
  ``WEAK_FP16`` (10.x only, float32 graphs) sets ``BuilderFlag.FP16`` and lets TensorRT choose,
  including for the islands: kept for JetPack 6 users who want it, not recommended.
* One optimization profile per batch bucket: ``min`` = previous bucket + 1, ``opt`` = ``max`` = bucket
  (the runtime pads each call up to its bucket, so every launch runs at an ``opt`` shape).
* A workspace cap (``MemoryPoolType.WORKSPACE``) for devices with little or unified memory (Jetson).
* ``BuilderFlag.TF32`` cleared (TensorRT sets it by default): float32 layers compute in float32, as the
  torch backend's ``fp32`` does (part of the cache key).
* A timing cache per machine, loaded before and saved after each build.
* INT8: the Q/DQ graphs of ``densepure export --precision int8`` are built strongly typed like fp16 ones
  (explicit quantization needs no precision flag); ``WEAK_FP16`` is refused for them.

``import tensorrt`` happens only inside functions; everything else here is importable anywhere.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from densepure.artifacts.buckets import DEFAULT_ENGINE_BUCKETS, bucket_profiles, normalize_buckets
from densepure.artifacts.cache import ENGINE_FILE, CacheEntry, EngineCache, cache_key
from densepure.artifacts.machine import import_tensorrt, machine_info, trt_version_tuple
from densepure.artifacts.manifest import (
    ArtifactFormat,
    ArtifactManifest,
    BatchProfile,
    EngineInfo,
    MachineInfo,
    TypingMode,
    manifest_path_for,
    verify_onnx,
)
from densepure.errors import ArtifactError, BackendError, ConfigError
from densepure.paths import replace_file
from densepure.precision import Precision

MIN_WORKSPACE = 1 << 20


@dataclass(frozen=True)
class BuildSettings:
    """How an engine is built. ``workspace_bytes=None`` leaves TensorRT's default (the GPU's memory)."""

    buckets: tuple[int, ...] = DEFAULT_ENGINE_BUCKETS
    workspace_bytes: int | None = None
    typing: TypingMode = TypingMode.STRONG
    optimization_level: int = 3

    def __post_init__(self) -> None:
        object.__setattr__(self, "buckets", normalize_buckets(self.buckets))
        object.__setattr__(self, "typing", TypingMode(self.typing))
        if self.workspace_bytes is not None and self.workspace_bytes < MIN_WORKSPACE:
            raise ConfigError(f"workspace cap must be >= {MIN_WORKSPACE} bytes (1 MiB), got {self.workspace_bytes}")
        if not 0 <= self.optimization_level <= 5:
            raise ConfigError(f"TensorRT builder optimization level must be in 0..5, got {self.optimization_level}")

    @property
    def profiles(self) -> tuple[BatchProfile, ...]:
        return bucket_profiles(self.buckets)

    def key_fields(self) -> dict[str, object]:
        """What the cache key covers (everything that changes the engine)."""
        return {"profiles": [dataclasses.astuple(p) for p in self.profiles], "workspace_bytes": self.workspace_bytes,
                "typing": self.typing.value, "optimization_level": self.optimization_level, "tf32": False}


@dataclass(frozen=True)
class BuildOutcome:
    entry: CacheEntry
    cache_hit: bool
    reason: str  # "hit", or why the cache missed
    build_seconds: float
    log: tuple[str, ...] = ()  # TensorRT's warnings and errors during the build


def check_typing_mode(settings: BuildSettings, machine: MachineInfo, onnx: ArtifactManifest) -> None:
    """``WEAK_FP16`` exists only before TensorRT 11 and only makes sense on a float32 graph."""
    if settings.typing is TypingMode.WEAK_FP16:
        if trt_version_tuple(machine.trt_version)[0] >= 11:
            raise ConfigError(f"TensorRT {machine.trt_version} has no precision flags (all networks are strongly "
                              "typed): export an fp16 graph (`densepure export --precision fp16`) and build it")
        if onnx.precision is not Precision.FP32:
            raise ConfigError("weak-fp16 typing applies to fp32 graphs; an fp16 graph is built strongly typed")


def _checked_onnx(path: Path) -> tuple[ArtifactManifest, str]:
    onnx_manifest = ArtifactManifest.read(manifest_path_for(path))
    if onnx_manifest.format is not ArtifactFormat.ONNX:
        raise ArtifactError(f"{path} is not an ONNX artifact")
    return onnx_manifest, verify_onnx(path, onnx_manifest)


def build_engine(onnx_path: str | os.PathLike, cache: EngineCache, settings: BuildSettings = BuildSettings(),
                 device: torch.device | str | int = 0) -> BuildOutcome:
    """The engine for the ONNX artifact at ``onnx_path`` on this machine: from the cache when its content
    key (ONNX sha256 + settings + TensorRT version + GPU + platform) is there and intact, else built."""
    path = Path(onnx_path)
    onnx_manifest, sha = _checked_onnx(path)
    machine = machine_info(device)
    check_typing_mode(settings, machine, onnx_manifest)
    key = cache_key(sha, settings.key_fields(), machine)
    found = cache.lookup(key)
    if found.entry is not None:
        return BuildOutcome(found.entry, True, found.reason, 0.0)
    start = time.perf_counter()
    index = device if isinstance(device, int) else (torch.device(device).index or 0)
    with torch.cuda.device(index):
        engine_bytes, log = _build_serialized(path, onnx_manifest, settings, cache.timing_cache_path(machine))
    precision = Precision.FP16 if settings.typing is TypingMode.WEAK_FP16 else onnx_manifest.precision
    info = EngineInfo(machine, settings.profiles, settings.workspace_bytes, settings.typing,
                      settings.optimization_level, hashlib.sha256(engine_bytes).hexdigest(), key)
    manifest = dataclasses.replace(onnx_manifest, format=ArtifactFormat.TENSORRT, precision=precision,
                                   file=ENGINE_FILE, external_data=(), engine=info)
    entry = cache.store(key, engine_bytes, manifest)
    return BuildOutcome(entry, False, found.reason, time.perf_counter() - start, log)


# TensorRT's ONNX parser reads only the opset-18 GroupNormalization (per-group scale) before 10.9
# (NVIDIA/TensorRT#4336; onnx-tensorrt 10.9 added opset 21). JetPack 6 ships 10.3: for it, GroupNorm is
# rewritten as Reshape -> InstanceNormalization -> Reshape -> per-channel Mul/Add, which every TensorRT
# 10.x parses and fuses. Remove when TensorRT < 10.9 (JetPack 6) is no longer supported.
NATIVE_GROUPNORM_SINCE = (10, 9)


def decompose_group_norm(model) -> int:
    """Rewrite every GroupNormalization (opset 21 semantics) of ``model`` in place as InstanceNormalization
    over ``(B, G, C/G * spatial)`` followed by the per-channel affine; returns how many were rewritten."""
    import numpy as np
    from onnx import helper, numpy_helper

    from densepure.export.onnx_typing import tensor_types

    values = tensor_types(model)
    nodes, count = [], 0
    for node in model.graph.node:
        if node.op_type != "GroupNormalization":
            nodes.append(node)
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        x, scale, bias = node.input[:3]
        info = values.get(x)
        rank, dtype = (len(info.shape.dim), info.elem_type) if info is not None else (0, 0)
        if rank < 3 or not dtype:
            raise ArtifactError(f"cannot decompose GroupNormalization {node.name}: unknown rank or type of {x}")
        groups, p = int(attrs["num_groups"]), f"{node.name}/gn"
        np_dtype = helper.tensor_dtype_to_np_dtype(dtype)
        model.graph.initializer.extend([
            numpy_helper.from_array(np.array([0, groups, -1], np.int64), f"{p}_grouped_shape"),
            numpy_helper.from_array(np.ones(groups, np_dtype), f"{p}_ones"),
            numpy_helper.from_array(np.zeros(groups, np_dtype), f"{p}_zeros"),
            numpy_helper.from_array(np.arange(1, rank - 1, dtype=np.int64), f"{p}_axes")])
        nodes += [
            helper.make_node("Reshape", [x, f"{p}_grouped_shape"], [f"{p}_grouped"], name=f"{p}_reshape_in"),
            helper.make_node("InstanceNormalization", [f"{p}_grouped", f"{p}_ones", f"{p}_zeros"], [f"{p}_normed"],
                             name=f"{p}_instance_norm", epsilon=float(attrs.get("epsilon", 1e-5))),
            helper.make_node("Shape", [x], [f"{p}_shape"], name=f"{p}_shape"),
            helper.make_node("Reshape", [f"{p}_normed", f"{p}_shape"], [f"{p}_restored"], name=f"{p}_reshape_out"),
            helper.make_node("Unsqueeze", [scale, f"{p}_axes"], [f"{p}_scale"], name=f"{p}_scale"),
            helper.make_node("Unsqueeze", [bias, f"{p}_axes"], [f"{p}_bias"], name=f"{p}_bias"),
            helper.make_node("Mul", [f"{p}_restored", f"{p}_scale"], [f"{p}_scaled"], name=f"{p}_mul"),
            helper.make_node("Add", [f"{p}_scaled", f"{p}_bias"], [node.output[0]], name=f"{p}_add")]
        count += 1
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return count


def _parse(trt, parser, path: Path, logger) -> None:
    """Parse ``path`` (by path: external data resolves beside it), with GroupNorm decomposed for old parsers."""
    target = path
    if trt_version_tuple(trt.__version__) < NATIVE_GROUPNORM_SINCE:
        import onnx

        model = onnx.load(str(path), load_external_data=False)  # weights stay where they are
        if decompose_group_norm(model):
            logger.messages.append(f"NOTE: GroupNormalization decomposed for TensorRT {trt.__version__} (< 10.9)")
            target = path.with_name(f".{path.stem}.trt{trt.__version__}.onnx")  # beside it: same external data
            onnx.save_model(model, str(target))
    try:
        if not parser.parse_from_file(str(target)):
            errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
            raise ArtifactError(f"TensorRT {trt.__version__} cannot parse {path}: {'; '.join(errors[:3])}")
    finally:
        if target != path:
            target.unlink(missing_ok=True)


def _collecting_logger(trt):
    class Collector(trt.ILogger):
        """Keeps TensorRT's warnings and errors for the build report instead of printing them."""

        kept = (trt.ILogger.Severity.INTERNAL_ERROR, trt.ILogger.Severity.ERROR, trt.ILogger.Severity.WARNING)

        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.messages: list[str] = []

        def log(self, severity, msg) -> None:
            if severity in self.kept:
                self.messages.append(f"{severity.name}: {msg}")

    return Collector()


def _build_serialized(path: Path, manifest: ArtifactManifest, settings: BuildSettings,
                      timing_path: Path) -> tuple[bytes, tuple[str, ...]]:
    trt = import_tensorrt()
    logger = _collecting_logger(trt)
    builder = trt.Builder(logger)
    flags = 0
    strong = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    if settings.typing is TypingMode.STRONG and strong is not None:
        flags |= 1 << int(strong)  # 10.x; 11.x keeps the flag for compatibility and is always strongly typed
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    _parse(trt, parser, path, logger)
    config = builder.create_builder_config()
    if settings.workspace_bytes is not None:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, settings.workspace_bytes)
    config.builder_optimization_level = settings.optimization_level
    tf32 = getattr(trt.BuilderFlag, "TF32", None)
    if tf32 is not None:  # on by default: float32 layers (fp32 graphs, fp16 graphs' islands) stay float32
        config.clear_flag(tf32)
    # layer names, types and precisions kept in the plan: `trtexec --loadEngine --dumpLayerInfo` shows which
    # layers of an int8 engine run in int8 (docs/jetson.md); costs a few KB per engine
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED
    if settings.typing is TypingMode.WEAK_FP16:
        config.set_flag(trt.BuilderFlag.FP16)
    for profile in settings.profiles:
        p = builder.create_optimization_profile()
        for spec in manifest.inputs:
            p.set_shape(spec.name, spec.with_batch(profile.min), spec.with_batch(profile.opt),
                        spec.with_batch(profile.max))
        config.add_optimization_profile(p)
    timing = config.create_timing_cache(timing_path.read_bytes() if timing_path.is_file() else b"")
    config.set_timing_cache(timing, False)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise BackendError(f"TensorRT {trt.__version__} failed to build {path}: "
                           + ("; ".join(logger.messages[-3:]) or "no message"))
    _write_atomically(timing_path, bytes(config.get_timing_cache().serialize()))
    return bytes(serialized), tuple(logger.messages)


def _write_atomically(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    replace_file(path, data)  # a fresh file beside it, renamed over it: never through a link
