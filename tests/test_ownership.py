"""Ownership: keras-vit replaces only the folders it marked (``.keras-vit.json``), only whole,
never reads its own outputs as data, never writes outside the folder it was given, and
builds an export beside the old one so that a refused write or a kill leaves the old one
whole. Real files, real processes for the refused writes and the kills."""

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from keras_vit import cli, ownership
from keras_vit.data.images import list_image_files
from keras_vit.data.pipelines import scan_image_folder
from keras_vit.deploy import export
from keras_vit.training.config import TrainConfig
from keras_vit.training.resolution import resolve_config
from keras_vit.training.fit import train

from conftest import randomize, tiny_vit

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = dict(hidden_size=16, num_layers=1, num_heads=2, mlp_dim=32, batch_size=32, image_size=12, patch_size=4, epochs=1,
            steps_per_epoch=2)
EXPORT = dict(formats="tflite", tflite_precisions="float32", latency_runs=0, progress=False)


def _env():
    return {**os.environ, "PYTHONPATH": REPO, "CUDA_VISIBLE_DEVICES": "", "TF_CPP_MIN_LOG_LEVEL": "3"}


def _tree(root):
    """Every file under ``root`` with its sha256."""
    found = {}
    for folder, _, files in os.walk(root):
        for name in files:
            path = os.path.join(folder, name)
            with open(path, "rb") as file:
                found[os.path.relpath(path, root)] = hashlib.sha256(file.read()).hexdigest()
    return found


def _one_line_error(capsys, command):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"keras-vit {command}: error: "), err
    return err[0]


# --------------------------------------------------------------------------- --overwrite decides ownership
def _hugging_face_folder(path):
    path.mkdir()
    (path / "config.json").write_text(json.dumps({"model_type": "vit", "hidden_size": 768, "num_attention_heads": 12}))
    (path / "model.safetensors").write_bytes(b"\0" * 1024)
    (path / "README.md").write_text("# my model\n")
    return path


def _project_folder(path):
    (path / "src").mkdir(parents=True)
    (path / "config.json").write_text(json.dumps({"name": "project", "debug": True}))
    (path / "src" / "main.py").write_text("print('hello')\n")
    return path


def test_overwrite_never_deletes_a_folder_keras_vit_did_not_mark(tmp_path, capsys):
    folders = [_hugging_face_folder(tmp_path / "my_hf_model"), _project_folder(tmp_path / "project")]
    lone = tmp_path / "lone"
    lone.mkdir()
    (lone / "config.json").write_text(json.dumps({"learning_rate": 3}))  # not a keras-vit configuration
    folders.append(lone)
    before = _tree(tmp_path)
    for folder in folders:
        with pytest.raises(ValueError, match="is not a keras-vit run .*no .keras-vit.json.*--overwrite replaces only"):
            train(TrainConfig(**TINY, output=str(folder)), overwrite=True, verbose=0)
        assert cli.main(["train", "--epochs=1", "--output", str(folder), "--overwrite"]) == 2
        assert "config.json" in _one_line_error(capsys, "train")
    assert _tree(tmp_path) == before
    assert sorted(os.listdir(tmp_path)) == ["lone", "my_hf_model", "project"]  # no replacement folder beside


def _finished_run(path, marked=True):
    """A finished run as keras-vit writes one (config, model, metrics), without training."""
    path.mkdir()
    config = resolve_config(TrainConfig(**TINY, output=str(path))).to_dict()
    (path / "config.json").write_text(json.dumps({**config, "class_names": [str(d) for d in range(10)]}))
    (path / "model.keras").write_bytes(b"the old model")
    (path / "metrics.json").write_text(json.dumps({"epochs": 7}))
    if marked:
        ownership.mark(path, "run", ["config.json", "model.keras", "metrics.json", "checkpoints", "logs"])
    return path


def test_overwrite_of_a_run_holding_the_users_files_refuses_naming_them(tmp_path, capsys):
    run = _finished_run(tmp_path / "run")
    (run / "NOTES.txt").write_text("my notes")
    (run / "my_analysis").mkdir()
    (run / "my_analysis" / "a.csv").write_text("x,y\n1,2\n")
    before = _tree(tmp_path)
    with pytest.raises(ValueError, match=r"holds files keras-vit did not write \(NOTES.txt, my_analysis\)"):
        train(TrainConfig(**TINY, output=str(run)), overwrite=True, verbose=0)
    assert cli.main(["train", *[f"--{k.replace('_', '-')}={v}" for k, v in TINY.items()], "--output", str(run),
                     "--overwrite"]) == 2
    assert "NOTES.txt, my_analysis" in _one_line_error(capsys, "train")
    assert _tree(tmp_path) == before and sorted(os.listdir(tmp_path)) == ["run"]


