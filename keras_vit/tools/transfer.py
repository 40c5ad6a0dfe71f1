"""Does transfer work? An offline experiment on the embedded MNIST digits.

1. Pre-train a small ViT on the digits 0-4 (the embedded training split) and write it as a
   timm repository with :func:`keras_vit.save_pretrained`.
2. Write a small folder of PNGs of the digits 5-9 (a few per class from the training
   split) and a held-out folder (from the validation split).
3. Fine-tune the checkpoint on that folder through ``keras-vit train --image-folder ...
   --weights <timm folder>``, and train the same architecture from scratch on it with
   ``keras-vit train`` without weights (each with its recipe's defaults, same epochs).
4. Report both held-out accuracies.

``scripts/transfer_experiment.py`` runs it; docs/fine-tuning.md records the numbers.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import numpy as np

PRETRAIN_DIGITS = (0, 1, 2, 3, 4)
TRANSFER_DIGITS = (5, 6, 7, 8, 9)
# The small digits ViT of keras-vit train's default, with timm's exact GELU so that the
# checkpoint means in timm what it meant here.
MODEL = dict(image_size=28, channels=1, patch_size=4, hidden_size=64, num_layers=4, num_heads=4, mlp_dim=128,
             pooling="gap", gelu="exact")
# The same architecture as keras-vit train flags, for the run from scratch.
SCRATCH_FLAGS = ["--variant", "Ti/4", "--image-size", "28", "--channels", "1", "--hidden-size", "64",
                 "--num-layers", "4", "--num-heads", "4", "--mlp-dim", "128", "--pooling", "gap", "--gelu", "exact"]
DIGIT_FLAGS = ["--crop", "translate", "--no-flip"]  # digits: shifts, no mirror images


def write_digit_folder(folder, digits=TRANSFER_DIGITS, per_class=20, split="train", offset=0):
    """Writes ``per_class`` embedded MNIST digits of each of ``digits`` as PNGs,
    ``folder/<digit>/<index>.png`` (from ``split``: ``"train"`` or ``"validation"``,
    starting at the ``offset``-th image of each digit). Returns ``folder``."""
    from PIL import Image

    from keras_vit.data import load_embedded_mnist

    (x_train, y_train), (x_val, y_val) = load_embedded_mnist()
    images, labels = (x_train, y_train) if split == "train" else (x_val, y_val)
    for digit in digits:
        os.makedirs(os.path.join(folder, str(digit)), exist_ok=True)
        chosen = np.flatnonzero(labels == digit)[offset:offset + per_class]
        if len(chosen) < per_class:
            raise ValueError(f"per_class={per_class} (offset {offset}): the {split} split holds {len(chosen) + offset} "
                             f"images of digit {digit}.")
        for index in chosen:
            Image.fromarray(images[index]).save(os.path.join(folder, str(digit), f"{index}.png"))
    return os.fspath(folder)


def pretrain(folder, *, epochs=10, seed=0, digits=PRETRAIN_DIGITS, verbose=0):
    """Trains :data:`MODEL` on ``digits`` of the embedded training split and writes it to
    ``folder`` in timm's layout. Returns the held-out accuracy on those digits."""
    import keras

    import keras_vit
    from keras_vit.data import load_embedded_mnist

    keras.utils.set_random_seed(seed)
    (x_train, y_train), (x_val, y_val) = load_embedded_mnist()

    def select(images, labels):
        keep = np.isin(labels, digits)
        scaled = images[keep][..., None].astype("float32") / 127.5 - 1  # keras_vit's [-1, 1]
        return scaled, keras.utils.to_categorical(labels[keep], len(digits))

    (train_x, train_y), (val_x, val_y) = select(x_train, y_train), select(x_val, y_val)
    model = keras_vit.ViT("Ti/4", num_classes=len(digits), class_names=[str(d) for d in digits], **MODEL)
    model.compile(optimizer=keras_vit.optimizers.AdamW(learning_rate=2e-3, weight_decay=0.05),
                  loss=keras.losses.CategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    model.fit(train_x, train_y, batch_size=64, epochs=epochs, verbose=verbose)
    accuracy = model.evaluate(val_x, val_y, verbose=0)[1]
    keras_vit.save_pretrained(model, folder, format="timm", overwrite=True)
    return float(accuracy)


def _keras_vit_train(flags, output):
    # The command a user types, in a process of its own; the held-out accuracy of its run.
    import json

    command = [sys.executable, "-m", "keras_vit.cli", "train", *flags, "--output", output, "--quiet", "--overwrite"]
    result = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if result.returncode:
        raise RuntimeError(f"keras-vit train {' '.join(flags)} failed ({result.returncode}):\n{result.stdout[-3000:]}")
    with open(os.path.join(output, "metrics.json")) as file:
        return json.load(file)


def run_experiment(work_dir, *, per_class=20, test_per_class=100, pretrain_epochs=10, epochs=10, seed=0,
                   verbose=0):
    """Runs the experiment of this module's docstring in ``work_dir``.

    Returns:
        ``{"pretrain_accuracy", "finetuned_accuracy", "scratch_accuracy", "commands",
        "seconds", ...}``: held-out accuracies on ``test_per_class`` digits per class.
    """
    start = time.perf_counter()
    checkpoint = os.path.join(work_dir, "digits0-4_timm")
    pretrain_accuracy = pretrain(checkpoint, epochs=pretrain_epochs, seed=seed, verbose=verbose)
    train_folder = write_digit_folder(os.path.join(work_dir, "digits5-9"), per_class=per_class)
    test_folder = write_digit_folder(os.path.join(work_dir, "digits5-9_test"), per_class=test_per_class,
                                     split="validation")
    common = ["--image-folder", train_folder, "--validation-folder", test_folder, "--epochs", str(epochs),
              "--seed", str(seed), *DIGIT_FLAGS]
    finetune_flags = [*common, "--weights", checkpoint]
    scratch_flags = [*common, *SCRATCH_FLAGS]
    finetuned = _keras_vit_train(finetune_flags, os.path.join(work_dir, "finetuned"))
    scratch = _keras_vit_train(scratch_flags, os.path.join(work_dir, "scratch"))
    return {
        "pretrain_accuracy": pretrain_accuracy,
        "finetuned_accuracy": finetuned["val_accuracy"],
        "scratch_accuracy": scratch["val_accuracy"],
        "train_images": finetuned["train_examples"],
        "test_images": finetuned["validation_examples"],
        "commands": {"finetune": "keras-vit train " + " ".join(finetune_flags),
                     "scratch": "keras-vit train " + " ".join(scratch_flags)},
        "seconds": round(time.perf_counter() - start, 1),
    }
