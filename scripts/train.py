"""Same as ``keras-vit train``: train a ViT and write its run folder (see ``--help``)."""

import sys

from keras_vit.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
