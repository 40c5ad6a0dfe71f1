"""The ResNet v2 stem of the paper's hybrids (R50+ViT-B/16 and friends), in ``keras.ops``.

As ``vit_jax/models_resnet.py``: weight-standardised convolutions (kernel standardised over
H, W, in with epsilon 1e-5), group norm with 32 groups and epsilon 1e-6, a 7x7 stride-2
root convolution, a 3x3 stride-2 max-pool, then stages of bottleneck units.
"""

from __future__ import annotations

import keras
from keras import ops

from keras_vit.core.config import stem_stride  # noqa: F401 (re-exported: the stem's arithmetic, plain Python)

_PACKAGE = "keras_vit"
GROUP_NORM_EPSILON = 1e-6
STD_CONV_EPSILON = 1e-5
GROUPS = 32


@keras.saving.register_keras_serializable(package=_PACKAGE)
class StdConv2D(keras.layers.Conv2D):
    """Conv2D whose kernel is standardised (zero mean, unit deviation per output channel).

    ``w = (w - mean) / (std + 1e-5)`` over (H, W, in), as the original. The kernel
    is a constant at inference, so exporters fold the standardisation away.
    """

    def convolution_op(self, inputs, kernel):
        kernel = kernel - ops.mean(kernel, axis=(0, 1, 2), keepdims=True)
        # w / (std + eps), as vit_jax's weight_standardize (not w / sqrt(var + eps)).
        kernel = kernel / (ops.std(kernel, axis=(0, 1, 2), keepdims=True) + STD_CONV_EPSILON)
        return super().convolution_op(inputs, kernel)


def _std_conv(filters, kernel_size, strides=1, name=None, dtype=None):
    return StdConv2D(filters, kernel_size, strides=strides, padding="same", use_bias=False, name=name, dtype=dtype)


def _group_norm(name, zero_scale=False, dtype=None):
    return keras.layers.GroupNormalization(
        groups=GROUPS,
        epsilon=GROUP_NORM_EPSILON,
        gamma_initializer="zeros" if zero_scale else "ones",
        name=name,
        dtype=dtype,
    )


@keras.saving.register_keras_serializable(package=_PACKAGE)
class BottleneckUnit(keras.layers.Layer):
    """ResNet v2 bottleneck unit of the original hybrid stem.

    ``relu(residual + gn3(conv3(relu(gn2(conv2(relu(gn1(conv1(x)))))))))`` where the
    residual is ``gn_proj(conv_proj(x))`` when the shape changes and ``x`` otherwise.

    Args:
        features: bottleneck width; the unit outputs 4x that many channels.
        strides: stride of the 3x3 convolution (and the projection).
    """

    def __init__(self, features, strides=1, **kwargs):
        super().__init__(**kwargs)
        self.features = int(features)
        self.strides = int(strides)
        # Sub-layers take the unit's dtype policy, so that a mixed-precision unit computes in float16.
        policy = self.dtype_policy
        self.conv1 = _std_conv(self.features, 1, name="conv1", dtype=policy)
        self.gn1 = _group_norm("gn1", dtype=policy)
        self.conv2 = _std_conv(self.features, 3, self.strides, name="conv2", dtype=policy)
        self.gn2 = _group_norm("gn2", dtype=policy)
        self.conv3 = _std_conv(self.features * 4, 1, name="conv3", dtype=policy)
        self.gn3 = _group_norm("gn3", zero_scale=True, dtype=policy)
        self.conv_proj = None
        self.gn_proj = None

    def build(self, input_shape):
        if input_shape[-1] != self.features * 4 or self.strides != 1:
            self.conv_proj = _std_conv(self.features * 4, 1, self.strides, name="conv_proj", dtype=self.dtype_policy)
            self.gn_proj = _group_norm("gn_proj", dtype=self.dtype_policy)
            self.conv_proj.build(input_shape)
            self.gn_proj.build(self.conv_proj.compute_output_shape(input_shape))
        self.conv1.build(input_shape)
        shape = self.conv1.compute_output_shape(input_shape)
        self.gn1.build(shape)
        self.conv2.build(shape)
        shape = self.conv2.compute_output_shape(shape)
        self.gn2.build(shape)
        self.conv3.build(shape)
        self.gn3.build(self.conv3.compute_output_shape(shape))

    def call(self, x):
        residual = x if self.conv_proj is None else self.gn_proj(self.conv_proj(x))
        y = ops.relu(self.gn1(self.conv1(x)))
        y = ops.relu(self.gn2(self.conv2(y)))
        y = self.gn3(self.conv3(y))
        return ops.relu(residual + y)

    def compute_output_shape(self, input_shape):
        shape = self.conv2.compute_output_shape(self.conv1.compute_output_shape(input_shape))
        return shape[:-1] + (self.features * 4,)

    def flops(self, input_shape) -> int:
        """Multiply-add FLOPs of the unit's convolutions for one image."""
        total, shape = 0, input_shape
        for conv in (self.conv1, self.conv2, self.conv3):
            total += conv_flops(conv, shape)
            shape = conv.compute_output_shape(shape)
        if self.conv_proj is not None:
            total += conv_flops(self.conv_proj, input_shape)
        return total

    def get_config(self):
        config = super().get_config()
        config.update(features=self.features, strides=self.strides)
        return config


def conv_flops(conv, input_shape) -> int:
    """2 x multiply-accumulates of a convolution on one image of ``input_shape``."""
    _, height, width, out_channels = conv.compute_output_shape(input_shape)
    kh, kw, in_channels, _ = conv.kernel.shape
    return 2 * height * width * kh * kw * in_channels * out_channels


def resnet_stem(x, stages, width_factor):
    """Applies the hybrid stem to images ``x`` (functional API); returns the feature map.

    Layers are named as the checkpoint keys with ``/`` as ``_``: ``conv_root``, ``gn_root``,
    ``block{n}_unit{m}``. The output has stride 4 (root and pool) times 2 per stage after
    the first, and ``4 * 64 * width_factor * 2**(len(stages) - 1)`` channels (with no
    stages: ``64 * width_factor``).
    """
    width = int(64 * width_factor)
    x = _std_conv(width, 7, 2, name="conv_root")(x)
    x = ops.relu(_group_norm("gn_root")(x))
    x = keras.layers.MaxPooling2D(3, strides=2, padding="same", name="root_pool")(x)
    for stage, num_units in enumerate(stages):
        for unit in range(num_units):
            strides = 2 if stage > 0 and unit == 0 else 1
            x = BottleneckUnit(width * 2**stage, strides, name=f"block{stage + 1}_unit{unit + 1}")(x)
    return x
