"""The ``keras-vit`` command's argument parsers: one ``add_<command>(subparsers)`` per command,
declaring its flags and help and returning its parser (``keras_vit.cli`` attaches the handler).

The argparse types here refuse a bad count before anything is sized by it (exit 2). Nothing
here imports Keras or TensorFlow, so ``--help`` answers at once.
"""

from __future__ import annotations

import argparse


def _positive_int(text):
    """argparse type: an integer >= 1, refused by argparse (exit 2) otherwise."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer; got {text!r}")
    return value


def _int_in(minimum, maximum):
    """argparse type: an integer in [minimum, maximum], refused by argparse (exit 2) naming
    the range, before anything is sized by it."""

    def parse(text):
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or not minimum <= value <= maximum:
            raise argparse.ArgumentTypeError(f"expected an integer in [{minimum:,}, {maximum:,}]; got {text!r}")
        return value

    return parse


def _positive_float(text):
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number; got {text!r}")
    return value


def add_models(subparsers):
    parser = subparsers.add_parser(
        "models",
        help="print the model family: layers, width, heads, MLP, patch, parameters, GFLOPs, published weights",
        description="Prints every named variant of the paper at 224x224 with a 1000-class head: its "
        "architecture, parameter count and forward GFLOPs (counted from the variant's numbers, equal to "
        "the built models'), and the published checkpoints its weights= accepts.",
    )
    parser.add_argument(
        "pattern", nargs="?", default="",
        help="only the models whose name matches this shell pattern, as timm's list_models: the variant "
        "(B/16), its builder (ViTB16) or timm's name (vit_base_patch16_224); e.g. 'vit_base_*', '*b16*', '*/16'",
    )
    parser.add_argument("--hybrids", action="store_true", help="also list the ResNet hybrids (built to count them)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    return parser


_TRAIN_FLAG_HELP = {
    "dataset": "'mnist' (the embedded digits, default) or a TFDS name such as cifar10",
    "image_folder": "train on a folder with one sub-folder of JPEG/PNG images per class",
    "validation_folder": "validation folder laid out like --image-folder",
    "validation_fraction": "share of each class held out without a validation folder (0.1)",
    "data_dir": "TFDS data directory",
    "download": "let TFDS download a dataset missing from --data-dir (off: nothing is fetched)",
    "train_split": "TFDS training split (train)",
    "validation_split": "TFDS validation split (validation, else test)",
    "crop": "training crop: inception | translate | none (translate for digits)",
    "flip": "random horizontal flips (off for digits)",
    "eval_crop_fraction": "evaluation centre-crop fraction (1.0: resize only)",
    "randaugment": "RandAugment as [num_ops, magnitude], e.g. '[2, 0.5]'",
    "mixup": "MixUp alpha",
    "cutmix": "CutMix factor",
    "variant": "ViT variant, e.g. Ti/16, B/16, R50+B/16 (default: the small MNIST ViT on digits, the "
    "checkpoint's with --weights, else Ti/16)",
    "weights": "fine-tune from a checkpoint: timm or Hugging Face folder, hf://org/name, .npz, .keras, or a "
    "published name with --variant; its architecture, options, input size and mean/std unless flags say "
    "otherwise; a new zero-initialised head for the data's classes",
    "recipe": "scratch (AdamW) | finetune (SGD momentum 0.9; the default with --weights)",
    "batch_size": "images per replica and step (default 128, 32 with --recipe finetune; capped at the images a "
    "small folder holds)",
    "name": "model name (default: the checkpoint's, else vit_<variant>)",
    "pixel_mean": "per-channel mean of [0, 1] pixels, e.g. '[0.485, 0.456, 0.406]' (default: the checkpoint's, "
    "else 0.5)",
    "pixel_std": "per-channel std of [0, 1] pixels (default: the checkpoint's, else 0.5)",
    "random_erasing": "timm's RandomErasing probability (per-pixel noise), e.g. 0.25",
    "ema_decay": "keep an exponential moving average of the weights (e.g. 0.9998); it is validated, saved, exported",
    "layer_decay": "layer-wise learning-rate decay (e.g. 0.65): block i of L learns at R**(L-i) x the rate",
    "teacher": ".keras classifier (or run folder) of the same classes to distil from, DeiT-style",
    "distillation": "hard (teacher's argmax, default with --teacher) | soft (KL at --distillation-tau)",
    "distillation_alpha": "weight of the distillation loss (DeiT: 0.5)",
    "distillation_tau": "soft distillation temperature (DeiT: 1.0)",
    "total_batch_size": "images per optimizer update, reached by gradient accumulation",
    "strategy": "auto | default | mirrored | multiworker | tpu",
    "precision": "auto | float32 | mixed_float16 | mixed_bfloat16",
    "jit_compile": "auto (on for GPU/TPU, off on CPU) | on | off",
    "run_name": "run folder name under saved_models/",
    "output": "run folder path (overrides --run-name)",
}


def _flag_value(text):
    """A flag's text as the value a YAML file would give (numbers, null, lists), else a string.

    An empty text stays an empty string (refused by name later), never null: ``--image-folder ""``
    must not quietly mean "no image folder"."""
    import yaml

    if not text.strip():
        return text

    for convert in (int, float):
        try:
            return convert(text)
        except ValueError:
            pass
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    return value if value is None or isinstance(value, (bool, list)) else text


def add_train(subparsers):
    from keras_vit.training.config import TrainConfig

    parser = subparsers.add_parser(
        "train",
        help="train a ViT (default: the small ViT on the embedded MNIST digits)",
        description="Trains a ViT with model.fit and writes one run folder (saved_models/<run-name>/ or "
        "--output): model.keras, config.json, history.csv, training_curves.png, metrics.json, TensorBoard "
        "logs. Flags override the --config file. A killed run resumes when the same command is given again. "
        "On SIGTERM (a scheduler's preemption), Ctrl-C or a closed output pipe it saves the step it is at and "
        "exits with status 143, 130 or 141; the same command then resumes from that step, with the data where it was.",
    )
    parser.add_argument("--config", metavar="FILE", help="YAML or JSON file of configuration fields")
    defaults = TrainConfig()
    for field in TrainConfig.field_names():
        flag = "--" + field.replace("_", "-")
        help_text = _TRAIN_FLAG_HELP.get(field, field.replace("_", " "))
        help_text += "" if getattr(defaults, field) is None else f" (default {getattr(defaults, field)})"
        if isinstance(getattr(defaults, field), bool) or field == "flip":
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS, help=help_text)
        else:
            parser.add_argument(flag, type=_flag_value, default=argparse.SUPPRESS, metavar="VALUE", help=help_text)
    parser.add_argument("--resume", action="store_true", help="continue the unfinished run in the run folder")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing run folder")
    parser.add_argument("--quiet", action="store_true", help="one line per epoch instead of progress bars")
    return parser


def add_evaluate(subparsers):
    parser = subparsers.add_parser(
        "evaluate",
        help="print the held-out accuracy of a run folder or .keras model",
        description="Evaluates a trained model on its run's validation data (the embedded MNIST "
        "validation digits for a bare .keras file unless a dataset is given).",
    )
    parser.add_argument("path", metavar="RUN_DIR_OR_MODEL", help="run folder or .keras file")
    parser.add_argument("--dataset", help="TFDS name or 'mnist' instead of the run's data")
    parser.add_argument("--image-folder", help="evaluate on this image folder (one sub-folder per class)")
    parser.add_argument("--data-dir", help="TFDS data directory")
    parser.add_argument("--batch-size", type=_positive_int, help="evaluation batch size")
    parser.add_argument("--json", action="store_true", help="print JSON")
    return parser


def add_visualize(subparsers):
    parser = subparsers.add_parser(
        "visualize",
        help="write attention and embedding figures (PNG) for a model and some images",
        description="Writes PNG figures to --out: each image with its attention rollout overlaid, "
        "a per-head attention grid for one block, the position-embedding similarity grid, the "
        "principal components of the embedding filters, and mean attention distance against depth "
        "(the paper's Fig. 7) to --output. Existing figures are kept unless --overwrite is given.",
    )
    parser.add_argument(
        "model",
        metavar="MODEL",
        help="a .keras file, a run folder holding model.keras (saved_models/<run>) or an original .npz checkpoint",
    )
    parser.add_argument(
        "images", metavar="IMAGES", nargs="+", help="image files (PNG, JPEG), resized to the model's input size"
    )
    parser.add_argument(
        "--output", "--out", dest="output", required=True, metavar="DIR", help="folder for the figures (created if missing)"
    )
    parser.add_argument(
        "--layer", type=int, default=-1, help="block drawn head by head; negative counts from the last (default -1)"
    )
    parser.add_argument(
        "--filters", type=int, default=28, help="principal components of the embedding filters to draw (default 28)"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace figures already in --output")
    return parser


def add_inspect(subparsers):
    parser = subparsers.add_parser(
        "inspect",
        help="show what an original .npz checkpoint holds",
        description="Prints the model configuration inferred from an original ViT .npz "
        "checkpoint, its parameter count, and every key with its shape.",
    )
    parser.add_argument("checkpoint", help="path of the .npz checkpoint")
    parser.add_argument("--json", action="store_true", help="print JSON")
    return parser


def add_convert(subparsers):
    parser = subparsers.add_parser(
        "convert",
        help="convert a checkpoint (original .npz, timm or Hugging Face folder, hf://org/name) to a .keras model",
        description="Builds the model a checkpoint describes (an original ViT .npz file, a timm or "
        "Hugging Face repository folder, or hf://<org>/<name>), loads it strictly (resampling "
        "position embeddings and replacing the head when asked) and saves it as a .keras file.",
    )
    parser.add_argument("checkpoint", help=".npz file, repository folder or hf://<org>/<name>")
    parser.add_argument("output", help="the .keras file to write")
    parser.add_argument("--image-size", type=_positive_int, help="fine-tuning resolution (resamples position embeddings)")
    parser.add_argument("--num-classes", type=_int_in(1, 1_000_000),
                        help="a new zero-initialised head with this many classes (1 to 1,000,000)")
    parser.add_argument("--no-top", action="store_true", help="without the head (feature extractor)")
    parser.add_argument("--include-preprocessing", action="store_true",
                        help="the model takes 0-255 pixels and applies the checkpoint's own mean and std")
    parser.add_argument("--dynamic-image-size", action="store_true",
                        help="the model takes any image size that is a multiple of the patch size")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    return parser


def add_export(subparsers):
    parser = subparsers.add_parser(
        "export",
        help="export a model to SavedModel, TFLite and ONNX, each verified against Keras",
        description="Writes SavedModel (bytes and float signatures), TFLite (float32, float16, "
        "dynamic-range int8, mixed int8 (int8 matmuls, float LayerNorm/softmax) for CPUs, "
        "full-integer int8 for integer-only accelerators; builtin ops only) and ONNX (opset >= 17, "
        "dynamic batch) artifacts with labels.txt and manifest.json, runs each in its own runtime on "
        "held-out images next to the Keras model and fails (status 1) naming any artifact "
        "outside its tolerance. Each file's batch-1 latency (1 thread, all threads) is measured on "
        "this machine and the manifest recommends a file per target (CPU phone, GPU delegate, "
        "integer-only accelerator). 28x28x1 models are calibrated and verified on the embedded MNIST "
        "digits, and a few validation digits are written to EXPORT/samples/*.png.",
    )
    parser.add_argument("model", help="a .keras file or a run folder (saved_models/<run>)")
    parser.add_argument(
        "--format", default="all", help="all, or a comma list of savedmodel, tflite, onnx (default: all)"
    )
    parser.add_argument(
        "--precision",
        default="float32,float16,dynamic_int8,int8_mixed,int8",
        help="TFLite precisions, a comma list (default: float32,float16,dynamic_int8,int8_mixed,int8)",
    )
    parser.add_argument("--output", help="output folder (default: <folder of the .keras file>/export)")
    parser.add_argument(
        "--class-names",
        help="comma list or a file with one name per line (default: the run's config.json, else 0..K-1)",
    )
    parser.add_argument(
        "--images", help="folder of images for int8 calibration and verification (default: embedded MNIST "
        "for 28x28x1 models, else noise for verification and no int8 calibration)"
    )
    parser.add_argument("--top-k", type=_positive_int, default=5, help="k of the SavedModel bytes signature (default 5)")
    parser.add_argument("--opset", type=int, default=17, help="ONNX opset, >= 17 (default 17)")
    parser.add_argument("--overwrite", action="store_true", help="replace artifacts already in the output folder")
    parser.add_argument(
        "--latency-runs", type=_int_in(0, 100_000), default=20,
        help="timed batch-1 runs per file and thread setting for the manifest's latency (default 20; 0: none)",
    )
    parser.add_argument("--json", action="store_true", help="print the manifest as JSON")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def add_predict(subparsers):
    parser = subparsers.add_parser(
        "predict",
        help="top-k classes of image files with a .keras model, SavedModel, .tflite or .onnx",
        description="Runs any model or exported artifact (.keras file, run folder, SavedModel folder, "
        ".tflite, .onnx) on JPEG/PNG/BMP/GIF files of any size, or folders of them (recursively), "
        "prepared as the model's input spec says (resize, crop, mean/std, EXIF orientation), and "
        "prints the top-k labels with probabilities. Unreadable files are reported by name on "
        "stderr, the others still predicted, and the status is then 1. Held-out MNIST digits to "
        "try: `keras-vit export RUN` writes RUN/export/samples/*.png.",
    )
    parser.add_argument("model", help="a .keras file, run folder, SavedModel folder, .tflite or .onnx file")
    parser.add_argument("images", nargs="+", help="image files or folders of images")
    parser.add_argument("--top-k", type=_positive_int, default=5, help="classes per image (default 5)")
    parser.add_argument(
        "--max-pixels", type=_positive_int, default=50_000_000,
        help="larger images (decoded width x height) are reported instead of decoded (default 50,000,000)",
    )
    parser.add_argument("--class-names", help="comma list or a file with one name per line (overrides the artifact's)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    return parser


def add_benchmark(subparsers):
    parser = subparsers.add_parser(
        "benchmark",
        help="measure images/s, FLOP rate against the machine's matmul rate, peak memory",
        description="Measures inference and training-step throughput of keras_vit models, "
        "the machine's matrix-multiply rate in the same dtype, the fraction achieved, peak "
        "memory, and the JPEG input pipeline's rate. Each case runs in its own process. "
        "With no --variant, runs the standard suite of docs/performance.md. With --artifacts DIR, "
        "times the files of a keras-vit export folder instead (each TFLite precision, ONNX, "
        "SavedModel; batch 1, 1 thread and all threads, interleaved in this process).",
    )
    parser.add_argument("--artifacts", metavar="DIR", help="time the exported files in DIR (a keras-vit export folder)")
    parser.add_argument("--runs", type=_positive_int, default=50, help="timed runs per file with --artifacts (default 50)")
    parser.add_argument(
        "--clock", default="wall", choices=["wall", "thread"],
        help="with --artifacts: wall (elapsed time, default) or thread (CPU time of 1-thread runs, "
        "which other jobs on a shared machine do not inflate)",
    )
    parser.add_argument("--variant", action="append", help="model variant, e.g. B/16 (repeatable)")
    parser.add_argument("--mode", default="inference,training", help="inference,training (comma list)")
    parser.add_argument("--dtype", default="float32", help="dtype policies, e.g. float32,mixed_bfloat16")
    parser.add_argument("--backend", default="tensorflow", help="keras backends, e.g. tensorflow,jax")
    parser.add_argument("--image-size", type=_positive_int, default=224)
    parser.add_argument("--batch-size", "--batch", dest="batch_size", type=_positive_int, default=8,
                        help="images per step (default 8)")
    parser.add_argument(
        "--jit-compile", nargs="?", const="on", default="off", choices=["on", "off"],
        help="compile the model with XLA: on or off (default off; --jit-compile alone means on)",
    )
    parser.add_argument("--seconds", type=_positive_float, default=10.0, help="minimum timed seconds per model case")
    parser.add_argument("--json", action="store_true", help="print JSON (results and machine) instead of tables")
    parser.add_argument("--output", metavar="FILE", help="also write the results and machine as JSON to FILE")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --output file")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument(
        "--peers", default="installed",
        help="peer implementations measured beside keras_vit: 'installed' (those importable: "
        "keras_hub), 'none', or a comma list",
    )
    return parser
