"""The argument groups of the subcommands that run models, and THE one argv -> options builder.

Every flag's ``dest`` is the name of the option field it sets (:meth:`JobOptions.build`,
:meth:`ServeOptions.build`), and a flag that is not given is absent from the parsed namespace
(``argument_default=SUPPRESS`` on the subcommand parsers), so the option records hold the only
defaults. :func:`options_from_args` hands every parsed value to the records; a flag without a field is
a TypeError there, never a silent drop (``tests/cli/test_arguments.py`` parses every accepted flag
with a non-default value and checks that it arrives).

Parser-internal names start with ``_`` (the chosen command, its function, the builder).
"""

from __future__ import annotations

import argparse
import os
from dataclasses import MISSING, fields
from pathlib import Path

from densepure.certify.options import (
    ClusterOptions,
    ExecutionOptions,
    JobOptions,
    OutputOptions,
    SamplingOptions,
)
from densepure.diffusion import Mode, NoiseKind, TStarRule
from densepure.engine.backends.select import BackendKind
from densepure.kernels import CompileMode, KernelChoice
from densepure.models.classifiers import ResizeChoice
from densepure.precision import Precision
from densepure.stats.sequential import SequentialMethod


def default(record: type, name: str) -> object:
    """The default of ``record``'s field ``name`` (for help texts: the records hold the defaults)."""
    for f in fields(record):
        if f.name == name:
            value = f.default if f.default is not MISSING else f.default_factory()  # type: ignore[misc]
            return value.value if hasattr(value, "value") else value
    raise KeyError(f"{record.__name__} has no field {name!r}")


def _choices(enum_type) -> list[str]:
    return [member.value for member in enum_type]


def add_model_arguments(p: argparse.ArgumentParser) -> None:
    """The model flags (:class:`~densepure.certify.options.ModelSource`): certify, predict, serve, export."""
    g = p.add_argument_group("models")
    g.add_argument("--preset", help="diffusion preset: digits (shipped), cifar10, imagenet256 (default: the preset of "
                                    "--artifacts, else digits)")
    g.add_argument("--checkpoint", help="diffusion checkpoint in the official format (.pt, read weights_only, or "
                                        ".safetensors); not needed with --artifacts, which records its sha256")
    g.add_argument("--classifier", help="digits | hf:DIR_OR_HUB_ID | timm:NAME[:CHECKPOINT] (default: the classifier "
                                        "of --artifacts, else digits for the digits preset)")
    g.add_argument("--resize", choices=_choices(ResizeChoice),
                   help="how hf:/timm: classifier inputs are resized: bicubic (antialiased, the papers' protocol), "
                        "bilinear, or processor (the classifier's own: a saved HF processor's resample, timm's "
                        "interpolation) (default: bicubic for cifar10 and imagenet256, processor otherwise; the "
                        "digits classifier has no resize)")


def add_smoothing_arguments(p: argparse.ArgumentParser) -> None:
    """The base classifier flags (:class:`~densepure.certify.options.SmoothingOptions`)."""
    g = p.add_argument_group("smoothing")
    g.add_argument("--mode", choices=_choices(Mode), help="base classifier (default: densepure)")
    g.add_argument("--sigma", type=float, help="smoothing noise level in [0,1] pixel units (default: 0.25)")
    g.add_argument("--K", dest="num_chains", type=int, help="DensePure: reverse chains per draw (default: 10)")
    g.add_argument("--b", dest="steps", type=int, help="DensePure: reverse steps per chain (default: 2)")
    g.add_argument("--t-star", dest="t_star_rule", choices=_choices(TStarRule),
                   help="t* rule: auto (closed form for cosine, nearest crossing otherwise), closed-form, nearest, "
                        "dds (default: auto)")
    g.add_argument("--noise", choices=_choices(NoiseKind),
                   help="sound: exact integer grid steps of the discretized Gaussian, the model input computed from "
                        "the grid index (a certificate about the program that runs; images must lie on the grid "
                        "k/levels); float: float32 Gaussian noise (the papers' practice; docs/guarantees.md) "
                        "(default: sound where the grid is known: uint8 sources, the digits; float otherwise)")
    g.add_argument("--levels", type=int, help="the grid k/LEVELS the images lie on, for the sound noise (default: the "
                                              "data's: 255 for 8-bit sources, 16 for the digits)")


