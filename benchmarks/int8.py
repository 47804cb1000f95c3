"""INT8 against fp32 graphs on onnxruntime's CPU provider: labels, certificates, speed, sizes.

Three parts, each writing its own report under benchmarks/results/:

* ``--part digits`` (int8_digits_cpu.md): the digits default (DensePure K=10, b=2, sigma=0.25) with
  Table 1's images and seed (100 test images spread over the split, seed 0) at N0=100, N=1000,
  alpha=0.001, once with the fp32 graphs and once with the int8 graphs (exported here, calibrated on the
  shipped calibration split): per-draw label agreement (every selection and estimation draw of every
  image, the K-chain vote), the shift of each image's estimated top-class probability n_A/N, certified
  accuracy per radius and ACR side by side (and paired), end-to-end wall time of each run, and the
  UNet's and the classifier's time per row at 128 rows (interleaved repeats, median).
* ``--part exclusions`` (int8_exclusions_digits_cpu.md): which parts kept in float matter. The default
  int8 graphs and variants that quantize one kept part each (or keep one more, or place Q/DQ as
  TensorRT prefers): the UNet's eps/v error on held-out pipeline rows, per-draw label agreement with
  fp32 on a smaller run (--images, --n0, --n), and the UNet's time per row.
* ``--part cifar`` (int8_cifar10_unet_cpu.md): the CIFAR-10 UNet architecture (52.5M parameters) with
  random perturbed weights, exported fp32, fp16 and int8: graph sizes, onnxruntime time per row, and
  memory per batch bucket from the graphs (weights + the largest set of live activations per row).

Usage: python benchmarks/int8.py --part digits|exclusions|cifar [--threads 1] [--work DIR]
       (digits as two processes: --export-only, then --only fp32 and --only int8 at once, then no --only)
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from common import machine
from graph_memory import graph_memory

from densepure.artifacts import ArtifactKind
from densepure.certify.tasks import CertifyTask
from densepure.diffusion import Mode, SmoothingConfig
from densepure.engine.backends import Backends
from densepure.engine.backends.onnxruntime_backend import OnnxRuntimeClassifier, OnnxRuntimeDenoiser, OrtProvider
from densepure.engine.engine import Engine, EngineConfig, ImageRequest
from densepure.export import export_command
from densepure.export.calibration import CalibrationPlan, pipeline_activations
from densepure.export.int8 import DEFAULT_KEEP, CalibrationMethod, KeepFloat, QdqPlacement, QuantizeSettings
from densepure.models import get_preset
from densepure.models.digits import load_digits_calibration_split, load_digits_test_split, load_digits_unet
from densepure.noise import NoisePhase
from densepure.precision import Precision
from densepure.results.analyze import DEFAULT_RADII, load_run, markdown_table, paired_markdown, summarize
from densepure.results.records import IfExists
from densepure.results.writer import open_results

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
SIGMA, K, B, SEED, ALPHA = 0.25, 10, 2, 0, 0.001
PRECISIONS = (Precision.FP32, Precision.INT8)


def digits_plan(images: int = 128) -> CalibrationPlan:
    """What `densepure export --precision int8` does for digits by default (128 images x 4 draws)."""
    split, _, rows = load_digits_calibration_split()
    pick = sorted({int(i) for i in np.linspace(0, len(split) - 1, images).round()})
    return CalibrationPlan(split[pick], sigma=SIGMA, steps=B, draws=4, seed=0, data="digits calibration split",
                           indices=tuple(int(rows[i]) for i in pick))


def export_digits(out: Path, quantize: QuantizeSettings = QuantizeSettings()) -> dict:
    report = export_command("digits", None, out, precisions=PRECISIONS, classifier="digits",
                            calibration=digits_plan(), quantize=quantize)
    return {(r.manifest.kind, r.manifest.precision): r.onnx_path for r in report.results}


def backends(graphs: dict, precision: Precision, threads: int) -> Backends:
    cpu = [OrtProvider.CPU]
    return Backends(OnnxRuntimeDenoiser(graphs[ArtifactKind.UNET, precision], providers=cpu, intra_op_threads=threads),
                    OnnxRuntimeClassifier(graphs[ArtifactKind.CLASSIFIER, precision], providers=cpu,
                                          intra_op_threads=threads))


def certify(graphs: dict, precision: Precision, images: dict, task: CertifyTask, threads: int, writer=None):
    """Every image through one engine: ({image: policy}, {(image, phase, draw): label}, seconds)."""
    smoothing = SmoothingConfig(Mode.DENSEPURE, SIGMA, K, B, schedule=get_preset("digits").schedule)
    engine = Engine(smoothing, backends(graphs, precision, threads), (1, 8, 8), "cpu",
                    EngineConfig(unet_rows=512, classifier_rows=512, draw_capacity=1024, image_slots=8))
    labels: dict = {}

    def recorded(i: int):
        policy = task.policy(10, SIGMA)
        inner = policy.record

        def record(request, label, prefix_labels=None):
            labels[i, request.phase, request.draw] = int(label)
            inner(request, label, prefix_labels)

        policy.record = record
        return policy

    start, done = time.perf_counter(), {}
    for request in engine.run(ImageRequest(i, x, recorded(i), SEED, noise_id=i) for i, x in images.items()):
        done[request.key] = request.policy
        if writer is not None:
            i = request.key
            writer.write(task.record(i, images_labels[i], request.policy.seconds, request.policy.counts, SIGMA))
    return done, labels, time.perf_counter() - start


images_labels: dict = {}


def per_row(paths: dict, feeds: dict, threads: int, rounds: int = 5, seconds: float = 2.0) -> dict:
    """Median seconds per row of each graph on ``feeds``, the graphs' calls interleaved round by round."""
    import onnxruntime as ort

    from densepure.artifacts.quantized import ort_disabled_optimizers

    sessions = {}
    for name, (path, quantized) in paths.items():
        opts = ort.SessionOptions()
        opts.intra_op_num_threads, opts.log_severity_level = threads, 3
        sessions[name] = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"],
                                              disabled_optimizers=ort_disabled_optimizers(quantized))
        sessions[name].run(None, feeds)
    rows, times = next(iter(feeds.values())).shape[0], {name: [] for name in sessions}
    for _ in range(rounds):
        for name, session in sessions.items():
            calls, t0 = 0, time.perf_counter()
            while calls < 1 or time.perf_counter() - t0 < seconds:
                session.run(None, feeds)
                calls += 1
            times[name].append((time.perf_counter() - t0) / calls / rows)
    return {name: statistics.median(t) for name, t in times.items()}


