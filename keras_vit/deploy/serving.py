"""What an exported model takes and returns: one :class:`ServingSpec`, computed once per export.

The input contract (:class:`~keras_vit.core.image_spec.ImageSpec`), the fixed input shape,
the output kind (logits or probabilities), the class names and the top-k of the bytes
signature. Every exporter, the verification and the manifest read these facts from the
spec instead of asking the model again; the float entry point every format traces is
built from it too.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Tuple

from keras_vit.core.image_spec import ImageSpec
from keras_vit.data.images import DEFAULT_MAX_PIXELS
from keras_vit.deploy.layout import DEFAULT_TOP_K


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


def model_image_spec(model):
    """The model's input contract (:class:`ImageSpec`), for keras_vit models and any Keras
    image classifier (the original's preprocessing)."""
    return getattr(model, "image_spec", None) or ImageSpec.of(model)


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


@dataclasses.dataclass(frozen=True)
class ServingSpec:
    """The facts about a model that every exported file serves.

    Attributes:
        image_spec: the input contract (size, channels, range, resize and crop).
        input_shape: ``(height, width, channels)`` of the fixed-size input.
        output_kind: ``"logits"`` or ``"probabilities"``.
        class_names: the K class names.
        top_k: k of the bytes signature's top-k outputs (at most K).
        max_pixels: largest decoded width x height the bytes signature accepts.
    """

    image_spec: ImageSpec
    input_shape: Tuple[int, int, int]
    output_kind: str
    class_names: Tuple[str, ...]
    top_k: int = DEFAULT_TOP_K
    max_pixels: int = DEFAULT_MAX_PIXELS

    @classmethod
    def of(cls, model, class_names=None, top_k=DEFAULT_TOP_K, max_pixels=DEFAULT_MAX_PIXELS):
        """The spec of a fixed-size Keras classifier; ``class_names`` as
        :func:`parse_class_names` takes them. Raises ValueError for a model that cannot be
        served or class names that do not fit it."""
        input_shape = model_input_spec(model)
        num_classes = int(model.outputs[0].shape[-1])
        names = tuple(parse_class_names(class_names, num_classes))
        return cls(
            image_spec=model_image_spec(model), input_shape=input_shape, output_kind=model_output_kind(model),
            class_names=names, top_k=min(int(top_k), num_classes), max_pixels=int(max_pixels),
        )

    @property
    def num_classes(self):
        return len(self.class_names)

    @property
    def input_range(self):
        """``[low, high]`` floats of the float input."""
        return [float(value) for value in self.image_spec.input_range]

    def input_entry(self):
        """The manifest's description of the float input."""
        return {"name": "images", "shape": [None, *self.input_shape], "dtype": "float32", "range": self.input_range}

    def outputs_entry(self):
        """The manifest's description of the raw output."""
        return {"name": "outputs", "kind": self.output_kind, "shape": [None, self.num_classes]}


def exported_call(model, images):
    """The model's output for a traced export graph."""
    # A trace outside Keras's own steps gets the portable graph (keras_vit.backends).
    return model(images, training=False)


def float_function(model, serving):
    """The float entry point every format traces: (B, H, W, C) float32 -> ``{"outputs"}``."""
    import tensorflow as tf

    spec = tf.TensorSpec([None, *serving.input_shape], tf.float32, name="images")

    @tf.function(input_signature=[spec])
    def serve_images(images):
        return {"outputs": exported_call(model, images)}

    return serve_images


def probabilities(outputs, output_kind):
    """Class probabilities from the raw outputs of a model of ``output_kind`` (traced)."""
    import tensorflow as tf

    return tf.nn.softmax(outputs, axis=-1) if output_kind == "logits" else outputs
