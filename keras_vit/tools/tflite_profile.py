"""Where a TFLite (LiteRT) model's time goes: milliseconds per operator type.

The Python LiteRT interpreter has no per-op profiler, so each operator of the graph is cut
out into a one-op model (its constant inputs kept, its other inputs fed the values they
take in one run of the whole model, integer ones as constants so that every shape is
static) and timed alone in the interpreter with its default XNNPACK delegate, at one
thread by the CPU time of the calling thread (robust on a shared machine). The sum over operators comes close to the whole model's latency (printed beside
it), and ``xnnpack`` says whether XNNPACK took the op or LiteRT's own kernel ran it.

    python scripts/benchmark_export.py --profile model_int8.tflite --threads 1
"""

from __future__ import annotations

import copy
import time
from collections import defaultdict

import numpy as np


def _median_ms(function, runs, warmup=2, clock=time.perf_counter):
    for _ in range(warmup):
        function()
    times = []
    for _ in range(runs):
        begin = clock()
        function()
        times.append(clock() - begin)
    return 1000.0 * float(np.median(times))


def _feed(interpreter, rng, values=None):
    for position, details in enumerate(interpreter.get_input_details()):
        if values is not None:
            interpreter.set_tensor(details["index"], values[position])
            continue
        dtype, shape = details["dtype"], details["shape"]
        if np.issubdtype(dtype, np.floating):
            value = rng.uniform(-1, 1, shape).astype(dtype)
        elif dtype in (np.int8, np.uint8, np.int16):
            info = np.iinfo(dtype)
            value = rng.integers(info.min, info.max + 1, shape).astype(dtype)
        else:  # indices and shapes: zeros are always in range
            value = np.zeros(shape, dtype)
        interpreter.set_tensor(details["index"], value)


def model_latency_ms(path_or_bytes, threads=1, runs=20, inputs=None):
    """Median latency (ms) of a TFLite model on ``inputs`` (random when None), batch as stored.

    At one thread the interpreter computes on the calling thread, so the time is that
    thread's CPU time, which other jobs on a shared machine do not inflate; otherwise wall time.
    """
    from ai_edge_litert.interpreter import Interpreter

    key = "model_content" if isinstance(path_or_bytes, (bytes, bytearray)) else "model_path"
    interpreter = Interpreter(**{key: path_or_bytes if key == "model_content" else str(path_or_bytes)}, num_threads=threads)
    interpreter.allocate_tensors()
    _feed(interpreter, np.random.default_rng(0), inputs)
    return _median_ms(interpreter.invoke, runs, clock=time.thread_time if threads == 1 else time.perf_counter)


_INDEX_TYPES = (2, 4)  # TensorType INT32, INT64: shapes and indices


def _one_op_model(model, index, value_of):
    """A model holding only operator ``index`` of the first subgraph (bytes), and the
    original indices of its inputs. Integer inputs (shapes, indices) become constants
    holding ``value_of(tensor)``, so that every shape is static as in the whole model."""
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_litert.tools import flatbuffer_utils

    graph = model.subgraphs[0]
    operator = graph.operators[index]
    single = schema.ModelT()
    single.version = model.version
    single.operatorCodes = model.operatorCodes
    single.description = b"one op"
    single.buffers = [schema.BufferT()]
    sub = schema.SubGraphT()
    sub.tensors, sub.inputs, sub.outputs = [], [], []
    remap = {}

    def add(tensor_index, is_output):
        if tensor_index < 0:
            return -1
        if tensor_index in remap:
            return remap[tensor_index]
        tensor = copy.copy(graph.tensors[tensor_index])
        buffer = model.buffers[tensor.buffer]
        constant = buffer.data is not None and len(buffer.data) > 0
        if not constant and not is_output and tensor.type in _INDEX_TYPES:
            buffer = schema.BufferT()
            buffer.data = np.frombuffer(np.ascontiguousarray(value_of(tensor_index)).tobytes(), np.uint8)
            constant = True
        single.buffers.append(buffer if constant else schema.BufferT())
        tensor.buffer = len(single.buffers) - 1
        if not constant:  # the shape of the run, not the file's placeholder for dynamic ones
            tensor.shape = np.asarray(np.shape(value_of(tensor_index)), np.int32)
        tensor.shapeSignature = None
        remap[tensor_index] = len(sub.tensors)
        sub.tensors.append(tensor)
        if not constant and not is_output:
            sub.inputs.append(remap[tensor_index])
        return remap[tensor_index]

    new = copy.copy(operator)
    new.inputs = [add(int(i), False) for i in operator.inputs]
    new.outputs = [add(int(i), True) for i in operator.outputs]
    new.intermediates = [add(int(i), True) for i in (operator.intermediates if operator.intermediates is not None else [])]
    sub.outputs = list(new.outputs)
    inputs = [original for original, position in sorted(remap.items(), key=lambda item: item[1]) if position in sub.inputs]
    sub.operators = [new]
    single.subgraphs = [sub]
    single.signatureDefs = []
    return bytes(flatbuffer_utils.convert_object_to_bytearray(single)), inputs


def _delegated(content, threads):
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=content, num_threads=threads)
    interpreter.allocate_tensors()  # the default delegate takes its nodes here
    return any("delegate" in op["op_name"].lower() for op in interpreter._get_ops_details())


def op_profile(path, threads=1, runs=20):
    """Per-operator-type time of a TFLite model, each op timed alone (see the module doc).

    Args:
        path: the ``.tflite`` file.
        threads: interpreter threads.
        runs: timed runs per op (median).

    Returns:
        ``{"model_ms", "ops_ms" (the sum), "ops": {type: {"ms", "calls", "xnnpack"}}}``,
        types sorted by time, most first. ``xnnpack`` counts the calls XNNPACK ran.
    """
    from ai_edge_litert.tools import flatbuffer_utils

    from ai_edge_litert.interpreter import Interpreter

    model = flatbuffer_utils.read_model(str(path))
    graph = model.subgraphs[0]
    # One run of the whole model gives every op real inputs (shapes computed in the graph).
    whole = Interpreter(model_path=str(path), experimental_preserve_all_tensors=True)
    whole.allocate_tensors()
    _feed(whole, np.random.default_rng(0))
    whole.invoke()
    ops = defaultdict(lambda: {"ms": 0.0, "calls": 0, "xnnpack": 0})
    for index, operator in enumerate(graph.operators):
        name = flatbuffer_utils.opcode_to_name(model, operator.opcodeIndex)
        content, inputs = _one_op_model(model, index, whole.get_tensor)
        entry = ops[name]
        entry["ms"] += model_latency_ms(content, threads, runs, [whole.get_tensor(i) for i in inputs])
        entry["calls"] += 1
        entry["xnnpack"] += int(_delegated(content, threads))
    ordered = dict(sorted(ops.items(), key=lambda item: -item[1]["ms"]))
    return {
        "model_ms": model_latency_ms(path, threads, runs),
        "ops_ms": sum(op["ms"] for op in ordered.values()),
        "ops": ordered,
    }


def format_profile(profile, title=""):
    """A Markdown table of :func:`op_profile`'s result."""
    lines = [
        f"{title} model {profile['model_ms']:.2f} ms, sum of ops alone {profile['ops_ms']:.2f} ms".strip(),
        "",
        "| op | ms | share | calls | on XNNPACK |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, op in profile["ops"].items():
        lines.append(
            f"| {name} | {op['ms']:.2f} | {op['ms'] / max(profile['ops_ms'], 1e-9):.0%} | {op['calls']} | {op['xnnpack']}/{op['calls']} |"
        )
    return "\n".join(lines)
