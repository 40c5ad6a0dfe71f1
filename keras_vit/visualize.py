"""Seeing inside a Vision Transformer: attention maps, attention rollout and the paper's Fig. 7.

The attention probabilities come from the model's own ``TransformerBlock`` layers, called
with ``return_attention_scores=True`` on the tokens the model itself produces (there is no
second attention implementation here). Everything after that is NumPy:

- :func:`attention_maps`: per layer, (B, heads, T, T) attention probabilities;
- :func:`attention_rollout`: Abnar and Zuidema (2020), one (grid_h, grid_w) map per image;
- :func:`position_embedding_similarity`: cosine similarity of the position embeddings
  (paper Fig. 7, centre);
- :func:`embedding_filters`: principal components of the patch projection (Fig. 7, left);
- :func:`mean_attention_distance`: attention distance per layer and head (Fig. 7, right).

The ``plot_*`` functions write PNG figures with matplotlib's Agg renderer (no display
needed) at a fixed size, and :func:`save_figures` writes all of them for the
``keras-vit visualize`` command.
"""

from __future__ import annotations

import math
import os
from typing import Dict, Optional, Sequence

import keras
import numpy as np
from keras import ops

from keras_vit.data import scale_pixels
from keras_vit.layers import Patches, PatchEncoder, TransformerBlock

FIGURE_DPI = 100
PANEL_INCHES = 2.0  # one image panel in the rollout and per-head figures
FILTER_INCHES = 1.0  # one embedding filter
TITLE_INCHES = 0.5  # room for a figure title above the panels
SIMILARITY_FIGURE_INCHES = (6.0, 5.0)
DISTANCE_FIGURE_INCHES = (5.0, 4.0)
MODEL_FILE_NAME = "model.keras"  # inside a run folder, saved_models/<run>/model.keras
HEATMAP_ALPHA = 0.55


class AttentionMaps(list):
    """Per-layer attention probabilities, each (B, heads, T, T), with the token layout.

    A plain list of NumPy arrays (layer 0 first) that also carries what is needed to read
    the tokens as image positions; slicing it returns a plain list.

    Attributes:
        grid_size: (grid_h, grid_w) of the patch tokens (the stem's feature map for hybrids).
        has_class_token: whether token 0 is the class token (T = grid_h * grid_w + 1).
        image_size: (height, width) of the model's input images.
    """

    def __init__(self, maps, grid_size, has_class_token, image_size):
        super().__init__(maps)
        self.grid_size = tuple(grid_size)
        self.has_class_token = bool(has_class_token)
        self.image_size = tuple(image_size)


# --------------------------------------------------------------------------- the model
def _vit_layers(model):
    """The model's PatchEncoder and its TransformerBlocks in order, or a ValueError."""
    if not isinstance(model, keras.Model):
        raise ValueError(
            f"Expected a keras_vit model (keras.Model with a PatchEncoder and TransformerBlocks); "
            f"got {type(model).__name__}. Load files with keras_vit.visualize.resolve_model."
        )
    encoders = [layer for layer in model.layers if isinstance(layer, PatchEncoder)]
    blocks = [layer for layer in model.layers if isinstance(layer, TransformerBlock)]
    if len(encoders) != 1 or not blocks:
        raise ValueError(
            f"Model {model.name!r} has {len(encoders)} PatchEncoder and {len(blocks)} "
            f"TransformerBlock layers; expected one PatchEncoder and at least one block, as in "
            f"keras_vit.VisionTransformer."
        )
    # The blocks are re-applied one after the other, so each must feed the next directly.
    for previous, block in zip(blocks, blocks[1:]):
        if block.input is not previous.output:
            raise ValueError(
                f"In model {model.name!r}, {block.name!r} does not take {previous.name!r}'s output "
                f"directly; expected the blocks chained as in keras_vit.VisionTransformer."
            )
    return encoders[0], blocks


def _input_layout(model):
    """(height, width, channels) of the model's input images."""
    _, height, width, channels = model.input_shape
    return height, width, channels


def _cell_size(model, encoder):
    """Image pixels per grid cell (patch size, times the stem's stride for hybrids)."""
    height, width, _ = _input_layout(model)
    return height / encoder.grid_size[0], width / encoder.grid_size[1]


