"""Value types of ONNX graphs and the typing contract of fp16 graphs (on ``onnx.ModelProto``).

An fp16 graph is strongly typed (TensorRT 11 builds exactly the types it contains): convolutions and
matmuls compute in float16, while the ops of :data:`TYPING_POLICIES` that lose accuracy or overflow in
float16 (GroupNorm, softmax, the sinusoidal timestep embedding, the embedding Gemms; ALGORITHM §10)
compute in float32, and every graph input and output is float32. :func:`keep_in_float32` makes a
classifier graph obey it; :func:`typing_violations` checks any graph against it.

``onnx`` is imported inside the functions only.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from densepure.artifacts.manifest import ArtifactKind

ONNX_FLOAT, ONNX_FLOAT16 = 1, 10  # onnx.TensorProto.FLOAT / FLOAT16


@dataclass(frozen=True)
class TypingPolicy:
    """Op types whose compute type (that of their first input) is fixed in an fp16 graph."""

    float32_ops: frozenset[str]
    float16_ops: frozenset[str]


TYPING_POLICIES = {
    # Gemm in the UNet is only the timestep-embedding MLP and the per-block embedding projections.
    ArtifactKind.UNET: TypingPolicy(frozenset({"GroupNormalization", "Softmax", "Sin", "Cos", "Gemm"}),
                                    frozenset({"Conv", "MatMul"})),
    ArtifactKind.CLASSIFIER: TypingPolicy(frozenset({"GroupNormalization", "LayerNormalization", "Softmax"}),
                                          frozenset({"Conv", "MatMul", "Gemm"})),
}


@dataclass(frozen=True)
class OpTyping:
    op_type: str
    dtype: str  # compute type: that of the node's first input
    count: int


def tensor_types(model) -> dict[str, object]:
    """``TypeProto.Tensor`` (element type and shape) of every value, by shape inference on a weight-less
    copy (works for models over 2 GB and for models loaded without their external data)."""
    import onnx

    skeleton = onnx.ModelProto(ir_version=model.ir_version)
    skeleton.opset_import.extend(model.opset_import)
    skeleton.functions.extend(model.functions)
    g = skeleton.graph
    for field_name in ("node", "input", "output", "value_info"):
        getattr(g, field_name).extend(getattr(model.graph, field_name))
    for init in model.graph.initializer:
        stub = g.initializer.add()
        if init.data_location != onnx.TensorProto.EXTERNAL and init.ByteSize() <= 4096:
            stub.CopyFrom(init)  # small tensors may be shapes that inference needs the values of
        else:
            stub.name, stub.data_type = init.name, init.data_type
            stub.dims.extend(init.dims)
    inferred = onnx.shape_inference.infer_shapes(skeleton, data_prop=True)
    out = {}
    for init in model.graph.initializer:
        out[init.name] = onnx.helper.make_tensor_type_proto(init.data_type, list(init.dims)).tensor_type
    for vi in (*inferred.graph.input, *inferred.graph.output, *inferred.graph.value_info):
        out[vi.name] = vi.type.tensor_type
    return out


def value_types(model) -> dict[str, int]:
    """Element type (``onnx.TensorProto`` enum) of every value of ``model``."""
    return {name: t.elem_type for name, t in tensor_types(model).items()}


def keep_in_float32(model, op_types: Sequence[str]) -> int:
    """Compute every float16 node of ``op_types`` in float32: Cast its float16 inputs up and its outputs
    back down (TensorRT folds the Casts on weights). Returns the number of nodes wrapped."""
    from onnx import helper

    types, wanted = value_types(model), set(op_types)
    nodes, count = [], 0
    for node in model.graph.node:
        if node.op_type not in wanted or not node.input or types.get(node.input[0]) != ONNX_FLOAT16:
            nodes.append(node)
            continue
        for idx, name in enumerate(node.input):
            if name and types.get(name) == ONNX_FLOAT16:
                up = f"{name}/fp32_for_{node.name}"
                nodes.append(helper.make_node("Cast", [name], [up], name=f"{node.name}/cast_in{idx}", to=ONNX_FLOAT))
                node.input[idx] = up
        tail = []
        for idx, name in enumerate(node.output):
            # output 0 has the input's type by the ops' definitions, whatever inference managed to say
            if name and (idx == 0 or types.get(name) == ONNX_FLOAT16):
                node.output[idx] = f"{name}/fp32"
                tail.append(helper.make_node("Cast", [f"{name}/fp32"], [name], name=f"{node.name}/cast_out{idx}",
                                             to=ONNX_FLOAT16))
        nodes += [node, *tail]
        count += 1
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return count


def op_typing(model) -> tuple[OpTyping, ...]:
    """Counts of (op type, compute type) over the graph's nodes."""
    import onnx

    types = value_types(model)
    counts = Counter((n.op_type, onnx.TensorProto.DataType.Name(types.get(n.input[0], 0)) if n.input else "NONE")
                     for n in model.graph.node)
    return tuple(OpTyping(op, dt, c) for (op, dt), c in sorted(counts.items()))


def typing_violations(model, kind: ArtifactKind) -> list[str]:
    """Where an fp16 graph breaks :data:`TYPING_POLICIES` or its float32 boundary (empty: none)."""
    types, policy = value_types(model), TYPING_POLICIES[kind]
    bad = [f"graph {io} {vi.name} is not float32" for io, vis in (("input", model.graph.input),
                                                                  ("output", model.graph.output))
           for vi in vis if vi.type.tensor_type.elem_type != ONNX_FLOAT]
    for node in model.graph.node:
        got = types.get(node.input[0]) if node.input else None
        if node.op_type in policy.float32_ops and got != ONNX_FLOAT:
            bad.append(f"{node.op_type} {node.name} computes in type {got}, must be float32")
        elif node.op_type in policy.float16_ops and got != ONNX_FLOAT16:
            bad.append(f"{node.op_type} {node.name} computes in type {got}, must be float16")
    return bad
