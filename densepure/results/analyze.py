"""Summaries of result files: certified accuracy, average certified radius, table and plot.

Definitions (ALGORITHM.md §9), over the N images of a file:
  certified accuracy at r = #{correct and radius >= r} / N,
  ACR (average certified radius) = sum(correct * radius) / N,
  abstention rate = #{predict = -1} / N.
Abstentions count as wrong (their ``correct`` is 0), so every rate is over all N images.
A run read with its sidecar knows its statistics (sigma, n, alpha): tables and plots say them, with the
largest radius the run's n can certify, ``sigma * Phi^-1(alpha^(1/n))`` (all n draws agreeing; the requested
radius of a sequential run): certified accuracy is 0 beyond it because of n, not because of the model.
A PREDICT file (Cohen's predict.py format) has no radii: it summarizes to accuracy and abstention rate
(:func:`summarize_predictions`); radius tables, pairing and plots need CERTIFY files.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from densepure.errors import ConfigError, InputError
from densepure.paths import check_input, check_output, replace_file
from densepure.results.files import read_results
from densepure.results.records import CorrectColumn, ResultRow, TsvKind
from densepure.results.verify import Procedure, ProcedureKind, check_before_reading
from densepure.stats.cohen import max_certifiable_radius
from densepure.stats.confseq import max_anytime_radius

DEFAULT_RADII = (0.0, 0.25, 0.5, 0.75, 1.0)


@dataclass(frozen=True)
class Run:
    """The rows of one result file, with the label used in tables and legends, and the procedure its sidecar
    records (None: a file without one, such as Cohen's)."""

    name: str
    rows: tuple[ResultRow, ...]
    procedure: Procedure | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "rows", tuple(self.rows))
        if not self.rows:
            raise InputError(f"results {self.name!r} have no rows: nothing to analyze")
        if len({row.kind for row in self.rows}) > 1:
            raise InputError(f"results {self.name!r} mix rows with and without a certified radius")

    @property
    def kind(self) -> TsvKind:
        """CERTIFY (rows with radii) or PREDICT (no radii)."""
        return self.rows[0].kind

    @property
    def settings(self) -> str | None:
        """'sigma 0.25, n 1,000, alpha 0.001' (and the requested radius of a sequential run), if known."""
        p = self.procedure
        if p is None:
            return None
        sigma = "" if p.sigma is None else f"sigma {p.sigma:g}, "
        radius = "" if p.radius is None else f", sequential test of r = {p.radius:g} ({p.method.value})"
        anytime = ", anytime radius (betting)" if p.kind is ProcedureKind.ANYTIME else ""
        return f"{sigma}n {p.n:,}, alpha {p.alpha:g}{radius}{anytime}"

    @property
    def ceiling(self) -> float | None:
        """The largest radius the run can certify (module doc), or None (no sidecar, or PREDICT)."""
        p = self.procedure
        if p is None or p.kind is ProcedureKind.PREDICT:
            return None
        if p.kind is ProcedureKind.SEQUENTIAL:
            return p.radius
        if p.kind is ProcedureKind.ANYTIME:
            return max_anytime_radius(p.n, p.alpha, p.sigma)
        return max(0.0, max_certifiable_radius(p.n, p.alpha, p.sigma))

    def ceiling_note(self) -> str | None:
        """One line: the run's statistics and what its n caps (None when unknown)."""
        if self.settings is None:
            return None
        p, ceiling = self.procedure, self.ceiling
        if ceiling is None:
            return f"{self.name}: {self.settings}"
        if p.kind is ProcedureKind.SEQUENTIAL:
            return f"{self.name}: {self.settings}: it certifies r = {ceiling:g} or nothing"
        how = "the betting bound of all n draws agreeing" if p.kind is ProcedureKind.ANYTIME else \
            "sigma * Phi^-1(alpha^(1/n)), all n draws agreeing"
        return (f"{self.name}: {self.settings}; n = {p.n:,} certifies no radius above {ceiling:.3f} "
                f"({how}): beyond it the accuracy is 0 because of n, "
                "not the model")

    @property
    def correct(self) -> np.ndarray:
        return np.array([row.correct for row in self.rows], dtype=bool)

    @property
    def radius(self) -> np.ndarray:
        if self.kind is TsvKind.PREDICT:
            raise InputError(f"{self.name!r} holds PREDICT results: no certified radius to analyze "
                             "(certify the images with `densepure certify` for radii)")
        return np.array([row.radius for row in self.rows], dtype=np.float64)


