"""Malformed checkpoint metadata and tensors end in one clean ValueError naming the file.

Each reader (an original .npz, a timm folder, a Hugging Face folder) gets generated
malformed fields (any JSON value in place of a field, a file holding a JSON list) and
tensors (any rank, empty axes, integer dtypes); whatever it is given, it builds the model or
refuses with a ValueError, never an IndexError, KeyError, AttributeError or
ZeroDivisionError from deep inside. The command line prints such a refusal as one line."""

import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.numpy import load_file, save_file

import keras_vit
from conftest import DATA, tiny_vit
from keras_vit import cli
from keras_vit.weights.npz import describe_checkpoint, save_npz

WRITE_BACK = DATA / "hub" / "write_back"
TIMM_SOURCE, HF_SOURCE = WRITE_BACK / "timm_reg_layerscale_fcnorm", WRITE_BACK / "hf_exact_token"
BOUNDED = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2, 3) | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=3),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=2), inner, max_size=2),
    max_leaves=4,
)
shapes = st.lists(st.integers(0, 3), max_size=4).map(tuple)
dtypes = st.sampled_from(["float32", "int32", "float16"])

TIMM_FIELDS = [(), ("model_args",), ("pretrained_cfg",), ("architecture",), ("global_pool",), ("label_names",),
               ("model_args", "num_heads"), ("model_args", "img_size"), ("model_args", "global_pool"),
               ("model_args", "init_values"), ("model_args", "act_layer"), ("pretrained_cfg", "mean"),
               ("pretrained_cfg", "std"), ("pretrained_cfg", "input_size")]
HF_FIELDS = [(), ("hidden_size",), ("num_hidden_layers",), ("num_attention_heads",), ("intermediate_size",),
             ("num_channels",), ("image_size",), ("patch_size",), ("layer_norm_eps",), ("hidden_act",), ("id2label",),
             ("model_type",)]
PROCESSOR_FIELDS = [(), ("do_normalize",), ("image_mean",), ("image_std",)]


def _set(document, field, value):
    if not field:
        return value
    if len(field) == 2 and not isinstance(document.get(field[0]), dict):
        document[field[0]] = {}
    target = document if len(field) == 1 else document[field[0]]
    target[field[-1]] = value
    return document


def _assert_clean_refusal(read, names):
    """``read()`` builds a model or raises a ValueError that names one of ``names`` (the file)."""
    try:
        read()
    except ValueError as error:
        assert any(name in str(error) for name in names), str(error)


def _rewrite_tensor(path, name, shape, dtype):
    tensors = load_file(path)
    tensors[name] = np.full(shape, 0.5).astype(dtype)
    save_file(tensors, path)


@given(data=st.data())
@BOUNDED
def test_a_timm_folder_with_any_malformed_field_or_tensor_is_refused_cleanly(data):
    with tempfile.TemporaryDirectory() as temporary:
        folder = Path(shutil.copytree(TIMM_SOURCE, Path(temporary) / "timm"))
        if data.draw(st.booleans(), label="tensor"):
            name = data.draw(st.sampled_from(sorted(load_file(folder / "model.safetensors"))), label="name")
            _rewrite_tensor(folder / "model.safetensors", name, data.draw(shapes, "shape"), data.draw(dtypes, "dtype"))
        else:
            config = json.loads((folder / "config.json").read_text())
            config = _set(config, data.draw(st.sampled_from(TIMM_FIELDS), "field"), data.draw(json_values, "value"))
            (folder / "config.json").write_text(json.dumps(config))
        _assert_clean_refusal(lambda: keras_vit.from_pretrained(folder), [str(folder)])


@given(data=st.data())
@BOUNDED
def test_a_huggingface_folder_with_any_malformed_field_or_tensor_is_refused_cleanly(data):
    with tempfile.TemporaryDirectory() as temporary:
        folder = Path(shutil.copytree(HF_SOURCE, Path(temporary) / "hf"))
        what = data.draw(st.sampled_from(["tensor", "config", "processor"]), label="what")
        if what == "tensor":
            name = data.draw(st.sampled_from(sorted(load_file(folder / "model.safetensors"))), label="name")
            _rewrite_tensor(folder / "model.safetensors", name, data.draw(shapes, "shape"), data.draw(dtypes, "dtype"))
        else:
            file, fields = ("config.json", HF_FIELDS) if what == "config" else ("preprocessor_config.json", PROCESSOR_FIELDS)
            document = json.loads((folder / file).read_text())
            document = _set(document, data.draw(st.sampled_from(fields), "field"), data.draw(json_values, "value"))
            (folder / file).write_text(json.dumps(document))
        _assert_clean_refusal(lambda: keras_vit.from_pretrained(folder), [str(folder)])