def resolve_model(model_or_path):
    """Returns a keras_vit model given the model itself or a file that holds one.

    Args:
        model_or_path: a ``keras.Model`` (returned as is); a ``.keras`` file; a run folder
            holding ``model.keras`` (``saved_models/<run>``); or an original ``.npz``
            checkpoint (built with :func:`keras_vit.checkpoints.from_npz`).

    Returns:
        The model.

    Raises:
        FileNotFoundError: the path, or ``model.keras`` in the folder, does not exist.
        ValueError: the path is neither a folder, a ``.keras`` nor a ``.npz`` file.
    """
    if isinstance(model_or_path, keras.Model):
        return model_or_path
    path = os.fspath(model_or_path)
    if os.path.isdir(path):
        model_file = os.path.join(path, MODEL_FILE_NAME)
        if not os.path.isfile(model_file):
            raise FileNotFoundError(
                f"Run folder {path!r} has no {MODEL_FILE_NAME}; expected "
                f"saved_models/<run>/{MODEL_FILE_NAME} as written by training."
            )
        path = model_file
    elif not os.path.exists(path):
        raise FileNotFoundError(f"No model at {path!r}: expected a .keras file, a run folder or a .npz checkpoint.")
    if path.endswith(".keras"):
        return keras.saving.load_model(path)
    if path.endswith(".npz"):
        from keras_vit.checkpoints import from_npz  # noqa: PLC0415  (keeps import light)

        return from_npz(path)
    raise ValueError(
        f"Cannot load a model from {path!r}: expected a .keras file, a run folder holding "
        f"{MODEL_FILE_NAME}, or an original .npz checkpoint."
    )


def load_images(paths: Sequence[str], model) -> np.ndarray:
    """Reads image files as model inputs: resized, grey or RGB as the model wants, in [-1, 1].

    Args:
        paths: image files (PNG, JPEG, BMP, GIF), read as ``keras-vit predict`` reads them.
        model: the keras_vit model the images are for.

    Returns:
        float32 (B, H, W, C) scaled by ``x / 127.5 - 1`` (the model's input range).

    Raises:
        FileNotFoundError: a file does not exist.
        ValueError: no paths, or a file that is not a readable image.
    """
    from keras_vit.predict import read_images  # noqa: PLC0415  (the preprocessing predict uses)

    if not paths:
        raise ValueError("No image files given; pass at least one PNG or JPEG file.")
    height, width, channels = _input_layout(model)
    if channels not in (1, 3):
        raise ValueError(f"Image files give 1 or 3 channels; the model takes {channels}.")
    images, _, errors = read_images(paths, (height, width), channels)
    for path, reason in errors.items():
        if not os.path.exists(path):
            raise FileNotFoundError(f"Image file {path!r} does not exist.")
        raise ValueError(f"Cannot read {path!r} as an image ({reason}); expected a PNG or JPEG file.")
    return images


def _check_images(model, images):
    """(B, H, W, C) float32 inputs for the model; uint8 arrays are scaled to [-1, 1]."""
    images = np.asarray(images)
    height, width, channels = _input_layout(model)
    if images.ndim == 3 and channels == 1:
        images = images[..., None]  # (B, H, W) grey images
    if images.ndim != 4 or images.shape[1:] != (height, width, channels):
        raise ValueError(
            f"Images of shape {images.shape} do not fit model {model.name!r}: expected "
            f"(batch, {height}, {width}, {channels})"
            + (f" or (batch, {height}, {width})" if channels == 1 else "")
            + "."
        )
    if len(images) == 0:
        raise ValueError("Got an empty batch of images; pass at least one image.")
    if images.dtype == np.uint8:
        return scale_pixels(images)
    return images.astype("float32")


