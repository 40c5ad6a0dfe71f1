"""Input data: tf.data pipelines (embedded MNIST, image folders, TFDS), preprocessing,
augmentation, and image files read into model input (:mod:`keras_vit.data.images`)."""

from keras_vit.data.pipelines import (
    CROPS,
    EMBEDDED_MNIST_PATH,
    IMAGE_EXTENSIONS,
    MNIST_CLASS_NAMES,
    Datasets,
    embedded_mnist,
    image_folder,
    image_folder_dataset,
    load_embedded_mnist,
    preprocess_for_eval,
    preprocess_for_train,
    scale_pixels,
    scan_image_folder,
    tfds_dataset,
)
