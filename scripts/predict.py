"""Same as ``keras-vit predict``: top-k classes of image files with any model or artifact."""

import sys

from keras_vit.cli import main

if __name__ == "__main__":
    sys.exit(main(["predict", *sys.argv[1:]]))
