"""The keras-vit command: models, inspect, convert (and the installed entry point)."""

import json
import os
import pathlib
import re
import subprocess
import sys

import keras
import numpy as np
import pytest

from keras_vit import cli

DATA = pathlib.Path(__file__).parent / "data"


def run(capsys, *argv):
    status = cli.main(list(argv))
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_models_table_lists_every_variant_with_its_published_weights(capsys):
    status, out, _ = run(capsys, "models", "--json")
    assert status == 0
    rows = {row["model"]: row for row in json.loads(out)}
    assert rows["ViT-B/16"]["params"] == 86_567_656
    assert rows["ViT-H/14"]["params"] == 632_045_800
    assert (rows["ViT-L/16"]["layers"], rows["ViT-L/16"]["width"], rows["ViT-L/16"]["heads"]) == (24, 1024, 16)
    assert rows["ViT-B/16"]["GFLOPs@224"] == pytest.approx(35.1, abs=0.1)
    assert rows["ViT-H/14"]["weights"] == "imagenet21k"
    assert rows["ViT-S/16"]["weights"] == "augreg_in1k, augreg_in21k, augreg_in21k_ft_in1k"
    assert len(rows) == 9


def test_models_takes_a_name_pattern_and_names_the_hybrids_a_pattern_leaves_out(capsys):
    status, out, _ = run(capsys, "models", "vit_base_*", "--json")
    assert status == 0
    assert [row["builder"] for row in json.loads(out)] == ["ViTB8", "ViTB16", "ViTB32"]
    status, out, err = run(capsys, "models", "R50*")
    assert (status, out) == (2, "")
    assert "no model matches 'R50*' without --hybrids (the hybrids R50+B/16, R50+L/32 do)" in err


@pytest.mark.slow
def test_the_counted_table_equals_the_built_models():
    from keras_vit.core.models import forward_flops
    from keras_vit.zoo import builders, variant_table

    counted = {row["builder"]: row for row in variant_table()}
    for variant, build in builders(hybrids=False).items():
        model = build()
        assert counted[build.__name__]["params"] == model.count_params(), variant
        assert counted[build.__name__]["GFLOPs@224"] == forward_flops(model) / 1e9, variant
        del model
        keras.backend.clear_session()


def test_inspect_prints_config_params_and_keys(capsys):
    status, out, _ = run(capsys, "inspect", str(DATA / "vit_gap.npz"), "--json")
    assert status == 0
    info = json.loads(out)
    assert info["config"]["pooling"] == "gap" and info["config"]["patch_size"] == [4, 4]
    with np.load(DATA / "vit_gap.npz") as data:
        assert info["parameters"] == sum(data[k].size for k in data.files)
        assert info["keys"]["embedding/kernel"] == list(data["embedding/kernel"].shape)


def test_convert_writes_a_loadable_model_and_never_overwrites(capsys, tmp_path):
    output = tmp_path / "token48.keras"
    status, out, _ = run(capsys, "convert", str(DATA / "vit_token.npz"), str(output), "--image-size", "48", "--num-classes", "3")
    assert status == 0 and "3 classes" in out
    model = keras.saving.load_model(output)
    assert model.image_size == (48, 48) and model.num_classes == 3
    before = output.read_bytes()
    status, _, err = run(capsys, "convert", str(DATA / "vit_token.npz"), str(output))
    assert status == 2
    assert "already exists; pass overwrite=True (--overwrite)" in err
    assert output.read_bytes() == before


def test_inspect_missing_file_is_a_clear_cli_error(capsys, tmp_path):
    status, _, err = run(capsys, "inspect", str(tmp_path / "none.npz"))
    assert status == 2
    assert "keras-vit inspect: error: Checkpoint" in err and "none.npz' does not exist" in err


