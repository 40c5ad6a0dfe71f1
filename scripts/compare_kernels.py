"""Fused TensorFlow kernels against the portable Keras forms, in one process, alternated.

    python scripts/compare_kernels.py --mode inference --variant B/16 --batch 8
    python scripts/compare_kernels.py --mode training --variant S/16 --batch 32 --rounds 5
"""

import argparse
import json

from keras_vit.tools import benchmark


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    benchmark.add_step_arguments(parser)
    parser.add_argument("--rounds", type=int, default=8, help="timed rounds (each runs every form and the matmul)")
    args = parser.parse_args()
    result = benchmark.compare_fused_and_portable(
        args.mode, args.variant, args.image_size, args.batch, args.dtype, args.rounds
    )
    for name in result["forms"]:
        figures = result[name]
        print(f"{name:18s} {figures['images_per_second']:7.2f} images/s  {100 * figures['fraction_of_matmul_rate']:5.1f}% of the matmul rate")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
