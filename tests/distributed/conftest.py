"""Fixtures of the cluster tests: the single-process results every cluster run is compared with, and the
session's one local Ray instance."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import pytest
from cluster_helpers import job_options

from densepure.certify.job import prepare, run


@pytest.fixture(scope="session")
def single_process(tmp_path_factory):
    """The single-process result files of a configuration (computed once per session): overrides -> path."""
    done: dict[tuple, Path] = {}

    def result(**overrides) -> Path:
        key = tuple(sorted(overrides.items()))
        if key not in done:
            path = tmp_path_factory.mktemp("single") / "r.tsv"
            run(prepare(job_options(path, **overrides)))
            done[key] = path
        return done[key]

    return result


class _SessionRay:
    """One local Ray instance for the session (2 CPUs, 2 logical GPUs, loopback only), started by the first
    test that asks for ``cluster`` and stopped right after the last one: an idle instance costs ~2.5 CPU-s
    a minute, which the rest of the session would pay."""

    def __init__(self) -> None:
        self.stack: contextlib.ExitStack | None = None
        self.last_user: str | None = None

    def start(self):
        """Ray >= 2.59 turns token authentication on for local instances: a fresh token in the environment
        keeps it on without writing ~/.ray/auth_token. Runs with ``ray="local"`` use the instance (a
        connected process is reused)."""
        from densepure.distributed import connect

        self.stack = contextlib.ExitStack()
        saved = {k: os.environ.get(k) for k in ("RAY_AUTH_TOKEN", "RAY_AUTH_MODE")}
        self.stack.callback(_restore_environment, saved)
        os.environ["RAY_AUTH_TOKEN"] = os.urandom(32).hex()
        return self.stack.enter_context(connect("local", num_cpus=2, num_gpus=2, object_store_mb=100))

    def stop(self) -> None:
        if self.stack is not None:
            stack, self.stack = self.stack, None
            stack.close()


def _restore_environment(saved: dict[str, str | None]) -> None:
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


_RAY = _SessionRay()


@pytest.fixture(scope="session")
def cluster():
    """The session's local Ray instance (the ``ray`` module, connected)."""
    pytest.importorskip("ray", reason="the ray extra is not installed")
    try:
        yield _RAY.start()
    finally:
        _RAY.stop()


@pytest.hookimpl(trylast=True)  # after -k/-m deselection: the items that will run
def pytest_collection_modifyitems(items):
    users = [item.nodeid for item in items if "cluster" in getattr(item, "fixturenames", ())]
    _RAY.last_user = users[-1] if users else None


def pytest_runtest_teardown(item, nextitem):
    if item.nodeid == _RAY.last_user:
        _RAY.stop()
