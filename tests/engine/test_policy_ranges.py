"""FixedPolicy over draw ranges: a share of an image's draws, whose counts add up exactly to the whole's."""

import numpy as np
import pytest
import torch

from densepure.certify.job import JobOptions, build_engine
from densepure.engine.engine import ImageRequest
from densepure.engine.policy import FixedPolicy
from densepure.errors import ConfigError
from densepure.models.digits import load_digits_test_split
from densepure.noise import NoisePhase

SEL, EST = NoisePhase.SELECTION, NoisePhase.ESTIMATION


def test_a_range_hands_out_exactly_its_draws_in_order():
    policy = FixedPolicy(3, {SEL: range(4, 7), EST: range(10, 15)})
    assert policy.max_draws == 15  # the largest draw index + 1: what the noise counters must hold
    taken = policy.take(4) + policy.take(100)
    assert [(r.phase, r.draw) for r in taken] == [(SEL, 4), (SEL, 5), (SEL, 6), (EST, 10), (EST, 11), (EST, 12),
                                                 (EST, 13), (EST, 14)]
    assert policy.take(5) == [] and not policy.done
    for request in taken:
        policy.record(request, request.draw % 3)
    assert policy.done
    assert policy.counts[SEL].tolist() == [1, 1, 1] and policy.counts[EST].tolist() == [1, 2, 2]


def test_a_count_is_the_range_from_zero():
    counted, ranged = FixedPolicy(2, {EST: 5}), FixedPolicy(2, {EST: range(5)})
    assert counted.take(10) == ranged.take(10) and counted.max_draws == ranged.max_draws == 5


@pytest.mark.parametrize("draws", [range(5, 2), range(0, 10, 2), range(-1, 3), -1, 2.5, True])
def test_bad_draws_are_config_errors(draws):
    with pytest.raises(ConfigError, match="draws of phase ESTIMATION"):
        FixedPolicy(3, {EST: draws})


def test_counts_of_disjoint_ranges_add_up_to_the_whole(tmp_path):
    """On the shipped digits models: three workers' shares of 40 draws (and the K=1 prefix) sum exactly."""
    torch.set_num_threads(1)
    options = JobOptions.build(sigma=0.5, n0=8, n=40, num_chains=5, steps=2, device="cpu", also_chains=(1,), seed=3,
                         output=str(tmp_path / "r.tsv"))
    engine = build_engine(options, (1, 8, 8), 10)
    images, _ = load_digits_test_split()
    image = images[7]

    def counts(phases):
        request = ImageRequest(7, image, FixedPolicy(engine.num_classes, phases), seed=3, noise_id=7)
        with torch.inference_mode():
            (done,) = list(engine.run([request]))
        return done.policy

    whole = counts({SEL: 8, EST: 40})
    shares = [counts({SEL: range(3), EST: range(13)}), counts({SEL: range(3, 8), EST: range(13, 29)}),
              counts({EST: range(29, 40)})]
    for phase in (SEL, EST):
        summed = sum(share.counts.get(phase, np.zeros(10, np.int64)) for share in shares)
        assert summed.tolist() == whole.counts[phase].tolist()
        summed_k1 = sum(share.prefix_counts[1].get(phase, np.zeros(10, np.int64)) for share in shares)
        assert summed_k1.tolist() == whole.prefix_counts[1][phase].tolist()
    assert len(set(whole.counts[EST].tolist())) > 1  # the noise moves labels: a sum that could go wrong
