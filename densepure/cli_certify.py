"""Argument parsing for ``densepure certify`` / ``predict`` / ``analyze`` (used by :mod:`densepure.cli`)."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from densepure.certify.boundary import DEFAULT_METHOD
from densepure.certify.sequential import SequentialMethod
from densepure.diffusion import Mode, NoiseKind, TStarRule
from densepure.engine.backends.select import BackendKind
from densepure.kernels import CompileMode, KernelChoice
from densepure.models.classifiers import ResizeChoice
from densepure.precision import Precision


def add_model_arguments(p: argparse.ArgumentParser) -> None:
    """The model flags, the same for certify, predict, export (and serve)."""
    g = p.add_argument_group("models")
    g.add_argument("--preset", help="diffusion preset: digits (shipped), cifar10, imagenet256 (default: the preset of "
                                    "--artifacts, else digits)")
    g.add_argument("--checkpoint", help="diffusion checkpoint in the official format (.pt, read weights_only, or "
                                        ".safetensors); not needed with --artifacts, which records its sha256")
    g.add_argument("--classifier", help="digits | hf:DIR_OR_HUB_ID | timm:NAME[:CHECKPOINT] (default: the classifier "
                                        "of --artifacts, else digits for the digits preset)")
    g.add_argument("--resize", choices=[c.value for c in ResizeChoice],
                   help="how hf:/timm: classifier inputs are resized: bicubic (antialiased, the papers' protocol), "
                        "bilinear, or processor (the classifier's own: a saved HF processor's resample, timm's "
                        "interpolation) (default: bicubic for cifar10 and imagenet256, processor otherwise; the "
                        "digits classifier has no resize)")


def add_smoothing_arguments(p: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    """The base classifier flags (mode, sigma, K, b, t*), the same for certify, predict and serve."""
    g = p.add_argument_group("smoothing")
    g.add_argument("--mode", default="densepure", choices=[m.value for m in Mode], help="base classifier (default: densepure)")
    g.add_argument("--sigma", type=float, help="smoothing noise level in [0,1] pixel units (default: 0.25)")
    g.add_argument("--K", dest="num_chains", type=int, help="DensePure: reverse chains per draw (default: 10)")
    g.add_argument("--b", dest="steps", type=int, help="DensePure: reverse steps per chain (default: 2)")
    g.add_argument("--t-star", dest="t_star_rule", default="auto", choices=[r.value for r in TStarRule],
                   help="t* rule: auto (closed form for cosine, nearest crossing otherwise), closed-form, nearest, dds")
    g.add_argument("--noise", choices=[k.value for k in NoiseKind],
                   help="sound: exact integer grid steps of the discretized Gaussian, the model input computed from "
                        "the grid index (a certificate about the program that runs; images must lie on the grid "
                        "k/levels); float: float32 Gaussian noise (the papers' practice; docs/guarantees.md) "
                        "(default: sound where the grid is known: uint8 sources, the digits; float otherwise)")
    g.add_argument("--levels", type=int, help="the grid k/LEVELS the images lie on, for the sound noise (default: the "
                                              "data's: 255 for 8-bit sources, 16 for the digits)")
    return g


def add_execution_arguments(p: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    """Backend, precision, device and batch flags, the same for certify, predict and serve."""
    g = p.add_argument_group("execution")
    g.add_argument("--batch-size", type=int, default=500, help="rows (draws x chains) per model call; on CUDA lowered to what fits in free memory (default: 500)")
    g.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default: auto)")
    g.add_argument("--kernels", default="auto", choices=[k.value for k in KernelChoice],
                   help="the engine's per-row kernels (noise, start, reverse step; and the UNet's GroupNorm+SiLU on "
                        "CUDA): auto (Triton on CUDA when importable, torch otherwise), torch or triton; the choice "
                        "made is recorded in the sidecar (default: auto)")
    g.add_argument("--compile", choices=[m.value for m in CompileMode],
                   help="torch backend: torch.compile the UNet and the classifier in this mode (composed with the "
                        "CUDA graphs); the first call of each batch size compiles")
    g.add_argument("--cuda-graphs", action=argparse.BooleanOptionalAction, default=True,
                   help="torch on CUDA: run the models as CUDA graphs captured per batch-size bucket (default: on)")
    g.add_argument("--lookahead", action=argparse.BooleanOptionalAction, default=True,
                   help="sequential tests (--radius, the server's certify_radius): run draws past the next look in "
                        "batch rows that would otherwise be empty, so a look costs no round trip; off computes only "
                        "the draws the test reads. The certificates are the same either way (default: on)")
    g.add_argument("--precision", default="fp32", choices=[p.value for p in Precision],
                   help="torch: precision of the UNet (GroupNorm, softmax, time embedding stay fp32) and the classifier network; onnxruntime/tensorrt: precision of both exported graphs, fp32 or fp16 "
                        "(default: fp32)")
    g.add_argument("--backend", default="torch", choices=[k.value for k in BackendKind],
                   help="torch (the checkpoint), onnxruntime (the graphs of --artifacts) or tensorrt (engines that "
                        "`densepure build` made from them on this machine) (default: torch)")
    g.add_argument("--artifacts", help="onnxruntime/tensorrt: a directory written by `densepure export --out DIR`")
    g.add_argument("--cache-dir", help="tensorrt: the engine cache of `densepure build` (default: $DENSEPURE_CACHE "
                                       "or ~/.cache/densepure)")
    return g


def add_job_arguments(p: argparse.ArgumentParser, predict: bool) -> None:
    add_model_arguments(p)
    g = p.add_argument_group("data")
    g.add_argument("--data", help="CIFAR-10 batch dir or file, ImageNet-style folder, .npz (images, labels) or an image "
                                  "(default: the shipped digits test split)")
    g.add_argument("--skip", type=int, help="certify every SKIP-th image (default: 1; digits: 22. CIFAR-10 protocol: 20; ImageNet: 500)")
    g.add_argument("--max", type=int, help="stop after MAX images (default: -1 = all selected; digits: 20)")
    g = add_smoothing_arguments(p)
    g.add_argument("--also-K", dest="also_chains", type=_chain_list, default=(),
                   help="DensePure, fixed N: also write the results of the first k chains of each draw, e.g. 1,3 "
                        "(exactly what --K k gives with the same seed; k <= K//2+1) to OUTPUT.K<k>.tsv, at no extra cost")
    g = p.add_argument_group("statistics")
    if not predict:
        g.add_argument("--n0", type=int, help="selection draws (default: 100; digits: 50)")
    g.add_argument("--n", type=int, help="estimation draws; the largest n for --radius (default: 100000; digits: 1000)")
    g.add_argument("--alpha", type=float, default=0.001, help="failure probability in (0, 0.5) (default: 0.001)")
    if not predict:
        g.add_argument("--radius", type=float, help="sequential mode: certify this L2 radius with as few draws as possible")
        g.add_argument("--budget", type=int, help="the anytime radius: up to BUDGET estimation draws (replaces --n), "
                                                  "the radius certified by a betting confidence sequence, valid at "
                                                  "any stopping time (recorded as the image's radius)")
        g.add_argument("--sequential", default=DEFAULT_METHOD.value, choices=[m.value for m in SequentialMethod],
                       help="the test --radius runs: exact (exact-boundary test at fixed looks, the default), betting "
                            "(a betting confidence sequence, valid at any stopping time) or geometric (the plan of "
                            "densepure <= 0.1, to reproduce earlier runs) (default: exact)")
    g = add_execution_arguments(p)
    g.add_argument("--seed", type=int, help="noise seed; unset: drawn from the OS and recorded in the sidecar")
    g.add_argument("--output", default="runs/predict.tsv" if predict else "runs/certify.tsv",
                   help="result file (TSV, with a .jsonl sidecar); an existing matching run is resumed")
    g.add_argument("--overwrite", action="store_true", help="start the result file again instead of resuming")
    if not predict:
        g.add_argument("--plot", help="certified-accuracy PNG (default: next to the result file)")
    g = p.add_argument_group("cluster (Ray; docs/distributed.md)")
    g.add_argument("--ray", metavar="local|auto|ADDRESS",
                   help="spread the run over a Ray cluster: local (start one on this machine), auto (join the running "
                        "one: ray start, KubeRay, Slurm) or its address; same results and resume as one process "
                        "(needs the ray extra: pip install 'densepure[ray]')")
    g.add_argument("--workers", type=int, default=0,
                   help="--ray: workers, each loading the models once (default: one per GPU of the cluster; "
                        "without GPUs, one per CPU)")
    g.add_argument("--split-draws", type=int, default=1, metavar="S",
                   help="--ray: sample each image's draws on S workers in disjoint ranges and add the counts before "
                        "the bound (exact; one image on several GPUs) (default: 1, no split)")


def _chain_list(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected chain counts like 1,3, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"chain counts must be >= 1, got {text!r}")
    return values


def options_from_args(args: argparse.Namespace, predict: bool):
    from densepure.certify.job import JobOptions

    return JobOptions(
        preset=args.preset, checkpoint=args.checkpoint, classifier=args.classifier, resize=args.resize, data=args.data,
        mode=Mode(args.mode), sigma=args.sigma, n0=getattr(args, "n0", None), n=args.n, alpha=args.alpha,
        num_chains=args.num_chains, steps=args.steps, t_star_rule=TStarRule(args.t_star_rule),
        radius=getattr(args, "radius", None), sequential=getattr(args, "sequential", DEFAULT_METHOD.value),
        predict=predict, batch_size=args.batch_size, device=args.device,
        precision=Precision(args.precision), backend=BackendKind(args.backend), artifacts=args.artifacts,
        cache_dir=args.cache_dir, cuda_graphs=args.cuda_graphs, lookahead=args.lookahead,
        also_chains=getattr(args, "also_chains", ()),
        kernels=KernelChoice(args.kernels), compile=CompileMode(args.compile) if args.compile else None,
        seed=args.seed, output=args.output, skip=args.skip, max=args.max,
        overwrite=args.overwrite, ray=args.ray, workers=args.workers, split_draws=args.split_draws,
        noise=NoiseKind(args.noise) if args.noise else None, levels=args.levels, budget=getattr(args, "budget", None),
    )


class BarProgress:
    """One tqdm bar over the run's draws (its total known for fixed-n tasks: ETA), moving after every
    engine step, so a long image shows progress; the postfix has draws/s and images done."""

    def __init__(self, task):
        self.per_image = _draws_per_image(task)
        self.bar = None
        self.images = self.done = 0
        self.last = ""  # the last decided image, shown after the rate
        self.start_time = time.perf_counter()

    def __enter__(self) -> BarProgress:
        return self

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.close()

    def start(self, images: int) -> None:
        from tqdm import tqdm

        self.images = images
        self.start_time = time.perf_counter()  # the rate counts sampling time, as the bar's does
        total = images * self.per_image if self.per_image else None
        self.bar = tqdm(total=total, unit="draw", unit_scale=True, dynamic_ncols=True, smoothing=0.1)
        self._postfix()

    def step(self, stats) -> None:
        if self.bar is not None and stats.draws > self.bar.n:
            # the postfix's draws/s follows the draws inside a long image too (shown with the bar's next refresh)
            self._postfix(draws=stats.draws, refresh=False)
            self.bar.update(stats.draws - self.bar.n)

    def image(self, record, draws: int) -> None:
        self.done += 1
        radius = "" if record.row.radius is None else f" r={record.row.radius:.3f}"
        self.last = f", last: label {record.row.label} -> {record.row.predict}{radius}"
        self._postfix()

    def _postfix(self, draws: int | None = None, refresh: bool = True) -> None:
        draws = (self.bar.n if self.bar is not None else 0) if draws is None else draws
        rate = draws / max(time.perf_counter() - self.start_time, 1e-9)
        self.bar.set_postfix_str(f"images {self.done}/{self.images}, {rate:,.0f} draws/s{self.last}", refresh=refresh)


def _draws_per_image(task) -> int | None:
    """Draws one image takes under ``task`` when fixed in advance (None for sequential tasks)."""
    from densepure.certify.tasks import AnytimeTask, CertifyTask, PredictTask

    return task.max_draws() if isinstance(task, (CertifyTask, PredictTask, AnytimeTask)) else None


def summarize_run(output: Path, plot: Path, radii=(0.0, 0.25, 0.5, 0.75, 1.0),
                  also: tuple[Path, ...] = ()) -> list[str]:
    """The certified-accuracy table of the run (and its ``--also-K`` files), and the plot's path."""
    from densepure.certify.analyze import load_run, markdown_table, plot_certified_accuracy, summarize

    runs = [load_run(path) for path in (output, *also)]
    plot_path = plot_certified_accuracy(runs, plot)
    lines = [markdown_table([summarize(run, radii) for run in runs]), f"results: {output} (sidecar {output}.jsonl)"]
    lines += [f"         {path} (sidecar {path}.jsonl)" for path in also]
    return [*lines, f"plot:    {plot_path}"]


