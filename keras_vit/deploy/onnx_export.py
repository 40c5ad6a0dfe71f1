"""The ONNX exporter: tf2onnx's conversion of the float entry point, self-describing
(class names, output kind and input spec in the model's metadata)."""

from __future__ import annotations

import json

from keras_vit.deploy.artifacts import OnnxArtifact
from keras_vit.deploy.exporter import Exporter
from keras_vit.deploy.layout import DEFAULT_OPSET, ONNX_FILENAME
from keras_vit.deploy.serving import ServingSpec, float_function
from keras_vit.files import replaced_atomically


def export_onnx(model, path, class_names, opset=DEFAULT_OPSET, serving=None):
    """Converts the model to ONNX with tf2onnx, with a dynamic batch dimension.

    The graph takes ``images`` (B, H, W, C) float32 prepared as the model's spec says and
    returns ``outputs``. The class names, output kind and input spec are stored in the
    model's metadata (``class_names``, ``image_spec`` and ``input_range`` as JSON,
    ``output_kind``), so the file is self-describing.

    Args:
        model: the Keras model.
        path: the ``.onnx`` file to write.
        class_names: K class names.
        opset: ONNX opset, at least 17.
        serving: the model's :class:`ServingSpec` (computed from ``class_names`` when None).

    Returns:
        ``path``.

    Raises:
        ValueError: for an opset below 17.
        RuntimeError: when tf2onnx fails (its message included).
    """
    import onnx
    import tf2onnx

    if int(opset) < DEFAULT_OPSET:
        raise ValueError(f"ONNX opset must be at least {DEFAULT_OPSET}; got {opset}.")
    serving = serving or ServingSpec.of(model, class_names)
    function = float_function(model, serving)
    try:
        onnx_model, _ = tf2onnx.convert.from_function(
            function, input_signature=function.input_signature, opset=int(opset)
        )
    except Exception as error:  # tf2onnx raises many kinds
        raise RuntimeError(f"ONNX conversion of {path} failed: {error}") from error
    onnx_model.graph.output[0].name = _rename_output(onnx_model, "outputs")
    onnx.helper.set_model_props(
        onnx_model,
        {
            "class_names": json.dumps(list(serving.class_names)),
            "output_kind": serving.output_kind,
            "input_range": json.dumps(list(serving.image_spec.input_range)),
            "image_spec": json.dumps(serving.image_spec.to_dict()),
        },
    )
    with replaced_atomically(path) as temporary:
        onnx.save(onnx_model, temporary)
    return path


def _rename_output(onnx_model, new_name):
    # tf2onnx names the output after the TF tensor ("Identity:0"); give it a readable name.
    old_name = onnx_model.graph.output[0].name
    for node in onnx_model.graph.node:
        node.output[:] = [new_name if name == old_name else name for name in node.output]
        node.input[:] = [new_name if name == old_name else name for name in node.input]
    return new_name


class OnnxExporter(Exporter):
    """The ONNX file at ``opset``."""

    format = "onnx"
    reader = OnnxArtifact
    filename = ONNX_FILENAME

    def __init__(self, opset=DEFAULT_OPSET):
        self.opset = int(opset)

    def write(self, model, path, serving):
        export_onnx(model, path, serving.class_names, self.opset, serving)

    def describe(self, path, serving):
        return {"opset": self.opset}
