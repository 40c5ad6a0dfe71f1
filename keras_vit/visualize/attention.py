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

The figures are drawn by :mod:`keras_vit.visualize.figures`.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Sequence

import keras
import numpy as np
from keras import ops

from keras_vit import run_folder
from keras_vit.core.layers import Patches, PatchEncoder, TransformerBlock
from keras_vit.core.image_spec import ImageSpec
from keras_vit.data import scale_pixels
from keras_vit.data.images import read_images

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
def vit_layers(model):
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
            checkpoint (built with :func:`keras_vit.weights.npz.from_npz`).

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
        path = run_folder.resolve_model_path(path)
    elif not os.path.exists(path):
        raise FileNotFoundError(f"No model at {path!r}: expected a .keras file, a run folder or a .npz checkpoint.")
    if path.endswith(".keras"):
        return run_folder.load_model(path)
    if path.endswith(".npz"):
        from keras_vit.weights.npz import from_npz  # noqa: PLC0415  (keeps import light)

        return from_npz(path)
    raise ValueError(
        f"Cannot load a model from {path!r}: expected a .keras file, a run folder holding "
        f"{run_folder.MODEL_FILE}, or an original .npz checkpoint."
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
    if not paths:
        raise ValueError("No image files given; pass at least one PNG or JPEG file.")
    height, width, channels = _input_layout(model)
    if channels not in (1, 3):
        raise ValueError(f"Image files give 1 or 3 channels; the model takes {channels}.")
    # Resized and cropped as the model's spec says, kept in [-1, 1] for the figures.
    spec = dataclasses.replace(ImageSpec.of(model), mean=(0.5,) * channels, std=(0.5,) * channels, pixels_inside=False)
    images, _, errors = read_images(paths, spec)
    for path, reason in errors.items():
        if not os.path.exists(path):
            raise FileNotFoundError(f"Image file {path!r} does not exist.")
        raise ValueError(f"Cannot read {path!r} as an image ({reason}); expected a PNG or JPEG file.")
    return images


def check_images(model, images):
    """(B, H, W, C) float32 inputs for the model, held to the model's own pixel rules:
    integer pixels are refused (with the model's message) unless the model takes 0-255
    pixels itself (``include_preprocessing``), when they are passed on unscaled."""
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
    check_pixels = getattr(model, "_check_images", None)  # the model's call() check: the same rule, the same words
    if check_pixels is not None:
        check_pixels(images)
    elif np.issubdtype(images.dtype, np.integer) or images.dtype == bool:
        raise ValueError(
            f"{model.name} takes float images scaled to [-1, 1]; received {images.dtype} pixels. Scale them with "
            f"keras_vit.preprocess_input(images) (x / 127.5 - 1) first."
        )
    return images.astype("float32")


def _attention_batches(model, images, batch_size, progress):
    """Yields, per batch of images, the list of per-layer (b, heads, T, T) NumPy arrays."""
    _, blocks = vit_layers(model)
    # Figures show [-1, 1] images; the model takes what its input spec says.
    images = ImageSpec.of(model).from_unit_range(check_images(model, images))
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
        images: (B, H, W, C) images in [-1, 1] (turned into what the model takes by its
            ``image_spec``); uint8 arrays are scaled with ``x / 127.5 - 1`` first; grey
            images may be (B, H, W).
        batch_size: images per forward pass.
        progress: show a progress bar over the batches.

    Returns:
        An :class:`AttentionMaps` list, one float32 (B, heads, T, T) array per block (row
        q holds query token q's attention over the T key tokens and sums to 1), with
        T = grid_h * grid_w, plus 1 for the class token (token 0) when the model has one.

    Raises:
        ValueError: the images do not fit the model, or the model is not a keras_vit model.
    """
    encoder, _ = vit_layers(model)
    per_batch = list(_attention_batches(model, images, batch_size, progress))
    maps = [np.concatenate(layer_maps) for layer_maps in zip(*per_batch)]
    height, width, _ = _input_layout(model)
    return AttentionMaps(maps, encoder.grid_size, encoder.use_class_token, (height, width))


def map_layout(maps, grid_size, has_class_token):
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
    stacked, (grid_h, grid_w), has_class_token = map_layout(maps, grid_size, has_class_token)
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
    encoder, _ = vit_layers(model)
    batches = _attention_batches(model, images, batch_size, progress)
    totals = [attention_distance_totals(maps, model, encoder) for maps in batches]
    return sum(total for total, _ in totals) / sum(count for _, count in totals)


def attention_distance_totals(maps, model, encoder):
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
    encoder, _ = vit_layers(model)
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
    encoder, _ = vit_layers(model)
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