@dataclass(frozen=True)
class Summary:
    """Numbers of one run: ``certified_accuracy[i]`` is the certified accuracy at ``radii[i]``
    (fractions in [0, 1]); ``count`` images; ``note``: its statistics and radius ceiling (:meth:`Run.ceiling_note`)."""

    name: str
    count: int
    radii: tuple[float, ...]
    certified_accuracy: tuple[float, ...]
    acr: float
    abstention_rate: float
    note: str | None = None


@dataclass(frozen=True)
class PredictSummary:
    """Numbers of one PREDICT run: ``accuracy`` (predictions equal to the label) and ``abstention_rate``,
    fractions of ``count`` images."""

    name: str
    count: int
    accuracy: float
    abstention_rate: float


def summarize_predictions(run: Run) -> PredictSummary:
    """Accuracy and abstention rate of a run (any kind: a CERTIFY run's predictions count too)."""
    return PredictSummary(run.name, len(run.rows), float(np.mean(run.correct)),
                          float(np.mean([row.predict == -1 for row in run.rows])))


def predict_markdown_table(summaries: Sequence[PredictSummary]) -> str:
    """A markdown table, one row per PREDICT run: accuracy (%), abstained (%), count."""
    lines = [_md_row(["results", "accuracy", "abstained", "count"]), _md_row(["---", "---:", "---:", "---:"])]
    for s in summaries:
        lines.append(_md_row([s.name.replace("|", "\\|"), f"{100 * s.accuracy:.1f}", f"{100 * s.abstention_rate:.1f}",
                              str(s.count)]))
    return "\n".join(lines) + "\n"


def check_radii(radii: Sequence[float]) -> tuple[float, ...]:
    """Validate radii (finite, >= 0, at least one) and return them as floats, order kept."""
    values = tuple(float(r) for r in radii)
    if not values or not all(math.isfinite(r) and r >= 0.0 for r in values):
        raise ConfigError(f"radii must be one or more finite numbers >= 0, got {list(radii)}")
    return values


def load_run(path: str | Path, name: str | None = None,
             correct: CorrectColumn = CorrectColumn.AUTO) -> Run:
    """Read a result file as a :class:`Run` named ``name`` (default: the file name). A file with a sidecar is
    checked first (:func:`~densepure.results.verify.check_before_reading`: every certificate recomputed from
    its counts, the chain, every row against its record): an edited file is refused, naming the line."""
    path = check_input(path, "result file")
    header = check_before_reading(path)
    procedure = Procedure.from_config(header.config) if header is not None else None
    return Run(path.name if name is None else name, tuple(read_results(path, correct)), procedure)


def certified_accuracy(run: Run, radius: float) -> float:
    """Fraction of images that are correct with a certified radius >= ``radius``."""
    return float(np.mean(run.correct & (run.radius >= radius)))


def average_certified_radius(run: Run) -> float:
    """ACR: mean of ``correct * radius`` over all images."""
    return float(np.mean(run.correct * run.radius))


@dataclass(frozen=True)
class PairedDifference:
    """ACR of ``a`` minus ACR of ``b`` over the images both certified, with a 95% interval."""

    count: int
    difference: float
    half_width: float


def _radius_differences(a: Run, b: Run) -> np.ndarray:
    """Per-image ``correct * radius`` of ``a`` minus that of ``b``, over the ``idx`` both have."""
    radius_b = {row.idx: row.correct * row.radius for row in b.rows}
    return np.array([row.correct * row.radius - radius_b[row.idx]
                     for row in sorted(a.rows, key=lambda row: row.idx) if row.idx in radius_b],
                    dtype=np.float64)


def _paired(diff: np.ndarray) -> PairedDifference:
    half = 1.959963984540054 * float(np.std(diff, ddof=1)) / math.sqrt(len(diff))
    return PairedDifference(len(diff), float(np.mean(diff)), half)


