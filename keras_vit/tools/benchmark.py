"""Throughput and memory of keras_vit (and, where installed, its peers) on this machine.

Every case runs in a fresh child process (``python -m keras_vit.tools.benchmark CASE``), so
that its peak memory is its own and the backend (``KERAS_BACKEND``) can differ between cases
of one run. The figures reported: images per second of inference and of a full training step
(forward, backward, optimizer), the FLOP rate that corresponds to (model FLOPs from
:func:`keras_vit.core.models.forward_flops`; a training step counted as 3x the forward pass),
the machine's own matrix-multiply rate in the same dtype measured in the same run, the
fraction achieved, and the peak resident memory.

This module holds the suites, the child-process runner and the exported files' timing; the
cases are in :mod:`~keras_vit.tools.benchmark_cases`, the kernel profiler in
:mod:`~keras_vit.tools.kernel_profile`, the tables in :mod:`~keras_vit.tools.benchmark_tables`
(all re-exported here). Measured figures, with the commands that gave them, are in
docs/performance.md.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Dict, List, Optional

import numpy as np

from keras_vit.tools.benchmark_cases import (  # noqa: F401 (re-exported)
    CASE_KINDS,
    MATMUL_SIZE,
    PEERS,
    installed_peers,
    matmul_case,
    model_case,
    peer_installed,
    pipeline_case,
    run_case_here,
    select_peers,
    speedup_case,
    time_interleaved,
    write_jpeg_folder,
)
from keras_vit.tools.benchmark_tables import format_artifact_results, format_results  # noqa: F401 (re-exported)
from keras_vit.tools.kernel_profile import (  # noqa: F401 (re-exported)
    add_step_arguments,
    compare_fused_and_portable,
    kernel_times,
    op_profile,
)


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


def _child_main(argv: Optional[List[str]] = None) -> None:
    case = json.loads((argv or sys.argv[1:])[0])
    print(json.dumps(run_case_here(case)))


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


def suite_report(cases: List[Dict], progress: bool = True) -> Dict:
    """``{"machine", "results"}``: :func:`run_suite` over ``cases`` on this machine."""
    return {"machine": machine_description(), "results": run_suite(cases, progress=progress)}


def report_has_errors(report: Dict) -> bool:
    """Whether a case of a suite report, or a file of an artifacts report, failed."""
    return any("error" in result or "error" in result.get("latency_ms", {}) for result in report["results"])


if __name__ == "__main__":
    _child_main()
