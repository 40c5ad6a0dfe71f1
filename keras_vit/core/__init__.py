"""The model: layers, the functional VisionTransformer and the hybrids' ResNet stem.

``keras.ops`` only, so it runs on TensorFlow, JAX and PyTorch; nothing here imports
TensorFlow, and nothing here imports the rest of keras_vit except :mod:`keras_vit.backends`.
The names below load on first use, so that :mod:`keras_vit.core.config` (the variant
table, plain Python) is read without importing Keras.
"""

import importlib

_API = {
    **dict.fromkeys(["ViTConfig", "VisionTransformerConfig", "decode_variant"], "keras_vit.core.config"),
    **dict.fromkeys(
        ["MLP", "DropPath", "LayerNorm", "Patches", "PatchEncoder", "PixelNormalization", "SelfAttention", "TokenGrid",
         "TokenPooling", "TransformerBlock"],
        "keras_vit.core.layers",
    ),
    **dict.fromkeys(["BottleneckUnit", "StdConv2D"], "keras_vit.core.hybrid"),
    **dict.fromkeys(["VisionTransformer", "forward_flops"], "keras_vit.core.models"),
}
__all__ = sorted(_API)


def __getattr__(name):
    if name not in _API:
        raise AttributeError(f"module 'keras_vit.core' has no attribute {name!r}")
    value = getattr(importlib.import_module(_API[name]), name)
    globals()[name] = value
    return value
