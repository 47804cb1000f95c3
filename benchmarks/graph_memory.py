"""Memory an ONNX graph needs, read from the graph itself: its weights, and per batch row the largest
set of activations alive at once when the nodes run in the graph's (topological) order.

A value is alive from the node that makes it to the last node that reads it (graph outputs to the end).
Nodes whose inputs are all constant (a weight's DequantizeLinear, shape arithmetic) are folded, as every
runtime does: their outputs are weights, not activations. Shapes come from ONNX shape inference at batch 1 (the ``batch`` axis set to 1), bytes from each value's
element type (int8 tensors between Q and DQ count 1 byte). This is what an unfused runtime holds; TensorRT
fuses layers and reuses buffers, so its activation memory is at most this. Usage:
``python benchmarks/graph_memory.py GRAPH.onnx [...]``.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class GraphMemory:
    weights: int  # bytes of the initializers
    activations_per_row: int  # bytes of the largest live set at batch 1


def _bytes(tensor_type) -> int:
    from onnx import helper

    dims = [d.dim_value if d.HasField("dim_value") else 1 for d in tensor_type.shape.dim]
    return int(np.prod(dims, dtype=np.int64)) * np.dtype(helper.tensor_dtype_to_np_dtype(tensor_type.elem_type)).itemsize


def graph_memory(path: str | Path) -> GraphMemory:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    weights = 0
    for init in model.graph.initializer:
        dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(init.data_type))
        weights += int(np.prod(init.dims, dtype=np.int64)) * dtype.itemsize
    for vi in (*model.graph.input, *model.graph.output):
        for d in vi.type.tensor_type.shape.dim:
            if not d.HasField("dim_value"):
                d.dim_value = 1  # the batch axis: per row
    from densepure.export.onnx_typing import tensor_types

    types = tensor_types(model)
    initializers = {i.name for i in model.graph.initializer}
    last_use = {}
    for step, node in enumerate(model.graph.node):
        for name in node.input:
            last_use[name] = step
    for out in model.graph.output:
        last_use[out.name] = len(model.graph.node)
    live = {i.name: _bytes(i.type.tensor_type) for i in model.graph.input if i.name not in initializers}
    peak, constant = sum(live.values()), set(initializers)
    for step, node in enumerate(model.graph.node):
        if all(name in constant for name in node.input if name):  # weights' DQ, shape constants: folded
            constant.update(node.output)
            continue
        for name in node.output:
            if name and name in types:
                live[name] = _bytes(types[name])
        peak = max(peak, sum(live.values()))
        for name in [n for n in live if last_use.get(n, -1) <= step]:
            del live[name]
    return GraphMemory(weights, peak)


if __name__ == "__main__":
    for arg in sys.argv[1:]:
        m = graph_memory(arg)
        print(f"{arg}: weights {m.weights / 2**20:.1f} MiB, live activations {m.activations_per_row / 2**20:.2f} "
              "MiB per row")
