"""Every input checked where it enters: image folders (hidden entries, FIFOs, symlink loops,
pixel bombs), counts bounded at parse time, a run's own files on resume, evaluation classes
matched by name, JSON with NaN, and manifests trusted only for the files they checksum."""

import json
import logging
import os
import shutil
import struct
import threading
import zlib

import numpy as np
import pytest
from PIL import Image

from keras_vit import cli, data

TINY_FLAGS = ["--hidden-size", "16", "--num-layers", "1", "--num-heads", "2", "--mlp-dim", "32", "--batch-size", "4",
              "--image-size", "12", "--patch-size", "4", "--epochs", "1", "--steps-per-epoch", "1", "--quiet"]  # fmt: skip


def _png(path, level, size=(16, 16)):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(np.full((*size, 3), level, np.uint8)).save(path)


def _png_header_only(path, width, height):
    # A PNG whose header says width x height and whose pixels are never stored.
    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    with open(path, "wb") as file:
        file.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))


def _folder(root, classes=("cat", "dog"), per_class=4):
    for label, name in enumerate(classes):
        for index in range(per_class):
            _png(os.path.join(root, name, f"{index}.png"), 40 + 150 * label)
    return str(root)


def test_scanning_ignores_hidden_entries_and_skips_fifos_loops_and_pixel_bombs_by_name(tmp_path, capsys):
    root = _folder(tmp_path / "photos")
    _png(os.path.join(root, ".ipynb_checkpoints", "0.png"), 90)  # not a third class
    _png(os.path.join(root, "cat", ".ipynb_checkpoints", "0-checkpoint.png"), 90)  # not a cat
    os.mkfifo(os.path.join(root, "cat", "pipe.png"))  # reading it would wait for a writer forever
    os.symlink("loop.png", os.path.join(root, "dog", "loop.png"))  # a link to itself
    _png_header_only(os.path.join(root, "dog", "bomb.png"), 20000, 20000)  # 400 MP if decoded

    found = {}
    scanning = threading.Thread(target=lambda: found.update(result=data.scan_image_folder(root)), daemon=True)
    scanning.start()
    scanning.join(timeout=60)
    assert not scanning.is_alive(), "scanning hung on the FIFO"
    paths, labels, class_names, skipped = found["result"]
    assert class_names == ["cat", "dog"]
    assert sorted(os.path.relpath(p, root) for p in paths) == sorted(f"{c}/{i}.png" for c in ("cat", "dog") for i in range(4))
    reasons = {os.path.relpath(path, root): reason for path, reason in skipped}
    assert sorted(reasons) == ["cat/pipe.png", "dog/bomb.png", "dog/loop.png"]
    assert reasons["cat/pipe.png"].startswith("not a regular file")
    assert reasons["dog/loop.png"] == "cannot be opened (Too many levels of symbolic links)"
    assert reasons["dog/bomb.png"].startswith("20000x20000 pixels is more than max_pixels=50,000,000")
    assert "Skipped 3 of 11 files" in capsys.readouterr().err

    # The cap is the caller's: 15x15 allows none of these 16x16 images.
    with pytest.raises(ValueError, match=r"holds no readable JPEG, PNG, BMP or GIF image \(11 skipped\)"):
        data.scan_image_folder(root, max_pixels=15 * 15, verbose=False)
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize(
    "argv, message",
    [
        (["train", "--epochs", "100000000000000000000"], "epochs=100000000000000000000; expected a positive integer up to 1,000,000"),
        (["train", "--seed", "99999999999"], "seed=99999999999; expected an integer in [0, 4,294,967,295]"),
        (["train", "--steps-per-epoch", "10000000000"], "steps_per_epoch=10000000000; expected a positive integer up to"),
        (["convert", "x.npz", "y.keras", "--num-classes", "100000000"], "expected an integer in [1, 1,000,000]; got '100000000'"),
        (["export", "run", "--latency-runs", "-5"], "expected an integer in [0, 100,000]; got '-5'"),
    ],
)  # fmt: skip
def test_counts_are_bounded_before_anything_is_sized_by_them(tmp_path, capsys, argv, message):
    output = tmp_path / "run"
    argv = argv + (["--output", str(output)] if argv[0] == "train" else [])
    try:
        status = cli.main(argv)
    except SystemExit as exit:  # argparse
        status = exit.code
    assert status == 2
    assert message in capsys.readouterr().err
    assert not output.exists()


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A one-step run on a two-class image folder, through the command line."""
    root = tmp_path_factory.mktemp("inputs")
    photos = _folder(root / "photos")
    output = root / "run"
    assert cli.main(["train", *TINY_FLAGS, "--image-folder", photos, "--output", str(output)]) == 0
    return photos, output


def _unfinished_copy(finished_run, tmp_path):
    photos, output = finished_run
    copy = tmp_path / "run"
    shutil.copytree(output, copy)
    os.remove(copy / "metrics.json")  # an unfinished run, as a kill leaves it
    os.makedirs(copy / "backup")
    # the finished run kept only model.keras: a copy of it stands for the state a kill leaves
    shutil.copyfile(copy / "model.keras", copy / "backup" / "epoch1-step0.keras")
    (copy / "backup" / "state.json").write_text(json.dumps({"epoch": 1, "step": 0, "weights": "epoch1-step0.keras"}))
    return photos, copy


@pytest.mark.slow
def test_a_foreign_history_or_a_truncated_backup_is_refused_in_one_line_on_resume(finished_run, tmp_path, capsys):
    photos, run = _unfinished_copy(finished_run, tmp_path)
    history = (run / "history.csv").read_text()
    (run / "history.csv").write_text("step,value\n1,2.5\n")
    capsys.readouterr()
    assert cli.main(["train", *TINY_FLAGS, "--image-folder", photos, "--output", str(run)]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "is not a keras-vit history" in error and "['step', 'value']" in error

    (run / "history.csv").write_text(history)
    backup = run / "backup" / "epoch1-step0.keras"
    backup.write_bytes(backup.read_bytes()[:1000])
    assert cli.main(["train", *TINY_FLAGS, "--image-folder", photos, "--output", str(run)]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1
    assert f"Cannot resume: the run's saved state {str(backup)!r} is damaged (not a whole .keras file)" in error


@pytest.mark.slow
def test_evaluate_refuses_a_folder_whose_classes_are_not_the_runs(finished_run, tmp_path, capsys):
    photos, run = finished_run
    other = _folder(tmp_path / "other", classes=("dog", "kitten"))
    capsys.readouterr()
    assert cli.main(["evaluate", str(run), "--image-folder", other, "--batch-size", "4", "--json"]) == 2
    error = capsys.readouterr().err
    assert "unknown to the model: ['kitten']; missing from the data: ['cat']" in error
    assert cli.main(["evaluate", str(run), "--image-folder", photos, "--batch-size", "4", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["examples"] == 8


def test_predict_json_is_valid_json_when_the_model_outputs_nan(tmp_path, capsys):
    from conftest import tiny_vit

    model = tiny_vit(image_size=16, num_classes=3)
    kernel, bias = model.get_layer("head").get_weights()
    model.get_layer("head").set_weights([kernel, np.full_like(bias, np.nan)])
    model.save(tmp_path / "nan.keras")
    _png(str(tmp_path / "image.png"), 100)
    assert cli.main(["predict", str(tmp_path / "nan.keras"), str(tmp_path / "image.png"), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)  # "NaN" would not parse as JSON
    assert [entry["probability"] for entry in result["predictions"][0]["top_k"]] == [None, None, None]


@pytest.mark.slow
def test_a_tflite_file_trusts_only_a_manifest_that_records_its_checksum(tmp_path, caplog):
    from conftest import tiny_vit

    from keras_vit.deploy import artifacts, export

    model = tiny_vit(image_size=16, num_classes=3)
    folder = tmp_path / "export"
    manifest = export.export_model(model, str(folder), formats=["tflite"], tflite_precisions=["float32"],
                                   progress=False, latency_runs=0)  # fmt: skip
    entry = next(e for e in manifest["artifacts"] if e["file"] == "model_float32.tflite")
    assert entry["sha256"] == artifacts.artifact_checksum(folder / "model_float32.tflite")
    with caplog.at_level(logging.WARNING):
        assert artifacts.load_artifact(folder / "model_float32.tflite").input_range == (-1.0, 1.0)
    assert "Ignoring" not in caplog.text

    # The same manifest beside another file of that name (another export's): not trusted.
    stranger = tmp_path / "stranger"
    stranger.mkdir()
    shutil.copyfile(folder / "model_float32.tflite", stranger / "model_float32.tflite")
    wrong = {**manifest, "input_range": [0.0, 255.0],
             "artifacts": [{**entry, "sha256": "0" * 64}]}  # fmt: skip
    (stranger / "manifest.json").write_text(json.dumps(wrong))
    with caplog.at_level(logging.WARNING):
        assert artifacts.load_artifact(stranger / "model_float32.tflite").input_range == (-1.0, 1.0)
    assert "is not the file it describes (its sha256 differs from the manifest's)" in caplog.text