@pytest.mark.slow
def test_a_run_of_an_earlier_version_is_replaced_whole_through_a_symlinked_output(tmp_path, capsys):
    real = _finished_run(tmp_path / "real", marked=False)  # written before the marker: every entry a run file
    link = tmp_path / "link"
    link.symlink_to(real, target_is_directory=True)
    metrics = train(TrainConfig(**TINY, output=str(link)), overwrite=True, verbose=0)
    assert metrics["epochs"] == 1 and metrics["run_dir"] == str(link)
    assert link.is_symlink() and os.readlink(link) == str(real)  # followed, not replaced
    assert json.loads((real / "metrics.json").read_text())["epochs"] == 1
    assert (real / "model.keras").read_bytes() != b"the old model"
    assert ownership.read_marker(real)["kind"] == "run"
    assert sorted(os.listdir(tmp_path)) == ["link", "real"]  # no .replaced-PID, no replacement left
    dangling = tmp_path / "dangling"
    dangling.symlink_to(tmp_path / "nowhere")
    assert cli.main(["train", "--epochs=1", "--output", str(dangling), "--overwrite"]) == 2
    assert "symbolic link to" in _one_line_error(capsys, "train")
    assert dangling.is_symlink() and not (tmp_path / "nowhere").exists()


# --------------------------------------------------------------------------- outputs never become inputs
def _photos(root, classes=("cat", "dog"), count=3):
    rng = np.random.default_rng(0)
    for name in classes:
        (root / name).mkdir(parents=True)
        for index in range(count):
            Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)).save(root / name / f"{index}.png")
    return root


def test_a_run_inside_its_image_folder_is_refused_naming_both(tmp_path, capsys):
    photos = _photos(tmp_path / "photos")
    inside = photos / "cat" / "run"
    with pytest.raises(ValueError, match=r"run folder '.*photos/cat/run' \(--output\) is inside the image_folder "
                                         r"'.*photos' \(--image-folder\)"):
        train(TrainConfig(**TINY, image_folder=str(photos), output=str(inside)), verbose=0)
    validation = _photos(tmp_path / "validation")
    with pytest.raises(ValueError, match=r"is inside the validation_folder '.*validation'"):
        train(TrainConfig(**TINY, image_folder=str(photos), validation_folder=str(validation),
                          output=str(validation / "runs" / "x")), verbose=0)
    assert cli.main(["train", "--image-folder", str(photos), "--output", str(photos)]) == 2
    assert str(photos) in _one_line_error(capsys, "train")
    assert not inside.exists() and not (validation / "runs").exists()


def test_folders_keras_vit_marked_are_never_read_as_images(tmp_path):
    photos = _photos(tmp_path / "photos")
    run = photos / "cat" / "run"  # a run (and its export) written inside a class folder
    (run / "export" / "samples").mkdir(parents=True)
    ownership.mark(run, "run", ["training_curves.png", "export"])
    ownership.mark(run / "export", "export", ["samples"])
    Image.new("RGB", (20, 20)).save(run / "training_curves.png")
    Image.new("RGB", (20, 20)).save(run / "export" / "samples" / "0_0.png")
    exported = photos / "export"  # an export as a class folder of its own
    (exported / "samples").mkdir(parents=True)
    ownership.mark(exported, "export", ["samples"])
    Image.new("RGB", (20, 20)).save(exported / "samples" / "1_0.png")
    paths, labels, class_names, _ = scan_image_folder(str(photos))
    assert class_names == ["cat", "dog"]
    assert sorted(os.path.relpath(p, photos) for p in paths) == [f"{c}/{i}.png" for c in ("cat", "dog") for i in range(3)]
    assert sorted(os.path.relpath(p, photos) for p in list_image_files(str(photos))) == sorted(
        os.path.relpath(p, photos) for p in paths)