def _attention_batches(model, images, batch_size, progress):
    """Yields, per batch of images, the list of per-layer (b, heads, T, T) NumPy arrays."""
    _, blocks = _vit_layers(model)
    images = _check_images(model, images)
    if batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer; got {batch_size!r}.")
    # The model's own graph up to the first block (stem, patches, embedding), then its
    # blocks one by one, each asked for its attention probabilities.
    tokens_model = keras.Model(model.input, blocks[0].input)
    starts = range(0, len(images), batch_size)
    if progress:
        from tqdm.auto import tqdm  # noqa: PLC0415

        starts = tqdm(starts, desc="attention", unit="batch")
    for start in starts:
        x = tokens_model(images[start : start + batch_size], training=False)
        maps = []
        for block in blocks:
            x, scores = block(x, training=False, return_attention_scores=True)
            maps.append(ops.convert_to_numpy(ops.cast(scores, "float32")))
        yield maps


# --------------------------------------------------------------------------- attention
def attention_maps(model, images, *, batch_size: int = 32, progress: bool = False) -> AttentionMaps:
    """The attention probabilities of every encoder block, computed by the model's own layers.

    Args:
        model: a keras_vit model (token or gap pooling, any grid, hybrids included).
        images: (B, H, W, C) model inputs in [-1, 1]; uint8 arrays are scaled with
            ``x / 127.5 - 1`` first; grey images may be (B, H, W).
        batch_size: images per forward pass.
        progress: show a progress bar over the batches.

    Returns:
        An :class:`AttentionMaps` list, one float32 (B, heads, T, T) array per block (row
        q holds query token q's attention over the T key tokens and sums to 1), with
        T = grid_h * grid_w, plus 1 for the class token (token 0) when the model has one.

    Raises:
        ValueError: the images do not fit the model, or the model is not a keras_vit model.
    """
    encoder, _ = _vit_layers(model)
    per_batch = list(_attention_batches(model, images, batch_size, progress))
    maps = [np.concatenate(layer_maps) for layer_maps in zip(*per_batch)]
    height, width, _ = _input_layout(model)
    return AttentionMaps(maps, encoder.grid_size, encoder.use_class_token, (height, width))


def _map_layout(maps, grid_size, has_class_token):
    """Checks per-layer maps and returns (stacked (L, B, heads, T, T), grid, class token)."""
    grid_size = getattr(maps, "grid_size", None) if grid_size is None else grid_size
    has_class_token = getattr(maps, "has_class_token", None) if has_class_token is None else has_class_token
    if grid_size is None or has_class_token is None:
        raise ValueError(
            "Plain arrays do not say how tokens map to the image: pass grid_size= and "
            "has_class_token=, or the AttentionMaps that attention_maps returns."
        )
    grid_h, grid_w = grid_size
    expected_tokens = grid_h * grid_w + int(bool(has_class_token))
    if len(maps) == 0:
        raise ValueError("Got no attention maps; expected one (B, heads, T, T) array per layer.")
    shapes = {np.shape(layer_map) for layer_map in maps}
    shape = next(iter(shapes))
    if len(shapes) != 1 or len(shape) != 4 or shape[2:] != (expected_tokens, expected_tokens):
        raise ValueError(
            f"Attention maps of shapes {sorted(shapes)} do not fit a {grid_h}x{grid_w} grid"
            f"{' with a class token' if has_class_token else ''}: expected every layer to be "
            f"(B, heads, {expected_tokens}, {expected_tokens})."
        )
    return np.stack([np.asarray(m, dtype="float64") for m in maps]), (grid_h, grid_w), bool(has_class_token)


def attention_rollout(maps, *, grid_size=None, has_class_token=None) -> np.ndarray:
    """Attention rollout (Abnar and Zuidema, 2020): how much each patch flows to the output.

    Per layer: average the heads, add the identity (the residual connection), renormalise
    the rows; then multiply through the layers, ``R = A_L @ ... @ A_1``. The class token's
    row of R (token models) or the mean of its rows (gap models), over the patch tokens, is
    the map. :func:`upsample_heatmap` brings it to the image size for overlays.

    Args:
        maps: what :func:`attention_maps` returns, or any sequence of (B, heads, T, T)
            arrays with ``grid_size`` and ``has_class_token`` given.
        grid_size: (grid_h, grid_w); read from ``maps`` when None.
        has_class_token: whether token 0 is a class token; read from ``maps`` when None.

    Returns:
        float32 (B, grid_h, grid_w).

    Raises:
        ValueError: the maps' shapes do not fit the grid, or the layout is unknown.
    """
    stacked, (grid_h, grid_w), has_class_token = _map_layout(maps, grid_size, has_class_token)
    tokens = stacked.shape[-1]
    rollout = None
    for layer_map in stacked:  # (B, heads, T, T), layer 0 first
        joint = layer_map.mean(axis=1) + np.eye(tokens)
        joint /= joint.sum(axis=-1, keepdims=True)
        rollout = joint if rollout is None else joint @ rollout
    if has_class_token:
        flow = rollout[:, 0, 1:]
    else:
        flow = rollout.mean(axis=1)
    return flow.reshape(-1, grid_h, grid_w).astype("float32")


