"""One decoder graph from two: ``decoder_model_merged.onnx``, as transformers.js loads it.

The decoder is exported once without a cache and once with one; the merged graph takes the inputs of
both plus ``use_cache_branch`` (bool, shape (1,)) and runs one of them as a branch of an ONNX ``If``
node (then: with the cache; else: without). Their weights are stored once, in the outer graph, where
both branches read them: initializers with equal contents are one tensor whatever their names.
"""

from __future__ import annotations

import hashlib
from typing import Any

USE_CACHE_BRANCH = "use_cache_branch"


def merge_decoders(without_past: Any, with_past: Any, output_shapes: dict[str, list[str | int]]) -> Any:
    """The merged ``ModelProto`` of two decoder ``ModelProto``s with the same outputs in the same order.

    output_shapes: the merged graph's output dimensions by output name (symbolic names or sizes): the
    branches give some outputs different shapes (the cache branch returns empty cross-attention
    tensors), so the merged outputs are declared here."""
    import onnx
    from onnx import helper

    if [o.name for o in without_past.graph.output] != [o.name for o in with_past.graph.output]:
        raise ValueError("the two decoder graphs must have the same outputs in the same order")
    initializers: dict[str, Any] = {}  # merged name -> tensor
    by_content: dict[bytes, str] = {}
    inputs: dict[str, Any] = {}
    branches = []
    for prefix, model in (("with_past", with_past), ("without_past", without_past)):
        renames: dict[str, str] = {}
        for tensor in model.graph.initializer:
            key = _content_key(tensor)
            if key not in by_content:
                name = tensor.name if tensor.name not in initializers else f"{prefix}/{tensor.name}"
                copy = onnx.TensorProto()
                copy.CopyFrom(tensor)
                copy.name = name
                initializers[name] = copy
                by_content[key] = name
            renames[tensor.name] = by_content[key]
        for value in model.graph.input:
            if value.name not in renames:
                inputs.setdefault(value.name, value)
                renames[value.name] = value.name
        branches.append(_branch(model.graph, prefix, renames))
    condition = helper.make_tensor_value_info(USE_CACHE_BRANCH, onnx.TensorProto.BOOL, [1])
    outputs = []
    for value in without_past.graph.output:
        elem_type = value.type.tensor_type.elem_type
        outputs.append(helper.make_tensor_value_info(value.name, elem_type, output_shapes[value.name]))
    node = helper.make_node(
        "If",
        [USE_CACHE_BRANCH],
        [o.name for o in outputs],
        name="optional_cache",
        then_branch=branches[0],
        else_branch=branches[1],
    )
    graph = helper.make_graph(
        [node], "decoder_model_merged", [*inputs.values(), condition], outputs, list(initializers.values())
    )
    merged = helper.make_model(graph, opset_imports=list(without_past.opset_import))
    merged.ir_version = without_past.ir_version
    merged.producer_name = without_past.producer_name
    merged.producer_version = without_past.producer_version
    return merged


def _content_key(tensor: Any) -> bytes:
    from onnx import numpy_helper

    array = numpy_helper.to_array(tensor)
    digest = hashlib.sha256(array.tobytes()).digest()
    return f"{tensor.data_type}:{list(tensor.dims)}:".encode() + digest


def _branch(graph: Any, prefix: str, renames: dict[str, str]) -> Any:
    """``graph``'s nodes as a subgraph: initializers and inputs become outer-scope names (``renames``),
    every other value is prefixed so that the two branches cannot collide."""
    from onnx import helper

    def rename(name: str) -> str:
        if not name:  # an omitted optional input
            return name
        return renames.get(name, f"{prefix}/{name}")

    nodes = []
    for node in _topological(graph.node):
        if any(a.type in (a.GRAPH, a.GRAPHS) for a in node.attribute):
            raise ValueError(f"node {node.name} holds a subgraph; the decoder graphs are not expected to")
        copy = helper.make_node(node.op_type, [rename(i) for i in node.input], [rename(o) for o in node.output])
        copy.name = f"{prefix}/{node.name}" if node.name else ""
        copy.domain = node.domain
        copy.attribute.extend(node.attribute)
        nodes.append(copy)
    outputs = []
    for value in graph.output:
        copy = type(value)()
        copy.CopyFrom(value)
        copy.name = rename(value.name)
        outputs.append(copy)
    return helper.make_graph(nodes, prefix, [], outputs)


def _topological(nodes: Any) -> list[Any]:
    """``nodes`` in an order where each comes after the nodes that make its inputs (a subgraph must
    be sorted; converters append the casts they insert at the end), otherwise in their order."""
    made_by = {name: i for i, node in enumerate(nodes) for name in node.output}
    done: set[int] = set()
    order: list[Any] = []

    def visit(index: int) -> None:
        stack = [(index, False)]
        while stack:
            i, expanded = stack.pop()
            if i in done:
                continue
            if expanded:
                done.add(i)
                order.append(nodes[i])
                continue
            stack.append((i, True))
            for name in reversed(nodes[i].input):
                j = made_by.get(name)
                if j is not None and j not in done:
                    stack.append((j, False))

    for index in range(len(nodes)):
        visit(index)
    return order
