"""Deployment: SavedModel, TFLite (LiteRT) and ONNX artifacts, each verified in its own runtime.

``export_model`` writes the artifacts of a Keras Vision Transformer into one folder
(``saved_models/<run>/export/`` by default) with ``labels.txt`` and ``manifest.json``.
Every artifact is loaded back in the runtime that will serve it (TensorFlow, the
ai-edge-litert ``Interpreter``, onnxruntime), run on held-out images next to the Keras
model, and the figures measured go into the manifest; an artifact outside its tolerance
makes ``export_model`` raise ``RuntimeError`` naming it.

The float entry points of every artifact take ``(B, H, W, C)`` float32 images prepared as
the model's :class:`~keras_vit.core.image_spec.ImageSpec` says, exactly like the Keras model,
and return its raw output (logits unless the model was built with a
``classifier_activation``). The SavedModel's ``serving_default`` signature takes encoded
JPEG/PNG/BMP/GIF bytes of any size and does the spec's preprocessing itself (EXIF
orientation, resize, crop, normalisation). The spec is written to the manifest
(``image_spec``) and the ONNX metadata, so ``load_artifact`` reads it back.

The walk: the model's serving facts are computed once (:class:`ServingSpec`), the
verification data read and the Keras reference outputs computed once (:class:`Reference`),
then each exporter of :func:`keras_vit.deploy.formats.plan` writes, describes and verifies
its file in a staging folder, which replaces the output folder once the manifest is written.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile

import numpy as np

from keras_vit import ownership, run_folder
from keras_vit.data import load_embedded_mnist, scale_pixels
from keras_vit.data.images import DEFAULT_MAX_PIXELS, list_image_files, read_images
from keras_vit.deploy.artifacts import load_keras_model
from keras_vit.deploy.exporter import Reference, check_parity, parity, run_artifact  # noqa: F401 (re-exported)
from keras_vit.deploy.formats import plan
from keras_vit.deploy.latency import machine, measure_latency, thread_settings
from keras_vit.deploy.layout import (  # noqa: F401 (the names callers import from here)
    CALIBRATED_PRECISIONS,
    CALIBRATION_SAMPLES,
    DEFAULT_LATENCY_RUNS,
    DEFAULT_OPSET,
    DEFAULT_TOP_K,
    FORMATS,
    LABELS_FILENAME,
    MANIFEST_FILENAME,
    RANDOM_VERIFICATION_SAMPLES,
    SAMPLES_DIRNAME,
    TFLITE_PRECISIONS,
    VERIFICATION_SAMPLES,
    check_precisions,
    parse_formats,
)
from keras_vit.deploy.manifest import artifact_checksum, format_manifest, size_bytes, write_manifest  # noqa: F401
from keras_vit.deploy.onnx_export import export_onnx  # noqa: F401 (re-exported)
from keras_vit.deploy.recommend import TARGETS, recommend  # noqa: F401 (re-exported)
from keras_vit.deploy.savedmodel_export import export_savedmodel  # noqa: F401 (re-exported)
from keras_vit.deploy.serving import ServingSpec
from keras_vit.deploy.tflite_export import (  # noqa: F401 (re-exported)
    TFLITE_DESCRIPTIONS,
    _is_builtin_op,
    export_tflite,
    float_ops,
    tflite_ops,
)
from keras_vit.files import _WRITE_FAILURES, replaced_atomically

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------- inputs
def export_data(model, images_dir=None, seed=0, serving=None):
    """Calibration and verification images for a model, from the best source available.

    28x28x1 models get the embedded MNIST digits (training images for calibration, the
    validation split with its labels for verification); other models read the images of
    ``images_dir`` (resized to the model's size, every file for calibration, the first
    ``VERIFICATION_SAMPLES`` for verification). Without either, verification uses seeded
    uniform noise in [-1, 1] and there is no calibration data (full-integer int8 needs it).
    Images are prepared as the model's spec says (files: upright, resized and cropped as
    ``predict`` does; every source: :meth:`ImageSpec.from_unit_range`).

    Args:
        model: the Keras model.
        images_dir: optional folder of image files (searched recursively).
        seed: seed of the noise images.
        serving: the model's :class:`ServingSpec` (computed when None).

    Returns:
        A dict with ``calibration`` (float32 array or None), ``verification`` (float32
        array), ``verification_labels`` (int array or None), ``samples`` (uint8 images
        for sample PNGs or None), ``sample_labels`` and ``source`` (a description).
    """
    serving = serving or ServingSpec.of(model)
    (height, width, channels), spec = serving.input_shape, serving.image_spec
    if images_dir is not None:
        paths = list_image_files(images_dir)
        if not paths:
            raise ValueError(f"Found no image files in {images_dir!r} to calibrate and verify with.")
        images, read, errors = read_images(paths, spec)
        if errors:
            raise ValueError(f"Cannot read {len(errors)} file(s) in {images_dir!r}: {_describe_errors(errors)}")
        return dict(
            calibration=images[:CALIBRATION_SAMPLES],
            verification=images[:VERIFICATION_SAMPLES],
            verification_labels=None,
            samples=None,
            sample_labels=None,
            source=f"{len(read)} images from {images_dir}",
        )
    if (height, width, channels) == (28, 28, 1):
        (x_train, _), (x_val, y_val) = load_embedded_mnist()
        # One validation digit of each class for the sample PNGs.
        sample_index = [int(np.flatnonzero(y_val == digit)[0]) for digit in range(10)]
        return dict(
            calibration=spec.from_unit_range(scale_pixels(x_train[:CALIBRATION_SAMPLES, :, :, None])),
            verification=spec.from_unit_range(scale_pixels(x_val[:VERIFICATION_SAMPLES, :, :, None])),
            verification_labels=y_val[:VERIFICATION_SAMPLES].astype("int64"),
            samples=x_val[sample_index, :, :, None],
            sample_labels=y_val[sample_index].astype("int64"),
            source="embedded MNIST (calibration: training split, verification: validation split)",
        )
    noise = np.random.default_rng(seed).uniform(-1.0, 1.0, (RANDOM_VERIFICATION_SAMPLES, height, width, channels))
    return dict(
        calibration=None,
        verification=spec.from_unit_range(noise.astype("float32")),
        verification_labels=None,
        samples=None,
        sample_labels=None,
        source=f"{RANDOM_VERIFICATION_SAMPLES} uniform noise images (seed {seed})",
    )


def _describe_errors(errors):
    return "; ".join(f"{path}: {message}" for path, message in list(errors.items())[:5])


# --------------------------------------------------------------------------- writing
def write_sample_images(images, labels, class_names, directory):
    """Writes uint8 (N, H, W, C) images as ``<directory>/<class>_<i>.png`` files (the class
    name made a safe file name: :func:`keras_vit.ownership.safe_filename`).

    Returns:
        The list of paths written.
    """
    import tensorflow as tf

    os.makedirs(directory, exist_ok=True)
    paths = []
    for index, (image, label) in enumerate(zip(images, labels)):
        # A class name is a label, not a path: "../x", "/tmp/x" or "a/b" must not lead out of the folder.
        stem = ownership.safe_filename(class_names[int(label)], fallback=f"class{int(label)}")
        path = ownership.path_inside(directory, f"{stem}_{index}.png")
        with replaced_atomically(path) as temporary:
            tf.io.write_file(temporary, tf.io.encode_png(np.asarray(image, dtype="uint8")))
        paths.append(path)
    return paths


def export_model(
    model,
    output_dir=None,
    formats="all",
    tflite_precisions=TFLITE_PRECISIONS,
    class_names=None,
    images_dir=None,
    data=None,
    top_k=DEFAULT_TOP_K,
    opset=DEFAULT_OPSET,
    tolerances=None,
    overwrite=False,
    progress=True,
    latency_runs=DEFAULT_LATENCY_RUNS,
    max_pixels=DEFAULT_MAX_PIXELS,
):
    """Exports a model to SavedModel / TFLite / ONNX, verifies each and writes the manifest.

    Args:
        model: a Keras model, a ``.keras`` file or a run folder (``saved_models/<run>``).
        output_dir: where the artifacts go; ``<folder of the .keras file>/export`` when
            None (required when ``model`` is a model object).
        formats: ``"all"`` or some of ``"savedmodel"``, ``"tflite"``, ``"onnx"`` (a list or
            a comma-separated string).
        tflite_precisions: TFLite precisions to write (``TFLITE_PRECISIONS``).
        class_names: None (the run's ``config.json`` ``class_names``, else ``"0"``..),
            a list, a comma-separated string or a file with one name per line.
        images_dir: folder of images for int8 calibration and verification (see
            :func:`export_data`); None uses the run's own image folder (for a run folder
            trained on one), else embedded MNIST for 28x28x1 models.
        data: a dict as returned by :func:`export_data`, overriding ``images_dir``.
        top_k: k of the SavedModel bytes signature's top-k outputs.
        opset: ONNX opset (>= 17).
        tolerances: overrides of ``DEFAULT_TOLERANCES``.
        overwrite: replace the export already in ``output_dir`` (a folder keras-vit marked
            as an export and holding nothing else; see :mod:`keras_vit.ownership`); otherwise
            an existing export is an error, raised before anything is written. The new export
            is built beside it and swapped in whole once written, so a failure or a kill
            leaves the old one as it was (also when a replacement fails verification).
        progress: show a progress bar over the artifacts.
        max_pixels: largest decoded width x height the SavedModel's bytes signature accepts.
        latency_runs: timed batch-1 runs per file and thread setting (median kept, in
            the manifest as measured on this machine); 0 measures nothing.

    Returns:
        The manifest (also written to ``output_dir/manifest.json``): ``artifacts``, one
        entry per artifact with ``format``, ``precision``, ``file``, ``size_bytes``,
        ``sha256``, ``input``, ``outputs``, ``parity`` and ``latency_ms``; ``latency``
        (how and where it was measured) and ``recommended`` (the file for each target,
        with the reason).

    Raises:
        ValueError: bad formats, precisions, class names, missing calibration data, or an
            artifact that exists already while ``overwrite`` is false.
        RuntimeError: a conversion failed or an artifact is outside its tolerance; the
            message names each such artifact (the manifest is written first).
    """
    formats = parse_formats(formats)
    precisions = _tflite_precisions(tflite_precisions)
    if "tflite" not in formats:
        precisions = []
    model, model_path, output_dir, class_names, images_dir = _source(model, output_dir, class_names, images_dir, data)
    if class_names is None:
        class_names = getattr(model, "class_names", None)  # a checkpoint's id2label, carried by the model
    serving = ServingSpec.of(model, class_names, top_k, max_pixels)
    if data is None:
        data = export_data(model, images_dir, serving=serving)
    _check_calibration(precisions, data, serving)
    target, replaced = _export_target(output_dir, overwrite)  # refused here, before any file is written
    staging = _staging_folder(target)
    try:
        manifest, failures = _write_export(
            model, staging, serving, formats=formats, precisions=precisions, data=data,
            source_model=os.path.abspath(model_path) if model_path else model.name,
            export_dir=os.path.abspath(output_dir), opset=opset, tolerances=tolerances, progress=progress,
            latency_runs=latency_runs,
        )
        if failures and replaced is not None:
            raise RuntimeError(
                f"{len(failures)} artifact(s) failed verification; the previous export in {output_dir} is left as "
                f"it was: " + "; ".join(failures)
            )
        parent, name = os.path.split(target)
        if (ownership.read_marker(parent) or {}).get("kind") == "run":
            ownership.record(parent, name)  # a run's export goes with the run (train --overwrite)
        left = ownership.put_in_place(staging, target, replaced)
    except OSError as error:
        raise _refused(error, output_dir, replaced) from error
    finally:
        _discard(staging)
    if left:
        logger.warning("Kept files keras-vit did not write in the replaced export: %s in %s",
                       ownership.describe(left), staging)
    if failures:
        raise RuntimeError(
            f"{len(failures)} artifact(s) failed verification (details in "
            f"{os.path.join(output_dir, MANIFEST_FILENAME)}): " + "; ".join(failures)
        )
    return manifest


def _tflite_precisions(precisions):
    if isinstance(precisions, str):
        precisions = [p.strip() for p in precisions.split(",")]
    check_precisions(list(precisions))
    return list(precisions)


def _source(model, output_dir, class_names, images_dir, data):
    """``(model, model_path, output_dir, class_names, images_dir)``: a path is loaded, and
    its run folder gives what the caller left out (names, images, export folder)."""
    import keras

    if isinstance(model, keras.Model):
        if output_dir is None:
            raise ValueError("output_dir is required when exporting a model object (not a .keras file).")
        return model, None, output_dir, class_names, images_dir
    model_path = run_folder.resolve_model_path(model)
    run = run_folder.of_model(model_path)
    if class_names is None:
        class_names = run.class_names()
    if images_dir is None and data is None:
        images_dir = run.image_folder()  # calibrate and verify on the run's own images
    output_dir = run.export_dir if output_dir is None else output_dir
    return load_keras_model(model_path), model_path, output_dir, class_names, images_dir


def _check_calibration(precisions, data, serving):
    calibrated = [p for p in precisions if p in CALIBRATED_PRECISIONS]
    if calibrated and data.get("calibration") is None:
        height, width, channels = serving.input_shape
        raise ValueError(
            f"TFLite {' and '.join(calibrated)} needs calibration images from the training data, and a "
            f"{height}x{width}x{channels} model has no built-in dataset: pass --images DIR "
            f"(images_dir=...) or leave int8 out of the precisions ({list(TFLITE_PRECISIONS)})."
        )


def _write_export(model, folder, serving, *, formats, precisions, data, source_model, export_dir, opset, tolerances,
                  progress, latency_runs):
    """Writes and verifies every planned artifact, ``labels.txt``, the samples and the
    manifest into ``folder`` (a fresh staging folder: nothing from an earlier export is
    there to be read), each entry recorded in its marker before it is written. Returns
    ``(manifest, failures)``."""
    reference = Reference.of(model, data["verification"], data.get("verification_labels"), tolerances)
    with tempfile.TemporaryDirectory() as scratch:
        exporters = plan(model, serving, formats, precisions, calibration=data.get("calibration"), opset=opset,
                         scratch=scratch)
        entries, failures = _write_artifacts(model, folder, serving, exporters, reference, progress)
    samples = _write_labels_and_samples(folder, serving, data)
    latency = _measure_latency(folder, entries, reference.images[:1], int(latency_runs)) if latency_runs else None
    manifest = write_manifest(
        folder, serving, artifacts=entries, data=data, source_model=source_model, export_dir=export_dir,
        bytes_signature="savedmodel" in formats, tolerances=tolerances, reference_scale=reference.scale,
        latency=latency, samples=samples,
    )
    return manifest, failures


def _write_artifacts(model, folder, serving, exporters, reference, progress):
    """``(manifest entries, failures)`` of writing and verifying each exporter's file."""
    import keras

    entries, failures = [], []
    steps = keras.utils.Progbar(len(exporters), unit_name="artifact") if progress else None
    for exporter in exporters:
        entry, problem = _export_one(exporter, model, folder, serving, reference)
        entries.append(entry)
        if problem is not None:
            failures.append(f"{exporter.filename}: {problem}")
        if steps is not None:
            steps.add(1)
    return entries, failures


