"""``densepure bench throughput``: how fast the engine certifies the job's images, against the official loop.

The engine is the one ``densepure certify`` builds for the same flags (models, backend, precision,
kernels, batch), fed through the same runner; each image's noise is keyed by (seed, its dataset index).
Reported per side (``engine.``, ``official.``): images/hour (and at the papers' N0=100, N=100,000 at the
measured draw rate), draws/s, UNet and classifier rows/s, rows per draw and per call, the achieved model
TFLOP/s and the MFU (:func:`~densepure.bench.common.mfu_metrics`: against the data sheet's peak of the
side's precision on CUDA, and against the matmul rate of that precision measured here), peak memory; and
``ratio.``: engine / official. ``--baseline official`` runs the published loop
(:mod:`densepure.bench.official`, in ``--official-precision``, fp32 by default) on the same images with
the same seed in the same process, after the engine in each of ``--repeats`` alternating rounds (a drift
in the machine's speed hits both sides); medians are reported. The engine is activated once (CUDA graphs
captured, compiled with ``--compile``): ``engine.capture_s``, never inside a timed round. One image runs
once on each side before timing (warm-up, not counted). The configuration records what each side
computed with: precision, TF32 inside the model calls, kernels, CUDA graphs, rows, the weights.
``--scenario offline`` drives the engine with LoadGen's Offline scenario instead.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from densepure.bench.common import (
    IndexedImages,
    mfu_metrics,
    model_flops,
    now,
    peak_memory,
    progress_bar,
    reset_peak_memory,
    warm_up,
)
from densepure.bench.models import BenchImages, bench_engine, bench_images, torch_modules, weights_provenance
from densepure.bench.official import OfficialLoop, official_batch_default
from densepure.bench.options import BenchRun, Scenario
from densepure.bench.report import ReportBuilder, Unit
from densepure.certify.runner import certify_images
from densepure.certify.tasks import CertifyTask
from densepure.engine.device import resolve_device
from densepure.errors import ConfigError


@dataclass
class Round:
    """One timed pass of a side over the images (``partial``: interrupted, the counts so far)."""

    seconds: float = 0.0
    images: int = 0
    draws: int = 0
    unet_rows: int = 0
    classifier_rows: int = 0
    unet_calls: int = 0
    classifier_calls: int = 0
    partial: bool = False


@dataclass
class Side:
    """Every round of one side, and its per-image results (idx -> (predict, radius)) of the first round."""

    name: str
    rounds: list[Round] = field(default_factory=list)
    results: dict[int, tuple[int, float]] = field(default_factory=dict)
    peak_bytes: int | None = None

    def median_round(self) -> Round | None:
        done = [r for r in self.rounds if not r.partial and r.seconds > 0] or [r for r in self.rounds if r.seconds > 0]
        if not done:
            return None
        return sorted(done, key=lambda r: r.seconds)[(len(done) - 1) // 2]


def check(run: BenchRun) -> None:
    if run.throughput.baseline is not None:
        if run.job.sampling.radius is not None:
            raise ConfigError("the official loop certifies at a fixed n: drop --radius to compare with it")
        if run.load.scenario is not None:
            raise ConfigError("--baseline compares both sides in one plain loop: drop --scenario (LoadGen drives "
                              "the engine alone)")
    if run.load.scenario not in (None, Scenario.OFFLINE):
        raise ConfigError(f"bench throughput runs the offline scenario (every query at once), not "
                          f"{run.load.scenario.value}: see bench latency and bench serve for the others")
    if run.job.sampling.predict:
        raise ConfigError("bench throughput certifies: predict is not one of its tasks")


def measure(run: BenchRun, builder: ReportBuilder, out) -> None:
    """Fill ``builder`` with the throughput of the engine (and the official loop, if asked)."""
    from densepure.bench.environment import collect_environment

    check(run)
    images = bench_images(run)
    device = resolve_device(run.job.execution.device)
    builder.environment = collect_environment(device)
    engine = bench_engine(run, images.shape, images.classes, image_slots=8)
    seed = run.job.sampling.seed if run.job.sampling.seed is not None else 0
    builder.configuration.update(seed=seed, images_selected=len(images.indices), **engine_record(run, engine))
    if run.load.scenario is Scenario.OFFLINE:
        from densepure.bench.local import loadgen_local

        return loadgen_local(run, builder, out, engine, images, seed)
    official = _official(run, builder, engine, device)
    sides = {"engine": Side("engine")} | ({"official": Side("official")} if official is not None else {})
    start = now(engine.device)
    with engine, torch.inference_mode():
        builder.metric("engine.capture_s", now(engine.device) - start, Unit.SECONDS,
                       "activating the engine once: CUDA graphs of every bucket captured (and compiled with "
                       "--compile); in no timed round")
        _warm_up(engine, official, images, run, seed)
        for repeat in range(run.bench.repeats):
            try:
                _engine_round(engine, images, run, seed, sides["engine"], f"engine ({repeat + 1}/{run.bench.repeats})")
                if official is not None:
                    _official_round(official, images, run, seed, sides["official"],
                                    f"official ({repeat + 1}/{run.bench.repeats})")
            finally:
                report_sides(builder, sides, engine, run, images)


def engine_record(run: BenchRun, engine) -> dict[str, object]:
    """What the engine computes with, for the report's configuration."""
    denoiser = engine.backends.denoiser
    call = getattr(denoiser, "call", None) or getattr(engine.backends.classifier, "call", None)
    precision = run.job.execution.precision
    return {"engine_rows_per_call": engine.config.unet_rows, "kernels_resolved": engine.kernels.describe(),
            "cuda_graphs_resolved": bool(call is not None and call.graphs), "weights": weights_provenance(run),
            "tf32_in_model_calls": precision.tf32 and engine.device.type == "cuda"}


