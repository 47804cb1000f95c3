"""Artifact manifests: what an exported ONNX graph or a TensorRT engine is, where it came from, and
(for engines) which machine it was built for.

A manifest is a frozen dataclass written next to its artifact as JSON. Loaders trust an artifact only
through its manifest: no manifest, no artifact. Content is identified by sha256 (of the ONNX bytes,
external data included, and of the serialized engine), never by a file's name or existence.

Shapes use the string ``"batch"`` for the dynamic batch axis; every other dimension is static.
"""

from __future__ import annotations

import enum
import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from densepure.artifacts.quantized import CalibrationInfo
from densepure.errors import ArtifactError, install_hint
from densepure.paths import replace_file
from densepure.precision import Precision

FORMAT_VERSION = 1
BATCH = "batch"
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class ArtifactKind(enum.Enum):
    UNET = "unet"
    CLASSIFIER = "classifier"


class ArtifactFormat(enum.Enum):
    ONNX = "onnx"
    TENSORRT = "tensorrt"


class TypingMode(enum.Enum):
    """How TensorRT chooses layer types: exactly the graph's (``strong``), or fp16 where it likes
    (``weak-fp16``: ``BuilderFlag.FP16`` on an fp32 graph, TensorRT 10.x only)."""

    STRONG = "strong"
    WEAK_FP16 = "weak-fp16"


def _is_sha256(value: object) -> bool:
    return isinstance(value, str) and bool(_SHA256.match(value))


@dataclass(frozen=True)
class TensorSpec:
    """A graph input or output: ``dtype`` as numpy names it (``float32``), ``shape`` with ``"batch"``."""

    name: str
    dtype: str
    shape: tuple[int | str, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "shape", tuple(self.shape))
        if not self.name:
            raise ArtifactError("a tensor spec needs a name")
        for d in self.shape:
            if not (d == BATCH or (isinstance(d, int) and d >= 1)):
                raise ArtifactError(f"tensor {self.name!r}: dimensions must be >= 1 or {BATCH!r}, got {self.shape}")

    def with_batch(self, batch: int) -> tuple[int, ...]:
        """The concrete shape for ``batch`` rows."""
        return tuple(batch if d == BATCH else int(d) for d in self.shape)


@dataclass(frozen=True)
class SourceInfo:
    """Where the weights came from: a preset and the checkpoint's sha256, or a classifier spec; for a
    classifier, the ``--resize`` baked into its graph (None: not recorded, e.g. a graph exported before
    the flag existed, or a library classifier whose preprocessing was kept as given)."""

    preset: str | None = None
    checkpoint_sha256: str | None = None
    description: str = ""
    torch_version: str = ""
    resize: str | None = None

    def __post_init__(self) -> None:
        if self.checkpoint_sha256 is not None and not _is_sha256(self.checkpoint_sha256):
            raise ArtifactError(f"checkpoint_sha256 must be 64 hex digits, got {self.checkpoint_sha256!r}")


@dataclass(frozen=True)
class BatchProfile:
    """One TensorRT optimization profile over the batch axis (``min <= opt <= max``)."""

    min: int
    opt: int
    max: int

    def __post_init__(self) -> None:
        if not 1 <= self.min <= self.opt <= self.max:
            raise ArtifactError(f"a batch profile needs 1 <= min <= opt <= max, got {self.min}/{self.opt}/{self.max}")


@dataclass(frozen=True)
class MachineInfo:
    """What a TensorRT engine is tied to: TensorRT version, GPU, compute capability and platform."""

    trt_version: str
    gpu_name: str
    compute_capability: tuple[int, int]
    platform: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "compute_capability", tuple(int(v) for v in self.compute_capability))
        if len(self.compute_capability) != 2:
            raise ArtifactError(f"compute_capability must be (major, minor), got {self.compute_capability}")

    def describe(self) -> str:
        major, minor = self.compute_capability
        return f"TensorRT {self.trt_version} on {self.gpu_name} (sm_{major}{minor}, {self.platform})"

    def differences(self, other: "MachineInfo") -> tuple[str, ...]:
        """Human-readable fields in which ``other`` differs from this machine (empty: compatible)."""
        out = []
        if self.trt_version != other.trt_version:
            out.append(f"TensorRT version {self.trt_version} vs {other.trt_version}")
        if self.gpu_name != other.gpu_name:
            out.append(f"GPU {self.gpu_name!r} vs {other.gpu_name!r}")
        if self.compute_capability != other.compute_capability:
            mine, theirs = ("sm_{}{}".format(*m.compute_capability) for m in (self, other))
            out.append(f"compute capability {mine} vs {theirs}")
        if self.platform != other.platform:
            out.append(f"platform {self.platform} vs {other.platform}")
        return tuple(out)


