"""The ``densepure`` command: the parser, the dispatch, and the light commands (``presets``, ``doctor``).

Every user error (a :class:`~densepure.errors.DensePureError`, a flag argparse does not know, a bad
value) ends with a one-line message on stderr and exit status 2, never a traceback. A misspelled flag or
command names the nearest one (``--sigam``: did you mean --sigma?), for every subcommand.

A subcommand's module (and with it torch, scipy and the models) is imported only when that subcommand
runs: ``densepure --version`` and ``densepure presets`` import neither torch nor scipy
(``tests/cli/test_light_commands.py``).
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import platform
import sys
from collections.abc import Collection, Sequence

from densepure.errors import DensePureError

EXIT_USER_ERROR = 2

# command -> the module that adds it (with its siblings) to the subparsers: add_parsers(sub), or add_parser(sub)
# where the module has one command; imported only when needed
_COMMAND_MODULES = {
    "certify": "densepure.cli.certify", "predict": "densepure.cli.certify", "analyze": "densepure.cli.certify",
    "export": "densepure.cli.export", "build": "densepure.cli.export",
    "serve": "densepure.cli.serve", "verify": "densepure.cli.verify", "bench": "densepure.cli.bench",
}
_LIGHT_COMMANDS = ("presets", "doctor")
_HELP = ("-h", "--help")
# flags of Cohen et al.'s certify.py/predict.py that densepure spells differently
_COHEN_FLAGS = {"--N0": "--n0", "--N": "--n"}


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line (no usage block) and exit 2 (its subparsers are Parsers too)."""

    def error(self, message: str):  # noqa: D102 - argparse's hook
        self.exit(EXIT_USER_ERROR, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


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


def build_parser(commands: Collection[str] | None = None) -> Parser:
    """The parser of every command, or only of ``commands`` (and their siblings in the same module) plus
    the light ones: a subcommand's module is imported here, so a light command stays light."""
    modules = dict.fromkeys(_COMMAND_MODULES.values()) if commands is None else \
        dict.fromkeys(_COMMAND_MODULES[c] for c in commands if c in _COMMAND_MODULES)
    parser = Parser(prog="densepure", description="certified adversarial robustness with diffusion purification, "
                                                  "fast and exact")
    parser.add_argument("--version", dest="_version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="_command", metavar="COMMAND")
    for name in modules:
        module = importlib.import_module(name)
        (getattr(module, "add_parsers", None) or module.add_parser)(sub)
    p = sub.add_parser("presets", help="list the built-in diffusion presets")
    p.set_defaults(_func=_presets)
    p = sub.add_parser("doctor", help="which backends, providers and devices are available here, and why not")
    p.set_defaults(_func=_doctor)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; a user error is one line and exit 2, Ctrl-C at any moment (imports and model
    loading included) is one line and exit 130."""
    try:
        return _main(list(sys.argv[1:] if argv is None else argv))
    except DensePureError as exc:
        print(f"densepure: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("densepure: interrupted", file=sys.stderr)
        return 130


def _main(argv: list[str]) -> int:
    command = next((arg for arg in argv if not arg.startswith("-")), None)
    known = (*_COMMAND_MODULES, *_LIGHT_COMMANDS)
    if command is not None and command not in known:
        raise DensePureError(f"unknown command {command!r}{_nearest(command, known)} (`densepure --help` lists them)")
    light = command in _LIGHT_COMMANDS or (command is None and argv and not any(a in _HELP for a in argv))
    parser = build_parser(() if light else None if command is None else (command,))
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        raise DensePureError(unknown_argument_message(_innermost(parser, argv), unknown))
    args._argv = ["densepure", *argv]  # the command line, for reports
    if args._version:
        from densepure import __version__

        print(f"densepure {__version__} (python {platform.python_version()})")
        return 0
    if not getattr(args, "_func", None):
        parser.print_help()
        return 0
    return int(args._func(args) or 0)


def _innermost(parser: argparse.ArgumentParser, argv: Sequence[str]) -> argparse.ArgumentParser:
    """The (sub)parser whose flags the end of ``argv`` is read with: ``densepure bench throughput ...`` ->
    the parser of ``bench throughput``."""
    for arg in argv:
        subparsers = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]  # argparse keeps
        if subparsers and arg in subparsers[0].choices:                                        # them only here
            parser = subparsers[0].choices[arg]
    return parser


def unknown_argument_message(parser: argparse.ArgumentParser, unknown: Sequence[str]) -> str:
    """One line for the arguments ``parser`` did not take, naming the nearest flag it knows (Cohen et al.'s
    ``--N0``/``--N``: the lowercase spelling)."""
    flag = next((arg for arg in unknown if arg.startswith("-")), None)
    if flag is None:
        return f"unexpected argument {' '.join(unknown)!r} (see `{parser.prog} --help`)"
    flag = flag.split("=", 1)[0]
    flags = [s for action in parser._actions for s in action.option_strings]  # argparse keeps them only here
    if flag in _COHEN_FLAGS and _COHEN_FLAGS[flag] in flags:
        hint, why = f": did you mean {_COHEN_FLAGS[flag]}?", f"{flag} is Cohen et al.'s spelling; "
    else:
        hint, why = _nearest(flag, flags), ""
    return f"unknown flag {flag} for `{parser.prog}`{hint} ({why}`{parser.prog} --help` lists them)"


def _nearest(word: str, choices: Sequence[str]) -> str:
    """``: did you mean X?`` for the closest of ``choices`` (case-insensitive, leading dashes aside: every flag
    has them), or ``""``."""
    lowered = {c.lower().lstrip("-"): c for c in choices}
    close = difflib.get_close_matches(word.lower().lstrip("-"), list(lowered), n=1, cutoff=0.6)
    return f": did you mean {lowered[close[0]]}?" if close else ""
