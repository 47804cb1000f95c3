"""The models and engines the benchmarks measure, built as users get them.

* Models: the shipped digits models, or the real CIFAR-10 / ImageNet UNet architectures and a
  ViT-B/16-sized (CIFAR-10, 224 px) or ViT-L/16-sized (ImageNet, 512 px, the BEiT-L/16 of the papers)
  classifier with random weights, every parameter perturbed (:func:`common.perturb_`): no zero
  output convolutions, so no timing multiplies zeros.
* Engines: ``--kernels auto`` (the fused Triton kernels on a GPU with Triton, the UNet's GroupNorm+SiLU
  included), rows per call fitted to the device's memory (:func:`densepure.engine.memory.rows_that_fit`,
  capped by the requested rows, as ``densepure certify --batch-size`` is), bucketed CUDA graphs and
  channels-last on CUDA, and each precision's float32 math (:mod:`densepure.precision`).

Every result records :func:`describe`: precision and TF32, kernels, graphs, rows and weights.
"""

from __future__ import annotations

import math
import time
from types import SimpleNamespace

import torch
from common import DIGITS_WEIGHTS, RANDOM_WEIGHTS, math_record, perturb_, sync
from torch import nn

from densepure.artifacts.buckets import bucket_sizes
from densepure.diffusion import Mode, SmoothingConfig
from densepure.engine.backends import Backends, TorchClassifier, TorchDenoiser
from densepure.engine.engine import Engine, EngineConfig
from densepure.engine.memory import rows_that_fit
from densepure.kernels import resolve_kernels
from densepure.models import UNetConfig, UNetModel
from densepure.models.classifiers import Classifier, Preprocess
from densepure.models.presets import get_preset
from densepure.precision import Precision


