"""Tests for keras_vit.visualize: attention maps, rollout, the paper's Fig. 7, figures, CLI."""

import itertools
import os

import keras
import matplotlib.image
import numpy as np
import pytest
from PIL import Image

from keras_vit import visualize
from keras_vit.weights.npz import from_npz, read_npz
from keras_vit.cli import main
from keras_vit.core.models import VisionTransformer

from conftest import DATA, reference_model


@pytest.fixture(scope="module")
def token_model():
    return reference_model("vit_token")  # 32x32, 4x4 grid + class token, 2 blocks, 3 heads


@pytest.fixture(scope="module")
def gap_model():
    return reference_model("vit_gap")  # 32x32, 8x8 grid, no class token, 1 block, 2 heads


@pytest.fixture(scope="module")
def hybrid_model():
    return reference_model("vit_hybrid")  # ResNet stem of stride 8, 1x1 patches: 4x4 grid


def _small_vit(image_size, patch_size, pooling, position_embedding, num_layers=2, hidden_size=32):
    return VisionTransformer(
        image_size=image_size,
        patch_size=patch_size,
        hidden_size=hidden_size,
        num_layers=num_layers,
        num_heads=2,
        mlp_dim=32,
        num_classes=3,
        channels=1,
        pooling=pooling,
        position_embedding=position_embedding,
    )


@pytest.fixture(scope="module")
def non_square_model():
    # 16x32 grey images, 4x4 patches: a 4x8 grid, gap pooling, sincos embeddings.
    model = _small_vit((16, 32), 4, "gap", "sincos2d")
    images = np.random.default_rng(0).uniform(-1, 1, (2, 16, 32, 1)).astype("float32")
    return model, images


def _uniform_first_block(model):
    """Zero query and key projections of encoderblock_0: every score equal, attention uniform."""
    attention = model.get_layer("encoderblock_0").attention
    for dense in (attention.query_dense, attention.key_dense):
        for weight in dense.weights:
            weight.assign(np.zeros(weight.shape, dtype="float32"))
    return model


# --------------------------------------------------------------------------- attention maps
@pytest.mark.parametrize(
    "fixture, tokens, heads, layers",
    [("token_model", 17, 3, 2), ("gap_model", 64, 2, 1), ("hybrid_model", 17, 3, 1), ("non_square_model", 32, 2, 2)],
)
def test_attention_maps_rows_are_probabilities(request, fixture, tokens, heads, layers):
    model, images = request.getfixturevalue(fixture)
    maps = visualize.attention_maps(model, images)
    assert len(maps) == layers
    for layer_map in maps:
        assert layer_map.shape == (len(images), heads, tokens, tokens)
        assert layer_map.min() >= 0.0
        np.testing.assert_allclose(layer_map.sum(axis=-1), 1.0, atol=1e-5)
    assert maps.grid_size == model.grid_size


def _layer_norm(x, scale, bias):
    mean = x.mean(-1, keepdims=True)
    variance = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(variance + 1e-6) * scale + bias


def test_attention_maps_equal_the_original_computation_from_the_checkpoint(token_model):
    # Layer 0's attention computed in NumPy straight from the .npz arrays (the original's
    # layout and maths), independently of keras_vit's layers.
    model, images = token_model
    params = read_npz(os.path.join(DATA, "vit_token.npz"))
    batch = len(images)
    patches = images.reshape(batch, 4, 8, 4, 8, 3).transpose(0, 1, 3, 2, 4, 5).reshape(batch, 16, 192)
    tokens = patches @ params["embedding/kernel"].reshape(192, 48) + params["embedding/bias"]
    cls = np.broadcast_to(params["cls"], (batch, 1, 48))
    tokens = np.concatenate([cls, tokens], axis=1) + params["Transformer/posembed_input/pos_embedding"]
    block = "Transformer/encoderblock_0/"
    y = _layer_norm(tokens, params[block + "LayerNorm_0/scale"], params[block + "LayerNorm_0/bias"])
    mha = block + "MultiHeadDotProductAttention_1/"
    query = np.einsum("btd,dhk->bhtk", y, params[mha + "query/kernel"]) + params[mha + "query/bias"][:, None]
    key = np.einsum("btd,dhk->bhtk", y, params[mha + "key/kernel"]) + params[mha + "key/bias"][:, None]
    logits = query @ key.transpose(0, 1, 3, 2) / np.sqrt(16)
    expected = np.exp(logits - logits.max(-1, keepdims=True))
    expected /= expected.sum(-1, keepdims=True)

    maps = visualize.attention_maps(model, images)
    np.testing.assert_allclose(maps[0], expected, atol=2e-5)


