"""DeiT's knowledge distillation: the distillation token learns from a teacher's predictions.

A student with DeiT's distillation token (``ViT(..., distillation_token=True)``) has two
heads; in training (``distilled_training``) it returns both logits. DeiT's
``DistillationLoss`` (facebookresearch/deit, ``losses.py``) then trains the class head on
the labels and the distillation head on the teacher::

    loss = (1 - alpha) * CE(class_logits, labels) + alpha * distillation
    hard: distillation = CE(distillation_logits, argmax(teacher_logits))
    soft: distillation = KL(log_softmax(teacher / tau) || log_softmax(distillation / tau))
                         summed, * tau^2 / (batch * classes)

Validation, saving and inference see the student alone: the mean of its two heads, as
DeiT evaluates. The teacher is any Keras classifier of the same classes that takes the
student's inputs (resized to its own size when that differs); it is never trained.
"""

from __future__ import annotations

import types

import keras


@keras.saving.register_keras_serializable(package="keras_vit")
class DistillationLoss(keras.losses.Loss):
    """DeiT's ``DistillationLoss`` per example, on packed tensors.

    ``y_true``: ``[labels (one-hot or mixed), teacher logits]`` concatenated on the last
    axis; ``y_pred``: ``[class logits, distillation logits]``, likewise (``K`` classes each).
    The base criterion is cross-entropy on logits with ``label_smoothing``.
    """

    def __init__(self, kind="hard", alpha=0.5, tau=1.0, label_smoothing=0.0, name="distillation_loss", **kwargs):
        super().__init__(name=name, **kwargs)
        self.kind, self.alpha, self.tau, self.label_smoothing = kind, float(alpha), float(tau), float(label_smoothing)

    def call(self, y_true, y_pred):
        ops = keras.ops
        labels, teacher_logits = ops.split(ops.cast(y_true, "float32"), 2, axis=-1)
        class_logits, distillation_logits = ops.split(ops.cast(y_pred, "float32"), 2, axis=-1)
        classes = ops.shape(labels)[-1]
        if self.label_smoothing:
            labels = labels * (1.0 - self.label_smoothing) + self.label_smoothing / ops.cast(classes, "float32")
        base = -ops.sum(labels * ops.log_softmax(class_logits, axis=-1), axis=-1)
        if self.kind == "hard":
            targets = ops.one_hot(ops.argmax(teacher_logits, axis=-1), classes)
            distillation = -ops.sum(targets * ops.log_softmax(distillation_logits, axis=-1), axis=-1)
        else:
            log_teacher = ops.log_softmax(teacher_logits / self.tau, axis=-1)
            log_student = ops.log_softmax(distillation_logits / self.tau, axis=-1)
            # sum over the batch and classes / (batch * classes) is this mean over the batch.
            kl = ops.sum(ops.exp(log_teacher) * (log_teacher - log_student), axis=-1)
            distillation = kl * (self.tau * self.tau) / ops.cast(classes, "float32")
        return base * (1.0 - self.alpha) + distillation * self.alpha

    def get_config(self):
        return {**super().get_config(), "kind": self.kind, "alpha": self.alpha, "tau": self.tau,
                "label_smoothing": self.label_smoothing}


def distillation_loss(labels, class_logits, distillation_logits, teacher_logits, *, kind="hard", alpha=0.5, tau=1.0,
                      label_smoothing=0.0):
    """DeiT's distillation loss of a batch (a scalar): see :class:`DistillationLoss`."""
    ops = keras.ops
    packed_true = ops.concatenate([ops.cast(labels, "float32"), ops.cast(teacher_logits, "float32")], axis=-1)
    packed_pred = ops.concatenate([ops.cast(class_logits, "float32"), ops.cast(distillation_logits, "float32")], axis=-1)
    return DistillationLoss(kind, alpha, tau, label_smoothing)(packed_true, packed_pred)


def _teacher_class_names(path, teacher):
    names = getattr(teacher, "class_names", None)
    if names:
        return [str(name) for name in names]
    from keras_vit import run_folder

    return run_folder.of_model(path).class_names()


def load_teacher(path, *, class_names, channels):
    """The teacher at ``path`` (a ``.keras`` file or run folder), checked against the data.

    Raises:
        ValueError: if its number of classes, class names or channels differ from the data's.
    """
    from keras_vit import run_folder

    teacher = run_folder.load_model(path)
    teacher.trainable = False
    classes = teacher.output_shape[-1]
    if classes != len(class_names):
        raise ValueError(
            f"teacher={path!r} has {classes} classes; the data has {len(class_names)} ({list(class_names)[:10]}): a "
            f"teacher must classify the same classes as the student."
        )
    names = _teacher_class_names(path, teacher)
    if names is not None and list(names) != [str(name) for name in class_names]:
        raise ValueError(f"teacher={path!r} has classes {names}; the data has {list(class_names)} (same order needed).")
    if teacher.input_shape[-1] != channels:
        raise ValueError(f"teacher={path!r} takes {teacher.input_shape[-1]} channels; the student takes {channels}.")
    return teacher


def _teacher_logits(teacher, images):
    size = teacher.input_shape[1:3]
    if None not in size and tuple(images.shape[1:3]) != tuple(size):
        images = keras.ops.image.resize(images, size)
    outputs = keras.ops.cast(teacher(images, training=False), "float32")
    if getattr(teacher.layers[-1], "activation", None) is keras.activations.softmax:
        outputs = keras.ops.log(keras.ops.maximum(outputs, 1e-12))  # probabilities: their logits up to a constant
    return keras.ops.stop_gradient(outputs)


def attach_teacher(student, teacher, *, kind="hard", alpha=0.5, tau=1.0, label_smoothing=0.0):
    """Makes ``student.fit`` train with DeiT's distillation loss from ``teacher``.

    Only this instance changes (its loss and metrics in training); what is saved is the
    student alone, and validation uses its usual output and compiled loss.

    Raises:
        ValueError: if the student has no distillation token.
    """
    if not getattr(student, "distillation_token", False) or getattr(student, "_both_heads", None) is None:
        raise ValueError(
            f"The student {student.name!r} has no distillation token: build it with distillation_token=True "
            f"(DeiT) and a head (include_top=True) to distil from a teacher."
        )
    loss = DistillationLoss(kind, alpha, tau, label_smoothing)
    compute_loss, compute_metrics = student.compute_loss, student.compute_metrics

    def distilled_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        if not isinstance(y_pred, (tuple, list)):  # validation: the mean of both heads
            return compute_loss(x, y, y_pred, sample_weight, training=training)
        ops = keras.ops
        packed_true = ops.concatenate([ops.cast(y, "float32"), _teacher_logits(teacher, x)], axis=-1)
        packed_pred = ops.concatenate([ops.cast(p, "float32") for p in y_pred], axis=-1)
        return loss(packed_true, packed_pred, sample_weight)

    def distilled_metrics(self, x, y, y_pred, sample_weight=None):
        if isinstance(y_pred, (tuple, list)):
            y_pred = (y_pred[0] + y_pred[1]) / 2  # what the student predicts
        return compute_metrics(x, y, y_pred, sample_weight=sample_weight)

    student.distilled_training = True
    object.__setattr__(student, "compute_loss", types.MethodType(distilled_loss, student))
    object.__setattr__(student, "compute_metrics", types.MethodType(distilled_metrics, student))
    return student
