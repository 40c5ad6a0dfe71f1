"""What an export folder holds and the settings export runs with.

File and signature names, formats and TFLite precisions, the parity tolerances and how
many images calibrate, verify and time an artifact: the one place export, the manifest
and the readers take them from.
"""

from __future__ import annotations

FORMATS = ("savedmodel", "tflite", "onnx")
TFLITE_PRECISIONS = ("float32", "float16", "dynamic_int8", "int8_mixed", "int8")
# Precisions whose activations are calibrated on training images.
CALIBRATED_PRECISIONS = ("int8_mixed", "int8")
DEFAULT_OPSET = 17
DEFAULT_TOP_K = 5
SAVEDMODEL_DIRNAME = "saved_model"
ONNX_FILENAME = "model.onnx"
LABELS_FILENAME = "labels.txt"
MANIFEST_FILENAME = "manifest.json"
SAMPLES_DIRNAME = "samples"
BYTES_SIGNATURE = "serving_default"
FLOAT_SIGNATURE = "serving_images"

# Largest accepted parity figures. Float artifacts compare raw outputs (max abs difference,
# relative to the outputs' scale once it exceeds 1); int8 artifacts compare decisions.
DEFAULT_TOLERANCES = {
    "float32": 1e-4,
    "float16": 1e-2,
    "int8_min_top1_agreement": 0.99,
    "int8_max_accuracy_drop": 0.01,
}
# Calibration and verification sample sizes taken from a dataset.
CALIBRATION_SAMPLES = 1000
VERIFICATION_SAMPLES = 1000
RANDOM_VERIFICATION_SAMPLES = 16
# Timed batch-1 runs per exported file and thread setting (manifest latency).
DEFAULT_LATENCY_RUNS = 20


def tflite_filename(precision):
    """File name of the TFLite artifact of a precision, e.g. ``model_int8.tflite``."""
    return f"model_{precision}.tflite"


def check_precisions(precisions):
    """Raises ValueError naming the precisions that are not in ``TFLITE_PRECISIONS``."""
    unknown = [p for p in precisions if p not in TFLITE_PRECISIONS]
    if unknown:
        raise ValueError(f"Unknown TFLite precision(s) {unknown}; expected some of {list(TFLITE_PRECISIONS)}.")


def parse_formats(formats):
    """``"all"``, ``"tflite"``, ``"savedmodel,onnx"`` or a list -> a tuple of formats."""
    if isinstance(formats, str):
        formats = [f.strip() for f in formats.split(",") if f.strip()]
    formats = list(formats)
    if "all" in formats:
        return FORMATS
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise ValueError(f"Unknown export format(s) {unknown or formats}; expected 'all' or some of {list(FORMATS)}.")
    return tuple(f for f in FORMATS if f in formats)