def agreement(a: dict, b: dict) -> tuple[float, int, int]:
    keys = sorted(set(a) & set(b))
    same = sum(a[k] == b[k] for k in keys)
    return same / len(keys), len(keys) - same, len(keys)


def run_saved(args, graphs: dict, p: Precision, images: dict, task: CertifyTask, path: Path):
    """One precision's certification, its per-draw labels and wall time kept in ``path`` (.npz) so that the
    two precisions can run as two processes (``--only``) and the report read both."""
    if path.is_file():
        with np.load(path) as saved:
            keys, values = saved["keys"], saved["labels"]
            return {(int(i), NoisePhase(int(ph)), int(d)): int(v) for (i, ph, d), v in zip(keys, values, strict=True)}, \
                float(saved["seconds"])
    tsv = path.with_suffix(".tsv")
    config = {"benchmark": "int8", "precision": p.value, "sigma": SIGMA, "K": K, "b": B, "n0": args.n0,
              "n": args.n, "alpha": ALPHA, "predict": False, "radius": None, "images": args.images}
    with open_results(tsv, config, SEED, IfExists.OVERWRITE) as writer:
        _, labels, seconds = certify(graphs, p, images, task, args.threads, writer)
    keys = np.array([(i, int(ph), d) for i, ph, d in labels], dtype=np.int64).reshape(-1, 3)
    np.savez(path, keys=keys, labels=np.array(list(labels.values()), dtype=np.int64), seconds=seconds)
    print(f"{p.value}: {seconds:.1f} s", flush=True)
    return labels, seconds


