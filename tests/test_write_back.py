"""save_pretrained writes what timm and transformers themselves compute, or refuses by name.

The folders under tests/data/hub/write_back were written by keras_vit and loaded by timm
1.0.31 / transformers 5.25.0 (torch 2.13.0 CPU) in scripts/check_write_back.py, which stored
their logits as client.npz. These tests need no torch: they check that keras_vit still
writes those very files and computes those logits."""

import json
import os

import numpy as np
import pytest
from safetensors.numpy import load_file

import keras_vit
from conftest import DATA, tiny_vit
from keras_vit.tools.write_back_cases import CASES, REFUSED, build_case

ROOT = DATA / "hub" / "write_back"
TOLERANCE = 1e-4


def _arrays(path):
    with np.load(path) as data:
        return {key: data[key] for key in data.files}


def test_every_case_has_its_fixture_folder_with_the_clients_logits():
    assert sorted(p.name for p in ROOT.iterdir()) == sorted(CASES)
    for case in CASES:
        assert "client" in _arrays(ROOT / case / "client.npz"), case


@pytest.mark.parametrize("case", sorted(CASES))
def test_what_save_pretrained_writes_today_is_the_folder_the_client_loaded(case, tmp_path):
    format = CASES[case][0]
    model = build_case(case)
    folder = keras_vit.save_pretrained(model, tmp_path / case, format=format)
    fixture, written = load_file(ROOT / case / "model.safetensors"), load_file(os.path.join(folder, "model.safetensors"))
    assert sorted(written) == sorted(fixture)
    for key in fixture:
        assert np.array_equal(written[key], fixture[key]), key
    for name in ("config.json", "preprocessor_config.json"):
        if (ROOT / case / name).exists() or os.path.exists(os.path.join(folder, name)):
            assert json.load(open(os.path.join(folder, name))) == json.loads((ROOT / case / name).read_text()), name
    inputs, client = _arrays(ROOT / case / "inputs.npz"), _arrays(ROOT / case / "client.npz")
    for key, images in inputs.items():
        np.testing.assert_allclose(model.predict(images, verbose=0), client[key.replace("images", "logits")], atol=TOLERANCE)


@pytest.mark.parametrize("case", sorted(CASES))
def test_reading_the_written_folder_back_gives_the_clients_logits(case):
    arguments = CASES[case][1]
    model = keras_vit.from_pretrained(
        ROOT / case, include_top=arguments.get("include_top", True),
        include_preprocessing=bool(arguments.get("include_preprocessing")),
        dynamic_image_size=bool(arguments.get("dynamic_image_size")),
    )
    inputs, client = _arrays(ROOT / case / "inputs.npz"), _arrays(ROOT / case / "client.npz")
    for key, images in inputs.items():
        np.testing.assert_allclose(model.predict(images, verbose=0), client[key.replace("images", "logits")], atol=TOLERANCE)


@pytest.mark.parametrize("case", ["timm_tanh_token", "hf_exact_token"])
def test_source_metadata_survives_a_read_and_a_write(case, tmp_path):
    format = CASES[case][0]
    folder = keras_vit.save_pretrained(keras_vit.from_pretrained(ROOT / case), tmp_path / "again", format=format)
    if format == "timm":
        written = json.load(open(os.path.join(folder, "config.json")))["pretrained_cfg"]
        source = json.loads((ROOT / case / "config.json").read_text())["pretrained_cfg"]
        assert (written["crop_pct"], written["interpolation"], written["crop_mode"]) == (0.95, "bilinear", "squash")
    else:
        written = json.load(open(os.path.join(folder, "preprocessor_config.json")))
        source = json.loads((ROOT / case / "preprocessor_config.json").read_text())
        assert (written["resample"], written["image_mean"]) == (3, 0.5)
    assert written == source


def test_source_metadata_is_saved_in_the_keras_file(tmp_path):
    model = keras_vit.from_pretrained(ROOT / "timm_tanh_token")
    model.save(tmp_path / "m.keras")
    import keras

    reloaded = keras.models.load_model(tmp_path / "m.keras")
    assert reloaded.source_metadata["pretrained_cfg"]["crop_mode"] == "squash"
    # The checkpoint's resize and crop become the model's own input contract.
    assert (reloaded.interpolation, reloaded.crop_fraction, reloaded.crop_mode) == ("bilinear", 0.95, "squash")
    assert reloaded.gelu == "tanh"  # timm's act_layer="gelu_tanh" is read, not assumed exact


def test_timm_gets_an_mlp_ratio_from_which_it_builds_mlp_dim_exactly(tmp_path):
    config = json.loads((ROOT / "timm_mlp_123" / "config.json").read_text())
    ratio = config["model_args"]["mlp_ratio"]
    assert int(60 * (123 / 60)) == 122  # the naive ratio: timm would build 122
    assert int(60 * ratio) == 123


@pytest.mark.parametrize(
    "format, arguments, option", [(f, a, o) for f, cases in REFUSED.items() for a, o in cases],
    ids=[f"{f}-{o}-{'-'.join(map(str, a.values()))}" for f, cases in REFUSED.items() for a, o in cases],
)
def test_an_option_the_format_cannot_express_is_refused_by_name(format, arguments, option, tmp_path):
    model = tiny_vit(**arguments)
    with pytest.raises(ValueError, match=rf"{format}'s layout: {option}="):
        keras_vit.save_pretrained(model, tmp_path / "refused", format=format)
    assert not (tmp_path / "refused").exists()


def test_a_built_models_resize_and_crop_are_written_in_each_clients_terms(tmp_path):
    model = tiny_vit(interpolation="nearest", crop_fraction=0.8, crop_mode="center")
    timm_folder = keras_vit.save_pretrained(model, tmp_path / "timm", format="timm")
    pretrained_cfg = json.load(open(os.path.join(timm_folder, "config.json")))["pretrained_cfg"]
    assert (pretrained_cfg["interpolation"], pretrained_cfg["crop_pct"], pretrained_cfg["crop_mode"]) == ("nearest", 0.8, "center")
    hf_folder = keras_vit.save_pretrained(model, tmp_path / "hf", format="huggingface")
    assert json.load(open(os.path.join(hf_folder, "preprocessor_config.json")))["resample"] == 0  # PIL's NEAREST
    reread = keras_vit.from_pretrained(timm_folder)
    assert (reread.interpolation, reread.crop_fraction, reread.crop_mode) == ("nearest", 0.8, "center")