def test_attention_maps_do_not_depend_on_batch_size(token_model):
    model, images = token_model
    whole = visualize.attention_maps(model, images, batch_size=8)
    one_by_one = visualize.attention_maps(model, images, batch_size=1)
    for a, b in zip(whole, one_by_one):
        np.testing.assert_allclose(a, b, atol=1e-6)


def test_attention_maps_refuse_integer_pixels_as_the_model_does_and_accept_grey_batches(non_square_model):
    model, _ = non_square_model
    pixels = np.random.default_rng(1).integers(0, 256, (2, 16, 32), dtype=np.uint8)
    for integers in (pixels, pixels.astype(np.int64)):  # uint8 and what np.array([[0, 255, ...]]) gives
        with pytest.raises(ValueError, match=r"takes float images scaled to \[-1, 1\]; received (uint8|int64) pixels"):
            visualize.attention_maps(model, integers)
        with pytest.raises(ValueError, match=r"received (uint8|int64) pixels"):
            visualize.mean_attention_distance(model, integers)
        with pytest.raises(ValueError) as by_the_model:
            model(integers[..., None])
        with pytest.raises(ValueError) as by_visualize:
            visualize.attention_maps(model, integers)
        assert str(by_visualize.value) in str(by_the_model.value)  # Keras wraps the model's words
    grey = visualize.attention_maps(model, pixels.astype("float32") / 127.5 - 1.0)  # (B, H, W) grey images
    channels = visualize.attention_maps(model, pixels[..., None].astype("float32") / 127.5 - 1.0)
    np.testing.assert_allclose(grey[1], channels[1], atol=1e-6)


def test_attention_maps_reject_images_of_the_wrong_size(token_model):
    model, _ = token_model
    with pytest.raises(ValueError, match=r"\(2, 28, 28, 3\).*\(batch, 32, 32, 3\)"):
        visualize.attention_maps(model, np.zeros((2, 28, 28, 3), "float32"))


def test_attention_maps_reject_a_model_without_transformer_blocks():
    inputs = keras.Input((8, 8, 1))
    plain = keras.Model(inputs, keras.layers.Flatten()(inputs))
    with pytest.raises(ValueError, match="0 TransformerBlock"):
        visualize.attention_maps(plain, np.zeros((1, 8, 8, 1), "float32"))


# --------------------------------------------------------------------------- rollout
def _numpy_rollout(maps, has_class_token):
    """Abnar and Zuidema's rollout written out per image: A = 0.5 W + 0.5 I, R = A_L ... A_1."""
    batch, _, tokens, _ = maps[0].shape
    result = []
    for b in range(batch):
        rollout = np.eye(tokens)
        for layer_map in maps:
            joint = 0.5 * layer_map[b].astype("float64").mean(axis=0) + 0.5 * np.eye(tokens)
            rollout = joint @ rollout
        result.append(rollout[0, 1:] if has_class_token else rollout.mean(axis=0))
    return np.stack(result)


@pytest.mark.parametrize("fixture", ["token_model", "gap_model", "hybrid_model", "non_square_model"])
def test_rollout_equals_a_direct_numpy_computation(request, fixture):
    model, images = request.getfixturevalue(fixture)
    maps = visualize.attention_maps(model, images)
    rollout = visualize.attention_rollout(maps)
    grid_h, grid_w = model.grid_size
    assert rollout.shape == (len(images), grid_h, grid_w)
    expected = _numpy_rollout(maps, maps.has_class_token).reshape(len(images), grid_h, grid_w)
    np.testing.assert_allclose(rollout, expected, atol=1e-6)


def test_rollout_of_plain_arrays_needs_the_layout(gap_model):
    model, images = gap_model
    maps = visualize.attention_maps(model, images)
    plain = [np.array(m) for m in maps]
    with pytest.raises(ValueError, match="grid_size= and has_class_token="):
        visualize.attention_rollout(plain)
    np.testing.assert_allclose(
        visualize.attention_rollout(plain, grid_size=(8, 8), has_class_token=False),
        visualize.attention_rollout(maps),
    )
    with pytest.raises(ValueError, match=r"\(B, heads, 17, 17\)"):
        visualize.attention_rollout(plain, grid_size=(4, 4), has_class_token=True)


