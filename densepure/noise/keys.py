"""Noise identities and their Philox words: every noise value is a pure function of its identity.

A row's noise depends only on its :class:`NoiseKey` ``(seed, image, phase, draw, chain, step,
stream)`` and on the flat element index, never on batch layout, batch order or on which other
chains ran (ALGORITHM.md §6: exact early exit needs chain k's randomness to be independent of
whether chain k-1 was evaluated). The generator is Philox4x32-10 (Salmon, Moraes, Dror, Shaw,
"Parallel random numbers: as easy as 1, 2, 3", SC'11), written in plain torch int64 tensor ops that
emulate uint32 arithmetic, so CPU and CUDA produce the same bits.

Key (64 bits, two uint32 words ``k0`` = low, ``k1`` = high), from ``(seed, stream)``::

    z = (seed + (stream + 1) * 0x9E3779B97F4A7C15) mod 2**64
    z = splitmix64_finalizer(z)        # Steele et al. 2014; a bijection of 64-bit words
    k0, k1 = z & 0xFFFFFFFF, z >> 32

For a fixed stream the key is a bijection of the seed; for a fixed seed distinct streams give
distinct keys.

Counter (128 bits, four uint32 words ``c0..c3``)::

    c0 = block            (bits  0..23, 24 bits)  | phase      (bits 24..31,  8 bits)
    c1 = step             (bits  0..15, 16 bits)  | chain      (bits 16..31, 16 bits)
    c2 = draw & 0xFFFFFFFF                         (draw bits 0..31)
    c3 = draw >> 32       (bits  0.. 7,  8 bits)  | image      (bits  8..31, 24 bits)

``block`` is the flat element index divided by 4: one Philox call yields four uint32 words, hence
four normals (two Box-Muller pairs). Limits implied: image < 2**24, phase < 2**8, draw < 2**40,
chain < 2**16, step < 2**16, at most 4 * 2**24 = 67,108,864 values per row; the seed is any
64-bit unsigned integer. Within one seed, distinct (stream, image, phase, draw, chain, step,
block) tuples map to distinct (key, counter) pairs, so no two values share a Philox output word.

The sound noise (:mod:`densepure.noise.sound`) reads, besides a DELTA or FORWARD row's own words, the
words of the same identity with ``step`` 1 and 2 (the lower words of its 96-bit uniforms): those rows
have step 0 by convention, so the identities stay distinct.

Row words: a batch's identities become one ``(B, 6)`` int64 tensor ``[c0, c1, c2, c3, k0, k1]``
(:func:`row_words`; ``c0`` without its block bits). That tensor is the whole contract between the
identities and the generators: :mod:`densepure.noise.fields` (torch) and the fused kernels of
:mod:`densepure.kernels` read nothing else, and rows of different seeds may share a batch (the engine
keys each submitted image by its own seed, :func:`key_table`).

Conversion (:mod:`densepure.noise.fields`): a uint32 ``x`` becomes ``u = (x + 0.5) / 2**32`` in float64, which lies in
``[2**-33, 1 - 2**-33]`` (never 0 or 1). Box-Muller in float64, ``r = sqrt(-2 ln u_a)``,
``z = (r cos 2πu_b, r sin 2πu_b)``, so ``|z| <= sqrt(66 ln 2) ≈ 6.76``. The float64 result is
rounded once to float32; every other requested dtype is a cast of that float32 field. The integer
words are exact on every device; CPU and CUDA normals may differ by one float32 ulp where their
float64 log/sin/cos (libm vs libdevice) round differently (checked by the ``gpu`` test).
"""

from __future__ import annotations

import enum
import secrets
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from densepure.errors import InputError
from densepure.noise.philox import MASK32 as _MASK32

__all__ = [
    "BLOCK_BITS", "CHAIN_BITS", "DRAW_BITS", "IMAGE_BITS", "MAX_NUMEL", "PHASE_BITS", "STEP_BITS",
    "WORDS", "NoiseKey", "NoiseKeys", "NoisePhase", "NoiseStream",
    "counter_words", "derive_key", "draw_seed", "key_table", "row_words",
]  # fmt: skip

IMAGE_BITS = 24
PHASE_BITS = 8
DRAW_BITS = 40
CHAIN_BITS = 16
STEP_BITS = 16
BLOCK_BITS = 24
SEED_BITS = 64
MAX_NUMEL = 4 << BLOCK_BITS  # values per row

WORDS = 6  # per-row words: c0 (block bits 0), c1, c2, c3, k0, k1

_MASK64 = (1 << 64) - 1
_GOLDEN64 = 0x9E3779B97F4A7C15


class NoisePhase(enum.IntEnum):
    """Which part of a certification a draw belongs to (Cohen et al.: n0 selection, n estimate)."""

    SELECTION = 0
    ESTIMATION = 1
    PREDICT = 2


