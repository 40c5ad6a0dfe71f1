"""The training recipes' optimizers, updating each variable with TensorFlow's fused kernels.

``keras.optimizers.AdamW`` and ``SGD`` write their update as about a dozen elementwise
ops per variable (``Sub``, ``Mul``, ``Square``, ``Sqrt``, ``RealDiv``, assigns), each a
pass over the variable and its moments; on a CPU these passes are memory-bound (the
measured share and gain are in docs/performance.md). :class:`AdamW` and
:class:`SGD` compute the same update with TensorFlow's training kernels
(``ResourceApplyAdam``, ``ResourceApplyKerasMomentum``): one pass per variable, on CPU,
GPU and TPU (XLA has them too). The decoupled weight decay is one multiply by the scalar
``learning_rate * weight_decay`` rather than two full-size multiplies.

Variables, slots, configs and checkpoints are Keras's own; on other backends, with
``amsgrad`` or sparse gradients, the classes run Keras's update unchanged.
"""

from __future__ import annotations

import keras


def _fused_update_applies(gradient, variable) -> bool:
    if keras.backend.backend() != "tensorflow":  # before importing it: JAX-only installs
        return False
    import tensorflow as tf

    return not isinstance(gradient, tf.IndexedSlices) and variable.dtype in (tf.float32, tf.float64, tf.float16, tf.bfloat16)


