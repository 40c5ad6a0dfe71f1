"""What an export folder holds, and any artifact opened in its own runtime.

The names of the files ``keras-vit export`` writes (and the manifest's tolerances), the
model facts every exporter needs (input size, output kind, class names), and
``load_artifact(path)``: a ``.keras`` file, SavedModel folder, ``.tflite`` or ``.onnx``
file behind one interface: ``run(images)`` takes (B, H, W, C) float32 images in the
model's ``input_range`` ([-1, 1], or [0, 255] for a model built with
``include_preprocessing=True``) and returns the raw outputs, ``probabilities`` the class
probabilities. Export verifies
its files through it; ``keras-vit predict`` predicts with it.
"""

from __future__ import annotations

import json
import os

import numpy as np

from keras_vit import run_folder

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


def parse_class_names(spec, num_classes):
    """Class names from a list, a comma-separated string or a file (one name per line).

    Args:
        spec: None, a list of names, ``"cat,dog"``, or the path of a text file.
        num_classes: how many names the model needs.

    Returns:
        A list of ``num_classes`` strings; ``"0"`` .. ``"K-1"`` when ``spec`` is None.

    Raises:
        ValueError: when the number of names is not ``num_classes``.
    """
    if spec is None:
        return [str(index) for index in range(num_classes)]
    if isinstance(spec, str):
        if os.path.isfile(spec):
            with open(spec) as file:
                names = [line.strip() for line in file if line.strip()]
            source = f"file {spec!r}"
        else:
            names = [name.strip() for name in spec.split(",")]
            source = f"{spec!r}"
    else:
        names = [str(name) for name in spec]
        source = "the list given"
    if len(names) != num_classes:
        raise ValueError(
            f"The model has {num_classes} classes but {source} gives {len(names)} class names; "
            f"give exactly {num_classes} (comma-separated or one per line in a file)."
        )
    # labels.txt holds one name a line; file names made from a name are made safe where they are written.
    unusable = [name for name in names if not name.strip() or any(c in name for c in "\n\r\0")]
    if unusable:
        raise ValueError(f"Class name {unusable[0]!r} in {source[:200]} is empty or spans lines; each class name must "
                         f"be one non-empty line of text.")
    return names


def model_input_spec(model):
    """``(height, width, channels)`` of a model's image input."""
    shape = model.inputs[0].shape
    if getattr(model, "dynamic_image_size", False):
        raise ValueError(
            f"{model.name} takes images of any size; the exported files are of one size: rebuild it at the size "
            f"to serve (from_pretrained(..., image_size=S) or dynamic_image_size=False), or export a dynamic "
            f"SavedModel with model.export(path, format='tf_saved_model')."
        )
    if len(shape) != 4 or any(size is None for size in shape[1:]):
        raise ValueError(f"Expected a model with a (B, H, W, C) image input of fixed size; got {shape}.")
    return int(shape[1]), int(shape[2]), int(shape[3])


UNIT_RANGE = (-1.0, 1.0)  # x / 127.5 - 1, what the models take by default
PIXEL_RANGE = (0.0, 255.0)  # models built with include_preprocessing=True


def takes_pixels(model):
    """Whether a model normalises inside (``include_preprocessing=True``) and so takes
    [0, 255] pixels instead of [-1, 1]."""
    if getattr(model, "include_preprocessing", False):
        return True
    try:
        return bool(model.get_config().get("include_preprocessing", False))
    except (NotImplementedError, TypeError, AttributeError):
        return False


def model_input_range(model):
    """``(low, high)`` of a model's float input: :data:`PIXEL_RANGE` or :data:`UNIT_RANGE`."""
    return PIXEL_RANGE if takes_pixels(model) else UNIT_RANGE


def from_unit_range(images, input_range):
    """Images in [-1, 1] (as keras_vit.data reads them) -> the same images in ``input_range``."""
    images = np.asarray(images, dtype="float32")
    if tuple(input_range) == PIXEL_RANGE:
        return (images + 1.0) * 127.5
    return images


def model_output_kind(model):
    """``"logits"`` when the model's head has no activation, else ``"probabilities"``."""
    activation = getattr(model, "classifier_activation", None)
    if activation in (None, "linear"):
        return "logits"
    if activation == "softmax":
        return "probabilities"
    raise ValueError(
        f"Cannot serve class probabilities from a head with activation {activation!r}; "
        f"export a model whose head returns logits (None) or 'softmax'."
    )


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
        self.input_range = UNIT_RANGE

    def _finish(self, manifest=None, labels=None, class_names=None, output_kind=None, input_range=None):
        spec = self._class_names_spec or class_names
        if spec is None and manifest is not None:
            spec = manifest.get("class_names")
        if spec is None:
            spec = labels
        self.class_names = parse_class_names(spec, self.num_classes)
        self.output_kind = output_kind or (manifest or {}).get("output_kind")
        if input_range is None and manifest is not None:
            input_range = manifest.get("input_range")
        self.input_range = tuple(float(v) for v in input_range) if input_range is not None else UNIT_RANGE

    def run(self, images):
        """Raw model outputs (B, K) float32 for (B, H, W, C) float32 images in the model's
        input range (``input_range``: [-1, 1], or [0, 255] for a model that normalises inside)."""
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
        """Class probabilities (B, K) for (B, H, W, C) float32 images in ``input_range``."""
        outputs = self.run(images)
        kind = self.output_kind
        if kind is None:  # a file without a manifest beside it
            kind = "probabilities" if _looks_like_probabilities(outputs) else "logits"
        return _softmax(outputs) if kind == "logits" else outputs


