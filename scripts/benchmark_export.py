"""Latency per image (batch 1) and file size of each exported artifact, and LiteRT per-op profiles.

Random weights at 224x224x3 with a 1000-class head (latency does not depend on the
weights; int8 calibration on 8 noise images). The files are those ``keras-vit export``
writes; they are timed with ``keras-vit benchmark --artifacts``' code (each TFLite
precision with LiteRT's XNNPACK, onnxruntime, the SavedModel's float signature), round
after round in one process, at 1 thread and at all threads. Prints a Markdown table and
writes JSON.

    python scripts/benchmark_export.py --variants Ti/16 --runs 30
    python scripts/benchmark_export.py --variants Ti/16 --profile int8,float32   # + per-op tables
    python scripts/benchmark_export.py --keep DIR --reuse --clock thread       # shared machine: CPU time
"""

import argparse
import os
import sys
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np


def export_variant(variant, folder, precisions, image_size=224):
    import keras

    import keras_vit
    from keras_vit.deploy import export

    keras.utils.set_random_seed(0)
    model = keras_vit.ViT(variant, num_classes=1000, image_size=image_size)
    # The head and the biases are zero-initialised: random values give the head non-trivial
    # outputs and the int8 biases a real quantization scale (a zero bias gets a degenerate
    # one, and XNNPACK refuses the ADD that applies it, which a trained model never shows).
    rng = np.random.default_rng(0)
    for weight in model.weights:
        if weight.path.endswith("bias") or weight.path.startswith("head"):
            weight.assign(rng.normal(0, 0.02, weight.shape).astype("float32"))
    calibration = np.random.default_rng(0).uniform(-1, 1, (8, image_size, image_size, 3)).astype("float32")
    data = dict(calibration=calibration, verification=calibration[:2], verification_labels=None, samples=None,
                source="uniform noise")
    export.export_model(
        model, folder, formats="all", tflite_precisions=precisions, data=data, overwrite=True, progress=False,
        tolerances={"int8_min_top1_agreement": 0.0},  # random weights: agreement means nothing
        latency_runs=0,
    )
    keras.backend.clear_session()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", default="Ti/16", help="comma list of variants (default Ti/16)")
    parser.add_argument("--runs", type=int, default=30, help="timed rounds per file (median reported)")
    parser.add_argument("--precisions", default="float32,float16,dynamic_int8,int8_mixed,int8", help="TFLite precisions")
    parser.add_argument("--profile", default="", help="comma list of TFLite precisions to profile per op (1 thread)")
    parser.add_argument("--clock", default="wall", choices=["wall", "thread"],
                        help="wall time, or the CPU time of 1-thread runs (for a machine shared with other jobs)")
    parser.add_argument("--reuse", action="store_true", help="time the files already in --keep instead of exporting")
    parser.add_argument("--keep", help="export into this folder (kept) instead of a temporary one")
    parser.add_argument("--json", default="saved_models/benchmark_export.json", help="where to write the JSON results")
    args = parser.parse_args(argv)

    from keras_vit.tools import benchmark, tflite_profile

    reports, profiles = [], {}
    for variant in args.variants.split(","):
        with tempfile.TemporaryDirectory() as scratch:
            folder = args.keep or scratch
            if not args.reuse:
                export_variant(variant, folder, args.precisions)
            report = benchmark.benchmark_artifacts(folder, runs=args.runs, clock=args.clock)
            report["variant"] = variant
            reports.append(report)
            print(f"\nViT-{variant}, 224x224, 1000 classes\n")
            print(benchmark.format_artifact_results(report))
            for precision in [p for p in args.profile.split(",") if p]:
                path = os.path.join(folder, f"model_{precision}.tflite")
                profile = tflite_profile.op_profile(path, threads=1, runs=10)
                profiles[f"{variant} {precision}"] = profile
                print("\n" + tflite_profile.format_profile(profile, f"ViT-{variant} {precision}:"))
    from keras_vit.files import write_json

    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    write_json(args.json, dict(command=" ".join(["python", "scripts/benchmark_export.py", *sys.argv[1:]]),
                               reports=reports, profiles=profiles))
    print(f"\nWrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
