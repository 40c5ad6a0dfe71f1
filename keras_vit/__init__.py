"""keras_vit: the Vision Transformer of Dosovitskiy et al. (ICLR 2021) for Keras 3.

    import keras_vit
    model = keras_vit.ViTB16(num_classes=10)

The package, each layer importing only from those below it (checked by
``tests/test_architecture.py``):

    cli            the keras-vit command: parses arguments, calls the library
    tools          benchmarks and profiling (not library API)
    deploy         export (SavedModel, TFLite, ONNX, verified) and prediction
    visualize      attention maps and rollout, the paper's figures
    training       configuration, recipes, callbacks, fit loop, multi-worker loop
    zoo            the variant registry: ViT("B/16"), ViTB16(...), published weights
    weights        original .npz checkpoints, timm / Hugging Face repositories, in and out
    data           tf.data pipelines, preprocessing, image files, embedded MNIST
    run_folder     the only code that knows a run folder's files
    core           layers and the functional model (keras.ops only, any backend)
    backends       the TensorFlow-CPU fused forms the core defers to
"""

import importlib
import os
import sys

from keras_vit.version import __version__

# Public name -> module that defines it.
_API = {
    "ViTConfig": "keras_vit.core.config",
    "decode_variant": "keras_vit.core.config",
    **dict.fromkeys(
        ["MLP", "DropPath", "LayerNorm", "Patches", "PatchEncoder", "PixelNormalization", "SelfAttention", "TokenGrid",
         "TokenPooling", "TransformerBlock"],
        "keras_vit.core.layers",
    ),
    "VisionTransformer": "keras_vit.core.models",
    "ImageSpec": "keras_vit.core.image_spec",
    "forward_flops": "keras_vit.core.models",
    "feature_extractor": "keras_vit.core.models",
    **dict.fromkeys(
        ["ViT", "ViTTi16", "ViTS16", "ViTS32", "ViTB8", "ViTB16", "ViTB32", "ViTL16", "ViTL32", "ViTH14", "ViTR_Ti16",
         "ViTR26_S32", "ViTR26_B32", "ViTR50_B16", "ViTR50_L32", "list_models", "list_weights", "published_weights",
         "data_config"],
        "keras_vit.zoo",
    ),
    **dict.fromkeys(["from_npz", "load_npz", "save_npz"], "keras_vit.weights.npz"),
    **dict.fromkeys(["from_pretrained", "load_pretrained", "save_pretrained"], "keras_vit.weights.hub"),
    **dict.fromkeys(
        ["attention_maps", "attention_rollout", "embedding_filters", "mean_attention_distance",
         "position_embedding_similarity", "upsample_heatmap"],
        "keras_vit.visualize.attention",
    ),
    "save_figures": "keras_vit.visualize.figures",
    **dict.fromkeys(["decode_predictions", "preprocess_input"], "keras_vit.data.imagenet"),
    "TrainConfig": "keras_vit.training.config",
    **dict.fromkeys(["train", "evaluate"], "keras_vit.training.fit"),
    "export_model": "keras_vit.deploy.export",
    **dict.fromkeys(["load_artifact"], "keras_vit.deploy.artifacts"),
    "predict_files": "keras_vit.deploy.predict",
    "RunFolder": "keras_vit.run_folder",
}
_SUBPACKAGES = {"backends", "core", "data", "deploy", "optimizers", "run_folder", "tools", "training", "visualize",
                "weights", "zoo"}
__all__ = sorted(_API) + ["__version__"]


def __getattr__(name):
    if name in _API:
        value = getattr(importlib.import_module(_API[name]), name)
    elif name == "optimizers":
        value = importlib.import_module("keras_vit.training.optimizers")
    elif name in _SUBPACKAGES:
        value = importlib.import_module(f"keras_vit.{name}")
    else:
        raise AttributeError(f"module 'keras_vit' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_API) | _SUBPACKAGES)


def _started_by_the_command_line() -> bool:
    # `keras-vit ...` or `python -m keras_vit.cli`: argv[0] is the script, or still "-m"
    # while runpy imports this package; the command imports what it uses itself.
    return os.path.basename(sys.argv[0] if sys.argv else "") == "keras-vit" or sys.argv[:1] == ["-m"]


if not _started_by_the_command_line():
    # Registers every serializable class (layers, models, optimizers, schedules) so that
    # `import keras_vit` is all `keras.saving.load_model` needs.
    for _module in ("keras_vit.core.models", "keras_vit.training.optimizers"):
        importlib.import_module(_module)
