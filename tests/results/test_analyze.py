"""Analysis of result files: numbers checked by hand, the markdown shape, and the PNG plot."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from densepure.errors import ConfigError, InputError
from densepure.results.analyze import (
    Run,
    accuracy_curve,
    average_certified_radius,
    certified_accuracy,
    load_run,
    markdown_table,
    paired_acr_difference,
    paired_markdown,
    plot_certified_accuracy,
    summarize,
)
from densepure.results.records import TSV_HEADER, ResultRow

# idx label predict radius correct: two correct-and-robust, one abstention, one robust mistake
HAND_MADE = (
    TSV_HEADER + "\n"
    "0\t1\t1\t0.8000\t1\t1.0\n"
    "1\t2\t2\t0.3000\t1\t1.0\n"
    "2\t3\t-1\t0.0000\t0\t1.0\n"
    "3\t4\t5\t0.6000\t0\t1.0\n"
    "4\t0\t0\t0.2500\t1\t1.0\n"
)


@pytest.fixture()
def hand_made(tmp_path: Path) -> Path:
    path = tmp_path / "run_a.tsv"
    path.write_text(HAND_MADE)
    return path


def test_numbers_by_hand(hand_made: Path) -> None:
    run = load_run(hand_made)
    # correct with radius >= r: r=0 -> {0,1,4}; r=0.25 -> {0,1,4}; r=0.5 -> {0}; r=1 -> {}
    assert certified_accuracy(run, 0.0) == pytest.approx(3 / 5)
    assert certified_accuracy(run, 0.25) == pytest.approx(3 / 5)
    assert certified_accuracy(run, 0.3) == pytest.approx(2 / 5)
    assert certified_accuracy(run, 0.5) == pytest.approx(1 / 5)
    assert certified_accuracy(run, 1.0) == 0.0
    # the wrong prediction with radius 0.6 counts nowhere: ACR = (0.8 + 0.3 + 0.25) / 5
    assert average_certified_radius(run) == pytest.approx(0.27)
    summary = summarize(run, radii=(0.0, 0.5, 1.0))
    assert summary.certified_accuracy == pytest.approx((0.6, 0.2, 0.0))
    assert summary.abstention_rate == pytest.approx(0.2)
    assert summary.count == 5 and summary.name == "run_a.tsv"


def test_markdown_table_shape(hand_made: Path, tmp_path: Path) -> None:
    other = tmp_path / "run|b.tsv"
    other.write_text(TSV_HEADER + "\n7\t1\t1\t1.2000\t1\t2.0\n")
    radii = (0.0, 0.25, 0.5, 1.0)
    table = markdown_table([summarize(load_run(p), radii) for p in (hand_made, other)])
    lines = table.splitlines()
    assert lines[0] == "| results | r=0 | r=0.25 | r=0.5 | r=1 | ACR | count |"
    assert lines[1] == "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"
    assert lines[2] == "| run_a.tsv | 60.0 | 60.0 | 20.0 | 0.0 | 0.270 | 5 |"
    assert lines[3] == "| run\\|b.tsv | 100.0 | 100.0 | 100.0 | 100.0 | 1.200 | 1 |"
    assert len(lines) == 4


def test_plot_is_a_png(hand_made: Path, tmp_path: Path) -> None:
    runs = [load_run(hand_made), load_run(hand_made, name="again")]
    out = plot_certified_accuracy(runs, tmp_path / "plots" / "acc.png")
    data = out.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 1000


def test_curve_matches_pointwise_definition(hand_made: Path) -> None:
    run = load_run(hand_made)
    grid = np.array([0.0, 0.25, 0.2500001, 0.3, 0.31, 0.8, 0.81])
    expected = [certified_accuracy(run, r) for r in grid]
    np.testing.assert_allclose(accuracy_curve(run, grid), expected)


def test_errors(tmp_path: Path, hand_made: Path) -> None:
    empty = tmp_path / "empty.tsv"
    empty.write_text(TSV_HEADER + "\n")
    with pytest.raises(InputError, match="no rows"):
        load_run(empty)
    with pytest.raises(ConfigError, match="radii must be"):
        summarize(load_run(hand_made), radii=(-0.5,))
    with pytest.raises(ConfigError, match="same radii"):
        run = load_run(hand_made)
        markdown_table([summarize(run, (0.0,)), summarize(run, (0.5,))])
    with pytest.raises(ConfigError, match="at least one run"):
        plot_certified_accuracy([], tmp_path / "x.png")
    single = Run("one", (ResultRow(0, 1, 1, 0.0, True, 1.0),))
    assert certified_accuracy(single, 0.0) == 1.0 and average_certified_radius(single) == 0.0


def test_paired_acr_difference_by_hand(hand_made: Path, tmp_path: Path) -> None:
    other = tmp_path / "run_b.tsv"
    other.write_text(TSV_HEADER + "\n"
                     "0\t1\t1\t0.5000\t1\t1.0\n"
                     "1\t2\t2\t0.3000\t1\t1.0\n"
                     "2\t3\t3\t0.4000\t1\t1.0\n"
                     "3\t4\t4\t0.6000\t1\t1.0\n"
                     "4\t0\t-1\t0.0000\t0\t1.0\n"
                     "7\t1\t1\t0.9000\t1\t1.0\n")  # idx 7 is not in run_a: left out
    a, b = load_run(hand_made), load_run(other)
    # per-image correct * radius: a = .8 .3 0 0 .25, b = .5 .3 .4 .6 0; differences .3 0 -.4 -.6 .25
    d = paired_acr_difference(a, b)
    assert d.count == 5
    assert d.difference == pytest.approx(-0.09, abs=1e-12)
    # deviations from the mean: .39 .09 -.31 -.51 .34; sum of squares .632; sample variance .158
    assert d.half_width == pytest.approx(1.959963984540054 * np.sqrt(0.158 / 5), rel=1e-12)
    back = paired_acr_difference(b, a)
    assert (back.difference, back.half_width) == pytest.approx((0.09, d.half_width), abs=1e-12)
    # a run against itself: no difference and no spread
    same = paired_acr_difference(a, a)
    assert (same.difference, same.half_width) == (0.0, 0.0)


def test_paired_acr_difference_needs_shared_images(hand_made: Path, tmp_path: Path) -> None:
    other = tmp_path / "run_c.tsv"
    other.write_text(TSV_HEADER + "\n" + "4\t0\t0\t0.2500\t1\t1.0\n" + "9\t0\t0\t0.2500\t1\t1.0\n")
    with pytest.raises(InputError, match="share 1 image"):
        paired_acr_difference(load_run(hand_made), load_run(other))


def test_paired_markdown_reports_a_run_that_has_just_started(hand_made: Path, tmp_path: Path) -> None:
    """A partial run sharing one image gets a line instead of an error, so a report never fails."""
    started = tmp_path / "run_d.tsv"
    started.write_text(TSV_HEADER + "\n" + "4\t0\t0\t0.2500\t1\t1.0\n")
    reference = load_run(hand_made, "ref")
    text = paired_markdown(reference, [load_run(started, "new"), load_run(hand_made, "same")])
    assert "- new: not enough shared images yet (1)" in text
    assert "- same: +0.000 ± 0.000 (5 images)" in text


def _certified_run(path: Path, n: int = 1000, sigma: float = 0.25) -> Path:
    """A real CERTIFY run of 3 images (one with all n draws agreeing: the largest radius n allows)."""
    from densepure.certify.tasks import CertifyTask
    from densepure.noise import NoisePhase
    from densepure.results.records import IfExists
    from densepure.results.writer import open_results

    config = {"mode": "gaussian", "sigma": sigma, "alpha": 0.001, "n0": 10, "n": n, "seed": 1}
    task = CertifyTask(10, n, 0.001)
    with open_results(path, config, 1, IfExists.OVERWRITE) as writer:
        for idx, hits in enumerate((n, n - n // 10, n // 3)):
            counts = {NoisePhase.SELECTION: np.array([0, 10]), NoisePhase.ESTIMATION: np.array([n - hits, hits])}
            writer.write(task.record(idx, 1, 1.0, counts, sigma))
    return path


def test_the_table_and_the_plot_say_sigma_n_alpha_and_n_s_ceiling(tmp_path: Path) -> None:
    """Issue 26: with n = 1000 nothing above sigma * Phi^-1(alpha^(1/n)) = 0.616 can be certified; the plot and
    the table say so, so that the drop there reads as n's, not the model's."""
    from densepure.results.analyze import accuracy_figure
    from densepure.stats.cohen import max_certifiable_radius

    run = load_run(_certified_run(tmp_path / "r.tsv"))
    ceiling = max_certifiable_radius(1000, 0.001, 0.25)
    assert run.ceiling == ceiling and round(ceiling, 3) == 0.616
    assert ceiling - 1e-4 < run.rows[0].radius <= ceiling  # all 1000 draws agree: the ceiling (4 decimals, down)
    table = markdown_table([summarize(run, (0.0, 0.5, 0.75))])
    assert table.splitlines()[-1] == (
        "- r.tsv: sigma 0.25, n 1,000, alpha 0.001; n = 1,000 certifies no radius above 0.616 (sigma * "
        "Phi^-1(alpha^(1/n)), all n draws agreeing): beyond it the accuracy is 0 because of n, not the model")
    axes = accuracy_figure([run]).figure.axes[0]
    assert axes.get_title() == "Certified accuracy (sigma 0.25, n 1,000, alpha 0.001)"
    marks = [line for line in axes.get_lines() if line.get_linestyle() == "--"]
    assert [line.get_xdata()[0] for line in marks] == [ceiling]
    assert "largest radius n = 1,000 can certify: 0.616" in [t.get_text() for t in axes.get_legend().get_texts()]
    assert axes.get_xlim()[1] > ceiling


def test_runs_with_different_settings_name_theirs_in_the_legend(tmp_path: Path, hand_made: Path) -> None:
    from densepure.results.analyze import accuracy_figure

    runs = [load_run(_certified_run(tmp_path / "a.tsv", n=100)), load_run(_certified_run(tmp_path / "b.tsv")),
            load_run(hand_made)]
    axes = accuracy_figure(runs).figure.axes[0]
    texts = [t.get_text() for t in axes.get_legend().get_texts()]
    assert axes.get_title() == "Certified accuracy"
    assert "a.tsv (sigma 0.25, n 100, alpha 0.001)" in texts and "run_a.tsv" in texts
    assert len([line for line in axes.get_lines() if line.get_linestyle() == "--"]) == 2  # a ceiling per n
    assert markdown_table([summarize(r) for r in runs]).count("\n- ") == 2  # a Cohen file has no statistics
