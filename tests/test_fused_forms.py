"""The fused TensorFlow-CPU forms compute what the portable keras.ops forms compute, fuse, and
are used only inside fused_forms() (Keras's own steps), never in another trace."""

import collections

import keras
import numpy as np
import pytest

if keras.backend.backend() != "tensorflow":
    pytest.skip("TensorFlow-only kernels", allow_module_level=True)

import tensorflow as tf  # noqa: E402

import keras_vit  # noqa: E402
from keras_vit.backends import tf_cpu  # noqa: E402
from keras_vit.core import layers  # noqa: E402
from keras_vit.tools import benchmark  # noqa: E402


def _small_model(policy="float32", seed=0, **kwargs):
    keras.mixed_precision.set_global_policy(policy)
    try:
        model = keras_vit.ViT("Ti/16", image_size=32, num_classes=5, **kwargs)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    rng = np.random.default_rng(seed)
    for weight in model.weights:  # non-trivial weights everywhere (the head starts at zero)
        weight.assign(rng.normal(0, 0.2, weight.shape).astype(weight.dtype))
    return model


def _forward_and_gradients(model, images, labels):
    with tf.GradientTape() as tape:
        logits = tf.cast(model(images, training=True), tf.float32)
        loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits))
    return logits, tape.gradient(loss, model.trainable_variables)


# The kernels TensorFlow's graph optimizer makes of the fused forms: oneDNN's where its
# rewrites run (x86 with AVX-512), Eigen's elsewhere.
ONEDNN = tf_cpu.onednn_enabled()
LAYER_NORM_KERNEL = "_MklLayerNorm" if ONEDNN else "FusedBatchNormV3"
LAYER_NORM_GRADIENT_KERNEL = "_MklNativeFusedBatchNormGradV3" if ONEDNN else "FusedBatchNormGradV3"
FUSED_MATMUL_KERNEL = "_MklNativeFusedMatMul" if ONEDNN else "_FusedMatMul"


def _traced_fused(function, *args):
    # A tf.function traced inside fused_forms(), as Keras's own steps trace.
    traced = tf.function(function)
    with tf_cpu.fused_forms():
        traced.get_concrete_function(*args)
    return traced


@pytest.mark.slow
def test_fused_forms_are_used_and_match_the_portable_forms_forward_and_backward():
    model = _small_model()
    images = np.random.default_rng(1).uniform(-1, 1, (3, 32, 32, 3)).astype("float32")
    labels = np.array([0, 3, 4])
    assert not tf_cpu.active("float32")  # outside fused_forms every trace is portable
    with tf_cpu.fused_forms():
        assert tf_cpu.active("float32")
    fused_step = _traced_fused(lambda x, y: _forward_and_gradients(model, x, y), images, labels)
    fused_graph = fused_step.get_concrete_function(images, labels).graph
    fused_ops = {op.type for op in fused_graph.get_operations()}
    portable_step = tf.function(lambda x, y: _forward_and_gradients(model, x, y))
    portable_ops = {op.type for op in portable_step.get_concrete_function(images, labels).graph.get_operations()}
    assert "FusedBatchNormV3" in fused_ops and "FusedBatchNormV3" not in portable_ops
    logits, gradients = fused_step(images, labels)
    reference_logits, reference_gradients = portable_step(images, labels)
    np.testing.assert_allclose(logits.numpy(), reference_logits.numpy(), atol=1e-5)
    for variable, ours, reference in zip(model.trainable_variables, gradients, reference_gradients):
        if variable.path.endswith("key/bias"):
            continue  # its true gradient is 0 (softmax ignores a per-query constant): both are round-off
        scale = max(float(np.abs(reference.numpy()).max()), 1e-3)
        assert np.abs(ours.numpy() - reference.numpy()).max() <= 1e-4 * scale, variable.path


def test_bfloat16_fused_forms_match_the_portable_forms():
    model = _small_model("mixed_bfloat16")
    images = np.random.default_rng(2).uniform(-1, 1, (2, 32, 32, 3)).astype("float32")
    fused = model.predict(images, verbose=0).astype("float32")  # predict_step: fused
    portable = tf.function(lambda x: model(x, training=False))(images).numpy().astype("float32")
    # bfloat16 keeps 8 bits of mantissa: agreement to a few parts in a hundred of the scale.
    assert np.abs(fused - portable).max() <= 0.03 * np.abs(portable).max()


