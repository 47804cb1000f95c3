"""Statistical validity of CERTIFY and of sequential certification, with a known p_A.

The base classifier is linear and binary, f(x) = [w.x + b > 0]. Under x + delta with
delta ~ N(0, sigma^2 I), the scalar w.delta ~ N(0, sigma^2 ||w||^2), so
p_A = Phi(margin / sigma) with margin = |w.x + b| / ||w||, and the smoothed classifier g equals f
with exact L2 robust radius ``margin = sigma * Phi^-1(p_A)`` (Cohen et al. 2019, Sec. 3.1): a
certificate claiming more than that, or the wrong label, is a failure. The guarantee says the
failure rate is at most alpha; each test checks it with a one-sided exact binomial test at level
1e-3 (so a correct certifier fails it with probability <= 1e-3 for any seed), and checks that the
same test rejects deliberately broken certifiers, so it has power.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
from scipy import special, stats

from densepure.stats.cohen import certify_from_counts, lower_confidence_bound
from densepure.stats.sequential import SequentialPlan, run_sequential

SIGMA = 0.5
TEST_LEVEL = 1e-3  # probability that a valid certifier is (wrongly) rejected by a check below


@dataclass(frozen=True)
class LinearBinaryClassifier:
    """f(x) = 1 if w.x + b > 0 else 0. w: float64 (d,)."""

    w: np.ndarray
    b: float

    def point_at(self, signed_margins: np.ndarray) -> np.ndarray:
        """Points (T, d) at signed distance ``signed_margins`` (T,) from the decision hyperplane."""
        norm = np.linalg.norm(self.w)
        on_plane = -self.b * self.w / norm**2
        return on_plane + signed_margins[:, None] * (self.w / norm)

    def scores(self, xs: np.ndarray) -> np.ndarray:
        return xs @ self.w + self.b

    def true_labels(self, xs: np.ndarray) -> np.ndarray:
        return (self.scores(xs) > 0).astype(np.int64)

    def true_radii(self, xs: np.ndarray) -> np.ndarray:
        return np.abs(self.scores(xs)) / np.linalg.norm(self.w)

    def class1_hits(self, xs: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
        """Votes for class 1 among k noisy draws per point, really sampled: w.delta is one scalar
        normal per draw, N(0, sigma^2 ||w||^2). Returns int64 (T,)."""
        w_dot_delta = rng.standard_normal((xs.shape[0], k)) * (SIGMA * np.linalg.norm(self.w))
        return (self.scores(xs)[:, None] + w_dot_delta > 0).sum(axis=1)


def _classifier(seed: int) -> LinearBinaryClassifier:
    rng = np.random.default_rng(seed)
    return LinearBinaryClassifier(w=rng.normal(size=16), b=float(rng.normal()))


def _points(clf: LinearBinaryClassifier, p_a: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Points with the given p_A, on random sides of the hyperplane (so both labels occur)."""
    signs = rng.choice([-1.0, 1.0], size=p_a.shape[0])
    return clf.point_at(signs * SIGMA * special.ndtri(p_a))


def _excess_pvalue(failures: int, trials: int, alpha: float) -> float:
    """Exact one-sided binomial test of H0 "failure rate <= alpha"."""
    return stats.binomtest(failures, trials, alpha, alternative="greater").pvalue


def _two_class_counts(hits1: int, total: int) -> np.ndarray:
    return np.array([total - hits1, hits1], dtype=np.int64)


def test_linear_classifier_p_a_is_what_sampling_gives():
    clf, rng = _classifier(0), np.random.default_rng(1)
    p_a = np.array([0.6, 0.8413, 0.97])
    xs = _points(clf, p_a, rng)
    hits1 = clf.class1_hits(xs, 200_000, rng)
    hits_true = np.where(clf.true_labels(xs) == 1, hits1, 200_000 - hits1)
    assert np.all(np.abs(hits_true / 200_000 - p_a) < 5 * np.sqrt(p_a * (1 - p_a) / 200_000))
    assert np.allclose(clf.true_radii(xs), SIGMA * special.ndtri(p_a))


def _certify_failures(alpha: float, certifier) -> tuple[int, int]:
    """Failures of ``certifier(selection, estimation) -> (label, radius)`` over many points."""
    clf, rng = _classifier(2), np.random.default_rng(3)
    trials, n0, n = 4000, 64, 1000
    xs = _points(clf, rng.uniform(0.52, 0.98, trials), rng)
    labels, radii = clf.true_labels(xs), clf.true_radii(xs)
    sel1, est1 = clf.class1_hits(xs, n0, rng), clf.class1_hits(xs, n, rng)
    failures = 0
    for i in range(trials):
        label, r = certifier(_two_class_counts(sel1[i], n0), _two_class_counts(est1[i], n))
        failures += label != -1 and (label != labels[i] or r > radii[i])
    return int(failures), trials