# --------------------------------------------------------------------------- names that become paths
@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Two tiny 28x28x1, 10-class models (the export writes MNIST sample PNGs named by class)."""
    root = tmp_path_factory.mktemp("models")
    paths = []
    for seed in (0, 1):
        path = root / f"model_{seed}.keras"
        randomize(tiny_vit(image_size=28, patch_size=7, channels=1, num_classes=10, num_layers=1), seed=seed).save(path)
        paths.append(str(path))
    return paths


HOSTILE = ["..", "../../../ESCAPED", None, "a/b", "back\\slash", "x" * 300, ".hidden", "::*?<>|", "c/../../d", "ok"]


@pytest.mark.slow
def test_class_names_never_lead_a_file_outside_the_export(models, tmp_path):
    names = [name if name is not None else str(tmp_path / "absolute") for name in HOSTILE]
    run = tmp_path / "deep" / "a" / "run"  # a run whose config.json holds the names (as TFDS metadata would put there)
    run.mkdir(parents=True)
    shutil.copy(models[0], run / "model.keras")
    (run / "config.json").write_text(json.dumps({"class_names": names}))
    manifest = export.export_model(str(run), **EXPORT)
    outside = [path for path in _tree(tmp_path) if not path.startswith("deep/a/run/export/")]
    assert sorted(outside) == ["deep/a/run/config.json", "deep/a/run/model.keras"]
    samples = sorted(os.listdir(run / "export" / "samples"))
    assert len(samples) == 10 and all(len(name) <= ownership.MAX_NAME_CHARS + 8 for name in samples), samples
    assert all("/" not in name and not name.startswith(".") for name in samples)
    assert manifest["class_names"] == names  # the labels themselves are kept as given
    assert (run / "export" / "labels.txt").read_text().splitlines() == names


def test_empty_or_multiline_class_names_are_refused_in_one_line(models, tmp_path, capsys):
    for names in ("a,,b,c,d,e,f,g,h,i", ",".join(["x"] * 9 + [""])):
        assert cli.main(["export", models[0], "--output", str(tmp_path / "out"), "--class-names", names]) == 2
        assert "is empty or spans lines" in _one_line_error(capsys, "export")
    with pytest.raises(ValueError, match=r"Class name 'two\\nlines' in the list given is empty or spans lines"):
        export.export_model(models[0], output_dir=str(tmp_path / "out"), class_names=["two\nlines"] + ["x"] * 9, **EXPORT)
    assert os.listdir(tmp_path) == []


# --------------------------------------------------------------------------- exports as safe as runs
def test_export_overwrite_never_replaces_a_folder_it_did_not_mark(models, tmp_path, capsys):
    mine = tmp_path / "mine"  # the user's own photos and labels, no manifest
    (mine / "samples").mkdir(parents=True)
    (mine / "samples" / "holiday.png").write_bytes(b"a photo")
    (mine / "labels.txt").write_text("my labels\n")
    listed = tmp_path / "listed"  # a manifest.json that holds a JSON list
    listed.mkdir()
    (listed / "manifest.json").write_text("[1, 2]")
    before = _tree(tmp_path)
    for folder in (mine, listed):
        assert cli.main(["export", models[0], "--output", str(folder), "--overwrite", "--format", "tflite",
                         "--precision", "float32", "--latency-runs", "0", "--quiet"]) == 2
        assert "is not a keras-vit export folder (no .keras-vit.json)" in _one_line_error(capsys, "export")
    assert _tree(tmp_path) == before and sorted(os.listdir(tmp_path)) == ["listed", "mine"]


def _assert_whole_export(folder):
    """The export in ``folder`` is one export: each file its manifest lists has the manifest's
    checksum, labels and samples are its class names', and nothing else is there."""
    manifest = json.loads((folder / "manifest.json").read_text())
    marker = ownership.read_marker(folder)
    assert marker["kind"] == "export" and set(ownership.entries(folder)) <= set(marker["entries"])
    for entry in manifest["artifacts"]:
        assert hashlib.sha256((folder / entry["file"]).read_bytes()).hexdigest() == entry["sha256"], entry["file"]
    assert (folder / "labels.txt").read_text().splitlines() == manifest["class_names"]
    samples = sorted(os.listdir(folder / "samples"))
    assert samples == sorted(os.path.basename(path) for path in manifest["samples"])
    assert all(name.startswith(manifest["class_names"][0][0]) for name in samples)
    return manifest