class _FineTuning:
    """Per-variable learning-rate scales (layer-wise decay) and timm's weight average.

    ``learning_rate_scales``: ``{variable path: scale}`` (see
    :mod:`keras_vit.training.layer_decay`); a variable learns, and decays, at
    ``learning_rate * scale``, as a PyTorch parameter group with ``lr_scale`` does. The
    scale multiplies the learning rate, not the gradient, which Adam would normalise away.

    With ``use_ema=True`` the average follows timm's ``ModelEmaV2``: it starts at the
    weights before the first update, and after each update (not each accumulated
    micro-batch) ``average = ema_momentum * average + (1 - ema_momentum) * weights``.
    ``finalize_variable_values`` leaves the weights alone (Keras would copy the average
    in at the end of each ``fit``, and a run resumed mid-epoch fits twice);
    :mod:`keras_vit.training.ema` swaps the average in where it is evaluated and saved.
    """

    def __init__(self, *args, learning_rate_scales=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.learning_rate_scales = dict(learning_rate_scales) if learning_rate_scales else None
        self._scales_by_index = []

    def build(self, variables):
        super().build(variables)
        if self.learning_rate_scales:
            self._scales_by_index = [self.learning_rate_scales.get(variable.path, 1.0) for variable in variables]

    def learning_rate_scale(self, variable) -> float:
        if not self._scales_by_index:
            return 1.0
        return self._scales_by_index[self._get_variable_index(variable)]

    def scaled_learning_rate(self, learning_rate, variable):
        scale = self.learning_rate_scale(variable)
        return learning_rate if scale == 1.0 else learning_rate * scale

    def _backend_apply_gradients(self, grads, trainable_variables):
        if self.use_ema:  # the average starts at the weights before the first update (Keras's at zero)
            def start_average():
                for variable, average in zip(self._trainable_variables, self._model_variables_moving_average):
                    average.assign(keras.ops.cast(variable, average.dtype))

            keras.ops.cond(keras.ops.equal(self._iterations, 0), start_average, lambda: None)
        return super()._backend_apply_gradients(grads, trainable_variables)

    def _update_model_variables_moving_average(self, trainable_variables):
        momentum = keras.ops.convert_to_tensor(self.ema_momentum, "float32")
        if self.gradient_accumulation_steps:  # the weights changed only on an update step
            is_update = keras.ops.equal((self._iterations + 1) % self.gradient_accumulation_steps, 0)
            momentum = keras.ops.where(is_update, momentum, 1.0)
        for variable, average in zip(trainable_variables, self._model_variables_moving_average):
            decay = keras.ops.cast(momentum, average.dtype)
            average.assign(decay * average + (1.0 - decay) * keras.ops.cast(variable, average.dtype))

    def finalize_variable_values(self, var_list):
        pass

    def get_config(self):
        return {**super().get_config(), "learning_rate_scales": self.learning_rate_scales}


class _FusedWeightDecay:
    """Decoupled weight decay ``w -= w * (lr * wd)``: one scalar multiply per variable."""

    def _apply_weight_decay(self, variables):
        if self.weight_decay is None or keras.backend.backend() != "tensorflow":
            return super()._apply_weight_decay(variables)
        import tensorflow as tf

        def decay(variable, scale):
            if self._use_weight_decay(variable):
                variable.assign_sub(variable * tf.cast(self.learning_rate * self.weight_decay * scale, variable.dtype))

        def decay_all(distribution, variables):
            for variable in variables:
                scale = self.learning_rate_scale(variable)
                # The strategy hands each replica's copy of a mirrored variable to decay().
                if isinstance(variable, keras.Variable):
                    variable = variable.value
                distribution.extended.update(variable, decay, args=(scale,), group=False)

        tf.__internal__.distribute.interim.maybe_merge_call(decay_all, self._distribution_strategy, variables)


@keras.saving.register_keras_serializable(package="keras_vit")
class AdamW(_FineTuning, _FusedWeightDecay, keras.optimizers.AdamW):
    """``keras.optimizers.AdamW`` (same arguments, same math) whose per-variable update is
    TensorFlow's fused ``ResourceApplyAdam`` kernel on the TensorFlow backend."""

    def update_step(self, gradient, variable, learning_rate):
        learning_rate = self.scaled_learning_rate(learning_rate, variable)
        if self.amsgrad or not _fused_update_applies(gradient, variable):
            return super().update_step(gradient, variable, learning_rate)
        import tensorflow as tf

        dtype = variable.dtype
        index = self._get_variable_index(variable)
        step = tf.cast(self.iterations + 1, dtype)
        beta_1, beta_2 = tf.cast(self.beta_1, dtype), tf.cast(self.beta_2, dtype)
        # m += (g - m)(1 - b1); v += (g^2 - v)(1 - b2);
        # w -= lr sqrt(1 - b2^t) / (1 - b1^t) * m / (sqrt(v) + eps): Keras's Adam, except that
        # the kernel takes 1 - b2 in float32 (1.3e-5 relative for 0.999, as TF1's Adam did).
        tf.raw_ops.ResourceApplyAdam(
            var=variable.handle,
            m=self._momentums[index].value.handle,
            v=self._velocities[index].value.handle,
            beta1_power=tf.pow(beta_1, step),
            beta2_power=tf.pow(beta_2, step),
            lr=tf.cast(learning_rate, dtype),
            beta1=beta_1,
            beta2=beta_2,
            epsilon=tf.cast(self.epsilon, dtype),
            grad=tf.cast(gradient, dtype),
        )


@keras.saving.register_keras_serializable(package="keras_vit")
class SGD(_FineTuning, _FusedWeightDecay, keras.optimizers.SGD):
    """``keras.optimizers.SGD`` (same arguments, same math) whose per-variable update is
    TensorFlow's fused ``ResourceApplyKerasMomentum`` / ``ResourceApplyGradientDescent``
    kernel on the TensorFlow backend."""

    def update_step(self, gradient, variable, learning_rate):
        learning_rate = self.scaled_learning_rate(learning_rate, variable)
        if not _fused_update_applies(gradient, variable):
            return super().update_step(gradient, variable, learning_rate)
        import tensorflow as tf

        dtype = variable.dtype
        learning_rate, gradient = tf.cast(learning_rate, dtype), tf.cast(gradient, dtype)
        if self.momentum == 0:
            tf.raw_ops.ResourceApplyGradientDescent(var=variable.handle, alpha=learning_rate, delta=gradient)
            return
        # m = m * momentum - lr * g; w += m (Nesterov: w += m * momentum - lr * g).
        tf.raw_ops.ResourceApplyKerasMomentum(
            var=variable.handle,
            accum=self.momentums[self._get_variable_index(variable)].value.handle,
            lr=learning_rate,
            grad=gradient,
            momentum=tf.cast(self.momentum, dtype),
            use_nesterov=self.nesterov,
        )


class _ClipAfterAllReduce:
    """Global-norm clipping of the all-reduced gradient under a multi-replica strategy.

    Keras 3's TensorFlow optimizer clips each replica's share of the gradient before the
    all-reduce, which is not the global norm of the batch gradient; these optimizers clip
    the summed gradient instead (set ``reduced_clipnorm``, leave ``global_clipnorm`` None).
    """

    def __init__(self, *args, reduced_clipnorm=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.reduced_clipnorm = reduced_clipnorm

    def _all_reduce_sum_gradients(self, grads_and_vars):
        import tensorflow as tf

        grads_and_vars = list(super()._all_reduce_sum_gradients(grads_and_vars))
        present = [(g, v) for g, v in grads_and_vars if g is not None]
        if not self.reduced_clipnorm or not present:
            return grads_and_vars
        clipped, _ = tf.clip_by_global_norm([g for g, _ in present], self.reduced_clipnorm)
        return list(zip(clipped, [v for _, v in present]))

    def get_config(self):
        return {**super().get_config(), "reduced_clipnorm": self.reduced_clipnorm}


@keras.saving.register_keras_serializable(package="keras_vit")
class ReplicaSafeSGD(_ClipAfterAllReduce, SGD):
    """:class:`SGD` clipping the all-reduced gradient (see ``_ClipAfterAllReduce``)."""


@keras.saving.register_keras_serializable(package="keras_vit")
class ReplicaSafeAdamW(_ClipAfterAllReduce, AdamW):
    """:class:`AdamW` clipping the all-reduced gradient (see ``_ClipAfterAllReduce``)."""


@keras.saving.register_keras_serializable(package="keras_vit")
class PerUpdateSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """Steps a schedule once per optimizer update when gradients are accumulated.

    Keras evaluates a schedule at the micro-batch count (``optimizer._iterations``), so
    with accumulation over N micro-batches it would run N times too fast; this divides
    the step by N first.

    Args:
        schedule: a ``LearningRateSchedule`` over optimizer updates.
        accumulation: micro-batches per update.
    """

    def __init__(self, schedule, accumulation):
        self.schedule = schedule
        self.accumulation = accumulation

    def __call__(self, step):
        return self.schedule(keras.ops.floor_divide(step, self.accumulation))

    def get_config(self):
        return {"schedule": keras.optimizers.schedules.serialize(self.schedule), "accumulation": self.accumulation}

    @classmethod
    def from_config(cls, config):
        return cls(keras.optimizers.schedules.deserialize(config["schedule"]), config["accumulation"])
