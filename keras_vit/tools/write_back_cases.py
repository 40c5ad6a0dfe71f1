"""The models ``save_pretrained`` is checked on: written, then loaded by timm / transformers.

Each accepted case is a small seeded model per builder option that a format expresses;
``scripts/check_write_back.py`` writes them into ``tests/data/hub/write_back/<case>/`` and
has the real clients compute their logits there. ``REFUSED`` lists, per format, a model per
option that the format cannot express and the option name the refusal must give.
"""

from __future__ import annotations

import json
import os
import shutil

import numpy as np

SMALL = dict(image_size=16, patch_size=8, hidden_size=24, num_layers=1, num_heads=2, mlp_dim=48, num_classes=3)
IMAGENET = dict(pixel_mean=(0.485, 0.456, 0.406), pixel_std=(0.229, 0.224, 0.225))

# case -> (format, builder arguments beyond SMALL, options the case exercises)
CASES = {
    "timm_tanh_token": ("timm", dict(gelu="tanh", class_names=["cat", "dog", "fox"], interpolation="bilinear",
                                     crop_fraction=0.95, crop_mode="squash", source_metadata={
        "format": "timm", "pretrained_cfg": {"tag": "kept", "interpolation": "bilinear", "crop_pct": 0.95,
                                             "crop_mode": "squash", "license": "mit"}}),
                        "gelu tanh, class names, pretrained_cfg kept"),
    "timm_mlp_123": ("timm", dict(hidden_size=60, num_heads=3, mlp_dim=123, gelu="exact"),
                     "mlp_dim 123 on width 60 (mlp_ratio timm rounds down to 123)"),
    "timm_reg_layerscale_fcnorm": ("timm", dict(gelu="exact", num_register_tokens=2, layer_scale_init=0.1,
                                                patch_position_embedding_only=True, norm_after_pooling=True),
                                   "register tokens, LayerScale, no_embed_class, fc_norm after token pooling"),
    "timm_gap_rect_gray_notop": ("timm", dict(gelu="exact", pooling="gap", image_size=(16, 24), patch_size=(8, 4),
                                              channels=1, include_top=False),
                                 "mean pooling, 16x24 images, 8x4 patches, 1 channel, no head"),
    "timm_distilled_preprocessing": ("timm", dict(gelu="exact", distillation_token=True, include_preprocessing=True,
                                                  **IMAGENET),
                                     "distillation token, 0-255 pixels in, ImageNet mean/std"),
    "timm_dynamic_size": ("timm", dict(gelu="exact", dynamic_image_size=True, position_resampling="bicubic"),
                          "dynamic image size (also run at 24x32)"),
    "timm_no_position_embedding": ("timm", dict(gelu="exact", position_embedding="none"), "no position embeddings"),
    "hf_exact_token": ("huggingface", dict(gelu="exact", layer_norm_epsilon=1e-12, class_names=["a", "b", "c"],
                                           interpolation="bicubic",
                                           source_metadata={"format": "huggingface", "preprocessor": {
                                               "resample": 3, "do_resize": True, "image_mean": 0.5}}),
                       "exact GELU, eps 1e-12, id2label, processor settings kept"),
    "hf_tanh_rect": ("huggingface", dict(gelu="tanh", image_size=(16, 24), patch_size=(8, 4), **IMAGENET),
                     "tanh GELU, 16x24 images as [h, w], 8x4 patches, ImageNet mean/std"),
    "hf_features_mlp_123": ("huggingface", dict(hidden_size=60, num_heads=3, mlp_dim=123, include_top=False,
                                                channels=1, pixel_mean=(0.5,), pixel_std=(0.5,)),
                            "no head (ViTModel's class token), 1 channel, mlp_dim 123"),
}
DYNAMIC_SIZE = (24, 32)

# format -> [(builder arguments beyond SMALL, the option the refusal names)]
REFUSED = {
    "timm": [
        (dict(representation_size=8), "representation_size"),
        (dict(layer_norm_epsilon=1e-12), "layer_norm_epsilon"),
        (dict(classifier_activation="softmax"), "classifier_activation"),
        (dict(position_embedding="sincos2d"), "position_embedding"),
        (dict(position_embedding="learned_2d"), "position_embedding"),
        (dict(dynamic_image_size=True), "position_resampling"),
        (dict(image_size=32, resnet=((1,), 0.5)), "resnet"),
    ],
    "huggingface": [
        (dict(representation_size=8), "representation_size"),
        (dict(classifier_activation="softmax"), "classifier_activation"),
        (dict(pooling="gap"), "pooling"),
        (dict(norm_after_pooling=True), "norm_after_pooling"),
        (dict(num_register_tokens=2), "num_register_tokens"),
        (dict(distillation_token=True), "distillation_token"),
        (dict(layer_scale_init=0.1), "layer_scale_init"),
        (dict(patch_position_embedding_only=True), "patch_position_embedding_only"),
        (dict(dynamic_image_size=True, position_resampling="bicubic"), "dynamic_image_size"),
        (dict(position_embedding="none"), "position_embedding"),
        (dict(position_embedding="sincos2d"), "position_embedding"),
        (dict(image_size=32, resnet=((1,), 0.5)), "resnet"),
    ],
}


def build(arguments, seed=0):
    """SMALL with ``arguments``, every weight drawn from N(0, 0.2) by ``seed`` (heads included)."""
    from keras_vit.core.models import VisionTransformer

    model = VisionTransformer(**{**SMALL, **arguments})
    rng = np.random.default_rng(seed)
    for weight in model.weights:
        weight.assign(rng.normal(0, 0.2, weight.shape).astype(weight.dtype))
    return model


def build_case(case):
    return build(CASES[case][1], seed=sorted(CASES).index(case))


def case_images(case, size=None):
    """Two fixed images for ``case`` in its model's input space (0-255 with preprocessing inside)."""
    arguments = {**SMALL, **CASES[case][1]}
    height, width = size or (arguments["image_size"] if isinstance(arguments["image_size"], tuple)
                             else (arguments["image_size"],) * 2)
    rng = np.random.default_rng(1000 + sorted(CASES).index(case))
    images = rng.uniform(-1, 1, (2, height, width, arguments.get("channels", 3))).astype("float32")
    return np.round((images + 1) * 127.5) if arguments.get("include_preprocessing") else images


def write_case(case, root):
    """Writes ``case`` with save_pretrained into ``root/case`` plus case.json and the input images."""
    from keras_vit.weights.hub import save_pretrained

    format, arguments, what = CASES[case]
    folder = os.path.join(root, case)
    if os.path.isdir(folder):  # a fixture folder this function wrote: case.json, inputs and the client's outputs
        shutil.rmtree(folder)
    save_pretrained(build_case(case), folder, format=format, overwrite=True)
    with open(os.path.join(folder, "case.json"), "w") as file:
        json.dump({"format": format, "exercises": what, "raw_pixels": bool(arguments.get("include_preprocessing")),
                   "dynamic_size": list(DYNAMIC_SIZE) if arguments.get("dynamic_image_size") else None}, file, indent=2)
    arrays = {"images": case_images(case)}
    if arguments.get("dynamic_image_size"):
        arrays["dynamic_images"] = case_images(case, DYNAMIC_SIZE)
    np.savez(os.path.join(folder, "inputs.npz"), **arrays)
    return folder
