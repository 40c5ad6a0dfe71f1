"""Where a step's time goes: milliseconds per TensorFlow op type, from TensorFlow's profiler.

    python scripts/profile_ops.py --mode inference --variant B/16 --batch 8
    python scripts/profile_ops.py --mode training --variant S/16 --batch 32

Ops run one at a time here (inter-op parallelism 1), so each duration is the op's own.
"""

import argparse
import json

from keras_vit.tools import benchmark


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    benchmark.add_step_arguments(parser)
    parser.add_argument("--top", type=int, default=15, help="op types listed")
    parser.add_argument("--json", metavar="PATH", help="also write the whole profile as JSON")
    args = parser.parse_args()

    import tensorflow as tf

    tf.config.threading.set_inter_op_parallelism_threads(1)

    profile = benchmark.op_profile(args.mode, args.variant, args.image_size, args.batch, args.dtype)
    total = sum(op["ms"] for op in profile["ops"].values())
    print(f"{args.mode} ViT-{args.variant} batch {args.batch} {args.dtype}: step {profile['step_ms']:.0f} ms, kernels {total:.0f} ms")
    for name, op in list(profile["ops"].items())[: args.top]:
        print(f"{op['ms']:9.1f} ms {100 * op['ms'] / total:5.1f}% {op['calls']:6d} calls  {name}")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(profile, handle, indent=1)


if __name__ == "__main__":
    main()
