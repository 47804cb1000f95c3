"""Issue 24, item 1: one way from argv to options. Every flag that certify, predict and serve accept is parsed
with a value other than its default, and must arrive in the options the one builder makes (a flag that a
subcommand accepts and drops, as serve once dropped --kernels, --compile and --resize, fails here)."""

from __future__ import annotations

import argparse
import enum

import pytest
from export_helpers import stand_in_artifacts

from densepure.bench.options import BenchRun
from densepure.certify.options import JobOptions
from densepure.cli import build_parser
from densepure.cli.arguments import options_from_args

# flag -> (its value on the command line, what the options must hold, other flags it needs)
HF = ["--preset", "cifar10", "--classifier", "hf:some/vit"]
VALUES: dict[str, tuple[list[str], object, list[str]]] = {
    "--preset": (["cifar10"], "cifar10", ["--classifier", "hf:some/vit"]),
    "--checkpoint": (["{checkpoint}"], "{checkpoint}", []),  # must exist: checked when the options are built
    "--classifier": (["hf:some/vit"], "hf:some/vit", ["--preset", "cifar10"]),
    "--resize": (["bilinear"], "bilinear", HF),
    "--data": (["images.npz"], "images.npz", []),
    "--skip": (["7"], 7, []),
    "--max": (["3"], 3, []),
    "--mode": (["onestep"], "onestep", []),
    "--sigma": (["0.5"], 0.5, []),
    "--K": (["3"], 3, []),
    "--b": (["3"], 3, []),
    "--t-star": (["nearest"], "nearest", []),
    "--noise": (["float"], "float", []),
    "--levels": (["255"], 255, []),
    "--n0": (["17"], 17, []),
    "--n": (["123"], 123, []),
    "--alpha": (["0.01"], 0.01, []),
    "--radius": (["0.3"], 0.3, []),
    "--sequential": (["betting"], "betting", ["--radius", "0.3"]),
    "--budget": (["40"], 40, []),
    "--also-K": (["1,3"], (1, 3), []),
    "--seed": (["42"], 42, []),
    "--batch-size": (["7"], 7, []),
    "--device": (["cpu"], "cpu", []),
    "--kernels": (["torch"], "torch", []),
    "--compile": (["default"], "default", []),
    "--cuda-graphs": ([], True, []),
    "--no-cuda-graphs": ([], False, []),
    "--lookahead": ([], True, []),
    "--no-lookahead": ([], False, []),
    "--precision": (["bf16"], "bf16", []),
    "--backend": (["onnxruntime"], "onnxruntime", ["--artifacts", "{artifacts}"]),
    "--artifacts": (["{artifacts}"], "{artifacts}", ["--backend", "onnxruntime"]),
    "--cache-dir": (["/tmp/engines"], "/tmp/engines", ["--backend", "tensorrt", "--artifacts", "{artifacts}"]),
    "--output": (["elsewhere.tsv"], "elsewhere.tsv", []),
    "--overwrite": ([], True, []),
    "--plot": (["p.png"], "p.png", []),
    "--ray": (["auto"], "auto", []),
    "--workers": (["2"], 2, ["--ray", "auto"]),
    "--split-draws": (["2"], 2, ["--ray", "auto"]),
    # serve's own
    "--num-classes": (["12"], 12, []),
    "--host": (["127.0.0.2"], "127.0.0.2", []),
    "--port": (["8123"], 8123, []),
    "--allow-client-seed": ([], True, []),
    "--log-level": (["debug"], "debug", []),
    "--access-log": ([], True, []),
    "--no-access-log": ([], False, []),
    "--max-body-bytes": (["1000"], 1000, []),
    "--max-batch": (["3"], 3, []),
    "--max-n0": (["500"], 500, []),
    "--max-n": (["5000"], 5000, []),
    "--max-queue": (["5"], 5, []),
    "--max-queued-draws": (["99999"], 99999, []),
    "--image-slots": (["3"], 3, []),
    "--max-jobs": (["9"], 9, []),
    "--job-ttl": (["12.5"], 12.5, []),
    "--grace-period": (["3.5"], 3.5, []),
    # bench's own
    "--repeats": (["3"], 3, []),
    "--threads": (["2"], 2, []),
    "--baseline": (["official"], "official", []),
    "--official-batch": (["16"], 16, []),
    "--official-precision": (["bf16"], "bf16", []),
    "--progress-json": ([], True, []),
    "--check-scale": (["8"], 8.0, []),
    "--peak-tflops": (["100"], 100.0, []),
    "--random-weights": ([], True, []),
    "--scenario": (["server"], "server", []),
    "--target-qps": (["0.5", "2"], (0.5, 2.0), []),
    "--latency-bound": (["5"], 5.0, []),
    "--min-duration": (["2"], 2.0, []),
    "--max-duration": (["20"], 20.0, []),
    "--min-queries": (["7"], 7, []),
    "--model": (["m"], "m", []),
    "--param": (["mode=certify"], ("mode=certify",), []),
    "--concurrency": (["2", "8"], (2, 8), []),
    "--requests": (["4", "9"], (4, 9), ["--concurrency", "2", "8"]),
    "--timeout": (["9"], 9.0, []),
    "--reps": (["7"], 7, []),
    "--p": (["0.9"], (0.9,), []),
    "--r": (["1.5"], (1.5,), []),
    "--n-max": (["500"], (500,), []),
    "--procedures": (["betting"], ("betting",), []),
    "--worker-threads": (["2"], 2, []),
    "--single": ([], True, []),
    "--no-single": ([], False, []),
    "--max-connections": (["7"], 7, []),
    "--read-timeout": (["4.5"], 4.5, []),
    "--keep-alive-timeout": (["2.5"], 2.5, []),
    "--devices": (["cpu,cpu"], ("cpu", "cpu"), []),
    "--device-threads": (["1"], 1, []),
    "--pin-cores": ([], True, []),
    "--split-min-draws": (["500"], 500, []),
    "--replicas": (["3"], 3, ["--ray", "local"]),
    "--min-replicas": (["2"], 2, ["--ray", "local"]),
    "--max-replicas": (["4"], 4, ["--ray", "local"]),
    "--target-requests": (["3.5"], 3.5, []),
    "--downscale-delay": (["7.5"], 7.5, []),
}
# a flag that means something else in a bench subcommand (scaling's --workers is a list of counts)
BENCH_VALUES = {"--workers": (["1", "3"], (1, 3), [])}
BENCH = ["bench throughput", "bench latency", "bench serve", "bench sequential", "bench kernels", "bench models",
         "bench scaling"]