def paired_acr_difference(a: Run, b: Run) -> PairedDifference:
    """Compare two runs on the same images: the mean of the per-image difference of certified
    radii (``correct * radius``; its mean is the ACR difference) and the half-width of its 95%
    normal interval, ``1.96 * sd / sqrt(n)`` with the sample standard deviation of the differences.

    Pairing removes the spread between images, which dominates the spread of each ACR alone. Images
    are matched by ``idx``; those in only one run are left out. Needs at least two shared images.
    """
    diff = _radius_differences(a, b)
    if len(diff) < 2:
        raise InputError(f"{a.name!r} and {b.name!r} share {len(diff)} image(s); pairing needs at least 2")
    return _paired(diff)


def paired_markdown(reference: Run, others: Sequence[Run]) -> str:
    """A markdown list of each run's :func:`paired_acr_difference` against ``reference``.

    A run sharing fewer than two images with ``reference`` (a run just started) gets a line saying
    so instead of an interval, so a report of partial results never fails.
    """
    lines = [f"ACR minus {reference.name}'s, paired over the same images (mean of the per-image "
             "difference of certified radii, 95% normal interval):", ""]
    for run in others:
        diff = _radius_differences(run, reference)
        if len(diff) < 2:
            lines.append(f"- {run.name}: not enough shared images yet ({len(diff)})")
            continue
        d = _paired(diff)
        lines.append(f"- {run.name}: {d.difference:+.3f} ± {d.half_width:.3f} ({d.count} images)")
    return "\n".join(lines) + "\n"


def summarize(run: Run, radii: Sequence[float] = DEFAULT_RADII) -> Summary:
    """Certified accuracies at ``radii``, ACR and abstention rate of one run."""
    radii = check_radii(radii)
    abstained = np.mean([row.predict == -1 for row in run.rows])
    return Summary(run.name, len(run.rows), radii,
                   tuple(certified_accuracy(run, r) for r in radii),
                   average_certified_radius(run), float(abstained), run.ceiling_note())


def markdown_table(summaries: Sequence[Summary]) -> str:
    """A markdown table, one row per run: certified accuracy (%) at each radius, ACR, count; then, for the
    runs whose statistics are known, a line each with them and their radius ceiling (module doc).

    All summaries must share the same radii.
    """
    if not summaries:
        raise ConfigError("markdown_table needs at least one summary, got none")
    radii = summaries[0].radii
    if any(s.radii != radii for s in summaries):
        raise ConfigError(f"all summaries must use the same radii, got "
                          f"{sorted({s.radii for s in summaries})}")
    header = ["results", *(f"r={r:g}" for r in radii), "ACR", "count"]
    lines = [_md_row(header), _md_row(["---"] + ["---:"] * (len(header) - 1))]
    for s in summaries:
        cells = [s.name.replace("|", "\\|"), *(f"{100 * a:.1f}" for a in s.certified_accuracy),
                 f"{s.acr:.3f}", str(s.count)]
        lines.append(_md_row(cells))
    notes = [f"- {s.note}" for s in summaries if s.note]
    return "\n".join(lines + ([""] + notes if notes else [])) + "\n"


def _md_row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def accuracy_curve(run: Run, radii: np.ndarray) -> np.ndarray:
    """Certified accuracy at each radius of ``radii`` (1-D float array), same shape."""
    correct_radii = np.sort(run.radius[run.correct])
    # number of correct images with radius >= r, for every r at once
    at_least = correct_radii.size - np.searchsorted(correct_radii, radii, side="left")
    return at_least / len(run.rows)


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def parse_radii(text: str) -> tuple[float, ...]:
    """``"0,0.25,0.5"`` -> ``(0.0, 0.25, 0.5)``, or a ConfigError that says what was wrong."""
    parts = [part.strip() for part in str(text).split(",")]
    try:
        values = tuple(float(part) for part in parts if part)
    except ValueError:
        raise ConfigError(f"radii must be comma-separated numbers such as 0,0.25,0.5, got {text!r}") from None
    return check_radii(values)


def default_plot_path(output: str | Path) -> Path:
    """Where a run's plot goes by default: beside its result file, never onto it."""
    output = Path(output)
    plot = output.with_suffix(".png")
    return plot if plot != output else output.with_name(output.name + ".png")


