"""Counter-based Philox noise: the identity contract every backend, kernel and worker honours.

A noise value depends only on its identity ``(seed, image, phase, draw, chain, step, stream)`` and
its element index, never on batch layout, batch order, device or which other chains ran
(:mod:`densepure.noise.keys`). Identities become ``(B, 6)`` int64 row words, and
:mod:`densepure.noise.fields` turns row words into normals or uniforms, :mod:`densepure.noise.sound`
into exact integer grid steps of the discretized Gaussian (the sound noise, its tables in
:mod:`densepure.noise.sound_table`); the fused kernels of :mod:`densepure.kernels` read the same row
words and must reproduce those fields.

This package imports nothing of densepure's but :mod:`densepure.errors`.
"""

from densepure.noise.fields import gaussian, gaussian_words, uniform, uniform_words
from densepure.noise.keys import (
    BLOCK_BITS,
    CHAIN_BITS,
    DRAW_BITS,
    IMAGE_BITS,
    MAX_NUMEL,
    PHASE_BITS,
    SEED_BITS,
    STEP_BITS,
    WORDS,
    NoiseKey,
    NoiseKeys,
    NoisePhase,
    NoiseStream,
    counter_words,
    derive_key,
    draw_seed,
    key_table,
    row_words,
)
from densepure.noise.philox import philox4x32
from densepure.noise.sound import sound_steps, sound_steps_words
from densepure.noise.sound_table import SoundTable, added_failure, sound_table

__all__ = [
    "BLOCK_BITS", "CHAIN_BITS", "DRAW_BITS", "IMAGE_BITS", "MAX_NUMEL", "PHASE_BITS", "SEED_BITS", "STEP_BITS",
    "WORDS", "NoiseKey", "NoiseKeys", "NoisePhase", "NoiseStream", "counter_words", "derive_key", "draw_seed", "gaussian",
    "gaussian_words", "key_table", "philox4x32", "row_words", "uniform", "uniform_words",
    "SoundTable", "added_failure", "sound_steps", "sound_steps_words", "sound_table",
]  # fmt: skip
