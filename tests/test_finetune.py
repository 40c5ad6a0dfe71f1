"""Fine-tuning any checkpoint on a folder of photos: `keras-vit train --image-folder DIR --weights SRC`.

With no architecture flag the run's model is the checkpoint's own (architecture, options,
input size, normalisation, name) with a new head for the folder's classes, and its
backbone starts from the checkpoint's weights. After one optimizer step from a
zero-initialised head the backbone's gradient is zero (it flows through the zero head), so
the saved backbone must equal the checkpoint's exactly.
"""

import os
import zipfile

import numpy as np
import pytest

import keras_vit
from keras_vit import cli
from keras_vit.run_folder import load_model
from keras_vit.training.resolution import resolve_config
from keras_vit.weights.hub import convert_pretrained

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")
HUB = os.path.join(DATA, "hub")
CLASSES = ("cat", "dog", "fox")
# What must come from the checkpoint when no flag says otherwise.
ARCHITECTURE = (
    "image_size", "patch_size", "hidden_size", "num_layers", "num_heads", "mlp_dim", "channels", "pooling",
    "representation_size", "resnet", "position_embedding", "layer_norm_epsilon", "gelu", "layer_scale_init",
    "num_register_tokens", "distillation_token", "norm_after_pooling", "patch_position_embedding_only",
    "pixel_mean", "pixel_std", "position_resampling",
)
# The evaluation transform of each kind of checkpoint (timm's pretrained_cfg of these folders,
# Hugging Face's resample 2 without a crop, the original's resize).
TIMM_INPUT = ("bicubic", 0.9, "center")
CHECKPOINTS = {  # source -> the model name the run takes from it
    os.path.join(HUB, "timm_vit_token"): "vit_base_patch16_224",
    os.path.join(HUB, "timm_deit_distilled"): "deit_tiny_distilled_patch16_224",
    os.path.join(HUB, "timm_vit_gap_fcnorm"): "vit_base_patch16_224",
    os.path.join(HUB, "timm_vit_reg_layerscale"): "vit_base_patch16_224",
    os.path.join(HUB, "hf_vit"): "hf_vit",
    os.path.join(DATA, "vit_token.npz"): "vit_token",
    os.path.join(DATA, "vit_gap.npz"): "vit_gap",
    os.path.join(DATA, "vit_i21k_style.npz"): "vit_i21k_style",
}