def test_upsample_heatmap_reaches_the_image_size_and_keeps_a_constant_map():
    heatmaps = np.full((2, 4, 8), 0.25, "float32")
    upsampled = visualize.upsample_heatmap(heatmaps, (16, 32))
    assert upsampled.shape == (2, 16, 32)
    np.testing.assert_allclose(upsampled, 0.25, atol=1e-6)


# --------------------------------------------------------------------------- position embeddings
@pytest.mark.parametrize("image_size", [(28, 28), (16, 32)])
def test_sincos_position_is_most_similar_to_itself_and_similarity_falls_with_distance(image_size):
    model = _small_vit(image_size, 4, "token", "sincos2d", num_layers=1)
    similarity = visualize.position_embedding_similarity(model)
    grid_h, grid_w = model.grid_size
    assert similarity.shape == (grid_h, grid_w, grid_h, grid_w)
    rows, columns = np.mgrid[:grid_h, :grid_w]
    for i, j in itertools.product(range(grid_h), range(grid_w)):
        own = similarity[i, j]
        np.testing.assert_allclose(own[i, j], 1.0, atol=1e-6)
        assert np.sum(own >= own[i, j] - 1e-6) == 1  # itself, uniquely, is the most similar
        # Along the row and the column, similarity falls at each of the first three steps
        # (further out the sincos frequencies make it oscillate).
        for profile in (own[i, j:], own[i, j::-1], own[i:, j], own[i::-1, j]):
            assert np.all(np.diff(profile[:4]) < 0)
        # Every 4-neighbour is more similar than every position 2 or more cells away.
        distance = np.hypot(rows - i, columns - j)
        assert own[distance == 1].min() > own[distance >= 2].max()


def test_learned_similarity_is_the_cosine_of_the_checkpoint_patch_embeddings(token_model):
    model, _ = token_model
    embedding = read_npz(os.path.join(DATA, "vit_token.npz"))["Transformer/posembed_input/pos_embedding"][0, 1:]
    unit = embedding / np.linalg.norm(embedding, axis=-1, keepdims=True)
    expected = (unit @ unit.T).reshape(4, 4, 4, 4)
    np.testing.assert_allclose(visualize.position_embedding_similarity(model), expected, atol=1e-5)


def test_learned_2d_similarity_covers_a_non_square_grid():
    model = _small_vit((16, 32), 4, "gap", "learned_2d", num_layers=1)
    similarity = visualize.position_embedding_similarity(model)
    assert similarity.shape == (4, 8, 4, 8)
    np.testing.assert_allclose(np.einsum("ijij->ij", similarity), 1.0, atol=1e-5)


def test_similarity_without_position_embedding_is_refused():
    model = _small_vit(28, 4, "gap", "none", num_layers=1)
    with pytest.raises(ValueError, match="position_embedding='none'"):
        visualize.position_embedding_similarity(model)


# --------------------------------------------------------------------------- embedding filters
def test_embedding_filters_are_the_principal_components_of_the_projection(token_model):
    model, _ = token_model
    filters = visualize.embedding_filters(model, k=5)
    assert filters.shape == (5, 8, 8, 3)
    kernel = read_npz(os.path.join(DATA, "vit_token.npz"))["embedding/kernel"].reshape(192, 48).T
    covariance = np.cov(kernel, rowvar=False)  # (192, 192) over the 48 filters
    eigenvalues, eigenvectors = np.linalg.eigh(covariance)
    top = eigenvectors[:, ::-1][:, :5].T
    flat = filters.reshape(5, -1)
    np.testing.assert_allclose(np.abs(np.sum(flat * top, axis=1)), 1.0, atol=1e-4)
    np.testing.assert_allclose(flat @ flat.T, np.eye(5), atol=1e-5)


def test_embedding_filters_returns_at_most_the_components_that_exist(gap_model, hybrid_model):
    # 4x4x3 patches, width 32: 31 components of the centred filters exist, so k=28 fits.
    assert visualize.embedding_filters(gap_model[0]).shape == (28, 4, 4, 3)
    model = _small_vit(28, 4, "gap", "learned", num_layers=1)  # 4x4x1 patches: 16 components
    assert visualize.embedding_filters(model, k=28).shape == (16, 4, 4, 1)
    # Hybrid: 1x1 patches over the stem's 256 channels.
    assert visualize.embedding_filters(hybrid_model[0], k=3).shape == (3, 1, 1, 256)
    with pytest.raises(ValueError, match="positive integer; got 0"):
        visualize.embedding_filters(model, k=0)


