"""INT8 artifacts: what their activation scales were calibrated on, and what running them needs.

An INT8 graph is the float graph with QuantizeLinear/DequantizeLinear (Q/DQ) pairs whose scales come
from the activations of one pipeline: noisy starts at ``sigma``, each reverse step's ``x_t`` at its own
timestep, and the denoised images the classifier sees (:mod:`densepure.export.int8`). The scales are
right for that pipeline only, so the manifest records it (:class:`CalibrationInfo`) and a job whose
pipeline differs is refused (:func:`calibration_mismatch`): another ``sigma`` moves every activation
range, and a timestep the calibration never saw gives the UNet inputs and embeddings it was not
calibrated on. A job may run a subset of the calibrated timesteps (one-step denoising at ``round(t*)``
is the first step of DensePure's grid at the same sigma).

An INT8 model is a different base classifier from the float one: its certificates hold for it, and
only for it (docs/guarantees.md). Nothing here imports onnx or onnxruntime.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from densepure.errors import ArtifactError

# onnxruntime 1.32's QDQPropagationTransformer inserts a QuantizeLinear after DequantizeLinear(int8) ->
# Reshape whose output type disagrees with its zero point once QDQS8ToU8Transformer has run, and session
# creation fails ("output_dtype INT8 does not match y_zero_point type UINT8"; microsoft/onnxruntime#27845,
# the propagation half fixed by PR #28144). Every attention block of the UNets has that pattern. Without
# the propagation pass the QLinearConv/QLinearMatMul fusions still happen (measured: the digits UNet runs
# 1.45x faster than fp32 at 128 rows). Remove when an onnxruntime release opens the graphs with it on.
ORT_INT8_DISABLED_OPTIMIZERS = ("QDQPropagationTransformer",)
TIMESTEP_TOLERANCE = 1e-6  # model timesteps are float64 on both sides (tau * 1000/T); this is rounding only


@dataclass(frozen=True)
class CalibrationInfo:
    """The pipeline and data an INT8 graph's scales were computed from.

    ``mode``: the base classifier whose activations were recorded (``densepure``, ``onestep``,
    ``onestep-dds`` or ``gaussian``); ``steps``: its b (1 for the one-step modes, 0 for gaussian);
    ``timesteps``: the model timesteps the UNet saw (``tau * 1000/T``, descending; empty for gaussian);
    ``images``/``draws``: calibration images and noise draws per image; ``unet_rows``/``classifier_rows``:
    rows given to the calibrator; ``data``/``data_sha256``/``indices``: the calibration split (never the
    certified images: :func:`calibration_overlap`); ``method``: how ranges were read from the activations;
    ``placement``: where the Q/DQ pairs sit; ``kept_float``: the parts left unquantized; ``library``: the
    quantizer and its version.
    """

    sigma: float
    mode: str
    steps: int
    t_star_rule: str
    timesteps: tuple[float, ...]
    images: int
    draws: int
    unet_rows: int
    classifier_rows: int
    data: str
    data_sha256: str | None
    indices: tuple[int, ...]
    method: str
    placement: str
    kept_float: tuple[str, ...]
    seed: int
    library: str
    library_version: str

    def __post_init__(self) -> None:
        for name in ("timesteps", "indices", "kept_float"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        object.__setattr__(self, "timesteps", tuple(float(t) for t in self.timesteps))
        object.__setattr__(self, "indices", tuple(int(i) for i in self.indices))
        if not (isinstance(self.sigma, (int, float)) and math.isfinite(self.sigma) and self.sigma > 0):
            raise ArtifactError(f"calibration sigma must be > 0, got {self.sigma!r}")
        if self.images < 1 or self.draws < 1:
            raise ArtifactError(f"calibration needs >= 1 image and draw, got {self.images} and {self.draws}")
        if (self.mode == "gaussian") != (not self.timesteps):
            raise ArtifactError(f"calibration timesteps {self.timesteps} do not fit mode {self.mode!r}")
        if not self.library or not self.library_version:
            raise ArtifactError("a calibration record names its quantizer library and version")

    @property
    def denoised(self) -> bool:
        """Whether the classifier was calibrated on denoised images (every mode but gaussian)."""
        return self.mode != "gaussian"

    def describe(self) -> str:
        """One line, e.g. ``sigma=0.25 densepure b=2 timesteps [290, 145], 128 images x 4 draws``."""
        steps = f" b={self.steps}" if self.mode == "densepure" else ""
        times = f" timesteps [{', '.join(f'{t:g}' for t in self.timesteps)}]" if self.timesteps else ""
        return f"sigma={self.sigma:g} {self.mode}{steps}{times}, {self.images} images x {self.draws} draws"


def _fmt(values: Iterable[float]) -> str:
    return "[" + ", ".join(f"{v:g}" for v in values) + "]"


def calibration_mismatch(info: CalibrationInfo, *, sigma: float, mode: str,
                         timesteps: Sequence[float] | None) -> str | None:
    """Why a job (``sigma``, base classifier ``mode``, the model ``timesteps`` its UNet runs, None or
    empty for gaussian) cannot run graphs calibrated as ``info``, naming both; None if it can."""
    if abs(float(sigma) - info.sigma) > 1e-12:
        return f"calibrated at sigma={info.sigma:g} ({info.describe()}), this job runs sigma={float(sigma):g}"
    denoised = mode != "gaussian"
    if denoised != info.denoised:
        said = "denoised images" if info.denoised else "noisy images (gaussian)"
        return (f"calibrated on {said} ({info.describe()}), this job's classifier sees "
                f"{'denoised images' if denoised else 'noisy images'} (mode {mode})")
    missing = [t for t in (timesteps or ()) if not any(abs(t - c) <= TIMESTEP_TOLERANCE for c in info.timesteps)]
    if missing:
        return (f"calibrated for the UNet timesteps {_fmt(info.timesteps)} ({info.describe()}), this job "
                f"({mode}) runs {_fmt(timesteps or ())}")
    return None


def calibration_overlap(info: CalibrationInfo, data_sha256: str, indices: Iterable[int]) -> list[int]:
    """The job's image indices that the calibration used, when the job certifies the same data (by
    sha256); empty when the data differ or the indices are disjoint."""
    if info.data_sha256 is None or info.data_sha256 != data_sha256:
        return []
    used = set(info.indices)
    return sorted(i for i in indices if int(i) in used)


def ort_disabled_optimizers(quantized: bool) -> list[str]:
    """The onnxruntime graph optimizers to turn off for a session on a Q/DQ graph (see the note above)."""
    return list(ORT_INT8_DISABLED_OPTIMIZERS) if quantized else []