def upsample_heatmap(heatmaps, image_size) -> np.ndarray:
    """Bilinearly resizes (B, grid_h, grid_w) maps to (B, height, width) for overlays.

    Args:
        heatmaps: (B, grid_h, grid_w), e.g. from :func:`attention_rollout`.
        image_size: int or (height, width).

    Returns:
        float32 (B, height, width).
    """
    heatmaps = np.asarray(heatmaps, dtype="float32")
    if heatmaps.ndim != 3:
        raise ValueError(f"Expected heat maps of shape (B, grid_h, grid_w); got {heatmaps.shape}.")
    size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    resized = ops.image.resize(heatmaps[..., None], size, interpolation="bilinear", data_format="channels_last")
    return ops.convert_to_numpy(resized)[..., 0]


def _grid_distances(grid_size, cell_size):
    """(N, N) distances in pixels between the centres of the grid's cells."""
    rows, columns = np.mgrid[: grid_size[0], : grid_size[1]]
    centres = np.stack([rows.ravel() * cell_size[0], columns.ravel() * cell_size[1]], axis=-1)
    return np.linalg.norm(centres[:, None, :] - centres[None, :, :], axis=-1)


def mean_attention_distance(model, images, *, batch_size: int = 32, progress: bool = False) -> np.ndarray:
    """Per layer and head, the image distance attention spans, weighted by attention (Fig. 7, right).

    For each patch query, the distance in pixels to every patch key (between cell centres;
    for hybrids a cell is patch size times the stem's stride) is averaged with the query's
    attention weights; this is averaged over queries and images. The class token has no
    position, so its row and column are left out and each row is renormalised over the
    patches.

    Args:
        model: a keras_vit model.
        images: model inputs as for :func:`attention_maps`.
        batch_size: images per forward pass (maps are reduced batch by batch).
        progress: show a progress bar over the batches.

    Returns:
        float64 (num_layers, num_heads), in pixels of the input image.

    Raises:
        ValueError: the images do not fit the model, or the model is not a keras_vit model.
    """
    encoder, _ = _vit_layers(model)
    batches = _attention_batches(model, images, batch_size, progress)
    totals = [_attention_distance_totals(maps, model, encoder) for maps in batches]
    return sum(total for total, _ in totals) / sum(count for _, count in totals)


def _attention_distance_totals(maps, model, encoder):
    """Sum over images and patch queries of the attention-weighted distance, and the count."""
    distances = _grid_distances(encoder.grid_size, _cell_size(model, encoder))
    skip = int(encoder.use_class_token)
    patches = np.stack(maps)[..., skip:, skip:].astype("float64")  # (L, B, heads, N, N)
    patches /= patches.sum(axis=-1, keepdims=True)
    per_query = (patches * distances).sum(axis=-1)  # (L, B, heads, N)
    return per_query.sum(axis=(1, 3)), per_query.shape[1] * per_query.shape[3]


# --------------------------------------------------------------------------- embeddings
def position_embedding_similarity(model) -> np.ndarray:
    """Cosine similarity of each grid position's embedding with every other (Fig. 7, centre).

    Works for learned (the class token's embedding is left out), learned 2D and sincos
    embeddings.

    Args:
        model: a keras_vit model.

    Returns:
        float32 (grid_h, grid_w, grid_h, grid_w): ``[i, j]`` is the similarity map of
        position (i, j) with all positions.

    Raises:
        ValueError: the model has no position embedding (``position_embedding="none"``).
    """
    encoder, _ = _vit_layers(model)
    embedding = encoder.patch_position_embedding()
    if embedding is None:
        raise ValueError(
            f"Model {model.name!r} has position_embedding={encoder.position_embedding!r}: there is "
            f"nothing to compare; expected 'learned', 'learned_2d' or 'sincos2d'."
        )
    embedding = ops.convert_to_numpy(embedding)[0].astype("float64")  # (N, D)
    norms = np.linalg.norm(embedding, axis=-1, keepdims=True)
    unit = embedding / np.maximum(norms, 1e-12)
    grid_h, grid_w = encoder.grid_size
    return (unit @ unit.T).reshape(grid_h, grid_w, grid_h, grid_w).astype("float32")