# --------------------------------------------------------------------------- attention distance
def _mean_pairwise_distance(grid_size, cell_size):
    cells = list(itertools.product(range(grid_size[0]), range(grid_size[1])))
    total = sum(
        np.hypot((a[0] - b[0]) * cell_size[0], (a[1] - b[1]) * cell_size[1]) for a in cells for b in cells
    )
    return total / len(cells) ** 2


def test_uniform_attention_spans_the_mean_distance_of_the_grid(token_model):
    model = _uniform_first_block(from_npz(os.path.join(DATA, "vit_token.npz")))
    _, images = token_model
    distances = visualize.mean_attention_distance(model, images)
    assert distances.shape == (2, 3)
    # 4x4 grid of 8-pixel patches; the class token, which has no position, is left out.
    np.testing.assert_allclose(distances[0], _mean_pairwise_distance((4, 4), (8, 8)), rtol=1e-5)
    assert np.all(np.abs(distances[1] - distances[0]) > 1e-3)  # block 1 is not uniform


def test_uniform_attention_on_a_row_of_patches_matches_the_closed_form():
    # A 1x6 grid of 4-pixel patches: mean |i - j| over all pairs is (n^2 - 1) / (3n) cells.
    model = _uniform_first_block(_small_vit((4, 24), 4, "gap", "learned", num_layers=1))
    images = np.random.default_rng(2).uniform(-1, 1, (2, 4, 24, 1)).astype("float32")
    distances = visualize.mean_attention_distance(model, images, batch_size=1)
    np.testing.assert_allclose(distances, (6**2 - 1) / (3 * 6) * 4, rtol=1e-5)


def test_hybrid_attention_distance_is_measured_in_image_pixels(hybrid_model):
    model = _uniform_first_block(from_npz(os.path.join(DATA, "vit_hybrid.npz")))
    # The stem's stride 8 makes each of the 4x4 cells 8x8 pixels of the 32x32 image.
    distances = visualize.mean_attention_distance(model, hybrid_model[1])
    np.testing.assert_allclose(distances, _mean_pairwise_distance((4, 4), (8, 8)), rtol=1e-5)


# --------------------------------------------------------------------------- figures
def _read_png(path):
    assert os.path.isfile(path)
    pixels = matplotlib.image.imread(path)
    assert pixels.var() > 0  # not blank
    return pixels.shape[:2]  # (height, width)


def test_each_figure_is_written_at_its_size_and_not_blank(token_model, tmp_path):
    model, images = token_model
    maps = visualize.attention_maps(model, images)
    rollout_png = visualize.plot_attention_rollout(images, visualize.attention_rollout(maps), tmp_path / "r.png")
    assert _read_png(rollout_png) == (400, 3 * 200)
    heads_png = visualize.plot_attention_heads(images, maps, tmp_path / "h.png", layer=0, max_images=2)
    assert _read_png(heads_png) == (2 * 200 + 50, (3 + 1) * 200)
    similarity_png = visualize.plot_position_embedding_similarity(
        visualize.position_embedding_similarity(model), tmp_path / "s.png"
    )
    assert _read_png(similarity_png) == (500, 600)
    filters_png = visualize.plot_embedding_filters(visualize.embedding_filters(model, k=10), tmp_path / "f.png")
    assert _read_png(filters_png) == (2 * 100 + 50, 7 * 100)
    distance_png = visualize.plot_mean_attention_distance(
        visualize.mean_attention_distance(model, images), tmp_path / "d.png", image_size=32
    )
    assert _read_png(distance_png) == (400, 500)


def test_attention_heads_refuses_a_layer_out_of_range(token_model, tmp_path):
    model, images = token_model
    maps = visualize.attention_maps(model, images)
    with pytest.raises(ValueError, match=r"layer 2 is out of range: the model has 2 blocks"):
        visualize.plot_attention_heads(images, maps, tmp_path / "h.png", layer=2)
    assert not (tmp_path / "h.png").exists()


def test_save_figures_writes_all_figures_for_a_hybrid_and_keeps_existing_ones(hybrid_model, tmp_path):
    model, images = hybrid_model
    written = visualize.save_figures(model, images, tmp_path / "figures", num_filters=4)
    assert sorted(written) == sorted(visualize.FIGURE_FILES)
    for path in written.values():
        _read_png(path)
    before = {path: open(path, "rb").read() for path in written.values()}
    with pytest.raises(ValueError, match="already exist; pass overwrite=True"):
        visualize.save_figures(model, images[:1], tmp_path / "figures")
    assert {path: open(path, "rb").read() for path in written.values()} == before