class NoiseStream(enum.IntEnum):
    """What the noise is used for; each stream has its own Philox key."""

    DELTA = 0  # the smoothing noise added to the image
    CHAIN = 1  # the reverse-step noise z of a chain
    FORWARD = 2  # the DDS forward-process noise


def draw_seed() -> int:
    """A fresh seed from the OS CSPRNG, uniform over all ``SEED_BITS`` bits: the one place densepure
    draws a seed (an unset ``--seed``, every server request). Unpredictable on purpose: a known seed lets
    an attacker search for a perturbation the fixed noise misses."""
    return secrets.randbits(SEED_BITS)


_FIELD_LIMITS = {"image": IMAGE_BITS, "phase": PHASE_BITS, "draw": DRAW_BITS,
                 "chain": CHAIN_BITS, "step": STEP_BITS, "stream": 8}  # fmt: skip
_ENUM_FIELDS = {"phase": NoisePhase, "stream": NoiseStream}
_ROW_FIELDS = ("image", "phase", "draw", "chain", "step", "stream")


def _check_seed(seed: object) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise InputError(f"seed must be an int, got {type(seed).__name__}")
    if not 0 <= int(seed) < 1 << SEED_BITS:
        raise InputError(f"seed must be in [0, 2**64), got {int(seed)}")
    return int(seed)


@dataclass(frozen=True)
class NoiseKey:
    """The identity of one noise field (one row of a batch).

    Fields not meaningful for a stream are 0 by convention (e.g. ``chain = step = 0`` for
    ``NoiseStream.DELTA``, which all K chains of a draw share). Limits: see the module docstring.
    """

    seed: int
    image: int
    phase: NoisePhase
    draw: int
    chain: int
    step: int
    stream: NoiseStream

    def __post_init__(self) -> None:
        object.__setattr__(self, "seed", _check_seed(self.seed))
        for name in _ROW_FIELDS:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise InputError(f"{name} must be an int, got {type(value).__name__}")
            value = int(value)
            if not 0 <= value < 1 << _FIELD_LIMITS[name]:
                raise InputError(
                    f"{name} must be in [0, 2**{_FIELD_LIMITS[name]}), got {value}"
                )
            if name in _ENUM_FIELDS:
                enum_cls = _ENUM_FIELDS[name]
                if value not in {m.value for m in enum_cls}:
                    allowed = ", ".join(f"{m.name}={m.value}" for m in enum_cls)
                    raise InputError(f"{name} must be one of {allowed}; got {value}")
                value = enum_cls(value)
            object.__setattr__(self, name, value)


@dataclass(frozen=True, eq=False)
class NoiseKeys:
    """A batch of :class:`NoiseKey` sharing one seed: one 1-D int64 tensor per row field.

    Row ``r`` is the key ``(seed, image[r], phase[r], draw[r], chain[r], step[r], stream[r])``.
    Build with :meth:`from_keys` or :meth:`from_arrays`; direct construction validates too.
    """

    seed: int
    image: torch.Tensor
    phase: torch.Tensor
    draw: torch.Tensor
    chain: torch.Tensor
    step: torch.Tensor
    stream: torch.Tensor

    def __post_init__(self) -> None:
        object.__setattr__(self, "seed", _check_seed(self.seed))
        length = None
        for name in _ROW_FIELDS:
            value = getattr(self, name)
            if not isinstance(value, torch.Tensor) or value.dtype != torch.int64 or value.ndim != 1:
                raise InputError(
                    f"NoiseKeys.{name} must be a 1-D int64 tensor, got "
                    f"{type(value).__name__} {getattr(value, 'dtype', '')} "
                    f"{tuple(getattr(value, 'shape', ()))}: use NoiseKeys.from_arrays"
                )
            if length is not None and value.shape[0] != length:
                raise InputError(
                    f"NoiseKeys fields must have equal lengths, got {name} of length "
                    f"{value.shape[0]} vs {length}"
                )
            length = value.shape[0]
            _check_field(name, value)

    @classmethod
    def from_keys(cls, keys: Sequence[NoiseKey]) -> NoiseKeys:
        """Stack single keys (all with the same seed) into a batch; row order is kept."""
        keys = list(keys)
        if not keys:
            raise InputError("from_keys needs at least one NoiseKey (use from_arrays for B = 0)")
        seeds = {k.seed for k in keys}
        if len(seeds) != 1:
            raise InputError(f"all keys of a batch must share one seed, got {sorted(seeds)}")
        columns = {
            name: torch.tensor([int(getattr(k, name)) for k in keys], dtype=torch.int64)
            for name in _ROW_FIELDS
        }
        return cls(seed=keys[0].seed, **columns)

    @classmethod
    def from_arrays(
        cls, seed: int, *, image: object, phase: object, draw: object, chain: object,
        step: object, stream: object,
    ) -> NoiseKeys:  # fmt: skip
        """Vectorized constructor: each field is an int, a 1-D numpy array or a 1-D tensor.

        Scalars (and length-1 arrays) broadcast; all other arrays must have one common length
        (all scalars give one row). Tensors stay on their device.
        """
        given = dict(image=image, phase=phase, draw=draw, chain=chain, step=step, stream=stream)
        columns = {}
        for name, value in given.items():
            try:
                tensor = torch.as_tensor(value)
            except (TypeError, ValueError, OverflowError, RuntimeError) as err:
                raise InputError(f"{name} must be an int or an integer array: {err}") from err
            integral = not (tensor.dtype.is_floating_point or tensor.dtype.is_complex)
            if tensor.dtype == torch.bool or not (integral or tensor.numel() == 0):
                raise InputError(f"{name} must hold integers, got dtype {tensor.dtype}")
            if tensor.ndim > 1:
                raise InputError(f"{name} must be a scalar or 1-D, got shape {tuple(tensor.shape)}")
            columns[name] = tensor.to(torch.int64)
        try:
            broadcast = torch.broadcast_tensors(*(t.reshape(-1) if t.ndim else t.reshape(1)
                                                  for t in columns.values()))
        except RuntimeError as err:
            lengths = {n: tuple(t.shape) for n, t in columns.items()}
            raise InputError(f"NoiseKeys fields must have equal lengths, got {lengths}") from err
        return cls(seed=seed, **{n: t.contiguous() for n, t in zip(columns, broadcast, strict=True)})

    def __len__(self) -> int:
        return int(self.image.shape[0])

    def __getitem__(self, row: int) -> NoiseKey:
        """The single key of row ``row``."""
        return NoiseKey(self.seed, **{name: int(getattr(self, name)[row]) for name in _ROW_FIELDS})

    def take(self, index: torch.Tensor | Sequence[int]) -> NoiseKeys:
        """The rows ``index`` (any order, repeats allowed) as a new batch."""
        idx = torch.as_tensor(index, dtype=torch.int64)
        return NoiseKeys(
            self.seed, **{name: getattr(self, name)[idx.to(getattr(self, name).device)]
                          for name in _ROW_FIELDS}
        )


