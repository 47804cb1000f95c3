"""The project's Table 1: certified accuracy on the digits test split, per method and noise level.

Certifies ``--images`` digits test images (spread evenly over the 450-image split) with Cohen's
CERTIFY (N0, N, alpha) at each sigma, for:

* Gaussian smoothing of the shipped clean classifier (no diffusion);
* one-step denoising (Carlini et al., DensePure's exact-sigma variant);
* DensePure with K in {1, 3, 10} chains and b in {2, 4} reverse steps.

One engine run per (sigma, b) computes K = 10 and, from the same draws, the K = 1 and K = 3 counts:
the vote of a draw's first k chains is exactly what a k-chain run with the same seed records (chain
noise is keyed by (draw, chain, step); tests/engine/test_engine_exact.py checks the equality), so
the three rows cost one run. Each configuration writes its own resumable result file (TSV + JSONL
sidecar with per-image counts) under ``--out``; an interrupted run resumes where it stopped. The
``time`` column of the derived K = 1 and K = 3 files is that of the shared K = 10 run.

After every configuration the report (markdown table + plot) is rewritten from the result files
present, so a partial run shows which rows are complete.

``--noise sound`` runs the same table with the sound noise (exact grid steps on the digits' grid k/16,
docs/guarantees.md) into ``results/table1_sound`` and ``table1_digits_sound.md``; the default stays the float
noise, whose committed files it reproduces.

Usage:
  python benchmarks/table1.py                      # the full table (hours on 2 CPU cores)
  python benchmarks/table1.py --noise sound --only onestep   # the sound noise's one-step rows
  python benchmarks/table1.py --report-only        # rebuild the report from existing files
  python benchmarks/table1.py --images 4 --n 200   # a quick smoke run (use another --out)
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from common import machine

from densepure.certify.tasks import CertifyTask
from densepure.diffusion import Mode, NoiseKind, SmoothingConfig
from densepure.engine.backends import Backends, TorchClassifier, TorchDenoiser
from densepure.engine.engine import Engine, EngineConfig, ImageRequest
from densepure.models.classifiers import Classifier, Preprocess
from densepure.models.digits import PIXEL_LEVELS, load_digits_classifier, load_digits_test_split, load_digits_unet
from densepure.models.presets import get_preset
from densepure.results.analyze import DEFAULT_RADII, Run, load_run, markdown_table, paired_markdown, summarize
from densepure.results.records import IfExists
from densepure.results.writer import open_results

HERE = Path(__file__).resolve().parent
PREFIXES = (1, 3)  # K = 1 and K = 3 read from the K = 10 runs


@dataclass(frozen=True)
class Group:
    """One engine run: a mode at one sigma (and b); writes one file per K it yields."""

    mode: str
    sigma: float
    steps: int = 1
    chains: int = 1

    @property
    def ks(self) -> tuple[int, ...]:
        return (*PREFIXES, self.chains) if self.mode == "densepure" else (1,)

    def name(self, k: int) -> str:
        if self.mode == "densepure":
            return f"densepure K={k} b={self.steps}"
        return self.mode

    def file(self, out: Path, k: int) -> Path:
        tag = f"densepure_K{k}_b{self.steps}" if self.mode == "densepure" else self.mode
        return out / f"sigma{self.sigma:g}_{tag}.tsv"


def groups(sigmas: list[float]) -> list[Group]:
    """Cheapest first, so the early rows of the table fill in first."""
    out = [Group("gaussian", s) for s in sigmas] + [Group("onestep", s) for s in sigmas]
    out += [Group("densepure", s, 2, 10) for s in sigmas] + [Group("densepure", s, 4, 10) for s in sigmas]
    return out


def run_group(group: Group, args, images: torch.Tensor, labels: torch.Tensor, indices: list[int]) -> None:
    task = CertifyTask(args.n0, args.n, args.alpha)
    writers = {}
    for k in group.ks:
        config = {"benchmark": "table1", "preset": "digits", "classifier": "digits", "mode": group.mode,
                  "sigma": group.sigma, "num_chains": k, "steps": group.steps, "n0": args.n0, "n": args.n,
                  "alpha": args.alpha, "t_star_rule": "auto",
                  "computed_as": f"first {k} of {group.chains} chains" if k != group.chains else "direct"}
        if args.noise == "sound":  # float files keep the records they were written with
            config |= {"noise": "sound", "levels": PIXEL_LEVELS}
        writers[k] = open_results(group.file(args.out, k), config, args.seed, IfExists.RESUME)
    todo = [i for i in indices if any(i not in w.finished for w in writers.values())]
    if not todo:
        for w in writers.values():
            w.close()
        return
    mode = Mode(group.mode)
    sound = args.noise == "sound"
    smoothing = SmoothingConfig(mode, group.sigma, group.chains, group.steps, schedule=get_preset("digits").schedule,
                                noise=NoiseKind(args.noise), levels=PIXEL_LEVELS if sound else None)
    classifier = TorchClassifier(Classifier(load_digits_classifier(), Preprocess(), num_classes=10), 10, (1, 8, 8))
    backends = Backends(TorchDenoiser(load_digits_unet()) if mode is not Mode.GAUSSIAN else None, classifier)
    config = EngineConfig(unet_rows=512, classifier_rows=512, draw_capacity=1024, image_slots=8,
                          chain_prefixes=PREFIXES if mode is Mode.DENSEPURE else ())
    engine = Engine(smoothing, backends, (1, 8, 8), "cpu", config)
    started: dict[int, float] = {}

    def requests():
        for i in todo:
            started[i] = time.perf_counter()
            yield ImageRequest(i, images[i], task.policy(10, group.sigma), args.seed, noise_id=i)

    t0 = time.perf_counter()
    for done, request in enumerate(engine.run(requests()), 1):
        i, policy = request.key, request.policy
        seconds = time.perf_counter() - started.pop(i)
        for k, writer in writers.items():
            if i in writer.finished:
                continue
            counts = policy.counts if k == group.chains else policy.prefix_counts[k]
            writer.write(task.record(i, int(labels[i]), seconds, counts, engine.smoothing.sigma))
        rate = done * (args.n0 + args.n) / (time.perf_counter() - t0)
        print(f"  {group.name(group.chains)} sigma={group.sigma:g}: {done}/{len(todo)} images, "
              f"{rate:.0f} draws/s", flush=True)
    for w in writers.values():
        w.close()


def report(args, all_groups: list[Group], expected: int) -> Path:
    """Markdown table per sigma and one plot, from whatever result files exist."""
    noise = " (sound noise: exact grid steps on k/16)" if args.noise == "sound" else ""
    lines = [f"# Table 1 on digits{noise}: certified accuracy (%) at L2 radius r, and ACR", "",
             f"Command: `{args.command}`  ", f"Machine: {machine()}  ",
             f"Setting: {expected} digits test images (evenly spread over the 450-image split), "
             f"N0={args.n0}, N={args.n:,}, alpha={args.alpha}, seed={args.seed}; the shipped digits UNet "
             "and clean CNN; t* by the AUTO rule; CERTIFY abstentions count as wrong.", ""]
    runs_by_sigma: dict[float, list[Run]] = {}
    for sigma in args.sigmas:
        summaries, runs = [], []
        for group in (g for g in all_groups if g.sigma == sigma):
            for k in group.ks:
                path = group.file(args.out, k)
                if not path.exists():
                    continue
                try:
                    run = load_run(path, group.name(k))
                except Exception:  # no rows yet  # noqa: BLE001
                    continue
                partial = "" if len(run.rows) >= expected else f" (partial: {len(run.rows)}/{expected})"
                runs.append(Run(group.name(k) + partial, run.rows))
                summaries.append(summarize(runs[-1], DEFAULT_RADII))
        if summaries:
            lines += [f"## sigma = {sigma:g}", "", markdown_table(summaries), *_paired_lines(runs)]
            runs_by_sigma[sigma] = runs
    stem = "table1_digits" + ("_sound" if args.noise == "sound" else "")
    md = args.out.parent / f"{stem}.md"
    if runs_by_sigma:
        _plot(runs_by_sigma, args.out.parent / f"{stem}.png")
        lines += [f"![certified accuracy against radius]({stem}.png)", ""]
    md.write_text("\n".join(lines))
    return md


def _paired_lines(runs: list[Run]) -> list[str]:
    """Each run's ACR minus one-step's, paired over the same images, with a 95% interval."""
    reference = next((run for run in runs if run.name.startswith("onestep")), None)
    others = [run for run in runs if run is not reference]
    return [paired_markdown(reference, others)] if reference is not None and others else []


def _plot(runs_by_sigma: dict[float, list[Run]], path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from densepure.results.analyze import accuracy_curve

    figure = Figure(figsize=(6.0 * len(runs_by_sigma), 4.2), dpi=100)
    canvas = FigureCanvasAgg(figure)
    grid = np.linspace(0.0, 2.0, 400)
    for j, (sigma, runs) in enumerate(sorted(runs_by_sigma.items()), 1):
        axes = figure.add_subplot(1, len(runs_by_sigma), j)
        for run in runs:
            axes.plot(grid, accuracy_curve(run, grid), label=run.name)
        axes.set_title(f"digits, sigma = {sigma:g}")
        axes.set_xlabel("L2 radius")
        axes.set_ylabel("certified accuracy")
        axes.set_ylim(0.0, 1.0)
        axes.grid(True, alpha=0.3)
        axes.legend(fontsize=7, loc="upper right")
    figure.tight_layout()
    canvas.print_png(str(path))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=100)
    ap.add_argument("--n0", type=int, default=100)
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--alpha", type=float, default=0.001)
    ap.add_argument("--sigmas", type=float, nargs="+", default=[0.25, 0.5])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--noise", choices=["float", "sound"], default="float",
                    help="the smoothing noise (default float: the committed table; sound: exact grid steps)")
    ap.add_argument("--out", type=Path, default=None, help="result files (default: results/table1, or "
                                                            "results/table1_sound with --noise sound)")
    ap.add_argument("--only", default=None, help="run only groups whose name contains this (e.g. 'b=4')")
    ap.add_argument("--report-only", action="store_true")
    args = ap.parse_args()
    default_out = HERE / "results" / ("table1_sound" if args.noise == "sound" else "table1")
    args.out = args.out or default_out
    if args.threads:
        torch.set_num_threads(args.threads)
    argv, skip = [], False  # the run's command: --report-only (and a default --out) do not change results
    for arg in sys.argv[1:]:
        if skip or arg == "--report-only":
            skip = False
            continue
        if arg == "--out" and args.out == default_out:
            skip = True
            continue
        argv.append(arg)
    args.command = " ".join(["python benchmarks/table1.py", *argv])
    images, labels = load_digits_test_split()
    indices = np.linspace(0, len(images) - 1, args.images).astype(int).tolist()
    all_groups = groups(args.sigmas)
    if not args.report_only:
        for group in all_groups:
            if args.only and args.only not in f"{group.name(group.chains)} sigma={group.sigma:g}":
                continue
            print(f"{group.name(group.chains)} sigma={group.sigma:g}", flush=True)
            run_group(group, args, images, labels, indices)
            report(args, all_groups, len(indices))
    print(f"report: {report(args, all_groups, len(indices))}")


if __name__ == "__main__":
    main()
