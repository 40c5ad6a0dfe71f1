"""Throughput and memory of keras_vit (and, where installed, its peers) on this machine.

Every case runs in a fresh child process, so that its peak memory is its own and the
backend (``KERAS_BACKEND``) can differ between cases of one run. The figures reported:
images per second of inference and of a full training step (forward, backward, optimizer),
the FLOP rate that corresponds to (model FLOPs from :func:`keras_vit.core.models.forward_flops`;
a training step counted as 3x the forward pass), the machine's own matrix-multiply rate in
the same dtype measured in the same run, the fraction achieved, and the peak resident memory.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import subprocess
import sys
import time
from typing import Dict, List, Optional

import numpy as np

MATMUL_SIZE = 2048


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux reports KiB


def _time_interleaved(functions, min_seconds: float, min_calls: int = 3, warmup: int = 2) -> List[float]:
    """Median seconds per call of each function (at least ``min_calls`` rounds and
    ``min_seconds`` in all), called in turn, round after round.

    The machine's speed drifts (a shared VM): timing a model and the matmul peak in
    alternation gives their ratio under the same conditions. Within a round each function
    runs about as long as the slowest one (a 50 ms matmul repeated to match a 3 s training
    step), so that both sample the same stretches of time equally.
    """
    for _ in range(warmup):
        for function in functions:
            function()
    single = []
    for function in functions:
        begin = time.perf_counter()
        function()
        single.append(max(time.perf_counter() - begin, 1e-6))
    repeats = [int(min(50, max(1, round(max(single) / seconds)))) for seconds in single]
    durations = [[] for _ in functions]
    start = time.perf_counter()
    while len(durations[0]) < min_calls or time.perf_counter() - start < min_seconds:
        for function, count, record in zip(functions, repeats, durations):
            begin = time.perf_counter()
            for _ in range(count):
                function()
            record.append((time.perf_counter() - begin) / count)
    return [float(np.median(record)) for record in durations]


# --------------------------------------------------------------------------- cases
def matmul_runner(dtype: str = "float32", size: int = MATMUL_SIZE):
    """A function computing one (n, n) x (n, n) product on the current backend, and its FLOPs."""
    import keras

    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        a = tf.random.normal((size, size), dtype=tf.float32)
        a = tf.cast(a, dtype)
        product = tf.function(lambda: tf.linalg.matmul(a, a))
        run = lambda: product().numpy()  # noqa: E731  (forces completion)
    elif backend == "jax":
        import jax
        import jax.numpy as jnp

        a = jnp.asarray(np.random.default_rng(0).normal(size=(size, size)), dtype=dtype)
        product = jax.jit(lambda x: x @ x)
        run = lambda: product(a).block_until_ready()  # noqa: E731
    else:
        import torch

        a = torch.randn(size, size).to(getattr(torch, dtype))
        run = lambda: torch.matmul(a, a)  # noqa: E731
    return run, 2 * size**3


def matmul_case(dtype: str = "float32", size: int = MATMUL_SIZE, min_seconds: float = 3.0) -> Dict:
    """FLOP/s of an (n, n) x (n, n) product on the current backend: the machine's peak."""
    import keras

    run, flops = matmul_runner(dtype, size)
    (seconds,) = _time_interleaved([run], min_seconds)
    return {"case": "matmul", "backend": keras.backend.backend(), "dtype": dtype, "size": size, "flops_per_second": flops / seconds}


def _build(variant, image_size, dtype_policy, num_classes=1000):
    import keras

    import keras_vit
    from keras_vit.core.models import forward_flops

    keras.mixed_precision.set_global_policy(dtype_policy)
    model = keras_vit.ViT(variant, image_size=image_size, num_classes=num_classes)
    return model, forward_flops(model)


def _random_batch(batch: int, image_size: int):
    """Seeded images in [-1, 1] and labels of 1000 classes (numpy), the same in every case."""
    rng = np.random.default_rng(0)
    return rng.uniform(-1, 1, (batch, image_size, image_size, 3)).astype("float32"), rng.integers(0, 1000, batch)


