"""TensorFlow Datasets sources: the dataset prepared (or refused), its splits read in one seeded
order, and what the pipelines need to know about it (classes, names, example counts)."""

from __future__ import annotations


def prepared_builder(name, data_dir=None, download=False):
    """The TFDS builder of ``name``, prepared in ``data_dir`` (downloaded only when asked)."""
    import tensorflow_datasets as tfds

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
    return builder


def tfds_source(name, *, data_dir=None, download=False, train_split="train", validation_split=None, seed=0):
    """Reads the training and validation splits of ``name`` (see
    :func:`keras_vit.data.pipelines.tfds_dataset` for the arguments and errors).

    Returns:
        ``(train, validation, num_classes, class_names, train_examples, validation_examples)``:
        the splits as ``(uint8 image, int label)`` datasets, then what :class:`Datasets` reports.
    """
    import tensorflow_datasets as tfds

    builder = prepared_builder(name, data_dir, download)
    splits = list(builder.info.splits)
    if validation_split is None:
        validation_split = "validation" if "validation" in splits else "test"
    sources = {}
    for role, split in (("train", train_split), ("validation", validation_split)):
        try:
            # The files are read in one seeded order on every pass and in every process; each
            # pass reshuffles the examples with its own seed (see pipelines._build_pipelines).
            read_config = tfds.ReadConfig(shuffle_seed=seed, shuffle_reshuffle_each_iteration=False)
            sources[role] = builder.as_dataset(
                split=split, as_supervised=True, shuffle_files=role == "train", read_config=read_config
            )
        except (ValueError, KeyError) as error:
            raise ValueError(
                f"TFDS dataset {name!r} has no split {split!r} ({error}); its splits are {splits}."
            ) from None
    label_feature = builder.info.features["label"]
    return (
        sources["train"], sources["validation"], label_feature.num_classes, list(label_feature.names),
        builder.info.splits[train_split].num_examples, builder.info.splits[validation_split].num_examples,
    )