# --------------------------------------------------------------------------- files and the command
def _write_pngs(images, folder):
    os.makedirs(folder, exist_ok=True)
    paths = []
    for index, image in enumerate(images):
        pixels = np.round((image + 1.0) * 127.5).clip(0, 255).astype(np.uint8)
        path = os.path.join(folder, f"image_{index}.png")
        Image.fromarray(pixels.squeeze(-1) if pixels.shape[-1] == 1 else pixels).save(path)
        paths.append(path)
    return paths


def test_resolve_model_accepts_a_model_a_keras_file_a_run_folder_and_a_checkpoint(token_model, tmp_path):
    model, images = token_model
    assert visualize.resolve_model(model) is model
    (tmp_path / "run").mkdir()
    model.save(tmp_path / "run" / "model.keras")
    expected = visualize.attention_maps(model, images)[1]
    for source in (tmp_path / "run", tmp_path / "run" / "model.keras", os.path.join(DATA, "vit_token.npz")):
        loaded = visualize.resolve_model(str(source))
        np.testing.assert_allclose(visualize.attention_maps(loaded, images)[1], expected, atol=1e-5)
    (tmp_path / "empty_run").mkdir()
    with pytest.raises(FileNotFoundError, match="has no model.keras"):
        visualize.resolve_model(tmp_path / "empty_run")
    with pytest.raises(FileNotFoundError, match="missing.keras"):
        visualize.resolve_model(tmp_path / "missing.keras")
    (tmp_path / "weights.h5").write_bytes(b"not a model")
    with pytest.raises(ValueError, match=r"weights\.h5.*expected a \.keras file"):
        visualize.resolve_model(tmp_path / "weights.h5")


def test_load_images_resizes_to_the_model_and_scales_to_minus_one_one(token_model, tmp_path):
    model, _ = token_model
    path = tmp_path / "big.png"
    Image.fromarray(np.full((40, 50, 3), 255, np.uint8)).save(path)
    images = visualize.load_images([str(path)], model)
    assert images.shape == (1, 32, 32, 3)
    np.testing.assert_allclose(images, 1.0, atol=1e-6)  # the antialiased resize sums weights in float32
    (tmp_path / "notes.png").write_text("not an image")
    with pytest.raises(ValueError, match="notes.png.*as an image"):
        visualize.load_images([str(tmp_path / "notes.png")], model)


def test_visualize_command_writes_the_figures_and_refuses_to_overwrite(token_model, tmp_path, capsys):
    model, images = token_model
    (tmp_path / "run").mkdir()
    model.save(tmp_path / "run" / "model.keras")
    paths = _write_pngs(images, tmp_path / "images")
    out = tmp_path / "figures"
    assert main(["visualize", str(tmp_path / "run"), *paths, "--output", str(out), "--layer", "0"]) == 0
    printed = capsys.readouterr().out.split()
    assert sorted(os.path.basename(p) for p in printed) == sorted(visualize.FIGURE_FILES.values())
    assert _read_png(out / "attention_rollout.png") == (400, 3 * 200)

    assert main(["visualize", str(tmp_path / "run"), paths[0], "--output", str(out)]) == 2
    assert "keras-vit visualize: error:" in capsys.readouterr().err
    assert main(["visualize", str(tmp_path / "run"), paths[0], "--output", str(out), "--overwrite"]) == 0
    assert _read_png(out / "attention_rollout.png") == (400, 200)


def test_visualize_command_reports_bad_input(token_model, tmp_path, capsys):
    model, images = token_model
    paths = _write_pngs(images[:1], tmp_path / "images")
    checkpoint = os.path.join(DATA, "vit_token.npz")
    assert main(["visualize", str(tmp_path / "nowhere"), *paths, "--output", str(tmp_path / "a")]) == 2
    assert "nowhere" in capsys.readouterr().err
    assert main(["visualize", checkpoint, str(tmp_path / "missing.png"), "--output", str(tmp_path / "b")]) == 2
    assert "missing.png' does not exist" in capsys.readouterr().err
    assert main(["visualize", checkpoint, *paths, "--output", str(tmp_path / "c"), "--layer", "5"]) == 2
    assert "layer 5 is out of range" in capsys.readouterr().err
    assert not (tmp_path / "c").exists()
