"""Property-based checks of the builders' arguments: whatever a user passes, either a model
with exactly those settings comes back or a clear error names the argument."""

import keras
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import keras_vit  # noqa: E402
from keras_vit.core.models import CONSTRUCTOR_ARGUMENTS  # noqa: E402

SMALL = dict(image_size=8, patch_size=4, hidden_size=8, num_layers=1, num_heads=2, mlp_dim=8, num_classes=3)
SIZES = ("hidden_size", "num_layers", "num_heads", "mlp_dim")
RATES = ("dropout", "attention_dropout", "drop_path_rate")

names = st.text(alphabet="abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=20)


@settings(max_examples=60, deadline=None)
@given(name=names.filter(lambda n: n not in CONSTRUCTOR_ARGUMENTS and n not in ("variant", "weights")))
def test_any_unknown_argument_is_a_type_error_naming_it(name):
    with pytest.raises(TypeError, match=f"unexpected keyword argument\\(s\\) '{name}'"):
        keras_vit.ViT("Ti/4", **SMALL, **{name: 1})


@settings(max_examples=60, deadline=None)
@given(field=st.sampled_from(SIZES), value=st.one_of(st.integers(max_value=0), st.booleans(), st.floats(), st.text()))
def test_a_size_that_is_not_a_positive_integer_is_refused_by_name(field, value):
    with pytest.raises((ValueError, TypeError), match=f"{field}="):
        keras_vit.VisionTransformer(**{**SMALL, field: value})


@settings(max_examples=60, deadline=None)
@given(field=st.sampled_from(RATES), value=st.one_of(st.floats(min_value=1.0), st.floats(max_value=-1e-9), st.none()))
def test_a_rate_outside_zero_one_is_refused_by_name(field, value):
    with pytest.raises(ValueError, match=f"{field}="):
        keras_vit.VisionTransformer(**{**SMALL, field: value})


@settings(max_examples=15, deadline=None)
@given(
    heads=st.sampled_from([1, 2, 4]),
    width_per_head=st.integers(min_value=1, max_value=4),
    layers=st.integers(min_value=1, max_value=2),
    mlp_dim=st.integers(min_value=1, max_value=16),
    rate=st.floats(min_value=0.0, max_value=0.9),
)
def test_accepted_arguments_build_exactly_what_was_asked(heads, width_per_head, layers, mlp_dim, rate):
    model = keras_vit.VisionTransformer(
        **{**SMALL, "hidden_size": heads * width_per_head, "num_heads": heads, "num_layers": layers,
           "mlp_dim": mlp_dim, "drop_path_rate": rate}
    )
    config = model.get_config()
    assert (config["hidden_size"], config["num_heads"], config["num_layers"], config["mlp_dim"]) == (
        heads * width_per_head, heads, layers, mlp_dim)
    assert config["drop_path_rate"] == rate
    blocks = [layer for layer in model.layers if isinstance(layer, keras_vit.TransformerBlock)]
    # Stochastic depth rises linearly from 0 at the first block to the rate at the last (timm's linspace).
    assert len(blocks) == layers and blocks[-1].drop_path_rate == pytest.approx(rate if layers > 1 else 0.0)
    keras.backend.clear_session()
