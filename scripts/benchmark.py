"""Benchmark keras_vit on this machine: `python scripts/benchmark.py --help` (= keras-vit benchmark)."""

import sys

from keras_vit.cli import main

if __name__ == "__main__":
    sys.exit(main(["benchmark", *sys.argv[1:]]))
