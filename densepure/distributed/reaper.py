"""A watchdog that takes a local Ray instance down with its driver, however the driver ends.

``ray.init(address="local")`` ties the GCS server and the raylet to the driver (Ray sets a parent-death
signal on them), but not what the raylet starts: killed with SIGKILL, a driver left
``ray::DashboardAgent`` and ``ray::RuntimeEnvAgent`` running for good (Ray 2.60: their raylet check
blocks on the dead GCS), and SIGTERM does not stop them either.

:func:`start_reaper` starts a small process (this file as a script) in a session of its own, so that a
terminal's Ctrl-C or hang-up reaches the driver but not it. Every :data:`POLL_S` it records the driver's
descendants that are Ray's (a program or script inside the installed ``ray`` package, or a process title
``ray::...``) and every descendant of those (an orphan is re-parented to init, so the tree must be known
before the driver dies). When the driver is gone (its end of the reaper's stdin closes, or the reaper's
parent changes), or closes the reaper itself after ``ray.shutdown()``, the reaper SIGKILLs every recorded
process still alive: the session is over and no process of it has anything left to save. A process is known
by its pid and start time, so a recycled pid is never hit; processes that existed before the reaper started
are never touched. Linux only (``/proc``); elsewhere :func:`start_reaper` returns None.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

POLL_S = 0.5
PROC = Path("/proc")


def _table() -> dict[int, tuple[int, int, tuple[str, ...]]]:
    """pid -> (parent pid, start time in clock ticks, argv) of every process."""
    table = {}
    for entry in os.scandir(PROC):
        if not entry.name.isdigit():
            continue
        try:
            stat = (PROC / entry.name / "stat").read_text()
            argv = (PROC / entry.name / "cmdline").read_bytes().split(b"\0")
        except OSError:  # it ended meanwhile, or is not ours to read
            continue
        fields = stat.rsplit(")", 1)[1].split()
        table[int(entry.name)] = (int(fields[1]), int(fields[19]), tuple(a.decode(errors="replace") for a in argv))
    return table


def is_ray(argv: tuple[str, ...], ray_dir: str) -> bool:
    """A Ray process: a program or script inside ``ray_dir`` (the ``ray`` package), or a ``ray::`` title."""
    return any(a.startswith("ray::") or a.startswith(ray_dir + os.sep) for a in argv)


def descendants(table: dict, roots: set[int]) -> set[int]:
    children: dict[int, list[int]] = {}
    for pid, (ppid, _, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    found, stack = set(), list(roots)
    while stack:
        for child in children.get(stack.pop(), []):
            if child not in found:
                found.add(child)
                stack.append(child)
    return found


def watch(driver: int, ray_dir: str, before: set[tuple[int, int]], stdin) -> set[tuple[int, int]]:
    """Record the driver's Ray descendants until the driver is gone or closes ``stdin``; kill them; return
    the (pid, start time) killed. ``before``: processes that existed at the start (never recorded)."""
    recorded: set[tuple[int, int]] = set()
    while True:
        table = _table()
        ray = {pid for pid in descendants(table, {driver}) if is_ray(table[pid][2], ray_dir)}
        ray |= descendants(table, ray | {pid for pid, start in recorded if table.get(pid, (0, -1))[1] == start})
        recorded |= {(pid, table[pid][1]) for pid in ray} - before
        if os.getppid() != driver or _closed(stdin):
            break
    return _kill(recorded)


def _closed(stdin) -> bool:
    readable, _, _ = select.select([stdin], [], [], POLL_S)
    return bool(readable) and not os.read(stdin.fileno(), 4096)


def _kill(recorded: set[tuple[int, int]]) -> set[tuple[int, int]]:
    killed = set()
    for _ in range(3):  # a process forked while we kill is recorded on the next pass
        table = _table()
        alive = {(pid, start) for pid, start in recorded if table.get(pid, (0, -1))[1] == start}
        alive |= {(pid, table[pid][1]) for pid in descendants(table, {pid for pid, _ in alive})}
        if not alive:
            break
        for pid, _ in alive:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        killed |= alive
        time.sleep(0.1)
    return killed


class Reaper:
    """The driver's handle on its reaper process; :meth:`close` kills what is left and waits."""

    def __init__(self, proc: subprocess.Popen):
        self.proc = proc

    def close(self, timeout: float = 10.0) -> None:
        if self.proc.stdin is not None and not self.proc.stdin.closed:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def start_reaper(ray_dir: str | os.PathLike) -> Reaper | None:
    """The reaper of this process's Ray descendants (module docstring); ``ray_dir``: the ``ray`` package's
    directory. None without ``/proc``."""
    if not (PROC / str(os.getpid()) / "stat").exists():
        return None
    # this file as a script: the standard library only, so it starts in a few tens of milliseconds
    proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), str(os.getpid()), os.path.abspath(ray_dir)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    proc.stdout.readline()  # "ready": the processes that exist now are the reaper's `before`
    proc.stdout.close()
    return Reaper(proc)


def main(argv: list[str]) -> int:
    """``python reaper.py DRIVER_PID RAY_DIR``; its stdin is the driver's pipe."""
    driver, ray_dir = int(argv[0]), argv[1]
    before = {(pid, start) for pid, (_, start, _) in _table().items()}
    print("ready", flush=True)
    watch(driver, ray_dir, before, sys.stdin.buffer)
    return 0


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sys.exit(main(sys.argv[1:]))
