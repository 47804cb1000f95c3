"""The torch references of densepure.kernels.rows give the bits of the executor's inline code.

The oracle below transcribes the executor's arithmetic as of this branch (densepure/engine/executor.py:
start_points, _spawn and the tail of run_unet), noise from NoiseKeys as the executor builds them, so
the executor can swap its inline code for the references without changing a count.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from densepure.diffusion import (
    GridTables,
    NoiseSchedule,
    StartKind,
    build_reverse_grid,
    dds_forward_sample,
    start_scale,
    step_mean_std,
    t_star,
)
from densepure.kernels import AdvanceRows, KeepRows, StartRule, resolve_kernels
from densepure.noise import NoiseKeys, NoiseStream, gaussian, row_words

TORCH = resolve_kernels("torch", "cpu")
SHAPE = (3, 6, 5)


def _identities(gen, n):
    """Per-row identity fields; ``keys(idx, stream, chain, step)`` builds the NoiseKeys of rows ``idx``."""
    fields = {name: torch.randint(0, high, (n,), generator=gen)
              for name, high in (("image", 2**24), ("phase", 3), ("draw", 2**40))}

    def keys(idx, stream, chain, step):
        return NoiseKeys.from_arrays(11, **{k: f[idx] for k, f in fields.items()}, chain=chain, step=step,
                                     stream=int(stream))

    return keys


@pytest.mark.parametrize("form", list(StartKind))
def test_start_rows_is_the_executor_start(form, gen):
    sigma, abar, n = 0.5, float(build_reverse_grid(NoiseSchedule("cosine", 4000), 300.0, 2).alphas_cumprod[0]), 7
    images = torch.rand((4, *SHAPE), generator=gen)
    slots = torch.randint(0, 4, (n,), generator=gen)
    stream = NoiseStream.FORWARD if form is StartKind.DDS else NoiseStream.DELTA
    keys = _identities(gen, n)(torch.arange(n), stream, 0, 0)
    x = images[slots]  # executor.start_points, verbatim
    if form is StartKind.DDS:
        want = dds_forward_sample(x, gaussian(keys, SHAPE, torch.device("cpu")), abar)
    else:
        delta = sigma * gaussian(keys, SHAPE, torch.device("cpu"))
        want = 2.0 * (x + delta) - 1.0 if form is StartKind.GAUSSIAN else \
            math.sqrt(start_scale(sigma)) * (2.0 * (x + delta) - 1.0)
    rule = StartRule(form, alpha_bar=abar) if form is StartKind.DDS else StartRule(form, sigma=sigma)
    assert torch.equal(TORCH.start_rows(images, slots, row_words(keys, "cpu"), rule), want)


def test_spawn_and_step_are_the_executor_step(gen):
    n, d = 9, 5
    grid = build_reverse_grid(NoiseSchedule("cosine", 4000), t_star(0.25, NoiseSchedule("cosine", 4000)), 3)
    tables = GridTables(grid, torch.device("cpu"))
    step = torch.randint(0, 3, (n,), generator=gen)
    step[:3] = torch.tensor([0, 1, 2])
    start = np.zeros(n, dtype=bool)
    start[[0, 4]] = True  # START rows of a shared first step keep (mean, std)
    chain = torch.randint(0, 10, (n,), generator=gen)
    keys = _identities(gen, n)
    y = torch.randn((n, *SHAPE), generator=gen)
    out = torch.randn((n, 2 * SHAPE[0], *SHAPE[1:]), generator=gen)
    eps, v = out[:, :3], out[:, 3:].clamp(-1.2, 1.2)
    draw_slot, chain_slot = torch.randperm(d, generator=gen)[:2], torch.randperm(n + 2, generator=gen)[:n - 2]
    c = tables.gather(step)

    # the executor's run_unet after the model call, verbatim (pools as in Executor.__init__)
    pools = [torch.zeros((d, *SHAPE)), torch.zeros((d, *SHAPE)), torch.zeros((n + 2, *SHAPE))]
    mean, std, _ = step_mean_std(y, eps, v, c)
    sel = torch.from_numpy(np.nonzero(start)[0])
    pools[0][draw_slot], pools[1][draw_slot] = mean[sel], std[sel]
    rows = np.nonzero(~start)[0]
    sel = torch.from_numpy(rows)
    new = mean[sel]
    nz = np.nonzero(grid.has_noise[step.numpy()[rows]])[0]
    noisy = torch.from_numpy(rows[nz])
    z = gaussian(keys(noisy, NoiseStream.CHAIN, chain[noisy], step[noisy]), SHAPE, torch.device("cpu"))
    new[torch.from_numpy(nz)] += std[sel[torch.from_numpy(nz)]] * z
    pools[2][chain_slot] = new

    mine = [torch.zeros_like(p) for p in pools]
    words = row_words(keys(sel, NoiseStream.CHAIN, chain[sel], step[sel]), "cpu")
    TORCH.step_rows(y, eps, v, c, keep=KeepRows(torch.from_numpy(np.nonzero(start)[0]), draw_slot, mine[0], mine[1]),
                    advance=AdvanceRows(sel, chain_slot, words, mine[2]))
    for got, want in zip(mine, pools, strict=True):
        assert torch.equal(got, want)
    assert len(nz) and len(nz) < len(rows)  # both noisy and last-step chain rows were exercised

    # spawn: executor._spawn, verbatim
    spawn_keys = keys(torch.arange(n), NoiseStream.CHAIN, chain, 0)
    slots = torch.randint(0, d, (n,), generator=gen)
    want = pools[0][slots] + pools[1][slots] * gaussian(spawn_keys, SHAPE, torch.device("cpu"))
    assert torch.equal(TORCH.spawn_rows(pools[0], pools[1], slots, row_words(spawn_keys, "cpu")), want)