def embedding_filters(model, k: int = 28) -> np.ndarray:
    """The top principal components of the patch projection's filters (Fig. 7, left).

    Each of the D columns of the projection kernel is a filter over a (P_h, P_w, C) patch;
    these D filters are centred and their principal components (largest variance first)
    returned as patches. For hybrids C is the stem's channel count, not colour.

    Args:
        model: a keras_vit model.
        k: how many components; at most ``min(P_h * P_w * C, D - 1)`` exist, and no more
            than those are returned.

    Returns:
        float32 (min(k, available), P_h, P_w, C), each component of unit norm, its sign
        chosen so that its largest entry is positive.

    Raises:
        ValueError: k is not a positive integer.
    """
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise ValueError(f"k must be a positive integer; got {k!r}.")
    encoder, _ = _vit_layers(model)
    kernel = ops.convert_to_numpy(encoder.projection.kernel).astype("float64")  # (P*P*C, D)
    filters = kernel.T - kernel.T.mean(axis=0, keepdims=True)  # (D, P*P*C)
    _, _, components = np.linalg.svd(filters, full_matrices=False)
    available = min(filters.shape[1], max(filters.shape[0] - 1, 1))
    components = components[: min(k, available)]
    largest = np.take_along_axis(components, np.abs(components).argmax(axis=1)[:, None], axis=1)
    components *= np.where(largest < 0, -1.0, 1.0)
    patch_h, patch_w = next(layer for layer in model.layers if isinstance(layer, Patches)).patch_size
    channels = kernel.shape[0] // (patch_h * patch_w)
    return components.reshape(-1, patch_h, patch_w, channels).astype("float32")


# --------------------------------------------------------------------------- figures
def _figure(width_inches, height_inches):
    from matplotlib.figure import Figure  # noqa: PLC0415  (Agg canvas, no display or pyplot state)

    return Figure(figsize=(width_inches, height_inches), dpi=FIGURE_DPI)


def _save(figure, path):
    path = os.fspath(path)
    directory = os.path.dirname(path)
    if directory:
        os.makedirs(directory, exist_ok=True)
    figure.savefig(path, dpi=FIGURE_DPI, format="png")
    return path


def _display_image(image):
    """A model input in [-1, 1] as an image matplotlib shows: (H, W) grey or (H, W, 3)."""
    image = np.clip((np.asarray(image, dtype="float32") + 1.0) / 2.0, 0.0, 1.0)
    return image[..., 0] if image.shape[-1] == 1 else image


def _normalised(heatmap):
    span = heatmap.max() - heatmap.min()
    return (heatmap - heatmap.min()) / span if span > 0 else np.zeros_like(heatmap)


def _show_overlay(axes, image, heatmap, title):
    shown = _display_image(image)
    axes.imshow(shown, cmap="gray" if shown.ndim == 2 else None, vmin=0.0, vmax=1.0)
    axes.imshow(_normalised(heatmap), cmap="inferno", alpha=HEATMAP_ALPHA, vmin=0.0, vmax=1.0)
    axes.set_title(title, fontsize=8)
    axes.axis("off")


def _check_image_batch(images, name):
    images = np.asarray(images)
    if images.ndim != 4 or len(images) == 0:
        raise ValueError(f"{name} must be a non-empty (B, H, W, C) batch of model inputs; got shape {images.shape}.")
    return images


