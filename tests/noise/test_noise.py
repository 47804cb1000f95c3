"""Tests of the counter-based noise generator (densepure.noise)."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch
from scipy import stats

import densepure.noise.fields as noise_fields
from densepure.errors import InputError
from densepure.noise import (
    MAX_NUMEL,
    NoiseKey,
    NoiseKeys,
    NoisePhase,
    NoiseStream,
    counter_words,
    derive_key,
    gaussian,
    gaussian_words,
    key_table,
    philox4x32,
    row_words,
    uniform,
)

CPU = torch.device("cpu")
MASK32 = 0xFFFFFFFF

# Random123 kat_vectors, "philox4x32 10": counter (4 words), key (2 words), expected (4 words).
KAT = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((MASK32,) * 4, (MASK32, MASK32), (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    (
        (0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344),
        (0xA4093822, 0x299F31D0),
        (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1),
    ),
]


def _philox_python(ctr, key, rounds=10):
    """Independent scalar Philox4x32 with Python integers (Salmon et al. 2011, Fig. 2)."""
    c0, c1, c2, c3 = ctr
    k0, k1 = key
    for i in range(rounds):
        if i:
            k0, k1 = (k0 + 0x9E3779B9) & MASK32, (k1 + 0xBB67AE85) & MASK32
        p0, p1 = 0xD2511F53 * c0, 0xCD9E8D57 * c2
        c0, c1, c2, c3 = (p1 >> 32) ^ c1 ^ k0, p1 & MASK32, (p0 >> 32) ^ c3 ^ k1, p0 & MASK32
    return c0, c1, c2, c3


def _keys(n, seed=7, **fixed):
    """n distinct keys varying in every field (fields in `fixed` held constant)."""
    idx = np.arange(n)
    cols = dict(
        image=(idx * 7919) % (1 << 24),
        phase=idx % 3,
        draw=(idx * 104729 + (1 << 39)) % (1 << 40),
        chain=idx % 11,
        step=(idx * 13) % (1 << 16),
        stream=idx % 3,
    )
    cols.update(fixed)
    return NoiseKeys.from_arrays(seed, **cols)


def _key(**overrides):
    base = dict(seed=2024, image=5, phase=NoisePhase.ESTIMATION, draw=17, chain=3, step=9,
                stream=NoiseStream.CHAIN)  # fmt: skip
    base.update(overrides)
    return NoiseKey(**base)


# --------------------------------------------------------------------------------- Philox core


@pytest.mark.parametrize(("ctr", "key", "expected"), KAT)
def test_philox_known_answer_vectors(ctr, key, expected):
    out = philox4x32(torch.tensor([ctr]), torch.tensor([key]))
    assert out.dtype == torch.int64
    assert tuple(out[0].tolist()) == expected


def test_philox_matches_scalar_reference_on_random_and_extreme_words():
    gen = random.Random(0)
    extremes = [0, 1, 0x7FFFFFFF, 0x80000000, MASK32 - 1, MASK32]
    ctrs = [tuple(gen.choice(extremes) for _ in range(4)) for _ in range(64)]
    ctrs += [tuple(gen.getrandbits(32) for _ in range(4)) for _ in range(192)]
    keys = [tuple(gen.choice(extremes + [gen.getrandbits(32)]) for _ in range(2)) for _ in ctrs]
    out = philox4x32(torch.tensor(ctrs), torch.tensor(keys)).tolist()
    assert [tuple(o) for o in out] == [_philox_python(c, k) for c, k in zip(ctrs, keys, strict=True)]
    seven = philox4x32(torch.tensor(ctrs[:8]), torch.tensor(keys[:8]), rounds=7).tolist()
    assert [tuple(o) for o in seven] == [_philox_python(c, k, 7) for c, k in zip(ctrs, keys, strict=True)][:8]


def test_derive_key_separates_seeds_and_streams():
    keys = {derive_key(seed, s) for seed in range(500) for s in NoiseStream}
    assert len(keys) == 500 * len(NoiseStream)
    assert all(0 <= w <= MASK32 for k in keys for w in k)
    assert derive_key(2**64 - 1, NoiseStream.DELTA) != derive_key(0, NoiseStream.DELTA)
    with pytest.raises(InputError, match="seed"):
        derive_key(2**64, NoiseStream.DELTA)
    with pytest.raises(InputError, match="stream"):
        derive_key(0, 7)


def test_documented_counter_layout_is_what_is_used():
    """uniform(float64) exposes the exact words: (x + 0.5) / 2**32 is exact in float64."""
    cases = [
        _key(),
        _key(seed=2**64 - 1, image=2**24 - 1, draw=2**40 - 1, chain=2**16 - 1, step=2**16 - 1,
             phase=NoisePhase.PREDICT, stream=NoiseStream.FORWARD),  # fmt: skip
        _key(seed=0, image=0, draw=2**32, chain=0, step=0, phase=0, stream=NoiseStream.DELTA),
    ]
    for k in cases:
        nk = NoiseKeys.from_keys([k])
        numel = 4 * 5 + 3
        u = uniform(nk, (numel,), CPU, dtype=torch.float64)[0]
        words = (u * 2.0**32 - 0.5).round().to(torch.int64).tolist()
        expected = []
        for block in range(6):
            ctr = (
                block | (int(k.phase) << 24),
                k.step | (k.chain << 16),
                k.draw & MASK32,
                (k.draw >> 32) | (k.image << 8),
            )
            expected += _philox_python(ctr, derive_key(k.seed, k.stream))
        assert words == expected[:numel]


# ------------------------------------------------------------------------- purity of identity


def test_deterministic():
    keys = _keys(16)
    assert torch.equal(gaussian(keys, (3, 8, 8), CPU), gaussian(keys, (3, 8, 8), CPU))


def test_batching_invariance_big_batch_one_by_one_shuffled(monkeypatch):
    keys = _keys(40)
    shape = (3, 5, 7)  # 105 values: not a multiple of 4
    big = gaussian(keys, shape, CPU)
    singles = torch.cat([gaussian(NoiseKeys.from_keys([keys[r]]), shape, CPU) for r in range(40)])
    assert torch.equal(big, singles)
    perm = torch.randperm(40, generator=torch.Generator().manual_seed(1))
    assert torch.equal(gaussian(keys.take(perm), shape, CPU), big[perm])
    shuffled_list = NoiseKeys.from_keys([keys[int(r)] for r in perm])
    assert torch.equal(gaussian(shuffled_list, shape, CPU), big[perm])
    # Chunking over rows and over blocks inside a row must not change a single bit.
    monkeypatch.setattr(noise_fields, "_CHUNK_BLOCKS", 5)
    assert torch.equal(gaussian(keys, shape, CPU), big)


def test_rows_of_different_seeds_share_a_batch_through_row_words():
    """The engine mixes images of different seeds in one batch: each row keeps its own field."""
    a, b = _keys(5, seed=11), _keys(7, seed=2**64 - 3)
    words = torch.cat([row_words(a, CPU), row_words(b, CPU)])
    mixed = gaussian_words(words[torch.tensor([5, 0, 11, 3])], (3, 5, 5), CPU)
    alone = torch.cat([gaussian(a, (3, 5, 5), CPU), gaussian(b, (3, 5, 5), CPU)])
    assert torch.equal(mixed, alone[torch.tensor([5, 0, 11, 3])])


def test_row_words_are_counter_words_and_the_key_table():
    keys = _keys(9)
    words = row_words(keys, CPU)
    assert words.shape == (9, 6) and words.dtype == torch.int64
    counters = counter_words(keys.image, keys.phase, keys.draw, keys.chain, keys.step)
    assert torch.equal(words[:, :4], counters)
    assert torch.equal(words[:, 4:], key_table(keys.seed)[keys.stream])
    for r in range(9):
        k = keys[r]
        assert tuple(words[r, 4:].tolist()) == derive_key(k.seed, k.stream)
        assert words[r, 0].item() == int(k.phase) << 24


def test_gaussian_words_rejects_malformed_words():
    with pytest.raises(InputError, match="row words"):
        gaussian_words(torch.zeros(3, 5, dtype=torch.int64), (4,), CPU)
    with pytest.raises(InputError, match="row words"):
        gaussian_words(torch.zeros(3, 6, dtype=torch.int32), (4,), CPU)


def test_value_depends_on_flat_index_only():
    keys = _keys(4)
    flat = gaussian(keys, (3072,), CPU)
    assert torch.equal(gaussian(keys, (3, 32, 32), CPU).reshape(4, -1), flat)
    assert torch.equal(gaussian(keys, (7,), CPU), flat[:, :7])
    assert torch.equal(gaussian(keys, (1, 1), CPU).reshape(4), flat[:, 0])
    assert gaussian(keys, (), CPU).shape == (4,)
    assert gaussian(keys, (2, 0, 3), CPU).shape == (4, 2, 0, 3)
    empty = NoiseKeys.from_arrays(0, image=[], phase=[], draw=[], chain=[], step=[], stream=[])
    assert gaussian(empty, (3, 2), CPU).shape == (0, 3, 2)


@pytest.mark.parametrize(
    "change",
    [
        {"seed": 2025},
        {"seed": 2024 + 2**63},
        {"image": 6},
        {"image": 5 + 2**23},
        {"phase": NoisePhase.SELECTION},
        {"draw": 18},
        {"draw": 17 + 2**32},
        {"chain": 4},
        {"step": 10},
        {"stream": NoiseStream.DELTA},
        {"stream": NoiseStream.FORWARD},
    ],
)
def test_any_single_field_changes_the_stream(change):
    base = gaussian(NoiseKeys.from_keys([_key()]), (4096,), CPU)[0].double()
    other = gaussian(NoiseKeys.from_keys([_key(**change)]), (4096,), CPU)[0].double()
    assert not torch.any(base == other)  # no shared value at all
    corr = torch.corrcoef(torch.stack([base, other]))[0, 1]
    assert abs(float(corr)) < 6 / math.sqrt(4096)


# ------------------------------------------------------------------------------ distribution


def test_distribution_is_standard_normal():
    keys = _keys(250, seed=99)
    z = gaussian(keys, (4000,), CPU)
    assert z.dtype == torch.float32 and torch.isfinite(z).all()
    x = z.double().flatten().numpy()
    n = x.size
    assert abs(x.mean()) < 5 / math.sqrt(n)
    assert abs(x.var() - 1) < 5 * math.sqrt(2 / n)
    assert abs(stats.skew(x)) < 0.02 and abs(stats.kurtosis(x)) < 0.03
    assert stats.kstest(x, "norm").pvalue > 1e-4
    for lane in range(4):  # both Box-Muller outputs (cos and sin) of both pairs
        assert stats.kstest(z[:, lane::4].double().flatten().numpy(), "norm").pvalue > 1e-4
    # Tails: expected max of 1e6 normals is ~4.9; the 32-bit uniform caps |z| at sqrt(66 ln 2).
    assert 4.3 < np.abs(x).max() <= math.sqrt(66 * math.log(2)) + 1e-6
    assert np.mean(np.abs(x) > 3) == pytest.approx(2 * stats.norm.sf(3), rel=0.1)
    lag = np.corrcoef(x[:-1], x[1:])[0, 1]
    assert abs(lag) < 5 / math.sqrt(n)


def test_uniform_open_interval_and_distribution():
    keys = _keys(100, seed=3)
    u = uniform(keys, (2000,), CPU)
    assert u.dtype == torch.float32
    assert float(u.min()) > 0 and float(u.max()) < 1
    x = u.double().flatten().numpy()
    assert stats.kstest(x, "uniform").pvalue > 1e-4
    for dtype in (torch.float16, torch.bfloat16):
        low = uniform(keys, (2000,), CPU, dtype=dtype)
        assert low.dtype == dtype and float(low.min()) > 0 and float(low.max()) < 1


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_other_dtypes_are_casts_of_the_float32_field(dtype):
    keys = _keys(8)
    ref = gaussian(keys, (3, 16, 16), CPU)
    out = gaussian(keys, (3, 16, 16), CPU, dtype=dtype)
    assert out.dtype == dtype
    assert torch.equal(out, ref.to(dtype))
    assert torch.isfinite(out).all()


# -------------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"seed": -1}, "seed"),
        ({"seed": 2**64}, "seed"),
        ({"image": 2**24}, "image"),
        ({"draw": 2**40}, "draw"),
        ({"draw": -3}, "draw"),
        ({"chain": 2**16}, "chain"),
        ({"step": 2**16}, "step"),
        ({"phase": 7}, "phase"),
        ({"stream": 9}, "stream"),
        ({"step": 1.0}, "step"),
        ({"chain": True}, "chain"),
    ],
)
def test_noise_key_rejects_out_of_budget_fields(change, match):
    with pytest.raises(InputError, match=match):
        _key(**change)


def test_noise_key_coerces_enums_and_round_trips_through_batches():
    k = _key(phase=0, stream=2)
    assert k.phase is NoisePhase.SELECTION and k.stream is NoiseStream.FORWARD
    batch = NoiseKeys.from_keys([k, _key()])
    assert batch[0] == k and batch[1] == _key() and len(batch) == 2
    with pytest.raises(InputError, match="share one seed"):
        NoiseKeys.from_keys([k, _key(seed=1)])


def test_from_arrays_broadcasts_and_validates():
    keys = NoiseKeys.from_arrays(
        1, image=3, phase=NoisePhase.ESTIMATION, draw=np.arange(5), chain=torch.arange(5),
        step=0, stream=NoiseStream.DELTA,
    )  # fmt: skip
    assert len(keys) == 5 and keys[4] == NoiseKey(1, 3, NoisePhase.ESTIMATION, 4, 4, 0, 0)
    good = dict(image=0, phase=0, draw=0, chain=0, step=0, stream=0)
    for bad, match in [
        ({"draw": np.arange(3), "chain": np.arange(4)}, "equal lengths"),
        ({"draw": np.array([0.5])}, "integers"),
        ({"phase": [0, 5]}, "phase"),
        ({"image": np.array([-1, 2])}, "image"),
        ({"draw": 2**63}, "draw"),
        ({"step": np.zeros((2, 2), dtype=np.int64)}, "1-D"),
    ]:
        with pytest.raises(InputError, match=match):
            NoiseKeys.from_arrays(0, **{**good, **bad})
    with pytest.raises(InputError, match="1-D int64"):
        NoiseKeys(0, *(torch.zeros(2, dtype=torch.int32),) * 6)


def test_gaussian_rejects_bad_requests():
    keys = _keys(2)
    with pytest.raises(InputError, match="device"):
        gaussian(keys, (3,), "cpu")  # type: ignore[arg-type]
    with pytest.raises(InputError, match="non-negative"):
        gaussian(keys, (3, -1), CPU)
    with pytest.raises(InputError, match="values per row"):
        gaussian(keys, (MAX_NUMEL + 1,), CPU)
    with pytest.raises(InputError, match="dtype"):
        gaussian(keys, (3,), CPU, dtype=torch.int32)
    with pytest.raises(InputError, match="NoiseKeys"):
        gaussian([_key()], (3,), CPU)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------- GPU


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu():
    cuda = torch.device("cuda")
    keys = _keys(64)
    assert torch.equal(philox4x32(torch.tensor([KAT[2][0]], device=cuda),
                                  torch.tensor([KAT[2][1]], device=cuda)).cpu(),
                       torch.tensor([KAT[2][2]]))  # fmt: skip
    u_cpu = uniform(keys, (3, 32, 32), CPU, dtype=torch.float64)
    assert torch.equal(uniform(keys, (3, 32, 32), cuda, dtype=torch.float64).cpu(), u_cpu)
    z_cpu = gaussian(keys, (3, 32, 32), CPU)
    z_gpu = gaussian(keys, (3, 32, 32), cuda)
    assert z_gpu.device.type == "cuda" and z_gpu.dtype == torch.float32
    torch.testing.assert_close(z_gpu.cpu(), z_cpu, rtol=0, atol=1e-6)
    fields = ("image", "phase", "draw", "chain", "step", "stream")
    on_gpu_keys = NoiseKeys(keys.seed, *(getattr(keys, f).to(cuda) for f in fields))
    assert torch.equal(gaussian(on_gpu_keys, (3, 32, 32), cuda), z_gpu)
