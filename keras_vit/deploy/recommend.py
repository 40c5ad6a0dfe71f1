"""Which exported file to ship for each target (a CPU phone, a GPU delegate, an
integer-only accelerator), chosen from the manifest's verified entries, with the reason."""

from __future__ import annotations

TARGETS = ("cpu_phone", "gpu_delegate", "integer_only_accelerator")


def _tflite_entries(artifacts):
    return {e["precision"]: e for e in artifacts if e["format"] == "tflite" and e.get("verified")}


def recommend(artifacts):
    """The file to ship for each target, with the reason, from a manifest's artifacts.

    ``cpu_phone``: the verified TFLite file fastest at one thread as measured at export,
    the smaller one when two are within 10% (unmeasured: int8_mixed, else int8, ...); ``gpu_delegate``: float16 (the GPU delegate
    computes in float16; int8 files are dequantized there and gain nothing), else float32;
    ``integer_only_accelerator``: the full-integer int8 file when it has no float op.

    Returns:
        ``{target: {"file", "reason"}}``; ``file`` is None when no artifact fits.
    """
    tflite = _tflite_entries(artifacts)
    chosen = {}
    timed = [e for e in tflite.values() if isinstance(e.get("latency_ms", {}).get("1_thread"), float)]
    if timed:
        fastest = min(e["latency_ms"]["1_thread"] for e in timed)
        near = [e for e in timed if e["latency_ms"]["1_thread"] <= 1.1 * fastest]
        best = min(near, key=lambda e: (e["size_bytes"], e["latency_ms"]["1_thread"]))
        reference = tflite.get("float32", {}).get("latency_ms", {}).get("1_thread")
        versus = f", float32 {reference:.2f} ms" if reference and best["precision"] != "float32" else ""
        chosen["cpu_phone"] = {
            "file": best["file"],
            "reason": f"fastest verified TFLite file at 1 thread on the exporting machine within 10% "
            f"({best['latency_ms']['1_thread']:.2f} ms{versus}), the smallest of those "
            f"({best['size_bytes'] / 1e6:.1f} MB); confirm on the phone with keras-vit benchmark --artifacts",
        }
    elif tflite:
        # Unmeasured: int8 where CPUs gain (the weight matmuls), float32 where int8 is slow.
        order = ["int8_mixed", "int8", "dynamic_int8", "float16", "float32"]
        best = tflite[min(tflite, key=lambda precision: order.index(precision))]
        chosen["cpu_phone"] = {
            "file": best["file"],
            "reason": f"latency not measured (latency_runs=0): the first verified of {', '.join(order)}",
        }
    else:
        chosen["cpu_phone"] = {"file": None, "reason": "no verified TFLite file was exported"}
    for precision in ("float16", "float32"):
        if precision in tflite:
            chosen["gpu_delegate"] = {
                "file": tflite[precision]["file"],
                "reason": "GPU delegates compute in float16: "
                + ("float16 weights load as they are, at half the size of float32"
                   if precision == "float16" else "float32 is the float file exported")
                + "; int8 files are dequantized on the GPU and gain nothing",
            }
            break
    else:
        chosen["gpu_delegate"] = {"file": None, "reason": "no verified float TFLite file was exported"}
    full = tflite.get("int8")
    if full is not None and full.get("integer_only"):
        chosen["integer_only_accelerator"] = {
            "file": full["file"],
            "reason": "every op int8 with int8 input and output (scale and zero point in the input "
            "and output details): what NPUs, DSPs and the Edge TPU run whole",
        }
    else:
        chosen["integer_only_accelerator"] = {
            "file": None,
            "reason": "no verified integer-only file (export the int8 precision with calibration images)"
            if full is None else f"the int8 file still has float ops {full.get('float_ops')}",
        }
    return chosen