@dataclass(frozen=True)
class EngineInfo:
    """Build facts of a TensorRT engine (absent for ONNX artifacts)."""

    machine: MachineInfo
    profiles: tuple[BatchProfile, ...]
    workspace_bytes: int | None
    typing: TypingMode
    optimization_level: int
    engine_sha256: str
    cache_key: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "profiles", tuple(self.profiles))
        object.__setattr__(self, "typing", TypingMode(self.typing))
        if not self.profiles:
            raise ArtifactError("an engine needs at least one optimization profile")
        if self.workspace_bytes is not None and self.workspace_bytes < 1:
            raise ArtifactError(f"workspace_bytes must be >= 1 or None, got {self.workspace_bytes}")
        if not (_is_sha256(self.engine_sha256) and _is_sha256(self.cache_key)):
            raise ArtifactError("engine_sha256 and cache_key must be 64 hex digits")

    @property
    def buckets(self) -> tuple[int, ...]:
        """The batch sizes the engine runs at (each profile's ``max``), ascending."""
        return tuple(sorted(p.max for p in self.profiles))


@dataclass(frozen=True)
class ArtifactManifest:
    """Everything a loader needs to trust and use an artifact.

    ``file``: the artifact's file name, relative to the manifest's directory; ``external_data``: the
    ONNX external-data files beside it (models over ~2 GB), included in ``onnx_sha256``. For an engine,
    ``onnx_sha256`` names the ONNX content it was built from.
    """

    kind: ArtifactKind
    format: ArtifactFormat
    precision: Precision
    opset: int
    onnx_sha256: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    source: SourceInfo
    file: str
    external_data: tuple[str, ...] = ()
    engine: EngineInfo | None = None
    format_version: int = FORMAT_VERSION
    notes: tuple[str, ...] = field(default=())
    export_key: str | None = None  # sha256 of what the ONNX graph was made from (weights, precision, exporter)
    calibration: CalibrationInfo | None = None  # INT8 only: what the Q/DQ scales were computed from

    def __post_init__(self) -> None:
        for name, enum_type in (("kind", ArtifactKind), ("format", ArtifactFormat), ("precision", Precision)):
            object.__setattr__(self, name, enum_type(getattr(self, name)))
        if not self.precision.exportable:
            raise ArtifactError(f"artifacts are fp32, fp16 or int8, got precision {self.precision.value}")
        if self.precision.quantized != (self.calibration is not None):
            need = "need a" if self.precision.quantized else "have no"
            raise ArtifactError(f"{self.precision.value} artifacts {need} calibration record: export it again "
                                "(`densepure export ...`)")
        for name in ("inputs", "outputs", "external_data", "notes"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        if self.opset < 1:
            raise ArtifactError(f"opset must be >= 1, got {self.opset}")
        if not _is_sha256(self.onnx_sha256):
            raise ArtifactError(f"onnx_sha256 must be 64 hex digits, got {self.onnx_sha256!r}")
        if self.export_key is not None and not _is_sha256(self.export_key):
            raise ArtifactError(f"export_key must be 64 hex digits, got {self.export_key!r}")
        if not self.inputs or not self.outputs:
            raise ArtifactError("a manifest needs at least one input and one output")
        if (self.format is ArtifactFormat.TENSORRT) != (self.engine is not None):
            raise ArtifactError("engine facts are required for TensorRT artifacts and only for them")
        if self.format_version != FORMAT_VERSION:
            raise ArtifactError(f"manifest format {self.format_version} is not supported (this densepure reads "
                                f"{FORMAT_VERSION}): export or build the artifact again")

    def input(self, name: str) -> TensorSpec:
        for spec in self.inputs:
            if spec.name == name:
                return spec
        names = [s.name for s in self.inputs]
        raise ArtifactError(f"{self.kind.value} artifact has no input {name!r}; inputs: {names}")

    def to_json(self) -> str:
        record = asdict(self)
        if record["calibration"] is None:  # float artifacts: the same bytes as before INT8 existed
            del record["calibration"]
        return json.dumps(_encode(record), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str, source: str = "manifest") -> "ArtifactManifest":
        try:
            raw = json.loads(text)
            engine = raw.pop("engine", None)
            calibration = raw.pop("calibration", None)
            if calibration is not None:
                calibration = CalibrationInfo(**calibration)
            if engine is not None:
                engine = EngineInfo(
                    machine=MachineInfo(**engine.pop("machine")),
                    profiles=tuple(BatchProfile(**p) for p in engine.pop("profiles")), **engine)
            return cls(
                inputs=tuple(TensorSpec(**s) for s in raw.pop("inputs")),
                outputs=tuple(TensorSpec(**s) for s in raw.pop("outputs")),
                source=SourceInfo(**raw.pop("source")), engine=engine, calibration=calibration, **raw)
        except ArtifactError as exc:
            raise ArtifactError(f"{source}: {exc}") from exc
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise ArtifactError(f"{source} is not a valid densepure manifest ({type(exc).__name__}: {exc})") from exc

    def write(self, path: str | Path) -> Path:
        """Write the manifest at ``path``: a new file beside it renamed over it (a reader never sees half a
        manifest; a link at the path, or at any temporary name, is never written through)."""
        p = Path(path)
        replace_file(p, self.to_json().encode("utf-8"))
        return p

    @classmethod
    def read(cls, path: str | Path) -> "ArtifactManifest":
        p = Path(path)
        if not p.is_file():
            raise ArtifactError(f"manifest not found: {p} (export or build the artifact first: `densepure export ...`)")
        return cls.from_json(p.read_text(encoding="utf-8"), source=str(p))


def _encode(value: Any) -> Any:
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, dict):
        return {k: _encode(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_encode(v) for v in value]
    return value


def manifest_path_for(artifact: str | Path) -> Path:
    """The manifest beside an artifact: ``unet-fp16.onnx`` -> ``unet-fp16.onnx.manifest.json``."""
    p = Path(artifact)
    return p.with_name(p.name + ".manifest.json")


def onnx_sha256(path: str | Path, external: Sequence[str] = ()) -> str:
    """sha256 over an ONNX file then each of its external data files (name and bytes), streamed."""
    p = Path(path)
    h = hashlib.sha256()
    for name in (p.name, *external):
        h.update(name.encode("utf-8") + b"\0")
        with open(p.parent / name, "rb") as f:
            while block := f.read(1 << 20):
                h.update(block)
    return h.hexdigest()


def verify_onnx(path: str | Path, manifest: "ArtifactManifest") -> str:
    """The sha256 of the ONNX graph at ``path`` (external data included), checked against its manifest.

    The one place an ONNX artifact's content is checked before it is trusted: an edited, truncated or
    swapped file is an :class:`ArtifactError` naming the fix, never a wrong answer.
    """
    p = Path(path)
    try:
        sha = onnx_sha256(p, manifest.external_data)
    except OSError as exc:
        raise ArtifactError(f"cannot read the exported graph {p}: {exc.strerror or exc}; export it again "
                            "(`densepure export ...`)") from exc
    if sha != manifest.onnx_sha256:
        raise ArtifactError(f"{p} does not match its manifest's sha256 ({sha[:12]}... != "
                            f"{manifest.onnx_sha256[:12]}...): export it again (`densepure export ...`)")
    return sha


_ONNX_FLOAT = 1  # onnx.TensorProto.FLOAT


def verify_graph_signature(path: str | Path, manifest: "ArtifactManifest") -> None:
    """:class:`ArtifactError` unless the ONNX graph at ``path`` has the manifest's inputs and outputs (names,
    ranks, static sizes, float32 at the boundary). Reads the graph's structure only (no weights), so a graph
    swapped together with its manifest's sha256 is refused before anything runs."""
    try:
        import onnx
    except ImportError as exc:
        raise ArtifactError(f"reading exported graphs needs 'onnx': {install_hint('onnx')}") from exc
    try:
        graph = onnx.load(str(path), load_external_data=False).graph
    except Exception as exc:  # protobuf's DecodeError and onnx's own errors
        raise ArtifactError(f"{path} is not a readable ONNX graph ({type(exc).__name__}): export it again") from exc
    initializers = {i.name for i in graph.initializer}
    for kind, got, want in (("inputs", [i for i in graph.input if i.name not in initializers], manifest.inputs),
                            ("outputs", list(graph.output), manifest.outputs)):
        problem = _signature_problem(kind, got, want)
        if problem:
            raise ArtifactError(f"{path} is not the graph its manifest describes ({problem}): export it again "
                                "(`densepure export ...`)")


def _signature_problem(kind: str, got, want) -> str | None:
    if [g.name for g in got] != [w.name for w in want]:
        return f"{kind} {[g.name for g in got]} instead of {[w.name for w in want]}"
    for g, w in zip(got, want, strict=True):
        tensor = g.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else BATCH for d in tensor.shape.dim]
        if len(dims) != len(w.shape) or any(a != b for a, b in zip(dims[1:], w.shape[1:], strict=False)):
            return f"{g.name} has shape {dims}, the manifest says {list(w.shape)}"
        if tensor.elem_type != _ONNX_FLOAT:
            return f"{g.name} is not float32"
    return None