def write_photo_folder(folder, per_class=4, size=40, classes=CLASSES):
    """A folder of random RGB PNGs, one sub-folder per class."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for name in classes:
        os.makedirs(os.path.join(folder, name), exist_ok=True)
        for index in range(per_class):
            pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(os.path.join(folder, name, f"{index}.png"))
    return str(folder)


@pytest.fixture
def photos(tmp_path):
    return write_photo_folder(tmp_path / "photos")


def _backbone(model):
    # Every weight but the heads', by name (the heads are new and trained).
    return {
        variable.path: np.asarray(variable.numpy())
        for variable in model.weights
        if not variable.path.startswith(("head/", "head_dist/"))
    }


def _assert_starts_from(run_model, reference):
    expected, got = _backbone(reference), _backbone(run_model)
    assert sorted(got) == sorted(expected)
    for path, value in expected.items():
        np.testing.assert_allclose(got[path], value, atol=1e-6, err_msg=path)


def _train(photos, weights, output, *flags):
    return cli.main(["train", "--image-folder", photos, "--weights", weights, "--epochs", "1", "--output",
                     str(output), "--quiet", *flags])


@pytest.mark.slow
@pytest.mark.parametrize("source", list(CHECKPOINTS), ids=lambda path: os.path.basename(path))
def test_train_with_weights_alone_fine_tunes_the_checkpoint_as_it_is(photos, tmp_path, source, capsys):
    assert _train(photos, source, tmp_path / "run") == 0
    assert "capped at 9: the data holds 9 training images" in capsys.readouterr().out
    model = load_model(tmp_path / "run")
    reference = keras_vit.from_pretrained(source)
    for field in ARCHITECTURE:
        assert getattr(model, field) == getattr(reference, field), field
    assert model.name == CHECKPOINTS[source]
    expected_input = TIMM_INPUT if "timm_" in source else ("bilinear", 1.0, "squash")
    assert (model.interpolation, model.crop_fraction, model.crop_mode) == expected_input
    assert model.class_names == CLASSES and model.num_classes == 3
    _assert_starts_from(model, reference)
    run = keras_vit.RunFolder(tmp_path / "run")
    assert run.read_config()["optimization"]["recipe"] == "finetune"


@pytest.mark.slow
def test_a_keras_model_is_a_starting_point(photos, tmp_path):
    source = os.path.join(HUB, "timm_vit_reg_layerscale")
    keras_model = str(tmp_path / "start.keras")
    reference = convert_pretrained(source, keras_model)
    assert _train(photos, keras_model, tmp_path / "run") == 0
    model = load_model(tmp_path / "run")
    for field in ARCHITECTURE:
        assert getattr(model, field) == getattr(reference, field), field
    assert model.class_names == CLASSES and model.name == reference.name
    _assert_starts_from(model, reference)


@pytest.mark.slow
def test_flags_override_the_checkpoint_and_position_embeddings_are_resampled(photos, tmp_path):
    source = os.path.join(HUB, "timm_deit_distilled")
    assert _train(photos, source, tmp_path / "run", "--image-size", "48", "--pixel-mean", "[0.4, 0.4, 0.4]") == 0
    model = load_model(tmp_path / "run")
    assert model.image_size == (48, 48) and model.pixel_mean == (0.4, 0.4, 0.4)
    assert model.pixel_std == (0.229, 0.224, 0.225) and model.distillation_token  # the rest is the checkpoint's
    # timm's resampling to the 6x6 grid, as from_pretrained(image_size=48) does it; the rest as stored.
    _assert_starts_from(model, keras_vit.from_pretrained(source, image_size=48))


@pytest.mark.slow
def test_python_api_fine_tunes_and_the_run_keeps_one_model_file_without_optimizer(photos, tmp_path):
    source = os.path.join(HUB, "hf_vit")
    metrics = keras_vit.train(keras_vit.TrainConfig(image_folder=photos, weights=source, epochs=2,
                                                    output=str(tmp_path / "run")), verbose=0)
    run = tmp_path / "run"
    with zipfile.ZipFile(run / "model.keras") as archive:
        import h5py

        with archive.open("model.weights.h5") as file, h5py.File(file) as weights:
            assert "optimizer" not in weights  # the state only resuming needs is gone with the run's backup
    assert not (run / "backup").exists() and not (run / "checkpoints" / "last.keras").exists()
    assert metrics["class_names"] == list(CLASSES)
    model = load_model(run)
    assert model.name == "hf_vit" and model.layer_norm_epsilon == 1e-12 and model.class_names == CLASSES
    # evaluate takes the same small folder (12 images, fewer than a batch of 32).
    assert cli.main(["evaluate", str(run), "--image-folder", photos, "--json"]) == 0


@pytest.mark.slow
def test_an_image_folder_without_weights_trains_a_small_model_and_points_to_weights(photos, tmp_path, capsys):
    code = cli.main(["train", "--image-folder", photos, "--epochs", "1", "--image-size", "32", "--output",
                     str(tmp_path / "run"), "--quiet"])
    assert code == 0
    out = capsys.readouterr().out
    assert "starting from pretrained weights is the better road" in out and "--weights" in out
    model = load_model(tmp_path / "run")
    assert model.name == "vit_ti16" and model.count_params() < 25_000_000
    assert keras_vit.RunFolder(tmp_path / "run").read_config()["optimization"]["recipe"] == "scratch"


def test_missing_weights_are_refused_by_name_before_training(photos, tmp_path, capsys):
    missing = str(tmp_path / "nowhere" / "vit")
    assert _train(photos, missing, tmp_path / "run") == 2
    error = capsys.readouterr().err
    assert f"weights={missing!r} does not exist" in error and "hf://<org>/<name>" in error
    assert not (tmp_path / "run").exists()


def test_checkpoint_fields_are_read_without_loading_weights():
    config = resolve_config(
        keras_vit.TrainConfig(image_folder=HUB, weights=os.path.join(HUB, "timm_deit_distilled"))
    )
    assert (config.variant, config.name, config.image_size, config.patch_size, config.gelu) == (
        None, "deit_tiny_distilled_patch16_224", 32, 8, "exact")
    assert config.distillation_token is True and config.pixel_std == [0.229, 0.224, 0.225]
    assert (config.recipe, config.batch_size, config.run_name) == ("finetune", 32, "hub_deit_tiny_distilled_patch16_224")


def test_from_pretrained_class_names_make_a_named_zero_head():
    model = keras_vit.from_pretrained(os.path.join(HUB, "timm_vit_token"), class_names=list(CLASSES))
    assert model.num_classes == 3 and model.class_names == CLASSES
    assert not np.any(model.get_layer("head").kernel.numpy())


@pytest.mark.slow
def test_transfer_experiment_runs_small(tmp_path):
    """The pipeline of docs/fine-tuning.md's experiment at a size the suite affords; the
    comparison itself (fine-tuned well above scratch) is recorded there at full size."""
    from keras_vit.tools.transfer import run_experiment

    result = run_experiment(str(tmp_path), per_class=4, test_per_class=4, pretrain_epochs=1, epochs=1)
    checkpoint = tmp_path / "digits0-4_timm"
    assert (checkpoint / "config.json").is_file() and (checkpoint / "model.safetensors").is_file()
    assert (result["train_images"], result["test_images"]) == (20, 20)
    assert all(0.0 <= result[key] <= 1.0 for key in ("pretrain_accuracy", "finetuned_accuracy", "scratch_accuracy"))
    finetuned, scratch = load_model(tmp_path / "finetuned"), load_model(tmp_path / "scratch")
    assert finetuned.class_names == scratch.class_names == ("5", "6", "7", "8", "9")
    assert finetuned.count_params() == scratch.count_params()  # the same model, with and without the checkpoint
    assert (finetuned.gelu, finetuned.channels, finetuned.pooling) == ("exact", 1, "gap")
    assert "--weights " + str(checkpoint) in result["commands"]["finetune"]


def test_with_a_variant_the_checkpoint_still_gives_its_options_and_input_contract():
    config = resolve_config(
        keras_vit.TrainConfig(image_folder=HUB, variant="Ti/8", weights=os.path.join(HUB, "timm_vit_token"))
    )
    assert (config.hidden_size, config.num_layers, config.patch_size) == (192, 12, 8)  # the variant's
    assert (config.gelu, config.image_size, config.interpolation, config.crop_fraction) == ("exact", 32, "bicubic", 0.9)
