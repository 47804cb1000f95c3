"""What a benchmark runs: the job's engine (built as ``densepure certify`` builds it), the job's images, and
for presets whose checkpoints cannot be on the machine, the real architectures with seeded random weights.

With ``--random-weights`` the UNet is the preset's architecture (its parameters drawn from a fixed seed)
and the classifier a plain ViT of the papers' size with random weights: ViT-B/16 at 224 for ``cifar10``
(the papers' fine-tuned ViT), ViT-L/16-sized at 512 for ``imagenet256`` (their BEiT-L/16). Speed depends on
the shapes, not on the values, so these measure what the real models cost. Two choices keep the timings
honest:

* every parameter is perturbed (N(0, 0.02^2) on top of the initialisation): the UNet's zero-initialised
  output convolutions would make eps exactly 0 and half its convolutions multiply zeros;
* the ViT's logits get a fixed lead for class 0 (:data:`CLASS0_LEAD`, added after the network ran in
  full): every draw votes 0, as most draws of a trained classifier vote for its image's class. Random
  labels would make every draw run all K chains and every sequential test run to its last draw, which
  no user sees; with the lead the vote's early exit and the sequential tests behave as with a confident
  model, and the models' cost is unchanged. Labels and radii mean nothing either way.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from densepure.bench.options import BenchRun
from densepure.certify.loading import build_engine
from densepure.certify.options import JobOptions
from densepure.engine.backends.select import BackendKind
from densepure.engine.engine import Engine
from densepure.errors import ConfigError
from densepure.models import UNetConfig, UNetModel, get_preset
from densepure.models.classifiers import Classifier, Preprocess

# preset -> (image, patch, width, depth, heads, classes) of the random classifier
RANDOM_CLASSIFIERS = {"cifar10": (224, 16, 768, 12, 12, 10), "imagenet256": (512, 16, 1024, 24, 16, 1000)}
WEIGHT_SEED = 0
PERTURB_STD = 0.02
CLASS0_LEAD = 1e4  # above any logit of the random ViT, representable in fp16 and bf16
RANDOM_UNET_WEIGHTS = f"random (seed {WEIGHT_SEED}): every parameter perturbed by N(0, {PERTURB_STD}^2)"
RANDOM_WEIGHTS = f"{RANDOM_UNET_WEIGHTS}; the ViT's class 0 leads by {CLASS0_LEAD:g}"


@torch.no_grad()
def perturb_(module: nn.Module, seed: int, std: float = PERTURB_STD) -> nn.Module:
    """Add N(0, std^2) noise to every parameter of ``module`` in place, drawn on the parameters' device by a
    generator seeded with ``seed`` (the same weights on every run of one kind of device); returns it."""
    generators: dict[torch.device, torch.Generator] = {}
    for p in module.parameters():
        g = generators.setdefault(p.device, torch.Generator(device=p.device).manual_seed(seed))
        p.add_(torch.randn(p.shape, generator=g, device=p.device, dtype=p.dtype) * std)
    return module


def vit_flops(image: int, patch: int, dim: int, depth: int, classes: int, mlp_ratio: int = 4) -> float:
    """FLOPs (2 x multiply-adds) of one ViT forward (one image), counted analytically: the patch embedding,
    per block the qkv, output and MLP projections (``(4 + 2 * mlp_ratio) d^2`` per token) and the attention
    products (``2 T d`` per token), and the head. Norms, softmax and GELU are left out (O(T d), under 0.5%).
    ViT-B/16 at 224: 35.1 GFLOP. (PyTorch's counter misses attention products it has no formula for, e.g. the
    CPU's fused attention: the analytic count is the one MFU uses.)"""
    tokens = (image // patch) ** 2 + 1
    embed = (tokens - 1) * 3 * patch * patch * dim
    block = tokens * (4 + 2 * mlp_ratio) * dim * dim + 2 * tokens * tokens * dim
    return 2.0 * (embed + depth * block + dim * classes)


class RandomViT(nn.Module):
    """A plain ViT (patch embedding, pre-norm encoder, class token), ``(B, 3, image, image) -> (B, classes)``."""

    def __init__(self, image: int, patch: int, dim: int, depth: int, heads: int, classes: int = 10):
        super().__init__()
        self.embed = nn.Conv2d(3, dim, patch, stride=patch)
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos = nn.Parameter(torch.randn(1, (image // patch) ** 2 + 1, dim) * 0.02)
        layer = nn.TransformerEncoderLayer(dim, heads, 4 * dim, dropout=0.0, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm, self.head = nn.LayerNorm(dim), nn.Linear(dim, classes)
        self.shape = (image, patch, dim, depth, classes)
        self.register_buffer("lead", torch.zeros(classes), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x).flatten(2).transpose(1, 2)
        h = torch.cat([self.cls.expand(h.shape[0], -1, -1).to(h.dtype), h], dim=1) + self.pos.to(h.dtype)
        return self.head(self.norm(self.encoder(h)[:, 0])) + self.lead.to(h.dtype)

    def flops(self) -> float:
        """FLOPs of one row, analytic (:func:`vit_flops`)."""
        return vit_flops(*self.shape)


def random_unet(config: UNetConfig, device: torch.device, seed: int = WEIGHT_SEED) -> UNetModel:
    """The UNet of ``config`` with seeded random weights (each parameter perturbed, so the zero-initialised
    output convolutions do not make every output 0), fp32, built on ``device`` (the ImageNet UNet's 553 M
    parameters take tens of seconds to initialise on a CPU)."""
    torch.manual_seed(seed)
    with torch.device(device):
        model = UNetModel(config).eval()
    return perturb_(model, seed + 2)


def random_modules(preset: str, device: torch.device) -> tuple[UNetModel, Classifier]:
    """(UNet, classifier) of ``preset``'s architectures with seeded random weights, fp32 on ``device``; the
    same weights on every call (the engine and the official loop run the same models)."""
    if preset not in RANDOM_CLASSIFIERS:
        raise ConfigError(f"--random-weights stands in for the papers' checkpoints of "
                          f"{' and '.join(RANDOM_CLASSIFIERS)}; preset {preset!r} ships or names its own: drop it")
    unet = random_unet(get_preset(preset).unet_config, device)
    return unet, random_classifier(preset, device)


def random_classifier(preset: str, device: torch.device) -> Classifier:
    """The random ViT of ``preset`` (module doc: perturbed, class 0 leading) with its preprocessing, fp32."""
    image, patch, dim, depth, heads, classes = RANDOM_CLASSIFIERS[preset]
    torch.manual_seed(WEIGHT_SEED + 1)
    with torch.device(device):
        network = RandomViT(image, patch, dim, depth, heads, classes).eval()
    perturb_(network, WEIGHT_SEED + 3)
    network.lead[0] = CLASS0_LEAD
    return Classifier(network, Preprocess(size=image, mean=(0.5,) * 3, std=(0.5,) * 3), num_classes=classes)


def weights_provenance(run: BenchRun) -> str:
    """Where the measured models' weights come from (every report records it)."""
    job = run.job
    if run.throughput.random_weights:
        return RANDOM_WEIGHTS
    if job.models.preset == "digits" and job.models.checkpoint is None:
        return "the shipped digits checkpoints (densepure/assets/digits)"
    return f"checkpoint {job.models.checkpoint or get_preset(job.models.preset).checkpoint_file}, classifier " \
           f"{job.models.classifier}"


def torch_modules(run: BenchRun, device: torch.device) -> tuple[UNetModel, Classifier]:
    """The job's UNet and classifier as fp32 torch modules (the official loop's models)."""
    job = run.job
    if run.throughput.random_weights:
        return random_modules(job.models.preset, device)
    from densepure.models import build_unet, resolve_checkpoint
    from densepure.models.sources import ClassifierSpec, load_classifier

    preset = get_preset(job.models.preset)
    unet = build_unet(preset, resolve_checkpoint(preset, job.models.checkpoint), device, torch.float32)
    return unet, load_classifier(ClassifierSpec.parse(job.models.classifier), device, resize=job.models.resize)


def bench_engine(run: BenchRun, shape: tuple[int, int, int], classes: int | None, image_slots: int) -> Engine:
    """The engine ``densepure certify`` would build for the job (random-weight modules where asked)."""
    job = run.job
    modules = None
    if run.throughput.random_weights:
        if job.execution.backend is not BackendKind.TORCH:
            raise ConfigError("--random-weights runs torch modules: leave --backend at torch")
        from densepure.engine.device import resolve_device

        modules = random_modules(job.models.preset, resolve_device(job.execution.device))
    return build_engine(job, shape, classes, image_slots=image_slots, modules=modules)


@dataclass(frozen=True)
class BenchImages:
    """The images a benchmark runs: ``images`` ((C, H, W) float32 in [0, 1]), their dataset ``indices`` (the
    noise identity of each, as in ``densepure certify``), ``labels`` (-1: unknown), ``classes`` (None:
    unknown), and where they came from."""

    images: tuple[torch.Tensor, ...]
    indices: tuple[int, ...]
    labels: tuple[int, ...]
    classes: int | None
    source: str

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(d) for d in self.images[0].shape)


def bench_images(run: BenchRun) -> BenchImages:
    """The job's selection of its data (``--data``, ``--skip``, ``--max``; the digits test split by default);
    with ``--random-weights`` and no data, ``--max`` seeded random images (2 when unset)."""
    job = run.job
    data = job.selection.data
    if data is None and job.models.preset != "digits":
        if not run.throughput.random_weights:
            raise ConfigError(f"preset {job.models.preset!r} needs --data (or --random-weights, which also runs "
                              "on random images)")
        return _random_images(job)
    from densepure.data.datasets import open_dataset, select_indices

    if data is None:
        from densepure.data.arrays import ArrayDataset
        from densepure.models.digits import load_digits_test_split

        images, labels = load_digits_test_split()
        dataset = ArrayDataset(images.numpy(), labels.numpy(), name="digits-test", num_classes=10)
    else:
        dataset = open_dataset(data)
    indices = select_indices(len(dataset), job.selection.skip, job.selection.max)
    if not indices:
        raise ConfigError(f"--skip {job.selection.skip} --max {job.selection.max} select no image of {len(dataset)}")
    items = [dataset[i] for i in indices]
    return BenchImages(tuple(x for x, _ in items), tuple(indices), tuple(int(y) for _, y in items),
                       dataset.num_classes, dataset.name)


def _random_images(job: JobOptions) -> BenchImages:
    preset = get_preset(job.models.preset)
    shape = (preset.unet_config.in_channels, preset.image_size, preset.image_size)
    count = job.selection.max if job.selection.max > 0 else 2
    g = torch.Generator().manual_seed(WEIGHT_SEED)
    images = tuple(torch.rand(shape, generator=g) for _ in range(count))
    return BenchImages(images, tuple(range(count)), (-1,) * count, None, f"{count} seeded random images")
