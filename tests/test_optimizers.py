"""keras_vit.optimizers compute Keras's AdamW and SGD updates, in TensorFlow's fused kernels."""

import keras
import numpy as np
import pytest

from keras_vit.training import optimizers

ON_TENSORFLOW = keras.backend.backend() == "tensorflow"
if ON_TENSORFLOW:
    import tensorflow as tf
tensorflow_only = pytest.mark.skipif(not ON_TENSORFLOW, reason="the fused update kernels are TensorFlow's")

SHAPES = [(24, 16), (16,), (3, 5, 7)]
CASES = {
    "adamw": lambda cls: cls(learning_rate=3e-3, weight_decay=0.1),
    "adamw_schedule_clip": lambda cls: cls(
        learning_rate=keras.optimizers.schedules.CosineDecay(1e-2, 10, warmup_target=None), weight_decay=0.05,
        global_clipnorm=0.5, beta_2=0.98, epsilon=1e-6),
    "sgd_momentum_decay": lambda cls: cls(learning_rate=0.05, momentum=0.9, weight_decay=1e-3),
    "sgd_nesterov": lambda cls: cls(learning_rate=0.05, momentum=0.8, nesterov=True),
    "sgd_plain": lambda cls: cls(learning_rate=0.05),
}
KERAS_CLASS = {"adamw": keras.optimizers.AdamW, "sgd": keras.optimizers.SGD}
OURS = {"adamw": optimizers.AdamW, "sgd": optimizers.SGD}


def _run(optimizer, steps=4, graph=True):
    rng = np.random.default_rng(0)
    variables = [keras.Variable(rng.normal(0, 1, shape).astype("float32")) for shape in SHAPES]
    gradients = [[tf.constant(rng.normal(0, 1, shape).astype("float32")) for shape in SHAPES] for _ in range(steps)]
    optimizer.build(variables)
    apply = lambda grads: optimizer.apply_gradients(zip(grads, variables))  # noqa: E731
    if graph:
        apply = tf.function(apply)
    for grads in gradients:
        apply(grads)
    return [v.numpy() for v in variables], [v.numpy() for v in optimizer.variables]


@tensorflow_only
@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("graph", [True, False], ids=["tf.function", "eager"])
def test_fused_update_equals_keras_update(case, graph):
    kind = case.split("_")[0]
    ours_weights, ours_state = _run(CASES[case](OURS[kind]), graph=graph)
    keras_weights, keras_state = _run(CASES[case](KERAS_CLASS[kind]), graph=graph)
    assert len(ours_state) == len(keras_state)  # the same slots: checkpoints stay interchangeable
    moved = 0
    for ours, reference in zip(ours_weights + ours_state, keras_weights + keras_state):
        # The kernel forms 1 - beta_2 from float32(0.999) (0.00099998713), Keras from the
        # Python float (0.001): the second moment differs by 1.3e-5 of itself, no more.
        np.testing.assert_allclose(ours, reference, rtol=2e-5, atol=1e-7)
    for ours, start in zip(ours_weights, _run(CASES[case](OURS[kind]), steps=0)[0]):
        moved += not np.allclose(ours, start)
    assert moved == len(SHAPES)


def _op_types(optimizer):
    variables = [keras.Variable(np.ones(shape, "float32")) for shape in SHAPES]
    optimizer.build(variables)
    apply = tf.function(lambda grads: optimizer.apply_gradients(zip(grads, variables)))
    graph = apply.get_concrete_function([tf.TensorSpec(shape) for shape in SHAPES]).graph
    types = {op.type for op in graph.get_operations()}
    for function in graph.as_graph_def().library.function:  # branches and nested functions
        types |= {node.op for node in function.node_def}
    return types


@tensorflow_only
def test_update_is_one_fused_kernel_per_variable():
    adamw = _op_types(optimizers.AdamW(1e-3, weight_decay=0.1))
    assert "ResourceApplyAdam" in adamw and not {"Sqrt", "RealDiv", "Square"} & adamw, sorted(adamw)
    assert "ResourceApplyAdam" not in _op_types(keras.optimizers.AdamW(1e-3))
    assert "ResourceApplyKerasMomentum" in _op_types(optimizers.SGD(0.1, momentum=0.9))
    assert "ResourceApplyGradientDescent" in _op_types(optimizers.SGD(0.1))


@tensorflow_only
def test_amsgrad_keeps_keras_update():
    ours_weights, ours_state = _run(optimizers.AdamW(3e-3, amsgrad=True))
    keras_weights, keras_state = _run(keras.optimizers.AdamW(3e-3, amsgrad=True))
    for ours, reference in zip(ours_weights + ours_state, keras_weights + keras_state):
        np.testing.assert_array_equal(ours, reference)


def test_optimizer_config_round_trip():
    optimizer = optimizers.ReplicaSafeAdamW(learning_rate=1e-3, weight_decay=0.05, reduced_clipnorm=1.0)
    restored = keras.optimizers.deserialize(keras.optimizers.serialize(optimizer))
    assert type(restored) is optimizers.ReplicaSafeAdamW
    assert (restored.weight_decay, restored.reduced_clipnorm) == (0.05, 1.0)


@pytest.mark.skipif(ON_TENSORFLOW, reason="the other backends' path")
@pytest.mark.parametrize("case", sorted(CASES))
def test_other_backends_run_keras_update_unchanged(case):
    kind = case.split("_")[0]
    results = []
    for optimizer in (CASES[case](OURS[kind]), CASES[case](KERAS_CLASS[kind])):
        rng = np.random.default_rng(0)
        variables = [keras.Variable(rng.normal(0, 1, shape).astype("float32")) for shape in SHAPES]
        optimizer.build(variables)
        for _ in range(3):
            optimizer.apply_gradients(zip([rng.normal(0, 1, shape).astype("float32") for shape in SHAPES], variables))
        results.append([np.asarray(v) for v in variables + list(optimizer.variables)])
    for ours, reference in zip(*results):
        np.testing.assert_array_equal(ours, reference)
