"""The ``keras-vit`` command: parses arguments and calls library functions, nothing more.

Each subcommand is one ``_add_<name>(subparsers)`` function that declares its flags and
sets ``handler`` to a function taking the parsed arguments; ``main`` dispatches. A
``ValueError``/``FileNotFoundError`` from the library ends the command with its message
and exit status 2 instead of a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys


def _quiet_tensorflow():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


# --------------------------------------------------------------------------- models
def _add_models(subparsers):
    parser = subparsers.add_parser(
        "models",
        help="print the model family: layers, width, heads, MLP, patch, parameters, GFLOPs",
        description="Builds every variant of the paper at 224x224 with a 1000-class head and "
        "prints its architecture, parameter count and forward GFLOPs (computed from the real "
        "models).",
    )
    parser.add_argument("--hybrids", action="store_true", help="also list the ResNet hybrids")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.set_defaults(handler=_run_models)


def _run_models(args):
    from keras_vit.models import variant_table

    rows = variant_table(include_hybrids=args.hybrids)
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print(format_table(rows))


def format_table(rows):
    """Formats a list of dicts with equal keys as a Markdown table."""
    if not rows:
        return ""
    columns = list(rows[0])
    cells = [[_cell(row[c]) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(columns, widths)) + " |"]
    lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    lines += ["| " + " | ".join(v.rjust(w) for v, w in zip(r, widths)) + " |" for r in cells]
    return "\n".join(lines)


def _cell(value):
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.1f}"
    return str(value)


# --------------------------------------------------------------------------- main
_COMMANDS = [_add_models]


def build_parser():
    parser = argparse.ArgumentParser(
        prog="keras-vit",
        description="Vision Transformer (Dosovitskiy et al., 2021) for Keras 3: models, "
        "official checkpoints, training, export.",
    )
    from keras_vit import __version__

    parser.add_argument("--version", action="version", version=f"keras-vit {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in _COMMANDS:
        add(subparsers)
    return parser


def main(argv=None):
    _quiet_tensorflow()
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        result = args.handler(args)
    except (ValueError, FileNotFoundError, RuntimeError) as error:
        print(f"keras-vit {args.command}: error: {error}", file=sys.stderr)
        return 2
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
