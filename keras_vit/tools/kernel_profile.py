"""Where a model step's time goes: the fused forms of :mod:`keras_vit.backends` against the
portable ones, timed in turn with the matmul peak, and milliseconds per TensorFlow op type
from TensorFlow's profiler (``scripts/compare_kernels.py``, ``scripts/profile_ops.py``)."""

from __future__ import annotations

import contextlib
import time
from typing import Dict

import numpy as np

from keras_vit.tools.benchmark_cases import matmul_runner, raw_step, time_interleaved

@contextlib.contextmanager
def _fused_without_xla():
    from keras_vit import backends

    with backends.fused_forms(), backends.without_xla():
        yield


def compare_fused_and_portable(
    mode: str = "inference", variant: str = "B/16", image_size: int = 224, batch: int = 8,
    dtype_policy: str = "float32", rounds: int = 8,
) -> Dict:
    """One model traced with :mod:`keras_vit.backends`'s fused forms and without them
    (the portable forms), and in training also under ``without_xla()``,
    each form timed in turn with the matmul peak.

    Returns images/s and the fraction of the matmul rate of each form (``result["forms"]``
    names them), on TensorFlow.
    """
    import keras
    import tensorflow as tf

    from keras_vit import backends

    step, images, labels, flops = raw_step(mode, variant, image_size, batch, dtype_policy)
    # Each form traced in its own context; "fused_without_xla" (training only) is the fused
    # kernels with the training GELU as plain TensorFlow ops rather than XLA loops.
    contexts = {"fused": backends.fused_forms}
    if mode == "training":
        contexts["fused_without_xla"] = _fused_without_xla
    contexts["portable"] = contextlib.nullcontext
    forms = {}
    for name, context in contexts.items():
        with context():
            forms[name] = tf.function(step)
            forms[name].get_concrete_function(images, labels)
    matmul, matmul_flops = matmul_runner(keras.DTypePolicy(dtype_policy).compute_dtype)
    *form_seconds, matmul_seconds = time_interleaved(
        [(lambda form=form: np.asarray(form(images, labels))) for form in forms.values()] + [matmul],
        min_seconds=0.0,
        min_calls=rounds,
    )
    peak = matmul_flops / matmul_seconds
    result = {"mode": mode, "variant": variant, "batch": batch, "dtype_policy": dtype_policy, "matmul_flops_per_second": peak}
    result["forms"] = list(forms)
    for name, seconds in zip(forms, form_seconds):
        result[name] = {"images_per_second": batch / seconds, "fraction_of_matmul_rate": batch * flops / seconds / peak}
    return result


def add_step_arguments(parser) -> None:
    """The flags that pick a model step (for ``scripts/compare_kernels.py`` and ``profile_ops.py``)."""
    parser.add_argument("--mode", default="inference", choices=["inference", "training"])
    parser.add_argument("--variant", default="B/16")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--dtype", default="float32", help="dtype policy, e.g. float32, mixed_bfloat16, bfloat16")


def kernel_times(function, *args) -> Dict:
    """``{"ms": wall time, "ops": {op type: {"ms", "calls"}}}`` of one call of
    ``function(*args)``, from TensorFlow's profiler (after one unprofiled call, so tracing
    is not counted).

    Executor bookkeeping events (whole steps, regions) are left out. With inter-op
    parallelism 1 each op's duration is its own; otherwise concurrent ops share the cores.
    XLA-compiled pieces appear as ``ExecuteAsyncOnStream``.
    """
    import collections
    import glob
    import re
    import tempfile

    import tensorflow as tf
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    function(*args)
    with tempfile.TemporaryDirectory() as logdir:
        tf.profiler.experimental.start(logdir)
        begin = time.perf_counter()
        function(*args)
        wall_ms = 1000 * (time.perf_counter() - begin)
        tf.profiler.experimental.stop()
        (path,) = glob.glob(f"{logdir}/plugins/profile/*/*.xplane.pb")
        space = xplane_pb2.XSpace()
        with open(path, "rb") as handle:
            space.ParseFromString(handle.read())
    milliseconds, calls = collections.Counter(), collections.Counter()
    bookkeeping = ("Run", "Process", "Start", "Done", "Record", "StartRegion", "StopRegion")
    for plane in space.planes:
        for line in plane.lines:
            for event in line.events:
                match = re.match(r".*:(\w+)$", plane.event_metadata[event.metadata_id].name)
                if match and match.group(1) not in bookkeeping:
                    milliseconds[match.group(1)] += event.duration_ps / 1e9
                    calls[match.group(1)] += 1
    return {"ms": wall_ms, "ops": {name: {"ms": ms, "calls": calls[name]} for name, ms in milliseconds.most_common()}}


def op_profile(mode: str = "inference", variant: str = "B/16", image_size: int = 224, batch: int = 8,
               dtype_policy: str = "float32") -> Dict:
    """Milliseconds per TensorFlow op type in one inference or training step (:func:`kernel_times`).

    Run it with ``tf.config.threading.set_inter_op_parallelism_threads(1)`` set first
    (``scripts/profile_ops.py`` does) so that ops run one at a time. Returns
    ``{"step_ms", "ops": {type: {"ms", "calls"}}}`` of the profiled step.
    """
    import tensorflow as tf

    from keras_vit import backends

    python_step, images, labels, _ = raw_step(mode, variant, image_size, batch, dtype_policy)
    step = tf.function(python_step)
    with backends.fused_forms():  # the step as training and prediction trace it
        step.get_concrete_function(images, labels)
    profile = kernel_times(lambda: np.asarray(step(images, labels)))
    return {"mode": mode, "variant": variant, "batch": batch, "dtype_policy": dtype_policy,
            "step_ms": profile["ms"], "ops": profile["ops"]}
