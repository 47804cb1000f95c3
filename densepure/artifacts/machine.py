"""The machine a TensorRT engine is tied to, and the one place ``tensorrt`` is imported from.

``import tensorrt`` happens only inside :func:`import_tensorrt`, so importing this module is cheap and
works without TensorRT; :func:`machine_info` says what an engine built here would be tied to.
"""

from __future__ import annotations

import platform

import torch

from densepure.artifacts.manifest import MachineInfo
from densepure.errors import BackendError, install_hint


def import_tensorrt():
    try:
        import tensorrt
    except ImportError as exc:
        raise BackendError(f"TensorRT is not installed: {install_hint('tensorrt')} (needs an NVIDIA GPU; "
                           "on Jetson it comes with JetPack)") from exc
    return tensorrt


def trt_version_tuple(version: str) -> tuple[int, int]:
    parts = (version.split(".") + ["0"])[:2]
    try:
        return int(parts[0]), int(parts[1])
    except ValueError:
        raise BackendError(f"cannot read the TensorRT version {version!r}") from None


def machine_info(device: torch.device | str | int = 0) -> MachineInfo:
    """This machine as engines see it: TensorRT version, GPU name, compute capability, platform."""
    trt = import_tensorrt()
    if not torch.cuda.is_available():
        raise BackendError("TensorRT needs a CUDA GPU and none is visible to torch (see `densepure doctor`)")
    index = device if isinstance(device, int) else (torch.device(device).index or 0)
    props = torch.cuda.get_device_properties(index)
    return MachineInfo(str(trt.__version__), props.name, (props.major, props.minor),
                       f"{platform.system()}-{platform.machine()}")