def test_layer_norm_keeps_epsilon_1e_6_where_it_matters():
    # Tokens of tiny variance: epsilon 1e-6 and cuDNN's minimum 1.001e-5 give different outputs.
    x = np.random.default_rng(3).normal(0, 3e-3, (2, 5, 16)).astype("float32")
    ours = layers.LayerNorm(epsilon=1e-6)
    ours.build(x.shape)
    keras_norm = keras.layers.LayerNormalization(epsilon=1e-6)
    keras_norm.build(x.shape)
    gamma = np.random.default_rng(4).normal(size=16).astype("float32")
    for layer in (ours, keras_norm):
        layer.set_weights([gamma, np.linspace(-1, 1, 16).astype("float32")])
    expected = keras_norm(x).numpy()
    fused = _traced_fused(ours, x)(x).numpy()
    np.testing.assert_allclose(fused, expected, atol=1e-4)
    wrong_epsilon = keras.layers.LayerNormalization(epsilon=1.001e-5)
    wrong_epsilon.build(x.shape)
    wrong_epsilon.set_weights(keras_norm.get_weights())
    assert np.abs(wrong_epsilon(x).numpy() - expected).max() > 1e-2


def test_gelu_for_training_equals_the_tanh_gelu_and_its_gradient():
    z = tf.constant(np.linspace(-8, 8, 2001, dtype="float32"))
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(z)
        ours = tf_cpu.gelu_tanh_for_training(z)
        reference = tf.nn.gelu(z, approximate=True)
    np.testing.assert_allclose(ours.numpy(), reference.numpy(), atol=2e-6)
    np.testing.assert_allclose(tape.gradient(ours, z).numpy(), tape.gradient(reference, z).numpy(), atol=1e-5)


def _layer_norm_consumers(graph):
    # The op types each FusedBatchNormV3's output reaches through reshapes.
    consumers = collections.Counter()
    for op in graph.get_operations():
        if op.type != "FusedBatchNormV3":
            continue
        frontier = list(op.outputs[0].consumers())
        while frontier:
            consumer = frontier.pop()
            if consumer.type == "Reshape":
                frontier += consumer.outputs[0].consumers()
            else:
                consumers[consumer.type] += 1
    return consumers


@pytest.mark.parametrize("regularized", [False, True], ids=["plain", "dropout_and_drop_path"])
def test_training_folds_each_block_layer_norms_scale_and_shift_into_the_next_matmul(regularized):
    # In training the LayerNorm is FusedBatchNormV3 + scale + shift (its gradient needs the
    # statistics, so no _MklLayerNorm); the block's two norms hand their normalized output
    # straight to the Q/K/V and MLP matmuls, whose weights carry gamma and beta. Only the
    # final norm (before the head, no matmul of its own over all tokens) keeps its Mul.
    kwargs = dict(dropout=0.1, drop_path_rate=0.1) if regularized else {}
    model = _small_model(**kwargs)
    images = np.random.default_rng(0).normal(size=(2, 32, 32, 3)).astype("float32")
    step = _traced_fused(lambda x, y: _forward_and_gradients(model, x, y), images, np.array([1, 2]))
    training = _layer_norm_consumers(step.get_concrete_function(images, np.array([1, 2])).graph)
    # Each block norm's output feeds its matmul and, backward, that matmul's weight
    # gradient; the final norm's feeds a Mul by gamma and, backward, gamma's gradient.
    assert training == collections.Counter(MatMul=2 * 2 * 12, Mul=2), training
    inference = _traced_fused(lambda x: model(x, training=False), images).get_concrete_function(images).graph
    assert _layer_norm_consumers(inference) == collections.Counter(Mul=2 * 12 + 1)  # fused into _MklLayerNorm later


def test_a_block_with_a_lora_dense_takes_the_portable_forms():
    # A LoRA Dense computes its own kernel, so its block is not fused (the LayerNorm affine
    # would otherwise be folded into a kernel it does not use): the forward equals the portable forms'.
    model = _small_model()
    block = next(layer for layer in model.layers if isinstance(layer, layers.TransformerBlock))
    block.mlp.dense_0.enable_lora(2)
    block.mlp.dense_0.lora_kernel_b.assign(np.full(block.mlp.dense_0.lora_kernel_b.shape, 0.1, "float32"))
    images = np.random.default_rng(8).uniform(-1, 1, (2, 32, 32, 3)).astype("float32")
    assert not tf_cpu.block_applies(block, keras.KerasTensor((2, 5, 192)))
    fused = _traced_fused(lambda x: model(x, training=True), images)(images).numpy()
    portable = tf.function(lambda x: model(x, training=True))(images).numpy()
    np.testing.assert_allclose(fused, portable, atol=1e-5)


