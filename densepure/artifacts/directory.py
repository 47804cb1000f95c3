"""An export directory: the ONNX graphs ``densepure export`` wrote, found through their manifests.

Layout (``densepure export --out DIR``)::

    unet-fp32.onnx        unet-fp32.onnx.manifest.json        (+ unet-fp32.onnx.data above ~1.8 GB)
    unet-fp16.onnx        unet-fp16.onnx.manifest.json
    classifier-fp32.onnx  classifier-fp32.onnx.manifest.json
    classifier-fp16.onnx  classifier-fp16.onnx.manifest.json

A graph without its manifest does not exist for densepure; a manifest is trusted only after the graph's
content matches its sha256 (:func:`~densepure.artifacts.manifest.verify_onnx`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from densepure.artifacts.manifest import ArtifactFormat, ArtifactKind, ArtifactManifest
from densepure.errors import ArtifactError
from densepure.paths import check_input
from densepure.precision import Precision

MANIFEST_SUFFIX = ".onnx.manifest.json"


def exported_artifacts(onnx_dir: str | os.PathLike, kinds: Sequence[ArtifactKind] | None = None,
                       precisions: Sequence[Precision] | None = None) -> list[tuple[Path, ArtifactManifest]]:
    """The ONNX artifacts of an export directory, by their manifests, optionally filtered."""
    base = Path(onnx_dir)
    if not os.path.lexists(base):
        raise ArtifactError(f"export directory not found: {base} (run `densepure export --out {base}` first)")
    check_input(base, "the export directory", file=False, directory=True)
    found = []
    for mpath in sorted(base.glob(f"*{MANIFEST_SUFFIX}")):
        manifest = ArtifactManifest.read(mpath)
        if manifest.format is not ArtifactFormat.ONNX:
            continue
        if (kinds is None or manifest.kind in kinds) and (precisions is None or manifest.precision in precisions):
            found.append((base / manifest.file, manifest))
    return found


def find_onnx(directory: Path, kind: ArtifactKind, precision: Precision) -> tuple[Path, ArtifactManifest]:
    """The one ONNX graph of ``kind`` and ``precision`` in an export directory, by its manifest."""
    base = Path(directory)
    graphs = exported_artifacts(base, (kind,))
    matches = [(p, m) for p, m in graphs if m.precision is precision]
    if not matches:
        have = sorted({m.precision.value for _, m in graphs})
        extra = f" (it has {kind.value} graphs in {', '.join(have)}: run those with --precision {have[0]})" if have else ""
        raise ArtifactError(f"no {precision.value} {kind.value} ONNX graph in {base}{extra}; or write one with "
                            f"`densepure export --precision {precision.value} --out {base}`")
    if len(matches) > 1:
        names = ", ".join(p.name for p, _ in matches)
        raise ArtifactError(f"{len(matches)} {precision.value} {kind.value} graphs in {base} ({names}): keep one")
    return matches[0]