def part_digits(args) -> list[str]:
    if args.only is None:
        graphs = export_digits(args.work / "digits")
    else:  # exported by `--export-only` first: two processes must not export into one directory at once
        from densepure.artifacts import exported_artifacts

        graphs = {(m.kind, m.precision): path for path, m in exported_artifacts(args.work / "digits")}
    if args.export_only:
        sys.exit(0)
    x, y = load_digits_test_split()
    idx = np.linspace(0, len(x) - 1, args.images).astype(int).tolist()
    images = {i: x[i] for i in idx}
    images_labels.update({i: int(y[i]) for i in idx})
    task = CertifyTask(args.n0, args.n, ALPHA)
    labels, seconds, files = {}, {}, {}
    tag = f"{args.images}x{args.n0}+{args.n}"
    for p in PRECISIONS if args.only is None else (Precision(args.only),):
        saved = args.work / "runs" / f"digits_{p.value}_{tag}.npz"
        saved.parent.mkdir(parents=True, exist_ok=True)
        labels[p], seconds[p] = run_saved(args, graphs, p, images, task, saved)
        files[p] = saved.with_suffix(".tsv")
    if args.only is not None:
        sys.exit(0)
    rate, differ, total = agreement(labels[Precision.FP32], labels[Precision.INT8])
    shifts = []
    for i in idx:  # the estimation draws' labels: n_A/N of fp32's top class, in each precision
        est = {p: np.bincount([v for (j, ph, _), v in labels[p].items() if j == i and ph is NoisePhase.ESTIMATION],
                              minlength=10) for p in PRECISIONS}
        top = int(np.argmax(est[Precision.FP32]))
        shifts.append((est[Precision.INT8][top] - est[Precision.FP32][top]) / args.n)
    shifts = np.array(shifts)
    e2e = {}  # the same certification of a few images, fp32 then int8, in this one process: wall and CPU time
    few = {i: images[i] for i in idx[:args.e2e_images]}
    for p in PRECISIONS:
        wall, cpu = time.perf_counter(), time.process_time()
        certify(graphs, p, few, task, args.threads)
        e2e[p] = (time.perf_counter() - wall, time.process_time() - cpu)
    unet = torch.randn(128, 1, 8, 8).numpy()
    feeds = {"x": unet, "t": np.full((128,), 290.0, np.float32)}
    unet_times = per_row({p.value: (graphs[ArtifactKind.UNET, p], p.quantized) for p in PRECISIONS}, feeds,
                         args.threads)
    clf_times = per_row({p.value: (graphs[ArtifactKind.CLASSIFIER, p], p.quantized) for p in PRECISIONS},
                        {"x": np.clip(unet, -1, 1)}, args.threads)
    loaded = [load_run(files[p], f"{p.value} graphs") for p in PRECISIONS]
    f32, i8 = (f"{v}" for v in ("fp32", "int8"))
    return [
        "# INT8 against fp32 graphs on the digits default (onnxruntime CPU)", "",
        f"Command: `{args.command}`  ", f"Machine: {machine()}, onnxruntime intra-op threads {args.threads}  ",
        f"Setting: {args.images} digits test images (spread evenly over the 450-image split, as Table 1's), DensePure "
        f"K={K} b={B} sigma={SIGMA}, N0={args.n0}, N={args.n}, alpha={ALPHA}, seed={SEED}; the same images, seeds "
        "and engine for both; graphs from `export_command` (int8: the CLI defaults, 128 calibration images x 4 "
        "draws of the shipped calibration split, percentile 99.999, Q/DQ placement onnxruntime, kept in float: "
        "output head, time embedding, normalization, softmax).", "",
        "The two certifications ran as two processes at the same time (`--only fp32`, `--only int8`, each one "
        f"onnxruntime thread) on a 2-core machine, {args.load}: their wall times "
        "are noisy. The report's process then certified the first images again, fp32 then int8, measuring wall "
        "and CPU time (CPU time is what the load disturbs least), and timed the models per row, interleaved.",
        "", "## Labels", "",
        f"- per-draw label agreement (the K-chain vote of every selection and estimation draw): **{rate:.4%}** "
        f"({differ} of {total:,} draws differ)",
        f"- estimated top-class probability n_A/N (fp32's top class), int8 minus fp32 per image: mean "
        f"{shifts.mean():+.4f}, mean |shift| {np.abs(shifts).mean():.4f}, largest |shift| {np.abs(shifts).max():.4f}",
        "", "## Certificates", "", markdown_table([summarize(r, DEFAULT_RADII) for r in loaded]), "",
        paired_markdown(loaded[0], loaded[1:]), "", "## Speed (same run)", "",
        "| | fp32 | int8 | fp32/int8 |", "| --- | ---: | ---: | ---: |",
        f"| end to end, {args.images} images, two processes at once (wall) | {seconds[Precision.FP32]:.1f} s | "
        f"{seconds[Precision.INT8]:.1f} s | {seconds[Precision.FP32] / seconds[Precision.INT8]:.2f}x |",
        *(f"| end to end, {len(few)} images, one process, fp32 then int8 ({kind}) | {e2e[Precision.FP32][j]:.1f} s | "
          f"{e2e[Precision.INT8][j]:.1f} s | {e2e[Precision.FP32][j] / e2e[Precision.INT8][j]:.2f}x |"
          for j, kind in enumerate(("wall", "CPU"))),
        f"| UNet per row (128 rows/call) | {unet_times[f32] * 1e6:.0f} us | {unet_times[i8] * 1e6:.0f} us | "
        f"{unet_times[f32] / unet_times[i8]:.2f}x |",
        f"| classifier per row (128 rows/call) | {clf_times[f32] * 1e6:.1f} us | {clf_times[i8] * 1e6:.1f} us | "
        f"{clf_times[f32] / clf_times[i8]:.2f}x |", ""]


