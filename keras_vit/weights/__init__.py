"""Checkpoints in and out: the original ``.npz`` layout and the published files."""

from keras_vit.weights.npz import (
    convert_checkpoint,
    describe_checkpoint,
    from_npz,
    load_npz,
    read_npz,
    resample_position_embedding,
    save_npz,
)
