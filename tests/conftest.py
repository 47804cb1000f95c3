"""Shared fixtures: the golden reference data (copied from the public implementations' outputs), the
session's exported ONNX graphs (one export per model per session: an export takes ~10-30 s of CPU) and its
one local Ray instance; the rule that marks the users of slow fixtures slow (scripts/test.sh --fast)."""

from __future__ import annotations

import contextlib
import io
import os
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from golden_data import GOLDEN, golden_unet

from densepure.models import UNetModel

# The test models are tiny: one thread is faster than two and immune to a busy neighbour
# (two threads spinning on a loaded 2-core machine made an 8x8 convolution 50x slower).
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def improved_tiny() -> tuple[UNetModel, dict]:
    return golden_unet("unet_improved_tiny")


@pytest.fixture(scope="session")
def guided_tiny() -> tuple[UNetModel, dict]:
    return golden_unet("unet_guided_tiny")


@pytest.fixture(scope="session")
def golden_dir() -> Path:
    return GOLDEN


def needs_onnx_export() -> None:
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript", reason="torch's ONNX exporter needs onnxscript: pip install 'densepure[onnx]'")


@dataclass(frozen=True)
class CliExport:
    """A directory written by ``densepure export`` and what the command printed."""

    directory: Path
    code: int
    stdout: str
    stderr: str

    def graph(self, kind: str, precision: str) -> Path:
        """``kind`` unet or classifier, ``precision`` fp32 or fp16: the graph's path."""
        return self.directory / f"{kind}-{precision}.onnx"


@pytest.fixture(scope="session")
def digits_export(tmp_path_factory) -> CliExport:
    """``densepure export`` (the default: fp32 and fp16 graphs of the shipped digits UNet and classifier), run
    once per session in this process; tests that need other graphs copy these files."""
    needs_onnx_export()
    from densepure.cli import main

    out = tmp_path_factory.getbasetemp() / "shared-exports" / "digits"
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = main(["export", "--out", str(out)])
    return CliExport(out, code, stdout.getvalue(), stderr.getvalue())


@pytest.fixture(scope="session")
def golden_improved_export(tmp_path_factory, improved_tiny):
    """The golden tiny improved-diffusion UNet (fp32) and a tiny test CNN, exported once per session: the
    export's report (``results[0]`` the UNet, ``results[1]`` the classifier)."""
    needs_onnx_export()
    from export_helpers import golden_export

    return golden_export(tmp_path_factory, *improved_tiny, "golden-improved-tiny")


# Fixtures whose set-up alone is slow (an ONNX export, a Ray instance, a server process for one module: ~5-10 s
# of CPU each): every test that uses one, directly or through another fixture, is marked slow, so that
# `-m "not slow"` (scripts/test.sh --fast) never pays for it. tests/serve's default `server` is shared by
# ~30 tests and stays in the fast tier.
SLOW_FIXTURES = frozenset({"digits_export", "golden_improved_export", "cluster", "int8_export",
                           "audit_server", "audit_float_server",  # tests/serve/conftest.py: for test_audit.py
                           "guarded"})  # tests/serve/test_http_layer.py: HTTP read/keep-alive/connection limits


@pytest.hookimpl(tryfirst=True)  # before -m deselects by marker
def pytest_collection_modifyitems(items):
    for item in items:
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


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
    """The session's local Ray instance (the ``ray`` module, connected); code that connects to ``"local"``
    in this process reuses it."""
    pytest.importorskip("ray", reason="the ray extra is not installed")
    try:
        yield _RAY.start()
    finally:
        _RAY.stop()


@pytest.hookimpl(trylast=True)  # after -k/-m deselection: the items that will run
def pytest_collection_finish(session):
    users = [item.nodeid for item in session.items if "cluster" in getattr(item, "fixturenames", ())]
    _RAY.last_user = users[-1] if users else None


def pytest_runtest_teardown(item, nextitem):
    if item.nodeid == _RAY.last_user:
        _RAY.stop()
