"""Fixtures of the server tests: the digits test split and two real servers (helpers: serve_helpers.py)."""

import pytest
from serve_helpers import FAST, ServerProcess


@pytest.fixture(scope="session")
def digits():
    from densepure.models.digits import load_digits_test_split

    images, labels = load_digits_test_split()
    return images.numpy(), labels.numpy()


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    """The default server (secret seeds), small caps so that limits can be reached in a test."""
    proc = ServerProcess(tmp_path_factory.mktemp("serve"), *FAST, "--max-n", "2000", "--max-queued-draws", "5000",
                         "--max-batch", "8", "--max-body-bytes", "300000", "--image-slots", "16")
    try:
        yield proc.wait_ready()
    finally:
        proc.stop()


@pytest.fixture(scope="session")
def audit_server(tmp_path_factory):
    """A server with --allow-client-seed (reproducibility audits)."""
    proc = ServerProcess(tmp_path_factory.mktemp("audit"), *FAST, "--allow-client-seed", "--image-slots", "16")
    try:
        yield proc.wait_ready()
    finally:
        proc.stop()


@pytest.fixture(scope="session")
def audit_float_server(tmp_path_factory):
    """--allow-client-seed with the float noise (the digits preset's default is the sound noise)."""
    proc = ServerProcess(tmp_path_factory.mktemp("audit-float"), *FAST, "--allow-client-seed", "--noise", "float",
                         "--image-slots", "16")
    try:
        yield proc.wait_ready()
    finally:
        proc.stop()
