"""What an export folder holds, and any artifact opened in its own runtime.

``load_artifact(path)`` opens a ``.keras`` file, SavedModel folder, ``.tflite`` or ``.onnx``
file behind one interface: ``spec`` is the model's input contract
(:class:`~keras_vit.core.image_spec.ImageSpec`: the model's own, or read back from the
manifest / ONNX metadata written at export), ``run(images)`` takes (B, H, W, C) float32
images as that spec prepares them and returns the raw outputs, ``probabilities`` the class
probabilities. Export verifies its files through it, ``keras-vit predict`` predicts with it
and the latency of a file is timed in the runtime it opens (``latency_runner``). The file
names and settings of an export folder live in :mod:`keras_vit.deploy.layout` and are
re-exported here.
"""

from __future__ import annotations

import json
import logging
import os

import numpy as np

from keras_vit import run_folder
from keras_vit.core.image_spec import ImageSpec
from keras_vit.deploy.layout import (  # noqa: F401 (the names export and its callers read here)
    BYTES_SIGNATURE,
    CALIBRATED_PRECISIONS,
    CALIBRATION_SAMPLES,
    DEFAULT_LATENCY_RUNS,
    DEFAULT_OPSET,
    DEFAULT_TOLERANCES,
    DEFAULT_TOP_K,
    FLOAT_SIGNATURE,
    FORMATS,
    LABELS_FILENAME,
    MANIFEST_FILENAME,
    ONNX_FILENAME,
    RANDOM_VERIFICATION_SAMPLES,
    SAMPLES_DIRNAME,
    SAVEDMODEL_DIRNAME,
    TFLITE_PRECISIONS,
    VERIFICATION_SAMPLES,
    tflite_filename,
)
from keras_vit.deploy.manifest import artifact_checksum, read_beside  # noqa: F401 (artifact_checksum: re-exported)
from keras_vit.deploy.serving import (  # noqa: F401 (model_* and parse_class_names: re-exported)
    ServingSpec,
    model_image_spec,
    model_input_spec,
    model_output_kind,
    parse_class_names,
)

logger = logging.getLogger(__name__)

def load_keras_model(path):
    """Loads a ``.keras`` model file (or the ``model.keras`` of a run folder) for inference.

    Args:
        path: a ``.keras`` file, or a run folder holding ``model.keras``.

    Returns:
        The Keras model, not compiled.

    Raises:
        FileNotFoundError: when there is no such file.
        ValueError: when the path is not a ``.keras`` file or run folder.
    """
    return run_folder.load_model(path)


def _spec_from(manifest, metadata, image_size, channels):
    """The spec written at export (ONNX metadata, else the manifest beside the file); for
    files written before specs were, the manifest's ``input_range`` ([0, 255]: pixels)."""
    for source in (metadata or {}, manifest or {}):
        if source.get("image_spec"):
            values = source["image_spec"]
            return ImageSpec.from_dict(json.loads(values) if isinstance(values, str) else values)
    legacy = (manifest or {}).get("input_range") or (metadata or {}).get("input_range")
    pixels = legacy is not None and float((json.loads(legacy) if isinstance(legacy, str) else legacy)[1]) > 1
    return ImageSpec(image_size=tuple(image_size), channels=channels, pixels_inside=pixels)


ACCEPTED_KINDS = (
    "a .keras file",
    "a run folder holding model.keras",
    "a SavedModel folder (saved_model.pb) written by keras-vit export",
    "a .tflite file",
    "an .onnx file",
)
_BATCH_SIZE = 32