def _manifest_beside(folder):
    manifest, labels = None, None
    manifest_path = os.path.join(folder, MANIFEST_FILENAME)
    if os.path.isfile(manifest_path):
        with open(manifest_path) as file:
            manifest = json.load(file)
        if not isinstance(manifest, dict):
            raise ValueError(f"{manifest_path} holds a JSON {type(manifest).__name__}, not the object a keras-vit "
                             f"manifest is; remove it or export again.")
    labels_path = os.path.join(folder, LABELS_FILENAME)
    if os.path.isfile(labels_path):
        labels = labels_path
    return manifest, labels


class KerasArtifact(Artifact):
    kind = "keras"

    def __init__(self, path, class_names=None):
        super().__init__(path, class_names)
        self.model = load_keras_model(path)
        height, width, self.channels = model_input_spec(self.model)
        self.image_size = (height, width)
        self.num_classes = int(self.model.outputs[0].shape[-1])
        self._finish(
            # A run's names; else those the model carries (a checkpoint's id2label).
            class_names=run_folder.of_model(path).class_names() or getattr(self.model, "class_names", None),
            output_kind=model_output_kind(self.model),
            input_range=model_input_range(self.model),
        )

    def _run_batch(self, images):
        return np.asarray(self.model(images, training=False))


class SavedModelArtifact(Artifact):
    kind = "savedmodel"

    def __init__(self, path, class_names=None):
        import tensorflow as tf

        super().__init__(path, class_names)
        loaded = tf.saved_model.load(self.path)
        if FLOAT_SIGNATURE not in loaded.signatures:
            raise ValueError(
                f"SavedModel {self.path!r} has no {FLOAT_SIGNATURE!r} signature (it has "
                f"{sorted(loaded.signatures)}); export it with keras-vit export."
            )
        self._loaded = loaded  # keeps the variables alive
        self._function = loaded.signatures[FLOAT_SIGNATURE]
        spec = self._function.structured_input_signature[1]["images"]
        _, height, width, self.channels = spec.shape.as_list()
        self.image_size = (height, width)
        self.num_classes = int(self._function.structured_outputs["outputs"].shape[-1])
        manifest, labels = _manifest_beside(os.path.dirname(os.path.abspath(self.path)))
        self._finish(manifest, labels)

    def _run_batch(self, images):
        return self._function(images=images)["outputs"].numpy()


class TFLiteArtifact(Artifact):
    kind = "tflite"

    def __init__(self, path, class_names=None):
        from ai_edge_litert.interpreter import Interpreter

        super().__init__(path, class_names)
        try:
            self.interpreter = Interpreter(model_path=self.path)
        except ValueError as error:
            raise ValueError(f"LiteRT cannot load {self.path!r}: {error}") from error
        inputs, outputs = self.interpreter.get_input_details(), self.interpreter.get_output_details()
        if len(inputs) != 1 or len(inputs[0]["shape"]) != 4:
            raise ValueError(f"{self.path!r} is not an image classifier: inputs {[d['shape'].tolist() for d in inputs]}.")
        _, height, width, self.channels = (int(s) for s in inputs[0]["shape"])
        self.image_size = (height, width)
        self.num_classes = int(outputs[0]["shape"][-1])
        self.input_dtype = inputs[0]["dtype"]
        manifest, labels = _manifest_beside(os.path.dirname(os.path.abspath(self.path)))
        self._finish(manifest, labels)

    def _run_batch(self, images):
        interpreter = self.interpreter
        index = interpreter.get_input_details()[0]["index"]
        interpreter.resize_tensor_input(index, images.shape, strict=False)
        interpreter.allocate_tensors()
        details, output = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
        if details["dtype"] in (np.int8, np.uint8):
            # Full-integer model: quantize the input, dequantize the output.
            scale, zero_point = details["quantization"]
            info = np.iinfo(details["dtype"])
            images = np.clip(np.round(images / scale + zero_point), info.min, info.max).astype(details["dtype"])
        interpreter.set_tensor(details["index"], images)
        interpreter.invoke()
        result = interpreter.get_tensor(output["index"])
        if output["dtype"] in (np.int8, np.uint8):
            scale, zero_point = output["quantization"]
            result = (result.astype("float32") - zero_point) * scale
        return result


class OnnxArtifact(Artifact):
    kind = "onnx"

    def __init__(self, path, class_names=None):
        import onnxruntime

        super().__init__(path, class_names)
        try:
            self.session = onnxruntime.InferenceSession(self.path, providers=["CPUExecutionProvider"])
        except Exception as error:  # onnxruntime raises its own exception types
            raise ValueError(f"onnxruntime cannot load {self.path!r}: {error}") from error
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
        manifest, labels = _manifest_beside(os.path.dirname(os.path.abspath(self.path)))
        input_range = json.loads(metadata["input_range"]) if "input_range" in metadata else None
        self._finish(
            manifest, labels if names is None else None, class_names=names,
            output_kind=metadata.get("output_kind"), input_range=input_range,
        )

    def _run_batch(self, images):
        return self.session.run(None, {self.input_name: images})[0]


_ARTIFACTS = {"keras": KerasArtifact, "savedmodel": SavedModelArtifact, "tflite": TFLiteArtifact, "onnx": OnnxArtifact}


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
    if kind not in _ARTIFACTS:
        raise ValueError(f"Unknown artifact kind {kind!r}; expected one of {list(_ARTIFACTS)}.")
    return _ARTIFACTS[kind](path, class_names=class_names)


