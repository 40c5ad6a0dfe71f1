"""The benchmark's machinery on a tiny case (figures are never asserted, only their sanity)."""

import json

from keras_vit.backends import tf_cpu
from keras_vit.tools import benchmark
from keras_vit.cli import main
import pytest

pytestmark = pytest.mark.slow  # times models in child processes


def _table_rows(text):
    """The cells of every Markdown table row printed, stripped of their padding."""
    return [[cell.strip() for cell in line.strip().strip("|").split("|")] for line in text.splitlines()
            if line.startswith("|")]


def test_a_model_case_runs_in_its_own_process_and_reports_consistent_figures():
    result = benchmark.run_case(
        dict(case="inference", variant="Ti/16", image_size=32, batch=2, min_seconds=0.2)
    )
    assert "error" not in result, result
    assert result["model"] == "keras_vit ViT-Ti/16" and result["backend"] == "tensorflow"
    # images/s and FLOP/s describe the same timing: their ratio is the model's FLOPs per image.
    import keras_vit
    from keras_vit.core.models import forward_flops

    flops = forward_flops(keras_vit.ViT("Ti/16", image_size=32))
    assert abs(result["flops_per_second"] / result["images_per_second"] - flops) / flops < 1e-9
    assert result["fraction_of_matmul_rate"] == result["flops_per_second"] / result["matmul_flops_per_second"]
    assert result["peak_memory_mib"] > 100


def test_speedup_case_times_every_policy_and_both_matmuls_in_one_process(capsys):
    status = main(["benchmark", "--variant", "Ti/16", "--mode", "inference", "--dtype", "float32,bfloat16",
                   "--image-size", "32", "--batch", "2", "--seconds", "0.3", "--peers", "none"])
    out = capsys.readouterr().out
    assert status == 0
    result = benchmark.run_case(dict(case="speedup", variant="Ti/16", image_size=32, batch=2,
                                     dtype_policies=["bfloat16", "mixed_bfloat16"], min_seconds=0.3))
    assert "error" not in result, result
    rates = result["images_per_second"]
    assert sorted(rates) == ["bfloat16", "float32", "mixed_bfloat16"]
    for policy in ("bfloat16", "mixed_bfloat16"):
        # The speed-up is the ratio of the rates timed together; the matmul's is positive.
        assert abs(result["speedup"][policy] - rates[policy] / rates["float32"]) < 1e-9 * rates[policy]
        assert result["matmul_speedup"][policy] > 0
    assert result["matmul_speedup"]["bfloat16"] == result["matmul_speedup"]["mixed_bfloat16"]  # one bfloat16 matmul
    # The CLI's --dtype with a lower precision adds the speed-up case and its own table.
    rows = _table_rows(out)
    assert ["speed-up over float32", "model"] in [row[:2] for row in rows]
    assert ["inference", "keras_vit ViT-Ti/16", "tensorflow", "bfloat16", "2"] in [row[:5] for row in rows]


def test_unknown_case_is_reported_as_an_error():
    result = benchmark.run_case(dict(case="sorting"))
    assert "Unknown benchmark case 'sorting'" in result["error"]


