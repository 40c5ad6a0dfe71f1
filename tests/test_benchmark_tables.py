"""The benchmark's Markdown tables, from report dicts (no timing: the figures are given)."""

from keras_vit.tools.benchmark import format_artifact_results, format_results, report_has_errors


def _rows(text):
    return [[cell.strip() for cell in line.strip().strip("|").split("|")] for line in text.splitlines()
            if line.startswith("|")]


def test_suite_table_has_a_row_per_case_and_the_speedups_apart():
    training = dict(case="training", model="keras_vit ViT-Ti/16", backend="tensorflow", dtype_policy="float32",
                    batch=2, jit_compile=False, images_per_second=12.34, flops_per_second=2.5e10,
                    matmul_flops_per_second=1e11, fraction_of_matmul_rate=0.25, peak_memory_mib=512.4)
    speedup = dict(case="speedup", model="keras_vit ViT-Ti/16", backend="tensorflow", batch=2,
                   images_per_second={"float32": 4.0, "bfloat16": 10.0}, speedup={"bfloat16": 2.5},
                   matmul_speedup={"bfloat16": 3.0})
    failed = dict(case="inference", variant="B/16", backend="jax", error="out of memory")
    rows = _rows(format_results([dict(case="matmul", dtype="bfloat16", size=64, flops_per_second=3e9), training,
                                 failed, speedup]))
    assert rows[0][:3] == ["case", "model", "backend"] and len(rows) == 2 + 3 + 2 + 1
    assert rows[2][:2] == ["matmul", "64x64 matmul"] and rows[2][7] == "3.0"
    assert rows[3] == ["training", "keras_vit ViT-Ti/16", "tensorflow", "float32", "2", "False", "12.3", "25.0",
                       "100.0", "25%", "512"]
    assert rows[4][:3] == ["inference", "B/16", "jax"] and rows[4][6] == "error: out of memory"
    assert rows[5][0] == "speed-up over float32"
    assert rows[7] == ["inference", "keras_vit ViT-Ti/16", "tensorflow", "bfloat16", "2", "10.0", "4.0", "2.50x",
                       "3.00x"]
    assert report_has_errors({"results": [training, failed]}) and not report_has_errors({"results": [training]})


def test_artifact_table_has_a_column_per_thread_setting_and_names_the_clock():
    report = dict(threads={"1_thread": 1, "all_threads": 4}, runs=7, machine="test machine", clock="thread",
                  results=[dict(file="model_int8.tflite", format="tflite", precision="int8", size_bytes=2_500_000,
                                latency_ms={"1_thread": 1.234, "all_threads": 0.5}),
                           dict(file="model.onnx", format="onnx", precision="float32", size_bytes=10_000_000,
                                latency_ms={"error": "no runtime"})])
    text = format_artifact_results(report)
    rows = _rows(text)
    assert rows[0] == ["file", "format", "precision", "size (MB)", "ms 1 thread", "ms 4 threads", "ms (TF threads)"]
    assert rows[2] == ["model_int8.tflite", "tflite", "int8", "2.50", "1.23", "0.50", "-"]
    assert rows[3][4:] == ["no runtime"] * 3
    assert text.endswith("Batch 1, median of 7 interleaved runs (CPU time of the calling thread) on test machine.")
    assert report_has_errors(report)
