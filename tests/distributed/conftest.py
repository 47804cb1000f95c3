"""Fixtures of the cluster tests: the single-process results every cluster run is compared with (the session's
one local Ray instance, ``cluster``, is in tests/conftest.py: tests/bench uses it too)."""

from __future__ import annotations

from pathlib import Path

import pytest
from cluster_helpers import job_options

from densepure.certify.job import prepare, run


@pytest.fixture(scope="session")
def single_process(tmp_path_factory):
    """The single-process result files of a configuration (computed once per session): overrides -> path."""
    done: dict[tuple, Path] = {}

    def result(**overrides) -> Path:
        key = tuple(sorted(overrides.items()))
        if key not in done:
            path = tmp_path_factory.mktemp("single") / "r.tsv"
            run(prepare(job_options(path, **overrides)))
            done[key] = path
        return done[key]

    return result
