"""The progress bar of ``densepure certify`` / ``predict`` (one process): draws, images, one rate, an ETA.

Every image is in flight at once (the engine samples all of them together), so images are decided
near the end of the run: the bar counts *draws*, which move from the first engine step. Its rate and
ETA come from :class:`DrawRate`, not from tqdm's estimator (see there why).
"""

from __future__ import annotations

import time
from collections import deque
from pathlib import Path


class DrawRate:
    """Draws per second over the recent sampling, for the bar's rate and ETA.

    tqdm's estimate (an exponential average over its last few updates) followed single engine steps: on
    the main job its ETA started at 30 minutes and settled near 7, because the first step carries the
    warm-up (probe batches, first allocations, thread pools) and steps decide draws in bursts. Here the
    rate is the draws decided over a window of at least ``window_s`` seconds and ``min_steps`` steps,
    measured from the end of the first step that decided draws (the warm-up is left out), so one slow or
    bursty step moves it by a fraction of a window. It is ``None`` (not shown) until ``first_after`` more
    steps have run: one step's draws alone vary too much to predict a run. Steps closer than
    ``min_interval_s`` count as one, so that a fast GPU's thousands of steps keep the window small.
    """

    def __init__(self, window_s: float = 60.0, min_steps: int = 10, first_after: int = 4,
                 min_interval_s: float = 0.2) -> None:
        self.window_s, self.min_steps, self.first_after = window_s, min_steps, first_after
        self.min_interval_s = min_interval_s  # steps closer than this count as one (fast GPU steps)
        self._samples: deque[tuple[float, int]] = deque()  # (time, cumulative draws) after each step

    def add(self, now: float, draws: int) -> None:
        """Record the cumulative draws decided at time ``now`` (seconds, monotonic), after a step."""
        if not self._samples and draws == 0:
            return  # no draw decided yet: still warming up
        if len(self._samples) >= 2 and now - self._samples[-2][0] < self.min_interval_s:
            self._samples[-1] = (now, draws)
            return
        self._samples.append((now, draws))
        while len(self._samples) > self.min_steps + 1 and self._samples[1][0] <= now - self.window_s:
            self._samples.popleft()

    def rate(self) -> float | None:
        """Draws per second over the window, or None while it cannot be measured yet."""
        if len(self._samples) <= self.first_after:
            return None
        (t0, d0), (t1, d1) = self._samples[0], self._samples[-1]
        return (d1 - d0) / (t1 - t0) if t1 > t0 and d1 > d0 else None


class BarProgress:
    """One tqdm line on stderr, redrawn after every engine step that decides draws (a
    :class:`~densepure.certify.runner.Progress`).

    Fixed-n tasks (Cohen's CERTIFY and PREDICT: ``n0 + n`` or ``n`` draws per image) show the draws done
    of the draws planned with a percentage, the images done of the images this run samples, the time
    sampled, one rate (draws/s, :class:`DrawRate`) and the ETA (the draws left at that rate). Sequential
    tasks (``--radius``) stop each image when its test decides, so no total is known: the bar shows the
    draws, images, time and rate, and says that there is no ETA.

    Ctrl-C: an image is saved once all its draws are decided, and partial draws are not kept. The run
    stops at once and :meth:`interrupted` says what was saved and that the images in flight start again
    on resume. Finishing the images closest to done instead was rejected: every image is in flight at
    once, so the closest is often minutes from done (Ctrl-C would not stop the run), and a second Ctrl-C
    would lose them anyway.
    """

    def __init__(self, task) -> None:
        self.per_image = _draws_per_image(task)
        self.bar = None
        self.images = self.done = 0
        self.total: int | None = None
        self.started = False
        self.last = ""  # the last decided image, shown at the end of the line
        self.rate = DrawRate()
        self.start_time = time.perf_counter()

    def __enter__(self) -> BarProgress:
        return self

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.close()

    def start(self, images: int) -> None:
        from tqdm import tqdm

        self.images, self.started = images, True
        self.start_time = time.perf_counter()  # the time shown counts sampling, not model loading
        self.total = images * self.per_image if self.per_image else None
        bar_format = ("{percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} draws{postfix}" if self.total else
                      "{n_fmt} draws{postfix}")
        self.bar = tqdm(total=self.total, unit="draw", unit_scale=True, dynamic_ncols=True, bar_format=bar_format,
                        postfix=self._text(0))

    def step(self, stats) -> None:
        if self.bar is None:
            return
        self.rate.add(time.perf_counter(), stats.draws)
        if stats.draws > self.bar.n:
            self._postfix(stats.draws, refresh=False)
            self.bar.update(stats.draws - self.bar.n)  # redraws the line, postfix included

    def image(self, record, draws: int) -> None:
        self.done += 1
        radius = "" if record.row.radius is None else f" r={record.row.radius:.3f}"
        self.last = f", last: label {record.row.label} -> {record.row.predict}{radius}"
        self._postfix()

    def _postfix(self, draws: int | None = None, refresh: bool = True) -> None:
        self.bar.set_postfix_str(self._text(self.bar.n if draws is None else draws), refresh=refresh)

    def _text(self, draws: int) -> str:
        """What follows the draws on the line: images, time, rate, ETA, the last decided image."""
        from tqdm import tqdm

        rate = self.rate.rate()
        elapsed = tqdm.format_interval(time.perf_counter() - self.start_time)
        text = f"images {self.done}/{self.images} done, {elapsed} elapsed, "
        if rate is None:
            text += "measuring the rate"
        elif self.total:
            text += f"{rate:,.0f} draws/s, ETA {tqdm.format_interval(max(self.total - draws, 0) / rate)}"
        else:
            text += f"{rate:,.0f} draws/s"
        if not self.total:
            text += " (sequential: each image stops when its test decides, so there is no total or ETA)"
        return text + self.last

    def interrupted(self, output: str | Path, selected: int) -> str:
        """The line to print after Ctrl-C: what is saved in ``output`` and what is lost (class doc)."""
        if not self.started:
            return "densepure: interrupted before sampling started; nothing new was saved"
        saved = selected - self.images + self.done
        in_flight = self.images - self.done
        if saved == 0:
            return (f"densepure: interrupted before any image was decided: nothing was saved (an image is saved "
                    f"once all its draws are done; partial draws are not kept, so the {in_flight} images in "
                    "flight start again on the next run)")
        return (f"densepure: interrupted: {saved} of {selected} images are saved in {output} ({self.done} in this "
                f"run); the same command resumes, and the {in_flight} images in flight start their draws again")


def _draws_per_image(task) -> int | None:
    """Draws one image takes under ``task`` when fixed in advance (None for sequential tasks, which stop
    when their test decides)."""
    from densepure.certify.tasks import SequentialTask

    return None if isinstance(task, SequentialTask) else task.max_draws
