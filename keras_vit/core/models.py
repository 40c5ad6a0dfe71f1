"""The Vision Transformer as one functional Keras model.

``VisionTransformer`` is a functional ``keras.Model`` whose ``get_config`` returns its
constructor's arguments, so ``.keras`` files rebuild it exactly. The paper's family of
named variants (``ViT("B/16")``, ``ViTB16(...)``) is built over it in :mod:`keras_vit.zoo`.
"""

from __future__ import annotations

import contextlib
import inspect
from typing import Optional

import keras

from keras_vit import backends
from keras_vit.core import hybrid
from keras_vit.core.config import (
    POOLINGS,
    POSITION_EMBEDDINGS,
    as_pair,
    block_flops,
    check_architecture,
    refuse_unknown_arguments,
)
from keras_vit.core.layers import LAYER_NORM_EPSILON, LayerNorm, Patches, PatchEncoder, TokenPooling, TransformerBlock


@contextlib.contextmanager
def _global_dtype_policy(policy):
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(policy)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def _check_choice(value, name, choices):
    if value not in choices:
        raise ValueError(f"Unknown {name} {value!r}; expected one of {list(choices)}.")


@keras.saving.register_keras_serializable(package="keras_vit")
class VisionTransformer(keras.Model):
    """Vision Transformer (Dosovitskiy et al., 2021) as a functional Keras model.

    images -> [ResNet stem] -> Patches -> PatchEncoder -> TransformerBlock x L ->
    ``encoder_norm`` -> pool (class token or mean) -> [``pre_logits`` Dense + tanh] ->
    ``head``. Layer names follow the original checkpoints (``encoderblock_{i}``,
    ``encoder_norm``, ``pre_logits``, ``head``).

    Args:
        image_size: int or (height, width); each a multiple of the patch size (times the
            stem's stride for hybrids).
        patch_size: int or (height, width).
        hidden_size: width D of the tokens.
        num_layers: number of Transformer blocks.
        num_heads: attention heads per block.
        mlp_dim: width of the MLP's hidden layer.
        num_classes: classes of the head (ignored when ``include_top=False``).
        channels: image channels (3 for RGB, 1 for grayscale).
        include_top: with the head; without it the model returns the pooled
            representation (after ``pre_logits`` when there is one).
        pooling: ``"token"`` (class token) or ``"gap"`` (mean of all tokens, no class token).
        representation_size: width of the pre-logits layer (Dense + tanh), or None.
        dropout: dropout rate after the embedding, in attention output and MLP.
        attention_dropout: dropout rate on attention probabilities.
        drop_path_rate: stochastic depth, rising linearly from 0 to this over the blocks.
        classifier_activation: activation of the head; None returns logits like the
            original (train with ``from_logits=True``), ``"softmax"`` probabilities.
        position_embedding: ``"learned"``, ``"learned_2d"``, ``"sincos2d"`` or ``"none"``.
        resnet: None, or (stage sizes, width factor) for a hybrid ResNet v2 stem.
        name: model name.
    """

    def __init__(
        self,
        *,
        image_size=224,
        patch_size=16,
        hidden_size=768,
        num_layers=12,
        num_heads=12,
        mlp_dim=3072,
        num_classes=1000,
        channels=3,
        include_top=True,
        pooling="token",
        representation_size=None,
        dropout=0.0,
        attention_dropout=0.0,
        drop_path_rate=0.0,
        classifier_activation=None,
        position_embedding="learned",
        resnet=None,
        dtype=None,
        name="vit",
        **kwargs,
    ):
        refuse_unknown_arguments("VisionTransformer", kwargs, CONSTRUCTOR_ARGUMENTS)
        if not isinstance(include_top, bool):
            raise ValueError(f"include_top={include_top!r}; expected True or False.")
        # The layers take the policy current at their creation: build under the requested
        # one, so that a mixed-precision model reloads as mixed precision.
        policy = keras.dtype_policies.get(dtype) if dtype is not None else keras.config.dtype_policy()
        with _global_dtype_policy(policy):
            image_size = as_pair(image_size, "image_size")
            patch_size = as_pair(patch_size, "patch_size")
            _check_choice(pooling, "pooling", POOLINGS)
            _check_choice(position_embedding, "position_embedding", POSITION_EMBEDDINGS)
            if include_top and (not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1):
                raise ValueError(
                    f"num_classes must be a positive integer when include_top=True; got {num_classes!r}. "
                    f"Use include_top=False for a model without a head."
                )
            check_architecture(
                hidden_size=hidden_size, num_layers=num_layers, num_heads=num_heads, mlp_dim=mlp_dim,
                patch_size=patch_size, channels=channels, pooling=pooling, dropout=dropout,
                attention_dropout=attention_dropout, drop_path_rate=drop_path_rate,
                representation_size=representation_size,
            )
            if resnet is not None:
                stages, width_factor = resnet
                resnet = (tuple(int(s) for s in stages), float(width_factor))
                stride = hybrid.stem_stride(resnet[0])
            else:
                stride = 1
            step = (patch_size[0] * stride, patch_size[1] * stride)
            if image_size[0] % step[0] or image_size[1] % step[1]:
                what = f"the patch size {patch_size[0]}x{patch_size[1]}" + (
                    f" times the ResNet stem's stride {stride}" if stride > 1 else ""
                )
                raise ValueError(
                    f"image_size {image_size[0]}x{image_size[1]} is not divisible by {what}: height "
                    f"and width must be multiples of {step[0]}x{step[1]} (e.g. "
                    f"{max(1, round(image_size[0] / step[0])) * step[0]}x"
                    f"{max(1, round(image_size[1] / step[1])) * step[1]})."
                )
            grid_size = (image_size[0] // step[0], image_size[1] // step[1])

            images = keras.Input((image_size[0], image_size[1], channels), name="images")
            x = images
            if resnet is not None:
                x = hybrid.resnet_stem(x, *resnet)
            x = Patches(patch_size, name="patches")(x)
            x = PatchEncoder(
                hidden_size,
                grid_size,
                use_class_token=pooling == "token",
                position_embedding=position_embedding,
                name="embedding",
            )(x)
            x = keras.layers.Dropout(dropout, name="embedding_dropout")(x)
            for i in range(num_layers):
                rate = drop_path_rate * i / max(num_layers - 1, 1)
                x = TransformerBlock(
                    num_heads,
                    mlp_dim,
                    dropout=dropout,
                    attention_dropout=attention_dropout,
                    drop_path_rate=rate,
                    name=f"encoderblock_{i}",
                )(x)
            x = LayerNorm(epsilon=LAYER_NORM_EPSILON, name="encoder_norm")(x)
            x = TokenPooling(pooling, name="pool")(x)
            if representation_size:
                x = keras.layers.Dense(representation_size, activation="tanh", name="pre_logits")(x)
            if include_top:
                # Zero-initialised as in the original; float32 so mixed precision keeps exact logits.
                x = keras.layers.Dense(
                    num_classes,
                    activation=classifier_activation,
                    kernel_initializer="zeros",
                    name="head",
                    dtype="float32",
                )(x)
            super().__init__(inputs=images, outputs=x, name=name, **kwargs)
        self.dtype_policy_name = policy.name

        self.image_size = image_size
        self.patch_size = patch_size
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.num_heads = num_heads
        self.mlp_dim = mlp_dim
        self.num_classes = num_classes
        self.channels = channels
        self.include_top = include_top
        self.pooling = pooling
        self.representation_size = representation_size
        self.dropout = dropout
        self.attention_dropout = attention_dropout
        self.drop_path_rate = drop_path_rate
        self.classifier_activation = classifier_activation
        self.position_embedding = position_embedding
        self.resnet = resnet
        self.grid_size = grid_size

    def call(self, inputs, training=None, mask=None, **kwargs):
        self._check_images(inputs)
        return super().call(inputs, training=training, mask=mask, **kwargs)

    # Keras's own steps (fit, evaluate, predict and the *_on_batch calls) trace with the
    # fused TensorFlow-CPU forms where they apply; any other trace (exporters) is portable.
    def train_step(self, *args, **kwargs):
        with backends.fused_forms():
            return super().train_step(*args, **kwargs)

    def test_step(self, *args, **kwargs):
        with backends.fused_forms():
            return super().test_step(*args, **kwargs)

    def predict_step(self, *args, **kwargs):
        with backends.fused_forms():
            return super().predict_step(*args, **kwargs)

    def _check_images(self, images):
        dtype = getattr(images, "dtype", None)
        if dtype is not None and "int" in keras.backend.standardize_dtype(dtype):
            # 0-255 pixels fed as they are would be classified, wrongly, without a word.
            raise ValueError(
                f"{self.name} takes float images scaled to [-1, 1]; received {keras.backend.standardize_dtype(dtype)} "
                f"pixels. Scale them with keras_vit.preprocess_input(images) (x / 127.5 - 1) first."
            )
        shape = tuple(getattr(images, "shape", ()))
        expected = (self.image_size[0], self.image_size[1], self.channels)
        if len(shape) != 4 or any(
            got is not None and got != want for got, want in zip(shape[1:], expected)
        ):
            raise ValueError(
                f"{self.name} expects images of shape (batch, {expected[0]}, {expected[1]}, "
                f"{expected[2]}) ({expected[2]} channel{'s' if expected[2] > 1 else ''}), scaled "
                f"to [-1, 1]; received shape {shape}. Resize the images, or build the model "
                f"with image_size=/channels= to match them."
            )

    def get_config(self):
        return {
            "image_size": self.image_size,
            "patch_size": self.patch_size,
            "hidden_size": self.hidden_size,
            "num_layers": self.num_layers,
            "num_heads": self.num_heads,
            "mlp_dim": self.mlp_dim,
            "num_classes": self.num_classes,
            "channels": self.channels,
            "include_top": self.include_top,
            "pooling": self.pooling,
            "representation_size": self.representation_size,
            "dropout": self.dropout,
            "attention_dropout": self.attention_dropout,
            "drop_path_rate": self.drop_path_rate,
            "classifier_activation": self.classifier_activation,
            "position_embedding": self.position_embedding,
            "resnet": self.resnet,
            "dtype": self.dtype_policy_name,
            "name": self.name,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        for key in ("image_size", "patch_size"):
            config[key] = tuple(config[key])
        if config.get("resnet") is not None:
            stages, width_factor = config["resnet"]
            config["resnet"] = (tuple(stages), width_factor)
        return cls(**config)


def forward_flops(model: VisionTransformer) -> int:
    """Multiply-add FLOPs (2 per multiply-accumulate) of one image's forward pass.

    Counts the matrix products and convolutions (patch projection, attention projections,
    attention scores and weighted sum, MLP, pre-logits, head, ResNet stem); norms,
    softmax and activations are left out, as in the paper's and timm's figures.
    """
    flops = 0
    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2D):
            flops += hybrid.conv_flops(layer, layer.input.shape)
        elif isinstance(layer, PatchEncoder):
            flops += 2 * layer.num_patches * layer.projection.kernel.shape[0] * layer.hidden_size
        elif isinstance(layer, TransformerBlock):
            flops += block_flops(layer.output.shape[1], layer.output.shape[2], layer.mlp_dim)
        elif isinstance(layer, keras.layers.Dense):
            flops += 2 * layer.kernel.shape[0] * layer.kernel.shape[1]
        elif isinstance(layer, hybrid.BottleneckUnit):
            flops += layer.flops(layer.input.shape)
    return flops


# What VisionTransformer(...) takes: its own arguments and Keras's ``trainable``.
CONSTRUCTOR_ARGUMENTS = frozenset(
    name for name, parameter in inspect.signature(VisionTransformer.__init__).parameters.items()
    if parameter.kind is inspect.Parameter.KEYWORD_ONLY
) | {"trainable"}