@pytest.fixture(scope="module")
def npz_arrays(tmp_path_factory):
    path = save_npz(tiny_vit(num_layers=1), tmp_path_factory.mktemp("npz") / "tiny.npz")
    with np.load(path) as data:
        return {key: data[key] for key in data.files}


@given(data=st.data())
@BOUNDED
def test_an_npz_with_any_malformed_tensor_is_refused_cleanly(npz_arrays, data):
    arrays = dict(npz_arrays)
    name = data.draw(st.sampled_from(sorted(arrays)), label="name")
    if data.draw(st.booleans(), label="delete"):
        del arrays[name]
    else:
        arrays[name] = np.full(data.draw(shapes, "shape"), 0.5).astype(data.draw(dtypes, "dtype"))
    with tempfile.TemporaryDirectory() as temporary:
        path = str(Path(temporary) / "bad.npz")
        np.savez(path, **arrays)
        _assert_clean_refusal(lambda: describe_checkpoint(path) and keras_vit.from_npz(path), [path])


# ----------------------------------------------------------------------------- the command line
def _npz_with(tmp_path, change):
    path = tmp_path / "bad.npz"
    arrays = {}
    with np.load(save_npz(tiny_vit(num_layers=1), tmp_path / "good.npz")) as data:
        arrays = {key: data[key] for key in data.files}
    change(arrays)
    np.savez(path, **arrays)
    return path


def _folder_with(tmp_path, source, file, change):
    folder = Path(shutil.copytree(source, tmp_path / source.name))
    if file.endswith(".json"):
        document = json.loads((folder / file).read_text())
        (folder / file).write_text(json.dumps(change(document)))
    else:
        tensors = load_file(folder / file)
        change(tensors)
        save_file(tensors, folder / file)
    return folder


QUERY = "Transformer/encoderblock_0/MultiHeadDotProductAttention_1/query/kernel"
BAD_NPZ = {
    "query kernel 1-D": (lambda a: a.update({QUERY: a[QUERY].reshape(-1)}), QUERY),
    "head bias 0-d": (lambda a: a.update({"head/bias": np.float32(0.5)}), "head/bias"),
}
BAD_FOLDERS = {
    "config.json a JSON list": (HF_SOURCE, "config.json", lambda c: [c], "JSON list"),
    "preprocessor_config.json a JSON list": (HF_SOURCE, "preprocessor_config.json", lambda c: [c], "JSON list"),
    "id2label a list": (HF_SOURCE, "config.json", lambda c: {**c, "id2label": ["a", "b", "c"]}, "id2label"),
    "num_attention_heads 0": (HF_SOURCE, "config.json", lambda c: {**c, "num_attention_heads": 0}, "num_attention_heads"),
    "timm num_heads 0": (TIMM_SOURCE, "config.json",
                         lambda c: {**c, "model_args": {**c["model_args"], "num_heads": 0}}, "num_heads"),
    "rank-1 reg_token": (TIMM_SOURCE, "model.safetensors",
                         lambda t: t.update(reg_token=t["reg_token"].reshape(-1)), "reg_token"),
}


def _one_error_line(capsys, command, *argv):
    status = cli.main([command, *argv])
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert status == 2 and len(lines) == 1, captured.err
    assert lines[0].startswith(f"keras-vit {command}: error: ")
    return lines[0]


@pytest.mark.parametrize("case", sorted(BAD_NPZ))
def test_inspect_and_convert_refuse_a_malformed_npz_in_one_line(case, capsys, tmp_path):
    change, field = BAD_NPZ[case]
    path = _npz_with(tmp_path, change)
    for command, argv in (("inspect", [str(path)]), ("convert", [str(path), str(tmp_path / "m.keras")])):
        line = _one_error_line(capsys, command, *argv)
        assert str(path) in line and field in line
    assert not (tmp_path / "m.keras").exists()


@pytest.mark.parametrize("case", sorted(BAD_FOLDERS))
def test_convert_refuses_a_malformed_repository_in_one_line(case, capsys, tmp_path):
    source, file, change, field = BAD_FOLDERS[case]
    folder = _folder_with(tmp_path, source, file, change)
    line = _one_error_line(capsys, "convert", str(folder), str(tmp_path / "m.keras"))
    assert str(folder / file) in line and field in line
    assert not (tmp_path / "m.keras").exists()