def check_plot_path(path: str | Path, protected: Sequence[str | Path] = ()) -> Path:
    """``path`` if a plot may be written there: it ends in ``.png``, it is none of the ``protected`` files
    (result files and their sidecars), it is an output densepure may write (:func:`densepure.paths.check_output`:
    no link, directory or FIFO), and anything already there is a PNG. A plot never overwrites results."""
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ConfigError(f"a plot path must end in .png, got {str(path)!r}")
    guarded = {Path(p).resolve() for p in protected} | {Path(f"{p}.jsonl").resolve() for p in protected}
    if path.resolve() in guarded:
        raise ConfigError(f"{str(path)!r} is a result file of this run: choose another plot path")
    check_output(path, "the plot path", may_exist=True)
    if path.exists():
        try:
            with path.open("rb") as handle:
                is_png = handle.read(len(PNG_SIGNATURE)) == PNG_SIGNATURE
        except OSError as exc:
            raise ConfigError(f"cannot read {str(path)!r}: {exc.strerror or exc}") from exc
        if not is_png:
            raise ConfigError(f"{str(path)!r} exists and is not a PNG: refusing to overwrite it with a plot")
    return path


def _title(runs: Sequence[Run]) -> tuple[str, bool]:
    """The plot's title, and whether it names the statistics (all runs share them) or the legend must."""
    settings = {run.settings for run in runs}
    if len(settings) == 1 and None not in settings:
        return f"Certified accuracy ({settings.pop()})", True
    return "Certified accuracy", False


def accuracy_figure(runs: Sequence[Run], max_radius: float | None = None, points: int = 512):
    """The figure of :func:`plot_certified_accuracy` (a matplotlib Agg canvas, ``canvas.figure`` its figure)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if points < 2:
        raise ConfigError(f"points must be >= 2, got {points}")
    ceilings = [run.ceiling for run in runs]
    if max_radius is None:
        largest = max([float(run.radius.max()) for run in runs] + [c for c in ceilings if c is not None])
        max_radius = max(0.1, 1.05 * largest)
    if not (math.isfinite(max_radius) and max_radius > 0.0):
        raise ConfigError(f"max_radius must be a finite number > 0, got {max_radius}")
    grid = np.linspace(0.0, max_radius, points)
    figure = Figure(figsize=(6.4, 4.4), dpi=100)
    canvas = FigureCanvasAgg(figure)
    axes = figure.add_subplot(1, 1, 1)
    title, titled = _title(runs)
    marked: set[float] = set()
    for run, ceiling in zip(runs, ceilings, strict=True):
        label = run.name if titled or run.settings is None else f"{run.name} ({run.settings})"
        (line,) = axes.plot(grid, accuracy_curve(run, grid), label=label)
        if ceiling is not None and ceiling not in marked:
            marked.add(ceiling)
            axes.axvline(ceiling, color=line.get_color(), linestyle="--", linewidth=1.0, alpha=0.8,
                         label=f"largest radius n = {run.procedure.n:,} can certify: {ceiling:.3f}")
    axes.set_title(title, fontsize=10)
    axes.set_xlabel("L2 radius (pixel units in [0, 1])")
    axes.set_ylabel("certified accuracy")
    axes.set_xlim(0.0, max_radius)
    axes.set_ylim(0.0, 1.0)
    axes.grid(True, alpha=0.3)
    axes.legend(loc="best", fontsize=8)
    figure.tight_layout()
    return canvas


def plot_certified_accuracy(runs: Sequence[Run], out_path: str | Path,
                            max_radius: float | None = None, points: int = 512) -> Path:
    """Write a PNG of certified accuracy against radius, one labelled curve per run, titled with the runs'
    statistics (sigma, n, alpha) where their sidecars record them, and a dashed line at each run's radius
    ceiling (module doc), so that the drop to 0 there reads as n's, not the model's.

    Uses matplotlib's Agg canvas directly (headless, and no global backend switch).
    ``max_radius`` defaults to 5 % beyond the largest radius or ceiling of any run (at least 0.1). The path is
    checked first (:func:`check_plot_path`): a plot never replaces anything but a PNG, and is written beside the
    path and renamed over it (:func:`densepure.paths.replace_file`), never through a link.
    """
    if not runs:
        raise ConfigError("plot_certified_accuracy needs at least one run, got none")
    out_path = check_plot_path(out_path)
    canvas = accuracy_figure(runs, max_radius, points)
    buffer = io.BytesIO()
    canvas.print_png(buffer)
    try:
        out_path.parent.mkdir(parents=True, exist_ok=True)
        replace_file(out_path, buffer.getvalue())
    except OSError as exc:
        raise InputError(f"cannot write the plot to {str(out_path)!r}: {exc.strerror or exc}") from exc
    return out_path