def _official(run: BenchRun, builder: ReportBuilder, engine, device) -> OfficialLoop | None:
    """The official loop over the job's models in ``--official-precision``, when ``--baseline official``."""
    if run.throughput.baseline is None:
        return None
    batch = run.throughput.official_batch or official_batch_default(run.job.models.preset)
    precision = run.throughput.official_precision
    unet, classifier = torch_modules(run, device)
    unet.set_precision(precision.dtype)
    classifier.set_precision(precision.dtype)
    builder.configuration.update(official_batch_resolved=batch,
                                 official_tf32_in_model_calls=precision.tf32 and device.type == "cuda")
    return OfficialLoop(unet, classifier, engine.smoothing, batch, device, precision)


def _warm_up(engine, official, images: BenchImages, run: BenchRun, seed: int) -> None:
    """One image through each side, not counted (:func:`~densepure.bench.common.warm_up`)."""
    warm_up(engine, images, run.job.task(), seed)
    if official is not None:
        official.warm_up(images.images[0])


def _engine_round(engine, images: BenchImages, run: BenchRun, seed: int, side: Side, desc: str) -> None:
    task = run.job.task()
    per_image = task.max_draws if isinstance(task, CertifyTask) else None
    round_, before = Round(), engine.stats
    side.rounds.append(round_)
    last = [before]

    def on_step(stats) -> None:
        round_.unet_calls += stats.unet_rows > last[0].unet_rows
        round_.classifier_calls += stats.classifier_rows > last[0].classifier_rows
        last[0] = stats
        bar.update(stats.draws - before.draws - bar.n)

    reset_peak_memory(engine.device)
    bar = progress_bar(per_image * len(images.indices) if per_image else None, desc)
    start = now(engine.device)
    round_.partial = True
    try:
        for result in certify_images(engine, IndexedImages(images), images.indices, task, seed, on_step=on_step):
            round_.images += 1
            row = result.record.row
            side.results.setdefault(row.idx, (row.predict, row.radius or 0.0))
        round_.partial = False
    finally:
        bar.close()
        round_.seconds = now(engine.device) - start
        stats = engine.stats
        round_.draws = stats.draws - before.draws
        round_.unet_rows, round_.classifier_rows = stats.unet_rows - before.unet_rows, \
            stats.classifier_rows - before.classifier_rows
        side.peak_bytes = max(side.peak_bytes or 0, peak_memory(engine.device)[0])


def _official_round(official: OfficialLoop, images: BenchImages, run: BenchRun, seed: int, side: Side,
                    desc: str) -> None:
    sampling = run.job.sampling
    classes = official.classifier.num_classes or images.classes
    round_, before = Round(), vars(official.counts).copy()
    side.rounds.append(round_)
    passes = official.smoothing.num_chains
    bar = progress_bar(len(images.indices) * (sampling.n0 + sampling.n) * passes, f"{desc}, draws x passes")
    reset_peak_memory(official.device)
    start = now(official.device)
    round_.partial = True
    try:
        for idx, x in zip(images.indices, images.images, strict=True):
            cert = official.certify(x, idx, seed, sampling.n0, sampling.n, sampling.alpha, classes, bar.update)
            round_.images += 1
            side.results.setdefault(idx, (cert.label, cert.radius))
        round_.partial = False
    finally:
        bar.close()
        round_.seconds = now(official.device) - start
        counts = vars(official.counts)
        for key in ("draws", "unet_rows", "classifier_rows", "unet_calls", "classifier_calls"):
            setattr(round_, key, counts[key] - before[key])
        if round_.partial:  # draws of an unfinished image: the classifier rows of every pass so far / K
            round_.draws = round_.classifier_rows // passes
        side.peak_bytes = max(side.peak_bytes or 0, peak_memory(official.device)[0])