VARIANTS = {
    "default": QuantizeSettings(),
    "quantize output head": QuantizeSettings(keep_float=tuple(k for k in DEFAULT_KEEP if k is not KeepFloat.OUTPUT_HEAD)),
    "quantize time embedding": QuantizeSettings(keep_float=tuple(k for k in DEFAULT_KEEP
                                                                 if k is not KeepFloat.TIME_EMBEDDING)),
    "quantize normalization": QuantizeSettings(keep_float=tuple(k for k in DEFAULT_KEEP
                                                                if k is not KeepFloat.NORMALIZATION)),
    "quantize softmax": QuantizeSettings(keep_float=tuple(k for k in DEFAULT_KEEP if k is not KeepFloat.SOFTMAX)),
    "quantize all five": QuantizeSettings(keep_float=()),
    "also keep attention matmuls": QuantizeSettings(keep_float=(*DEFAULT_KEEP, KeepFloat.ATTENTION)),
    "placement tensorrt": QuantizeSettings(placement=QdqPlacement.TENSORRT),
    "method minmax": QuantizeSettings(method=CalibrationMethod.MINMAX),
}


def part_exclusions(args) -> list[str]:
    x, _ = load_digits_test_split()
    idx = np.linspace(0, len(x) - 1, args.images).astype(int).tolist()
    images, task = {i: x[i] for i in idx}, CertifyTask(args.n0, args.n, ALPHA)
    held = pipeline_activations(replace(digits_plan(), seed=99), load_digits_unet(), get_preset("digits").schedule)
    feeds = {"x": held.unet_x.numpy(), "t": held.unet_t.numpy()}
    base = export_digits(args.work / "exclusions" / "default")
    _, reference, _ = certify(base, Precision.FP32, images, task, args.threads)
    want = None
    lines = ["# Which parts of the digits graphs to keep in float (int8, onnxruntime CPU)", "",
             f"Command: `{args.command}`  ", f"Machine: {machine()}, onnxruntime intra-op threads {args.threads}  ",
             "UNet error: max |int8 - fp32| / max |fp32| and rms relative, over eps and v, on "
             f"{feeds['x'].shape[0]} held-out pipeline rows (other noise, sigma={SIGMA}, both timesteps). "
             f"Agreement: per-draw DensePure labels (K={K}, b={B}) against the fp32 graphs, {args.images} test "
             f"images, N0={args.n0}, N={args.n}, seed 0 ({args.images * (args.n0 + args.n):,} draws). Time: the int8 UNet per row at 128 rows over the fp32 UNet's, "
             "same process, interleaved.", "",
             "| variant | UNet max rel err | UNet rms rel err | label agreement | draws differ | fp32/int8 UNet time |",
             "| --- | ---: | ---: | ---: | ---: | ---: |"]
    import onnxruntime as ort

    from densepure.artifacts.quantized import ort_disabled_optimizers

    chosen = VARIANTS if args.variants is None else {v: VARIANTS[v] for v in args.variants.split(",")}
    for name, settings in chosen.items():
        graphs = base if name == "default" else export_digits(args.work / "exclusions" / name.replace(" ", "_"),
                                                                settings)
        if want is None:
            want = ort.InferenceSession(str(graphs[ArtifactKind.UNET, Precision.FP32])).run(None, feeds)
        got = ort.InferenceSession(str(graphs[ArtifactKind.UNET, Precision.INT8]),
                                   disabled_optimizers=ort_disabled_optimizers(True)).run(None, feeds)
        worst = max(float(np.abs(g - w).max() / np.abs(w).max()) for g, w in zip(got, want, strict=True))
        rms = max(float(np.sqrt(((g - w) ** 2).mean() / (w ** 2).mean())) for g, w in zip(got, want, strict=True))
        _, labels, _ = certify(graphs, Precision.INT8, images, task, args.threads)
        rate, differ, _ = agreement(reference, labels)
        times = per_row({p.value: (graphs[ArtifactKind.UNET, p], p.quantized) for p in PRECISIONS},
                        {"x": feeds["x"][:128], "t": feeds["t"][:128]}, args.threads, rounds=3, seconds=1.0)
        lines.append(f"| {name} | {worst:.4f} | {rms:.4f} | {rate:.3%} | {differ} | "
                     f"{times['fp32'] / times['int8']:.2f}x |")
        print(lines[-1], flush=True)
    return [*lines, ""]


