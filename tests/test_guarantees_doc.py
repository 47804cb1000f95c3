"""docs/guarantees.md states numbers about the noise generator (issue 20, class 12): each is recomputed here
from first principles and from the presets, and must agree with the doc to the digits the doc writes; the
generator's own extreme value must be the doc's bound."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import torch

import densepure.noise.fields as fields
from densepure.models import PRESETS
from densepure.noise import gaussian_words

DOC = Path(__file__).resolve().parents[1] / "docs" / "guarantees.md"
TABLE_PRESETS = {"digits": "digits", "CIFAR-10": "cifar10", "ImageNet": "imagenet256"}  # the doc's names

U_MIN = 0.5 / 2**32  # u = (x + 0.5) / 2^32 at x = 0
R_MAX = math.sqrt(-2 * math.log(U_MIN))  # the largest Box-Muller radius
TAIL = math.exp(-R_MAX**2 / 2)  # P[a Gaussian pair's radius > R_MAX] (chi-square, 2 degrees of freedom)
NUMBER = r"([0-9][0-9,]*(?:\.[0-9]+)?(?:e-?[0-9]+)?)"  # as the doc writes them: 6.7637, 2,121, 1.16e-10


@pytest.fixture(scope="module")
def doc() -> str:
    return " ".join(DOC.read_text(encoding="utf-8").split())  # sentences wrap: one space between words


def agrees(written: str, value: float) -> bool:
    """``value`` rounded to the digits of ``written`` ("6.7637", "1.16e-10", "2,121") is ``written``."""
    text = written.replace(",", "")
    mantissa, _, exponent = text.partition("e")
    half_unit = 0.5 * 10.0 ** (int(exponent or 0) - len(mantissa.partition(".")[2]))
    return abs(float(text) - value) <= half_unit * (1 + 1e-9)


def stated(doc: str, pattern: str) -> str:
    match = re.search(pattern, doc)
    assert match, f"docs/guarantees.md no longer states {pattern!r}"
    return match.group(1)


def test_the_agreement_rule_catches_a_wrong_digit():
    assert agrees("6.7637", R_MAX) and agrees("6.76", R_MAX) and not agrees("6.77", R_MAX)
    assert agrees("2,121", 2120.66) and not agrees("2,120", 2120.66) and not agrees("3.8e-9", 3.725e-9)


def test_the_bound_and_its_tail(doc):
    """u >= 2^-33, so r <= sqrt(-2 ln 2^-33) = sqrt(66 ln 2); a true Gaussian pair passes it w.p. 2^-33."""
    assert "u = (x + 0.5) / 2^32" in doc and "never 0 or 1" in doc
    assert U_MIN == 2.0**-33 and R_MAX == pytest.approx(math.sqrt(66 * math.log(2)), rel=1e-15)
    assert agrees(stated(doc, r"at most sqrt\(66 ln 2\) = " + NUMBER), R_MAX)
    assert TAIL == pytest.approx(2.0**-33, rel=1e-12)
    assert agrees(stated(doc, r"probability 2\^-33 = " + NUMBER), TAIL)
    assert "at most (d / 2) 2^-33 for an image of d values" in doc
    assert agrees(stated(doc, r"L2 norm at most " + NUMBER + r" sqrt\(d / 2\)"), R_MAX)


def test_the_per_preset_table(doc):
    """d = C x H x W of each preset, the missing mass (d/2) 2^-33, the norm bound R_MAX sqrt(d/2), sqrt(d)."""
    cells = r" \| ".join([r"\| (digits|CIFAR-10|ImageNet)", *[NUMBER] * 4]) + r" \|"
    rows = re.findall(cells, doc)
    assert [row[0] for row in rows] == list(TABLE_PRESETS), rows
    for name, d, missing, bound, typical in rows:
        cfg = PRESETS[TABLE_PRESETS[name]].unet_config
        dims = cfg.in_channels * cfg.image_size**2
        assert int(d.replace(",", "")) == dims, (name, d, dims)
        assert agrees(missing, dims / 2 * TAIL), (name, missing, dims / 2 * TAIL)
        assert agrees(bound, R_MAX * math.sqrt(dims / 2)), (name, bound, R_MAX * math.sqrt(dims / 2))
        assert agrees(typical, math.sqrt(dims)), (name, typical, math.sqrt(dims))


def test_the_generator_reaches_the_documented_bound_and_no_further(doc, monkeypatch):
    """The code's uniforms are the doc's: word 0 gives 2^-33, the largest word 1 - 2^-33; a field made of
    all-zero Philox words (the smallest u_a, angle 2 pi 2^-33) gives the largest |z|, the doc's bound."""
    words = torch.tensor([0, 2**32 - 1], dtype=torch.int64)
    assert fields._to_unit(words).tolist() == [2.0**-33, 1 - 2.0**-33]

    def zero_words(c0, c1, c2, c3, k0, k1):
        return (torch.zeros_like(c0 | c1),) * 4

    monkeypatch.setattr(fields, "philox", zero_words)
    z = gaussian_words(torch.zeros(1, 6, dtype=torch.int64), (4,), torch.device("cpu"))
    largest = float(z.abs().max())
    assert largest == float(z[0, 0]) == float(z[0, 2]) and largest == pytest.approx(R_MAX, abs=1e-6)
    assert agrees(stated(doc, r"at most sqrt\(66 ln 2\) = " + NUMBER), largest)


