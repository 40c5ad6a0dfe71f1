"""A model's input contract: what an image file must become before the model sees it.

Size, channels, pixel range, mean and std, resize interpolation, evaluation crop and
class names, as one frozen object (timm's ``pretrained_cfg`` / ``resolve_data_config``,
keras-hub's ``ImageConverter``). It is derived from the model's own constructor
arguments, so it is saved in the ``.keras`` file and comes back with the model; every
consumer (the training and evaluation pipelines, ``predict``, the exporters and their
manifest, ``save_pretrained``, ``data_config``) reads it instead of working it out again.

keras_vit's pipelines and image readers produce images in the unit range [-1, 1]
(``x / 127.5 - 1``, the original's scaling); :meth:`ImageSpec.from_unit_range` is the one
place where they become what a particular model takes.
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Tuple

import numpy as np

from keras_vit.core.config import (  # noqa: F401 (CROP_MODES, INTERPOLATIONS, as_pair: re-exported)
    ARGUMENT_NAMES,
    CROP_MODES,
    INTERPOLATIONS,
    VisionTransformerConfig,
    as_pair,
)

UNIT_MEAN = (0.5, 0.5, 0.5)  # the original's x / 127.5 - 1 is mean = std = 0.5
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclasses.dataclass(frozen=True)
class ImageSpec:
    """How images are prepared for one model.

    Attributes:
        image_size: (height, width) the model takes (None, None for any size).
        channels: 3 (RGB) or 1 (grayscale).
        mean, std: per-channel normalisation of pixels scaled to [0, 1]:
            ``(pixels / 255 - mean) / std``.
        pixels_inside: the model normalises inside (``include_preprocessing=True``) and
            takes pixels in [0, 255]; otherwise it takes normalised floats.
        interpolation: resize method for evaluation and inference.
        crop_fraction: evaluation crop: resize to ``size / crop_fraction``, keep the centre.
        crop_mode: ``"squash"`` (resize both sides) or ``"center"`` (the shorter side, timm's).
        class_names: the head's class names, or None.
    """

    image_size: Tuple[Optional[int], Optional[int]]
    channels: int = 3
    mean: Tuple[float, ...] = UNIT_MEAN
    std: Tuple[float, ...] = UNIT_MEAN
    pixels_inside: bool = False
    interpolation: str = "bilinear"
    crop_fraction: float = 1.0
    crop_mode: str = "squash"
    class_names: Optional[Tuple[str, ...]] = None

    @classmethod
    def of(cls, model) -> "ImageSpec":
        """The spec of a keras_vit model (from its configuration), or of any Keras image
        classifier (its input shape and the original's defaults)."""
        if isinstance(getattr(model, "model_config", None), VisionTransformerConfig):
            return cls.from_config(model.model_config)
        shape = tuple(model.input_shape[1:])
        names = getattr(model, "class_names", None)
        return cls(
            image_size=(shape[0], shape[1]), channels=shape[2] or 3,
            mean=UNIT_MEAN[: shape[2] or 3], std=UNIT_MEAN[: shape[2] or 3],
            class_names=None if names is None else tuple(names),
        )

    @classmethod
    def from_model_arguments(cls, **arguments) -> "ImageSpec":
        """The spec a ``VisionTransformer(**arguments)`` would have, without building it
        (arguments that are None take the builder's defaults; others, such as ``name``,
        are ignored)."""
        known = {key: value for key, value in arguments.items() if key in ARGUMENT_NAMES and value is not None}
        return cls.from_config(VisionTransformerConfig(**known))

    @classmethod
    def from_config(cls, config: VisionTransformerConfig) -> "ImageSpec":
        """The spec of a model built from ``config``."""
        return cls(
            image_size=(None, None) if config.dynamic_image_size else config.image_size,
            channels=config.channels, mean=config.pixel_mean, std=config.pixel_std,
            pixels_inside=config.include_preprocessing, interpolation=config.interpolation,
            crop_fraction=config.crop_fraction, crop_mode=config.crop_mode, class_names=config.class_names,
        )

    # ------------------------------------------------------------------ pixel ranges
    @property
    def is_unit_range(self) -> bool:
        """The model takes exactly keras_vit's unit range [-1, 1] (x / 127.5 - 1)."""
        return not self.pixels_inside and all(m == 0.5 for m in self.mean) and all(s == 0.5 for s in self.std)

    @property
    def input_range(self) -> Tuple[float, float]:
        """(lowest, highest) value the model's input takes over all channels."""
        if self.pixels_inside:
            return (0.0, 255.0)
        mean, std = np.asarray(self.mean), np.asarray(self.std)
        return (float(np.min((0.0 - mean) / std)), float(np.max((1.0 - mean) / std)))

    def _broadcast(self, values):
        # One value per channel, or one for every channel (the builders accept both).
        return np.broadcast_to(np.asarray(values, "float32"), (self.channels,))

    def normalize(self, pixels):
        """[0, 255] pixels (NumPy array or TensorFlow tensor, channels last) -> model input."""
        if self.pixels_inside:
            return pixels * np.float32(1.0)
        mean, std = self._broadcast(self.mean), self._broadcast(self.std)
        return (pixels / np.float32(255.0) - mean) / std

    def from_unit_range(self, images):
        """Images in keras_vit's unit range [-1, 1] (as its pipelines and readers produce
        them) -> what this model takes. The identity for the original's scaling."""
        if self.is_unit_range:
            return images
        return self.normalize((images + np.float32(1.0)) * np.float32(127.5))

    def to_unit_range(self, inputs):
        """The inverse of :meth:`from_unit_range` (model input -> [-1, 1])."""
        if self.is_unit_range:
            return inputs
        if self.pixels_inside:
            return inputs / np.float32(127.5) - np.float32(1.0)
        mean, std = self._broadcast(self.mean), self._broadcast(self.std)
        return (inputs * std + mean) * np.float32(2.0) - np.float32(1.0)

    def describe(self) -> str:
        """One line a person can follow to prepare an image by hand."""
        size = "any size" if self.image_size[0] is None else f"{self.image_size[0]}x{self.image_size[1]}"
        resize = f"resize ({self.interpolation}) to {size}" + (
            f" / {self.crop_fraction:g}, centre crop" if self.crop_fraction < 1 else ""
        )
        if self.pixels_inside:
            return f"{resize}; keep [0, 255] pixels (the model normalises inside)"
        if self.is_unit_range:
            return f"{resize}; scale x / 127.5 - 1 to [-1, 1]"
        return f"{resize}; (x / 255 - mean) / std with mean {list(self.mean)}, std {list(self.std)}"

    # ------------------------------------------------------------------ serialisation
    def to_dict(self) -> dict:
        """Plain JSON-ready values (manifests, ``config.json``)."""
        values = dataclasses.asdict(self)
        values["image_size"] = list(self.image_size)
        values["mean"], values["std"] = list(self.mean), list(self.std)
        values["class_names"] = None if self.class_names is None else list(self.class_names)
        values["input_range"] = list(self.input_range)
        return values

    @classmethod
    def from_dict(cls, values: dict) -> "ImageSpec":
        """The inverse of :meth:`to_dict` (unknown keys, such as ``input_range``, ignored)."""
        fields = {field.name for field in dataclasses.fields(cls)}
        kept = {key: value for key, value in values.items() if key in fields}
        for key in ("image_size", "mean", "std", "class_names"):
            if kept.get(key) is not None:
                kept[key] = tuple(kept[key])
        return cls(**kept)

    def data_config(self) -> dict:
        """timm's ``resolve_data_config`` form: ``input_size`` (C, H, W), ``interpolation``,
        ``mean``, ``std``, ``crop_pct``, ``crop_mode``, plus ``pixels_inside`` and
        ``class_names``."""
        return {
            "input_size": (self.channels, *self.image_size),
            "interpolation": self.interpolation,
            "mean": tuple(self.mean),
            "std": tuple(self.std),
            "crop_pct": self.crop_fraction,
            "crop_mode": self.crop_mode,
            "pixels_inside": self.pixels_inside,
            "class_names": None if self.class_names is None else list(self.class_names),
        }