def part_cifar(args) -> list[str]:
    from densepure.models import UNetConfig, UNetModel, save_state_dict

    preset = get_preset("cifar10")
    torch.manual_seed(0)
    model = UNetModel(UNetConfig.from_flags(preset.flags)).eval()
    with torch.no_grad():  # zero-initialized output convs would make every output 0
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    out = args.work / "cifar10"
    out.mkdir(parents=True, exist_ok=True)
    ckpt = out / "random_unet.pt"
    save_state_dict(ckpt, model.state_dict())
    gen = torch.Generator().manual_seed(0)
    images = torch.rand(args.images, 3, 32, 32, generator=gen)  # random weights: any images make activations
    plan = CalibrationPlan(images, sigma=SIGMA, steps=B, draws=1, data="uniform random images (random weights)")
    start = time.perf_counter()
    report = export_command(preset, ckpt, out, precisions=tuple(Precision(p) for p in args.cifar_precisions),
                            calibration=plan, progress=lambda e: print(e.line(), flush=True))
    print(f"exported in {time.perf_counter() - start:.0f} s", flush=True)
    graphs = {r.manifest.precision: r for r in report.results}
    rows = args.cifar_rows
    feeds = {"x": torch.randn(rows, 3, 32, 32, generator=gen).numpy(), "t": np.full((rows,), 143.0, np.float32)}
    times = per_row({p.value: (graphs[p].onnx_path, p.quantized) for p in graphs}, feeds, args.threads, rounds=2,
                    seconds=3.0)
    lines = ["# The CIFAR-10 UNet in int8: graph sizes, onnxruntime CPU time, memory per bucket", "",
             f"Command: `{args.command}`  ", f"Machine: {machine()}, onnxruntime intra-op threads {args.threads}  ",
             f"The cifar10 preset's UNet (52.5M parameters) with random weights (N(0, 0.02^2) added to the "
             f"initialisation, seed 0), exported {', '.join(args.cifar_precisions)} (int8 calibrated on "
             f"{args.images} uniform random images x 1 draw at sigma={SIGMA}, b={B}); times at {rows} rows per "
             "call, median of 2 interleaved rounds. "
             "Memory per bucket, from the graphs: weights + rows x the largest set of activations alive at once "
             "in the graph's node order (a bound before TensorRT's fusion and memory reuse; int8 tensors count "
             "1 byte).", "",
             "| precision | graph file | weights | live activations per row | bucket 1 | bucket 8 | bucket 32 | "
             "time per row | fp32/this |", "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    mb = 2.0 ** 20
    for p, r in graphs.items():
        mem = graph_memory(r.onnx_path)
        size = r.onnx_path.stat().st_size + sum((r.onnx_path.parent / e).stat().st_size
                                                for e in r.manifest.external_data)
        buckets = " | ".join(f"{(mem.weights + b * mem.activations_per_row) / mb:.0f} MiB" for b in (1, 8, 32))
        lines.append(f"| {p.value} | {size / mb:.1f} MiB | {mem.weights / mb:.1f} MiB | "
                     f"{mem.activations_per_row / mb:.1f} MiB | {buckets} | {times[p.value]:.3f} s | "
                     f"{times['fp32'] / times[p.value]:.2f}x |")
    notes = graphs[Precision.INT8].manifest.notes
    return [*lines, "", f"int8 graph: {'; '.join(n for n in notes if n.startswith('int8'))}; export check "
            f"max rel err {graphs[Precision.INT8].numerics.max_rel_error:.3g} on held-out pipeline rows.", ""]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--part", choices=["digits", "exclusions", "cifar"], required=True)
    ap.add_argument("--images", type=int, default=100)
    ap.add_argument("--n0", type=int, default=100)
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads (and torch's)")
    ap.add_argument("--cifar-rows", type=int, default=8)
    ap.add_argument("--cifar-precisions", nargs="+", default=["fp32", "fp16", "int8"])
    ap.add_argument("--report", default=None, help="report file name under benchmarks/results (default: the part's)")
    ap.add_argument("--load", default="load not recorded",
                    help="digits: what else ran on the machine during the --only runs (said in the report)")
    ap.add_argument("--e2e-images", type=int, default=2, help="digits: images of the one-process end-to-end timing")
    ap.add_argument("--only", choices=[p.value for p in PRECISIONS], help="digits: run one precision and keep it")
    ap.add_argument("--export-only", action="store_true", help="digits: export the graphs and stop")
    ap.add_argument("--variants", default=None, help="exclusions: comma-separated variant names (default: all)")
    ap.add_argument("--work", type=Path, default=Path("/tmp/densepure-int8-benchmark"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    args.command = shlex.join(["python", "benchmarks/int8.py", *sys.argv[1:]])
    name = {"digits": "int8_digits_cpu.md", "exclusions": "int8_exclusions_digits_cpu.md",
            "cifar": "int8_cifar10_unet_cpu.md"}[args.part]
    name = args.report or name
    lines = {"digits": part_digits, "exclusions": part_exclusions, "cifar": part_cifar}[args.part](args)
    (RESULTS / name).write_text("\n".join(lines))
    print(f"report: {RESULTS / name}")


if __name__ == "__main__":
    main()
