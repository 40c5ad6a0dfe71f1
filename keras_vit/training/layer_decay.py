"""Layer-wise learning-rate decay and the weight-decay exclusions of BEiT / MAE / timm fine-tuning.

timm's ``param_groups_layer_decay`` gives every parameter a layer id from the model's
``group_matcher``: 0 for the stem (patch embedding, class / distillation / register
tokens, position embedding), ``i + 1`` for block ``i``, the final norm with the last block
(timm's ``MATCH_PREV_GROUP``), and everything unmatched (fc-norm, pre-logits, heads) one
past it. A parameter of layer id ``k`` learns at ``layer_decay ** (max_id - k)`` times the
learning rate: the head at 1, the embeddings lowest. The same function excludes from weight
decay what timm does: parameters of one dimension or less, biases and the tokens and
position embeddings of ``VisionTransformer.no_weight_decay``.

Here the layer names of :class:`keras_vit.VisionTransformer` stand for timm's:
``embedding`` (and the hybrid's ResNet stem) is ``patch_embed``/``cls_token``/...,
``encoderblock_{i}`` is ``blocks.{i}``, ``encoder_norm`` is ``norm``.
"""

from __future__ import annotations

import re
from typing import Dict

# After the final norm: timm's unmatched parameters, its last group. Every other layer that
# is not a block or the final norm comes before the blocks (embedding, hybrid ResNet stem).
HEAD_LAYERS = ("fc_norm", "pre_logits", "head", "head_dist")
# The tokens and position embeddings of timm's no_weight_decay(), by their Keras names.
NO_WEIGHT_DECAY_NAMES = ("cls", "dist_token", "registers", "pos_embedding", "row_embedding", "column_embedding")
_BLOCK = re.compile(r"^encoderblock_(\d+)$")


def check_layer_decay(value, name="layer_decay"):
    """Raises ``ValueError`` unless ``value`` is None or a number in (0, 1]."""
    from keras_vit.core.config import is_number, refuse

    if value is not None and not (is_number(value) and 0 < value <= 1):
        refuse(name, value, "null or a number in (0, 1], e.g. 0.65 (1 disables the decay)")


def layer_id(variable_path: str, num_layers: int) -> int:
    """timm's layer id of the variable at ``variable_path`` (``"encoderblock_3/..."``) in a
    ViT of ``num_layers`` blocks: 0 stem, ``i + 1`` block ``i``, ``num_layers`` the final
    norm, ``num_layers + 1`` the rest (fc-norm, pre-logits, heads)."""
    top = variable_path.split("/")[0]
    block = _BLOCK.match(top)
    if block:
        return int(block.group(1)) + 1
    if top == "encoder_norm":
        return num_layers
    return num_layers + 1 if top in HEAD_LAYERS else 0


def learning_rate_scales(model, layer_decay: float) -> Dict[str, float]:
    """``{variable path: learning-rate scale}`` for every trainable variable of ``model`` (a
    :class:`keras_vit.VisionTransformer`): ``layer_decay ** (num_layers + 1 - layer id)``."""
    check_layer_decay(layer_decay)
    num_layers = model.num_layers
    return {
        variable.path: float(layer_decay) ** (num_layers + 1 - layer_id(variable.path, num_layers))
        for variable in model.trainable_variables
    }


def uses_weight_decay(variable) -> bool:
    """timm's rule: no weight decay for parameters of one dimension or less (norms, layer
    scales, biases), biases of any shape, tokens and position embeddings."""
    name = variable.path.split("/")[-1]
    return len(variable.shape) > 1 and name != "bias" and name not in NO_WEIGHT_DECAY_NAMES
