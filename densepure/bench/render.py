"""Reports for people: the markdown table, the plots (latency CDF, throughput against concurrency), and two
reports side by side with ratios (``densepure bench compare``). Pure apart from matplotlib, imported only
to draw."""

from __future__ import annotations

import shlex
from collections.abc import Mapping
from pathlib import Path

from densepure.bench.report import Report, Series

LATENCY_COLUMN, GROUP_COLUMNS = "latency_s", {"clients": "client(s)", "target_qps": "queries/s target"}


def describe_environment(environment: Mapping) -> str:
    """One line: the device (or the CPU, its threads and load) and torch's version."""
    device, cpu, versions = environment.get("device", {}), environment.get("cpu", {}), environment.get("versions", {})
    if device.get("type") == "cuda":
        return (f"{device.get('name')}, driver {device.get('driver')}, CUDA {versions.get('cuda')}, "
                f"torch {versions.get('torch')}")
    return (f"{cpu.get('model')}, {cpu.get('torch_threads')} torch thread(s) of {cpu.get('cores_available')} "
            f"core(s), torch {versions.get('torch')}, load average {cpu.get('load_average_1_5_15')}")


def number(value: float | None) -> str:
    """A value with 4 significant digits (integers in full)."""
    if value is None:
        return "-"
    if isinstance(value, int) or (float(value).is_integer() and abs(value) < 1e15):
        return f"{int(value):,}"
    return f"{value:,.4g}" if abs(value) >= 1e-3 else f"{value:.3e}"


def markdown(report: Report) -> str:
    """The report as markdown: what ran where, every metric, every series, LoadGen's verdicts, the notes."""
    lines = [f"# densepure bench {report.subcommand}{' (partial: interrupted)' if report.partial else ''}", "",
             f"- command: `{shlex.join(report.command)}`",
             f"- machine: {describe_environment(report.environment)}",
             f"- started {report.started_at}, finished {report.finished_at}", ""]
    if report.metrics:
        lines += ["| metric | value | unit | what |", "|---|---:|---|---|"]
        lines += [f"| {name} | {number(m.value)} | {m.unit.value} | {m.description} |"
                  for name, m in report.metrics.items()]
        lines.append("")
    for run in report.loadgen:
        checks = ", ".join(f"{k}: {'yes' if v else 'NO'}" for k, v in run.checks.items())
        files = f"files: `{run.directory}`" if run.directory else "its logs were not kept (no --output)"
        lines += [f"LoadGen {run.scenario} ({_settings(run.settings)}): **{run.result}** ({checks}); {files}", ""]
        if run.metrics:
            lines += ["| LoadGen | value |", "|---|---:|"]
            lines += [f"| {k} | {number(v)} |" for k, v in run.metrics.items()]
            lines.append("")
    for name, series in report.series.items():
        if len(series.rows) > 50:  # per-request samples: in the JSON and the plots, summarized here
            lines += [f"Series `{name}`: {len(series.rows)} rows (report.json)", ""]
            continue
        lines += [f"## {name}", "", series_table(series), ""]
    lines += [f"- {note}" for note in report.notes]
    return "\n".join(lines).rstrip() + "\n"


def _settings(settings: Mapping) -> str:
    return ", ".join(f"{k}={v}" for k, v in settings.items())


def series_table(series: Series) -> str:
    head = "| " + " | ".join(f"{n} ({u.value})" for n, u in series.columns) + " |"
    rule = "|" + "---:|" * len(series.columns)
    return "\n".join([head, rule, *("| " + " | ".join(number(v) for v in row) + " |" for row in series.rows)])


