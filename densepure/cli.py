"""The ``densepure`` command line: the only place that reads argv and the environment.

Every user error (a :class:`~densepure.errors.DensePureError`) ends with a one-line message on
stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import platform
import sys
from collections.abc import Sequence

from densepure.errors import DensePureError

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


def _cmd_job(args: argparse.Namespace) -> int:
    from densepure.certify.job import prepare, run
    from densepure.cli_certify import options_from_args, progress_hook, summarize_run

    predict = args.command == "predict"
    job = prepare(options_from_args(args, predict))
    opts = job.options
    todo = len(job.indices)
    print(f"{args.command}: {todo} images, mode={opts.mode.value} sigma={opts.sigma} "
          + (f"K={opts.num_chains} b={opts.steps} " if opts.mode.value == "densepure" else "")
          + f"n0={opts.n0 if not predict else '-'} n={opts.n} alpha={opts.alpha} seed={job.seed} "
          f"device={job.engine.executor.device}", file=sys.stderr)
    hook, close = progress_hook(todo)
    try:
        output, _ = run(job, hook)
    finally:
        close()
    if predict:
        print(f"results: {output} (sidecar {output}.jsonl)")
        return 0
    for line in summarize_run(output, args.plot):
        print(line)
    return 0


def _cmd_analyze(args: argparse.Namespace) -> int:
    from densepure.certify.analyze import analyze_files, load_run, markdown_table, plot_certified_accuracy

    radii = tuple(float(r) for r in args.radii.split(","))
    print(markdown_table(analyze_files(args.results, radii)))
    if args.plot:
        plot = plot_certified_accuracy([load_run(p) for p in args.results], args.plot)
        print(f"plot: {plot}")
    return 0


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
    p.set_defaults(func=_cmd_analyze)
    p = sub.add_parser("presets", help="list the built-in diffusion presets")
    p.set_defaults(func=_cmd_presets)
    p = sub.add_parser("doctor", help="which backends, providers and devices are available here, and why not")
    p.set_defaults(func=_cmd_doctor)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.version:
        from densepure import __version__

        print(f"densepure {__version__} (python {platform.python_version()})")
        return 0
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except DensePureError as exc:
        print(f"densepure: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("densepure: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
