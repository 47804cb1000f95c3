"""A content-addressed cache of TensorRT engines, and the checks made before loading one.

Key = sha256 of (ONNX content sha256, build settings, TensorRT version, GPU name, compute capability,
platform). An entry is ``<root>/engines/<key>/`` with ``engine.plan`` and ``engine.plan.manifest.json``;
it is a hit only if its manifest names the same key and the engine bytes hash to the sha256 the
manifest records (a truncated or replaced file is a miss, never a silent load). Entries are written
to a temporary directory and renamed into place, so readers never see half an entry.

Timing caches (TensorRT's measured tactic timings) are kept per machine under ``<root>/timing/``;
they speed up rebuilds and never change results.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from densepure.artifacts.manifest import ArtifactFormat, ArtifactManifest, EngineInfo, MachineInfo, manifest_path_for
from densepure.errors import ArtifactError
from densepure.hashing import file_sha256

ENGINE_FILE = "engine.plan"
REBUILD_HINT = "densepure build --onnx-dir DIR"


def cache_key(onnx_sha256: str, settings: Mapping[str, object], machine: MachineInfo) -> str:
    """Hex sha256 naming an engine built from ``onnx_sha256`` with ``settings`` on ``machine``."""
    material = {"onnx_sha256": onnx_sha256, "settings": dict(settings), "trt_version": machine.trt_version,
                "gpu_name": machine.gpu_name, "compute_capability": list(machine.compute_capability),
                "platform": machine.platform}
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode("utf-8")).hexdigest()


def require_same_machine(manifest: ArtifactManifest, machine: MachineInfo, where: str = "engine") -> EngineInfo:
    """Raise :class:`ArtifactError` unless ``manifest`` is a TensorRT engine built for ``machine``.

    TensorRT engines are specific to the TensorRT version, GPU model and platform they were built on;
    running one elsewhere fails or silently uses tactics tuned for another GPU.
    """
    if manifest.engine is None:
        raise ArtifactError(f"{where} is a {manifest.format.value} artifact, not a TensorRT engine")
    built = manifest.engine.machine
    diffs = built.differences(machine)
    if diffs:
        raise ArtifactError(
            f"{where} was built for {built.describe()}; this machine has {machine.describe()} "
            f"({'; '.join(diffs)}). Engines are tied to GPU, TensorRT version and platform: rebuild it here "
            f"with `{REBUILD_HINT}` (DIR: the exported ONNX directory)")
    return manifest.engine


@dataclass(frozen=True)
class CacheEntry:
    key: str
    directory: Path
    manifest: ArtifactManifest

    @property
    def engine_path(self) -> Path:
        return self.directory / ENGINE_FILE

    @property
    def manifest_path(self) -> Path:
        return manifest_path_for(self.engine_path)


@dataclass(frozen=True)
class CacheLookup:
    """The outcome of a lookup: a hit carries the entry; a miss says why."""

    key: str
    entry: CacheEntry | None
    reason: str

    @property
    def hit(self) -> bool:
        return self.entry is not None


class EngineCache:
    """Engines by content key under ``root`` (created on first store)."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    def entry_dir(self, key: str) -> Path:
        return self.root / "engines" / key

    def lookup(self, key: str) -> CacheLookup:
        directory = self.entry_dir(key)
        mpath = manifest_path_for(directory / ENGINE_FILE)
        if not mpath.is_file():
            return CacheLookup(key, None, "miss: no entry for this ONNX content, settings and machine")
        try:
            manifest = ArtifactManifest.read(mpath)
        except ArtifactError as exc:
            return CacheLookup(key, None, f"miss: unreadable manifest ({exc})")
        if manifest.engine is None or manifest.engine.cache_key != key:
            return CacheLookup(key, None, "miss: the entry's manifest names another key")
        engine = directory / ENGINE_FILE
        if not engine.is_file():
            return CacheLookup(key, None, "miss: the engine file is missing")
        actual = file_sha256(engine)
        if actual != manifest.engine.engine_sha256:
            return CacheLookup(key, None, f"miss: engine bytes changed (sha256 {actual[:12]}... != "
                                          f"{manifest.engine.engine_sha256[:12]}... recorded)")
        return CacheLookup(key, CacheEntry(key, directory, manifest), "hit")

    def store(self, key: str, engine_bytes: bytes, manifest: ArtifactManifest) -> CacheEntry:
        """Write ``engine_bytes`` and ``manifest`` (whose engine facts must name ``key``) atomically."""
        if manifest.engine is None or manifest.engine.cache_key != key:
            raise ArtifactError("the manifest stored in the cache must be a TensorRT manifest naming the cache key")
        if hashlib.sha256(engine_bytes).hexdigest() != manifest.engine.engine_sha256:
            raise ArtifactError("engine bytes do not match the manifest's engine_sha256")
        final = self.entry_dir(key)
        final.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{key[:12]}-", dir=final.parent))
        try:
            (staging / ENGINE_FILE).write_bytes(engine_bytes)
            manifest.write(manifest_path_for(staging / ENGINE_FILE))
            if final.exists():  # a stale or corrupt entry (lookup said miss): replace it
                shutil.rmtree(final)
            staging.rename(final)
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)
        return CacheEntry(key, final, manifest)

    def timing_cache_path(self, machine: MachineInfo) -> Path:
        """Where TensorRT's timing cache for ``machine`` lives (one per TensorRT version and GPU)."""
        tag = hashlib.sha256(machine.describe().encode("utf-8")).hexdigest()[:16]
        return self.root / "timing" / f"{tag}.cache"

    def built_from(self, onnx_sha256: str) -> list[CacheEntry]:
        """Entries whose manifest says they were built from this ONNX content, for any machine, by key.

        Reads manifests only (no engine hashing: :meth:`lookup` the entry chosen before loading it);
        entries with an unreadable manifest or one naming another key are left out.
        """
        base = self.root / "engines"
        if not base.is_dir():
            return []
        found = []
        for directory in sorted(d for d in base.iterdir() if d.is_dir() and not d.name.startswith(".")):
            try:
                manifest = ArtifactManifest.read(manifest_path_for(directory / ENGINE_FILE))
            except ArtifactError:
                continue
            if manifest.engine is not None and manifest.engine.cache_key == directory.name \
                    and manifest.onnx_sha256 == onnx_sha256:
                found.append(CacheEntry(directory.name, directory, manifest))
        return found

    def entries(self) -> list[CacheEntry]:
        """Valid entries (hash-checked), for listing and cleanup."""
        base = self.root / "engines"
        if not base.is_dir():
            return []
        found = (self.lookup(d.name) for d in sorted(base.iterdir()) if d.is_dir() and not d.name.startswith("."))
        return [r.entry for r in found if r.entry is not None]


