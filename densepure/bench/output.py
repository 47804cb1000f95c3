"""Where a report goes: ``--output DIR`` gets ``report.json``, ``report.md``, the plots and LoadGen's logs.

Checked before anything is measured, so a long run cannot end in a refusal: a report already in DIR is
replaced only with ``--overwrite``; DIR itself, and any file a report would replace, must not be a
symbolic link (a link is never followed: it could point at anything). Each file is written to a fresh
temporary name in DIR (opened with ``O_EXCL | O_NOFOLLOW``) and then moved into place: a reader never sees
half a report, and without ``--overwrite`` the move refuses a file that appeared meanwhile.

The check is written here for the bench reports alone; when ``densepure.results`` grows a shared safe
writer, this module should use it.
"""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

from densepure.bench.render import markdown, plots, save_figure
from densepure.bench.report import Report
from densepure.errors import ConfigError

REPORT_FILES = ("report.json", "report.md", "latency_cdf.png", "throughput_vs_concurrency.png")
LOADGEN_DIR = "loadgen"


def _lstat(path: Path) -> os.stat_result | None:
    try:
        return path.lstat()
    except FileNotFoundError:
        return None


class ReportDirectory:
    """A report directory: :meth:`check` (before measuring), :meth:`loadgen_dir`, :meth:`write`."""

    def __init__(self, path: str | os.PathLike, overwrite: bool = False):
        self.path, self.overwrite = Path(path), overwrite

    def check(self) -> None:
        """Refuse, with one line, what the run could not write: a link, a file where DIR should be, or a
        report there without ``--overwrite``."""
        st = _lstat(self.path)
        if st is None:
            return
        if stat.S_ISLNK(st.st_mode):
            raise ConfigError(f"--output {self.path} is a symbolic link: give the directory itself (links are "
                              "not followed)")
        if not stat.S_ISDIR(st.st_mode):
            raise ConfigError(f"--output {self.path} exists and is not a directory")
        present = [name for name in (*REPORT_FILES, LOADGEN_DIR) if _lstat(self.path / name) is not None]
        links = [name for name in present if stat.S_ISLNK(_lstat(self.path / name).st_mode)]
        if links:
            raise ConfigError(f"{self.path / links[0]} is a symbolic link: a report never writes through one")
        if present and not self.overwrite:
            raise ConfigError(f"{self.path} already holds a report ({', '.join(present)}): add --overwrite to "
                              "replace it, or choose another --output")

    def prepare(self) -> None:
        """Create DIR (and its parents) after :meth:`check`."""
        self.check()
        self.path.mkdir(parents=True, exist_ok=True)
        if self.overwrite and _lstat(self.path / LOADGEN_DIR) is not None:
            shutil.rmtree(self.path / LOADGEN_DIR)  # the replaced report's LoadGen logs

    def loadgen_dir(self, name: str) -> Path:
        """A fresh directory ``loadgen/NAME`` for one LoadGen run's logs (an older one is removed first,
        which :meth:`check` allowed only with ``--overwrite``)."""
        root = self.path / LOADGEN_DIR
        for path in (root, root / name):
            st = _lstat(path)
            if st is not None and stat.S_ISLNK(st.st_mode):
                raise ConfigError(f"{path} is a symbolic link: a report never writes through one")
        target = root / name
        if _lstat(target) is not None:
            shutil.rmtree(target)  # rmtree removes links, it does not follow them
        target.mkdir(parents=True)
        return target

    def write(self, report: Report) -> list[Path]:
        """Write report.json, report.md and the plots; the paths written."""
        self.path.mkdir(parents=True, exist_ok=True)
        written = [self._write("report.json", report.dumps().encode()), self._write("report.md", markdown(report).encode())]
        for name, figure in plots(report).items():
            written.append(self._write_with(name, lambda f, figure=figure: save_figure(figure, f)))
        for name in REPORT_FILES:  # a plot of the report this one replaced (--overwrite) would mislead
            stale = self.path / name
            if stale not in written and _lstat(stale) is not None:
                stale.unlink()
        return written

    def _write(self, name: str, data: bytes) -> Path:
        return self._write_with(name, lambda f: f.write(data))

    def _write_with(self, name: str, fill) -> Path:
        final = self.path / name
        st = _lstat(final)
        if st is not None and stat.S_ISLNK(st.st_mode):
            raise ConfigError(f"{final} is a symbolic link: a report never writes through one")
        tmp = self.path / f".{name}.{os.getpid()}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o644)
        try:
            with os.fdopen(fd, "wb") as f:
                fill(f)
            if self.overwrite:
                os.replace(tmp, final)  # replaces a file (or a link itself), never writes through a link
            else:
                try:
                    os.link(tmp, final)  # fails if the name appeared since check(): nothing is replaced
                except FileExistsError:
                    raise ConfigError(f"{final} appeared while the benchmark ran: add --overwrite to replace "
                                      "it") from None
                os.unlink(tmp)
        finally:
            if _lstat(tmp) is not None:
                os.unlink(tmp)
        return final
