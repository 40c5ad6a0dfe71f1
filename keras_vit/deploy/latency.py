"""Latency of exported artifacts at batch 1, each in its own runtime, timed interleaved.

Export measures every file it writes with :func:`measure_latency` (the figures go into
the manifest, labelled with the machine that measured them) and ``keras-vit benchmark
--artifacts DIR`` measures an export folder on the machine it runs on. The runners are
called in turn, round after round, so that a machine whose speed drifts (shared CPUs,
thermal throttling) slows them all alike. Each file is opened by its reader in
:mod:`keras_vit.deploy.artifacts` (``latency_runner``), the runtime that verifies and predicts.
"""

from __future__ import annotations

import os
import platform
import time

import numpy as np

from keras_vit.deploy.artifacts import READERS, artifact_kind


def thread_settings():
    """``{"1_thread": 1, "all_threads": os.cpu_count()}``: the settings measured."""
    return {"1_thread": 1, "all_threads": int(os.cpu_count() or 1)}


def machine():
    """A short description of the measuring machine, stored with the figures."""
    processor = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as file:
            for line in file:
                if line.startswith("model name"):
                    processor = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{processor}, {os.cpu_count()} CPUs, {platform.system()} {platform.release()}"


CLOCKS = {"wall": time.perf_counter, "thread": time.thread_time}


def measure_latency(paths, image, runs=20, warmup=2, settings=None, clock="wall"):
    """Median milliseconds per batch-1 call of each artifact at each thread setting.

    Args:
        paths: ``.tflite``, ``.onnx`` files and SavedModel folders (other kinds are skipped).
        image: (1, H, W, C) float32 input in the model's range (quantized for int8 files).
        runs: timed rounds; each round calls every runner once.
        warmup: untimed rounds first.
        settings: ``{label: threads}``; :func:`thread_settings` when None. A SavedModel is
            timed once, labelled ``"process_threads"`` (TensorFlow's pools are fixed).
        clock: ``"wall"`` (elapsed time), or ``"thread"``: the CPU time of the calling
            thread, which other jobs on a shared machine do not inflate; it counts only the
            work of a 1-thread LiteRT or onnxruntime run (they compute on the caller's
            thread), so only 1-thread settings and no SavedModel are timed with it.

    Returns:
        ``{path: {label: ms}}``; a runner that fails gives ``{"error": message}``.
    """
    if clock not in CLOCKS:
        raise ValueError(f"Unknown clock {clock!r}; expected one of {list(CLOCKS)}.")
    settings = settings or thread_settings()
    if clock == "thread":
        settings = {label: threads for label, threads in settings.items() if threads == 1}
    now = CLOCKS[clock]
    image = np.asarray(image, dtype="float32")
    runners, results = [], {}
    for path in paths:
        kind = artifact_kind(path)
        if kind == "keras" or (clock == "thread" and kind == "savedmodel"):
            continue
        results[path] = {}
        labels = {"process_threads": None} if kind == "savedmodel" else settings
        for label, threads in labels.items():
            try:
                runners.append((path, label, READERS[kind].latency_runner(path, image, threads)))
            except Exception as error:  # a file the runtime refuses: reported, not fatal
                results[path] = {"error": str(error).strip().splitlines()[0]}
    times = {(path, label): [] for path, label, _ in runners}
    for round_index in range(warmup + runs):
        for path, label, run in runners:
            begin = now()
            run()
            if round_index >= warmup:
                times[(path, label)].append(now() - begin)
    for (path, label), record in times.items():
        results[path][label] = round(1000.0 * float(np.median(record)), 3)
    return results