def plot_attention_rollout(images, rollout, path) -> str:
    """Each image (top row) and its rollout heat map overlaid (bottom row), as a PNG.

    Args:
        images: (B, H, W, C) model inputs in [-1, 1].
        rollout: (B, grid_h, grid_w) from :func:`attention_rollout`.
        path: the PNG file to write.

    Returns:
        ``path``; the figure is B * 200 by 400 pixels.
    """
    images = _check_image_batch(images, "images")
    rollout = np.asarray(rollout)
    if rollout.ndim != 3 or len(rollout) != len(images):
        raise ValueError(f"Expected a rollout of shape ({len(images)}, grid_h, grid_w); got {rollout.shape}.")
    heatmaps = upsample_heatmap(rollout, images.shape[1:3])
    figure = _figure(len(images) * PANEL_INCHES, 2 * PANEL_INCHES)
    axes = figure.subplots(2, len(images), squeeze=False)
    for i, (image, heatmap) in enumerate(zip(images, heatmaps)):
        shown = _display_image(image)
        axes[0, i].imshow(shown, cmap="gray" if shown.ndim == 2 else None, vmin=0.0, vmax=1.0)
        axes[0, i].set_title(f"image {i}", fontsize=8)
        axes[0, i].axis("off")
        _show_overlay(axes[1, i], image, heatmap, "attention rollout")
    return _save(figure, path)


def head_attention(maps, layer: int) -> np.ndarray:
    """Per head, the attention a layer pays to each patch: (B, heads, grid_h, grid_w).

    The class token's row for token models, the mean over query tokens for gap models.

    Args:
        maps: what :func:`attention_maps` returns.
        layer: block index; negative counts from the last.
    """
    stacked, (grid_h, grid_w), has_class_token = _map_layout(maps, None, None)
    layer = _check_layer(layer, len(stacked))
    layer_map = stacked[layer]
    attention = layer_map[:, :, 0, 1:] if has_class_token else layer_map.mean(axis=2)
    return attention.reshape(*attention.shape[:2], grid_h, grid_w).astype("float32")


def _check_layer(layer, num_layers):
    if not isinstance(layer, int) or isinstance(layer, bool) or not -num_layers <= layer < num_layers:
        raise ValueError(
            f"layer {layer!r} is out of range: the model has {num_layers} blocks, so layer must be "
            f"in 0..{num_layers - 1} (or -{num_layers}..-1 from the last)."
        )
    return layer % num_layers


def plot_attention_heads(images, maps, path, *, layer: int = -1, max_images: int = 4) -> str:
    """For one layer, each head's attention over the patches, overlaid on each image, as a PNG.

    One row per image (at most ``max_images``): the image, then one panel per head (see
    :func:`head_attention` for what a head's map is).

    Args:
        images: (B, H, W, C) model inputs in [-1, 1], those the maps were computed on.
        maps: what :func:`attention_maps` returns.
        path: the PNG file to write.
        layer: block index; negative counts from the last.
        max_images: rows at most.

    Returns:
        ``path``; the figure is (heads + 1) * 200 by rows * 200 + 50 pixels.
    """
    images = _check_image_batch(images, "images")
    attention = head_attention(maps, layer)
    if len(attention) != len(images):
        raise ValueError(f"Got {len(images)} images but attention maps for {len(attention)}; pass the same images.")
    layer_index = _check_layer(layer, len(maps))
    rows = min(len(images), max_images)
    heads = attention.shape[1]
    figure = _figure((heads + 1) * PANEL_INCHES, rows * PANEL_INCHES + TITLE_INCHES)
    axes = figure.subplots(rows, heads + 1, squeeze=False)
    for row in range(rows):
        shown = _display_image(images[row])
        axes[row, 0].imshow(shown, cmap="gray" if shown.ndim == 2 else None, vmin=0.0, vmax=1.0)
        axes[row, 0].set_title(f"image {row}", fontsize=8)
        axes[row, 0].axis("off")
        heatmaps = upsample_heatmap(attention[row], images.shape[1:3])
        for head in range(heads):
            _show_overlay(axes[row, head + 1], images[row], heatmaps[head], f"head {head}")
    what = "class token attention" if maps.has_class_token else "mean attention over queries"
    figure.suptitle(f"encoderblock_{layer_index}: {what} per head", fontsize=10)
    return _save(figure, path)