def _export_one(exporter, model, folder, serving, reference):
    """Writes, describes and verifies one artifact: ``(manifest entry, problem or None)``."""
    import tensorflow as tf

    path = os.path.join(folder, exporter.filename)
    ownership.record(folder, exporter.filename)
    entry = {"format": exporter.format, "precision": exporter.precision, "file": exporter.filename,
             "input": serving.input_entry()}
    try:
        exporter.write(model, path, serving)
        entry.update(exporter.describe(path, serving))
        entry["outputs"] = serving.outputs_entry()
        entry["parity"], problem = exporter.verify(path, model, serving, reference)
    except (RuntimeError, ValueError, tf.errors.OpError) as error:
        problem = str(error)
    entry["verified"] = problem is None
    if problem is not None:
        entry["error"] = problem
    if os.path.exists(path):
        # Readers trust the manifest only for the files whose checksum it records.
        entry["size_bytes"] = size_bytes(path)
        entry["sha256"] = artifact_checksum(path)
    return entry, problem


def _write_labels_and_samples(folder, serving, data):
    """Writes ``labels.txt`` and the sample PNGs; returns the samples' paths relative to ``folder``."""
    has_samples = data.get("samples") is not None
    ownership.record(folder, LABELS_FILENAME, MANIFEST_FILENAME, *([SAMPLES_DIRNAME] if has_samples else []))
    with replaced_atomically(os.path.join(folder, LABELS_FILENAME)) as temporary, open(temporary, "w") as file:
        file.write("\n".join(serving.class_names) + "\n")
    if not has_samples:
        return []
    paths = write_sample_images(data["samples"], data["sample_labels"], serving.class_names,
                                os.path.join(folder, SAMPLES_DIRNAME))
    return [os.path.relpath(p, folder) for p in paths]


