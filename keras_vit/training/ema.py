"""The exponential moving average of the weights: what is evaluated, saved and exported.

The optimizers of :mod:`keras_vit.training.optimizers` keep the average (Keras's
``use_ema``, with timm's ``ModelEmaV2`` update). These helpers put it in the model's
weights where timm uses its EMA model: each epoch's validation
(:class:`AveragedValidation`), the checkpoints (:func:`averaged_weights`) and, once
training is over, the model itself (:func:`use_averaged_weights`). The backup, which
resumes training, keeps the trained weights and the average side by side.
"""

from __future__ import annotations

import contextlib

import keras


def _averaging_optimizer(model):
    optimizer = getattr(model, "optimizer", None)
    optimizer = getattr(optimizer, "inner_optimizer", optimizer)  # a LossScaleOptimizer's
    if optimizer is None or not getattr(optimizer, "use_ema", False) or not optimizer.built:
        return None
    return optimizer


def averages(model):
    """``[(variable, its average)]`` for the trainable variables of ``model``, or [] when
    its optimizer keeps no average (or has not been built)."""
    optimizer = _averaging_optimizer(model)
    if optimizer is None:
        return []
    moving = optimizer._model_variables_moving_average  # Keras's own slots (see use_ema)
    return [(variable, moving[optimizer._get_variable_index(variable)]) for variable in model.trainable_variables]


def _swap(pairs):
    for variable, average in pairs:
        current = keras.ops.convert_to_numpy(variable.value)
        variable.assign(average.value)
        average.assign(current)


@contextlib.contextmanager
def averaged_weights(model):
    """Within the block the model holds the averaged weights; after it, its own again
    (exactly: the two are swapped, then swapped back). Does nothing without an average."""
    pairs = averages(model)
    _swap(pairs)
    try:
        yield model
    finally:
        _swap(pairs)


def use_averaged_weights(model) -> bool:
    """Copies the average into the model's weights for good (the end of training);
    returns whether there was one."""
    pairs = averages(model)
    for variable, average in pairs:
        variable.assign(average.value)
    return bool(pairs)


class AveragedValidation(keras.callbacks.Callback):
    """Validates each epoch on the averaged weights, as timm evaluates its EMA model."""

    def __init__(self):
        super().__init__()
        self._pairs = []

    def on_test_begin(self, logs=None):
        self._pairs = averages(self.model)
        _swap(self._pairs)

    def on_test_end(self, logs=None):
        _swap(self._pairs)
        self._pairs = []