def plot_position_embedding_similarity(similarity, path) -> str:
    """The similarity map of every grid position, tiled in grid order (Fig. 7, centre), as a PNG.

    Args:
        similarity: (grid_h, grid_w, grid_h, grid_w) from :func:`position_embedding_similarity`.
        path: the PNG file to write.

    Returns:
        ``path``; the figure is 600 by 500 pixels.
    """
    similarity = np.asarray(similarity, dtype="float32")
    if similarity.ndim != 4 or similarity.shape[:2] != similarity.shape[2:]:
        raise ValueError(f"Expected similarity of shape (grid_h, grid_w, grid_h, grid_w); got {similarity.shape}.")
    grid_h, grid_w = similarity.shape[:2]
    # One tile per position with a one-cell gap (NaN, drawn blank) between tiles.
    mosaic = np.full((grid_h * (grid_h + 1) - 1, grid_w * (grid_w + 1) - 1), np.nan, dtype="float32")
    for i in range(grid_h):
        for j in range(grid_w):
            top, left = i * (grid_h + 1), j * (grid_w + 1)
            mosaic[top : top + grid_h, left : left + grid_w] = similarity[i, j]
    figure = _figure(*SIMILARITY_FIGURE_INCHES)
    axes = figure.subplots()
    shown = axes.imshow(mosaic, cmap="viridis", vmin=-1.0, vmax=1.0, interpolation="nearest")
    axes.set_xticks([j * (grid_w + 1) + (grid_w - 1) / 2 for j in range(grid_w)], [str(j + 1) for j in range(grid_w)])
    axes.set_yticks([i * (grid_h + 1) + (grid_h - 1) / 2 for i in range(grid_h)], [str(i + 1) for i in range(grid_h)])
    axes.tick_params(length=0, labelsize=7)
    axes.set_xlabel("input patch column")
    axes.set_ylabel("input patch row")
    axes.set_title("Position embedding similarity", fontsize=10)
    figure.colorbar(shown, ax=axes, label="cosine similarity")
    return _save(figure, path)