# what a flag means when the server runs (certify's defaults for the server's statistics are too big)
SERVE_CONTEXT = ["--n", "1000", "--n0", "50"]


def _subparser(command: str) -> argparse.ArgumentParser:
    parser = build_parser()
    for word in command.split():  # "bench throughput": a subcommand's subcommand
        action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = action.choices[word]
    return parser


def _accepted(command: str) -> list[tuple[str, str]]:
    """(option string, dest) of every flag of ``command``'s parser, help aside."""
    return [(flag, action.dest) for action in _subparser(command)._actions if action.dest != "help"
            for flag in action.option_strings]


def _value_of(options, dest: str):
    """``dest``'s value in the options a subcommand built, wherever its record keeps it."""
    if isinstance(options, BenchRun):
        value = options.flat()[dest]
        return value.value if isinstance(value, enum.Enum) else value
    job = options if isinstance(options, JobOptions) else options.job
    found = job.flat()
    if not isinstance(options, JobOptions):
        for record in ("limits", "placement", "cluster"):
            found.update(vars(getattr(options, record)))
        found.update({k: v for k, v in vars(options).items() if k not in ("job", "limits", "placement", "cluster")})
    assert dest in found, f"{dest} reached no field"
    value = found[dest]
    return value.value if isinstance(value, enum.Enum) else value


@pytest.mark.parametrize("command", ["certify", "predict", "serve"])
def test_every_flag_has_a_non_default_value_here(command):
    missing = sorted({flag for flag, _ in _accepted(command)} - set(VALUES))
    assert not missing, f"add these {command} flags to VALUES (a non-default value each): {missing}"


