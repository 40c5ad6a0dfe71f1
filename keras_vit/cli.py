"""The ``keras-vit`` command: parses arguments and calls library functions, nothing more.

Each subcommand is declared by ``keras_vit.cli_parsers.add_<name>(subparsers)`` (its flags
and help) and run by ``_run_<name>(args)`` here; ``_COMMANDS`` pairs them, ``main`` dispatches. An error
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

from keras_vit import cli_parsers
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


# --------------------------------------------------------------------------- models
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
def _run_train(args):
    from keras_vit.training.config import TrainConfig, load_config_file
    from keras_vit.training.resolution import resolve_config

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
def _run_visualize(args):
    from keras_vit.visualize.figures import save_figures

    written = save_figures(
        args.model, args.images, args.output, layer=args.layer, num_filters=args.filters, overwrite=args.overwrite
    )
    for path in written.values():
        print(path)


# --------------------------------------------------------------------------- inspect / convert
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
def _run_benchmark(args):
    from keras_vit.tools import benchmark

    if args.output and os.path.exists(args.output) and not args.overwrite:
        raise ValueError(f"--output {args.output!r} already exists; pass --overwrite to replace it.")
    if args.artifacts:
        report = benchmark.benchmark_artifacts(args.artifacts, runs=args.runs, clock=args.clock)
        table = benchmark.format_artifact_results(report)
    else:
        backends, peers = args.backend.split(","), benchmark.select_peers(args.peers)
        if args.variant:
            cases = benchmark.custom_suite(
                args.variant, args.mode.split(","), args.dtype.split(","), backends,
                image_size=args.image_size, batch=args.batch_size, jit_compile=args.jit_compile == "on",
                min_seconds=args.seconds, peers=peers,
            )
        else:
            cases = benchmark.standard_suite(backends, peers=peers)
        report = benchmark.suite_report(cases, progress=not args.quiet)
        table = f"machine: {report['machine']}\n" + benchmark.format_results(report["results"])
    print(json.dumps(report, indent=2) if args.json else table)
    if args.output:
        from keras_vit.files import write_json

        write_json(args.output, report)
    return 1 if benchmark.report_has_errors(report) else 0


# --------------------------------------------------------------------------- main
# (parser, handler) per command, in the order of --help.
_COMMANDS = [
    (cli_parsers.add_models, _run_models),
    (cli_parsers.add_inspect, _run_inspect),
    (cli_parsers.add_convert, _run_convert),
    (cli_parsers.add_benchmark, _run_benchmark),
    (cli_parsers.add_train, _run_train),
    (cli_parsers.add_evaluate, _run_evaluate),
    (cli_parsers.add_visualize, _run_visualize),
    (cli_parsers.add_export, _run_export),
    (cli_parsers.add_predict, _run_predict),
]


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
    for add_parser, handler in _COMMANDS:
        add_parser(subparsers).set_defaults(handler=handler)
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
