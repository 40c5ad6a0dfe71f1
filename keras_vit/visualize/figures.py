"""The paper's figures as PNG files: attention rollout, per-head attention, Fig. 7.

Each ``plot_*`` function draws what :mod:`keras_vit.visualize.attention` computed, with
matplotlib's Agg renderer (no display needed) at a fixed size; :func:`save_figures`
writes all of them for the ``keras-vit visualize`` command.
"""

from __future__ import annotations

import math
import os
from typing import Dict

import numpy as np

from keras_vit.files import replaced_atomically
from keras_vit.visualize.attention import (
    attention_distance_totals,
    check_images,
    vit_layers,
    attention_maps,
    attention_rollout,
    map_layout,
    embedding_filters,
    load_images,
    position_embedding_similarity,
    resolve_model,
    upsample_heatmap,
)

FIGURE_DPI = 100
PANEL_INCHES = 2.0  # one image panel in the rollout and per-head figures
FILTER_INCHES = 1.0  # one embedding filter
TITLE_INCHES = 0.5  # room for a figure title above the panels
SIMILARITY_FIGURE_INCHES = (6.0, 5.0)
DISTANCE_FIGURE_INCHES = (5.0, 4.0)
HEATMAP_ALPHA = 0.55


def _figure(width_inches, height_inches):
    from matplotlib.figure import Figure  # noqa: PLC0415  (Agg canvas, no display or pyplot state)

    return Figure(figsize=(width_inches, height_inches), dpi=FIGURE_DPI)


def _save(figure, path):
    path = os.fspath(path)
    directory = os.path.dirname(path)
    if directory:
        os.makedirs(directory, exist_ok=True)
    with replaced_atomically(path) as temporary:
        figure.savefig(temporary, dpi=FIGURE_DPI, format="png")
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
    stacked, (grid_h, grid_w), has_class_token = map_layout(maps, None, None)
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
    encoder, blocks = vit_layers(model)
    _check_layer(layer, len(blocks))
    is_file_list = isinstance(images, (list, tuple)) and images and isinstance(images[0], (str, os.PathLike))
    images = load_images(images, model) if is_file_list else check_images(model, images)

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
    total, count = attention_distance_totals(maps, model, encoder)
    distances = total / count
    written["attention_distance"] = plot_mean_attention_distance(
        distances, targets["attention_distance"], image_size=maps.image_size
    )
    return written
