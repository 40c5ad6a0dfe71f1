"""Input data for keras_vit: tf.data pipelines, preprocessing and the embedded MNIST digits."""

from __future__ import annotations

import dataclasses
import math
import os

import numpy as np

from keras_vit.core.config import is_number, refuse
from keras_vit.core.image_spec import ImageSpec
from keras_vit.data.decode import IMAGE_EXTENSIONS, decode_upright, format_problem  # noqa: F401 (re-exported)

EMBEDDED_MNIST_PATH = os.path.join(os.path.dirname(__file__), "mnist5k.npz")
MNIST_CLASS_NAMES = [str(digit) for digit in range(10)]
MNIST_VALIDATION_PER_CLASS = 100


def load_embedded_mnist():
    """The 5,000 embedded MNIST digits, split the same way every time.

    For each digit, the last 100 of its 500 examples (in file order) are the validation
    set and the first 400 the training set: 4,000 training and 1,000 validation images,
    balanced, with no randomness involved.

    Returns:
        ``((x_train, y_train), (x_val, y_val))``: uint8 images (N, 28, 28) and uint8 labels.
    """
    with np.load(EMBEDDED_MNIST_PATH) as data:
        images, labels = data["x"], data["y"]
    validation = np.zeros(len(labels), dtype=bool)
    for digit in range(10):
        indices = np.flatnonzero(labels == digit)
        validation[indices[-MNIST_VALIDATION_PER_CLASS:]] = True
    return (images[~validation], labels[~validation]), (images[validation], labels[validation])


# --------------------------------------------------------------------------- pipelines
# Everything below builds tf.data pipelines; TensorFlow is imported lazily so that
# ``load_embedded_mnist`` stays a NumPy-only function.

CROPS = ("inception", "translate", "none")
INCEPTION_CROP_AREA = (0.08, 1.0)  # The original's random-resized-crop area range.
TRANSLATE_PAD_FRACTION = 0.1  # "translate" crop: shift by up to 10% of the side.


@dataclasses.dataclass
class Datasets:
    """Training and validation pipelines with what the model needs to know about them.

    Attributes:
        train: ``tf.data.Dataset`` of ``(images, one_hot_labels)`` batches, shuffled,
            augmented and repeated once per epoch (finite; a fresh order each iteration).
        validation: ``tf.data.Dataset`` of ``(images, one_hot_labels)`` batches.
        num_classes: number of classes.
        class_names: list of class names, index = label.
        train_examples: number of training images.
        validation_examples: number of validation images.
        skipped_files: paths of unreadable files left out (image folders only).
        stream: ``stream(skip_batches=0)``, the endless training stream that
            ``keras_vit.train`` fits on: pass ``p`` over the data is shuffled and augmented
            as a function of ``(seed, p)`` and each image's position alone, so a run resumed
            in a new process sees exactly the batches it would have seen next.
    """

    train: object
    validation: object
    num_classes: int
    class_names: list
    train_examples: int
    validation_examples: int
    skipped_files: list = dataclasses.field(default_factory=list)
    stream: object = None
    batch_size: object = None  # images per batch (int), where a small folder lowered the one asked for


def _as_size(image_size):
    if isinstance(image_size, int):
        return (image_size, image_size)
    if (
        isinstance(image_size, (tuple, list))
        and len(image_size) == 2
        and all(isinstance(v, int) and v > 0 for v in image_size)
    ):
        return tuple(image_size)
    refuse("image_size", image_size, "an int or (height, width) of positive ints")


def check_options(*, image_size, channels, crop, flip=True, eval_crop_fraction=1.0, randaugment=None, mixup=None,
                  cutmix=None, batch_size=None, random_erasing=None):
    """Checks what the pipelines take before any file is read; returns ``(height, width)``.

    Each failure is a ``ValueError`` that starts ``"<name>=<value>; expected ..."`` (the
    training configuration reports the same words).
    """
    size = _as_size(image_size)
    if channels not in (1, 3) or isinstance(channels, bool):
        refuse("channels", channels, "1 (grayscale) or 3 (RGB)")
    if crop not in CROPS:
        refuse("crop", crop, f"one of {list(CROPS)}")
    if not isinstance(flip, bool):
        refuse("flip", flip, "true or false")
    if eval_crop_fraction is not None and not (is_number(eval_crop_fraction) and 0 < eval_crop_fraction <= 1):
        refuse("eval_crop_fraction", eval_crop_fraction, "a number in (0, 1]")
    if randaugment is not None and not (
        isinstance(randaugment, (tuple, list))
        and len(randaugment) == 2
        and isinstance(randaugment[0], int)
        and not isinstance(randaugment[0], bool)
        and randaugment[0] >= 1
        and is_number(randaugment[1])
        and 0 < randaugment[1] <= 1
    ):
        refuse("randaugment", randaugment, "null or [num_ops >= 1, magnitude in (0, 1]], e.g. [2, 0.5]")
    for name, value in (("mixup", mixup), ("cutmix", cutmix)):
        if value is not None and not (is_number(value) and value > 0):
            refuse(name, value, "null or a positive number (the Beta distribution's alpha)")
    if random_erasing is not None and not (is_number(random_erasing) and 0 <= random_erasing <= 1):
        refuse("random_erasing", random_erasing, "null or a probability in [0, 1], e.g. 0.25 (timm's reprob)")
    if batch_size is not None and not (isinstance(batch_size, int) and not isinstance(batch_size, bool) and batch_size >= 1):
        refuse("batch_size", batch_size, "a positive integer")
    return size


