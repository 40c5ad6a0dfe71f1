"""Writes every save_pretrained case and has timm / transformers themselves compute its logits.

    python scripts/check_write_back.py [--root tests/data/hub/write_back] [--client-python /work/clientenv/bin/python]

Step 1 (this environment): keras_vit writes each case of keras_vit/tools/write_back_cases.py
into ROOT/<case>/ (the hub files, case.json, inputs.npz). Step 2 (the client environment,
torch + timm + transformers, where keras_vit is never imported): this script runs again with
--compute, loads each folder with timm.create_model("local-dir:...", pretrained=True) or
transformers' from_pretrained (strictly: a missing or unexpected tensor fails), and saves
client.npz (logits, the client's versions). Last, keras_vit's own logits are compared and a
table of the largest differences printed. tests/test_write_back.py keeps checking them.
"""

import argparse
import json
import os
import subprocess
import sys

import numpy as np

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "data", "hub", "write_back")


def _normalised(images, mean, std, raw):
    if not raw:
        return images
    return ((images / 255.0 - np.asarray(mean, "float32")) / np.asarray(std, "float32")).astype("float32")


def _import_torchvision():
    """torchvision, even where its wheel is a CUDA build on a CPU-only torch.

    Its compiled ops (nms, roi_align, ...) then fail to register and the import fails; no ViT
    uses them, so their fake (meta) registrations are skipped while it imports.
    """
    import torch

    try:
        import torchvision  # noqa: F401
        return
    except RuntimeError:
        pass
    for name in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
        del sys.modules[name]
    register_fake = torch.library.register_fake
    torch.library.register_fake = lambda *args, **kwargs: (lambda function: function)
    try:
        import torchvision  # noqa: F401,F811
    finally:
        torch.library.register_fake = register_fake


def _timm_logits(folder, case, inputs):
    import timm
    import torch

    model = timm.create_model("local-dir:" + os.path.abspath(folder), pretrained=True).eval()
    cfg = model.pretrained_cfg
    outputs = {}
    for key in ("images", "dynamic_images"):
        if key in inputs:
            x = _normalised(inputs[key], cfg["mean"], cfg["std"], case["raw_pixels"])
            with torch.no_grad():
                outputs[key.replace("images", "logits")] = model(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy()
    return outputs, f"timm {timm.__version__}, torch {torch.__version__}"


def _huggingface_logits(folder, case, inputs):
    import torch
    import transformers

    config = json.load(open(os.path.join(folder, "config.json")))
    classifies = config["architectures"] == ["ViTForImageClassification"]
    cls = transformers.ViTForImageClassification if classifies else transformers.ViTModel
    model, info = cls.from_pretrained(folder, output_loading_info=True)
    missing = [k for k in info["missing_keys"] if classifies or not k.startswith("pooler.")]
    assert not missing and not info["unexpected_keys"] and not info["mismatched_keys"], (folder, info)
    processor = json.load(open(os.path.join(folder, "preprocessor_config.json")))
    x = _normalised(inputs["images"], processor["image_mean"], processor["image_std"], case["raw_pixels"])
    with torch.no_grad():
        output = model.eval()(pixel_values=torch.from_numpy(x.transpose(0, 3, 1, 2)))
    logits = output.logits if classifies else output.last_hidden_state[:, 0]
    return {"logits": logits.numpy()}, f"transformers {transformers.__version__}, torch {torch.__version__}"


def compute(root):
    """Client side: no keras_vit here."""
    _import_torchvision()
    for case_name in sorted(os.listdir(root)):
        folder = os.path.join(root, case_name)
        case = json.load(open(os.path.join(folder, "case.json")))
        with np.load(os.path.join(folder, "inputs.npz")) as data:
            inputs = {k: data[k] for k in data.files}
        reader = _timm_logits if case["format"] == "timm" else _huggingface_logits
        outputs, versions = reader(folder, case, inputs)
        np.savez(os.path.join(folder, "client.npz"), client=np.array(versions), **outputs)
        print(f"{case_name}: {versions}")


def write_and_compare(root, client_python):
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
    from keras_vit.tools.write_back_cases import CASES, build_case, write_case

    for case in sorted(CASES):
        write_case(case, root)
    subprocess.run([client_python, os.path.abspath(__file__), "--compute", "--root", root], check=True)
    print("| case | exercises | largest |logits - client| |\n|---|---|---:|")
    for case in sorted(CASES):
        model = build_case(case)
        with np.load(os.path.join(root, case, "inputs.npz")) as inputs, np.load(os.path.join(root, case, "client.npz")) as client:
            error = max(float(np.abs(model.predict(inputs[k], verbose=0) - client[k.replace("images", "logits")]).max())
                        for k in inputs.files)
        print(f"| {case} | {CASES[case][2]} | {error:.1e} |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default=ROOT)
    parser.add_argument("--client-python", default="/work/clientenv/bin/python")
    parser.add_argument("--compute", action="store_true", help="the client side (run by the client's python)")
    args = parser.parse_args()
    if args.compute:
        compute(args.root)
    else:
        write_and_compare(args.root, args.client_python)
