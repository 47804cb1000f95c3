"""``densepure certify`` / ``predict`` / ``analyze``: the commands, their progress bars and summaries."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from densepure.cli.arguments import add_job_arguments, options_from_args
from densepure.cli.progress import BarProgress
from densepure.errors import ConfigError


def add_parsers(sub) -> None:
    """The certify, predict and analyze subcommands."""
    p = sub.add_parser("certify", help="certify images (Cohen's CERTIFY, or sequential with --radius)",
                       description="Certify images with a smoothed classifier. With no options: the shipped digits "
                                   "preset, DensePure, on its test split.", argument_default=argparse.SUPPRESS)
    add_job_arguments(p, predict=False)
    p.set_defaults(_func=run_job)
    p = sub.add_parser("predict", help="predict with abstention (Cohen's PREDICT)", argument_default=argparse.SUPPRESS)
    add_job_arguments(p, predict=True)
    p.set_defaults(_func=run_job)
    p = sub.add_parser("analyze", help="certified accuracy, ACR, a markdown table and a plot from result files")
    p.add_argument("results", nargs="+", help="result files (TSV)")
    p.add_argument("--radii", default="0,0.25,0.5,0.75,1.0", help="comma-separated radii (default: 0,0.25,0.5,0.75,1.0)")
    p.add_argument("--plot", help="write a PNG of certified accuracy against radius here")
    p.add_argument("--paired", action="store_true",
                   help="also each file's ACR minus the first file's, paired over the images both certified, "
                        "with a 95%% interval")
    p.set_defaults(_func=analyze)


def run_job(args: argparse.Namespace) -> int:
    """certify / predict: one process, or a Ray cluster with --ray."""
    from densepure.results.analyze import check_plot_path, default_plot_path

    options = options_from_args(args)
    predict = options.sampling.predict
    output = options.results.output
    outputs = [output, *(options.prefix_output(k) for k in options.sampling.also_chains)]
    plot = None if predict else check_plot_path(options.results.plot or default_plot_path(output), outputs)
    if options.cluster.ray is not None:
        output = _run_on_ray(args._command, options)
    elif not _run_here(args._command, options):
        return 130
    if predict:
        lines = summarize_predict_run(output, also=tuple(outputs[1:]))
    else:
        lines = summarize_run(output, plot, also=tuple(outputs[1:]))
    for line in lines:
        print(line)
    return 0


def _run_here(command: str, options) -> bool:
    """The job in this process, with a progress bar; a run already complete is said to be so and not
    loaded. False when Ctrl-C stopped it (after one line saying what was saved)."""
    from densepure.certify.job import load_models, prepare_draft, run, unfinished

    draft = prepare_draft(options)
    output = options.results.output
    if not unfinished(draft):
        print(f"densepure: this run is already complete in {output} ({len(draft.indices)} of {len(draft.indices)} "
              "images); its results are below (--output NEW starts another run, --overwrite starts this one "
              "again)", file=sys.stderr)
        return True
    job = load_models(draft)
    print(job.describe(command), file=sys.stderr)
    for warning in job.warnings:
        print(f"densepure: warning: {warning}", file=sys.stderr)
    progress = BarProgress(job.task)
    try:
        with progress:
            run(job, progress)
    except KeyboardInterrupt:
        print(progress.interrupted(output, len(job.indices)), file=sys.stderr)
        return False
    return True


def _run_on_ray(command: str, options):
    """The job on a Ray cluster (densepure.distributed): the same result file, one progress bar."""
    from densepure.distributed import prepare_cluster_job, run_cluster_job

    job = prepare_cluster_job(options)
    print(job.describe(command), file=sys.stderr)
    progress = ClusterProgress()
    try:
        output, _ = run_cluster_job(job, progress)
    finally:
        progress.close()
    return output


def analyze(args: argparse.Namespace) -> int:
    """Tables (and a plot) of certified accuracy and ACR, or accuracy and abstention for PREDICT files."""
    from densepure.results.analyze import (
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
    from densepure.results.records import TsvKind

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


def summarize_run(output: Path, plot: Path, radii=(0.0, 0.25, 0.5, 0.75, 1.0),
                  also: tuple[Path, ...] = ()) -> list[str]:
    """The certified-accuracy table of the run (and its ``--also-K`` files), and the plot's path."""
    from densepure.results.analyze import load_run, markdown_table, plot_certified_accuracy, summarize

    runs = [load_run(path) for path in (output, *also)]
    plot_path = plot_certified_accuracy(runs, plot)
    lines = [markdown_table([summarize(run, radii) for run in runs]), f"results: {output} (sidecar {output}.jsonl)"]
    lines += [f"         {path} (sidecar {path}.jsonl)" for path in also]
    return [*lines, f"plot:    {plot_path}"]


class ClusterProgress:
    """One tqdm bar for a cluster run (a ``densepure.distributed.RunObserver``): images done, draws/s across
    all workers, ETA; lost workers are reported above the bar."""

    def __init__(self) -> None:
        self._bar = None
        self._draws, self._workers, self._start = 0, 0, time.perf_counter()

    def started(self, images: int, plan: str, workers) -> None:
        from tqdm import tqdm

        tqdm.write(f"{plan}: " + ", ".join(worker.describe() for worker in workers), file=sys.stderr)
        self._bar = tqdm(total=images, unit="img", dynamic_ncols=True)
        self._workers, self._start = len(workers), time.perf_counter()

    def progressed(self, draws: int) -> None:
        self._draws += draws
        self._postfix()

    def image_done(self, record) -> None:
        if self._bar is not None:
            self._bar.update(1)

    def worker_lost(self, message: str, workers_left: int) -> None:
        from tqdm import tqdm

        tqdm.write(message, file=sys.stderr)
        self._workers = workers_left
        self._postfix()

    def _postfix(self) -> None:
        if self._bar is not None:
            rate = self._draws / max(time.perf_counter() - self._start, 1e-9)
            self._bar.set_postfix_str(f"{rate:,.0f} draws/s on {self._workers} workers")

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def summarize_predict_run(output: Path, also: tuple[Path, ...] = ()) -> list[str]:
    """The accuracy and abstention table of a PREDICT run (and its ``--also-K`` files), and where they are."""
    from densepure.results.analyze import load_run, predict_markdown_table, summarize_predictions

    table = predict_markdown_table([summarize_predictions(load_run(path)) for path in (output, *also)])
    lines = [table, f"results: {output} (sidecar {output}.jsonl)"]
    return [*lines, *(f"         {path} (sidecar {path}.jsonl)" for path in also)]