def _match_channels(image, channels):
    """uint8/float (H, W) or (H, W, C) image -> (H, W, channels)."""
    import tensorflow as tf

    if image.shape.rank == 2:
        image = image[..., None]
    have = image.shape[-1]
    if have == 4:  # RGBA PNGs: drop alpha.
        image = image[..., :3]
        have = 3
    if have == 1 and channels == 3:
        image = tf.image.grayscale_to_rgb(image)
    elif have == 3 and channels == 1:
        image = tf.image.rgb_to_grayscale(image)
    return image


def scale_pixels(images):
    """[0, 255] pixels -> float32 in [-1, 1] (x / 127.5 - 1), the original's input scaling.

    The one definition of the models' input range: NumPy arrays (and lists) give a NumPy
    array, without importing TensorFlow; tensors (tf.data, the SavedModel's bytes
    signature) stay TensorFlow tensors.
    """
    if isinstance(images, (np.ndarray, np.generic, list, tuple)):
        return np.asarray(images, dtype="float32") / 127.5 - 1.0
    import tensorflow as tf

    return tf.cast(images, tf.float32) / 127.5 - 1.0


def preprocess_for_train(image, *, image_size, channels=3, crop="inception", flip=True, seed=None):
    """Training preprocessing of one image, as the original: random crop, flip, [-1, 1].

    Args:
        image: uint8 tensor (H, W) or (H, W, C) with C in 1, 3, 4.
        image_size: int or (height, width) of the output.
        channels: 1 or 3; grayscale becomes RGB (and back) as needed.
        crop: ``"inception"`` (random resized crop, area 8%-100%, aspect 3/4-4/3),
            ``"translate"`` (pad by 10% and crop back, i.e. a random shift: for digits,
            which a large crop would destroy), or ``"none"`` (resize only).
        flip: random horizontal flip.
        seed: None (TensorFlow's stateful random ops), or a ``[2]`` integer tensor that
            fixes the crop and flip (stateless ops): the same seed gives the same image in
            any process.

    Returns:
        float32 tensor (height, width, channels) in [-1, 1].
    """
    import tensorflow as tf

    height, width = _as_size(image_size)
    image = _match_channels(image, channels)
    crop_seed = flip_seed = None
    if seed is not None:
        crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    if crop == "inception":
        box = dict(
            bounding_boxes=tf.constant([0.0, 0.0, 1.0, 1.0], shape=[1, 1, 4]),
            area_range=INCEPTION_CROP_AREA,
            aspect_ratio_range=(3 / 4, 4 / 3),
            min_object_covered=0.0,
            use_image_if_no_bounding_boxes=True,
        )
        if seed is None:
            begin, crop_size, _ = tf.image.sample_distorted_bounding_box(tf.shape(image), **box)
        else:
            begin, crop_size, _ = tf.image.stateless_sample_distorted_bounding_box(
                tf.shape(image), seed=crop_seed, **box
            )
        image = tf.slice(image, begin, crop_size)
        image.set_shape([None, None, channels])  # a slice of runtime size loses the static channel count
        image = tf.image.resize(image, (height, width), method="bilinear")
    elif crop == "translate":
        image = tf.image.resize(image, (height, width), method="bilinear")
        pad_h, pad_w = max(1, round(height * TRANSLATE_PAD_FRACTION)), max(1, round(width * TRANSLATE_PAD_FRACTION))
        # Black padding: the background of digits and the usual choice for CIFAR-style shifts.
        image = tf.pad(image, [[pad_h, pad_h], [pad_w, pad_w], [0, 0]])
        if seed is None:
            image = tf.image.random_crop(image, (height, width, channels))
        else:
            image = tf.image.stateless_random_crop(image, (height, width, channels), seed=crop_seed)
    else:
        image = tf.image.resize(image, (height, width), method="bilinear")
    if flip:
        if seed is None:
            image = tf.image.random_flip_left_right(image)
        else:
            image = tf.image.stateless_random_flip_left_right(image, seed=flip_seed)
    image = tf.clip_by_value(image, 0.0, 255.0)
    return scale_pixels(tf.ensure_shape(image, (height, width, channels)))