def plot_embedding_filters(filters, path, *, columns: int = 7) -> str:
    """The principal components of the embedding filters (Fig. 7, left), as a PNG.

    Components with 1 or 3 channels are drawn as grey or RGB patches, each stretched to
    its own range; others (hybrids, whose channels are the stem's features) as a
    (P_h * P_w, C) array.

    Args:
        filters: (k, P_h, P_w, C) from :func:`embedding_filters`.
        path: the PNG file to write.
        columns: components per row.

    Returns:
        ``path``; the figure is min(k, columns) * 100 by rows * 100 + 50 pixels.
    """
    filters = np.asarray(filters, dtype="float32")
    if filters.ndim != 4 or len(filters) == 0:
        raise ValueError(f"Expected filters of shape (k, P_h, P_w, C); got {filters.shape}.")
    columns = min(columns, len(filters))
    rows = math.ceil(len(filters) / columns)
    figure = _figure(columns * FILTER_INCHES, rows * FILTER_INCHES + TITLE_INCHES)
    axes = figure.subplots(rows, columns, squeeze=False)
    for index, ax in enumerate(axes.flat):
        ax.axis("off")
        if index >= len(filters):
            continue
        component = _normalised(filters[index])
        if component.shape[-1] == 1:
            ax.imshow(component[..., 0], cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
        elif component.shape[-1] == 3:
            ax.imshow(component, interpolation="nearest")
        else:
            ax.imshow(component.reshape(-1, component.shape[-1]), cmap="gray", aspect="auto", interpolation="nearest")
    figure.suptitle(f"Embedding filters: first {len(filters)} principal components", fontsize=10)
    return _save(figure, path)


def plot_mean_attention_distance(distances, path, *, image_size=None) -> str:
    """Mean attention distance of every head against network depth (Fig. 7, right), as a PNG.

    Args:
        distances: (num_layers, num_heads) from :func:`mean_attention_distance`.
        path: the PNG file to write.
        image_size: (height, width); when given, the y axis spans 0 to the image diagonal.

    Returns:
        ``path``; the figure is 500 by 400 pixels.
    """
    distances = np.asarray(distances, dtype="float64")
    if distances.ndim != 2:
        raise ValueError(f"Expected distances of shape (num_layers, num_heads); got {distances.shape}.")
    num_layers, num_heads = distances.shape
    figure = _figure(*DISTANCE_FIGURE_INCHES)
    axes = figure.subplots()
    for head in range(num_heads):
        axes.scatter(np.arange(1, num_layers + 1), distances[:, head], s=18, label=f"head {head}")
    axes.set_xlabel("network depth (layer)")
    axes.set_ylabel("mean attention distance (pixels)")
    axes.set_xticks(np.arange(1, num_layers + 1))
    if image_size is not None:
        height, width = (image_size, image_size) if isinstance(image_size, int) else image_size
        axes.set_ylim(0, math.hypot(height, width))
    if num_heads <= 16:
        axes.legend(fontsize=6, ncol=2)
    axes.set_title("Mean attention distance", fontsize=10)
    figure.tight_layout()
    return _save(figure, path)


FIGURE_FILES = {
    "rollout": "attention_rollout.png",
    "heads": "attention_heads.png",
    "position_similarity": "position_embedding_similarity.png",
    "embedding_filters": "embedding_filters.png",
    "attention_distance": "mean_attention_distance.png",
}


def save_figures(
    model,
    images,
    out_dir,
    *,
    layer: int = -1,
    num_filters: int = 28,
    overwrite: bool = False,
    batch_size: int = 32,
) -> Dict[str, str]:
    """Writes every figure for a model and some images to ``out_dir`` (``keras-vit visualize``).

    Figures: ``attention_rollout.png``, ``attention_heads.png`` (for ``layer``),
    ``position_embedding_similarity.png`` (left out when the model has no position
    embedding), ``embedding_filters.png`` and ``mean_attention_distance.png``.

    Args:
        model: a keras_vit model, a ``.keras`` file, a run folder holding ``model.keras``
            or an original ``.npz`` checkpoint (see :func:`resolve_model`).
        images: (B, H, W, C) model inputs, or a list of image files (see :func:`load_images`).
        out_dir: folder for the PNG files (created if missing).
        layer: the block drawn head by head; negative counts from the last.
        num_filters: principal components of the embedding filters to draw.
        overwrite: replace figures already in ``out_dir``; otherwise refuse before any work.
        batch_size: images per forward pass.

    Returns:
        A dict from figure name to the PNG path written.

    Raises:
        ValueError: a figure already exists and ``overwrite`` is false, ``layer`` is out of
            range, ``num_filters`` is not positive, or the images do not fit the model.
        FileNotFoundError: the model or an image file does not exist.
    """
    if not isinstance(num_filters, int) or isinstance(num_filters, bool) or num_filters < 1:
        raise ValueError(f"num_filters must be a positive integer; got {num_filters!r}.")
    out_dir = os.fspath(out_dir)
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise ValueError(f"--out {out_dir!r} is a file; expected a folder for the figures.")
    targets = {name: os.path.join(out_dir, file_name) for name, file_name in FIGURE_FILES.items()}
    existing = [path for path in targets.values() if os.path.exists(path)]
    if existing and not overwrite:
        raise ValueError(
            f"{', '.join(existing)} already exist; pass overwrite=True (--overwrite) to replace "
            f"them, or choose another output folder."
        )
    model = resolve_model(model)
    encoder, blocks = _vit_layers(model)
    _check_layer(layer, len(blocks))
    is_file_list = isinstance(images, (list, tuple)) and images and isinstance(images[0], (str, os.PathLike))
    images = load_images(images, model) if is_file_list else _check_images(model, images)

    maps = attention_maps(model, images, batch_size=batch_size)
    written = {
        "rollout": plot_attention_rollout(images, attention_rollout(maps), targets["rollout"]),
        "heads": plot_attention_heads(images, maps, targets["heads"], layer=layer),
    }
    if encoder.patch_position_embedding() is not None:
        similarity = position_embedding_similarity(model)
        written["position_similarity"] = plot_position_embedding_similarity(similarity, targets["position_similarity"])
    filters = embedding_filters(model, num_filters)
    written["embedding_filters"] = plot_embedding_filters(filters, targets["embedding_filters"])
    total, count = _attention_distance_totals(maps, model, encoder)
    distances = total / count
    written["attention_distance"] = plot_mean_attention_distance(
        distances, targets["attention_distance"], image_size=maps.image_size
    )
    return written
