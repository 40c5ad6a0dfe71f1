"""Same as ``keras-vit evaluate``: print the held-out accuracy of a run folder or .keras model."""

import sys

from keras_vit.cli import main

if __name__ == "__main__":
    sys.exit(main(["evaluate", *sys.argv[1:]]))