class ClusterProgress:
    """One tqdm bar for a cluster run (a ``densepure.distributed.RunObserver``): images done, draws/s across
    all workers, ETA; lost workers are reported above the bar."""

    def __init__(self) -> None:
        self._bar = None
        self._draws, self._workers, self._start = 0, 0, time.perf_counter()

    def started(self, images: int, plan: str, workers) -> None:
        from tqdm import tqdm

        tqdm.write(f"{plan}: " + ", ".join(worker.describe() for worker in workers), file=sys.stderr)
        self._bar = tqdm(total=images, unit="img", dynamic_ncols=True)
        self._workers, self._start = len(workers), time.perf_counter()

    def progressed(self, draws: int) -> None:
        self._draws += draws
        self._postfix()

    def image_done(self, record) -> None:
        if self._bar is not None:
            self._bar.update(1)

    def worker_lost(self, message: str, workers_left: int) -> None:
        from tqdm import tqdm

        tqdm.write(message, file=sys.stderr)
        self._workers = workers_left
        self._postfix()

    def _postfix(self) -> None:
        if self._bar is not None:
            rate = self._draws / max(time.perf_counter() - self._start, 1e-9)
            self._bar.set_postfix_str(f"{rate:,.0f} draws/s on {self._workers} workers")

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def summarize_predict_run(output: Path, also: tuple[Path, ...] = ()) -> list[str]:
    """The accuracy and abstention table of a PREDICT run (and its ``--also-K`` files), and where they are."""
    from densepure.certify.analyze import load_run, predict_markdown_table, summarize_predictions

    table = predict_markdown_table([summarize_predictions(load_run(path)) for path in (output, *also)])
    lines = [table, f"results: {output} (sidecar {output}.jsonl)"]
    return [*lines, *(f"         {path} (sidecar {path}.jsonl)" for path in also)]
