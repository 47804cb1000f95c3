"""The engine on onnxruntime backends (CPU execution provider) against the torch backends, end to end on
the shipped digits models: the graphs are exported with the project's own export (``export_command``),
then whole certifications run through :class:`~densepure.engine.engine.Engine`.

fp32 graphs: per-image selection and estimation counts, certificates (label, radius) and model-call
counts are identical to torch's in densepure (K=3, b=2), onestep and gaussian modes. They were
identical in every measurement (also 20 images x 500 draws at sigma 0.25 and 0.5: 0 of 30,000 chain
labels differ), so equality is asserted, not a rate.

fp16 graphs (float16 UNet and classifier with float32 GroupNorm/softmax/timestep embedding) through
onnxruntime CPU, against torch fp32. Measured chain-label agreement on the digits test split (K=3,
b=2, n0=100, n=400, 20 images spread over the split, seed 0; 30,000 chain labels per run, early exit
off so that both runs label the same chains): 100% (0 differ) at sigma=0.25 and 99.99% (3 differ;
2 certified radii moved by one vote, no label changed) at sigma=0.5. The graph's outputs differ from
fp32 by ~3e-4 relative (export check), so a chain label flips only at a near tie of two logits.
Asserted here at sigma=0.25: agreement >= 99.5% (50x the worst measured disagreement rate, room for
other CPUs' float16 kernels), at most 1% of votes moved per image, and the same predicted labels.

The graphs are the session's one ``densepure export`` of the digits models (``digits_export`` in
tests/conftest.py, ~30 s of CPU), shared with tests/test_cli.py and tests/test_cli_backend.py.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from engine_helpers import Recording

from densepure.artifacts import ArtifactKind
from densepure.certify.tasks import CertifyTask
from densepure.diffusion import Mode, SmoothingConfig
from densepure.engine.backends import Backends, TorchClassifier, TorchDenoiser
from densepure.engine.backends.onnxruntime_backend import OnnxRuntimeClassifier, OnnxRuntimeDenoiser, OrtProvider
from densepure.engine.engine import Engine, EngineConfig, ImageRequest
from densepure.models import get_preset
from densepure.models.digits import load_digits_test_split, load_digits_unet
from densepure.models.sources import ClassifierSpec, load_classifier
from densepure.noise import NoisePhase
from densepure.precision import Precision
from densepure.stats.cohen import certify_from_counts

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript", reason="torch's ONNX exporter needs onnxscript: pip install 'densepure[onnx]'")

SIGMA, SEED, ALPHA, N0, N = 0.25, 0, 0.001, 20, 100
IMAGES = (0, 120, 225, 390)  # one clean digit and three whose votes are not unanimous at sigma 0.25
PHASES = (NoisePhase.SELECTION, NoisePhase.ESTIMATION)


@pytest.fixture(scope="module")
def graphs(digits_export):
    assert digits_export.code == 0, digits_export.stderr
    return {(kind, precision): digits_export.graph(kind.value, precision.value)
            for kind in (ArtifactKind.UNET, ArtifactKind.CLASSIFIER) for precision in (Precision.FP32, Precision.FP16)}


@pytest.fixture(scope="module")
def torch_models():
    return load_digits_unet(), load_classifier(ClassifierSpec.parse("digits"), torch.device("cpu"))


@pytest.fixture(scope="module")
def digits():
    images, _ = load_digits_test_split()
    return {i: images[i] for i in IMAGES}


def ort_backends(graphs, precision: Precision):
    cpu = [OrtProvider.CPU]
    return (OnnxRuntimeDenoiser(graphs[ArtifactKind.UNET, precision], providers=cpu, intra_op_threads=1),
            OnnxRuntimeClassifier(graphs[ArtifactKind.CLASSIFIER, precision], providers=cpu, intra_op_threads=1))


def certify_all(mode: str, denoiser, classifier, digits, early_exit: bool = True, noise: str = "float"):
    """Run CERTIFY's draws for every image through one engine: ({image: policy}, engine stats)."""
    mode = Mode(mode)
    dense = mode is Mode.DENSEPURE
    smoothing = SmoothingConfig(mode, SIGMA, 3 if dense else 1, 2 if dense else 1, schedule=get_preset("digits").schedule,
                                noise=noise, levels=16 if noise == "sound" else None)
    backends = Backends(None if mode is Mode.GAUSSIAN else denoiser, classifier)
    engine = Engine(smoothing, backends, (1, 8, 8), "cpu",
                    EngineConfig(unet_rows=256, classifier_rows=256, draw_capacity=512, image_slots=4,
                                 early_exit=early_exit))
    task = CertifyTask(N0, N, ALPHA)
    done = {r.key: r.policy for r in engine.run(ImageRequest(i, x, task.policy(10, SIGMA), SEED, noise_id=i)
                                                  for i, x in digits.items())}
    return done, engine.stats


def certificate(policy):
    return certify_from_counts(policy.counts[NoisePhase.SELECTION], policy.counts[NoisePhase.ESTIMATION], SIGMA,
                               ALPHA)


@pytest.mark.parametrize("mode,noise", [("densepure", "float"), ("onestep", "float"), ("gaussian", "float"),
                                        ("densepure", "sound"), ("onestep", "sound")])
def test_fp32_graphs_give_the_torch_counts_and_certificates(graphs, torch_models, digits, mode, noise):
    """The backends share the engine's noise (float normals or sound grid steps): the same counts."""
    unet, clf = torch_models
    want, want_stats = certify_all(mode, TorchDenoiser(unet), TorchClassifier(clf, 10, (1, 8, 8)), digits, noise=noise)
    got, got_stats = certify_all(mode, *ort_backends(graphs, Precision.FP32), digits, noise=noise)
    contested = sum(int(want[i].counts[NoisePhase.ESTIMATION].max()) < N for i in IMAGES)
    assert contested >= 2, "the images must have labels that vary under noise, or equal counts prove little"
    for i in IMAGES:
        for phase in PHASES:
            assert np.array_equal(got[i].counts[phase], want[i].counts[phase]), (mode, i, phase)
        assert certificate(got[i]) == certificate(want[i])
    assert got_stats == want_stats  # same votes decided at the same draws: the same UNet/classifier rows


def test_fp16_graphs_agree_with_torch_fp32(graphs, torch_models, digits):
    unet, clf = torch_models
    denoiser16, classifier16 = ort_backends(graphs, Precision.FP16)
    reference, fp16 = Recording(TorchClassifier(clf, 10, (1, 8, 8))), Recording(classifier16)
    # early exit off: both runs label exactly the same chains in the same order, whatever the labels are
    want, _ = certify_all("densepure", TorchDenoiser(unet), reference, digits, early_exit=False)
    got, _ = certify_all("densepure", denoiser16, fp16, digits, early_exit=False)
    want_labels, got_labels = np.concatenate(reference.labels), np.concatenate(fp16.labels)
    assert len(want_labels) == len(got_labels) == len(IMAGES) * (N0 + N) * 3
    agreement = float(np.mean(want_labels == got_labels))
    assert agreement >= 0.995, f"fp16 chain labels agree with torch fp32 on {agreement:.2%} only"
    for i in IMAGES:
        moved = sum(int(np.abs(got[i].counts[p] - want[i].counts[p]).sum()) // 2 for p in PHASES)
        assert moved <= 0.01 * (N0 + N), (i, moved)
        assert certificate(got[i]).label == certificate(want[i]).label
