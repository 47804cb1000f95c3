"""The fused start / spawn / step kernels against their torch references (densepure.kernels.rows).

On the CPU the Triton kernels run in Triton's interpreter and must give the reference's bits, except
the float32 ``exp`` of the step's ``std``: there the reference uses torch's (Sleef) exp and the
interpreter a correctly rounded one, so the step is checked bit for bit against the reference with
that same exp, and within one ulp against the unmodified reference. On a GPU every check is bit for
bit against the reference run on the GPU. Every test draws fresh inputs and poisons outputs with NaN.
"""

from __future__ import annotations

import pytest
import torch

from densepure.diffusion import GridTables, NoiseSchedule, StartKind, build_reverse_grid, step_mean_std, t_star
from densepure.errors import InputError
from densepure.kernels import AdvanceRows, KeepRows, StartRule, resolve_kernels
from densepure.noise import NoiseKeys, gaussian_words, row_words

# (row shape, rows): 105 values (not a multiple of 4), 16 values with one row, 1122 values in two
# chunks (the second partial) with an odd number of rows
CASES = [((3, 5, 7), 5), ((1, 4, 4), 1), ((2, 33, 17), 3)]
RULES = {StartKind.DENSEPURE: StartRule(StartKind.DENSEPURE, sigma=0.25),
         StartKind.GAUSSIAN: StartRule(StartKind.GAUSSIAN, sigma=0.5),
         StartKind.DDS: StartRule(StartKind.DDS, alpha_bar=0.37)}  # fmt: skip
TORCH = resolve_kernels("torch", "cpu")


def _ints(gen, high, n):
    return torch.randint(0, high, (n,), generator=gen, dtype=torch.int64)