def _check_field(name: str, value: torch.Tensor) -> None:
    if value.numel() == 0:
        return
    lo, hi = int(value.min()), int(value.max())
    if lo < 0 or hi >= 1 << _FIELD_LIMITS[name]:
        raise InputError(
            f"NoiseKeys.{name} must be in [0, 2**{_FIELD_LIMITS[name]}), got range [{lo}, {hi}]"
        )
    if name in _ENUM_FIELDS:
        enum_cls = _ENUM_FIELDS[name]
        allowed = torch.tensor([m.value for m in enum_cls], dtype=torch.int64, device=value.device)
        if not bool(torch.isin(value, allowed).all()):
            names = ", ".join(f"{m.name}={m.value}" for m in enum_cls)
            raise InputError(f"NoiseKeys.{name} values must be among {names}")


def derive_key(seed: int, stream: NoiseStream | int) -> tuple[int, int]:
    """The Philox key ``(k0, k1)`` (low, high uint32 words) of ``(seed, stream)``: module doc."""
    seed = _check_seed(seed)
    if stream not in {s.value for s in NoiseStream}:
        raise InputError(f"stream must be a NoiseStream, got {stream!r}")
    z = (seed + (int(stream) + 1) * _GOLDEN64) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    z ^= z >> 31
    return z & _MASK32, z >> 32


def key_table(seed: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """``(len(NoiseStream), 2)`` int64: the Philox key ``(k0, k1)`` of ``seed`` for each stream."""
    return torch.tensor([derive_key(seed, s) for s in NoiseStream], dtype=torch.int64, device=device)


def counter_words(image: torch.Tensor, phase: torch.Tensor, draw: torch.Tensor, chain: torch.Tensor,
                  step: torch.Tensor) -> torch.Tensor:
    """``(B, 4)`` int64 counter words ``c0..c3`` (``c0`` without its block bits) of 1-D int64 fields.

    No range checks: callers pass fields already within the limits of the module docstring
    (:class:`NoiseKeys` checks them; the engine checks them once per submitted image).
    """
    c0 = phase << BLOCK_BITS
    c1 = step | (chain << STEP_BITS)
    c2 = draw & _MASK32
    c3 = (draw >> 32) | (image << (DRAW_BITS - 32))
    return torch.stack(torch.broadcast_tensors(c0, c1, c2, c3), dim=1)


def row_words(keys: NoiseKeys, device: torch.device | str) -> torch.Tensor:
    """The ``(B, 6)`` int64 row words ``[c0, c1, c2, c3, k0, k1]`` of a batch of keys, on ``device``."""
    f = {name: getattr(keys, name).to(device) for name in _ROW_FIELDS}
    k = key_table(keys.seed, device)[f["stream"]]
    c = counter_words(f["image"], f["phase"], f["draw"], f["chain"], f["step"])
    return torch.cat([c.reshape(-1, 4), k.reshape(-1, 2)], dim=1)