def test_cli_writes_json_and_keeps_an_existing_output(tmp_path, capsys):
    path = tmp_path / "bench.json"
    argv = ["benchmark", "--variant", "Ti/16", "--mode", "training", "--image-size", "32", "--batch-size", "2",
            "--seconds", "0.5", "--peers", "none", "--quiet", "--output", str(path)]
    assert main([*argv, "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    saved = json.loads(path.read_text())
    # --json prints the report that --output saves (the table is checked with the speed-up case).
    assert printed == saved
    assert [r["case"] for r in saved["results"]] == ["matmul", "training"]
    assert saved["results"][1]["model"] == "keras_vit ViT-Ti/16" and saved["results"][1]["batch"] == 2
    assert saved["machine"]["cores"] >= 1
    # An existing --output file is kept without --overwrite (refused before anything is timed).
    before = path.read_bytes()
    assert main(argv) == 2
    assert "already exists; pass --overwrite" in capsys.readouterr().err and path.read_bytes() == before


def test_variant_flops_without_building_equal_the_built_models_count():
    import keras_vit
    from keras_vit.core.models import forward_flops
    from keras_vit.zoo import variant_forward_flops

    for variant, size, classes in (("Ti/16", 224, 1000), ("S/32", 96, 10), ("B/16", 384, 1000)):
        assert variant_forward_flops(variant, size, classes) == forward_flops(
            keras_vit.ViT(variant, image_size=size, num_classes=classes)
        )


def test_keras_hub_peer_is_measured_at_the_same_variant_in_its_own_process():
    result = benchmark.run_case(
        dict(case="inference", variant="Ti/16", image_size=32, batch=2, min_seconds=0.2, peer="keras_hub")
    )
    assert "error" not in result, result
    assert result["model"].startswith("keras_hub ") and "ViTImageClassifier" in result["model"]
    from keras_vit.zoo import variant_forward_flops

    flops = variant_forward_flops("Ti/16", 32)
    assert abs(result["flops_per_second"] / result["images_per_second"] - flops) / flops < 1e-9


def test_standard_suite_adds_installed_peers_and_cli_refuses_unknown_ones(capsys):
    cases = benchmark.standard_suite(peers=["keras_hub"])
    assert [c.get("peer") for c in cases if c["case"] in ("inference", "training")] == [None] * 4 + ["keras_hub"] * 2
    assert [(c["variant"], c["batch"]) for c in cases if c["case"] == "speedup"] == [("B/16", 8)]
    assert "bfloat16" in [c.get("dtype_policy") for c in cases]
    assert main(["benchmark", "--variant", "Ti/16", "--peers", "timm"]) == 2
    assert "Unknown peer 'timm'; expected one of ['keras_hub']" in capsys.readouterr().err


def test_fused_and_portable_comparison_reports_both_forms_on_one_peak():
    from keras_vit.zoo import variant_forward_flops

    result = benchmark.compare_fused_and_portable("training", "Ti/16", image_size=32, batch=2, rounds=2)
    step_flops = 3 * variant_forward_flops("Ti/16", 32)  # forward + backward per image
    assert result["forms"] == ["fused", "fused_without_xla", "portable"]
    for name in result["forms"]:
        figures = result[name]
        implied = figures["fraction_of_matmul_rate"] * result["matmul_flops_per_second"] / figures["images_per_second"]
        assert abs(implied - step_flops) < 1e-6 * step_flops


def test_interleaved_timer_balances_a_short_function_against_a_long_one():
    import time

    calls = {"long": 0, "short": 0}

    def long():
        calls["long"] += 1
        time.sleep(0.04)

    def short():
        calls["short"] += 1
        time.sleep(0.004)

    long_seconds, short_seconds = benchmark.time_interleaved([long, short], min_seconds=0.0, min_calls=4, warmup=1)
    # Per-call medians, although the short one ran about ten times per round.
    assert 0.04 <= long_seconds < 0.06 and 0.004 <= short_seconds < 0.008
    assert calls["long"] == 1 + 1 + 4  # warm-up, sizing call, rounds
    assert calls["short"] >= 1 + 1 + 4 * 7


def test_op_profile_script_counts_the_fused_kernels_of_each_block(tmp_path):
    import subprocess
    import sys

    out = tmp_path / "profile.json"
    command = [sys.executable, "scripts/profile_ops.py", "--variant", "Ti/16", "--image-size", "32", "--batch", "2",
               "--json", str(out)]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stderr[-2000:]
    profile = json.loads(out.read_text())
    ops = profile["ops"]
    blocks = 12
    # oneDNN's kernels where its graph rewrites run (x86 with AVX-512), Eigen's elsewhere.
    onednn = tf_cpu.onednn_enabled()
    fused_matmul = "_MklNativeFusedMatMul" if onednn else "_FusedMatMul"
    # Per block: Q/K/V, output projection + residual, MLP in, MLP out + residual; plus the
    # head (the patch embedding is a plain Keras Dense: a batch matmul, then its bias).
    assert ops[fused_matmul]["calls"] == 4 * blocks + 1
    if onednn:
        assert ops["_MklLayerNorm"]["calls"] == 2 * blocks
    else:  # Eigen runs the encoder's final norm as the same kernel
        assert ops["FusedBatchNormV3"]["calls"] == 2 * blocks + 1
    assert ops["_MklBatchMatMulV2" if onednn else "BatchMatMulV2"]["calls"] == 2 * blocks
    # One op at a time: the kernels' durations fit inside the step.
    assert sum(op["ms"] for op in ops.values()) <= profile["step_ms"]
    assert fused_matmul in completed.stdout