def artifact_kind(path):
    """``"keras"``, ``"savedmodel"``, ``"tflite"`` or ``"onnx"`` for a path.

    Raises:
        FileNotFoundError: when nothing exists at ``path``.
        ValueError: for anything else, listing the accepted kinds.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"No such model or artifact: {path!r}.")
    if os.path.isdir(path):
        if os.path.isfile(os.path.join(path, "saved_model.pb")):
            return "savedmodel"
        if os.path.isfile(os.path.join(path, "model.keras")):
            return "keras"
    else:
        extension = os.path.splitext(path)[1].lower()
        kinds = {".keras": "keras", ".tflite": "tflite", ".onnx": "onnx"}
        if extension in kinds:
            return kinds[extension]
    raise ValueError(f"Cannot tell what kind of model {path!r} is; accepted: {', '.join(ACCEPTED_KINDS)}.")


def _softmax(x):
    x = x - np.max(x, axis=-1, keepdims=True)
    e = np.exp(x)
    return e / np.sum(e, axis=-1, keepdims=True)


def _looks_like_probabilities(outputs):
    return bool(np.all(outputs >= 0) and np.allclose(outputs.sum(-1), 1.0, atol=1e-3))


class Artifact:
    """A model in its runtime. Subclasses set ``image_size``, ``channels``,
    ``num_classes``, ``class_names``, ``output_kind`` and implement ``_run_batch``.
    """

    kind = None

    def __init__(self, path, class_names=None):
        self.path = os.fspath(path)
        self._class_names_spec = class_names
        self.class_names = None
        self.output_kind = None
        self.spec = None

    @property
    def input_range(self):
        """(low, high) of the float input (the spec's)."""
        return self.spec.input_range

    def _finish(self, manifest=None, labels=None, class_names=None, output_kind=None, image_spec=None, metadata=None):
        spec = self._class_names_spec or class_names
        if spec is None and manifest is not None:
            spec = manifest.get("class_names")
        if spec is None:
            spec = labels
        self.class_names = parse_class_names(spec, self.num_classes)
        self.output_kind = output_kind or (manifest or {}).get("output_kind")
        self.spec = image_spec or _spec_from(manifest, metadata, self.image_size, self.channels)

    def run(self, images):
        """Raw model outputs (B, K) float32 for (B, H, W, C) float32 images prepared as
        ``spec`` says (``spec.from_unit_range``, or ``keras_vit.data.images.read_images``)."""
        images = np.asarray(images, dtype="float32")
        expected = (self.image_size[0], self.image_size[1], self.channels)
        if images.ndim != 4 or images.shape[1:] != expected:
            raise ValueError(
                f"{self.path} takes images of shape (B, {expected[0]}, {expected[1]}, {expected[2]}); "
                f"got {images.shape}."
            )
        outputs = [self._run_batch(images[i : i + _BATCH_SIZE]) for i in range(0, len(images), _BATCH_SIZE)]
        return np.concatenate(outputs).astype("float32")

    def probabilities(self, images):
        """Class probabilities (B, K) for (B, H, W, C) float32 images prepared as ``spec`` says."""
        outputs = self.run(images)
        kind = self.output_kind
        if kind is None:  # a file without a manifest beside it
            kind = "probabilities" if _looks_like_probabilities(outputs) else "logits"
        return _softmax(outputs) if kind == "logits" else outputs

    @classmethod
    def latency_runner(cls, path, image, threads=None):
        """A callable that runs one (1, H, W, C) float32 ``image`` in this runtime with
        ``threads`` threads, opened as ``load_artifact`` opens it, for timing; None for a
        kind that is not timed (a Keras model)."""
        return None


class KerasArtifact(Artifact):
    kind = "keras"

    def __init__(self, path, class_names=None):
        super().__init__(path, class_names)
        self.model = load_keras_model(path)
        serving = ServingSpec.of(self.model)
        height, width, self.channels = serving.input_shape
        self.image_size = (height, width)
        self.num_classes = serving.num_classes
        self._finish(
            # A run's names; else those the model carries (a checkpoint's id2label).
            class_names=run_folder.of_model(path).class_names() or getattr(self.model, "class_names", None),
            output_kind=serving.output_kind,
            image_spec=serving.image_spec,
        )

    def _run_batch(self, images):
        return np.asarray(self.model(images, training=False))


class SavedModelArtifact(Artifact):
    kind = "savedmodel"

    def __init__(self, path, class_names=None):
        super().__init__(path, class_names)
        self._loaded, self._function = self._open(self.path)  # the loaded object keeps the variables alive
        spec = self._function.structured_input_signature[1]["images"]
        _, height, width, self.channels = spec.shape.as_list()
        self.image_size = (height, width)
        self.num_classes = int(self._function.structured_outputs["outputs"].shape[-1])
        manifest, labels = read_beside(os.path.dirname(os.path.abspath(self.path)), self.path)
        self._finish(manifest, labels)

    @staticmethod
    def _open(path):
        import tensorflow as tf

        loaded = tf.saved_model.load(os.fspath(path))
        if FLOAT_SIGNATURE not in loaded.signatures:
            raise ValueError(
                f"SavedModel {os.fspath(path)!r} has no {FLOAT_SIGNATURE!r} signature (it has "
                f"{sorted(loaded.signatures)}); export it with keras-vit export."
            )
        return loaded, loaded.signatures[FLOAT_SIGNATURE]

    def _run_batch(self, images):
        return self._function(images=images)["outputs"].numpy()

    def signature(self, name):
        """The loaded SavedModel's signature ``name`` (e.g. the bytes ``serving_default``)."""
        return self._loaded.signatures[name]

    @classmethod
    def latency_runner(cls, path, image, threads=None):
        # TensorFlow fixes its thread pools when it starts: the process's own count is used.
        import tensorflow as tf

        loaded, function = cls._open(path)
        tensor = tf.constant(image)
        return lambda: (loaded, function(images=tensor)["outputs"].numpy())


class TFLiteArtifact(Artifact):
    kind = "tflite"

    def __init__(self, path, class_names=None):
        super().__init__(path, class_names)
        self.interpreter = self._open(self.path)
        inputs, outputs = self.interpreter.get_input_details(), self.interpreter.get_output_details()
        if len(inputs) != 1 or len(inputs[0]["shape"]) != 4:
            raise ValueError(f"{self.path!r} is not an image classifier: inputs {[d['shape'].tolist() for d in inputs]}.")
        _, height, width, self.channels = (int(s) for s in inputs[0]["shape"])
        self.image_size = (height, width)
        self.num_classes = int(outputs[0]["shape"][-1])
        self.input_dtype = inputs[0]["dtype"]
        manifest, labels = read_beside(os.path.dirname(os.path.abspath(self.path)), self.path)
        self._finish(manifest, labels)

    @staticmethod
    def _open(path, threads=None):
        from ai_edge_litert.interpreter import Interpreter

        try:
            return Interpreter(model_path=os.fspath(path), num_threads=threads)
        except ValueError as error:
            raise ValueError(f"LiteRT cannot load {os.fspath(path)!r}: {error}") from error

    @staticmethod
    def _feed(interpreter, images):
        """Sizes the interpreter for ``images`` and sets them as its input (quantized for a
        full-integer file: scale and zero point from the input details)."""
        details = interpreter.get_input_details()[0]
        if list(details["shape"]) != list(images.shape):
            interpreter.resize_tensor_input(details["index"], images.shape, strict=False)
        interpreter.allocate_tensors()
        details = interpreter.get_input_details()[0]
        if details["dtype"] in (np.int8, np.uint8):
            scale, zero_point = details["quantization"]
            info = np.iinfo(details["dtype"])
            images = np.clip(np.round(images / scale + zero_point), info.min, info.max)
        interpreter.set_tensor(details["index"], images.astype(details["dtype"]))

    def _run_batch(self, images):
        interpreter = self.interpreter
        self._feed(interpreter, images)
        interpreter.invoke()
        output = interpreter.get_output_details()[0]
        result = interpreter.get_tensor(output["index"])
        if output["dtype"] in (np.int8, np.uint8):  # full-integer file: dequantize the output
            scale, zero_point = output["quantization"]
            result = (result.astype("float32") - zero_point) * scale
        return result

    @classmethod
    def latency_runner(cls, path, image, threads=None):
        interpreter = cls._open(path, threads)
        cls._feed(interpreter, image)
        return interpreter.invoke


class OnnxArtifact(Artifact):
    kind = "onnx"

    def __init__(self, path, class_names=None):
        super().__init__(path, class_names)
        self.session = self._open(self.path)
        inputs = self.session.get_inputs()
        if len(inputs) != 1 or len(inputs[0].shape) != 4:
            raise ValueError(f"{self.path!r} is not an image classifier: inputs {[i.shape for i in inputs]}.")
        self.input_name = inputs[0].name
        _, height, width, self.channels = inputs[0].shape
        self.image_size = (int(height), int(width))
        self.channels = int(self.channels)
        self.num_classes = int(self.session.get_outputs()[0].shape[-1])
        metadata = self.session.get_modelmeta().custom_metadata_map
        names = json.loads(metadata["class_names"]) if "class_names" in metadata else None
        manifest, labels = read_beside(os.path.dirname(os.path.abspath(self.path)), self.path)
        self._finish(
            manifest, labels if names is None else None, class_names=names,
            output_kind=metadata.get("output_kind"), metadata=metadata,
        )

    @staticmethod
    def _open(path, threads=None):
        import onnxruntime

        options = onnxruntime.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        try:
            return onnxruntime.InferenceSession(os.fspath(path), options, providers=["CPUExecutionProvider"])
        except Exception as error:  # onnxruntime raises its own exception types
            raise ValueError(f"onnxruntime cannot load {os.fspath(path)!r}: {error}") from error

    def _run_batch(self, images):
        return self.session.run(None, {self.input_name: images})[0]

    @classmethod
    def latency_runner(cls, path, image, threads=None):
        session = cls._open(path, threads)
        name = session.get_inputs()[0].name
        return lambda: session.run(None, {name: image})


# One reader per runtime; keras_vit.deploy.exporters registers each format's writer beside it.
READERS = {"keras": KerasArtifact, "savedmodel": SavedModelArtifact, "tflite": TFLiteArtifact, "onnx": OnnxArtifact}


def load_artifact(path, kind=None, class_names=None):
    """Opens a model or exported artifact in its own runtime.

    Args:
        path: ``.keras`` file, run folder, SavedModel folder, ``.tflite`` or ``.onnx`` file.
        kind: ``"keras"``, ``"savedmodel"``, ``"tflite"`` or ``"onnx"``; from the path when None.
        class_names: overrides the class names found with the artifact (a list, a
            comma-separated string or a file); otherwise the manifest / ``labels.txt``
            beside it, the ONNX metadata or the run's ``config.json``, else ``"0"``..

    Returns:
        An :class:`Artifact` with ``run``, ``probabilities``, ``image_size``, ``channels``
        and ``class_names``.

    Raises:
        ValueError: an unknown kind (the accepted kinds listed) or an unloadable file.
        FileNotFoundError: nothing at ``path``.
    """
    kind = kind or artifact_kind(path)
    if kind not in READERS:
        raise ValueError(f"Unknown artifact kind {kind!r}; expected one of {list(READERS)}.")
    return READERS[kind](path, class_names=class_names)


