"""Rewrites of converted TFLite files that LiteRT's int8 kernels need.

The TFLite form of the layers themselves (LayerNorm as ops that stay int8) is chosen in
:mod:`keras_vit.backends.tflite`, through the same switch as the fused CPU forms.
"""

from __future__ import annotations

import numpy as np

# Ops whose int8 output must carry their input's scale and zero point unchanged.
_PASS_THROUGH = ("RESHAPE", "TRANSPOSE")


def symmetric_matmul_operands(flatbuffer):
    """Full-integer TFLite bytes with every BATCH_MATMUL's right operand quantized symmetrically.

    XNNPACK runs an int8 BATCH_MATMUL only when its right operand has zero point 0;
    otherwise LiteRT's own slow kernel runs it (docs/performance.md has the profiles). The right operands (keys and values) come from a
    FULLY_CONNECTED through RESHAPE/TRANSPOSE, so the FULLY_CONNECTED can write them
    with zero point 0 and a scale that covers the same calibrated range
    (``max(|min|, |max|) / 127``: at most one bit of resolution less). Chains whose
    tensors feed anything else are left as they are.

    Args:
        flatbuffer: the converter's bytes of a full-integer model.

    Returns:
        ``(bytes, count)``: the model and how many operands were changed.
    """
    from ai_edge_litert.tools import flatbuffer_utils

    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(flatbuffer))
    graph = model.subgraphs[0]
    names = [flatbuffer_utils.opcode_to_name(model, op.opcodeIndex) for op in graph.operators]
    producer, consumers = {}, {}
    for index, op in enumerate(graph.operators):
        for tensor in op.outputs:
            producer[int(tensor)] = index
        for tensor in op.inputs:
            consumers.setdefault(int(tensor), []).append(index)
    changed = 0
    for index, op in enumerate(graph.operators):
        if names[index] != "BATCH_MATMUL":
            continue
        chain, ops_in_chain, tensor = [], {index}, int(op.inputs[1])
        while True:
            chain.append(tensor)
            source = producer.get(tensor)
            if source is None or names[source] not in _PASS_THROUGH:
                break
            ops_in_chain.add(source)
            tensor = int(graph.operators[source].inputs[0])
        if source is None or any(set(consumers.get(t, [])) - ops_in_chain for t in chain):
            continue
        quantization = graph.tensors[chain[0]].quantization
        if quantization is None or quantization.scale is None or len(quantization.scale) != 1:
            continue
        scale, zero_point = float(quantization.scale[0]), int(quantization.zeroPoint[0])
        if zero_point == 0 or graph.tensors[chain[0]].type != 9:  # already symmetric, or not int8
            continue
        bound = max((zero_point + 128) * scale, (127 - zero_point) * scale)
        for tensor in chain:
            graph.tensors[tensor].quantization.scale = np.asarray([bound / 127.0], np.float32)
            graph.tensors[tensor].quantization.zeroPoint = np.asarray([0], np.int64)
        changed += 1
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model)), changed