def engine_file(path: str | os.PathLike) -> Path:
    """The engine file named by ``path``: an entry directory, the ``.plan`` itself or its manifest."""
    p = Path(path)
    if p.is_dir():
        p = p / ENGINE_FILE
    if p.name.endswith(".manifest.json"):
        p = p.with_name(p.name[: -len(".manifest.json")])
    return p


def read_engine(path: str | os.PathLike, machine: MachineInfo) -> tuple[ArtifactManifest, bytes]:
    """Read an engine (its directory, the ``.plan`` or its manifest) after checking it fits ``machine``.

    Raises :class:`ArtifactError` if the manifest is missing, names another GPU/TensorRT/platform, or the
    engine bytes do not hash to the recorded sha256.
    """
    p = engine_file(path)
    manifest = ArtifactManifest.read(manifest_path_for(p))
    if manifest.format is not ArtifactFormat.TENSORRT:
        raise ArtifactError(f"{p} is a {manifest.format.value} artifact, not a TensorRT engine")
    engine = require_same_machine(manifest, machine, where=str(p))
    if not p.is_file():
        raise ArtifactError(f"engine file missing: {p} (rebuild with `{REBUILD_HINT}`)")
    data = p.read_bytes()
    actual = hashlib.sha256(data).hexdigest()
    if actual != engine.engine_sha256:
        raise ArtifactError(f"{p} does not match its manifest (sha256 {actual[:12]}... != "
                            f"{engine.engine_sha256[:12]}...): rebuild with `{REBUILD_HINT}`")
    return manifest, data