def compare(a: Report, b: Report, name_a: str = "A", name_b: str = "B") -> str:
    """Two reports side by side: the machines, the options that differ, then every metric either has,
    with B / A where both have it."""
    lines = [f"A: {name_a} ({a.subcommand}{', partial' if a.partial else ''}): {describe_environment(a.environment)}",
             f"B: {name_b} ({b.subcommand}{', partial' if b.partial else ''}): {describe_environment(b.environment)}"]
    differ = sorted(k for k in set(a.configuration) | set(b.configuration)
                    if a.configuration.get(k) != b.configuration.get(k))
    if differ:
        lines += ["", "| option | A | B |", "|---|---|---|"]
        lines += [f"| {k} | {a.configuration.get(k, '-')} | {b.configuration.get(k, '-')} |" for k in differ]
    lines += ["", "| metric | A | B | B / A | unit |", "|---|---:|---:|---:|---|"]
    for name in list(a.metrics) + [k for k in b.metrics if k not in a.metrics]:
        ma, mb = a.metrics.get(name), b.metrics.get(name)
        unit = (ma or mb).unit.value
        if ma is not None and mb is not None and ma.unit is not mb.unit:
            lines.append(f"| {name} | {number(ma.value)} {ma.unit.value} | {number(mb.value)} {mb.unit.value} | "
                         "units differ | |")
            continue
        ratio = number(mb.value / ma.value) + "x" if ma is not None and mb is not None and ma.value else "-"
        lines.append(f"| {name} | {number(ma.value if ma else None)} | {number(mb.value if mb else None)} | "
                     f"{ratio} | {unit} |")
    return "\n".join(lines) + "\n"


def plots(report: Report) -> dict[str, object]:
    """The figures worth drawing for ``report``: ``{file name: matplotlib Figure}``."""
    out = {}
    curves = latency_curves(report)
    if curves:
        out["latency_cdf.png"] = _cdf_figure(curves, report.subcommand)
    sweep = report.series.get("concurrency")
    if sweep is not None and len(sweep.rows) >= 1:
        out["throughput_vs_concurrency.png"] = _sweep_figure(sweep)
    return out


def latency_curves(report: Report) -> dict[str, list[float]]:
    """Latency samples to plot as CDFs: ``{label: seconds}``, one curve per series (per client count, or per
    target rate, in a series with such a column)."""
    curves: dict[str, list[float]] = {}
    for name, series in report.series.items():
        columns = [n for n, _ in series.columns]
        if LATENCY_COLUMN not in columns:
            continue
        latency = series.column(LATENCY_COLUMN)
        by = next((column for column in GROUP_COLUMNS if column in columns), None)
        groups = series.column(by) if by else [None] * len(latency)
        for value, group in zip(latency, groups, strict=True):
            if value is not None:
                label = name if group is None else f"{name}, {group:g} {GROUP_COLUMNS[by]}"
                curves.setdefault(label, []).append(value)
    return curves


def _cdf_figure(curves: Mapping[str, list[float]], title: str):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.2))
    ax = fig.add_subplot()
    for label, values in curves.items():
        xs = sorted(values)
        ax.step([xs[0], *xs], [0.0, *((i + 1) / len(xs) for i in range(len(xs)))], where="post",
                label=f"{label} ({len(xs)})")
    ax.set_xlabel("latency (s)")
    ax.set_ylabel("fraction of requests answered")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    ax.set_title(f"densepure bench {title}: latency CDF")
    fig.tight_layout()
    return fig


def _sweep_figure(sweep: Series):
    from matplotlib.figure import Figure

    clients = sweep.column("clients")
    fig = Figure(figsize=(6.4, 4.2))
    ax = fig.add_subplot()
    ax.plot(clients, sweep.column("requests_per_s"), marker="o", label="requests/s")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("concurrent clients")
    ax.set_ylabel("requests/s")
    names = [n for n, _ in sweep.columns]
    if "p50_s" in names:
        other = ax.twinx()
        other.plot(clients, sweep.column("p50_s"), marker="s", color="tab:red", label="p50 latency")
        other.set_ylabel("p50 latency (s)")
        other.legend(loc="lower right", fontsize="small")
    ax.legend(loc="upper left", fontsize="small")
    ax.grid(alpha=0.3)
    ax.set_title("throughput against concurrency")
    fig.tight_layout()
    return fig


def save_figure(figure, path: Path) -> None:
    """Render ``figure`` as PNG bytes into ``path`` (an open binary file object or path-like)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(figure)
    figure.savefig(path, format="png", dpi=110)