def model_case(
    mode: str,
    variant: str,
    image_size: int = 224,
    batch: int = 8,
    dtype_policy: str = "float32",
    jit_compile: bool = False,
    min_seconds: float = 10.0,
    peer: Optional[str] = None,
) -> Dict:
    """Inference (``mode="inference"``) or training-step throughput of keras_vit's model,
    or of a peer's (``peer="keras_hub"``) at the same variant; FLOPs are keras_vit's count."""
    import keras

    from keras_vit.training import optimizers

    if peer is None:
        model, flops = _build(variant, image_size, dtype_policy)
        name = f"keras_vit ViT-{variant}"
    else:
        from keras_vit.zoo import variant_forward_flops

        if not peer_installed(peer):
            raise ValueError(f"Peer {peer!r} is not installed here (pip install keras-hub).")
        keras.mixed_precision.set_global_policy(dtype_policy)
        model, name = _keras_hub_vit(variant, image_size)
        flops = variant_forward_flops(variant, image_size)
    images, labels = _random_batch(batch, image_size)
    if mode == "inference":
        model.compile(jit_compile=jit_compile)
        run = lambda: model.predict_on_batch(images)  # noqa: E731
        flops_per_image = flops
    elif mode == "training":
        model.compile(
            optimizer=optimizers.AdamW(1e-4),  # peers too: the same update, only the model differs
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            jit_compile=jit_compile,
        )
        run = lambda: model.train_on_batch(images, labels)  # noqa: E731
        flops_per_image = 3 * flops
    else:
        raise ValueError(f"Unknown mode {mode!r}; expected 'inference' or 'training'.")
    # The fraction's denominator: the same-dtype matmul peak, timed in alternation with
    # the model in this process, so that both see the same machine.
    compute_dtype = keras.DTypePolicy(dtype_policy).compute_dtype
    matmul, matmul_flops = matmul_runner(compute_dtype)
    seconds, matmul_seconds = _time_interleaved([run, matmul], min_seconds, min_calls=5)
    peak = matmul_flops / matmul_seconds
    return {
        "case": mode,
        "model": name,
        "backend": keras.backend.backend(),
        "image_size": image_size,
        "batch": batch,
        "dtype_policy": dtype_policy,
        "jit_compile": jit_compile,
        "images_per_second": batch / seconds,
        "flops_per_second": batch * flops_per_image / seconds,
        "seconds_per_batch": seconds,
        "matmul_flops_per_second": peak,
        "fraction_of_matmul_rate": batch * flops_per_image / seconds / peak,
    }


def speedup_case(
    variant: str = "B/16",
    image_size: int = 224,
    batch: int = 8,
    dtype_policies=("bfloat16", "mixed_bfloat16"),
    min_seconds: float = 20.0,
) -> Dict:
    """Inference speed-up of each lower-precision policy over keras_vit's own float32.

    The float32 model, one model per policy and the matmuls of both compute dtypes are
    timed in alternation in this one process, so that the ratios compare the same
    stretches of a drifting machine (separate cases, minutes apart, swing them by 10%).
    ``matmul_speedup`` is the hardware's own ratio for the same dtypes: the bound on what
    a model whose time is mostly matmuls can gain.
    """
    import keras

    policies = ["float32", *dtype_policies]
    images, _ = _random_batch(batch, image_size)
    runs = []
    for policy in policies:
        model, _ = _build(variant, image_size, policy)
        model.compile()
        runs.append(lambda model=model: model.predict_on_batch(images))
    keras.mixed_precision.set_global_policy("float32")
    compute_dtypes = list(dict.fromkeys(keras.DTypePolicy(policy).compute_dtype for policy in policies))
    matmuls = [matmul_runner(dtype)[0] for dtype in compute_dtypes]
    seconds = _time_interleaved(runs + matmuls, min_seconds, min_calls=5)
    model_seconds, matmul_seconds = dict(zip(policies, seconds)), dict(zip(compute_dtypes, seconds[len(runs):]))
    result = {
        "case": "speedup",
        "model": f"keras_vit ViT-{variant}",
        "backend": keras.backend.backend(),
        "image_size": image_size,
        "batch": batch,
        "images_per_second": {policy: batch / model_seconds[policy] for policy in policies},
        "speedup": {},
        "matmul_speedup": {},
    }
    for policy in dtype_policies:
        dtype = keras.DTypePolicy(policy).compute_dtype
        result["speedup"][policy] = model_seconds["float32"] / model_seconds[policy]
        result["matmul_speedup"][policy] = matmul_seconds["float32"] / matmul_seconds[dtype]
    return result