def report_sides(builder: ReportBuilder, sides: dict[str, Side], engine, run: BenchRun, images: BenchImages) -> None:
    """Every side's metrics (from its median round), their ratios, the per-image results and the notes."""
    flops = model_flops(engine) if run.job.execution.backend.value == "torch" else (None, None)
    for side in sides.values():
        median = side.median_round()
        if median is not None:
            side_metrics(builder, side.name, median, len(side.rounds), flops)
            if side.peak_bytes is not None and engine.device.type == "cuda":
                builder.metric(f"{side.name}.peak_memory_bytes", side.peak_bytes, Unit.BYTES,
                               "peak CUDA memory allocated by torch during a round")
    if engine.device.type != "cuda":
        value, what = peak_memory(engine.device)
        builder.metric("process.peak_memory_bytes", value, Unit.BYTES, what)
    _mfu(builder, sides, engine, run, flops)
    for key in ("draws_per_s", "images_per_hour", "unet_rows_per_draw", "classifier_rows_per_draw",
                "unet_rows_per_s"):
        builder.ratio(f"ratio.{key}", f"engine.{key}", f"official.{key}", f"engine / official {key}")
    _results_series(builder, sides, images)
    if any(r.partial for side in sides.values() for r in side.rounds):
        builder.note("a round was interrupted: its numbers count the images and draws done until then")
    builder.note(f"the official loop is eager with the job's models in {run.throughput.official_precision.value}, "
                 "per the published protocol; the engine runs the job's precision, kernels and batch"
                 if "official" in sides else "no baseline: add --baseline official to compare with the published loop")


def side_metrics(builder: ReportBuilder, name: str, r: Round, rounds: int, flops) -> None:
    s = max(r.seconds, 1e-9)
    where = f"median of {rounds} round(s)" if rounds > 1 else "one round"
    builder.metric(f"{name}.seconds", r.seconds, Unit.SECONDS, f"wall time for {r.images} image(s), {where}")
    builder.metric(f"{name}.images_per_hour", 3600 * r.images / s, Unit.IMAGES_PER_HOUR, "certified images per hour")
    builder.metric(f"{name}.draws_per_s", r.draws / s, Unit.DRAWS_PER_S, "base-classifier draws per second")
    builder.metric(f"{name}.images_per_hour_at_n100k", 3600 * r.draws / s / 100_100, Unit.IMAGES_PER_HOUR,
                   "certified images per hour at N0=100, N=100,000 (the papers' setting) at this draw rate")
    builder.metric(f"{name}.unet_rows_per_s", r.unet_rows / s, Unit.ROWS_PER_S, "UNet rows (chain steps) per second")
    builder.metric(f"{name}.classifier_rows_per_s", r.classifier_rows / s, Unit.ROWS_PER_S, "classifier rows per second")
    if r.draws:
        builder.metric(f"{name}.unet_rows_per_draw", r.unet_rows / r.draws, Unit.ROWS_PER_DRAW, "UNet rows per draw")
        builder.metric(f"{name}.classifier_rows_per_draw", r.classifier_rows / r.draws, Unit.ROWS_PER_DRAW,
                       "classifier rows per draw")
    if r.unet_calls:
        builder.metric(f"{name}.unet_rows_per_call", r.unet_rows / r.unet_calls, Unit.ROWS_PER_CALL,
                       "mean rows per UNet call")
    if r.classifier_calls:
        builder.metric(f"{name}.classifier_rows_per_call", r.classifier_rows / r.classifier_calls, Unit.ROWS_PER_CALL,
                       "mean rows per classifier call")
    builder.metric(f"{name}.draws", r.draws, Unit.DRAWS, "draws in the round")
    builder.metric(f"{name}.unet_rows", r.unet_rows, Unit.COUNT, "UNet rows in the round")
    builder.metric(f"{name}.classifier_rows", r.classifier_rows, Unit.COUNT, "classifier rows in the round")
    unet_flops, clf_flops = flops
    if unet_flops is not None and clf_flops is not None:
        achieved = (r.unet_rows * unet_flops + r.classifier_rows * clf_flops) / s / 1e12
        builder.metric(f"{name}.model_tflops", achieved, Unit.TFLOP_PER_S,
                       "model FLOPs (UNet and classifier, FlopCounterMode) per second")


def _mfu(builder: ReportBuilder, sides, engine, run: BenchRun, flops) -> None:
    unet_flops, clf_flops = flops
    if unet_flops is not None:
        builder.metric("model.unet_gflop_per_row", unet_flops / 1e9, Unit.GFLOP_PER_ROW, "UNet FLOPs per row")
    if clf_flops is not None:
        builder.metric("model.classifier_gflop_per_row", clf_flops / 1e9, Unit.GFLOP_PER_ROW,
                       "classifier FLOPs per row (analytic for the random ViT)")
    precisions = {"engine": run.job.execution.precision, "official": run.throughput.official_precision}
    for side in sides:
        achieved = builder.metrics.get(f"{side}.model_tflops")
        if achieved is None:
            builder.note(f"no MFU for {side}: model FLOPs unknown (exported graphs)")
            continue
        mfu_metrics(builder, side, achieved.value, precisions[side], engine.device, run.throughput.peak_tflops,
                    f"{side} ({precisions[side].value})")


def _results_series(builder: ReportBuilder, sides, images: BenchImages) -> None:
    columns = [("index", Unit.COUNT), ("label", Unit.COUNT)]
    for name in sides:
        columns += [(f"{name}_predict", Unit.COUNT), (f"{name}_radius", Unit.RADIUS)]
    rows = []
    for idx, label in zip(images.indices, images.labels, strict=True):
        row = [idx, label]
        for side in sides.values():
            predict, radius = side.results.get(idx, (None, None))
            row += [predict, radius]
        rows.append(row)
    builder.add_series("images", columns, rows)
