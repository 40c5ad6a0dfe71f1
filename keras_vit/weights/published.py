"""Downloading published checkpoints into the Keras cache, with a clear word when offline.

Which files exist for which variant is :mod:`keras_vit.zoo`'s table; this module only
knows where the public bucket is and how a file is fetched and cached.
"""

from __future__ import annotations

import os

WEIGHTS_BASE_URL = "https://storage.googleapis.com/vit_models"
WEIGHTS_URL_ENV = "KERAS_VIT_WEIGHTS_URL"  # another base (a mirror, or file:// for tests)


def bucket_url(relative_path: str) -> str:
    """The URL of a file of the public bucket, under ``$KERAS_VIT_WEIGHTS_URL`` when set."""
    base = os.environ.get(WEIGHTS_URL_ENV, WEIGHTS_BASE_URL).rstrip("/")
    return f"{base}/{relative_path}"


def fetch(url: str, description: str) -> str:
    """Downloads ``url`` once into the Keras cache (``$KERAS_HOME/keras_vit``); returns its path.

    Raises:
        RuntimeError: when the download fails, naming the URL and where to put the file
            by hand on an offline machine.
    """
    import keras

    fname = url.rsplit("/", 1)[-1]
    # Read at call time (Keras reads KERAS_HOME once, at import).
    keras_home = os.environ.get("KERAS_HOME", os.path.join(os.path.expanduser("~"), ".keras"))
    cache_dir = os.path.join(keras_home, "keras_vit")
    os.makedirs(cache_dir, exist_ok=True)  # get_file falls back to /tmp when it is missing
    try:
        return keras.utils.get_file(fname=fname, origin=url, cache_dir=keras_home, cache_subdir="keras_vit")
    except Exception as error:  # get_file raises bare Exception on URL/HTTP failures
        raise RuntimeError(
            f"Could not download {description} from {url} ({error}). If this machine is offline, download "
            f"that file elsewhere and put it at {os.path.join(cache_dir, fname)}, or pass its local path as weights=."
        ) from error
