"""With --allow-client-seed: the server's certificates are `densepure certify`'s for the same seed (sound
noise, the digits' default, and float noise; CERTIFY, the sequential test and the anytime radius), the
anytime radius streams through the jobs API as it grows, and concurrent clients get exactly what each gets
alone (isolated results)."""

import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from serve_helpers import FAST

from densepure.cli import main
from densepure.results.files import read_results, read_sidecar
from densepure.serve.client import Client

SEED = 20261130


def certify_cli(tmp_path, capsys, *args):
    """`densepure certify` (the CLI's main, in this process) on digits test images 0 and 1 with the servers' models."""
    output = tmp_path / "cli.tsv"
    code = main(["certify", *FAST, "--seed", str(SEED), "--skip", "1", "--max", "2", "--output", str(output), *args])
    assert code == 0, capsys.readouterr().err[-2000:]
    rows = {row.idx: row for row in read_results(output)}
    return rows, {record.row.idx: record for record in read_sidecar(output).records}


@pytest.mark.slow  # its servers (audit_server, audit_float_server) come by name: the fixture rule cannot see them
@pytest.mark.parametrize("noise", ["sound", "float"])
@pytest.mark.parametrize("mode,cli_args,params", [
    ("certify", ("--n0", "10", "--n", "60"), {"n0": 10, "n": 60}),
    ("certify_radius", ("--radius", "0.25"), {"radius": 0.25}),  # the server's n0=20, n=200: as FAST's
    ("certify_anytime", ("--n0", "10", "--n", "60", "--budget", "60"), {"n0": 10, "n": 60}),
])
def test_certificates_equal_densepure_certify(request, digits, tmp_path, capsys, mode, cli_args, params, noise):
    server = request.getfixturevalue("audit_server" if noise == "sound" else "audit_float_server")
    rows, records = certify_cli(tmp_path, capsys, *cli_args, *(("--noise", "float") if noise == "float" else ()))
    images = digits[0]
    with Client(server.url) as client:
        single = client.infer(images[[1]], mode=mode, seed=SEED, noise_id=1,
                              outputs=["label", "radius", "draws", "counts"], **params)
        batch = client.infer(images[[0, 1]], mode=mode, seed=SEED, noise_id=0,  # image j: noise id 0 + j
                             outputs=["label", "radius", "draws", "counts"], **params)
    assert single.parameters["seed"] == SEED and single.parameters["noise_id"] == 1  # a client's seed comes back
    assert single.parameters["noise"] == noise and ("effective_alpha" in single.parameters) == (noise == "sound")
    for idx, got, j in ((1, single, 0), (0, batch, 0), (1, batch, 1)):
        record = records[idx]
        assert got.counts[j, 0].tolist() == list(record.selection_counts)
        assert got.counts[j, 1].tolist() == list(record.estimation_counts)
        assert got.labels[j] == rows[idx].predict
        assert got.radii[j] == pytest.approx(rows[idx].radius, abs=1e-3)  # the TSV prints 3 decimals
        assert got.draws[j] == record.n0 + record.n


def test_concurrent_clients_get_isolated_results(audit_server, digits):
    images = digits[0]
    requests = [(images[[i]], {"mode": "predict", "n": 30, "seed": 1000 + i, "noise_id": i}) for i in range(8)]

    def run(request):
        x, params = request
        with Client(audit_server.url) as client:
            return client.infer(x, outputs=["label", "counts"], **params)

    with ThreadPoolExecutor(len(requests)) as pool:  # 8 clients at once, their images sharing every batch
        together = list(pool.map(run, requests))
    alone = [run(request) for request in requests]
    for a, b in zip(together, alone, strict=True):
        np.testing.assert_array_equal(a.counts, b.counts)
        np.testing.assert_array_equal(a.labels, b.labels)
    assert len({a.counts.tobytes() for a in together}) > 1


@pytest.mark.slow
def test_the_anytime_radius_streams_through_the_jobs_api(audit_server, digits):
    """certify_anytime as a job: while it runs, GET shows each image's radius so far (never decreasing);
    the final result is the last of them, and equals a run's that nobody watched."""
    images = digits[0][[0, 3]]
    seen: list[list] = []
    with Client(audit_server.url) as client:
        job_id = client.submit_job(images, mode="certify_anytime", n0=10, n=600, seed=SEED, noise_id=5,
                                   outputs=["label", "radius", "draws"])
        deadline = time.monotonic() + 600
        while (state := client.job(job_id))["status"] in ("queued", "running"):
            if state.get("anytime"):
                seen.append(state["anytime"])
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert state["status"] == "succeeded"
        final = state["result"]["outputs"]
        again = client.infer(images, mode="certify_anytime", n0=10, n=600, seed=SEED, noise_id=5,
                             outputs=["label", "radius"])
    radii = {o["name"]: o["data"] for o in final}["radius"]
    np.testing.assert_allclose(radii, again.radii, rtol=0, atol=1e-6)
    streamed = [[None if c is None else c["radius"] for c in s] for s in seen]
    assert any(r is not None and 0 < r for s in streamed for r in s), "no radius was streamed before the end"
    for j in range(2):
        mine = [s[j] for s in streamed if s[j] is not None]
        assert mine == sorted(mine) and all(r <= radii[j] + 1e-6 for r in mine)  # it only grows, to the final one