@pytest.fixture
def filled(tmp_path):
    """Replaces the table's {artifacts} and {checkpoint} by a stand-in export directory and an existing file."""
    checkpoint = tmp_path / "my.pt"
    checkpoint.write_bytes(b"")
    fill = {"{artifacts}": str(stand_in_artifacts(tmp_path / "art")), "{checkpoint}": str(checkpoint)}

    def filled(text):
        for key, value in fill.items():
            text = text.replace(key, value) if isinstance(text, str) else text
        return text

    return filled


@pytest.mark.parametrize("command", ["certify", "predict", "serve"])
def test_every_accepted_flag_reaches_the_options(command, filled):
    parser = build_parser()
    checked = 0
    for flag, dest in _accepted(command):
        words, expected, context = VALUES[flag]
        context = [filled(c) for c in context]
        if command == "serve" and flag in ("--workers", "--split-draws"):
            continue  # not serve flags (the accepted list says so; this is only the shared table)
        if command == "serve":
            context = [*SERVE_CONTEXT, *context] if flag not in ("--n", "--n0") else context
        if command == "predict" and flag == "--sequential":
            continue
        argv = [command, *context, flag, *(filled(w) for w in words)]
        options = options_from_args(parser.parse_args(argv))
        expected = filled(expected)
        assert _value_of(options, dest) == expected, f"{' '.join(argv)}: {dest} did not arrive"
        checked += 1
    assert checked >= 20


def test_serve_keeps_the_flags_it_once_dropped():
    """The bug of issue 24: serve --kernels torch --compile default --resize bilinear arrived as defaults."""
    argv = ["serve", *HF, *SERVE_CONTEXT, "--kernels", "torch", "--compile", "default", "--resize", "bilinear"]
    options = options_from_args(build_parser().parse_args(argv))
    assert options.job.execution.kernels.value == "torch"
    assert options.job.execution.compile.value == "default"
    assert options.job.models.resize.value == "bilinear"


def test_flags_not_given_take_the_records_defaults():
    """Absent flags are absent from the namespace, so the option records' defaults apply (one source)."""
    options = options_from_args(build_parser().parse_args(["certify"]))
    assert options == JobOptions.build()
    predict = options_from_args(build_parser().parse_args(["predict"]))
    assert predict.sampling.predict and predict.results.output == "runs/predict.tsv"


def test_a_flag_with_no_option_field_is_refused_not_dropped():
    with pytest.raises(TypeError, match="no option is named nonsense"):
        JobOptions.build(nonsense=1)


@pytest.mark.parametrize("command", BENCH)
def test_every_bench_flag_has_a_value_here(command):
    missing = sorted({flag for flag, _ in _accepted(command)} - set(VALUES))
    assert not missing, f"add these {command} flags to VALUES (a non-default value each): {missing}"


@pytest.mark.parametrize("command", BENCH)
def test_every_bench_flag_reaches_the_options(command, filled):
    """The bench subcommands share certify's groups and one builder (BenchRun.build): every flag arrives."""
    parser = build_parser()
    accepted = dict(_accepted(command))
    actions = {flag: action for action in _subparser(command)._actions for flag in action.option_strings}
    url = ["http://127.0.0.1:9"] if command == "bench serve" else []
    checked = 0
    for flag, dest in accepted.items():
        words, expected, context = BENCH_VALUES.get(flag) or VALUES[flag]
        choices = actions[flag].choices
        if choices and words and words[0] not in choices:  # e.g. throughput's only scenario is offline
            words, expected = [choices[-1]], choices[-1]
        context = [filled(c) for c in context]
        if any(c.startswith("--") and c not in accepted for c in context):
            context = []  # a flag this subcommand does not have (its defaults make the flag valid alone)
        argv = [*command.split(), *url, *context, flag, *(filled(w) for w in words)]
        options = options_from_args(parser.parse_args(argv))
        expected = filled(expected)
        assert isinstance(options, BenchRun)
        assert _value_of(options, dest) == expected, f"{' '.join(argv)}: {dest} did not arrive"
        checked += 1
    assert checked >= 5
