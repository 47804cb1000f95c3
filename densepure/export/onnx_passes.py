"""Graph rewrites applied to every exported graph (on ``onnx.ModelProto``, in place) so that both
TensorRT and onnxruntime parse and run it well. Each returns how many nodes it changed; the count is
written into the artifact's manifest notes. ``onnx`` is imported inside the functions only.
"""

from __future__ import annotations

from densepure.export.onnx_typing import tensor_types


def _matmul_plan(equation: str) -> tuple[int, tuple[int, ...], tuple[int, ...]] | None:
    """For a batched-matmul einsum like ``bct,bcs->bts``: (index of the left operand, its permutation to
    (batch, rows, k), the right operand's permutation to (batch, k, cols)); None for other equations."""
    lhs, arrow, out = equation.replace(" ", "").partition("->")
    terms = lhs.split(",")
    if not arrow or len(terms) != 2 or any(len(t) != 3 or len(set(t)) != 3 for t in (*terms, out)):
        return None
    a, b = terms
    shared = set(a) & set(b)
    batch, contracted = shared & set(out), shared - set(out)
    only_a, only_b = set(a) - shared, set(b) - shared
    if len(batch) != 1 or len(contracted) != 1 or len(only_a) != 1 or len(only_b) != 1 or out[0] not in batch:
        return None
    (n,), (k,), (i,), (j,) = batch, contracted, only_a, only_b
    if out == n + i + j:
        return 0, tuple(a.index(ch) for ch in n + i + k), tuple(b.index(ch) for ch in n + k + j)
    if out == n + j + i:
        return 1, tuple(b.index(ch) for ch in n + j + k), tuple(a.index(ch) for ch in n + k + i)
    return None


def rewrite_einsum_as_matmul(model) -> int:
    """Replace two-operand batched-matmul Einsum nodes by (Transpose +) MatMul; returns how many.

    TensorRT and onnxruntime have tuned MatMul kernels in every precision; Einsum support is narrower.
    """
    from onnx import helper

    nodes, count = [], 0
    for node in model.graph.node:
        eq = next((a.s.decode() for a in node.attribute if a.name == "equation"), "")
        plan = _matmul_plan(eq) if node.op_type == "Einsum" and len(node.input) == 2 else None
        if plan is None:
            nodes.append(node)
            continue
        first, left_perm, right_perm = plan
        operands = []
        for side, (name, perm) in enumerate(((node.input[first], left_perm), (node.input[1 - first], right_perm))):
            if perm != (0, 1, 2):
                out = f"{node.output[0]}/operand{side}_t"
                nodes.append(helper.make_node("Transpose", [name], [out], name=f"{node.name}/transpose{side}",
                                              perm=list(perm)))
                name = out
            operands.append(name)
        nodes.append(helper.make_node("MatMul", operands, [node.output[0]], name=f"{node.name}/matmul"))
        count += 1
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return count


def drop_noop_antialias(model) -> int:
    """Clear ``antialias`` on Resize nodes that only upsample, where ONNX defines it to change nothing:
    TensorRT's ONNX parser (10.x) rejects antialias=1 outright (NVIDIA/TensorRT#3560). torch's
    antialiased bicubic keeps its cubic a=-0.5 and exclude_outside (that is what makes it differ from
    plain bicubic); for linear, exclude_outside is cleared too (no tap falls outside when upsampling).
    Returns the number of nodes changed."""
    values, changed = tensor_types(model), 0

    def dims(name: str) -> list[int | None]:
        t = values.get(name)
        return [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim] if t is not None else []

    for node in model.graph.node:
        aa = next((a for a in node.attribute if a.name == "antialias" and a.i), None)
        if node.op_type != "Resize" or aa is None:
            continue
        src, dst = dims(node.input[0]), dims(node.output[0])
        if len(src) < 3 or len(src) != len(dst):
            continue
        if all(a is not None and b is not None and b >= a for a, b in zip(src[2:], dst[2:], strict=True)):
            aa.i = 0
            changed += 1
            if any(a.name == "mode" and a.s == b"linear" for a in node.attribute):
                # linear taps never reach outside when upsampling; onnxruntime rejects exclude_outside here
                for a in node.attribute:
                    if a.name == "exclude_outside":
                        a.i = 0
    return changed
