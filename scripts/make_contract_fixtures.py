"""Writes tests/data/contract/: small image files and what timm and transformers compute
on them with their own preprocessing, for the input-contract tests (tests/test_contract.py).

Run once in a separate environment with torch, timm, transformers, pillow and safetensors
(keras_vit is not needed there):

    python3.11 -m venv /work/clientenv2
    /work/clientenv2/bin/pip install torch timm transformers pillow numpy safetensors
    /work/clientenv2/bin/python scripts/make_contract_fixtures.py

For each checkpoint folder of tests/data/hub (timm_deit_distilled, hf_vit) it loads the model
with the library itself, prepares every image file with the library's own transforms (timm:
``resolve_data_config`` + ``create_transform``; transformers: ``ViTImageProcessor``) and
stores, per checkpoint, ``<case>.npz`` with ``files`` (names), ``inputs`` (the tensors the
library fed its model, B x H x W x C) and ``logits``.
"""

from __future__ import annotations

import json
import os

import numpy as np
from PIL import Image

HUB = os.path.join(os.path.dirname(__file__), "..", "tests", "data", "hub")
OUT = os.path.join(HUB, "..", "contract")  # beside hub/, whose folders are all checkpoints


def smooth_image(height, width, seed):
    """A smooth RGB image (resize kernels differ little on it) with some detail."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width] / max(height, width)
    channels = []
    for _ in range(3):
        a, b, c, d = rng.uniform(1, 4, 4)
        channels.append(0.5 + 0.25 * np.sin(a * 3.1 * x + b) + 0.25 * np.cos(c * 3.1 * y + d))
    return (np.clip(np.stack(channels, -1), 0, 1) * 255).round().astype(np.uint8)


def write_images():
    """The image files: sizes the checkpoints' resize keeps (exact normalisation and crop),
    and a JPEG photo of another size (resize kernels compared)."""
    os.makedirs(OUT, exist_ok=True)
    images = {
        "square_35.png": smooth_image(35, 35, 0),  # DeiT: resized to 35 (32 / 0.9), cropped to 32
        "wide_35x44.png": smooth_image(35, 44, 1),  # DeiT: shorter side 35 kept, centre crop
        "square_32.png": smooth_image(32, 32, 2),  # Hugging Face ViT: resized to 32 (kept)
    }
    for name, pixels in images.items():
        Image.fromarray(pixels).save(os.path.join(OUT, name))
    Image.fromarray(smooth_image(56, 72, 3)).save(os.path.join(OUT, "photo_56x72.jpg"), quality=95)
    return sorted(os.listdir(OUT))


def timm_case(folder, files):
    import timm
    import torch
    from safetensors.torch import load_file

    with open(os.path.join(folder, "config.json")) as file:
        config = json.load(file)
    model = timm.create_model(config["architecture"], pretrained=False, **config["model_args"])
    model.load_state_dict(load_file(os.path.join(folder, "model.safetensors")))
    model.eval()
    data_config = timm.data.resolve_data_config(pretrained_cfg=config["pretrained_cfg"])
    transform = timm.data.create_transform(**data_config)
    inputs = torch.stack([transform(Image.open(os.path.join(OUT, f)).convert("RGB")) for f in files])
    with torch.no_grad():
        logits = model(inputs)
    return inputs.permute(0, 2, 3, 1).numpy(), logits.numpy(), data_config


def huggingface_case(folder, files):
    import torch
    from transformers import ViTForImageClassification, ViTImageProcessor

    processor = ViTImageProcessor.from_pretrained(folder)
    model = ViTForImageClassification.from_pretrained(folder).eval()
    images = [Image.open(os.path.join(OUT, f)).convert("RGB") for f in files]
    inputs = processor(images=images, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        logits = model(pixel_values=inputs).logits
    return inputs.permute(0, 2, 3, 1).numpy(), logits.numpy(), processor.to_dict()


def import_torchvision():
    """torchvision's compiled detection ops may not match the local torch wheel; their fake
    (meta) registrations are skipped so that its Python transforms, which timm uses, import."""
    import torch.library

    register_fake = torch.library.register_fake
    torch.library.register_fake = lambda *args, **kwargs: (lambda function: function)
    try:
        import torchvision  # noqa: F401
    finally:
        torch.library.register_fake = register_fake


def main():
    import_torchvision()
    import timm
    import torch
    import transformers

    files = [name for name in write_images() if name.endswith((".png", ".jpg"))]
    for case, run in (("timm_deit_distilled", timm_case), ("hf_vit", huggingface_case)):
        inputs, logits, settings = run(os.path.join(HUB, case), files)
        np.savez_compressed(os.path.join(OUT, f"{case}.npz"), files=np.array(files), inputs=inputs.astype("float32"),
                            logits=logits.astype("float32"))
        print(case, {k: settings[k] for k in settings if k in ("interpolation", "crop_pct", "crop_mode", "mean", "std",
                                                                "resample", "size", "image_mean")})
    with open(os.path.join(OUT, "versions.json"), "w") as file:
        json.dump({"torch": torch.__version__, "timm": timm.__version__, "transformers": transformers.__version__,
                   "files": files}, file, indent=1)


if __name__ == "__main__":
    main()
