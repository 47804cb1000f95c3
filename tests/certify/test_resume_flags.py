"""Issue 25, item 4: a resume refuses only what can change a label. Every setting that changes no count
(``_NOT_RECORDED``: batch size, kernels, Ray and its workers, look-ahead, ...) and the spelling of the device
(``auto`` and ``cpu`` on a CPU machine) resume each other's runs; the device type is recorded and compared,
because CPU and CUDA arithmetic round differently."""

from __future__ import annotations

import pytest

from densepure.certify.job import prepare, prepare_draft, run
from densepure.certify.options import _NOT_RECORDED, JobOptions
from densepure.errors import ConfigError
from densepure.results.files import read_results, sidecar_path
from densepure.results.writer import open_results

BASE = {"mode": "gaussian", "n": 40, "n0": 5, "skip": 60, "max": 3, "seed": 1, "device": "auto"}
# a value other than the default for every setting that is not recorded (output and overwrite name the file)
CHANGED = {"batch_size": 7, "plot": "elsewhere.png", "cache_dir": "/tmp/engines", "cuda_graphs": False,
           "kernels": "torch", "skip": 30, "max": 2, "ray": "local", "workers": 2, "split_draws": 2,
           "lookahead": False}
NEEDS = {"workers": {"ray": "local"}, "split_draws": {"ray": "local"}}


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    path = tmp_path_factory.mktemp("resume") / "r.tsv"
    options = JobOptions.build(**BASE, output=str(path))
    run(prepare(options))
    return options, path


def test_every_setting_that_is_not_recorded_has_a_case_here():
    assert set(_NOT_RECORDED) - {"output", "overwrite"} == set(CHANGED)


@pytest.mark.parametrize("name", sorted(CHANGED))
def test_a_run_resumes_under_every_setting_that_changes_no_label(finished, name):
    options, _ = finished
    prepare_draft(options.replace(**{name: CHANGED[name]}, **NEEDS.get(name, {})))  # raises if refused


def test_device_auto_and_cpu_resume_each_other(finished):
    options, path = finished
    prepare_draft(options.replace(device="cpu"))
    rows = [line.rsplit("\t", 1)[0] for line in path.read_text().splitlines()]
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:-1]))  # the last image lost: redone under other execution settings
    run(prepare(options.replace(device="cpu", kernels="torch", batch_size=7, lookahead=False)))
    assert [line.rsplit("\t", 1)[0] for line in path.read_text().splitlines()] == rows
    assert len(read_results(path)) == 3


def test_the_device_type_is_recorded_and_compared(finished, tmp_path):
    options, path = finished
    draft = prepare_draft(options)
    assert draft.record["device"] == "cpu" and "kernels" not in draft.record
    other = tmp_path / "cuda.tsv"
    with open_results(other, {**draft.record, "device": "cuda"}, draft.seed) as writer:
        writer.write(next(iter(_records(path))))
    with pytest.raises(ConfigError, match=r"device: 'cuda' -> 'cpu'"):
        prepare_draft(options.replace(output=str(other)))


def _records(path):
    from densepure.results.files import read_sidecar

    return read_sidecar(sidecar_path(path)).records
