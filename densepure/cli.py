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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="densepure", description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
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
