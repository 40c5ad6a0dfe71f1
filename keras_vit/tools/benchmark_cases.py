"""The benchmark's cases, each run in this process: the machine's matmul rate, a model's
inference or training-step throughput (keras_vit's or a peer's), the lower-precision speed-up,
and the JPEG input pipeline; and the interleaved timer they all share.

:mod:`keras_vit.tools.benchmark` runs each case in a child process (:func:`run_case_here`
there); the figures a run gives are in docs/performance.md, never here.
"""

from __future__ import annotations

import os
import resource
import time
from typing import Dict, List, Optional

import numpy as np

MATMUL_SIZE = 2048


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux reports KiB


def time_interleaved(functions, min_seconds: float, min_calls: int = 3, warmup: int = 2) -> List[float]:
    """Median seconds per call of each function (at least ``min_calls`` rounds and
    ``min_seconds`` in all), called in turn, round after round.

    The machine's speed drifts (a shared VM): timing a model and the matmul peak in
    alternation gives their ratio under the same conditions. Within a round each function
    runs about as long as the slowest one (a short matmul repeated to match a long training
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
    (seconds,) = time_interleaved([run], min_seconds)
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
    seconds, matmul_seconds = time_interleaved([run, matmul], min_seconds, min_calls=5)
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
    stretches of a drifting machine (separate cases, minutes apart, do not: docs/performance.md).
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
    seconds = time_interleaved(runs + matmuls, min_seconds, min_calls=5)
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


def raw_step(mode: str, variant: str, image_size: int, batch: int, dtype_policy: str):
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
        (seconds,) = time_interleaved([lambda: next(iterator)], min_seconds, min_calls=10, warmup=3)
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


PEERS = ("keras_hub",)


def peer_installed(peer: str) -> bool:
    """Whether a peer implementation can be imported here."""
    import importlib.util

    if peer not in PEERS:
        raise ValueError(f"Unknown peer {peer!r}; expected one of {list(PEERS)}.")
    return importlib.util.find_spec(peer) is not None


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