def add_data_arguments(p: argparse.ArgumentParser) -> None:
    """Which images (:class:`~densepure.certify.options.DataSelection`)."""
    g = p.add_argument_group("data")
    g.add_argument("--data", help="CIFAR-10 batch dir or file, ImageNet-style folder, .npz (images, labels) or an image "
                                  "(default: the shipped digits test split)")
    g.add_argument("--skip", type=int, help="certify every SKIP-th image (default: 1; digits: 22. CIFAR-10 protocol: 20; "
                                            "ImageNet: 500)")
    g.add_argument("--max", type=int, help="stop after MAX images (default: -1 = all selected; digits: 20)")


def add_statistics_arguments(p: argparse.ArgumentParser, predict: bool, also_k: bool = True,
                             anytime: bool = True) -> None:
    """The statistics of a certify/predict run (:class:`~densepure.certify.options.SamplingOptions`);
    ``also_k``: offer --also-K (it writes result files, which benchmarks do not); ``anytime``: offer
    --budget (certify's anytime radius)."""
    g = p.add_argument_group("statistics")
    if not predict:
        g.add_argument("--n0", type=int, help="selection draws (default: 100; digits: 50)")
    g.add_argument("--n", type=int, help="estimation draws; the largest n for --radius (default: 100000; digits: 1000)")
    g.add_argument("--alpha", type=float,
                   help=f"failure probability in (0, 0.5) (default: {default(SamplingOptions, 'alpha')})")
    if not predict:
        g.add_argument("--radius", type=float, help="sequential mode: certify this L2 radius with as few draws as possible")
        g.add_argument("--sequential", choices=_choices(SequentialMethod),
                       help="the test --radius runs: exact (exact-boundary test at fixed looks, the default), betting "
                            "(a betting confidence sequence, valid at any stopping time) or geometric (the plan of "
                            f"densepure <= 0.1, to reproduce earlier runs) (default: "
                            f"{default(SamplingOptions, 'sequential')})")
    if not predict and anytime:
        g.add_argument("--budget", type=int, help="the anytime radius: up to BUDGET estimation draws (replaces --n), "
                                                  "the radius certified by a betting confidence sequence, valid at "
                                                  "any stopping time (recorded as the image's radius)")
    if also_k:
        g.add_argument("--also-K", dest="also_chains", type=_chain_list,
                       help="DensePure, fixed N: also write the results of the first k chains of each draw, e.g. "
                            "1,3 (exactly what --K k gives with the same seed; k <= K//2+1) to OUTPUT.K<k>.tsv, at no "
                            "extra cost")
    g.add_argument("--seed", type=int, help="noise seed; unset: drawn from the OS and recorded in the sidecar")


def add_execution_arguments(p: argparse.ArgumentParser) -> None:
    """Backend, precision, device and batch flags (:class:`~densepure.certify.options.ExecutionOptions`)."""
    g = p.add_argument_group("execution")
    g.add_argument("--batch-size", type=int, help="rows (draws x chains) per model call; on CUDA lowered to what fits "
                                                  f"in free memory (default: {default(ExecutionOptions, 'batch_size')})")
    g.add_argument("--device", help="auto | cpu | cuda | cuda:N; the sidecar records the device type (cpu or cuda), so a "
                                    f"run resumes on any device of that type (default: {default(ExecutionOptions, 'device')})")
    g.add_argument("--kernels", choices=_choices(KernelChoice),
                   help="the engine's per-row kernels (noise, start, reverse step; and the UNet's GroupNorm+SiLU on "
                        "CUDA): auto (Triton on CUDA when importable, torch otherwise), torch or triton; every "
                        "choice gives the same counts (tested), so a run resumes under another (default: auto)")
    g.add_argument("--compile", choices=_choices(CompileMode),
                   help="torch backend: torch.compile the UNet and the classifier in this mode (composed with the "
                        "CUDA graphs); the first call of each batch size compiles")
    g.add_argument("--cuda-graphs", action=argparse.BooleanOptionalAction,
                   help="torch on CUDA: run the models as CUDA graphs captured per batch-size bucket (default: on)")
    g.add_argument("--lookahead", action=argparse.BooleanOptionalAction,
                   help="sequential tests (--radius, the server's certify_radius): run draws past the next look in "
                        "batch rows that would otherwise be empty, so a look costs no round trip; off computes only "
                        "the draws the test reads. The certificates are the same either way (default: on)")
    g.add_argument("--precision", choices=_choices(Precision),
                   help="torch: precision of the UNet (GroupNorm, softmax, time embedding stay fp32) and the "
                        "classifier network (fp32 is exact float32 on CUDA too; tf32 lets CUDA round matmul and "
                        "convolution inputs to TF32); onnxruntime/tensorrt: precision of both exported graphs, "
                        "fp32, fp16 or int8 (int8: only at the sigma and grid its graphs were calibrated for) "
                        f"(default: {default(ExecutionOptions, 'precision')})")
    g.add_argument("--backend", choices=_choices(BackendKind),
                   help="torch (the checkpoint), onnxruntime (the graphs of --artifacts) or tensorrt (engines that "
                        "`densepure build` made from them on this machine) (default: torch)")
    g.add_argument("--artifacts", help="onnxruntime/tensorrt: a directory written by `densepure export --out DIR`")
    g.add_argument("--cache-dir", help="tensorrt: the engine cache of `densepure build` (default: $DENSEPURE_CACHE "
                                       "or ~/.cache/densepure)")