def _raw_step(mode: str, variant: str, image_size: int, batch: int, dtype_policy: str):
    """(step(images, labels) as a Python function, images, labels, FLOPs per image) for a
    bare inference call or a training step (forward, backward, AdamW) without Keras's fit."""
    import keras
    import tensorflow as tf

    from keras_vit.training import optimizers

    model, flops = _build(variant, image_size, dtype_policy)
    images, labels = (tf.constant(array) for array in _random_batch(batch, image_size))
    if mode == "inference":
        def step(x, y):
            return model(x, training=False)

        return step, images, labels, flops
    if mode != "training":
        raise ValueError(f"Unknown mode {mode!r}; expected 'inference' or 'training'.")
    optimizer = optimizers.AdamW(1e-4)
    optimizer.build(model.trainable_variables)
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    def step(x, y):
        with tf.GradientTape() as tape:
            loss = loss_fn(y, model(x, training=True))
        optimizer.apply_gradients(zip(tape.gradient(loss, model.trainable_variables), model.trainable_variables))
        return loss

    return step, images, labels, 3 * flops


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

    step, images, labels, flops = _raw_step(mode, variant, image_size, batch, dtype_policy)
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
    *form_seconds, matmul_seconds = _time_interleaved(
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

    python_step, images, labels, _ = _raw_step(mode, variant, image_size, batch, dtype_policy)
    step = tf.function(python_step)
    with backends.fused_forms():  # the step as training and prediction trace it
        step.get_concrete_function(images, labels)
    profile = kernel_times(lambda: np.asarray(step(images, labels)))
    return {"mode": mode, "variant": variant, "batch": batch, "dtype_policy": dtype_policy,
            "step_ms": profile["ms"], "ops": profile["ops"]}

PEERS = ("keras_hub",)


def peer_installed(peer: str) -> bool:
    """Whether a peer implementation can be imported here."""
    import importlib.util

    if peer not in PEERS:
        raise ValueError(f"Unknown peer {peer!r}; expected one of {list(PEERS)}.")
    return importlib.util.find_spec(peer) is not None


def _keras_hub_vit(variant, image_size, num_classes=1000):
    # keras-hub's own ViT, at the same width, depth and heads as keras_vit's variant.
    import keras_hub

    from keras_vit.core.config import decode_variant

    spec = decode_variant(variant)
    backbone = keras_hub.models.ViTBackbone(
        image_shape=(image_size, image_size, 3),
        patch_size=spec.patch_size[0],
        num_layers=spec.num_layers,
        num_heads=spec.num_heads,
        hidden_dim=spec.hidden_size,
        mlp_dim=spec.mlp_dim,
    )
    model = keras_hub.models.ViTImageClassifier(backbone, num_classes=num_classes, activation=None)
    return model, f"keras_hub {keras_hub.__version__} ViTImageClassifier ViT-{variant}"


def pipeline_case(image_size: int = 224, batch: int = 32, num_images: int = 256, min_seconds: float = 10.0) -> Dict:
    """Images/s of the training input pipeline reading JPEG files (decode, crop, flip, batch)."""
    import tempfile

    import tensorflow as tf

    from keras_vit import data

    with tempfile.TemporaryDirectory() as folder:
        write_jpeg_folder(folder, num_images, size=int(image_size * 1.15))
        dataset = data.image_folder_dataset(folder, image_size=image_size, batch_size=batch, training=True)
        if isinstance(dataset, tuple):
            dataset = dataset[0]
        dataset = dataset.repeat()
        iterator = iter(dataset)
        next(iterator)
        (seconds,) = _time_interleaved([lambda: next(iterator)], min_seconds, min_calls=10, warmup=3)
    del tf
    return {"case": "pipeline", "image_size": image_size, "batch": batch, "images_per_second": batch / seconds}


def write_jpeg_folder(folder: str, num_images: int, size: int = 256, num_classes: int = 4) -> None:
    """Writes ``num_images`` photo-like JPEGs (smooth noise) into class sub-folders."""
    import tensorflow as tf

    rng = np.random.default_rng(0)
    for i in range(num_images):
        label = f"class_{i % num_classes}"
        os.makedirs(os.path.join(folder, label), exist_ok=True)
        coarse = rng.uniform(0, 255, (size // 16 + 1, size // 16 + 1, 3))
        image = tf.image.resize(coarse[None], (size, size), method="bicubic")[0]
        image = tf.cast(tf.clip_by_value(image, 0, 255), tf.uint8)
        tf.io.write_file(os.path.join(folder, label, f"{i:05d}.jpg"), tf.io.encode_jpeg(image, quality=90))


CASE_KINDS = ("matmul", "inference", "training", "speedup", "pipeline")


def run_case_here(case: Dict) -> Dict:
    """Runs one case in this process and adds its peak memory."""
    case = dict(case)
    kind = case.pop("case")
    if kind == "matmul":
        result = matmul_case(**case)
    elif kind in ("inference", "training"):
        result = model_case(kind, **case)
    elif kind == "speedup":
        result = speedup_case(**case)
    elif kind == "pipeline":
        result = pipeline_case(**case)
    else:
        raise ValueError(f"Unknown benchmark case {kind!r}; expected one of {list(CASE_KINDS)}.")
    result["peak_memory_mib"] = _peak_rss_mib()
    return result


def run_case(case: Dict, backend: str = "tensorflow", timeout: float = 1800) -> Dict:
    """Runs one case in a fresh child process on ``backend``; returns its result dict."""
    env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3")
    child = subprocess.run(
        [sys.executable, "-m", "keras_vit.tools.benchmark", json.dumps(case)],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if child.returncode != 0:
        return {**case, "backend": backend, "error": child.stderr.strip().splitlines()[-1] if child.stderr else "failed"}
    return json.loads(child.stdout.strip().splitlines()[-1])




def format_results(results: List[Dict]) -> str:
    """A Markdown table of the results."""
    header = "| case | model | backend | dtype | batch | jit | images/s | GFLOP/s | matmul GFLOP/s | of matmul | peak MiB |"
    lines = [header, "|---" * (header.count("|") - 1) + "|"]
    speedups = [r for r in results if r.get("case") == "speedup" and "error" not in r]
    for r in results:
        if r in speedups:
            continue
        if "error" in r:
            lines.append(f"| {r.get('case')} | {r.get('variant', '')} | {r.get('backend', '')} | | | | error: {r['error']} | | | | |")
            continue
        lines.append(
            "| {case} | {model} | {backend} | {dtype} | {batch} | {jit} | {ips} | {gflops} | {peak} | {frac} | {mem} |".format(
                case=r["case"],
                model=r.get("model", f"{r.get('size', '')}x{r.get('size', '')} matmul" if r["case"] == "matmul" else "JPEG files"),
                backend=r.get("backend", "tensorflow"),
                dtype=r.get("dtype_policy", r.get("dtype", "")),
                batch=r.get("batch", ""),
                jit=r.get("jit_compile", ""),
                ips=f"{r['images_per_second']:.1f}" if "images_per_second" in r else "",
                gflops=f"{r['flops_per_second'] / 1e9:.1f}" if "flops_per_second" in r else "",
                peak=f"{r['matmul_flops_per_second'] / 1e9:.1f}" if "matmul_flops_per_second" in r else "",
                frac=f"{100 * r['fraction_of_matmul_rate']:.0f}%" if "fraction_of_matmul_rate" in r else "",
                mem=f"{r['peak_memory_mib']:.0f}" if "peak_memory_mib" in r else "",
            )
        )
    if speedups:
        lines += ["", "| speed-up over float32 | model | backend | dtype | batch | images/s | float32 images/s | speed-up | matmul speed-up |",
                  "|---" * 9 + "|"]
        for r in speedups:
            for policy, speedup in r["speedup"].items():
                lines.append(
                    f"| inference | {r['model']} | {r['backend']} | {policy} | {r['batch']} | "
                    f"{r['images_per_second'][policy]:.1f} | {r['images_per_second']['float32']:.1f} | "
                    f"{speedup:.2f}x | {r['matmul_speedup'][policy]:.2f}x |"
                )
    return "\n".join(lines)


def _child_main(argv: Optional[List[str]] = None) -> None:
    case = json.loads((argv or sys.argv[1:])[0])
    print(json.dumps(run_case_here(case)))



def installed_peers() -> List[str]:
    """The peer implementations importable here, benchmarked beside keras_vit."""
    return [peer for peer in PEERS if peer_installed(peer)]


def select_peers(spec: str) -> List[str]:
    """Peers named by ``spec``: ``"installed"``, ``"none"`` or a comma list of installed peers."""
    if spec == "installed":
        return installed_peers()
    if spec == "none":
        return []
    peers = spec.split(",")
    missing = [peer for peer in peers if not peer_installed(peer)]
    if missing:
        raise ValueError(f"--peers {spec}: {missing} not installed here; installed: {installed_peers()}.")
    return peers


def standard_suite(backends=("tensorflow",), peers=None) -> List[Dict]:
    """The cases docs/performance.md reports (the performance issue's targets), plus the
    float32 cases again for each installed peer (``peers`` overrides which)."""
    peers = installed_peers() if peers is None else list(peers)
    cases = []
    for backend in backends:
        inference = dict(case="inference", variant="B/16", batch=8, _backend=backend)
        training = dict(case="training", variant="S/16", batch=32, dtype_policy="float32", _backend=backend)
        cases += [
            dict(case="matmul", dtype="float32", _backend=backend),
            dict(case="matmul", dtype="bfloat16", _backend=backend),
            dict(inference, dtype_policy="float32"),
            dict(inference, dtype_policy="mixed_bfloat16"),
            dict(inference, dtype_policy="bfloat16"),
            dict(case="speedup", variant="B/16", batch=8, _backend=backend),
            training,
        ]
        for peer in peers:
            cases += [dict(inference, dtype_policy="float32", peer=peer), dict(training, peer=peer)]
    cases.append(dict(case="pipeline", image_size=224, batch=32, _backend="tensorflow"))
    return cases


def custom_suite(
    variants, modes, dtype_policies, backends, image_size=224, batch=8, jit_compile=False, min_seconds=10.0, peers=()
) -> List[Dict]:
    """Matmul peaks for the dtypes involved plus every (variant, mode, policy, backend),
    for keras_vit and for each of ``peers``; with lower-precision policies, each variant's
    inference speed-up over float32 measured in one process (:func:`speedup_case`)."""
    cases = []
    for backend in backends:
        compute_dtypes = sorted({"bfloat16" if "bfloat16" in p else "float16" if "float16" in p else "float32" for p in dtype_policies})
        cases += [dict(case="matmul", dtype=d, min_seconds=min(3.0, min_seconds), _backend=backend) for d in compute_dtypes]
        for variant in variants:
            for mode in modes:
                for policy in dtype_policies:
                    for peer in (None, *peers):
                        case = dict(case=mode, variant=variant, image_size=image_size, batch=batch,
                                    dtype_policy=policy, jit_compile=jit_compile, min_seconds=min_seconds, _backend=backend)
                        cases.append(case if peer is None else dict(case, peer=peer))
            lower = [policy for policy in dtype_policies if policy != "float32"]
            if "inference" in modes and lower:
                cases.append(dict(case="speedup", variant=variant, image_size=image_size, batch=batch,
                                  dtype_policies=lower, min_seconds=2 * min_seconds, _backend=backend))
    return cases


def run_suite(cases: List[Dict], progress: bool = True) -> List[Dict]:
    """Runs each case in its own process (in order, one at a time) and summarizes."""
    from tqdm import tqdm

    results = []
    bar = tqdm(cases, desc="benchmark", unit="case", disable=not progress)
    for case in bar:
        case = dict(case)
        backend = case.pop("_backend", "tensorflow")
        bar.set_postfix_str(f"{case['case']} {case.get('variant', case.get('dtype', ''))} {backend}")
        results.append(run_case(case, backend=backend))
    return results


def machine_description() -> Dict:
    """CPU model, core count and the instruction-set extensions that matter here."""
    import platform

    info = {"machine": platform.machine(), "cores": os.cpu_count(), "python": platform.python_version()}
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            text = cpuinfo.read()
        for line in text.splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
        flags = next((l.split(":", 1)[1].split() for l in text.splitlines() if l.startswith("flags")), [])
        info["extensions"] = [f for f in ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16") if f in flags]
    except OSError:
        pass
    import keras

    info["keras"] = keras.__version__
    return info


if __name__ == "__main__":
    _child_main()


# --------------------------------------------------------------------------- exported artifacts
def benchmark_artifacts(directory: str, runs: int = 50, settings: Optional[Dict] = None, clock: str = "wall") -> Dict:
    """Batch-1 latency of every file in an export folder, on this machine, interleaved.

    Times each ``.tflite`` (every precision, LiteRT with XNNPACK), ``.onnx``
    (onnxruntime) and the SavedModel (TensorFlow) in this one process, round after round
    (:func:`keras_vit.deploy.latency.measure_latency`), on a random image in the model's
    input range, so a user measures the files on their own device class.

    Args:
        directory: a folder written by ``keras-vit export``.
        runs: timed rounds (median kept).
        settings: ``{label: threads}``; 1 thread and all threads when None.
        clock: ``"wall"``, or ``"thread"`` (CPU time of 1-thread runs, for a shared
            machine; see :func:`keras_vit.deploy.latency.measure_latency`).

    Returns:
        ``{"directory", "machine", "runs", "threads", "results": [{"file", "format",
        "precision", "size_bytes", "latency_ms": {label: ms}}]}``.

    Raises:
        FileNotFoundError: no such folder, or nothing it holds can be timed.
    """
    from keras_vit.deploy import artifacts, latency

    if not os.path.isdir(directory):
        raise FileNotFoundError(f"No such export folder: {directory!r}.")
    manifest_path = os.path.join(directory, artifacts.MANIFEST_FILENAME)
    manifest = {}
    if os.path.isfile(manifest_path):
        with open(manifest_path) as handle:
            manifest = json.load(handle)
    entries = {entry["file"]: entry for entry in manifest.get("artifacts", [])}
    paths = []
    for name in sorted(os.listdir(directory)):
        path = os.path.join(directory, name)
        try:
            if artifacts.artifact_kind(path) in ("tflite", "onnx", "savedmodel"):
                paths.append(path)
        except ValueError:
            continue
    if not paths:
        raise FileNotFoundError(
            f"{directory!r} holds no .tflite, .onnx or SavedModel to time; pass a folder written by keras-vit export."
        )
    first = artifacts.load_artifact(paths[0])
    low, high = first.input_range
    image = np.random.default_rng(0).uniform(low, high, (1, *first.image_size, first.channels)).astype("float32")
    settings = settings or latency.thread_settings()
    measured = latency.measure_latency(paths, image, runs=runs, settings=settings, clock=clock)
    if clock == "thread":
        settings = {label: threads for label, threads in settings.items() if threads == 1}
    results = []
    for path in paths:
        name = os.path.basename(path)
        entry = entries.get(name, {})
        kind = artifacts.artifact_kind(path)
        size = sum(os.path.getsize(os.path.join(root, f)) for root, _, files in os.walk(path) for f in files) \
            if os.path.isdir(path) else os.path.getsize(path)
        results.append(dict(file=name, format=kind, precision=entry.get("precision", "float32" if kind != "tflite" else "?"),
                            size_bytes=size, latency_ms=measured.get(path, {})))
    return dict(directory=os.path.abspath(directory), machine=latency.machine(), runs=int(runs), threads=settings,
                clock=clock, results=[r for r in results if r["latency_ms"]])


def format_artifact_results(report: Dict) -> str:
    """A Markdown table of :func:`benchmark_artifacts`' report."""
    labels = list(report["threads"]) + ["process_threads"]
    header = ["file", "format", "precision", "size (MB)"] + [
        f"ms {report['threads'][label]} thread{'s' if report['threads'][label] != 1 else ''}" if label in report["threads"]
        else "ms (TF threads)" for label in labels
    ]
    rows = [header]
    for result in report["results"]:
        figures = result["latency_ms"]
        rows.append([result["file"], result["format"], result["precision"], f"{result['size_bytes'] / 1e6:.2f}"]
                    + [f"{figures[label]:.2f}" if isinstance(figures.get(label), float) else figures.get("error", "-")
                       for label in labels])
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["| " + " | ".join(cell.ljust(w) for cell, w in zip(row, widths)) + " |" for row in rows]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    clock = " (CPU time of the calling thread)" if report.get("clock") == "thread" else ""
    lines.append(f"\nBatch 1, median of {report['runs']} interleaved runs{clock} on {report['machine']}.")
    return "\n".join(lines)
