"""How many rows per model call fit in memory, on every device.

A batch of ``r`` rows costs the models' activations (measured: one probe batch per model) plus the
engine's pools for the draws in flight (computed: ``draws_per_row`` draw slots per row, each holding
``slot_values`` float32 values). The rows per call are what fits in ``fraction`` of the memory
available, rounded down to a multiple of 8, clipped to ``[8, cap]``.

* CUDA: the probe's peak allocation above the baseline (``torch.cuda.max_memory_allocated``) against
  the free device memory (``torch.cuda.mem_get_info``). Each model's CUDA graphs keep their own pool,
  so the models' costs add up.
* CPU: the probe's peak resident memory (the kernel's ``VmHWM``, reset through ``/proc/self/clear_refs``
  before each probe) at two batch sizes, whose difference is the cost per row; against the memory
  available (``MemAvailable``, or the cgroup's limit minus its usage when that is smaller). Where the
  kernel offers no peak counter, the cost is not measured and ``cap`` is returned unchanged.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

Probe = Callable[[int], object]
_KIB = 1024


def rows_that_fit(probes: Sequence[Probe], device: torch.device, cap: int, slot_bytes_per_row: int = 0,
                  fraction: float = 0.6) -> int:
    """Rows per model call that fit on ``device`` (module docstring); ``cap`` is the user's ``--batch-size``."""
    device = torch.device(device)
    if device.type == "cuda":
        per_row, free = _cuda_cost(probes, device), torch.cuda.mem_get_info(device)[0]
    else:
        per_row, free = _cpu_cost(probes), _cpu_available()
        if per_row is None or free is None:
            return cap
    rows = int(fraction * free // max(1, per_row + slot_bytes_per_row)) // 8 * 8
    return max(8, min(cap, rows))


def _cuda_cost(probes: Sequence[Probe], device: torch.device, rows: int = 32) -> int:
    per_row = 0
    for probe in probes:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        probe(rows)
        torch.cuda.synchronize(device)
        per_row += max(1, (torch.cuda.max_memory_allocated(device) - base) // rows)
    return per_row


def _status_bytes(field: str) -> int | None:
    try:
        found = re.search(rf"^{field}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M)
    except OSError:
        return None
    return int(found.group(1)) * _KIB if found else None


def _peak_of(probe: Probe, rows: int) -> int | None:
    """The peak resident bytes above the current resident size while ``probe(rows)`` runs."""
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current resident size
    except OSError:
        return None
    base = _status_bytes("VmRSS")
    probe(rows)
    peak = _status_bytes("VmHWM")
    return None if base is None or peak is None else max(0, peak - base)


def _cpu_cost(probes: Sequence[Probe], small: int = 4, large: int = 20) -> int | None:
    """Bytes per row on the CPU, from the peak-memory difference between two probe batch sizes."""
    per_row = 0
    for probe in probes:
        probe(small)  # warm-up: one-off allocations (threads, workspaces) are not per-row costs
        low, high = _peak_of(probe, small), _peak_of(probe, large)
        if low is None or high is None:
            return None
        per_row += max(1, (high - low) // (large - small))
    return per_row


def _cpu_available() -> int | None:
    available = None
    try:
        found = re.search(r"^MemAvailable:\s+(\d+) kB", Path("/proc/meminfo").read_text(), re.M)
        available = int(found.group(1)) * _KIB if found else None
    except OSError:
        pass
    cgroup = _cgroup_room()
    if cgroup is not None:
        available = cgroup if available is None else min(available, cgroup)
    return available


def _cgroup_room() -> int | None:
    """The cgroup v2 limit minus current usage, when a limit is set."""
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        used = int(Path("/sys/fs/cgroup/memory.current").read_text().strip())
    except (OSError, ValueError):
        return None
    return None if limit == "max" else max(0, int(limit) - used)
