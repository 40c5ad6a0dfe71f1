"""The benchmark's machinery on a tiny case (figures are never asserted, only their sanity)."""

import json

from keras_vit import benchmark
from keras_vit.cli import main


def test_a_model_case_runs_in_its_own_process_and_reports_consistent_figures():
    result = benchmark.run_case(
        dict(case="inference", variant="Ti/16", image_size=32, batch=2, min_seconds=0.2)
    )
    assert "error" not in result, result
    assert result["model"] == "keras_vit ViT-Ti/16" and result["backend"] == "tensorflow"
    # images/s and FLOP/s describe the same timing: their ratio is the model's FLOPs per image.
    import keras_vit
    from keras_vit.models import forward_flops

    flops = forward_flops(keras_vit.ViT("Ti/16", image_size=32))
    assert abs(result["flops_per_second"] / result["images_per_second"] - flops) / flops < 1e-9
    assert result["fraction_of_matmul_rate"] == result["flops_per_second"] / result["matmul_flops_per_second"]
    assert result["peak_memory_mib"] > 100


def test_unknown_case_is_reported_as_an_error():
    result = benchmark.run_case(dict(case="sorting"))
    assert "Unknown benchmark case 'sorting'" in result["error"]


def test_cli_writes_json_and_a_table(tmp_path, capsys):
    path = tmp_path / "bench.json"
    status = main(["benchmark", "--variant", "Ti/16", "--mode", "training", "--image-size", "32", "--batch", "2", "--seconds", "0.5", "--json", str(path)])
    out = capsys.readouterr().out
    assert status == 0
    saved = json.loads(path.read_text())
    kinds = [r["case"] for r in saved["results"]]
    assert kinds == ["matmul", "training"]
    assert saved["machine"]["cores"] >= 1
    assert "| training | keras_vit ViT-Ti/16 | tensorflow | float32 | 2 |" in out
