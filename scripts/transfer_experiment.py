"""Does transfer work? Pre-train on digits 0-4, fine-tune on a small folder of digits 5-9
through `keras-vit train --weights`, compare with the same model trained from scratch
(keras_vit.tools.transfer; numbers in docs/fine-tuning.md).

    python scripts/transfer_experiment.py --work-dir /tmp/transfer [--per-class 20 --epochs 10]
"""

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work-dir", required=True, help="folder for the checkpoint, image folders and runs")
    parser.add_argument("--per-class", type=int, default=20, help="training images per digit 5-9 (default 20)")
    parser.add_argument("--test-per-class", type=int, default=100, help="held-out images per digit (default 100)")
    parser.add_argument("--pretrain-epochs", type=int, default=10, help="epochs on digits 0-4 (default 10)")
    parser.add_argument("--epochs", type=int, default=10, help="epochs on the folder, both runs (default 10)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    from keras_vit.tools.transfer import run_experiment

    result = run_experiment(args.work_dir, per_class=args.per_class, test_per_class=args.test_per_class,
                            pretrain_epochs=args.pretrain_epochs, epochs=args.epochs, seed=args.seed)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