def test_installed_entry_point_help_lists_subcommands():
    # The console script installed beside this interpreter (the test venv's).
    executable = pathlib.Path(sys.executable).parent / "keras-vit"
    assert executable.is_file(), "the keras-vit console script is not installed"
    result = subprocess.run([executable, "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0
    for command in ("models", "inspect", "convert"):
        assert command in result.stdout


def _keras_vit(*argv, **env):
    """The installed keras-vit command in a fresh process."""
    executable = os.path.join(os.path.dirname(sys.executable), "keras-vit")
    return subprocess.run([executable, *argv], capture_output=True, text=True, timeout=300, env={**os.environ, **env})


@pytest.mark.parametrize(
    "argv",
    [["--help"], ["--version"], ["train", "--epochs", "0"], ["models"]]
    + [[command, "--help"] for command in ("models", "inspect", "convert", "benchmark", "train", "evaluate",
                                           "visualize", "export", "predict")],
    ids=lambda argv: " ".join(argv),
)
def test_help_version_and_argument_errors_answer_without_importing_keras(argv):
    # What makes them instant: neither Keras nor TensorFlow is imported (-X importtime lists
    # every module imported); a configuration error is reported before either loads.
    child = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "keras_vit.cli", *argv], capture_output=True, text=True, timeout=300,
    )
    imported = {line.split("|")[-1].strip() for line in child.stderr.splitlines() if line.startswith("import time:")}
    assert "keras_vit.cli" in imported or "keras_vit" in imported
    assert not {"keras", "tensorflow", "jax"} & imported, sorted({"keras", "tensorflow", "jax"} & imported)
    if argv == ["train", "--epochs", "0"]:
        assert child.returncode == 2 and "epochs=0; expected a positive integer" in child.stderr
    else:
        assert child.returncode == 0 and child.stdout.strip()
    if argv == ["models"]:
        assert "ViT-B/16" in child.stdout and "imagenet21k+imagenet2012" in child.stdout


@pytest.mark.slow
def test_commands_print_no_native_log_lines_unless_verbose():
    native = re.compile(r"^([IWEF]\d{4} |WARNING: All log messages before absl|To enable the following instructions)", re.M)
    quiet = _keras_vit("inspect", str(DATA / "vit_gap.npz"))
    assert quiet.returncode == 0 and "embedding/kernel" in quiet.stdout
    assert not native.search(quiet.stderr), quiet.stderr[:2000]
    # The filter drops only those lines: anything else written to stderr, by Python or a
    # native library, by the command or a process it starts, still reaches the user.
    script = (
        "import os, subprocess, sys\n"
        "sys.argv[0] = 'keras-vit'  # imported as the command imports it: no Keras yet\n"
        "from keras_vit.cli import _NativeLogFilter\n"
        "f = _NativeLogFilter()\n"
        "os.write(2, b'I0000 00:00:1796197468.679175    5377 cudart_stub.cc:31] Could not find cuda drivers\\n')\n"
        "os.write(2, b'WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\\n')\n"
        "os.write(2, b'fully_quantize: 0, inference_type: 6, input_inference_type: INT8, output_inference_type: INT8\\n')\n"
        "print('a real warning', file=sys.stderr)\n"
        "subprocess.run([sys.executable, '-c', \"import os; os.write(2, b'E0000 00:00:17.5 1 x.cc:1] gone\\\\nchild says hi\\\\n')\"])\n"
        "f.close()\n"
        "print('after close', file=sys.stderr)\n"
    )
    child = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert child.returncode == 0, child.stderr
    assert child.stderr.splitlines() == ["a real warning", "child says hi", "after close"]


@pytest.mark.parametrize("argv", [["benchmark", "--batch", "0"], ["predict", "m.onnx", "x.png", "--top-k", "-1"],
                                  ["benchmark", "--seconds", "0"]])
def test_counts_and_durations_must_be_positive(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    assert exit_info.value.code == 2
    assert "expected a positive" in capsys.readouterr().err


def test_a_reader_that_stops_early_ends_the_command_quietly():
    # `keras-vit models | head -2`: the closed pipe is not an error to report. The reading end
    # is closed before the command writes anything, so its first write meets the closed pipe.
    child = subprocess.Popen(
        [sys.executable, "-m", "keras_vit.cli", "models"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(pathlib.Path(__file__).parent.parent)},
    )
    child.stdout.close()
    stderr = child.stderr.read().decode()
    assert child.wait(timeout=300) == 0
    assert "error" not in stderr.lower() and "Exception" not in stderr, stderr


@pytest.mark.slow
def test_commands_that_load_a_keras_file_work_in_a_fresh_process(tmp_path):
    # The command imports keras_vit lazily: each command must register the classes it loads.
    from conftest import randomize, tiny_vit

    model = randomize(tiny_vit(image_size=28, patch_size=7, channels=1, num_classes=10))
    model.save(tmp_path / "model.keras")
    digit = tmp_path / "digit.png"
    from PIL import Image

    Image.fromarray(np.random.default_rng(0).integers(0, 255, (28, 28), dtype=np.uint8)).save(digit)
    model_path = str(tmp_path / "model.keras")
    for argv in (["visualize", model_path, str(digit), "--output", str(tmp_path / "figures")],
                 ["predict", model_path, str(digit), "--json"],
                 ["evaluate", model_path, "--json"]):
        child = _keras_vit(*argv)
        assert child.returncode == 0, (argv, child.stderr[-2000:])
    assert (tmp_path / "figures" / "attention_rollout.png").is_file()
