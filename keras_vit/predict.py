"""Predictions from any keras_vit artifact: ``.keras``, SavedModel folder, ``.tflite``, ``.onnx``.

``load_artifact(path)`` opens a model in its own runtime (Keras, TensorFlow, the
ai-edge-litert ``Interpreter``, onnxruntime) behind one interface: ``run(images)`` takes
(B, H, W, C) float32 images in [-1, 1] and returns the raw outputs, ``probabilities``
the class probabilities. ``predict_files`` reads image files (any size, resized to the
model's), reports the unreadable ones by name and predicts the rest.
"""

from __future__ import annotations

import json
import os

import numpy as np

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif")
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

    def _finish(self, manifest=None, labels=None, class_names=None, output_kind=None):
        from keras_vit.export import parse_class_names

        spec = self._class_names_spec or class_names
        if spec is None and manifest is not None:
            spec = manifest.get("class_names")
        if spec is None:
            spec = labels
        self.class_names = parse_class_names(spec, self.num_classes)
        self.output_kind = output_kind or (manifest or {}).get("output_kind")

    def run(self, images):
        """Raw model outputs (B, K) float32 for (B, H, W, C) float32 images in [-1, 1]."""
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
        """Class probabilities (B, K) for (B, H, W, C) float32 images in [-1, 1]."""
        outputs = self.run(images)
        kind = self.output_kind
        if kind is None:  # a file without a manifest beside it
            kind = "probabilities" if _looks_like_probabilities(outputs) else "logits"
        return _softmax(outputs) if kind == "logits" else outputs


def _manifest_beside(folder):
    from keras_vit.export import LABELS_FILENAME, MANIFEST_FILENAME

    manifest, labels = None, None
    manifest_path = os.path.join(folder, MANIFEST_FILENAME)
    if os.path.isfile(manifest_path):
        with open(manifest_path) as file:
            manifest = json.load(file)
    labels_path = os.path.join(folder, LABELS_FILENAME)
    if os.path.isfile(labels_path):
        labels = labels_path
    return manifest, labels


class KerasArtifact(Artifact):
    kind = "keras"

    def __init__(self, path, class_names=None):
        from keras_vit.export import load_keras_model, model_input_spec, model_output_kind, resolve_model_path, run_class_names

        super().__init__(path, class_names)
        self.model = load_keras_model(path)
        height, width, self.channels = model_input_spec(self.model)
        self.image_size = (height, width)
        self.num_classes = int(self.model.outputs[0].shape[-1])
        self._finish(class_names=run_class_names(resolve_model_path(path)), output_kind=model_output_kind(self.model))

    def _run_batch(self, images):
        return np.asarray(self.model(images, training=False))


class SavedModelArtifact(Artifact):
    kind = "savedmodel"

    def __init__(self, path, class_names=None):
        import tensorflow as tf

        from keras_vit.export import FLOAT_SIGNATURE

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
        self._finish(manifest, labels if names is None else None, class_names=names, output_kind=metadata.get("output_kind"))

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


# --------------------------------------------------------------------------- images
def list_image_files(directory):
    """Image files (by extension) under ``directory``, recursively, sorted."""
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"No such folder of images: {directory!r}.")
    found = []
    for root, dirs, files in os.walk(directory):
        dirs.sort()
        found += [os.path.join(root, name) for name in sorted(files) if name.lower().endswith(IMAGE_EXTENSIONS)]
    return found


def read_images(paths, image_size, channels):
    """Reads image files into model input, setting aside those that cannot be read.

    Args:
        paths: image file paths (JPEG, PNG, BMP, GIF; any size).
        image_size: (height, width) to resize to (bilinear).
        channels: 1 (grayscale) or 3 (RGB); images are converted.

    Returns:
        ``(images, read_paths, errors)``: float32 (N, H, W, C) in [-1, 1] for the
        ``read_paths`` that could be read, and ``{path: reason}`` for the others.
    """
    import tensorflow as tf

    from keras_vit.export import decode_and_resize

    images, read, errors = [], [], {}
    for path in paths:
        path = os.fspath(path)
        if not os.path.isfile(path):
            errors[path] = "no such file" if not os.path.exists(path) else "not a file"
            continue
        try:
            encoded = tf.io.read_file(path)
            images.append(decode_and_resize(encoded, tuple(image_size), channels).numpy())
        except (tf.errors.OpError, ValueError) as error:
            message = getattr(error, "message", str(error)).strip().splitlines()[0]
            errors[path] = f"not a readable image ({message})"
            continue
        read.append(path)
    shape = (0, image_size[0], image_size[1], channels)
    return (np.stack(images) if images else np.zeros(shape, "float32")), read, errors


def predict_files(artifact, image_paths, top_k=5, class_names=None):
    """Predicts image files with any artifact and returns the top-k classes of each.

    Args:
        artifact: a path (see :func:`load_artifact`) or an :class:`Artifact`.
        image_paths: image files; unreadable ones are reported, the others predicted.
        top_k: how many classes to return per image.
        class_names: overrides the artifact's class names.

    Returns:
        ``{"artifact", "kind", "predictions": [{"file", "top_k": [{"class_id", "label",
        "probability"}]}], "errors": [{"file", "error"}]}``.
    """
    if not isinstance(artifact, Artifact):
        artifact = load_artifact(artifact, class_names=class_names)
    if int(top_k) < 1:
        raise ValueError(f"top_k must be at least 1; got {top_k}.")
    images, read, errors = read_images(image_paths, artifact.image_size, artifact.channels)
    predictions = []
    if len(read):
        probabilities = artifact.probabilities(images)
        k = min(int(top_k), probabilities.shape[-1])
        for path, row in zip(read, probabilities):
            order = np.argsort(-row, kind="stable")[:k]
            predictions.append(
                {
                    "file": path,
                    "top_k": [
                        {"class_id": int(i), "label": artifact.class_names[i], "probability": float(row[i])}
                        for i in order
                    ],
                }
            )
    return {
        "artifact": artifact.path,
        "kind": artifact.kind,
        "predictions": predictions,
        "errors": [{"file": path, "error": reason} for path, reason in errors.items()],
    }


def format_predictions(result):
    """A Markdown table of :func:`predict_files`' result: one row per image."""
    rows = [["file", "prediction", "probability", "top-k"]]
    for item in result["predictions"]:
        best = item["top_k"][0]
        others = ", ".join(f"{c['label']} {c['probability']:.3f}" for c in item["top_k"])
        rows.append([item["file"], best["label"], f"{best['probability']:.4f}", others])
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = ["| " + " | ".join(cell.ljust(w) for cell, w in zip(rows[0], widths)) + " |"]
    lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    lines += ["| " + " | ".join(cell.ljust(w) for cell, w in zip(row, widths)) + " |" for row in rows[1:]]
    return "\n".join(lines)
