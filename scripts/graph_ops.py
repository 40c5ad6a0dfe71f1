"""Prints the op-type histogram of ViT-B/16's inference graph and of one training step's
gradient graph (functions included) as JSON: two trees that print the same histograms
run the same computation (docs/performance.md, issue 25's before/after).

    PYTHONPATH=<tree> python scripts/graph_ops.py > ops.json
"""

import collections
import json

import keras
import tensorflow as tf

import keras_vit


def op_histogram(graph):
    ops = collections.Counter(op.type for op in graph.get_operations())
    for function in graph._functions.values():  # the bodies of nested tf.functions
        ops.update(node.op for node in function.definition.node_def)
    return dict(sorted(ops.items()))


def main():
    model = keras_vit.ViTB16(num_classes=1000)
    images = tf.TensorSpec((8, 224, 224, 3))

    def gradients(x, y):
        with tf.GradientTape() as tape:
            logits = model(x, training=True)
            loss = tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(y, logits, from_logits=True))
        return tape.gradient(loss, model.trainable_variables)

    inference = tf.function(lambda x: model(x, training=False)).get_concrete_function(images).graph
    training = tf.function(gradients).get_concrete_function(images, tf.TensorSpec((8,), tf.int32)).graph
    print(json.dumps({"inference": op_histogram(inference), "training": op_histogram(training),
                      "params": model.count_params()}))


if __name__ == "__main__":
    main()
