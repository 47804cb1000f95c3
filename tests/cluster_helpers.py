"""Shared by the cluster tests (tests/distributed): small digits jobs and comparisons that ignore only the
wall time."""

from __future__ import annotations

import json
from pathlib import Path

from densepure.certify.job import JobOptions

# 6 digits test images, K=5 b=2, sigma=0.5 (labels move with the noise, so counts are not trivially equal)
COMMON = {"sigma": 0.5, "n0": 10, "n": 60, "num_chains": 5, "steps": 2, "device": "cpu", "seed": 11, "skip": 70,
          "max": 6}
ALSO = {"also_chains": (1, 3)}  # the default case: also the K=1 and K=3 files, so prefix counts are compared too
SEQUENTIAL = {**COMMON, "mode": "onestep", "num_chains": None, "steps": None, "n": 500, "radius": 0.25}  # looks 32..500


UNCOMPARED = ("time", "prev_sha256", "header_sha256")  # the wall time, and the chain over it (completion order)


def tsv_without_time(path: Path) -> list[str]:
    """The TSV's lines in file order, each without its time column: byte-identical runs give equal lists."""
    header, *lines = Path(path).read_text().split("\n")
    keep = [i for i, name in enumerate(header.split("\t")) if name != "time"]
    return [header] + ["\t".join(line.split("\t")[i] for i in keep) if line else line for line in lines]


def job_options(path: Path, **overrides) -> JobOptions:
    return JobOptions.build(**{**COMMON, **overrides}, output=str(path))


def certificates(path: Path) -> dict[int, tuple]:
    """idx -> (TSV line without its time, sidecar record without its time); fails if an image appears twice in
    either file (an image counted twice)."""
    header, *lines = Path(path).read_text().splitlines()
    keep = [i for i, name in enumerate(header.split("\t")) if name != "time"]  # certify and predict formats
    rows = {}
    for line in lines:
        fields = line.split("\t")
        assert int(fields[0]) not in rows, f"image {fields[0]} twice in {path}"
        rows[int(fields[0])] = tuple(fields[i] for i in keep)
    records = {}
    for line in Path(f"{path}.jsonl").read_text().splitlines():
        record = json.loads(line)
        if record["record"] == "image":
            assert record["idx"] not in records, f"image {record['idx']} twice in {path}.jsonl"
            records[record["idx"]] = json.dumps({k: v for k, v in record.items() if k not in UNCOMPARED}, sort_keys=True)
    assert rows.keys() == records.keys()
    return {idx: (rows[idx], records[idx]) for idx in rows}


def assert_same_certificates(path: Path, reference: Path, also: tuple[int, ...] = ()) -> None:
    got, want = certificates(path), certificates(reference)
    assert got == want
    for k in also:
        got, want = (Path(p).with_name(f"{Path(p).stem}.K{k}{Path(p).suffix}") for p in (path, reference))
        assert certificates(got) == certificates(want)