def preprocess_for_eval(image, *, image_size, channels=3, crop_fraction=1.0, interpolation="bilinear",
                        crop_mode="squash"):
    """Evaluation preprocessing of one image: resize (and centre-crop), scale to [-1, 1].

    Args:
        image: uint8 tensor (H, W) or (H, W, C) with C in 1, 3, 4.
        image_size: int or (height, width) of the output.
        channels: 1 or 3.
        crop_fraction: 1.0 keeps the whole image; below 1 resizes to
            ``floor(image_size / crop_fraction)`` and keeps the central ``image_size`` (the
            "resize 256, crop 224" of ImageNet evaluation is 0.875), as timm's ``crop_pct``.
        interpolation: tf.image.resize's method (``"bilinear"``, ``"bicubic"``, ...).
        crop_mode: ``"squash"`` resizes both sides (the original's and Hugging Face's
            resize); ``"center"`` resizes the shorter side and keeps the aspect (timm's
            default), then crops the centre.

    Returns:
        float32 tensor (height, width, channels) in [-1, 1].
    """
    import tensorflow as tf

    height, width = _as_size(image_size)
    image = _match_channels(image, channels)
    outer = (math.floor(height / crop_fraction), math.floor(width / crop_fraction))
    if crop_mode == "center" and height == width:
        # torchvision's Resize(int): the shorter side to `outer`, the longer truncated.
        shape = tf.shape(image)[:2]
        resized = tf.maximum(shape * outer[0] // tf.reduce_min(shape), [height, width])
    else:
        resized = tf.constant(outer)
    # Antialiased as PIL (timm's, Hugging Face's resize) when shrinking; an image already of
    # the size is kept as it is.
    image = tf.cond(
        tf.reduce_all(tf.equal(tf.shape(image)[:2], resized)),
        lambda: tf.cast(image, tf.float32),
        lambda: tf.image.resize(image, resized, method=interpolation, antialias=True),
    )
    # torchvision's CenterCrop offsets: round((resized - size) / 2), half to even.
    top, left = tf.unstack(tf.cast(tf.round(tf.cast(resized - [height, width], tf.float32) / 2), tf.int32))
    image = tf.ensure_shape(image[top : top + height, left : left + width], (height, width, channels))
    image = tf.clip_by_value(image, 0.0, 255.0)
    return scale_pixels(image)


def _batch_augmenter(randaugment, mixup, cutmix, seed):
    """Returns a function over batches ``(images in [-1, 1], one-hot labels)``, or None."""
    import keras
    import tensorflow as tf

    steps = []
    if randaugment:
        num_ops, magnitude = randaugment
        rand_augment = keras.layers.RandAugment(value_range=(-1.0, 1.0), num_ops=num_ops, factor=magnitude, seed=seed)
        steps.append(lambda images, labels: (rand_augment(images, training=True), labels))
    mixers = []
    if mixup:
        mixers.append(keras.layers.MixUp(alpha=mixup, seed=seed))
    if cutmix:
        mixers.append(keras.layers.CutMix(factor=cutmix, seed=seed))
    if mixers:

        def mix(images, labels):
            if len(mixers) == 1:
                return _mix(mixers[0], images, labels)
            # DeiT: one of MixUp / CutMix per batch, with equal probability.
            return tf.cond(
                tf.random.uniform(()) < 0.5,
                lambda: _mix(mixers[0], images, labels),
                lambda: _mix(mixers[1], images, labels),
            )

        steps.append(mix)
    if not steps:
        return None

    def augment(images, labels):
        for step in steps:
            images, labels = step(images, labels)
        return images, labels

    return augment


def _mix(layer, images, labels):
    import tensorflow as tf

    mixed = layer({"images": images, "labels": labels}, training=True)
    return tf.cast(mixed["images"], tf.float32), tf.cast(mixed["labels"], tf.float32)


def _build_pipelines(
    train,
    validation,
    *,
    num_classes,
    image_size,
    channels,
    batch_size,
    crop,
    flip,
    eval_crop_fraction,
    randaugment,
    mixup,
    cutmix,
    image_spec,
    random_erasing,
    shuffle_buffer,
    seed,
    cache,
    train_examples,
    decode=None,
):
    """Turns datasets into batched pipelines: ``(train, validation, stream)`` (see :class:`Datasets`).

    ``train`` yields the training examples in a fixed order, as ``(uint8 image, int label)``
    or as what ``decode`` turns into that (a path and a label: decoding after the shuffle
    keeps the shuffle buffer small and makes skipping cheap); ``validation`` yields
    ``(uint8 image, int label)``.
    """
    import tensorflow as tf

    from keras_vit.data import erasing

    autotune = tf.data.AUTOTUNE
    if seed is None:
        seed = int(np.random.randint(2**31))  # follows keras.utils.set_random_seed
    base_seed = tf.constant([seed, 0], tf.int64)
    examples_per_pass = train_examples // batch_size * batch_size  # full batches only

    def one_hot(label):
        return tf.one_hot(tf.cast(label, tf.int32), num_classes, dtype=tf.float32)

    spec = image_spec or ImageSpec(image_size=_as_size(image_size), channels=channels)
    if eval_crop_fraction is None:
        eval_crop_fraction = spec.crop_fraction

    def eval_map(image, label):
        image = preprocess_for_eval(image, image_size=image_size, channels=channels, crop_fraction=eval_crop_fraction,
                                    interpolation=spec.interpolation, crop_mode=spec.crop_mode)
        return spec.from_unit_range(image), one_hot(label)

    def to_model_input(images, labels):  # after augmentation, which works in [-1, 1]
        return spec.from_unit_range(images), labels

    if decode is not None and cache:
        train, decode = train.map(decode, num_parallel_calls=autotune), None
    if cache:
        train = train.cache()  # Decoded images; the random crops stay fresh every epoch.

    def one_pass(pass_key):
        # Pass ``pass_key`` over the data: its order and every image's crop and flip are
        # functions of (seed, pass_key, position) alone, whatever process computes them.
        key = tf.random.experimental.stateless_fold_in(base_seed, pass_key)
        # The graph seed of this function, not the process's: the shuffle's seed pair is then
        # (1, order_seed) whatever keras.utils.set_random_seed said (and a tensor seed works
        # where a global seed of 0 would make TensorFlow compare it as a bool).
        tf.random.set_seed(1)
        order_seed = tf.random.stateless_uniform([], seed=key, minval=None, maxval=None, dtype=tf.int64)
        examples = train.shuffle(shuffle_buffer, seed=order_seed, reshuffle_each_iteration=False)
        examples = examples.take(examples_per_pass).enumerate()
        fold_in = tf.random.experimental.stateless_fold_in
        return examples.map(lambda position, example: (fold_in(key, position), example))

    def train_map(image_seed, example):
        image, label = decode(*example) if decode is not None else example
        image = preprocess_for_train(
            image, image_size=image_size, channels=channels, crop=crop, flip=flip, seed=image_seed
        )
        if random_erasing:  # per image, after scaling, as timm's transforms (before MixUp/CutMix)
            image = erasing.random_erasing(image, random_erasing, tf.random.experimental.stateless_fold_in(image_seed, 7))
        return image, one_hot(label)

    # RandAugment, MixUp and CutMix draw from Keras's seed generators, whose state is not
    # part of the stream: a resumed run draws them afresh (its images and order are exact).
    augment = _batch_augmenter(randaugment, mixup, cutmix, seed)

    def batched(examples):
        # Full batches only: replicas and accumulated micro-batches then always see equal shares.
        batches = examples.map(train_map, num_parallel_calls=autotune).batch(batch_size, drop_remainder=True)
        if augment is not None:
            batches = batches.map(augment, num_parallel_calls=autotune)
        if not spec.is_unit_range:
            batches = batches.map(to_model_input, num_parallel_calls=autotune)
        return batches.prefetch(autotune)

    def stream(skip_batches=0):
        first_pass, skipped = divmod(int(skip_batches), examples_per_pass // batch_size)
        examples = tf.data.Dataset.range(first_pass, 2**62).flat_map(one_pass)
        return batched(examples.skip(skipped * batch_size))  # skipped before decoding, so skipping is cheap

    # One pass with a fresh key each time it is iterated (each epoch of a plain model.fit).
    one_epoch = batched(tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).take(1).flat_map(one_pass))
    one_epoch = one_epoch.apply(tf.data.experimental.assert_cardinality(examples_per_pass // batch_size))

    validation = validation.map(eval_map, num_parallel_calls=autotune)
    if cache:
        validation = validation.cache()
    validation = validation.batch(batch_size).prefetch(autotune)
    return one_epoch, validation, stream


def embedded_mnist(
    batch_size=128,
    *,
    image_size=28,
    channels=1,
    crop="translate",
    flip=False,
    eval_crop_fraction=None,
    randaugment=None,
    mixup=None,
    cutmix=None,
    image_spec=None,
    random_erasing=None,
    seed=None,
):
    """Pipelines over the embedded MNIST digits with the fixed 4,000 / 1,000 split.

    Args:
        batch_size: images per batch (the global batch under a distribution strategy).
        image_size: int or (height, width); digits are 28x28 and are resized otherwise.
        channels: 1 keeps the digits grayscale, 3 repeats them as RGB.
        crop: ``"translate"`` (default: random shifts; an inception crop would cut digits
            apart), ``"inception"`` or ``"none"``.
        flip: horizontal flips; off by default because a mirrored digit is another glyph.
        eval_crop_fraction: see :func:`preprocess_for_eval` (default: the image spec's).
        randaugment: None, or ``(num_ops, magnitude)`` for ``keras.layers.RandAugment``.
        mixup: None, or the alpha of ``keras.layers.MixUp``.
        cutmix: None, or the factor of ``keras.layers.CutMix``.
        random_erasing: None, or the probability of timm's RandomErasing (per-pixel
            noise in one rectangle of each training image; :mod:`keras_vit.data.erasing`).
        seed: shuffling and augmentation seed.
        image_spec: the model's :class:`keras_vit.core.image_spec.ImageSpec`: images
            come out as that model takes them (mean/std, or [0, 255] pixels), resized for
            evaluation with its interpolation and crop. Default: [-1, 1], bilinear, no crop.

    Returns:
        A :class:`Datasets`.

    Raises:
        ValueError: for an invalid argument, naming it.
    """
    import tensorflow as tf

    size = check_options(
        image_size=image_size, channels=channels, crop=crop, flip=flip, eval_crop_fraction=eval_crop_fraction,
        randaugment=randaugment, mixup=mixup, cutmix=cutmix, batch_size=batch_size, random_erasing=random_erasing,
    )
    (x_train, y_train), (x_val, y_val) = load_embedded_mnist()
    train, validation, stream = _build_pipelines(
        tf.data.Dataset.from_tensor_slices((x_train[..., None], y_train)),
        tf.data.Dataset.from_tensor_slices((x_val[..., None], y_val)),
        num_classes=len(MNIST_CLASS_NAMES),
        image_size=size,
        channels=channels,
        batch_size=batch_size,
        crop=crop,
        flip=flip,
        eval_crop_fraction=eval_crop_fraction,
        randaugment=randaugment,
        mixup=mixup,
        cutmix=cutmix,
        image_spec=image_spec,
        random_erasing=random_erasing,
        shuffle_buffer=len(x_train),
        seed=seed,
        cache=False,  # Already in memory.
        train_examples=len(x_train),
    )
    return Datasets(
        train, validation, len(MNIST_CLASS_NAMES), list(MNIST_CLASS_NAMES), len(x_train), len(x_val), stream=stream
    )


# --------------------------------------------------------------------------- image folders
def _readable_image(path, max_pixels):
    """None when ``path`` decodes as an accepted image (:mod:`keras_vit.data.decode`), else why not.

    Checked before any byte is decoded: a regular file (a FIFO or socket would hang the
    read), reachable (not a symlink loop), and at most ``max_pixels`` by its header."""
    import stat

    import tensorflow as tf

    from keras_vit.data.decode import decoded_size

    try:
        mode = os.stat(path).st_mode
    except OSError as error:  # ELOOP: a symlink loop; ENOENT: a dangling link
        return f"cannot be opened ({error.strerror})"
    if not stat.S_ISREG(mode):
        return "not a regular file (a FIFO, socket or device is never read)"
    size = decoded_size(path)
    if size is not None and size[0] * size[1] > max_pixels:
        return (f"{size[0]}x{size[1]} pixels is more than max_pixels={max_pixels:,} (read from its header, not "
                f"decoded); downscale it or raise max_pixels")
    try:
        contents = tf.io.read_file(path)
        problem = format_problem(path, contents.numpy()[:8])
        if problem is not None:
            return problem
        image = tf.io.decode_image(contents, channels=3, expand_animations=False)
        if image.shape[0] == 0 or image.shape[1] == 0:
            return "empty image"
    except tf.errors.OpError as error:
        return error.message.splitlines()[0] if error.message else type(error).__name__
    return None


def scan_image_folder(directory, class_names=None, *, verbose=True, max_pixels=None):
    """Lists the images of a folder with one sub-folder per class, checking each one.

    Every file is decoded once; a corrupt or non-image file (anything but a decodable
    JPEG, PNG, BMP or GIF), one that is not a regular file (a FIFO, a socket) or a symlink
    loop, and one larger than ``max_pixels`` by its header is left out and reported by
    name, so that training never fails, hangs or runs out of memory on it mid-epoch. Hidden
    folders and files (``.*``, such as ``.ipynb_checkpoints``) are neither classes nor images.

    Args:
        directory: folder holding one sub-folder per class (``cat/``, ``dog/``, ...).
        class_names: expected class folders in label order (to keep the labels of a
            training folder on a validation folder); default: the sorted sub-folders.
        verbose: print the skipped files and a count to standard error.
        max_pixels: largest decoded width x height read (default
            :data:`keras_vit.data.decode.DEFAULT_MAX_PIXELS`, 50 megapixels).

    Returns:
        ``(paths, labels, class_names, skipped)``: lists of readable file paths and
        their int labels, the class names, and ``(path, reason)`` for each skipped file.

    Raises:
        FileNotFoundError: if ``directory`` (or an expected class folder) does not exist.
        ValueError: if there are no class folders or no readable image.
    """
    import sys
    from concurrent.futures import ThreadPoolExecutor

    from keras_vit.ownership import is_marked

    if not os.path.isdir(directory):
        raise FileNotFoundError(f"Image folder {directory!r} does not exist or is not a folder.")
    from keras_vit.data.decode import DEFAULT_MAX_PIXELS

    max_pixels = DEFAULT_MAX_PIXELS if max_pixels is None else max_pixels
    # Hidden entries are not data, nor is a folder keras-vit wrote (a run, an export: it holds the marker).
    found = sorted(
        entry for entry in os.listdir(directory)
        if not entry.startswith(".") and os.path.isdir(os.path.join(directory, entry))
        and not is_marked(os.path.join(directory, entry))
    )
    if class_names is None:
        class_names = found
        if not class_names:
            raise ValueError(
                f"Image folder {directory!r} has no sub-folders; expected one sub-folder per class "
                f"(e.g. {directory}/cat/001.jpg, {directory}/dog/002.png)."
            )
    else:
        missing = [name for name in class_names if name not in found]
        if missing:
            raise FileNotFoundError(f"Image folder {directory!r} lacks the class folders {missing}; it has {found}.")
    candidates = []
    for label, name in enumerate(class_names):
        class_dir = os.path.join(directory, name)
        walked = []
        for root, folders, files in os.walk(class_dir):
            folders[:] = [name for name in folders  # not descended into: hidden folders and keras-vit's own
                          if not name.startswith(".") and not is_marked(os.path.join(root, name))]
            walked.append((root, files))
        for root, files in sorted(walked):
            candidates += [(os.path.join(root, f), label) for f in sorted(files) if not f.startswith(".")]
    with ThreadPoolExecutor(max_workers=8) as pool:
        problems = list(pool.map(lambda item: _readable_image(item[0], max_pixels), candidates))
    paths, labels, skipped = [], [], []
    for (path, label), problem in zip(candidates, problems):
        if problem is None:
            paths.append(path)
            labels.append(label)
        else:
            skipped.append((path, problem))
    if verbose and skipped:
        print(f"Skipped {len(skipped)} of {len(candidates)} files in {directory}:", file=sys.stderr)
        for path, problem in skipped:
            print(f"  {path}: {problem}", file=sys.stderr)
    if not paths:
        raise ValueError(f"Image folder {directory!r} holds no readable JPEG, PNG, BMP or GIF image ({len(skipped)} skipped).")
    return paths, labels, list(class_names), skipped


def _load_file(path, label):
    import tensorflow as tf

    return decode_upright(tf.io.read_file(path), 3), label


def _file_list(paths, labels):
    import tensorflow as tf

    return tf.data.Dataset.from_tensor_slices((list(paths), np.asarray(labels, np.int32)))


def _file_dataset(paths, labels):
    import tensorflow as tf

    return _file_list(paths, labels).map(_load_file, num_parallel_calls=tf.data.AUTOTUNE)


def image_folder(
    directory,
    batch_size=32,
    *,
    validation_directory=None,
    validation_fraction=0.1,
    image_size=224,
    channels=3,
    crop="inception",
    flip=True,
    eval_crop_fraction=None,
    randaugment=None,
    mixup=None,
    cutmix=None,
    image_spec=None,
    random_erasing=None,
    seed=0,
    cache=False,
    max_pixels=None,
    shrink_batch=False,
):
    """Pipelines over folders of JPEG/PNG images, one sub-folder per class.

    Args:
        directory: training folder (``directory/<class>/<image>``).
        batch_size: images per batch.
        validation_directory: a folder laid out the same way for validation; without it
            the last ``validation_fraction`` of each class (after a seeded shuffle) is held out.
        validation_fraction: share of each class held out when there is no validation folder.
        image_size, channels, crop, flip, eval_crop_fraction, randaugment, mixup, cutmix:
            as :func:`embedded_mnist` (here the inception crop and flips are on by default).
        seed: split, shuffling and augmentation seed.
        cache: keep decoded images in memory after the first epoch.
        max_pixels: images larger than this (width x height, from the header) are skipped
            before decoding (default 50 megapixels; see :func:`scan_image_folder`).
        shrink_batch: a folder of fewer training images than ``batch_size`` makes one
            batch of them all (``Datasets.batch_size``) instead of being refused.

    Returns:
        A :class:`Datasets`; ``skipped_files`` lists the unreadable files left out.

    Raises:
        FileNotFoundError: for a missing folder.
        ValueError: for an invalid argument, or a folder without readable images.
    """
    size = check_options(
        image_size=image_size, channels=channels, crop=crop, flip=flip, eval_crop_fraction=eval_crop_fraction,
        randaugment=randaugment, mixup=mixup, cutmix=cutmix, batch_size=batch_size, random_erasing=random_erasing,
    )
    paths, labels, class_names, skipped = scan_image_folder(directory, max_pixels=max_pixels)
    if len(class_names) < 2:
        raise ValueError(
            f"Image folder {directory!r} has one class folder ({class_names[0]!r}); a classifier needs at least two "
            f"(one sub-folder per class)."
        )
    if validation_directory is not None:
        val_paths, val_labels, _, val_skipped = scan_image_folder(validation_directory, class_names,
                                                                  max_pixels=max_pixels)
        skipped += val_skipped
    else:
        if not 0 < validation_fraction < 1:
            raise ValueError(f"validation_fraction must be in (0, 1); got {validation_fraction!r}.")
        rng = np.random.default_rng(seed)
        labels_array = np.asarray(labels)
        validation = np.zeros(len(paths), dtype=bool)
        for label in range(len(class_names)):
            indices = rng.permutation(np.flatnonzero(labels_array == label))
            if len(indices) < 2:
                raise ValueError(
                    f"Class {class_names[label]!r} of {directory!r} has {len(indices)} readable image(s); holding out "
                    f"a validation share needs at least 2 per class. Add images, or give a validation folder."
                )
            held_out = int(round(len(indices) * validation_fraction))
            if len(indices) > 1:
                held_out = min(max(held_out, 1), len(indices) - 1)
            validation[indices[len(indices) - held_out :]] = True
        val_paths = [p for p, v in zip(paths, validation) if v]
        val_labels = [lab for lab, v in zip(labels, validation) if v]
        paths = [p for p, v in zip(paths, validation) if not v]
        labels = [lab for lab, v in zip(labels, validation) if not v]
    if len(paths) < batch_size and shrink_batch:
        batch_size = len(paths)
    if len(paths) < batch_size:
        raise ValueError(
            f"{directory!r} has {len(paths)} training images, fewer than one batch of {batch_size}; "
            f"lower batch_size to at most {len(paths)}."
        )
    train, validation_ds, stream = _build_pipelines(
        _file_list(paths, labels),
        _file_dataset(val_paths, val_labels),
        num_classes=len(class_names),
        image_size=size,
        channels=channels,
        batch_size=batch_size,
        crop=crop,
        flip=flip,
        eval_crop_fraction=eval_crop_fraction,
        randaugment=randaugment,
        mixup=mixup,
        cutmix=cutmix,
        image_spec=image_spec,
        random_erasing=random_erasing,
        shuffle_buffer=min(len(paths), 10_000),
        seed=seed,
        cache=cache,
        train_examples=len(paths),
        decode=_load_file,
    )
    return Datasets(
        train, validation_ds, len(class_names), class_names, len(paths), len(val_paths), [p for p, _ in skipped],
        stream=stream, batch_size=batch_size,
    )


# --------------------------------------------------------------------------- TensorFlow Datasets
def tfds_dataset(
    name,
    batch_size=32,
    *,
    data_dir=None,
    download=False,
    train_split="train",
    validation_split=None,
    image_size=224,
    channels=3,
    crop="inception",
    flip=True,
    eval_crop_fraction=None,
    randaugment=None,
    mixup=None,
    cutmix=None,
    image_spec=None,
    random_erasing=None,
    seed=0,
    cache=False,
):
    """Pipelines over a TensorFlow Datasets image-classification dataset.

    Args:
        name: TFDS name (``"cifar10"``, ``"cifar100"``, ``"oxford_iiit_pet"``,
            ``"oxford_flowers102"``, ``"imagenet2012"``, ...), optionally with a config
            and version (``"cifar10:3.0.2"``).
        batch_size: images per batch.
        data_dir: where TFDS keeps prepared datasets (TFDS's default when None).
        download: download and prepare the dataset when it is not in ``data_dir`` yet.
            Off by default: nothing is fetched unless asked for.
        train_split: TFDS split for training (slicing allowed: ``"train[:98%]"``).
        validation_split: split for validation; default ``"validation"`` when the
            dataset has one, else ``"test"``.
        image_size, channels, crop, flip, eval_crop_fraction, randaugment, mixup, cutmix:
            as :func:`image_folder`.
        seed: shuffling and augmentation seed.
        cache: keep decoded images in memory.

    Returns:
        A :class:`Datasets`.

    Raises:
        FileNotFoundError: if the dataset is not prepared in ``data_dir`` and ``download``
            is False.
        RuntimeError: if the download or preparation fails (no network, for one).
        ValueError: for an unknown dataset, a dataset without ``image``/``label``
            features, an unknown split, or another invalid argument.
    """
    import tensorflow_datasets as tfds

    size = check_options(
        image_size=image_size, channels=channels, crop=crop, flip=flip, eval_crop_fraction=eval_crop_fraction,
        randaugment=randaugment, mixup=mixup, cutmix=cutmix, batch_size=batch_size, random_erasing=random_erasing,
    )
    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError as error:
        raise ValueError(f"Unknown TFDS dataset {name!r}: {str(error).splitlines()[0]}") from None
    if not builder.is_prepared():
        if not download:
            raise FileNotFoundError(
                f"TFDS dataset {name!r} is not prepared in {builder.data_dir!r}. Pass download=True "
                f"(--download) to download and prepare it, or data_dir= (--data-dir) where it already is."
            )
        try:
            builder.download_and_prepare()
        except (OSError, ConnectionError) as error:  # e.g. no network
            raise RuntimeError(
                f"Could not download and prepare TFDS dataset {name!r} into {builder.data_dir!r}: {error}"
            ) from error
    features = builder.info.features
    if "image" not in features or "label" not in features:
        raise ValueError(f"TFDS dataset {name!r} has features {list(features)}; expected 'image' and 'label'.")
    splits = list(builder.info.splits)
    if validation_split is None:
        validation_split = "validation" if "validation" in splits else "test"
    sources = {}
    for role, split in (("train", train_split), ("validation", validation_split)):
        try:
            # The files are read in one seeded order on every pass and in every process; each
            # pass reshuffles the examples with its own seed (see _build_pipelines).
            read_config = tfds.ReadConfig(shuffle_seed=seed, shuffle_reshuffle_each_iteration=False)
            sources[role] = builder.as_dataset(
                split=split, as_supervised=True, shuffle_files=role == "train", read_config=read_config
            )
        except (ValueError, KeyError) as error:
            raise ValueError(
                f"TFDS dataset {name!r} has no split {split!r} ({error}); its splits are {splits}."
            ) from None
    label_feature = features["label"]
    train_examples = builder.info.splits[train_split].num_examples
    validation_examples = builder.info.splits[validation_split].num_examples
    train, validation, stream = _build_pipelines(
        sources["train"],
        sources["validation"],
        num_classes=label_feature.num_classes,
        image_size=size,
        channels=channels,
        batch_size=batch_size,
        crop=crop,
        flip=flip,
        eval_crop_fraction=eval_crop_fraction,
        randaugment=randaugment,
        mixup=mixup,
        cutmix=cutmix,
        image_spec=image_spec,
        random_erasing=random_erasing,
        shuffle_buffer=min(train_examples, 10_000),
        seed=seed,
        cache=cache,
        train_examples=train_examples,
    )
    return Datasets(
        train, validation, label_feature.num_classes, list(label_feature.names), train_examples, validation_examples,
        stream=stream,
    )


def image_folder_dataset(
    directory, *, image_size=224, batch_size=32, training=True, channels=3, crop="inception", flip=True, seed=0
):
    """One pipeline over every readable image of a class-per-folder tree (no split).

    Args:
        directory: folder with one sub-folder of JPEG/PNG images per class.
        image_size, batch_size, channels, crop, flip, seed: as :func:`image_folder`.
        training: training preprocessing (shuffle, random crop, flip, full batches) when
            True, evaluation preprocessing (resize, every image) when False.

    Returns:
        A ``tf.data.Dataset`` of ``(images, one_hot_labels)`` batches.

    Raises:
        FileNotFoundError, ValueError: as :func:`scan_image_folder`, or for an invalid argument.
    """
    size = check_options(image_size=image_size, channels=channels, crop=crop, flip=flip, batch_size=batch_size)
    paths, labels, class_names, _ = scan_image_folder(directory)
    train, evaluation, _ = _build_pipelines(
        _file_list(paths, labels),
        _file_dataset(paths, labels),
        num_classes=len(class_names),
        image_size=size,
        channels=channels,
        batch_size=batch_size,
        crop=crop,
        flip=flip,
        eval_crop_fraction=1.0,
        randaugment=None,
        mixup=None,
        cutmix=None,
        image_spec=None,
        random_erasing=None,
        shuffle_buffer=min(len(paths), 10_000),
        seed=seed,
        cache=False,
        train_examples=len(paths),
        decode=_load_file,
    )
    return train if training else evaluation
