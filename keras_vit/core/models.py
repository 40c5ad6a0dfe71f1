"""The Vision Transformer as one functional Keras model.

``VisionTransformer`` is a functional ``keras.Model`` whose ``get_config`` returns its
constructor's arguments, so ``.keras`` files rebuild it exactly. The paper's family of
named variants (``ViT("B/16")``, ``ViTB16(...)``) is built over it in :mod:`keras_vit.zoo`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect

import keras

from keras_vit import backends
from keras_vit.core import hybrid
from keras_vit.core.image_spec import ImageSpec
from keras_vit.core.config import ARGUMENT_NAMES, VisionTransformerConfig, block_flops
from keras_vit.core.layers import (
    LayerNorm,
    Patches,
    PatchEncoder,
    PixelNormalization,
    TokenGrid,
    TokenPooling,
    TransformerBlock,
)


@contextlib.contextmanager
def _global_dtype_policy(policy):
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(policy)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def _encode(config: VisionTransformerConfig, images):
    """images -> [preprocessing] -> [ResNet stem] -> patches -> embedding -> blocks -> tokens.

    Returns the tokens (before ``encoder_norm`` when the norm follows pooling) and the
    number of prefix tokens (class, distillation, registers) in front of the patches.
    """
    x = images
    if config.include_preprocessing:
        x = PixelNormalization(config.pixel_mean, config.pixel_std, name="preprocessing")(x)
    if config.resnet is not None:
        x = hybrid.resnet_stem(x, *config.resnet)
    x = Patches(config.patch_size, flatten=not config.dynamic_image_size, name="patches")(x)
    encoder = PatchEncoder(
        config.hidden_size,
        config.grid_size,
        use_class_token=config.pooling == "token",
        position_embedding=config.position_embedding,
        distillation_token=config.distillation_token,
        num_register_tokens=config.num_register_tokens,
        patch_position_embedding_only=config.patch_position_embedding_only,
        position_resampling=config.position_resampling if config.dynamic_image_size else None,
        name="embedding",
    )
    x = encoder(x)
    x = keras.layers.Dropout(config.dropout, name="embedding_dropout")(x)
    for i in range(config.num_layers):
        x = TransformerBlock(
            config.num_heads,
            config.mlp_dim,
            dropout=config.dropout,
            attention_dropout=config.attention_dropout,
            drop_path_rate=config.drop_path_rate * i / max(config.num_layers - 1, 1),  # timm's linspace
            layer_norm_epsilon=config.layer_norm_epsilon,
            gelu=config.gelu,
            layer_scale_init=config.layer_scale_init,
            name=f"encoderblock_{i}",
        )(x)
    if not config.norm_after_pooling:
        x = LayerNorm(epsilon=config.layer_norm_epsilon, name="encoder_norm")(x)
    return x, encoder.num_prefix_tokens


def _pool_and_heads(config: VisionTransformerConfig, tokens, num_prefix_tokens):
    """tokens -> pool -> [``fc_norm``] -> [``pre_logits``] -> [head(s)].

    Returns the model's output and, for DeiT, both heads' outputs (else None).
    """
    x = TokenPooling(config.pooling, num_prefix_tokens=num_prefix_tokens, name="pool")(tokens)
    if config.norm_after_pooling:
        x = LayerNorm(epsilon=config.layer_norm_epsilon, name="fc_norm")(x)
    if config.representation_size:
        x = keras.layers.Dense(config.representation_size, activation="tanh", name="pre_logits")(x)
    if config.distillation_token:
        distilled = TokenPooling("token", token_index=1, name="pool_dist")(tokens)
    if not config.include_top:
        if config.distillation_token:
            x = keras.layers.Average(name="tokens_mean")([x, distilled])  # timm's pre-logits of DeiT
        return x, None
    x = _head(config, "head")(x)
    if not config.distillation_token:
        return x, None
    heads = (x, _head(config, "head_dist")(distilled))
    return keras.layers.Average(name="heads_mean", dtype="float32")(list(heads)), heads


def _head(config: VisionTransformerConfig, name):
    # Zero-initialised as in the original; float32 so mixed precision keeps exact logits.
    return keras.layers.Dense(
        config.num_classes, activation=config.classifier_activation, kernel_initializer="zeros", name=name,
        dtype="float32",
    )


# Keras's own model arguments, passed on to keras.Model.
KERAS_ARGUMENTS = frozenset({"trainable"})


@keras.saving.register_keras_serializable(package="keras_vit")
class VisionTransformer(keras.Model):
    """Vision Transformer (Dosovitskiy et al., 2021) as a functional Keras model.

    images -> [ResNet stem] -> Patches -> PatchEncoder -> TransformerBlock x L ->
    ``encoder_norm`` -> pool (class token or mean) -> [``pre_logits`` Dense + tanh] ->
    ``head``. Layer names follow the original checkpoints (``encoderblock_{i}``,
    ``encoder_norm``, ``pre_logits``, ``head``). The arguments below are checked and kept
    as one frozen :class:`~keras_vit.core.config.VisionTransformerConfig`
    (``model.model_config``), which ``get_config`` returns and the graph is built from.

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
        layer_norm_epsilon: epsilon of every LayerNorm (1e-6: the original, timm; 1e-12:
            Hugging Face's ViT).
        gelu: ``"tanh"`` (the original's approximation) or ``"exact"`` (timm, Hugging Face).
        layer_scale_init: None, or LayerScale's initial value (timm's ``init_values``).
        num_register_tokens: register tokens after the class token (timm's ``reg_tokens``).
        distillation_token: DeiT's distillation token and second head ``head_dist``; the
            output is the mean of both heads, or both heads' logits while training once
            ``model.distilled_training = True`` (timm's ``set_distilled_training``).
        norm_after_pooling: the final LayerNorm on the pooled vector (``fc_norm``) instead
            of on the tokens before pooling (``encoder_norm``).
        patch_position_embedding_only: learned position embeddings on the patches only, not
            on the prefix tokens (timm's ``no_embed_class``).
        include_preprocessing: the model takes pixels in [0, 255] (uint8 or float) and
            applies ``(pixels / 255 - pixel_mean) / pixel_std`` itself, as
            keras.applications' ``include_preprocessing``.
        pixel_mean, pixel_std: the checkpoint's normalisation, per channel of pixels scaled
            to [0, 1]; None is 0.5 for each channel, the original's ``x / 127.5 - 1``
            (ImageNet's mean and std for DeiT).
        dynamic_image_size: the model takes any height and width that are multiples of the
            patch size; the learned position embeddings, stored for ``image_size``, are
            resampled in the graph to each input's grid.
        position_resampling: how they are resampled: ``"bilinear"`` (the original's
            loader) or ``"bicubic"`` (timm's).
        interpolation, crop_fraction, crop_mode: how an image file is resized for this
            model at evaluation and inference (the checkpoint's ``interpolation``,
            ``crop_pct``, ``crop_mode``); with the size, channels, ``pixel_mean``,
            ``pixel_std`` and ``class_names`` they make the model's input contract,
            ``model.image_spec`` (:class:`keras_vit.core.image_spec.ImageSpec`).
        class_names: None, or the head's class names (one per class), saved with the
            model and used by export and predict (checkpoints' ``id2label``).
        source_metadata: None, or a JSON-able dict of what the checkpoint's files said beyond
            the architecture (timm's ``pretrained_cfg``, Hugging Face's processor settings),
            kept so that ``save_pretrained`` writes them back as they were read.
        name: model name.
    """

    def __init__(self, *, dtype=None, name="vit", **arguments):
        keras_arguments = {key: arguments.pop(key) for key in KERAS_ARGUMENTS if key in arguments}
        config = VisionTransformerConfig.from_arguments("VisionTransformer", arguments)
        # The layers take the policy current at their creation: build under the requested
        # one, so that a mixed-precision model reloads as mixed precision.
        policy = keras.dtype_policies.get(dtype) if dtype is not None else keras.config.dtype_policy()
        with _global_dtype_policy(policy):
            images = keras.Input(
                (None, None, config.channels) if config.dynamic_image_size else (*config.image_size, config.channels),
                name="images",
            )
            tokens, num_prefix_tokens = _encode(config, images)
            outputs, heads = _pool_and_heads(config, tokens, num_prefix_tokens)
            super().__init__(inputs=images, outputs=outputs, name=name, **keras_arguments)
            # Both heads' outputs, for DeiT's distillation loss; a model of its own that
            # shares the layers, kept out of Keras's tracking so its weights are saved once.
            object.__setattr__(
                self, "_both_heads", None if heads is None else keras.Model(images, list(heads), name=f"{name}_heads")
            )
        self.dtype_policy_name = policy.name
        object.__setattr__(self, "model_config", config)  # frozen: kept out of Keras's tracking
        for key, value in config.to_dict().items():  # model.hidden_size, model.pixel_mean, ...
            setattr(self, key, value)
        self.class_names = config.class_names
        self.grid_size = config.grid_size
        self.num_prefix_tokens = num_prefix_tokens
        self.distilled_training = False

    @property
    def image_spec(self) -> ImageSpec:
        """The model's input contract (size, pixel range, mean/std, resize, crop, class names)."""
        return ImageSpec.of(self)

    def call(self, inputs, training=None, mask=None, **kwargs):
        self._check_images(inputs)
        if training and self.distilled_training and self._both_heads is not None:
            return tuple(self._both_heads(inputs, training=training))  # (class head, distillation head)
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
        if dtype is not None and "int" in keras.backend.standardize_dtype(dtype) and not self.include_preprocessing:
            # 0-255 pixels fed as they are would be classified, wrongly, without a word.
            spec = self.image_spec
            how = ("keras_vit.preprocess_input(images) (x / 127.5 - 1)" if spec.is_unit_range
                   else f"model.image_spec.normalize(images) ((x / 255 - mean) / std, mean {list(spec.mean)}, std {list(spec.std)})")
            raise ValueError(
                f"{self.name} takes float images {self._input_words()}; received {keras.backend.standardize_dtype(dtype)} "
                f"pixels. Scale them with {how} first."
            )
        shape = tuple(getattr(images, "shape", ()))
        expected = (self.image_size[0], self.image_size[1], self.channels)
        if self.dynamic_image_size:
            step = self.patch_size  # times the stem's stride for hybrids: checked by the layers
            if len(shape) != 4 or shape[3] not in (None, self.channels) or any(
                got is not None and got % unit for got, unit in zip(shape[1:3], step)
            ):
                raise ValueError(
                    f"{self.name} expects images of shape (batch, height, width, {self.channels}), height "
                    f"and width multiples of the patch size {step[0]}x{step[1]}, {self._input_words()}; received shape {shape}."
                )
            return
        if len(shape) != 4 or any(
            got is not None and got != want for got, want in zip(shape[1:], expected)
        ):
            raise ValueError(
                f"{self.name} expects images of shape (batch, {expected[0]}, {expected[1]}, "
                f"{expected[2]}) ({expected[2]} channel{'s' if expected[2] > 1 else ''}), {self._input_words()}; "
                f"received shape {shape}. Resize the images, or build the model "
                f"with image_size=/channels= to match them (or dynamic_image_size=True)."
            )

    def _input_words(self):
        if self.include_preprocessing:
            return "pixels in [0, 255]"
        if self.image_spec.is_unit_range:
            return "scaled to [-1, 1]"
        return f"normalised as (x / 255 - mean) / std (mean {list(self.pixel_mean)}, std {list(self.pixel_std)})"

    def get_config(self):
        return {**self.model_config.to_dict(), "dtype": self.dtype_policy_name, "name": self.name}

    @classmethod
    def from_config(cls, config):
        return cls(**config)  # the configuration turns the lists of a saved file back into tuples


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


def feature_extractor(model: VisionTransformer, layers=None, *, norm: bool = False, name=None) -> keras.Model:
    """A backbone for dense tasks: the chosen blocks' tokens as (B, grid_h, grid_w, D) maps.

    The class, distillation and register tokens are removed and the patch tokens laid out on
    their grid, as timm's ``forward_intermediates`` returns them (channels last). The result
    is a functional Keras model sharing ``model``'s layers (and weights); it saves and
    reloads, and follows the input size of a model with ``dynamic_image_size``.

    Args:
        model: a :class:`VisionTransformer`.
        layers: None for every block; an int n for the last n blocks; or a list of block
            indices (negative counts from the end).
        norm: apply the model's final LayerNorm to each map (timm's ``norm=True``).
        name: the feature model's name (default ``"<model>_features"``).

    Returns:
        A ``keras.Model`` from the model's images to a list of maps, one per chosen block.
    """
    if not isinstance(model, VisionTransformer):
        raise TypeError(f"feature_extractor takes a keras_vit VisionTransformer; got {type(model).__name__}.")
    count = model.num_layers
    if layers is None:
        indices = list(range(count))
    elif isinstance(layers, int) and not isinstance(layers, bool):
        if not 1 <= layers <= count:
            raise ValueError(f"layers={layers}; expected a count of last blocks in [1, {count}] or a list of indices.")
        indices = list(range(count - layers, count))
    else:
        indices = []
        for index in layers:
            if not isinstance(index, int) or isinstance(index, bool) or not -count <= index < count:
                raise ValueError(f"layers={list(layers)}: {index!r} is not a block index of a {count}-block model.")
            indices.append(index % count)
    if norm and not any(layer.name == "encoder_norm" for layer in model.layers):
        raise ValueError(f"{model.name} has no encoder_norm (its norm follows pooling); use norm=False.")
    stride = model.patch_size
    if model.resnet is not None:
        step = model.model_config.stem_stride
        stride = (stride[0] * step, stride[1] * step)
    images = model.input
    maps = []
    for index in indices:
        tokens = model.get_layer(f"encoderblock_{index}").output
        if norm:
            tokens = model.get_layer("encoder_norm")(tokens)
        maps.append(TokenGrid(model.num_prefix_tokens, stride, name=f"features_{index}")(tokens, images))
    return keras.Model(images, maps, name=name or f"{model.name}_features")


# What VisionTransformer(...) takes: the configuration's fields, Keras's model arguments.
CONSTRUCTOR_ARGUMENTS = ARGUMENT_NAMES | {"dtype", "name"} | KERAS_ARGUMENTS
# The keyword signature help() and inspect show, read from the configuration.
VisionTransformer.__init__.__signature__ = inspect.Signature(
    [inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)]
    + [inspect.Parameter(field.name, inspect.Parameter.KEYWORD_ONLY, default=field.default)
       for field in dataclasses.fields(VisionTransformerConfig)]
    + [inspect.Parameter("dtype", inspect.Parameter.KEYWORD_ONLY, default=None),
       inspect.Parameter("name", inspect.Parameter.KEYWORD_ONLY, default="vit")]
)
