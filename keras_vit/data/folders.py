"""Image folders (one sub-folder per class): scanning and checking every file, the seeded
validation hold-out, and the tf.data datasets of file paths that the pipelines decode."""

from __future__ import annotations

import os

import numpy as np

from keras_vit.data.decode import decode_upright, format_problem


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


def load_file(path, label):
    import tensorflow as tf

    return decode_upright(tf.io.read_file(path), 3), label


def file_list(paths, labels):
    import tensorflow as tf

    return tf.data.Dataset.from_tensor_slices((list(paths), np.asarray(labels, np.int32)))


def file_dataset(paths, labels):
    import tensorflow as tf

    return file_list(paths, labels).map(load_file, num_parallel_calls=tf.data.AUTOTUNE)


def hold_out_validation(paths, labels, class_names, directory, validation_fraction, seed):
    """Splits one folder's files: the last ``validation_fraction`` of each class, after a
    seeded shuffle, is held out (at least one image per class, never all of them).

    Returns:
        ``(train_paths, train_labels, validation_paths, validation_labels)``.
    """
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
    return (
        [p for p, v in zip(paths, validation) if not v],
        [lab for lab, v in zip(labels, validation) if not v],
        [p for p, v in zip(paths, validation) if v],
        [lab for lab, v in zip(labels, validation) if v],
    )
