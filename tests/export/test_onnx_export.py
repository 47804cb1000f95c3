"""ONNX export: graphs, fp16 typing (fp32 islands), onnxruntime numerics against torch and the golden data.

Exports are slow (torch's exporter traces symbolically: ~10 s per tiny UNet on a busy core), so each
graph is exported once per session into a shared directory; a second export of the same content is
reused through its manifest's export key (also what ``densepure export`` does when run again).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript", reason="torch's ONNX exporter needs onnxscript: pip install 'densepure[onnx]'")

from densepure.artifacts import ArtifactKind, ArtifactManifest, manifest_path_for, onnx_sha256
from densepure.errors import ArtifactError, ConfigError
from densepure.export import CheckStatus, export_classifier, export_command, export_unet, typing_violations
from densepure.export.onnx_passes import _matmul_plan, rewrite_einsum_as_matmul
from densepure.export.onnx_verify import run_onnxruntime_cpu
from densepure.models import UNetConfig, UNetModel
from densepure.models.classifiers import Classifier, InputRange, Preprocess, ResizeMode
from densepure.models.presets import Dataset, DiffusionPreset
from densepure.precision import Precision

FLOAT, FLOAT16 = onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16


from export_helpers import golden_export, tiny_classifier  # noqa: E402

# ------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def improved_report(golden_improved_export):
    return golden_improved_export  # exported once per session (tests/conftest.py)


@pytest.fixture(scope="module")
def guided_result(tmp_path_factory, guided_tiny):
    model, _ = guided_tiny
    return export_unet(model, tmp_path_factory.getbasetemp() / "shared-exports" / "guided-tiny-fp32.onnx")


def micro_unet() -> UNetModel:
    """A small UNet with every fp32 island (GroupNorm, attention softmax, time embedding), non-zero weights."""
    cfg = UNetConfig(image_size=8, in_channels=1, model_channels=32, num_res_blocks=1, attention_resolutions=(4,),
                     channel_mult=(1, 2), num_heads=2)
    torch.manual_seed(0)
    model = UNetModel(cfg).eval()
    with torch.no_grad():  # the output convs are zero-initialized (ALGORITHM §10): perturb everything
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


@pytest.fixture(scope="module")
def fp16_result(tmp_path_factory):
    return export_unet(micro_unet(), tmp_path_factory.mktemp("fp16") / "unet-fp16.onnx", Precision.FP16)


def _rel(got, want) -> float:
    return float(np.abs(np.asarray(got, np.float64) - want).max() / np.abs(want).max())


def _types(model: onnx.ModelProto) -> dict[str, int]:
    """Value types by onnx's own shape inference (independent of the exporter's helper)."""
    inferred = onnx.shape_inference.infer_shapes(model)
    types = {i.name: i.data_type for i in model.graph.initializer}
    for vi in (*inferred.graph.input, *inferred.graph.output, *inferred.graph.value_info):
        types[vi.name] = vi.type.tensor_type.elem_type
    return types


def _compute_types(model: onnx.ModelProto, op_type: str) -> set[int]:
    types = _types(model)
    return {types.get(n.input[0]) for n in model.graph.node if n.op_type == op_type}


@pytest.mark.slow  # the golden UNets' exports: ~20 s of CPU each
@pytest.mark.parametrize("which", ["improved", "guided"])
def test_unet_fp32_matches_torch_and_golden(which, request, improved_tiny, guided_tiny):
    if which == "improved":
        result = request.getfixturevalue("improved_report").results[0]
        model, data = improved_tiny
    else:
        result = request.getfixturevalue("guided_result")
        model, data = guided_tiny
    assert result.numerics.status is CheckStatus.PASSED and result.numerics.max_rel_error < 1e-4
    eps, v = run_onnxruntime_cpu(result.onnx_path, {"x": data["x"], "t": data["t"]})
    c = model.config.in_channels
    assert _rel(eps, data["out"][:, :c]) < 1e-4 and _rel(v, data["out"][:, c:]) < 1e-4

    graph = onnx.load(str(result.onnx_path))
    assert max(o.version for o in graph.opset_import if o.domain in ("", "ai.onnx")) >= 21
    ops = [n.op_type for n in graph.graph.node]
    assert ops.count("GroupNormalization") == sum(isinstance(m, nn.GroupNorm) for m in model.modules())
    assert "Einsum" not in ops and ops.count("MatMul") > 0
    dims = {vi.name: [d.dim_param or d.dim_value for d in vi.type.tensor_type.shape.dim]
            for vi in (*graph.graph.input, *graph.graph.output)}
    s = model.config.image_size
    assert dims == {"x": ["batch", c, s, s], "t": ["batch"], "eps": ["batch", c, s, s], "v": ["batch", c, s, s]}

    on_disk = ArtifactManifest.read(manifest_path_for(result.onnx_path))
    assert on_disk == result.manifest and on_disk.kind is ArtifactKind.UNET
    assert on_disk.onnx_sha256 == onnx_sha256(result.onnx_path)


@pytest.mark.slow  # a UNet export: ~10 s of CPU
def test_fp16_unet_keeps_fp32_islands(fp16_result):
    graph = onnx.load(str(fp16_result.onnx_path))
    assert _compute_types(graph, "GroupNormalization") == {FLOAT}
    assert _compute_types(graph, "Softmax") == {FLOAT}
    assert _compute_types(graph, "Sin") == {FLOAT} and _compute_types(graph, "Cos") == {FLOAT}
    assert _compute_types(graph, "Gemm") == {FLOAT}  # timestep-embedding MLP and projections
    assert _compute_types(graph, "Conv") == {FLOAT16} and _compute_types(graph, "MatMul") == {FLOAT16}
    assert all(vi.type.tensor_type.elem_type == FLOAT for vi in (*graph.graph.input, *graph.graph.output))
    assert typing_violations(graph, ArtifactKind.UNET) == []
    convs = sum(isinstance(m, nn.Conv1d | nn.Conv2d) for m in micro_unet().modules())
    assert fp16_result.count("Conv", "FLOAT16") == convs
    n = fp16_result.numerics
    if n.status is CheckStatus.SKIPPED:  # onnxruntime builds without fp16 CPU kernels: the reason is reported
        assert "float16" in n.skipped_reason
    else:
        assert n.status is CheckStatus.PASSED and n.max_rel_error < 3e-2 and n.max_rel_error_vs_fp32 < 3e-2


@pytest.mark.slow  # the guided and fp16 UNet exports
@pytest.mark.parametrize("which", ["guided_result", "fp16_result"])
def test_groupnorm_decomposition_for_old_tensorrt(which, request, tmp_path):
    """TensorRT < 10.9 cannot parse opset-21 GroupNormalization: the rewrite must not change the numbers."""
    from densepure.export.tensorrt_build import decompose_group_norm

    result = request.getfixturevalue(which)
    graph = onnx.load(str(result.onnx_path))
    groupnorms = sum(n.op_type == "GroupNormalization" for n in graph.graph.node)
    assert decompose_group_norm(graph) == groupnorms > 0
    ops = [n.op_type for n in graph.graph.node]
    assert "GroupNormalization" not in ops and ops.count("InstanceNormalization") == groupnorms
    onnx.checker.check_model(graph)
    onnx.save_model(graph, str(tmp_path / "decomposed.onnx"))
    feeds = {"x": np.random.default_rng(1).standard_normal(result.manifest.input("x").with_batch(2)).astype(np.float32),
             "t": np.array([5.0, 700.0], np.float32)}
    tol = 1e-5 if result.manifest.precision is Precision.FP32 else 5e-3  # fp16 trunk: an ulp flip is 1e-3
    for got, want in zip(run_onnxruntime_cpu(tmp_path / "decomposed.onnx", feeds),
                         run_onnxruntime_cpu(result.onnx_path, feeds), strict=True):
        assert _rel(got, want) < tol


@pytest.mark.slow  # the guided UNet's export: ~20 s of CPU
def test_typing_contract_flags_fp32_trunk(guided_result):
    bad = typing_violations(onnx.load(str(guided_result.onnx_path)), ArtifactKind.UNET)
    assert bad and any(b.startswith("Conv ") and "float16" in b for b in bad)


def test_classifier_preprocessing_inside_graph(improved_report):
    result = improved_report.results[1]
    assert result.manifest.kind is ArtifactKind.CLASSIFIER and result.numerics.max_rel_error < 1e-4
    graph = onnx.load(str(result.onnx_path))
    resize = [n for n in graph.graph.node if n.op_type == "Resize"]
    assert len(resize) == 1
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in resize[0].attribute}
    assert attrs["mode"] == b"cubic" and attrs.get("antialias", 0) == 0  # upsampling: antialias dropped
    clf = tiny_classifier()
    x = torch.rand(6, 3, 32, 32) * 2 - 1
    (logits,) = run_onnxruntime_cpu(result.onnx_path, {"x": x.numpy()})
    with torch.no_grad():
        assert _rel(logits, clf(x).numpy()) < 1e-4


@pytest.mark.slow
def test_classifier_downsampling_keeps_antialias(tmp_path):
    net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 4))
    clf = Classifier(net, Preprocess(InputRange.MINUS_ONE_ONE, 8, ResizeMode.BILINEAR, True, (0.1,) * 3, (0.9,) * 3))
    result = export_classifier(clf, (3, 16, 16), tmp_path / "down.onnx")
    assert result.numerics.max_rel_error < 1e-4
    assert any("antialias" in note for note in result.manifest.notes)


@pytest.mark.slow
def test_fp16_classifier_wraps_norms_and_softmax(tmp_path):
    class Gate(nn.Module):
        def forward(self, x):
            return x * torch.softmax(x, dim=1)

    torch.manual_seed(3)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.GroupNorm(2, 8), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                        nn.Flatten(), nn.LayerNorm(8), Gate(), nn.Linear(8, 5))
    clf = Classifier(net, Preprocess(InputRange.ZERO_ONE, 12, ResizeMode.BILINEAR, True, (0.5,) * 3, (0.5,) * 3))
    result = export_classifier(clf, (3, 8, 8), tmp_path / "clf-fp16.onnx", Precision.FP16)
    graph = onnx.load(str(result.onnx_path))
    for op in ("GroupNormalization", "LayerNormalization", "Softmax"):
        assert _compute_types(graph, op) == {FLOAT}, op
    assert _compute_types(graph, "Conv") == {FLOAT16} and _compute_types(graph, "Gemm") == {FLOAT16}
    assert result.numerics.status is CheckStatus.PASSED and result.numerics.max_rel_error < 3e-2


def test_matmul_plans():
    assert _matmul_plan("bct,bcs->bts") == (0, (0, 2, 1), (0, 1, 2))
    assert _matmul_plan("bts,bcs->bct") == (1, (0, 1, 2), (0, 2, 1))
    assert _matmul_plan("bij,bjk->bik") == (0, (0, 1, 2), (0, 1, 2))
    for eq in ("ij,jk->ik", "bct,bcs->bst,", "bii,bij->bj", "bct,bcs->tbs", "b...c,bcs->bs", "bct,bcs"):
        assert _matmul_plan(eq) is None, eq


@pytest.mark.parametrize("equation,a_shape,b_shape,y_shape", [("bct,bcs->bts", (2, 4, 5), (2, 4, 3), (2, 5, 3)),
                                                              ("bts,bcs->bct", (2, 5, 3), (2, 4, 3), (2, 4, 5))])
def test_einsum_rewrite_is_exact(tmp_path, equation, a_shape, b_shape, y_shape):
    from onnx import helper

    node = helper.make_node("Einsum", ["a", "b"], ["y"], name="e", equation=equation)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("a", FLOAT, a_shape),
                                            helper.make_tensor_value_info("b", FLOAT, b_shape)],
                              [helper.make_tensor_value_info("y", FLOAT, y_shape)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)
    assert rewrite_einsum_as_matmul(model) == 1
    assert "Einsum" not in [n.op_type for n in model.graph.node]
    onnx.checker.check_model(model)
    onnx.save_model(model, str(tmp_path / "m.onnx"))
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal(a_shape).astype(np.float32), rng.standard_normal(b_shape).astype(np.float32)
    (y,) = run_onnxruntime_cpu(tmp_path / "m.onnx", {"a": a, "b": b})
    np.testing.assert_allclose(y, np.einsum(equation, a, b), rtol=1e-5, atol=1e-5)


def test_external_data_and_content_hash(tmp_path):
    torch.manual_seed(5)
    net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 40), nn.ReLU(), nn.Linear(40, 3))  # 7.5 KiB of weights
    clf = Classifier(net, Preprocess(InputRange.ZERO_ONE, None, ResizeMode.NEAREST, False, (0.5,) * 3, (0.2,) * 3))
    result = export_classifier(clf, (3, 4, 4), tmp_path / "big.onnx", external_data_threshold=0)
    data_file = tmp_path / "big.onnx.data"
    assert result.manifest.external_data == ("big.onnx.data",) and data_file.stat().st_size > 0
    assert result.numerics.max_rel_error < 1e-4  # checker and onnxruntime read the weights beside the graph
    before = onnx_sha256(result.onnx_path, result.manifest.external_data)
    assert before == result.manifest.onnx_sha256
    with open(data_file, "r+b") as f:  # same size, different weights: the hash must see it
        first = f.read(1)
        f.seek(0)
        f.write(bytes([first[0] ^ 0xFF]))
    assert onnx_sha256(result.onnx_path, result.manifest.external_data) != before


@pytest.mark.slow
def test_reuse_is_by_content(tmp_path):
    def linear() -> Classifier:
        torch.manual_seed(11)
        return Classifier(nn.Sequential(nn.Flatten(), nn.Linear(12, 3)), Preprocess(InputRange.MINUS_ONE_ONE))

    path = tmp_path / "clf.onnx"
    first = export_classifier(linear(), (3, 2, 2), path)
    again = export_classifier(linear(), (3, 2, 2), path)
    assert not first.reused and again.reused and again.manifest.onnx_sha256 == first.manifest.onnx_sha256
    path.write_bytes(path.read_bytes() + b"\0")  # edited on disk: no longer the recorded content
    assert not export_classifier(linear(), (3, 2, 2), path).reused
    other = linear()
    with torch.no_grad():
        other.network[-1].bias.add_(1.0)  # other weights: another export key
    changed = export_classifier(other, (3, 2, 2), path)
    assert not changed.reused and changed.manifest.export_key != first.manifest.export_key


def test_export_report_and_reuse_of_command(tmp_path_factory, improved_tiny, improved_report):
    again = golden_export(tmp_path_factory, *improved_tiny, "golden-improved-tiny")
    assert all(r.reused for r in again.results)
    lines = again.lines()
    assert len(lines) == 2 and "unet" in lines[0] and "up to date" in lines[0] and "classifier" in lines[1]
    source = again.results[0].manifest.source
    assert source.preset == "golden-improved-tiny" and len(source.checkpoint_sha256) == 64


def test_bad_requests(tmp_path, improved_tiny):
    model, _ = improved_tiny
    with pytest.raises(ConfigError, match="opset"):
        export_unet(model, tmp_path / "u.onnx", opset=20)
    with pytest.raises(ConfigError, match="Classifier"):
        export_classifier(nn.Linear(3, 2), (3, 4, 4), tmp_path / "c.onnx")
    with pytest.raises(ConfigError, match="nothing to export"):
        export_command(DiffusionPreset("p", {"image_size": 8}, Dataset.DIGITS, "x.pt"), None, tmp_path, unet=False)
    with pytest.raises(ArtifactError, match="manifest not found"):
        ArtifactManifest.read(tmp_path / "none.onnx.manifest.json")


def _linear_classifier() -> Classifier:
    torch.manual_seed(11)
    return Classifier(nn.Sequential(nn.Flatten(), nn.Linear(12, 3)), Preprocess(InputRange.MINUS_ONE_ONE))


@pytest.mark.slow  # two exports
@pytest.mark.parametrize("opset", [21, 22])
def test_the_manifest_records_the_opset_in_the_graph(tmp_path, opset):
    """manifest.opset is the ai.onnx opset the written graph declares (read back from the file)."""
    from densepure.export.onnx_export import graph_opset

    result = export_classifier(_linear_classifier(), (3, 2, 2), tmp_path / "clf.onnx", opset=opset)
    in_graph = graph_opset(onnx.load(str(result.onnx_path)))
    assert in_graph == opset and result.manifest.opset == in_graph
    assert ArtifactManifest.read(manifest_path_for(result.onnx_path)).opset == in_graph


@pytest.mark.slow
def test_a_graph_with_another_opset_than_requested_is_refused(tmp_path, monkeypatch):
    """An exporter that writes another opset than asked: refused, and neither graph nor manifest is installed."""
    import densepure.export.onnx_export as onnx_export

    trace = onnx_export._trace

    def other_opset(*args):
        proto = trace(*args)
        for entry in proto.opset_import:
            if entry.domain in ("", "ai.onnx"):
                entry.version += 1
        return proto

    monkeypatch.setattr(onnx_export, "_trace", other_opset)
    path = tmp_path / "clf.onnx"
    with pytest.raises(ArtifactError, match="the exporter wrote opset 22, not the requested 21; nothing was installed"):
        export_classifier(_linear_classifier(), (3, 2, 2), path, opset=21)
    assert list(tmp_path.iterdir()) == []  # no graph, no manifest, no staging left behind
