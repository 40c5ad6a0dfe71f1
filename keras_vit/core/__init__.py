"""The model: layers, the functional VisionTransformer and the hybrids' ResNet stem.

``keras.ops`` only, so it runs on TensorFlow, JAX and PyTorch; nothing here imports
TensorFlow, and nothing here imports the rest of keras_vit except :mod:`keras_vit.backends`.
"""

from keras_vit.core.config import ViTConfig, decode_variant
from keras_vit.core.layers import (
    MLP,
    DropPath,
    LayerNorm,
    Patches,
    PatchEncoder,
    SelfAttention,
    TokenPooling,
    TransformerBlock,
)
from keras_vit.core.models import VisionTransformer, forward_flops
