"""The ``densepure`` command: the parser, the dispatch, and the light commands (``presets``, ``doctor``).

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


def _presets(args: argparse.Namespace) -> int:
    from densepure.models import PRESETS

    for name, preset in sorted(PRESETS.items()):
        cfg = preset.unet_config
        print(f"{name:12s} {preset.image_size:4d}px  {preset.schedule.kind.value:6s} T={preset.schedule.num_timesteps:<5d}"
              f" channels={cfg.model_channels:<4d} checkpoint={preset.checkpoint_file}")
    return 0


def _doctor(args: argparse.Namespace) -> int:
    from densepure.cli.doctor import collect_report

    for line in collect_report():
        print(line)
    return 0


def build_parser() -> argparse.ArgumentParser:
    from densepure.cli import certify, export, serve, verify

    parser = argparse.ArgumentParser(prog="densepure", description="certified adversarial robustness with diffusion "
                                                                   "purification, fast and exact")
    parser.add_argument("--version", dest="_version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="_command", metavar="COMMAND")
    certify.add_parsers(sub)
    export.add_parsers(sub)
    serve.add_parser(sub)
    verify.add_parser(sub)
    p = sub.add_parser("presets", help="list the built-in diffusion presets")
    p.set_defaults(_func=_presets)
    p = sub.add_parser("doctor", help="which backends, providers and devices are available here, and why not")
    p.set_defaults(_func=_doctor)
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
    if args._version:
        from densepure import __version__

        print(f"densepure {__version__} (python {platform.python_version()})")
        return 0
    if not getattr(args, "_func", None):
        parser.print_help()
        return 0
    return int(args._func(args) or 0)