# ---------------------------------------------------------------------------- the sound noise (issue 27)
SOUND_DRAWS = {"digits": 1050, "CIFAR-10": 100_100, "ImageNet": 100_100}  # the digits main job; the protocol
ALPHA = 0.001


def test_the_sound_accounting_table(doc):
    """Each row: the preset's grid, k and the table's TV bound (densepure.noise.sound_table), N, and
    epsilon = N d epsilon_v (added_failure) absolute and as a fraction of alpha."""
    from densepure.noise import added_failure, sound_table

    cells = r" \| ".join([r"\| (digits|CIFAR-10|ImageNet), " + NUMBER, *[NUMBER] * 6]) + r" \|"
    rows = re.findall(cells, doc)
    assert len(rows) == 9 and {row[0] for row in rows} == set(TABLE_PRESETS), rows
    for name, sigma, levels, k, eps_v, draws, eps, fraction in rows:
        preset = PRESETS[TABLE_PRESETS[name]]
        cfg = preset.unet_config
        table = sound_table(int(levels), float(sigma))
        added = added_failure(table, cfg.in_channels * cfg.image_size**2, SOUND_DRAWS[name])
        assert int(levels) == preset.levels and int(k.replace(",", "")) == table.k, (name, sigma)
        assert int(draws.replace(",", "")) == SOUND_DRAWS[name]
        assert agrees(eps_v, table.tv_per_value) and agrees(eps, added) and agrees(fraction, added / ALPHA), \
            (name, sigma, table.tv_per_value, added)
        assert added / ALPHA < 1e-9  # the bound, at every preset


def test_the_sixty_four_bit_counterfactual(doc):
    """epsilon_v is about k 2^-B / 3 (checked on the 96-bit table); with B = 64 bits at ImageNet size, sigma = 1,
    N = 100,100; and the fewest bits that keep epsilon below 1e-9 of alpha there."""
    from densepure.noise import sound_table

    table = sound_table(255, 1.0)
    assert table.tv_per_value == pytest.approx(table.k * 2.0**-96 / 3, rel=0.1)
    eps = table.k * 2.0**-64 / 3 * 196_608 * 100_100
    assert agrees(stated(doc, r"an epsilon of " + NUMBER + r" \("), eps)
    assert agrees(stated(doc, r"\(" + NUMBER + r" of alpha\) at ImageNet size"), eps / ALPHA)
    bits = next(b for b in range(64, 128) if table.k * 2.0**-b / 3 * 196_608 * 100_100 < 1e-9 * ALPHA)
    assert f"at least {bits} bits" in doc


def test_the_float32_interval_gap_and_bfloat16_spacing(doc):
    """P(fl32(z) <= 1) = P(z <= 1 + 2^-24): the gap phi(1) 2^-24; bf16's spacing 2^-8 near [0.5, 1) in model
    units is 2^-9 in pixel units, as a percentage of sigma = 0.25."""
    from scipy import stats

    assert agrees(stated(doc, r"phi\(1\) 2\^-24 = " + NUMBER), stats.norm.pdf(1.0) * 2.0**-24)
    assert torch.finfo(torch.bfloat16).eps == 2.0**-7  # 8 significant bits: spacing 2^-8 in [0.5, 1)
    assert agrees(stated(doc, r"2\^-9 in pixel units, " + NUMBER + r"% of sigma = 0.25"), 100 * 2.0**-9 / 0.25)


def test_the_documented_rounding_margins_are_the_code_s(doc):
    import importlib

    from densepure.stats import cohen as stats

    sound = importlib.import_module("densepure.noise.sound")
    tables = importlib.import_module("densepure.noise.sound_table")  # the package's attribute is the function

    assert stats._CDF_MARGIN == 2.0**-36 and "alpha (1 - 2^-36)" in doc
    assert sound.GRID_TOLERANCE == 2.0**-23 and "within 2^-23 of a level" in doc
    assert tables.BITS == 96 and tables.PRECISION == 256 and "in 256-bit arithmetic" in doc
    assert tables.GUIDE_BITS == 16 and "A 16-bit guide table" in doc
    steps = tables.sound_table(255, 0.25).tensors(torch.device("cpu")).search_steps
    assert "(11 steps for 8-bit images" in doc and steps == 11
