#!/usr/bin/env python
"""Write the digits calibration split for INT8 exports: training images only, never the test split.

    PYTHONPATH=. python scripts/make_digits_calibration.py     # writes densepure/assets/digits/calibration_split.npz

The split of ``scripts/train_digits.py`` (``train_test_split(arange(1797), test_size=0.25, stratify=labels,
random_state=0)``, indices sorted) is re-made and checked against the shipped test split's indices; then
every 5th training image (270 of 1347, all ten classes) is written as ``pixels`` (uint8 0..16, the
dataset's levels), ``labels`` and ``indices`` (into ``sklearn.datasets.load_digits``), as
``test_split.npz`` is. ``densepure export --precision int8`` calibrates on it for the digits preset.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

OUT = Path(__file__).resolve().parents[1] / "densepure" / "assets" / "digits"
STRIDE = 5


def main() -> int:
    data = load_digits()
    pixels = data.images.astype(np.uint8).reshape(-1, 1, 8, 8)
    labels = data.target.astype(np.int64)
    idx_train, idx_test = train_test_split(np.arange(len(labels)), test_size=0.25, stratify=labels, random_state=0)
    idx_train, idx_test = np.sort(idx_train), np.sort(idx_test)
    with np.load(OUT / "test_split.npz") as shipped:
        if not np.array_equal(shipped["indices"], idx_test):
            print("the re-made split differs from the shipped test split: not writing", file=sys.stderr)
            return 1
    chosen = idx_train[::STRIDE]
    assert not set(chosen) & set(idx_test)
    np.savez_compressed(OUT / "calibration_split.npz", pixels=pixels[chosen], labels=labels[chosen],
                        indices=chosen.astype(np.int64))
    print(f"{len(chosen)} training images, classes {np.bincount(labels[chosen]).tolist()} -> "
          f"{OUT / 'calibration_split.npz'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
