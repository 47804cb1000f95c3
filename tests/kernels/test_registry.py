"""--kernels auto|torch|triton: what each resolves to, and why not when it cannot."""

from __future__ import annotations

import sys
import types

import pytest
import torch

import densepure.kernels.registry as registry
from densepure.errors import BackendError, ConfigError
from densepure.kernels import KernelChoice, groupnorm, resolve_kernels, rows, triton_status


def test_torch_choice_is_the_references():
    k = resolve_kernels("torch", "cpu")
    assert k.name == "torch" and k.version is None
    assert (k.start_rows, k.spawn_rows, k.step_rows) == (rows.start_rows, rows.spawn_rows, rows.step_rows)
    assert k.group_norm_silu is groupnorm.group_norm_silu
    assert k.describe() == "torch (requested)"


def test_auto_on_cpu_takes_torch():
    k = resolve_kernels(KernelChoice.AUTO, torch.device("cpu"))
    assert k.name == "torch" and "cpu" in k.reason


def test_unknown_choice_is_a_config_error():
    with pytest.raises(ConfigError, match="auto, torch, triton"):
        resolve_kernels("cuda", "cpu")


def test_triton_on_cpu_runs_under_the_interpreter(triton_kernels):
    status = triton_status("cpu")
    if torch.cuda.is_available():
        pytest.skip("a GPU machine runs the compiled kernels instead")
    assert status.available and status.interpreter and "interpreter" in status.reason
    k = resolve_kernels("triton", "cpu")
    assert k.name == "triton" and k.version == status.version and "interpreter" in k.describe()


def test_auto_never_picks_the_interpreter_on_cuda(monkeypatch):
    monkeypatch.setattr(registry, "triton_status",
                        lambda device=None: registry.TritonStatus(True, "interpreter", "3.7.1", True))
    assert resolve_kernels("auto", "cuda").name == "torch"


def test_not_importable_says_why(monkeypatch):
    def fail(name):
        raise ModuleNotFoundError("No module named 'triton'")

    monkeypatch.setattr(registry.importlib, "import_module", fail)
    status = triton_status("cuda")
    assert not status.available and "not importable" in status.reason and "pip install -e '.[kernels]'" in status.reason
    with pytest.raises(BackendError, match="not importable"):
        resolve_kernels("triton", "cuda")
    assert resolve_kernels("auto", "cuda").name == "torch"


def test_old_triton_is_refused(monkeypatch):
    fake = types.SimpleNamespace(__version__="3.2.0")
    monkeypatch.setattr(registry.importlib, "import_module", lambda name: fake)
    status = triton_status("cuda")
    assert not status.available and "3.2.0 is too old" in status.reason and ">= 3.5" in status.reason
    interpreting = types.SimpleNamespace(runtime=types.SimpleNamespace(interpret=True))
    fake = types.SimpleNamespace(__version__="3.6.0", knobs=interpreting)
    monkeypatch.setattr(registry.importlib, "import_module", lambda name: fake)
    status = triton_status("cpu")  # compiled kernels run on 3.6, the interpreter needs 3.7
    assert not status.available and "3.6.0's interpreter" in status.reason and ">= 3.7" in status.reason


def test_cpu_without_interpreter_says_how(monkeypatch):
    pytest.importorskip("triton")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    status = triton_status("cpu")
    assert not status.available and "TRITON_INTERPRET=1" in status.reason
    with pytest.raises(BackendError, match="TRITON_INTERPRET=1"):
        resolve_kernels("triton", "cpu")


def test_no_cuda_device_says_so(monkeypatch):
    pytest.importorskip("triton")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    status = triton_status("cuda")
    assert not status.available and "no CUDA device" in status.reason


def test_importing_the_package_does_not_import_triton():
    code = ("import sys, densepure.kernels, densepure.models.unet; "
            "assert 'triton' not in sys.modules, sorted(m for m in sys.modules if 'triton' in m)")
    import os
    import subprocess
    from pathlib import Path

    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
