"""``densepure export`` (checked ONNX graphs) and ``densepure build`` (TensorRT engines on this machine)."""

from __future__ import annotations

import argparse
import sys

from densepure.cli.arguments import add_model_arguments, default_cache_dir
from densepure.errors import ConfigError


def add_parsers(sub) -> None:
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
    p.set_defaults(_func=export)
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
    p.set_defaults(_func=build)


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


def export(args: argparse.Namespace) -> int:
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
        data = f"{args.calibration_data} ({len(indices)} of {len(dataset)} images)"
        sha = tree_sha256(args.calibration_data)
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


def build(args: argparse.Namespace) -> int:
    from densepure.artifacts import ArtifactKind, TypingMode
    from densepure.export import BuildSettings, build_command
    from densepure.precision import Precision

    settings = BuildSettings(buckets=[b for b in args.buckets.split(",") if b.strip()],
                             workspace_bytes=None if args.workspace_mb is None else args.workspace_mb * 2**20,
                             typing=TypingMode(args.typing), optimization_level=args.opt_level)
    precisions = Precision.parse_list(args.precision) if args.precision else None
    report = build_command(args.onnx_dir, args.cache_dir or default_cache_dir(), settings=settings, device=args.device,
                           kinds=(ArtifactKind(args.only),) if args.only else None, precisions=precisions)
    for line in report.lines():
        print(line)
    return 0