def _measure_latency(folder, entries, image, runs):
    """Times each verified artifact at batch 1 into its entry's ``latency_ms``; returns the
    manifest's ``latency`` (how and where it was measured)."""
    paths = {os.path.join(folder, e["file"]): e for e in entries if e.get("verified")}
    for path, figures in measure_latency(list(paths), image, runs=runs).items():
        paths[path]["latency_ms"] = figures
    return {
        "measured_on": f"at export on {machine()}",
        "batch": 1,
        "runs": runs,
        "threads": thread_settings(),
        "note": "median ms per image of interleaved runs; SavedModel with TensorFlow's own thread "
        "pools. Other devices differ (int8 gains most on CPUs with int8 dot-product instructions): "
        "measure there with keras-vit benchmark --artifacts DIR.",
    }


# --------------------------------------------------------------------------- the export folder


def _export_target(output_dir, overwrite):
    """``(real path, what keras-vit owns there)`` for an export to ``output_dir``: None when
    there is nothing to replace. Raises ValueError (one line) for a folder that must not be
    replaced: an existing export without ``overwrite``, a folder keras-vit did not create
    (whatever it holds), or an export holding files keras-vit did not write."""
    target = ownership.real_folder(output_dir)  # a linked folder is written where it points
    if not os.path.exists(target):
        return target, None
    if not os.path.isdir(target):
        raise ValueError(f"{output_dir!r} is a file, not a folder; choose another output folder (--output DIR).")
    held, marked = ownership.entries(target), ownership.is_marked(target)
    if not held and not marked:
        return target, None  # an empty folder: the export is renamed onto it
    mine = ownership.owned(target, "export", _legacy_export)
    if mine is None and not marked:
        raise ValueError(
            f"{output_dir} already holds {held[:5]} and is not a keras-vit export folder (no {ownership.MARKER}): "
            f"nothing in it is replaced, even with --overwrite; choose another output folder (--output DIR)."
        )
    if mine is not None and not overwrite:
        raise ValueError(
            f"{output_dir} already holds {held}; pass overwrite=True (--overwrite) to replace "
            f"them or choose another output folder (--output DIR)."
        )
    ownership.refuse_unless_replaceable(target, "export", mine, choose="choose another output folder (--output DIR)")
    return target, mine


