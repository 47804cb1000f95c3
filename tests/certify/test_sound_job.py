"""The noise of a certification job: sound where the data declares its grid, recorded with the effective
alpha, checked on resume; --levels, off-grid data and the anytime budget refused or run as documented."""

from __future__ import annotations

import math

import numpy as np
import pytest

from densepure.certify.job import JobOptions, prepare, prepare_draft, run
from densepure.certify.tasks import AnytimeTask
from densepure.cli import main
from densepure.diffusion import NoiseKind
from densepure.errors import ConfigError, InputError
from densepure.noise import added_failure, sound_table
from densepure.results.files import read_sidecar

SMALL = {"n0": 5, "n": 12, "num_chains": 3, "max": 1, "seed": 3, "device": "cpu"}


def options(tmp_path, **overrides) -> JobOptions:
    return JobOptions.build(**{**SMALL, **overrides}, output=str(tmp_path / "r.tsv"))


def test_the_digits_run_sound_noise_and_record_it_with_the_effective_alpha(tmp_path):
    draft = prepare_draft(options(tmp_path))
    assert draft.options.smoothing.noise is NoiseKind.SOUND and draft.options.smoothing.levels == 16
    added = added_failure(sound_table(16, 0.25), 64, 5 + 12)
    assert draft.record["noise"] == "sound" and draft.record["levels"] == 16
    assert draft.record["effective_alpha"] == math.nextafter(0.001 + added, math.inf) > 0.001
    floats = prepare_draft(options(tmp_path, noise="float"))
    assert floats.options.smoothing.levels is None  # float runs record no noise: the records of earlier runs
    assert not {"noise", "levels", "effective_alpha"} & set(floats.record)


def test_a_resume_with_the_other_noise_is_refused(tmp_path):
    run(prepare(options(tmp_path)))
    with pytest.raises(ConfigError, match=r"holds another run.*noise"):
        prepare_draft(options(tmp_path, noise="float"))
    header = read_sidecar(tmp_path / "r.tsv").header
    assert header.config["noise"] == "sound" and header.config["levels"] == 16
    prepare_draft(options(tmp_path, noise="sound", levels=16))  # the same run resumes


def _npz(tmp_path, images: np.ndarray):
    path = tmp_path / "images.npz"
    np.savez(path, images=images, labels=np.arange(len(images)) % 10)
    return str(path)


def test_the_grid_comes_from_the_data_or_levels(tmp_path):
    rng = np.random.default_rng(0)
    floats = _npz(tmp_path, rng.random((2, 1, 8, 8)).astype(np.float32))
    assert prepare_draft(options(tmp_path, data=floats)).options.smoothing.noise is NoiseKind.FLOAT  # no grid declared
    with pytest.raises(ConfigError, match="give --levels N"):
        prepare_draft(options(tmp_path, data=floats, noise="sound"))
    with pytest.raises(InputError, match=r"image 0 of .* is not on the grid k/255 \(--levels 255\)"):
        prepare_draft(options(tmp_path, data=floats, levels=255))
    pixels = _npz(tmp_path, rng.integers(0, 256, (2, 1, 8, 8), dtype=np.uint8))
    draft = prepare_draft(options(tmp_path, data=pixels, overwrite=True))
    assert draft.options.smoothing.noise is NoiseKind.SOUND and draft.options.smoothing.levels == 255  # uint8 declares k/255
    with pytest.raises(ConfigError, match="--noise float reads none"):
        options(tmp_path, noise="float", levels=16)
    with pytest.raises(ConfigError, match="levels"):
        options(tmp_path, levels=0)


def test_the_budget_runs_the_anytime_radius(tmp_path, capsys):
    opts = options(tmp_path, n=None, budget=40)
    assert opts.task() == AnytimeTask(5, 40, 0.001) and opts.sampling.n == 40 and opts.record()["budget"] == 40
    for bad, match in (({"n": 30}, "replaces --n"), ({"predict": True, "n0": None}, "not with --predict"),
                       ({"radius": 0.25}, "not with --predict, --radius")):
        with pytest.raises(ConfigError, match=match):
            options(tmp_path, **{**bad, "budget": 40})
    output = tmp_path / "anytime.tsv"
    code = main(["certify", "--max", "2", "--n0", "5", "--budget", "40", "--K", "3", "--seed", "3", "--device", "cpu",
                 "--output", str(output)])
    assert code == 0, capsys.readouterr().err[-2000:]
    records = read_sidecar(output).records
    assert len(records) == 2 and all(r.extra["anytime"] and r.n == 40 for r in records)
    assert "budget=40 (anytime radius)" in capsys.readouterr().err


def test_a_sound_run_resumed_with_more_images_equals_one_run(tmp_path):
    """Each image's grid steps are keyed by (seed, image): a run extended by resuming (--max 1, then 2) writes
    exactly the rows and counts of one run over both images."""
    from cluster_helpers import certificates

    resumed = options(tmp_path, max=1)
    run(prepare(resumed))
    run(prepare(JobOptions.build(**{**SMALL, "max": 2}, output=resumed.results.output)))
    whole = JobOptions.build(**{**SMALL, "max": 2}, output=str(tmp_path / "whole.tsv"))
    run(prepare(whole))
    assert certificates(resumed.results.output) == certificates(whole.results.output) and len(certificates(whole.results.output)) == 2