def test_folding_a_scale_and_shift_into_a_dense_equals_applying_them_first():
    rng = np.random.default_rng(7)
    x, kernel = (tf.constant(rng.normal(size=shape).astype("float32")) for shape in ((2, 3, 4), (4, 6)))
    bias, gamma, beta = (tf.constant(rng.normal(size=n).astype("float32")) for n in (6, 4, 4))
    expected = tf_cpu.dense_fused(x * gamma + beta, kernel, bias)
    np.testing.assert_allclose(tf_cpu.dense_fused(x, kernel, bias, input_affine=(gamma, beta)).numpy(), expected.numpy(), atol=1e-5)


def test_residual_and_gelu_options_of_dense():
    x = tf.constant(np.random.default_rng(5).normal(size=(2, 3, 4)).astype("float32"))
    kernel = tf.constant(np.random.default_rng(6).normal(size=(4, 6)).astype("float32"))
    bias = tf.constant(np.arange(6, dtype="float32"))
    residual = tf.ones((2, 3, 6))
    expected = tf.nn.gelu(tf.einsum("btd,de->bte", x, kernel) + bias, approximate=True) + residual
    np.testing.assert_allclose(tf_cpu.dense_fused(x, kernel, bias, "gelu_tanh", residual).numpy(), expected.numpy(), atol=1e-5)
    with pytest.raises(ValueError, match="Unknown activation 'relu'"):
        tf_cpu.dense_fused(x, kernel, bias, "relu")


def _op_types_executed(function, *args):
    return collections.Counter({name: op["calls"] for name, op in benchmark.kernel_times(function, *args)["ops"].items()})


def test_inference_runs_as_fused_kernels():
    # The point of the fused forms: after TensorFlow's graph optimizer, each LayerNorm is one
    # kernel and no elementwise bias or residual op is left over (with oneDNN, no GELU either).
    model = _small_model()
    images = np.zeros((2, 32, 32, 3), "float32")
    executed = _op_types_executed(_traced_fused(lambda x: model(x, training=False), images), images)
    blocks = 12
    assert executed[LAYER_NORM_KERNEL] >= 2 * blocks
    assert executed[FUSED_MATMUL_KERNEL] >= 4 * blocks  # qkv, output + residual, MLP x2
    assert executed["BiasAdd"] <= 1  # the head's: every block's bias is inside a matmul kernel
    assert executed["Pow"] == 0
    assert executed["Tanh"] == (0 if ONEDNN else blocks)  # Eigen's matmul kernel takes no GELU


@pytest.mark.slow
def test_training_runs_the_gelu_as_one_xla_kernel_each_way():
    # In training the MLP's GELU and its gradient are each one XLA executable per block
    # (24 for 12 blocks); no elementwise GELU op of TensorFlow's is left in the step.
    model = _small_model()
    images = np.random.default_rng(0).normal(size=(2, 32, 32, 3)).astype("float32")
    step = _traced_fused(lambda x, y: _forward_and_gradients(model, x, y), images, np.array([1, 2]))
    executed = _op_types_executed(step, images, np.array([1, 2]))
    blocks = 12
    assert executed["ExecuteAsyncOnStream"] == 2 * blocks
    assert executed["Sigmoid"] == 0 and executed["Tanh"] == 0 and executed["Square"] == 0
    assert executed[LAYER_NORM_GRADIENT_KERNEL] == 2 * blocks + 1  # LayerNorm gradients
    with tf_cpu.without_xla():
        plain_step = _traced_fused(lambda x, y: _forward_and_gradients(model, x, y), images, np.array([1, 2]))
    plain = _op_types_executed(plain_step, images, np.array([1, 2]))
    assert plain["ExecuteAsyncOnStream"] == 0 and plain["Sigmoid"] == blocks
    _, xla_gradients = step(images, np.array([1, 2]))
    _, plain_gradients = plain_step(images, np.array([1, 2]))
    for xla_gradient, plain_gradient in zip(xla_gradients, plain_gradients):
        np.testing.assert_allclose(xla_gradient.numpy(), plain_gradient.numpy(), atol=1e-5)


def test_keras_steps_trace_the_fused_forms_and_any_other_trace_the_portable_ones():
    # predict/fit/evaluate go through VisionTransformer's steps, which enter fused_forms();
    # a plain tf.function of the model (what every exporter traces) never sees them.
    model = _small_model()
    images = np.zeros((2, 32, 32, 3), "float32")
    model.compile()
    model.predict_on_batch(images)  # traced once before profiling
    by_keras = _op_types_executed(lambda: model.predict_on_batch(images))
    plain = tf.function(lambda x: model(x, training=False))
    by_plain_trace = _op_types_executed(plain, images)
    assert by_keras[LAYER_NORM_KERNEL] >= 2 * 12  # every block norm one kernel
    assert by_plain_trace["_MklLayerNorm"] == 0 and by_plain_trace["FusedBatchNormV3"] == 0
