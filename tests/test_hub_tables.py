"""The checkpoint-format tables (keras_vit.weights.tables): one table per format reads and
writes, so writing a model and reading the tensors back gives its weights bit for bit, and
each row's special cases (timm's fused qkv, a model built without qkv biases, Hugging Face's
``vit.`` prefix and mask token) hold in both directions."""

import shutil

import keras
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

import keras_vit
from conftest import DATA, randomize, tiny_vit
from keras_vit.weights import huggingface, tables, timm
from keras_vit.weights.tables import layout_arrays

HUB = DATA / "hub"

# Tiny models with every option each format's table has a row for.
TIMM_MODELS = {
    "token": dict(),
    "registers_layer_scale_fc_norm": dict(num_register_tokens=2, layer_scale_init=1e-5, pooling="gap",
                                          norm_after_pooling=True),
    "distilled": dict(distillation_token=True),
    "no_head": dict(include_top=False),
}
HF_MODELS = {"classifier": dict(), "backbone": dict(include_top=False)}


def _assert_same_arrays(actual, expected):
    assert sorted(actual) == sorted(expected)
    for key, value in expected.items():
        assert actual[key].shape == value.shape and np.array_equal(actual[key], value), key


@pytest.mark.parametrize("options", sorted(TIMM_MODELS))
def test_timm_table_reads_back_what_it_writes_bit_for_bit(options):
    model = randomize(tiny_vit(**TIMM_MODELS[options]), seed=1)
    written = timm.state_dict(model)
    assert "blocks.1.attn.qkv.weight" in written and written["blocks.1.attn.qkv.weight"].shape == (48, 16)
    _assert_same_arrays(timm.to_published_layout(written, model.num_heads), layout_arrays(model))


@pytest.mark.parametrize("options", sorted(HF_MODELS))
def test_huggingface_table_reads_back_what_it_writes_with_and_without_the_vit_prefix(options):
    model = randomize(tiny_vit(**HF_MODELS[options]), seed=2)
    written = huggingface.state_dict(model)
    prefixed = [key for key in written if key.startswith("vit.")]
    assert len(prefixed) == (len(written) - 2 if model.include_top else 0)  # all but classifier.weight/.bias
    _assert_same_arrays(huggingface.to_published_layout(written, model.num_heads), layout_arrays(model))


def test_a_timm_model_built_without_qkv_biases_loads_with_zero_biases(tmp_path):
    folder = tmp_path / "no_qkv_bias"
    shutil.copytree(HUB / "timm_vit_token", folder)
    tensors = load_file(folder / "model.safetensors")
    without = {key: value for key, value in tensors.items() if not key.endswith(".attn.qkv.bias")}
    assert len(without) == len(tensors) - 2  # the two blocks' fused biases
    save_file(without, folder / "model.safetensors")
    model = keras_vit.from_pretrained(folder)
    reference = keras_vit.from_pretrained(HUB / "timm_vit_token")
    zeroed = []
    for ours, theirs in zip(model.weights, reference.weights):
        value = keras.ops.convert_to_numpy(ours)
        if ours.path.endswith(("/query/bias", "/key/bias", "/value/bias")):
            assert not value.any(), ours.path
            zeroed.append(ours.path)
        else:
            assert np.array_equal(value, keras.ops.convert_to_numpy(theirs)), ours.path
    assert len(zeroed) == 6  # query, key and value of both blocks


def test_a_huggingface_mask_token_is_dropped_and_an_unknown_tensor_kept_for_the_loader_to_name():
    tensors = huggingface.state_dict(randomize(tiny_vit(), seed=3))
    tensors["vit.embeddings.mask_token"] = np.zeros((1, 1, 16), "float32")
    tensors["vit.encoder.layer.0.attention.attention.q_norm.weight"] = np.ones(16, "float32")
    arrays = huggingface.to_published_layout(tensors, 2)
    assert "vit.embeddings.mask_token" not in arrays
    assert arrays["vit.encoder.layer.0.attention.attention.q_norm.weight"].shape == (16,)


def test_writing_refuses_a_weight_no_row_names_and_reading_names_a_missing_tensor():
    arrays = layout_arrays(randomize(tiny_vit(), seed=4))
    with pytest.raises(ValueError, match=r"weights without a timm name: \['Transformer/extra/kernel'\]"):
        tables.from_layout(timm.TABLE, {**arrays, "Transformer/extra/kernel": np.zeros((2, 2), "float32")})
    tensors = timm.state_dict(randomize(tiny_vit(), seed=4))
    del tensors["blocks.1.mlp.fc2.weight"]
    with pytest.raises(KeyError, match="blocks.1.mlp.fc2.weight"):
        timm.to_published_layout(tensors, 2)