def _words(n: int, gen: torch.Generator, device) -> torch.Tensor:
    """Row words of ``n`` random keys under two random seeds (rows of different seeds share the batch);
    row 0 takes every field at its maximum."""
    parts = []
    for half in (n - n // 2, n // 2):
        seed = int(_ints(gen, 2**62, 1)) * 4 + 3
        keys = NoiseKeys.from_arrays(seed, image=_ints(gen, 2**24, half), phase=_ints(gen, 3, half),
                                     draw=_ints(gen, 2**40, half), chain=_ints(gen, 2**16, half),
                                     step=_ints(gen, 2**16, half), stream=_ints(gen, 3, half))
        parts.append(row_words(keys, device))
    words = torch.cat(parts)
    extreme = NoiseKeys.from_arrays(2**64 - 1, image=2**24 - 1, phase=2, draw=2**40 - 1, chain=2**16 - 1,
                                    step=2**16 - 1, stream=2)
    words[0] = row_words(extreme, device)[0]
    return words


def assert_same_bits(got: torch.Tensor, want: torch.Tensor) -> None:
    """Identical float32 bits (any NaN equals any NaN)."""
    got, want = got.cpu(), want.cpu()
    assert got.shape == want.shape and got.dtype == want.dtype == torch.float32
    nan = torch.isnan(want)
    assert torch.equal(torch.isnan(got), nan), "NaNs differ"
    g, w = got.masked_fill(nan, 0).view(torch.int32), want.masked_fill(nan, 0).view(torch.int32)
    bad = g != w
    assert not bad.any(), (f"{int(bad.sum())} of {bad.numel()} values differ, max |diff| "
                           f"{float((got - want).abs().masked_fill(nan, 0).max())}")


def _poisoned(n: int, shape, device) -> torch.Tensor:
    return torch.full((n, *shape), float("nan"), device=device)


def _scatter_target(gen, n_out: int, rows: int, device):
    return torch.randperm(n_out, generator=gen)[:rows].to(device)


@pytest.mark.parametrize("form", list(StartKind))
@pytest.mark.parametrize("shape,rows", CASES)
def test_start_rows_bit_identical(form, shape, rows, device, triton_kernels, gen):
    images = torch.rand((4, *shape), generator=gen).to(device)
    slot = _ints(gen, 4, rows).to(device)
    words = _words(rows, gen, device)
    out_rows = _scatter_target(gen, rows + 2, rows, device)
    results = []
    for kernels in (TORCH, triton_kernels):
        out = _poisoned(rows + 2, shape, device)
        assert kernels.start_rows(images, slot, words, RULES[form], out, out_rows) is out
        results.append((out, kernels.start_rows(images, slot, words, RULES[form])))
    assert_same_bits(results[1][0], results[0][0])  # rows not in out_rows stay NaN in both
    assert_same_bits(results[1][1], results[0][1])
    assert int(torch.isnan(results[1][0]).any(dim=tuple(range(1, len(shape) + 1))).sum()) == 2


@pytest.mark.parametrize("shape,rows", CASES)
def test_spawn_rows_bit_identical(shape, rows, device, triton_kernels, gen):
    mean = torch.randn((3, *shape), generator=gen).to(device)
    std = torch.rand((3, *shape), generator=gen).to(device)
    slot = _ints(gen, 3, rows).to(device)
    words = _words(rows, gen, device)
    out_rows = _scatter_target(gen, rows + 1, rows, device)
    outs = []
    for kernels in (TORCH, triton_kernels):
        out = _poisoned(rows + 1, shape, device)
        kernels.spawn_rows(mean, std, slot, words, out, out_rows)
        outs.append(out)
    assert_same_bits(outs[1], outs[0])


@pytest.mark.parametrize("shape,rows", CASES)
def test_fused_noise_is_the_reference_field(shape, rows, device, triton_kernels, gen):
    """spawn with mean 0 and std 1 returns the bare normal field of each row's words."""
    words = _words(rows, gen, device)
    zeros, ones = torch.zeros((1, *shape), device=device), torch.ones((1, *shape), device=device)
    slot = torch.zeros(rows, dtype=torch.int64, device=device)
    assert_same_bits(triton_kernels.spawn_rows(zeros, ones, slot, words), gaussian_words(words, shape, device))


def _step_batch(shape, batch: int, gen, device):
    """A batch at random steps of a 3-step grid (both noisy rows and last-step rows), eps and v as
    strided halves of one model output (as eps_and_var returns them), one NaN in eps."""
    schedule = NoiseSchedule("cosine", 4000)
    grid = build_reverse_grid(schedule, t_star(0.5, schedule), 3)
    step = _ints(gen, 3, batch)
    step[:2] = torch.tensor([0, 2])[: batch]
    coeffs = GridTables(grid, device).gather(step.to(device))
    c = shape[0]
    out = torch.cat([torch.randn((batch, *shape), generator=gen),
                     torch.rand((batch, *shape), generator=gen) * 2.4 - 1.2], dim=1).to(device)
    out[0, 0].view(-1)[0] = float("nan")
    y = (torch.randn((batch, *shape), generator=gen) * 1.5).to(device)
    return y, out[:, :c], out[:, c:], coeffs


def _run_step(kernels, y, eps, v, coeffs, keep_rows, adv_rows, slots, words, device):
    shape = tuple(y.shape[1:])
    pools = [_poisoned(y.shape[0] + 2, shape, device) for _ in range(3)]
    keep = KeepRows(keep_rows, slots[: keep_rows.shape[0]], pools[0], pools[1])
    advance = AdvanceRows(adv_rows, slots[keep_rows.shape[0]:], words, pools[2])
    kernels.step_rows(y, eps, v, coeffs, keep=keep, advance=advance)
    return pools


def _step_case(shape, rows, gen, device):
    batch = rows + 2
    y, eps, v, coeffs = _step_batch(shape, batch, gen, device)
    order = torch.randperm(batch, generator=gen).to(device)
    keep_rows, adv_rows = order[:2], order[2:]
    slots = torch.randperm(batch + 2, generator=gen)[:batch].to(device)
    return (y, eps, v, coeffs, keep_rows, adv_rows, slots, _words(adv_rows.shape[0], gen, device))


def _rounded_exp(exp):
    return lambda t: exp(t.double()).float() if t.dtype == torch.float32 else exp(t)


@pytest.mark.parametrize("shape,rows", CASES)
def test_step_rows_bit_identical_with_the_same_exp(shape, rows, device, triton_kernels, gen, monkeypatch):
    case = _step_case(shape, rows, gen, device)
    got = _run_step(triton_kernels, *case, device)
    if device.type == "cpu":  # the interpreter's exp is correctly rounded: give the reference the same
        monkeypatch.setattr(torch, "exp", _rounded_exp(torch.exp))
    want = _run_step(TORCH, *case, device)
    for g, w in zip(got, want, strict=True):
        assert_same_bits(g, w)
    untouched = [int(torch.isnan(p).all(dim=tuple(range(1, len(shape) + 1))).sum()) for p in got]
    assert untouched == [rows + 2, rows + 2, 4]  # pools of rows + 4: 2 kept rows, rows advancing


def _ulps(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a.view(torch.int32).long() - b.view(torch.int32).long()).abs()


def test_step_rows_within_one_ulp_of_the_cpu_reference(triton_kernels, gen):
    """Interpreter against the unmodified CPU reference: only exp's last bit may differ."""
    device = torch.device("cpu")
    if triton_kernels.name != "triton" or torch.cuda.is_available():
        pytest.skip("checks the interpreter against the CPU reference")
    case = _step_case((3, 16, 16), 9, gen, device)
    (g_mean, g_std, g_next), (w_mean, w_std, w_next) = (_run_step(k, *case, device) for k in (triton_kernels, TORCH))
    assert_same_bits(g_mean, w_mean)
    finite = torch.isfinite(w_std)
    assert torch.equal(finite, torch.isfinite(g_std))
    assert int(_ulps(g_std[finite], w_std[finite]).max()) <= 1
    assert float((g_std[finite] != w_std[finite]).double().mean()) < 0.05
    # y_next = mean + std z with std one ulp apart: |diff| <= |z| ulp(std) + ulp(y_next), |z| <= 6.77
    y, eps, v, coeffs = case[:4]
    std_max = float(step_mean_std(y, eps, v, coeffs)[1].abs().max())
    ok = torch.isfinite(w_next)
    assert bool(((g_next[ok] - w_next[ok]).abs() <= 2.0**-22 * (w_next[ok].abs() + 7.0 * std_max)).all())


@pytest.mark.parametrize("impl", ["torch", "triton"])
def test_empty_batches_write_nothing(impl, device, triton_kernels):
    kernels = TORCH if impl == "torch" else triton_kernels
    none = torch.zeros(0, dtype=torch.int64, device=device)
    images = torch.rand(2, 1, 3, 3, device=device)
    words = torch.zeros(0, 6, dtype=torch.int64, device=device)
    assert kernels.start_rows(images, none, words, RULES[StartKind.GAUSSIAN]).shape == (0, 1, 3, 3)
    assert kernels.spawn_rows(images, images, none, words).shape == (0, 1, 3, 3)


@pytest.mark.parametrize("impl", ["torch", "triton"])
def test_both_implementations_reject_the_same_calls(impl, device, triton_kernels):
    kernels = TORCH if impl == "torch" else triton_kernels
    images = torch.rand(2, 1, 3, 3, device=device)
    slot = torch.zeros(2, dtype=torch.int64, device=device)
    words = torch.zeros(2, 6, dtype=torch.int64, device=device)
    rule = RULES[StartKind.DENSEPURE]
    with pytest.raises(InputError, match="row words"):
        kernels.start_rows(images, slot, words[:1], rule)
    with pytest.raises(InputError, match="images"):
        kernels.start_rows(images.double(), slot, words, rule)
    with pytest.raises(InputError, match="out and out_rows"):
        kernels.start_rows(images, slot, words, rule, out=torch.empty_like(images))
    with pytest.raises(InputError, match="StartRule"):
        kernels.start_rows(images, slot, words, "densepure")
    with pytest.raises(InputError, match="std"):
        kernels.spawn_rows(images, images[:, :, :2], slot, words)
    with pytest.raises(InputError, match="written in place"):
        kernels.spawn_rows(images, images, slot, words, torch.empty(3, 3, 3, 1, device=device).transpose(1, 3),
                           slot)
    y, eps, v, coeffs = _step_batch((1, 3, 3), 2, torch.Generator().manual_seed(0), device)
    with pytest.raises(InputError, match="coeffs.coef1"):
        kernels.step_rows(y, eps, v, type(coeffs)(**{**vars(coeffs), "coef1": coeffs.coef1[:1]}))
    with pytest.raises(InputError, match="keep must be KeepRows"):
        kernels.step_rows(y, eps, v, coeffs, keep=(slot, slot))


def test_start_rule_validation():
    from densepure.errors import ConfigError

    with pytest.raises(ConfigError, match="sigma must be a finite number > 0"):
        StartRule(StartKind.DENSEPURE, sigma=-0.25)
    with pytest.raises(ConfigError, match="alpha_bar"):
        StartRule(StartKind.DDS, alpha_bar=1.0)
    with pytest.raises(ConfigError, match="takes sigma"):
        StartRule(StartKind.GAUSSIAN, sigma=0.5, alpha_bar=0.3)
    assert StartRule("dds", alpha_bar=0.25).constants() == (0.5, 0.75**0.5)


@pytest.mark.gpu
def test_cuda_kernels_against_the_cpu_reference(triton_kernels, gen):
    """Across devices: libdevice's float64 log/sin/cos may round the normals 1 float32 ulp apart from
    libm's, CUDA's expf is within 2 ulp where Sleef is within 1; products and sums are IEEE on both."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    words = _words(64, gen, cpu)
    field = gaussian_words(words, (3, 32, 32), cpu)
    ones = torch.ones((1, 3, 32, 32), device=cuda)
    slot = torch.zeros(64, dtype=torch.int64, device=cuda)
    fused = triton_kernels.spawn_rows(ones * 0, ones, slot, words.to(cuda)).cpu()
    assert int(_ulps(fused, field).max()) <= 1
    case = _step_case((3, 32, 32), 31, gen, cpu)
    g_mean, g_std, _ = _run_step(triton_kernels, *(t.to(cuda) if isinstance(t, torch.Tensor) else
                                                    type(t)(**{k: v.to(cuda) for k, v in vars(t).items()})
                                                    for t in case), cuda)
    w_mean, w_std, _ = _run_step(TORCH, *case, cpu)
    assert_same_bits(g_mean, w_mean)
    finite = torch.isfinite(w_std)
    assert int(_ulps(g_std.cpu()[finite], w_std[finite]).max()) <= 2
