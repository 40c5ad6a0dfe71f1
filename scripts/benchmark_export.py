"""Latency per image (batch 1) and file size of each exported artifact of ViT-Ti/16 and ViT-B/16.

Random weights at 224x224x3 with a 1000-class head (latency does not depend on the
weights). Each artifact is run in its own runtime on this machine's CPU: Keras (TensorFlow,
``model(x)``), the SavedModel float signature, the LiteRT interpreter (float32, float16,
dynamic-range int8, full-integer int8 calibrated on noise) and onnxruntime. Prints a
Markdown table and writes JSON.

    python scripts/benchmark_export.py --variants Ti/16,B/16 --runs 20 --threads 2 \
        --json saved_models/benchmark_export.json
"""

import argparse
import json
import os
import platform
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np


def _median_latency_ms(run, image, runs, warmup=3):
    for _ in range(warmup):
        run(image)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        run(image)
        times.append(time.perf_counter() - start)
    return 1000.0 * float(np.median(times))


def benchmark_variant(variant, folder, runs, threads, precisions, image_size=224):
    import keras
    import onnxruntime
    import tensorflow as tf
    from ai_edge_litert.interpreter import Interpreter

    import keras_vit
    from keras_vit.deploy import export

    keras.utils.set_random_seed(0)
    model = keras_vit.ViT(variant, num_classes=1000, image_size=image_size)
    # The head is zero-initialised; random weights give it non-trivial outputs.
    head = model.get_layer("head")
    head.kernel.assign(np.random.default_rng(0).normal(0, 0.02, head.kernel.shape).astype("float32"))
    rng = np.random.default_rng(0)
    calibration = rng.uniform(-1, 1, (8, image_size, image_size, 3)).astype("float32")
    data = dict(calibration=calibration, verification=calibration[:2], verification_labels=None, samples=None,
                source="uniform noise")
    export.export_model(
        model, folder, formats="all", tflite_precisions=precisions, data=data, overwrite=True,
        tolerances={"int8_min_top1_agreement": 0.0},  # random weights: agreement means nothing
    )
    with open(os.path.join(folder, export.MANIFEST_FILENAME)) as file:
        manifest = json.load(file)
    image = rng.uniform(-1, 1, (1, image_size, image_size, 3)).astype("float32")

    keras_file = os.path.join(folder, "model.keras")
    model.save(keras_file)
    compiled = tf.function(lambda x: model(x, training=False), jit_compile=False)
    rows = [dict(model=f"ViT-{variant}", artifact="Keras (.keras, tf.function)", runtime=f"TensorFlow {tf.__version__}",
                 size_mb=os.path.getsize(keras_file) / 1e6, latency_ms=_median_latency_ms(lambda x: compiled(x).numpy(), image, runs))]
    for entry in manifest["artifacts"]:
        path = os.path.join(folder, entry["file"])
        if entry["format"] == "savedmodel":
            signature = tf.saved_model.load(path).signatures[export.FLOAT_SIGNATURE]
            run, runtime = (lambda x: signature(images=tf.constant(x))["outputs"].numpy()), f"TensorFlow {tf.__version__}"
        elif entry["format"] == "tflite":
            interpreter = Interpreter(model_path=path, num_threads=threads)
            interpreter.resize_tensor_input(interpreter.get_input_details()[0]["index"], image.shape)
            interpreter.allocate_tensors()
            details = interpreter.get_input_details()[0]
            output = interpreter.get_output_details()[0]["index"]
            feed = image
            if details["dtype"] == np.int8:
                scale, zero_point = details["quantization"]
                feed = np.clip(np.round(image / scale + zero_point), -128, 127).astype(np.int8)

            def run(_, interpreter=interpreter, index=details["index"], feed=feed, output=output):
                interpreter.set_tensor(index, feed)
                interpreter.invoke()
                return interpreter.get_tensor(output)

            runtime = "ai-edge-litert (XNNPACK)"
        else:
            options = onnxruntime.SessionOptions()
            options.intra_op_num_threads = threads
            session = onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])
            run, runtime = (lambda x, session=session: session.run(None, {"images": x})[0]), f"onnxruntime {onnxruntime.__version__}"
        name = entry["file"] + ("" if entry["format"] != "tflite" else f" ({entry['precision']})")
        rows.append(dict(model=f"ViT-{variant}", artifact=name, runtime=runtime, size_mb=entry["size_bytes"] / 1e6,
                         latency_ms=_median_latency_ms(run, image, runs)))
    keras.backend.clear_session()
    return rows


def format_rows(rows):
    lines = ["| model | artifact | runtime | size (MB) | latency, batch 1 (ms) |", "|---|---|---|---:|---:|"]
    lines += [f"| {r['model']} | {r['artifact']} | {r['runtime']} | {r['size_mb']:.1f} | {r['latency_ms']:.1f} |" for r in rows]
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", default="Ti/16,B/16", help="comma list of variants (default Ti/16,B/16)")
    parser.add_argument("--runs", type=int, default=20, help="timed runs per artifact (median reported)")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="threads for LiteRT and onnxruntime")
    parser.add_argument("--precisions", default="float32,float16,dynamic_int8,int8", help="TFLite precisions")
    parser.add_argument("--json", default="saved_models/benchmark_export.json", help="where to write the JSON results")
    args = parser.parse_args(argv)
    rows = []
    for variant in args.variants.split(","):
        with tempfile.TemporaryDirectory() as folder:
            rows += benchmark_variant(variant, folder, args.runs, args.threads, args.precisions)
    print(format_rows(rows))
    machine = dict(platform=platform.platform(), processor=platform.processor(), cpu_count=os.cpu_count(), threads=args.threads)
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json, "w") as file:
        json.dump(dict(command=" ".join(["python", "scripts/benchmark_export.py", *sys.argv[1:]]), machine=machine,
                       runs=args.runs, rows=rows), file, indent=2)
    print(f"\nWrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