@pytest.mark.slow
def test_reexporting_another_model_replaces_the_whole_export_and_verifies(models, tmp_path):
    out = tmp_path / "out"
    export.export_model(models[0], output_dir=str(out), class_names=[f"a{i}" for i in range(10)], **EXPORT)
    (out / "samples" / "a0_0.png").unlink()  # the old export's samples must not survive in the new one either
    manifest = export.export_model(models[1], output_dir=str(out), class_names=[f"b{i}" for i in range(10)],
                                   overwrite=True, **EXPORT)
    assert all(entry["verified"] for entry in manifest["artifacts"])
    assert manifest["source_model"] == models[1] and manifest["export_dir"] == str(out)
    assert _assert_whole_export(out)["class_names"][0] == "b0"
    assert sorted(os.listdir(out / "samples")) == sorted(f"b{i}_{i}.png" for i in range(10))
    assert sorted(os.listdir(tmp_path)) == ["out"]  # nothing built beside it is left


def _export_command(model, out, prefix):
    return [sys.executable, "-m", "keras_vit.cli", "export", model, "--output", str(out), "--overwrite", "--format",
            "tflite", "--precision", "float32", "--latency-runs", "0", "--quiet", "--class-names",
            ",".join(f"{prefix}{i}" for i in range(10))]


def _file_size_limit(limit):
    def apply():
        import resource

        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a refused write fails with EFBIG instead of a signal
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


@pytest.mark.slow
def test_a_refused_write_during_export_overwrite_leaves_the_old_export_whole(models, tmp_path):
    out = tmp_path / "out"
    export.export_model(models[0], output_dir=str(out), class_names=[f"a{i}" for i in range(10)], **EXPORT)
    before = _tree(out)
    # 20 kB a file: the marker and the labels fit, the 37 kB TFLite file does not.
    result = subprocess.run(_export_command(models[1], out, "b"), env=_env(), capture_output=True, text=True,
                            preexec_fn=_file_size_limit(20_000), timeout=300)
    assert result.returncode == 1, result.stderr[-3000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("keras-vit export: error: "), result.stderr[-3000:]
    assert "left as it was" in lines[0]
    assert _tree(out) == before
    _assert_whole_export(out)
    assert sorted(os.listdir(tmp_path)) == ["out"]


CHILD = """
import sys
from keras_vit.deploy import export
out, models = sys.argv[1], sys.argv[2:]
for round in range(1000):
    prefix = "ab"[round % 2]
    export.export_model(models[round % 2], output_dir=out, formats="tflite", tflite_precisions="float32",
                        latency_runs=0, progress=False, class_names=[prefix + str(i) for i in range(10)], overwrite=True)
    if round == 0:
        print("exported", flush=True)
"""


@pytest.mark.slow
def test_sigkill_during_export_overwrite_leaves_one_whole_export(models, tmp_path):
    # A child re-exports two models in turn into one folder; it is killed at random moments
    # after its first export, and each time the folder holds one whole export.
    out = tmp_path / "out"
    rng = np.random.default_rng(0)
    for kill in range(2):
        child = subprocess.Popen([sys.executable, "-c", CHILD, str(out), *models], stdout=subprocess.PIPE, text=True,
                                 env=_env(), cwd=REPO)
        assert child.stdout.readline().strip() == "exported"
        time.sleep(rng.uniform(0.5, 6.0))
        child.send_signal(signal.SIGKILL)
        child.wait()
        _assert_whole_export(out)
        beside = [name for name in os.listdir(tmp_path) if name != "out"]
        assert beside in ([], [".out.export-tmp"])  # an unfinished build, marked: the next export clears it
        assert all(ownership.is_marked(tmp_path / name) for name in beside)


@pytest.mark.slow
def test_a_manifest_holding_a_json_list_is_refused_in_one_line(models, tmp_path, capsys):
    out = tmp_path / "out"
    export.export_model(models[0], output_dir=str(out), class_names=[f"a{i}" for i in range(10)], **EXPORT)
    (out / "manifest.json").write_text("[]")
    image = str(out / "samples" / "a0_0.png")
    assert cli.main(["predict", str(out / "model_float32.tflite"), image]) == 2
    assert "manifest.json holds a JSON list, not the object a keras-vit manifest is" in _one_line_error(capsys, "predict")
