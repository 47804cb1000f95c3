"""The ``densepure`` command line: the only place that reads argv and the environment.

Every user error (a :class:`~densepure.errors.DensePureError`) ends with a one-line message on
stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import platform
import sys
from collections.abc import Sequence

from densepure.errors import ConfigError, DensePureError

EXIT_USER_ERROR = 2


def _cmd_presets(args: argparse.Namespace) -> int:
    from densepure.models import PRESETS

    for name, preset in sorted(PRESETS.items()):
        cfg = preset.unet_config
        print(f"{name:12s} {preset.image_size:4d}px  {preset.schedule.kind.value:6s} T={preset.schedule.num_timesteps:<5d}"
              f" channels={cfg.model_channels:<4d} checkpoint={preset.checkpoint_file}")
    return 0


def _cmd_doctor(args: argparse.Namespace) -> int:
    from densepure.doctor import collect_report

    for line in collect_report():
        print(line)
    return 0


def _cache_dir(explicit: str | None) -> str:
    """The TensorRT engine cache: the flag, else $DENSEPURE_CACHE, else ~/.cache/densepure."""
    import os
    from pathlib import Path

    return explicit or os.environ.get("DENSEPURE_CACHE") or str(Path.home() / ".cache" / "densepure")


def _cmd_job(args: argparse.Namespace) -> int:
    from densepure.certify.analyze import check_plot_path, default_plot_path
    from densepure.certify.job import prepare, run
    from densepure.cli_certify import BarProgress, options_from_args, summarize_predict_run, summarize_run

    predict = args.command == "predict"
    if args.backend == "tensorrt":
        args.cache_dir = _cache_dir(args.cache_dir)
    options = options_from_args(args, predict)
    outputs = [options.output, *(options.prefix_output(k) for k in options.also_chains)]
    plot = None if predict else check_plot_path(args.plot or default_plot_path(options.output), outputs)
    if options.ray is not None:
        output = _run_on_ray(args.command, options)
    else:
        job = prepare(options)
        print(job.describe(args.command), file=sys.stderr)
        for warning in job.warnings:
            print(f"densepure: warning: {warning}", file=sys.stderr)
        with BarProgress(job.task) as progress:
            output, _ = run(job, progress)
    if predict:
        for line in summarize_predict_run(output, also=tuple(outputs[1:])):
            print(line)
        return 0
    for line in summarize_run(output, plot, also=tuple(outputs[1:])):
        print(line)
    return 0


def _run_on_ray(command: str, options):
    """The job on a Ray cluster (densepure.distributed): the same result file, one progress bar."""
    from densepure.cli_certify import ClusterProgress
    from densepure.distributed import prepare_cluster_job, run_cluster_job

    job = prepare_cluster_job(options)
    print(job.describe(command), file=sys.stderr)
    progress = ClusterProgress()
    try:
        output, _ = run_cluster_job(job, progress)
    finally:
        progress.close()
    return output


def _cmd_analyze(args: argparse.Namespace) -> int:
    from densepure.certify.analyze import (
        check_plot_path,
        load_run,
        markdown_table,
        paired_markdown,
        parse_radii,
        plot_certified_accuracy,
        predict_markdown_table,
        summarize,
        summarize_predictions,
    )
    from densepure.certify.records import TsvKind

    radii = parse_radii(args.radii)
    if args.paired and len(args.results) < 2:
        raise ConfigError("--paired compares the other result files with the first: give at least two")
    plot = check_plot_path(args.plot, args.results) if args.plot else None
    runs = [load_run(p) for p in args.results]  # each file read once, for the table, pairing and plot
    certified = [run for run in runs if run.kind is TsvKind.CERTIFY]
    predicted = [run for run in runs if run.kind is TsvKind.PREDICT]
    if predicted and (args.paired or plot is not None):
        raise ConfigError(f"{'--paired' if args.paired else '--plot'} compares certified radii, and "
                          f"{predicted[0].name} holds PREDICT results (no radius): leave it out")
    if certified:
        print(markdown_table([summarize(run, radii) for run in certified]))
    if predicted:
        names = ", ".join(run.name for run in predicted)
        print(f"{names}: PREDICT results (Cohen's predict.py format): labels with abstention, no certified radius; "
              "accuracy and abstention only\n")
        print(predict_markdown_table([summarize_predictions(run) for run in predicted]))
    if args.paired:
        print(paired_markdown(runs[0], runs[1:]))
    if plot is not None:
        print(f"plot: {plot_certified_accuracy(runs, plot)}")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from densepure.export import export_command
    from densepure.models.sources import required_classifier
    from densepure.precision import Precision

    preset = args.preset or "digits"
    # no --classifier: the shipped one for digits; other presets name theirs (the error names the papers')
    classifier = None if args.no_classifier else (args.classifier or required_classifier(preset))

    def progress(event) -> None:
        print(event.line(), file=sys.stderr, flush=True)

    precisions = Precision.parse_list(args.precision)
    given = [flag for flag, value in (("--sigma", args.sigma), ("--b", args.steps),
                                      ("--calibration-data", args.calibration_data)) if value is not None]
    if given and Precision.INT8 not in precisions:
        raise ConfigError(f"{', '.join(given)} calibrate int8 graphs: add int8 to --precision, or leave them out")
    calibration, quantize = _int8_calibration(args, preset) if Precision.INT8 in precisions else (None, None)
    report = export_command(preset, args.checkpoint, args.out or f"artifacts/{preset}",
                            precisions=precisions, classifier=classifier,
                            unet=not args.no_unet, opset=args.opset, reuse=not args.force, resize=args.resize,
                            progress=progress, calibration=calibration,
                            **({"quantize": quantize} if quantize is not None else {}))
    for line in report.lines():
        print(line)
    return 0


def _int8_calibration(args: argparse.Namespace, preset: str):
    """The calibration plan and quantizer settings of ``export --precision int8`` (sigma and b default to
    the preset's certify defaults; images: --calibration-data, or the shipped split for digits)."""
    import numpy as np
    import torch

    from densepure.certify.options import PRESET_DEFAULTS
    from densepure.export.calibration import CalibrationPlan
    from densepure.export.int8 import QuantizeSettings, require_quantizer
    from densepure.hashing import tree_sha256

    require_quantizer()  # one line naming the extra, before any model loads
    defaults = PRESET_DEFAULTS.get(preset, PRESET_DEFAULTS[None])
    count = args.calibration_images
    if count < 1:
        raise ConfigError(f"--calibration-images must be >= 1, got {count}")
    if args.calibration_data is not None:
        from densepure.data.datasets import open_dataset

        dataset = open_dataset(args.calibration_data)
        indices = sorted({int(i) for i in np.linspace(0, len(dataset) - 1, min(count, len(dataset))).round()})
        images = torch.stack([dataset[i][0] for i in indices])
        data, sha = f"{args.calibration_data} ({len(indices)} of {len(dataset)} images)", tree_sha256(args.calibration_data)
    elif preset == "digits":
        from densepure.models.digits import load_digits_calibration_split
        from densepure.models.presets import digits_asset_path

        split, _, rows = load_digits_calibration_split()
        pick = sorted({int(i) for i in np.linspace(0, len(split) - 1, min(count, len(split))).round()})
        images, indices = split[pick], [int(rows[i]) for i in pick]
        data, sha = "digits calibration split (training images; indices into load_digits())", \
            tree_sha256(digits_asset_path("calibration_split.npz"))
    else:
        raise ConfigError(f"--precision int8 calibrates on images that are never certified: add --calibration-data "
                          f"(for {preset}, a training split, e.g. CIFAR-10's data_batch_1)")
    plan = CalibrationPlan(images, sigma=args.sigma if args.sigma is not None else defaults["sigma"], mode=args.mode,
                           steps=args.steps if args.steps is not None else defaults["steps"],
                           t_star_rule=args.t_star_rule, draws=args.calibration_draws, seed=args.calibration_seed,
                           data=data, data_sha256=sha, indices=tuple(indices))
    return plan, QuantizeSettings(method=args.calibration_method, placement=args.int8_placement)


def _cmd_build(args: argparse.Namespace) -> int:
    from densepure.artifacts import ArtifactKind, TypingMode
    from densepure.export import BuildSettings, build_command
    from densepure.precision import Precision

    cache_dir = _cache_dir(args.cache_dir)
    settings = BuildSettings(buckets=[b for b in args.buckets.split(",") if b.strip()],
                             workspace_bytes=None if args.workspace_mb is None else args.workspace_mb * 2**20,
                             typing=TypingMode(args.typing), optimization_level=args.opt_level)
    precisions = Precision.parse_list(args.precision) if args.precision else None
    report = build_command(args.onnx_dir, cache_dir, settings=settings, device=args.device,
                           kinds=(ArtifactKind(args.only),) if args.only else None, precisions=precisions)
    for line in report.lines():
        print(line)
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    from densepure.serve import require_extra

    require_extra()  # one line saying how to install it, before anything loads
    from densepure.serve.cli_args import serve_options_from_args
    from densepure.serve.server import run_server

    if args.backend == "tensorrt":
        args.cache_dir = _cache_dir(args.cache_dir)
    return run_server(serve_options_from_args(args))


def _add_serve_parser(sub) -> None:
    from densepure.cli_certify import add_execution_arguments, add_model_arguments, add_smoothing_arguments
    from densepure.serve.cli_args import add_serve_arguments

    p = sub.add_parser("serve", help="a certified-prediction server (Open Inference Protocol v2, needs the serve extra)",
                       description="Serve certified predictions over HTTP (KServe v2 / Triton protocol). With no "
                                   "options: the shipped digits preset on 127.0.0.1:8000.")
    add_model_arguments(p)
    add_smoothing_arguments(p)
    add_serve_arguments(p)
    add_execution_arguments(p)
    p.set_defaults(func=_cmd_serve)


def _add_export_parsers(sub) -> None:
    from densepure.cli_certify import add_model_arguments

    p = sub.add_parser("export", help="export the UNet and classifier to checked ONNX graphs (fp32/fp16)")
    add_model_arguments(p)
    p.add_argument("--no-classifier", action="store_true", help="export the UNet only")
    p.add_argument("--no-unet", action="store_true", help="export the classifier only")
    p.add_argument("--precision", default="fp32,fp16",
                   help="comma-separated fp32, fp16, int8 (int8: Q/DQ graphs calibrated for one sigma and grid, "
                        "needs the int8 extra) (default: fp32,fp16)")
    p.add_argument("--out", help="output directory (default: artifacts/PRESET)")
    p.add_argument("--opset", type=int, default=21, help="ONNX opset, >= 21 (default: 21)")
    p.add_argument("--force", action="store_true", help="trace again even if the artifacts are up to date")
    _add_calibration_arguments(p)
    p.set_defaults(func=_cmd_export)
    p = sub.add_parser("build", help="build TensorRT engines on this machine from exported ONNX graphs")
    p.add_argument("--onnx-dir", required=True, help="a directory written by `densepure export`")
    p.add_argument("--cache-dir", help="engine cache (default: $DENSEPURE_CACHE or ~/.cache/densepure)")
    p.add_argument("--buckets", default="1,8,32,128", help="batch buckets, one optimization profile each (default: 1,8,32,128)")
    p.add_argument("--workspace-mb", type=int, help="cap TensorRT's workspace pool in MiB (Jetson: e.g. 1024)")
    p.add_argument("--precision", help="only these precisions, comma-separated fp32, fp16, int8 (default: all)")
    p.add_argument("--only", choices=["unet", "classifier"], help="only this kind of artifact")
    p.add_argument("--typing", default="strong", choices=["strong", "weak-fp16"],
                   help="strong (default) or weak-fp16 (TensorRT 10.x, fp32 graphs)")
    p.add_argument("--opt-level", type=int, default=3, help="TensorRT builder optimization level 0..5 (default: 3)")
    p.add_argument("--device", default="cuda:0", help="GPU to build for (default: cuda:0)")
    p.set_defaults(func=_cmd_build)


def _add_calibration_arguments(p: argparse.ArgumentParser) -> None:
    from densepure.diffusion import Mode, TStarRule
    from densepure.export.int8 import CalibrationMethod, QdqPlacement

    g = p.add_argument_group("int8 calibration (--precision int8; certify then refuses another sigma or grid)")
    g.add_argument("--sigma", type=float, help="the sigma the int8 graphs will certify at (default: 0.25)")
    g.add_argument("--b", dest="steps", type=int, help="DensePure reverse steps they will run (default: 2)")
    g.add_argument("--mode", default="densepure", choices=[m.value for m in Mode],
                   help="the base classifier they will run (default: densepure)")
    g.add_argument("--t-star", dest="t_star_rule", default="auto", choices=[r.value for r in TStarRule],
                   help="the t* rule they will run (default: auto)")
    g.add_argument("--calibration-data", help="images never certified (a training split: CIFAR-10 batch, image "
                                              "folder, .npz) (default for digits: the shipped calibration split)")
    g.add_argument("--calibration-images", type=int, default=128,
                   help="calibration images, spread evenly over the data (default: 128)")
    g.add_argument("--calibration-draws", type=int, default=4, help="noise draws per image (default: 4)")
    g.add_argument("--calibration-seed", type=int, default=0, help="seed of the calibration noise (default: 0)")
    g.add_argument("--calibration-method", default="percentile", choices=[m.value for m in CalibrationMethod],
                   help="activation ranges: percentile (99.999th of |x|) or minmax (default: percentile)")
    g.add_argument("--int8-placement", default="onnxruntime", choices=[m.value for m in QdqPlacement],
                   help="Q/DQ on inputs and outputs of quantized ops (onnxruntime: int8 kernels on its CPU "
                        "provider) or on inputs only (tensorrt: NVIDIA's placement) (default: onnxruntime)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="densepure", description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    from densepure.cli_certify import add_job_arguments

    p = sub.add_parser("certify", help="certify images (Cohen's CERTIFY, or sequential with --radius)",
                       description="Certify images with a smoothed classifier. With no options: the shipped digits "
                                   "preset, DensePure, on its test split.")
    add_job_arguments(p, predict=False)
    p.set_defaults(func=_cmd_job)
    p = sub.add_parser("predict", help="predict with abstention (Cohen's PREDICT)")
    add_job_arguments(p, predict=True)
    p.set_defaults(func=_cmd_job)
    p = sub.add_parser("analyze", help="certified accuracy, ACR, a markdown table and a plot from result files")
    p.add_argument("results", nargs="+", help="result files (TSV)")
    p.add_argument("--radii", default="0,0.25,0.5,0.75,1.0", help="comma-separated radii (default: 0,0.25,0.5,0.75,1.0)")
    p.add_argument("--plot", help="write a PNG of certified accuracy against radius here")
    p.add_argument("--paired", action="store_true",
                   help="also each file's ACR minus the first file's, paired over the images both certified, "
                        "with a 95%% interval")
    p.set_defaults(func=_cmd_analyze)
    _add_export_parsers(sub)
    _add_serve_parser(sub)
    p = sub.add_parser("presets", help="list the built-in diffusion presets")
    p.set_defaults(func=_cmd_presets)
    p = sub.add_parser("doctor", help="which backends, providers and devices are available here, and why not")
    p.set_defaults(func=_cmd_doctor)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; a user error is one line and exit 2, Ctrl-C at any moment (imports and model
    loading included) is one line and exit 130."""
    try:
        return _main(argv)
    except DensePureError as exc:
        print(f"densepure: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("densepure: interrupted", file=sys.stderr)
        return 130


def _main(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.version:
        from densepure import __version__

        print(f"densepure {__version__} (python {platform.python_version()})")
        return 0
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    return int(args.func(args) or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
