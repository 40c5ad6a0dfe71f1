"""Checkpoints in and out: the original ``.npz`` layout (:mod:`~keras_vit.weights.npz`) and
the published files' bucket and download cache (:mod:`~keras_vit.weights.published`)."""
