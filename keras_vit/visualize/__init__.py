"""Seeing inside a model: attention maps and rollout (:mod:`~keras_vit.visualize.attention`,
computed) and the paper's figures (:mod:`~keras_vit.visualize.figures`, drawn)."""

from keras_vit.visualize.attention import (
    AttentionMaps,
    attention_maps,
    attention_rollout,
    embedding_filters,
    load_images,
    mean_attention_distance,
    position_embedding_similarity,
    resolve_model,
    upsample_heatmap,
)
from keras_vit.visualize.figures import (
    FIGURE_FILES,
    head_attention,
    plot_attention_heads,
    plot_attention_rollout,
    plot_embedding_filters,
    plot_mean_attention_distance,
    plot_position_embedding_similarity,
    save_figures,
)
