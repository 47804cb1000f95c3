"""The CLI's progress bar (issue 20, class 7): inside one long image it shows the draws done, draws/s and
an ETA, moving with every engine step, not only when an image is decided."""

from __future__ import annotations

import types

import pytest
import tqdm.std

import densepure.cli.certify as cli_certify
from densepure.certify.tasks import CertifyTask, SequentialTask
from densepure.cli.certify import BarProgress
from densepure.engine.engine import EngineStats
from densepure.results.records import ImageRecord, ResultRow


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch):
    """One fake clock for tqdm (rate, elapsed, ETA) and for the bar's own draws/s; no tqdm monitor thread."""
    clock = Clock()
    monkeypatch.setattr(tqdm.std, "time", clock)
    monkeypatch.setattr(cli_certify, "time", types.SimpleNamespace(perf_counter=clock))
    monkeypatch.setattr(tqdm.std.tqdm, "monitor_interval", 0)
    return clock


def shown(capsys) -> str:
    """The bar as last drawn on stderr."""
    return capsys.readouterr().err.rstrip("\n").split("\r")[-1]


def stats(draws: int) -> EngineStats:
    return EngineStats(unet_rows=draws, classifier_rows=draws, draws=draws)


def test_a_long_image_shows_draws_rate_and_eta_before_it_is_decided(capsys, clock):
    """Two images of 100 + 10,000 draws: 2,000 draws into the first one, 2 s after sampling started (10 s
    after the bar was made: reading a resumed file), the bar shows 2.00k/20.2k draws, 1,000 draws/s (in
    tqdm's rate and in the postfix) and 18 s to go; then it keeps moving, image by image."""
    with BarProgress(CertifyTask(n0=100, n=10_000)) as progress:
        clock.now = 10.0
        progress.start(2)
        assert "0.00/20.2k" in shown(capsys)
        clock.now = 12.0
        progress.step(stats(2_000))
        line = shown(capsys)
        assert "2.00k/20.2k" in line and "[00:02<00:18, 1.00kdraw/s" in line, line
        assert "images 0/2, 1,000 draws/s" in line and "last:" not in line, line
        clock.now = 14.0
        progress.step(stats(5_000))
        line = shown(capsys)
        assert "5.00k/20.2k" in line and "images 0/2, 1,250 draws/s" in line, line
        clock.now = 16.0
        progress.step(stats(10_100))
        row = ResultRow(idx=7, label=3, predict=3, radius=0.5, correct=True, time=6.0)
        progress.image(ImageRecord(row, n0=100, n=10_000), 10_100)
        line = shown(capsys)
        assert "10.1k/20.2k" in line and "images 1/2, 1,683 draws/s, last: label 3 -> 3 r=0.500" in line, line
        clock.now = 18.0
        progress.step(stats(12_200))  # inside the second image: the last decided one stays shown
        line = shown(capsys)
        assert "12.2k/20.2k" in line and "images 1/2, 1,525 draws/s, last: label 3 -> 3 r=0.500" in line, line


def test_a_sequential_run_shows_draws_and_rate_without_a_total(capsys, clock):
    """Sequential images stop when the test decides: no total and no ETA, but the draws and draws/s move."""
    with BarProgress(SequentialTask(n0=10, radius=0.25, n_max=1_000)) as progress:
        progress.start(3)
        clock.now = 4.0
        progress.step(stats(800))
        line = shown(capsys)
        assert line.startswith("800draw [00:04, 200draw/s, images 0/3, 200 draws/s"), line