class RandomViT(nn.Module):
    """A plain ViT (patch embedding, pre-norm encoder, class token) with random weights."""

    def __init__(self, image: int, patch: int, dim: int, depth: int, heads: int, classes: int = 10):
        super().__init__()
        self.embed = nn.Conv2d(3, dim, patch, stride=patch)
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos = nn.Parameter(torch.randn(1, (image // patch) ** 2 + 1, dim) * 0.02)
        layer = nn.TransformerEncoderLayer(dim, heads, 4 * dim, dropout=0.0, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm, self.head = nn.LayerNorm(dim), nn.Linear(dim, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x).flatten(2).transpose(1, 2)
        h = torch.cat([self.cls.expand(h.shape[0], -1, -1).to(h.dtype), h], dim=1) + self.pos.to(h.dtype)
        return self.head(self.norm(self.encoder(h)[:, 0]))


ARCH = {  # preset, classifier (image, patch, dim, depth, heads), official batch
    "cifar10": ("cifar10", (224, 16, 768, 12, 12), 100),
    "imagenet": ("imagenet256", (512, 16, 1024, 24, 16), 16),
}


def weights(arch: str) -> str:
    """Where the weights of ``load_models(arch)`` come from."""
    return DIGITS_WEIGHTS if arch == "digits" else RANDOM_WEIGHTS


def classifier_spec(arch: str) -> dict:
    """The classifier's (image, patch, dim, depth, heads, classes) for a real architecture."""
    image, patch, dim, depth, heads = ARCH[arch][1]
    return {"image": image, "patch": patch, "dim": dim, "depth": depth, "heads": heads,
            "classes": 10 if arch == "cifar10" else 1000}


def classifier_flops(arch: str) -> float:
    """FLOPs of one classifier row of a real architecture, counted analytically (:func:`common.vit_flops`)."""
    from common import vit_flops

    spec = classifier_spec(arch)
    return vit_flops(spec["image"], spec["patch"], spec["dim"], spec["depth"], spec["classes"])


def load_unet(arch: str, device: torch.device) -> UNetModel:
    """The UNet of a real architecture with perturbed random weights, fp32, built on ``device`` (the
    ImageNet UNet's 553 M parameters take tens of seconds to initialise on a CPU)."""
    torch.manual_seed(0)
    with torch.device(device):
        unet = UNetModel(UNetConfig.from_flags(get_preset(ARCH[arch][0]).flags)).eval()
    return perturb_(unet)


def load_classifier(arch: str, device: torch.device) -> Classifier:
    """The ViT of a real architecture with perturbed random weights and its preprocessing, fp32 on ``device``."""
    spec = classifier_spec(arch)
    torch.manual_seed(0)
    with torch.device(device):
        net = RandomViT(spec["image"], spec["patch"], spec["dim"], spec["depth"], spec["heads"], spec["classes"])
    return Classifier(perturb_(net.eval()), Preprocess(size=spec["image"], mean=(0.5,) * 3, std=(0.5,) * 3),
                      num_classes=spec["classes"])


def geometry(arch: str):
    """(noise schedule, image shape) of ``arch``, without building its models."""
    if arch == "digits":
        return get_preset("digits").schedule, (1, 8, 8)
    preset = get_preset(ARCH[arch][0])
    size = UNetConfig.from_flags(preset.flags).image_size
    return preset.schedule, (3, size, size)


def load_models(arch: str, device: torch.device):
    """(unet, classifier module, schedule, image shape, num classes) in fp32 on ``device``."""
    if arch == "digits":
        from densepure.models.digits import load_digits_classifier, load_digits_unet

        clf = Classifier(load_digits_classifier(device), Preprocess(), num_classes=10)
        return load_digits_unet(device), clf, get_preset("digits").schedule, (1, 8, 8), 10
    unet, clf = load_unet(arch, device), load_classifier(arch, device)
    size = unet.config.image_size
    return unet, clf, get_preset(ARCH[arch][0]).schedule, (3, size, size), clf.num_classes


def cast(unet, clf, precision: Precision):
    """``(unet, clf)`` in ``precision`` (GroupNorm, softmax, time embedding stay fp32); returns them."""
    dtype = Precision.parse(precision).dtype
    return unet.set_precision(dtype), clf.set_precision(dtype)


def fitted_rows(unet, clf, shape, device: torch.device, cap: int, chains: int) -> int:
    """Rows per model call for these models on ``device``, as ``densepure certify`` fits them (the same
    probes, draw pools and memory fraction), at most ``cap``."""
    def probe(model, with_time: bool):
        def run(rows: int) -> None:
            x = torch.rand((rows, *shape), device=device) * 2 - 1
            with torch.inference_mode():
                model.eps_and_var(x, torch.full((rows,), 100.0, device=device)) if with_time else model(x)
        return run

    slot_bytes = 2 * (chains + 2) * math.prod(shape) * 4
    return rows_that_fit([probe(unet, True), probe(clf, False)], device, cap, slot_bytes)


def make_engine(args, unet, clf, schedule, shape, classes, device: torch.device, rows: int,
                precision: Precision = Precision.FP32, image_slots: int = 8) -> Engine:
    """A DensePure engine (``args``: sigma, K, b, cuda_graphs, kernels) over models already in
    ``precision``; with Triton kernels on CUDA the UNet's norms run fused, as ``certify`` does."""
    precision = Precision.parse(precision)
    kernels = resolve_kernels(getattr(args, "kernels", "auto"), device)
    if kernels.name == "triton" and device.type == "cuda":
        unet.set_kernels(kernels)
    graphs = getattr(args, "cuda_graphs", True) and device.type == "cuda"
    buckets = bucket_sizes(rows) if graphs else None
    denoiser = TorchDenoiser(unet, channels_last=device.type == "cuda", buckets=buckets, cuda_graphs=graphs,
                             tf32=precision.tf32)
    classifier = TorchClassifier(clf, classes, shape, device, buckets=buckets, cuda_graphs=graphs,
                                 tf32=precision.tf32)
    config = EngineConfig(unet_rows=rows, classifier_rows=rows, draw_capacity=2 * rows, image_slots=image_slots)
    smoothing = SmoothingConfig(Mode.DENSEPURE, args.sigma, args.K, args.b, schedule=schedule)
    return Engine(smoothing, Backends(denoiser, classifier), shape, device, config, kernels)


def engine_backends(args, precision, device: torch.device, image_slots: int = 8, wrap_network=None):
    """(engine, unet, shape): fresh models of ``args.arch`` in ``precision`` in an engine whose rows are
    fitted to memory up to ``args.rows``; ``wrap_network`` (optional) replaces the classifier's network
    by ``wrap_network(network)``."""
    precision = Precision.parse(precision)
    unet, clf, schedule, shape, classes = load_models(args.arch, device)
    if wrap_network is not None:
        clf.network = wrap_network(clf.network)
    cast(unet, clf, precision)
    rows = fitted_rows(unet, clf, shape, device, args.rows, args.K)
    return make_engine(args, unet, clf, schedule, shape, classes, device, rows, precision, image_slots), unet, shape


def describe(engine: Engine, precision: Precision, arch: str) -> dict:
    """The settings a result was measured with (module docstring)."""
    denoiser = engine.backends.denoiser
    graphs = denoiser is not None and denoiser.call is not None and denoiser.call.graphs
    return {**math_record(precision), "kernels": engine.kernels.describe(), "cuda_graphs": bool(graphs),
            "rows": engine.config.unet_rows, "weights": weights(arch)}


def activate(engine: Engine) -> float:
    """Enter ``engine`` (graphs captured, once) and return the seconds it took; leave with ``engine.__exit__``."""
    sync(engine.device)
    start = time.perf_counter()
    engine.__enter__()
    sync(engine.device)
    return time.perf_counter() - start


def unet_forward_rate(unet, rows: int, shape, device, graphs: bool, repeats: int = 20,
                      channels_last: bool | None = None, precision: Precision = Precision.FP32) -> float:
    """UNet rows per second at a full batch of ``rows`` (after warm-up); channels-last by default on CUDA."""
    channels_last = device.type == "cuda" if channels_last is None else channels_last
    backend = TorchDenoiser(unet, channels_last=channels_last, buckets=(rows,) if graphs else None,
                            cuda_graphs=graphs, tf32=Precision.parse(precision).tf32)
    x, t = torch.randn(rows, *shape, device=device), torch.full((rows,), 300.0, device=device)
    return _rate(lambda: backend.eps_and_var(x, t), backend, rows, device, repeats)


def classifier_rate(clf, rows: int, shape, device, graphs: bool, repeats: int = 10,
                    precision: Precision = Precision.FP32) -> float:
    """Classifier rows per second at a full batch of ``rows`` (preprocessing included, after warm-up)."""
    backend = TorchClassifier(clf, clf.num_classes, shape, device, buckets=(rows,) if graphs else None,
                              cuda_graphs=graphs, tf32=Precision.parse(precision).tf32)
    x = torch.rand(rows, *shape, device=device) * 2 - 1
    return _rate(lambda: backend.logits(x), backend, rows, device, repeats)


def _rate(call, backend, rows: int, device, repeats: int) -> float:
    with backend, torch.inference_mode():
        for _ in range(2):
            call()
        sync(device)
        start = time.perf_counter()
        for _ in range(repeats):
            call()
        sync(device)
    return rows * repeats / (time.perf_counter() - start)


def args_for(arch: str, rows: int, chains: int = 10, steps: int = 2, sigma: float = 0.25, **more) -> SimpleNamespace:
    """The ``args`` :func:`engine_backends` reads, for callers without a command line."""
    return SimpleNamespace(arch=arch, rows=rows, K=chains, b=steps, sigma=sigma, cuda_graphs=True,
                           kernels="auto", **more)