def _legacy_export(folder):
    """An export written before the marker: a keras-vit manifest.json listing every entry there."""
    try:
        with open(os.path.join(folder, MANIFEST_FILENAME)) as file:
            manifest = json.load(file)
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict) or "keras_vit_version" not in manifest or not isinstance(manifest.get("artifacts"), list):
        return None
    listed = {MANIFEST_FILENAME, LABELS_FILENAME} | {entry.get("file") for entry in manifest["artifacts"] if isinstance(entry, dict)}
    listed |= {SAMPLES_DIRNAME} if manifest.get("samples") else set()
    return listed if set(os.listdir(folder)) <= listed else None


def _staging_folder(target):
    """A fresh marked folder beside ``target`` where the export is built (one a killed export left is emptied)."""
    parent, name = os.path.split(target)
    staging = os.path.join(parent, f".{name}.export-tmp")
    if os.path.lexists(staging):
        _discard(staging)
        if os.path.lexists(staging):
            raise ValueError(f"{staging!r} holds files keras-vit did not write; move it away to export to {target!r}.")
    os.makedirs(staging)
    ownership.mark(staging, "export")
    return staging


def _discard(staging):
    # What keras-vit wrote there: an unfinished export, or the old one swapped out.
    if os.path.isdir(staging) and not os.path.islink(staging):
        ownership.remove_owned(staging, ownership.owned(staging, "export") or set())


def _refused(error, output_dir, replaced):
    """A write the system refused while exporting, as one line naming the output folder."""
    if error.errno not in _WRITE_FAILURES:
        return error
    kept = "the previous export there is left as it was" if replaced is not None else "nothing was put there"
    return OSError(error.errno, f"{os.strerror(error.errno)} while exporting ({kept})", os.fspath(output_dir))
