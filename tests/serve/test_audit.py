"""With --allow-client-seed: the server's certificates are `densepure certify`'s for the same seed, and
concurrent clients get exactly what each gets alone (isolated results)."""

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


@pytest.mark.parametrize("mode,cli_args,params", [
    ("certify", ("--n0", "10", "--n", "60"), {"n0": 10, "n": 60}),
    ("certify_radius", ("--radius", "0.25"), {"radius": 0.25}),  # the server's n0=20, n=200: as FAST's
])
def test_certificates_equal_densepure_certify(audit_server, digits, tmp_path, capsys, mode, cli_args, params):
    rows, records = certify_cli(tmp_path, capsys, *cli_args)
    images = digits[0]
    with Client(audit_server.url) as client:
        single = client.infer(images[[1]], mode=mode, seed=SEED, noise_id=1,
                              outputs=["label", "radius", "draws", "counts"], **params)
        batch = client.infer(images[[0, 1]], mode=mode, seed=SEED, noise_id=0,  # image j: noise id 0 + j
                             outputs=["label", "radius", "draws", "counts"], **params)
    assert single.parameters["seed"] == SEED and single.parameters["noise_id"] == 1  # a client's seed comes back
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
