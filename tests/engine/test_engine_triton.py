"""The engine with ``--kernels triton`` (Triton's interpreter on the CPU, compiled kernels on a GPU):
the same counts as with the torch references, for every mode, on the same noise identities."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from engine_helpers import CLASSES, SCHEDULE, PatchSign, micro_unet
from triton_env import kernel_device, prefer_interpreter, triton_kernels_or_skip

from densepure.diffusion import Mode, SmoothingConfig
from densepure.engine.backends import Backends, TorchClassifier, TorchDenoiser
from densepure.engine.engine import Engine, EngineConfig, ImageRequest
from densepure.engine.policy import FixedPolicy
from densepure.kernels import resolve_kernels
from densepure.models.classifiers import Classifier, Preprocess
from densepure.noise import NoisePhase

prefer_interpreter()


@pytest.mark.parametrize("mode,k,b", [pytest.param(Mode.DENSEPURE, 3, 2, marks=pytest.mark.slow),
                                      pytest.param(Mode.DENSEPURE, 2, 3, marks=pytest.mark.slow), (Mode.ONESTEP, 1, 1),
                                      (Mode.ONESTEP_DDS, 1, 1), (Mode.GAUSSIAN, 1, 1)])
def test_triton_kernels_give_the_torch_counts(mode, k, b):
    device = kernel_device()
    triton = triton_kernels_or_skip(device)
    unet, clf = micro_unet().to(device), Classifier(PatchSign(), Preprocess()).eval().to(device)
    torch.manual_seed(2)
    images = torch.rand(2, 3, 8, 8) * 0.2 + 0.4
    dense = mode is Mode.DENSEPURE
    smoothing = SmoothingConfig(mode, 0.5, k if dense else 1, b if dense else 1, schedule=SCHEDULE)
    phases = {NoisePhase.SELECTION: 3, NoisePhase.ESTIMATION: 10}
    counts = []
    for kernels in (resolve_kernels("torch", device), triton):
        backends = Backends(TorchDenoiser(unet), TorchClassifier(clf, CLASSES, (3, 8, 8)))
        config = EngineConfig(unet_rows=13, classifier_rows=7, draw_capacity=6, image_slots=2)
        engine = Engine(smoothing, backends, (3, 8, 8), device, config, kernels=kernels)
        assert engine.kernels is kernels
        requests = (ImageRequest(i, images[i], FixedPolicy(CLASSES, phases), 9, noise_id=i) for i in range(2))
        done = {r.key: r.policy.counts for r in engine.run(requests)}
        counts.append({i: [done[i][p].tolist() for p in phases] for i in range(2)})
    assert counts[0] == counts[1]
    assert sum(int(np.count_nonzero(c[1])) for c in counts[0].values()) >= 2, "labels must vary for a real test"


@pytest.mark.slow  # two certifications, one through Triton's interpreter: ~15 s of CPU
def test_certify_with_triton_kernels_gives_the_torch_certificates(tmp_path, capsys):
    """`densepure certify --kernels triton` (compiled on a GPU; on a CPU under Triton's interpreter, which
    prefer_interpreter above chose for this process) writes exactly the certificates and counts of
    `--kernels torch` for the same seed."""
    from densepure.cli import main
    from densepure.results.files import read_results, read_sidecar

    triton_kernels_or_skip(kernel_device())
    common = ["--max", "2", "--skip", "150", "--n0", "8", "--n", "24", "--K", "3", "--seed", "4",
              "--device", str(kernel_device())]
    out = {}
    for kernels in ("torch", "triton"):
        out[kernels] = tmp_path / f"{kernels}.tsv"
        code = main(["certify", *common, "--kernels", kernels, "--output", str(out[kernels])])
        err = capsys.readouterr().err
        assert code == 0, err[-2000:]
        assert f"kernels={kernels}" in err  # the run's one-line description: the kernels that ran
    rows = {k: [(r.idx, r.predict, r.radius) for r in read_results(p)] for k, p in out.items()}
    assert rows["torch"] == rows["triton"] and len(rows["torch"]) == 2
    counts = {k: {r.row.idx: (r.selection_counts, r.estimation_counts) for r in read_sidecar(p).records}
              for k, p in out.items()}
    assert counts["torch"] == counts["triton"]
    # exact with each other, so the kernels are not recorded: a run resumes under either
    assert "kernels" not in read_sidecar(out["triton"]).header.config