def add_output_arguments(p: argparse.ArgumentParser, predict: bool) -> None:
    """Where results go (:class:`~densepure.certify.options.OutputOptions`)."""
    g = p.add_argument_group("output")
    g.add_argument("--output", help="result file (TSV, with a .jsonl sidecar); an existing matching run is resumed "
                                    f"(default: {'runs/predict.tsv' if predict else default(OutputOptions, 'output')})")
    g.add_argument("--overwrite", action="store_true", help="start the result file again instead of resuming")
    if not predict:
        g.add_argument("--plot", help="certified-accuracy PNG (default: next to the result file)")


def add_cluster_arguments(p: argparse.ArgumentParser) -> None:
    """A Ray run (:class:`~densepure.certify.options.ClusterOptions`)."""
    g = p.add_argument_group("cluster (Ray; docs/distributed.md)")
    g.add_argument("--ray", metavar="local|auto|ADDRESS",
                   help="spread the run over a Ray cluster: local (start one on this machine), auto (join the running "
                        "one: ray start, KubeRay, Slurm) or its address; same results and resume as one process "
                        "(needs the ray extra: pip install -e '.[ray]')")
    g.add_argument("--workers", type=int,
                   help="--ray: workers, each loading the models once (default: one per GPU of the cluster; "
                        "without GPUs, one per CPU)")
    g.add_argument("--split-draws", type=int, metavar="S",
                   help="--ray: sample each image's draws on S workers in disjoint ranges and add the counts before "
                        f"the bound (exact; one image on several GPUs) (default: {default(ClusterOptions, 'split_draws')},"
                        " no split)")


def add_job_arguments(p: argparse.ArgumentParser, predict: bool) -> None:
    """Every flag of ``densepure certify`` (``predict``: of ``densepure predict``)."""
    add_model_arguments(p)
    add_data_arguments(p)
    add_smoothing_arguments(p)
    add_statistics_arguments(p, predict)
    add_execution_arguments(p)
    add_output_arguments(p, predict)
    add_cluster_arguments(p)
    p.set_defaults(_build=JobOptions.build, predict=predict)
    if predict:
        p.set_defaults(output="runs/predict.tsv")


def _chain_list(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected chain counts like 1,3, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"chain counts must be >= 1, got {text!r}")
    return values


def default_cache_dir() -> str:
    """The TensorRT engine cache when ``--cache-dir`` is not given: $DENSEPURE_CACHE, else ~/.cache/densepure."""
    return os.environ.get("DENSEPURE_CACHE") or str(Path.home() / ".cache" / "densepure")


def option_values(args: argparse.Namespace) -> dict[str, object]:
    """The parsed option values (parser-internal names left out), with what the environment supplies."""
    values = {name: value for name, value in vars(args).items() if not name.startswith("_")}
    if values.get("backend") == BackendKind.TENSORRT.value and values.get("cache_dir") is None:
        values["cache_dir"] = default_cache_dir()
    return values


def options_from_args(args: argparse.Namespace):
    """THE argv -> options builder: the subcommand's options record (:class:`JobOptions` for certify and
    predict, :class:`~densepure.serve.settings.ServeOptions` for serve) from every parsed flag."""
    return args._build(**option_values(args))


__all__ = [
    "add_cluster_arguments", "add_data_arguments", "add_execution_arguments", "add_job_arguments",
    "add_model_arguments", "add_output_arguments", "add_smoothing_arguments", "add_statistics_arguments",
    "default", "default_cache_dir", "option_values", "options_from_args",
]  # fmt: skip
