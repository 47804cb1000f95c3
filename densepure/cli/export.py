"""``densepure export`` (checked ONNX graphs) and ``densepure build`` (TensorRT engines on this machine)."""

from __future__ import annotations

import argparse
import sys

from densepure.cli.arguments import add_model_arguments, default_cache_dir


def add_parsers(sub) -> None:
    p = sub.add_parser("export", help="export the UNet and classifier to checked ONNX graphs (fp32/fp16)")
    add_model_arguments(p)
    p.add_argument("--no-classifier", action="store_true", help="export the UNet only")
    p.add_argument("--no-unet", action="store_true", help="export the classifier only")
    p.add_argument("--precision", default="fp32,fp16", help="comma-separated fp32, fp16 (default: fp32,fp16)")
    p.add_argument("--out", help="output directory (default: artifacts/PRESET)")
    p.add_argument("--opset", type=int, default=21, help="ONNX opset, >= 21 (default: 21)")
    p.add_argument("--force", action="store_true", help="trace again even if the artifacts are up to date")
    p.set_defaults(_func=export)
    p = sub.add_parser("build", help="build TensorRT engines on this machine from exported ONNX graphs")
    p.add_argument("--onnx-dir", required=True, help="a directory written by `densepure export`")
    p.add_argument("--cache-dir", help="engine cache (default: $DENSEPURE_CACHE or ~/.cache/densepure)")
    p.add_argument("--buckets", default="1,8,32,128", help="batch buckets, one optimization profile each (default: 1,8,32,128)")
    p.add_argument("--workspace-mb", type=int, help="cap TensorRT's workspace pool in MiB (Jetson: e.g. 1024)")
    p.add_argument("--precision", help="only these precisions, comma-separated fp32, fp16 (default: all)")
    p.add_argument("--only", choices=["unet", "classifier"], help="only this kind of artifact")
    p.add_argument("--typing", default="strong", choices=["strong", "weak-fp16"],
                   help="strong (default) or weak-fp16 (TensorRT 10.x, fp32 graphs)")
    p.add_argument("--opt-level", type=int, default=3, help="TensorRT builder optimization level 0..5 (default: 3)")
    p.add_argument("--device", default="cuda:0", help="GPU to build for (default: cuda:0)")
    p.set_defaults(_func=build)


def export(args: argparse.Namespace) -> int:
    from densepure.export import export_command
    from densepure.models.sources import required_classifier
    from densepure.precision import Precision

    preset = args.preset or "digits"
    # no --classifier: the shipped one for digits; other presets name theirs (the error names the papers')
    classifier = None if args.no_classifier else (args.classifier or required_classifier(preset))

    def progress(event) -> None:
        print(event.line(), file=sys.stderr, flush=True)

    report = export_command(preset, args.checkpoint, args.out or f"artifacts/{preset}",
                            precisions=Precision.parse_list(args.precision), classifier=classifier,
                            unet=not args.no_unet, opset=args.opset, reuse=not args.force, resize=args.resize,
                            progress=progress)
    for line in report.lines():
        print(line)
    return 0


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