def test_certify_failure_rate_is_at_most_alpha():
    alpha = 0.1

    def certify(selection, estimation):
        cert = certify_from_counts(selection, estimation, SIGMA, alpha)
        return cert.label, cert.radius

    failures, trials = _certify_failures(alpha, certify)
    print(f"CERTIFY: failure rate {failures / trials:.4f} (alpha = {alpha})")
    assert _excess_pvalue(failures, trials, alpha) >= TEST_LEVEL


def test_the_validity_check_rejects_broken_certifiers():
    alpha = 0.1

    def point_estimate(selection, estimation):
        c_hat = int(np.argmax(selection))
        p_hat = estimation[c_hat] / estimation.sum()
        return (c_hat, SIGMA * special.ndtri(p_hat)) if p_hat >= 0.5 else (-1, 0.0)

    def doubled_alpha(selection, estimation):  # a one-sided / two-sided mix-up
        cert = certify_from_counts(selection, estimation, SIGMA, 2 * alpha)
        return cert.label, cert.radius

    for broken in (point_estimate, doubled_alpha):
        failures, trials = _certify_failures(alpha, broken)
        print(f"{broken.__name__}: failure rate {failures / trials:.4f} (alpha = {alpha})")
        assert _excess_pvalue(failures, trials, alpha) < TEST_LEVEL


def _sequential_false_certifications(plan: SequentialPlan, p_a: np.ndarray, seed: int) -> int:
    """Runs selection (n0 = 64) then the sequential test per point; counts certifications of
    plan.radius that are wrong (true radius < requested radius, or wrong label)."""
    clf, rng = _classifier(seed), np.random.default_rng(seed + 1)
    xs = _points(clf, p_a, rng)
    labels, radii = clf.true_labels(xs), clf.true_radii(xs)
    selection1 = clf.class1_hits(xs, 64, rng)
    wrong = 0
    for i in range(xs.shape[0]):
        c_hat = int(selection1[i] > 32)
        x = xs[i : i + 1]

        def sample_fn(k: int, x=x, c_hat=c_hat) -> int:
            hits1 = int(clf.class1_hits(x, k, rng)[0])
            return hits1 if c_hat == 1 else k - hits1

        result = run_sequential(sample_fn, plan, label=c_hat)
        wrong += result.certified and (result.label != labels[i] or radii[i] < plan.radius)
    return int(wrong)


def _just_below_target(plan: SequentialPlan, trials: int, seed: int) -> np.ndarray:
    # True radius in [0.98 r, 0.999 r): not certifiable, but as hard to reject as it gets.
    rng = np.random.default_rng(seed)
    return special.ndtr(rng.uniform(0.98, 0.999, trials) * plan.radius / plan.sigma)


def test_sequential_false_certification_rate_is_at_most_alpha():
    alpha, trials = 0.1, 1500
    plan = SequentialPlan.geometric(radius=0.5, sigma=SIGMA, alpha=alpha, n_max=4000)
    wrong = _sequential_false_certifications(plan, _just_below_target(plan, trials, 4), seed=5)
    print(f"sequential {plan.looks}: false certification rate {wrong / trials:.4f} (alpha = {alpha})")
    assert _excess_pvalue(wrong, trials, alpha) >= TEST_LEVEL


@pytest.mark.slow  # a simulation; the fast tier keeps the check itself
def test_the_sequential_check_rejects_a_plan_without_the_union_bound():
    alpha, trials = 0.1, 1000
    plan = SequentialPlan.geometric(radius=0.5, sigma=SIGMA, alpha=alpha, n_max=4000)
    # Testing every look at the full alpha, as if the looks were not multiple tests. The plan's own
    # validation forbids this, so bypass it to show what the union bound protects against.
    object.__setattr__(plan, "alphas", (alpha,) * len(plan.looks))
    wrong = _sequential_false_certifications(plan, _just_below_target(plan, trials, 6), seed=7)
    print(f"full alpha at every look: false certification rate {wrong / trials:.4f} (alpha = {alpha})")
    assert _excess_pvalue(wrong, trials, alpha) < TEST_LEVEL


def test_sequential_certifies_points_whose_true_radius_is_comfortably_larger():
    alpha, trials = 0.1, 300
    plan = SequentialPlan.geometric(radius=0.5, sigma=SIGMA, alpha=alpha, n_max=4000)
    p_a = np.full(trials, special.ndtr(1.3 * plan.radius / plan.sigma))
    clf, rng = _classifier(8), np.random.default_rng(9)
    xs = _points(clf, p_a, rng)
    certified = 0
    for i in range(trials):
        true_label = int(clf.true_labels(xs[i : i + 1])[0])
        result = run_sequential(lambda k, x=xs[i : i + 1]: _true_hits(clf, x, k, rng), plan, true_label)
        certified += result.certified
    # Power, not validity: CERTIFY at n = 4000, alpha = 0.1 would certify these almost surely.
    assert lower_confidence_bound(int(4000 * p_a[0]), 4000, alpha) > plan.target
    assert certified / trials >= 0.95


def _true_hits(clf: LinearBinaryClassifier, x: np.ndarray, k: int, rng: np.random.Generator) -> int:
    hits1 = int(clf.class1_hits(x, k, rng)[0])
    return hits1 if clf.true_labels(x)[0] == 1 else k - hits1
