"""keras_vit: the Vision Transformer of Dosovitskiy et al. (ICLR 2021) for Keras 3.

    import keras_vit
    model = keras_vit.ViTB16(num_classes=10)
"""

__version__ = "0.1.0"

from keras_vit.config import ViTConfig, decode_variant
from keras_vit.layers import MLP, DropPath, Patches, PatchEncoder, TokenPooling, TransformerBlock
from keras_vit.models import (
    ViT,
    ViTB8,
    ViTB16,
    ViTB32,
    ViTH14,
    ViTL16,
    ViTL32,
    ViTR26_B32,
    ViTR26_S32,
    ViTR50_B16,
    ViTR50_L32,
    ViTR_Ti16,
    ViTS16,
    ViTS32,
    ViTTi16,
    VisionTransformer,
)
from keras_vit.checkpoints import from_npz, load_npz, save_npz
from keras_vit.visualize import (
    attention_maps,
    attention_rollout,
    embedding_filters,
    mean_attention_distance,
    position_embedding_similarity,
    upsample_heatmap,
)
from keras_vit.training import TrainConfig, evaluate, train
from keras_vit import optimizers
