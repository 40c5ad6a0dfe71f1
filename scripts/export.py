"""Same as ``keras-vit export``: SavedModel / TFLite / ONNX artifacts of a model, each verified."""

import sys

from keras_vit.cli import main

if __name__ == "__main__":
    sys.exit(main(["export", *sys.argv[1:]]))
