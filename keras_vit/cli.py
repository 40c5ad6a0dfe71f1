"""The ``keras-vit`` command: parses arguments and calls library functions, nothing more.

Each subcommand is one ``_add_<name>(subparsers)`` function that declares its flags and
sets ``handler`` to a function taking the parsed arguments; ``main`` dispatches. An error
from the library ends the command with one line and no traceback (unless ``--verbose``):
exit status 2 for input it cannot use (a bad value, a missing file), 1 for a run or a
verification that failed or a system refusal (permissions, a full disk), 0 for success;
``keras-vit train`` stopped by SIGTERM, Ctrl-C or a closed output pipe exits with 143, 130
or 141 once it has saved where it was.

Nothing here imports Keras or TensorFlow before a handler runs, so ``--help``,
``--version`` and argument errors answer at once; and unless ``--verbose`` is given, the
native log lines of TensorFlow, absl, oneDNN, CUDA and XNNPACK are filtered out of the
standard error of the command and of the processes it starts.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
import threading

from keras_vit.markdown import markdown_table

# Lines the native runtimes write straight to file descriptor 2, whatever Python's logging says.
_NATIVE_LOG_LINE = re.compile(
    rb"^(?:[IWEF]\d{4} \d\d:\d\d:\d+\.\d+ +\d+ [\w.]+:\d+\]"  # absl / TensorFlow C++ logging
    rb"|WARNING: All log messages before absl::InitializeLog"
    rb"|To enable the following instructions:"
    rb"|This TensorFlow binary is optimized"
    rb"|INFO: Created TensorFlow Lite XNNPACK delegate"
    rb"|WARNING:absl:"
    rb"|fully_quantize: \d"  # the TFLite quantizer's settings line
    rb"|W\d{4} \d\d:\d\d:\d\d"  # absl's Python logging
    rb")"
)


class _NativeLogFilter:
    """Routes file descriptor 2 through a pipe and drops the native runtimes' log lines.

    Works below Python (TensorFlow's C++ logging ignores TF_CPP_MIN_LOG_LEVEL until absl
    is initialised) and for the child processes the command starts, which inherit the pipe.
    """

    def __init__(self):
        sys.stderr.flush()
        self._stderr = os.dup(2)
        read, write = os.pipe()
        os.dup2(write, 2)
        os.close(write)
        self._thread = threading.Thread(target=self._forward, args=(read,), daemon=True)
        self._thread.start()

    def _forward(self, read):
        pending = b""
        while True:
            chunk = os.read(read, 65536)
            if not chunk:
                break
            pending += chunk
            # Lines end in "\n"; progress bars redraw with "\r": forward each piece as it ends.
            pieces = re.split(rb"(?<=[\r\n])", pending)
            pending = pieces.pop()
            self._write(pieces)
        self._write([pending])
        os.close(read)

    def _write(self, pieces):
        kept = b"".join(piece for piece in pieces if piece and not _NATIVE_LOG_LINE.match(piece.lstrip(b"\r")))
        if kept:
            os.write(self._stderr, kept)

    def close(self):
        sys.stderr.flush()
        os.dup2(self._stderr, 2)  # closes the pipe's last writer in this process
        self._thread.join(timeout=5)


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


def _json_text(value) -> str:
    """``value`` as JSON text, non-finite numbers (NaN, infinity: not JSON) written as null."""

    def finite(item):
        if isinstance(item, float) and not math.isfinite(item):
            return None
        if isinstance(item, dict):
            return {key: finite(inner) for key, inner in item.items()}
        if isinstance(item, (list, tuple)):
            return [finite(inner) for inner in item]
        return item

    return json.dumps(finite(value), indent=2, allow_nan=False)


def _positive_float(text):
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number; got {text!r}")
    return value


# --------------------------------------------------------------------------- models
def _add_models(subparsers):
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
    parser.set_defaults(handler=_run_models)


def _run_models(args):
    from keras_vit.zoo import list_models, variant_table

    rows = variant_table(include_hybrids=args.hybrids, filter=args.pattern)
    if not rows:
        hybrids = [] if args.hybrids else list_models(args.pattern)
        raise ValueError(
            f"no model matches {args.pattern!r}"
            + (f" without --hybrids (the hybrids {', '.join(hybrids)} do)" if hybrids else "")
            + "; a pattern matches a variant (B/16), its builder (ViTB16) or timm's name (vit_base_patch16_224), "
            "e.g. 'vit_base_*', '*b16*', '*/16'."
        )
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print(format_table(rows))


def format_table(rows):
    """Formats a list of dicts with equal keys as a Markdown table."""
    if not rows:
        return ""
    columns = list(rows[0])
    numeric = [isinstance(rows[0][c], (int, float)) and not isinstance(rows[0][c], bool) for c in columns]
    return markdown_table(columns, [[_cell(row[c]) for c in columns] for row in rows], numeric)


def _cell(value):
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.1f}"
    return str(value)


# --------------------------------------------------------------------------- train / evaluate
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


def _add_train(subparsers):
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
    parser.set_defaults(handler=_run_train)


def _run_train(args):
    from keras_vit.training.config import TrainConfig, load_config_file, resolve_config

    config = load_config_file(args.config) if args.config else TrainConfig()
    overrides = {field: getattr(args, field) for field in TrainConfig.field_names() if hasattr(args, field)}
    config = resolve_config(TrainConfig.from_dict({**config.to_dict(), **overrides}))  # checked before TensorFlow loads

    from keras_vit.training.callbacks import Preempted
    from keras_vit.training.fit import train

    try:
        metrics = train(config, resume=args.resume, overwrite=args.overwrite, verbose=2 if args.quiet else 1)
    except Preempted as preempted:  # not an error: the run is saved and resumes with the same command
        if not args.quiet:
            print()  # end the progress bar's line
        print(f"keras-vit train: {preempted}", file=sys.stderr)
        return preempted.exit_code
    if metrics.get("chief") is False:
        print(f"Worker done; the chief writes the run folder {metrics['run_dir']}.")
        return
    print(
        f"Held-out accuracy {metrics['val_accuracy']:.4f} after {metrics['epochs']} epochs, "
        f"{metrics['train_seconds']:.0f} s of training ({metrics['images_per_second']} images/s). "
        f"Run folder: {metrics['run_dir']}"
    )


def _add_evaluate(subparsers):
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
    parser.set_defaults(handler=_run_evaluate)


def _run_evaluate(args):
    from keras_vit.training.config import TrainConfig
    from keras_vit.training.fit import evaluate

    config = None
    if args.dataset or args.image_folder:
        config = TrainConfig(
            dataset=args.dataset or "mnist",
            image_folder=args.image_folder,
            validation_folder=args.image_folder,  # The whole folder is held-out data here.
            data_dir=args.data_dir,
        )
    result = evaluate(args.path, config=config, batch_size=args.batch_size, verbose=0 if args.json else 1)
    if args.json:
        print(_json_text(result))
    else:
        print(f"Held-out accuracy: {result['accuracy']:.4f} on {result['examples']} images ({result['model']})")


# --------------------------------------------------------------------------- visualize
def _add_visualize(subparsers):
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
    parser.set_defaults(handler=_run_visualize)


def _run_visualize(args):
    from keras_vit.visualize.figures import save_figures

    written = save_figures(
        args.model, args.images, args.output, layer=args.layer, num_filters=args.filters, overwrite=args.overwrite
    )
    for path in written.values():
        print(path)


# --------------------------------------------------------------------------- inspect / convert
def _add_inspect(subparsers):
    parser = subparsers.add_parser(
        "inspect",
        help="show what an original .npz checkpoint holds",
        description="Prints the model configuration inferred from an original ViT .npz "
        "checkpoint, its parameter count, and every key with its shape.",
    )
    parser.add_argument("checkpoint", help="path of the .npz checkpoint")
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.set_defaults(handler=_run_inspect)


def _run_inspect(args):
    from keras_vit.weights.npz import describe_checkpoint

    info = describe_checkpoint(args.checkpoint)
    if args.json:
        print(json.dumps(info, indent=2))
        return
    print(f"checkpoint: {info['path']}")
    print(f"parameters: {info['parameters']:,}")
    print("inferred configuration:")
    for key, value in info["config"].items():
        print(f"  {key}: {value}")
    print(f"keys ({len(info['keys'])}):")
    width = max(len(key) for key in info["keys"])
    for key, shape in info["keys"].items():
        print(f"  {key.ljust(width)}  {tuple(shape)}")


def _add_convert(subparsers):
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
    parser.set_defaults(handler=_run_convert)


def _run_convert(args):
    from keras_vit.weights.hub import convert_pretrained

    model = convert_pretrained(
        args.checkpoint,
        args.output,
        overwrite=args.overwrite,
        image_size=args.image_size,
        num_classes=args.num_classes,
        include_top=not args.no_top,
        include_preprocessing=args.include_preprocessing,
        dynamic_image_size=args.dynamic_image_size,
    )
    print(
        f"wrote {args.output}: {model.count_params():,} parameters, images "
        + ("of any size (multiples of the patch size), " if model.dynamic_image_size else
           f"{model.image_size[0]}x{model.image_size[1]}x{model.channels}, ")
        + (f"{model.num_classes} classes" if model.include_top else "no head")
        + f"; input: {model.image_spec.describe()}"
    )


# --------------------------------------------------------------------------- export / predict
def _add_export(subparsers):
    parser = subparsers.add_parser(
        "export",
        help="export a model to SavedModel, TFLite and ONNX, each verified against Keras",
        description="Writes SavedModel (bytes and float signatures), TFLite (float32, float16, "
        "dynamic-range int8, mixed int8 (int8 matmuls, float LayerNorm/softmax) for CPUs, "
        "full-integer int8 for integer-only accelerators; builtin ops only) and ONNX (opset >= 17, "
        "dynamic batch) artifacts with labels.txt and manifest.json, runs each in its own runtime on "
        "held-out images next to the Keras model and fails (status 2) naming any artifact "
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
    parser.set_defaults(handler=_run_export)


def _run_export(args):
    from keras_vit.deploy.export import export_model, format_manifest

    manifest = export_model(
        args.model,
        output_dir=args.output,
        formats=args.format,
        tflite_precisions=args.precision,
        class_names=args.class_names,
        images_dir=args.images,
        top_k=args.top_k,
        opset=args.opset,
        overwrite=args.overwrite,
        progress=not args.quiet,
        latency_runs=args.latency_runs,
    )
    print(json.dumps(manifest, indent=2) if args.json else format_manifest(manifest))


def _add_predict(subparsers):
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
    parser.set_defaults(handler=_run_predict)


def _run_predict(args):
    from keras_vit.deploy.predict import format_predictions, predict_files

    result = predict_files(
        args.model, args.images, top_k=args.top_k, class_names=args.class_names, max_pixels=args.max_pixels
    )
    if args.json:  # a NaN probability (a model that outputs NaN) is printed as null
        print(_json_text(result))
    elif result["predictions"]:
        print(format_predictions(result))
    for error in result["errors"]:
        print(f"keras-vit predict: cannot read {error['file']}: {error['error']}", file=sys.stderr)
    return 1 if result["errors"] else 0


# --------------------------------------------------------------------------- benchmark
def _add_benchmark(subparsers):
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
    parser.set_defaults(handler=_run_benchmark)


def _run_benchmark(args):
    from keras_vit.tools import benchmark

    if args.output and os.path.exists(args.output) and not args.overwrite:
        raise ValueError(f"--output {args.output!r} already exists; pass --overwrite to replace it.")
    if args.artifacts:
        report = benchmark.benchmark_artifacts(args.artifacts, runs=args.runs, clock=args.clock)
        print(json.dumps(report, indent=2) if args.json else benchmark.format_artifact_results(report))
        if args.output:
            from keras_vit.files import write_json

            write_json(args.output, report)
        return 1 if any("error" in r["latency_ms"] for r in report["results"]) else 0
    backends = args.backend.split(",")
    peers = benchmark.select_peers(args.peers)
    if args.variant:
        cases = benchmark.custom_suite(
            args.variant, args.mode.split(","), args.dtype.split(","), backends,
            image_size=args.image_size, batch=args.batch_size, jit_compile=args.jit_compile == "on",
            min_seconds=args.seconds, peers=peers,
        )
    else:
        cases = benchmark.standard_suite(backends, peers=peers)
    results = benchmark.run_suite(cases, progress=not args.quiet)
    report = {"machine": benchmark.machine_description(), "results": results}
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(f"machine: {report['machine']}")
        print(benchmark.format_results(results))
    if args.output:
        from keras_vit.files import write_json

        write_json(args.output, report)
    return 1 if any("error" in r for r in results) else 0


# --------------------------------------------------------------------------- main
_COMMANDS = [_add_models, _add_inspect, _add_convert, _add_benchmark, _add_train, _add_evaluate, _add_visualize, _add_export, _add_predict]


def build_parser():
    parser = argparse.ArgumentParser(
        prog="keras-vit",
        description="Vision Transformer (Dosovitskiy et al., 2021) for Keras 3: models, "
        "official checkpoints, training, export.",
    )
    from keras_vit.version import __version__

    parser.add_argument("--version", action="version", version=f"keras-vit {__version__}")
    parser.add_argument(
        "--verbose", action="store_true",
        help="show the log lines of TensorFlow, absl, oneDNN, CUDA and XNNPACK (hidden by default)",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in _COMMANDS:
        add(subparsers)
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    log_filter = None
    if not args.verbose:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        log_filter = _NativeLogFilter()
    try:
        result = args.handler(args)
        sys.stdout.flush()  # here, so that a closed pipe is met inside the try
    except BrokenPipeError:  # the reader went away (`keras-vit models | head`): nothing left to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:  # Ctrl-C (training saves on the first one and stops with Preempted)
        if args.verbose:
            raise
        print(f"\nkeras-vit {args.command}: interrupted (SIGINT).", file=sys.stderr)
        return 130
    except (ValueError, TypeError, FileNotFoundError, NotADirectoryError, IsADirectoryError, RuntimeError,
            OSError) as error:
        if args.verbose:
            raise
        # 2: the command was given something it cannot use; 1: a run or a verification failed,
        # or the system refused (permissions, a full disk).
        usage = isinstance(error, (ValueError, TypeError, FileNotFoundError, NotADirectoryError, IsADirectoryError))
        message = str(error) if not isinstance(error, OSError) or not error.filename else (
            f"{error.strerror or error}: {error.filename!r}")
        print(f"keras-vit {args.command}: error: {message}", file=sys.stderr)
        return 2 if usage else 1
    finally:
        if log_filter is not None:
            log_filter.close()
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
