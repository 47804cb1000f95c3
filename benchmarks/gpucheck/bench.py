"""How a measuring stage measures: ``densepure bench SUBCOMMAND FLAGS`` run in the stage's own process through
the CLI's parser and its one options builder (so the check measures exactly what users run), every figure
forwarded as a partial line the moment it is measured (the report's listener, labelled with the run), the
report written to a temporary folder (never under ``$OUT``) and read back into the stage's result.

The rehearsal needs two stand-ins the CPU can afford, both here: a tiny UNet preset for the kernels
(Triton's interpreter takes seconds per GroupNorm call at the digits UNet's width) and dynamo's eager
backend for the compile stage (Inductor's C++ build takes minutes on a loaded 2-core machine).
"""

from __future__ import annotations

import contextlib
import gc
import shlex
import tempfile
from pathlib import Path

import torch

from gpucheck.report import emit

TINY_PRESET = "gpu-check-tiny"


def bench(label: str, subcommand: str, *flags: str, strict: bool = True, **options: object) -> dict:
    """``densepure bench SUBCOMMAND FLAGS --output TMP``: ``{"LABEL METRIC": value, "LABEL configuration": {...},
    "LABEL notes": [...], "LABEL partial": bool}``. Each metric is emitted as it is measured. A run that
    fails has its figures emitted already; ``strict`` raises its error then, else it is ``"LABEL error"``.
    ``options``: option fields the subcommand has no flag for, set as if parsed (the rehearsal's tiny
    preset names the digits classifier, which the kernels never load)."""
    from densepure.bench.report import read_report
    from densepure.bench.session import run_bench
    from densepure.cli import build_parser
    from densepure.cli.arguments import options_from_args

    command = ["bench", subcommand, *flags]
    print(f"$ densepure {shlex.join(command)}", flush=True)
    error, report = None, None
    with tempfile.TemporaryDirectory(prefix="gpu-check-bench-") as tmp:
        out = Path(tmp) / "report"
        args = build_parser().parse_args([*command, "--output", str(out)])
        for name, value in options.items():
            setattr(args, name, value)
        try:
            run_bench(subcommand, options_from_args(args), ["densepure", *command],
                      listener=lambda figures: emit(**{f"{label} {k}": v for k, v in figures.items()}))
        except Exception as exc:  # noqa: BLE001 - its partial report is read below, then it is raised or kept
            error = exc
        if (out / "report.json").is_file():
            report = read_report(out)
    release()
    result = {} if report is None else {f"{label} {k}": m.value for k, m in report.metrics.items()} | {
        f"{label} configuration": dict(report.configuration), f"{label} notes": list(report.notes),
        f"{label} partial": report.partial}
    if error is not None:
        if strict:
            raise error
        result[f"{label} error"] = f"{type(error).__name__}: {error}".splitlines()[0][:300]
        emit(**{f"{label} error": result[f"{label} error"]})
    return result


def release() -> None:
    """Free what a run left (its engine, models, graph pools) before the next one."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def register_tiny_preset() -> str:
    """A UNet of 16 channels, 4 groups and one block per resolution on 8x8x1 images, registered in this process
    only (the rehearsal's kernels stage); its name."""
    from densepure.models.presets import PRESETS, Dataset, DiffusionPreset, register_preset

    if TINY_PRESET not in PRESETS:
        flags = {"image_size": 8, "in_channels": 1, "num_channels": 16, "num_res_blocks": 1, "channel_mult": "1,2",
                 "num_heads": 2, "attention_resolutions": "4", "num_groups": 4, "learn_sigma": True,
                 "diffusion_steps": 4000, "noise_schedule": "cosine", "use_scale_shift_norm": True}
        register_preset(DiffusionPreset(TINY_PRESET, flags, Dataset.DIGITS, "(random weights only)"))
    return TINY_PRESET


@contextlib.contextmanager
def dynamo_eager():
    """Inside, ``nn.Module.compile`` traces with dynamo and runs its graphs eagerly (backend ``eager``, mode
    dropped): the rehearsal's compile path, without Inductor's code generation."""
    original = torch.nn.Module.compile

    def compile_eagerly(self, *args, **kwargs):
        kwargs.pop("mode", None)
        return original(self, *args, **{**kwargs, "backend": "eager"})

    torch.nn.Module.compile = compile_eagerly
    try:
        yield
    finally:
        torch.nn.Module.compile = original
