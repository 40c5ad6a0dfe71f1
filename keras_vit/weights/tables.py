"""One declarative table per checkpoint format, read in both directions.

A :class:`Table` lists :class:`Row` s: a name in the published ``.npz`` layout (ours), the
tensor name in the other library's state dict (theirs) and the :class:`Form` that turns one
into the other (a transpose, a split into attention heads, a convolution kernel's axes).
:func:`to_layout` reads a state dict through the table and :func:`from_layout` writes one,
so a name or a transform is written once for both directions.

Patterns hold ``{i}`` (an encoder block) and ``{base}`` (a prefix the format may put in
front of the backbone, Hugging Face's ``vit.``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Dict, Tuple, Union

import numpy as np

from keras_vit.weights import npz

OUR_BLOCK = "Transformer/encoderblock_{i}"
ATTENTION = OUR_BLOCK + "/MultiHeadDotProductAttention_1"
QKV = ("query", "key", "value")


@dataclass(frozen=True)
class Form:
    """How a tensor of theirs becomes an array of ours (``read``) and back (``write``)."""

    read: Callable[[np.ndarray, int], np.ndarray]  # (their tensor, attention heads) -> our array
    write: Callable[[np.ndarray], np.ndarray]  # our array -> their tensor


def _torch_linear(kernel):
    return np.ascontiguousarray(kernel.reshape(kernel.shape[0], -1).T)  # (in, ...) -> PyTorch (out, in)


SAME = Form(lambda value, heads: value, lambda value: value)
# PyTorch (out, in) <-> Keras (in, out).
LINEAR = Form(lambda weight, heads: np.ascontiguousarray(weight.T), _torch_linear)
# PyTorch's (D, C, P, P) convolution kernel <-> the published (P, P, C, D).
CONV = Form(
    lambda weight, heads: np.ascontiguousarray(weight.transpose(2, 3, 1, 0)),
    lambda kernel: np.ascontiguousarray(kernel.transpose(3, 2, 0, 1)),
)
# Query, key and value projections: (width, width) <-> (width, heads, head_dim).
HEADS_IN = Form(lambda weight, heads: LINEAR.read(weight, heads).reshape(weight.shape[1], heads, -1), _torch_linear)
HEADS_BIAS = Form(lambda bias, heads: bias.reshape(heads, -1), lambda bias: bias.reshape(-1))
# The output projection: (width, width) <-> (heads, head_dim, width).
HEADS_OUT = Form(
    lambda weight, heads: LINEAR.read(weight, heads).reshape(heads, -1, weight.shape[0]),
    lambda kernel: np.ascontiguousarray(kernel.reshape(-1, kernel.shape[-1]).T),
)


ABSENT = ("error", "skip", "zeros")


@dataclass(frozen=True)
class Row:
    """``ours`` <-> ``theirs`` through ``form``.

    ``ours`` may be several names stacked along the first axis of one tensor of theirs
    (timm's fused ``qkv``). ``absent`` says what a missing tensor of theirs means when
    reading: ``"error"`` (named), ``"skip"`` (the model has no such weight), ``"zeros"``
    (a bias the checkpoint's model was built without).
    """

    ours: Union[str, Tuple[str, ...]]
    theirs: str
    form: Form = SAME
    absent: str = "error"

    def __post_init__(self):
        if self.absent not in ABSENT:
            raise ValueError(f"Row {self.theirs!r}: absent={self.absent!r}; expected one of {list(ABSENT)}.")

    @property
    def parts(self) -> Tuple[str, ...]:
        return self.ours if isinstance(self.ours, tuple) else (self.ours,)


def norm(ours, theirs, absent="error"):
    """A LayerNorm: ``scale``/``bias`` <-> ``weight``/``bias``."""
    return Row(f"{ours}/scale", f"{theirs}.weight", absent=absent), Row(f"{ours}/bias", f"{theirs}.bias", absent=absent)


def dense(ours, theirs, absent="error"):
    """A Dense layer: ``kernel``/``bias`` <-> PyTorch ``weight``/``bias``."""
    return (Row(f"{ours}/kernel", f"{theirs}.weight", LINEAR, absent),
            Row(f"{ours}/bias", f"{theirs}.bias", absent=absent))


@dataclass(frozen=True)
class Table:
    """A checkpoint format: its rows, where its blocks start, the names read and dropped."""

    name: str
    rows: Tuple[Row, ...]
    their_block: str  # e.g. "blocks.{i}"
    dropped: Tuple[str, ...] = ()  # tensors of theirs the model has no use for


def _blocks(names, block_pattern, base) -> list:
    prefix = re.escape(block_pattern.format(base=base, i="@")).replace("@", r"(\d+)")
    return sorted({int(m.group(1)) for name in names if (m := re.match(prefix + r"[./]", name))})


def _expanded(table, names, block_pattern, base):
    """Every row with its names filled in: rows with ``{i}`` once per block of ``names``
    (their names when reading, ours when writing: ``block_pattern`` says where blocks start)."""
    blocks = _blocks(names, block_pattern, base)
    for row in table.rows:
        for i in blocks if "{i}" in row.theirs else [None]:
            yield row, tuple(name.format(i=i) for name in row.parts), row.theirs.format(base=base, i=i)


def to_layout(table: Table, tensors: Dict[str, np.ndarray], num_heads: int, *, base: str = "") -> Dict[str, np.ndarray]:
    """Their ``tensors`` -> the published layout (names nothing consumed kept as they are,
    for the strict loader to name). A required tensor that is missing raises ``KeyError``."""
    tensors = dict(tensors)
    arrays = {}
    for row, ours, theirs in _expanded(table, list(tensors), table.their_block, base):
        if theirs not in tensors and row.absent == "skip":
            continue
        if theirs not in tensors and row.absent == "zeros":
            # The model was built without this bias: the layout's is zero, one width per part.
            width = arrays["embedding/kernel"].shape[-1]
            value = np.zeros(len(ours) * width, "float32")
        else:
            value = tensors.pop(theirs)
        for name, part in zip(ours, np.split(value, len(ours)) if len(ours) > 1 else [value]):
            arrays[name] = row.form.read(part, num_heads)
    for name in table.dropped:
        tensors.pop(name.format(base=base), None)
    arrays.update(tensors)
    return arrays


def from_layout(table: Table, arrays: Dict[str, np.ndarray], *, base: str = "") -> Dict[str, np.ndarray]:
    """Arrays in the published layout -> their state dict. Every array must have a row."""
    arrays = dict(arrays)
    tensors = {}
    for row, ours, theirs in _expanded(table, list(arrays), OUR_BLOCK, base):
        if ours[0] not in arrays and row.absent != "error":
            continue
        parts = [row.form.write(arrays.pop(name)) for name in ours]
        tensors[theirs] = np.concatenate(parts) if len(parts) > 1 else parts[0]
    if arrays:
        raise ValueError(f"weights without a {table.name} name: {sorted(arrays)}")
    return tensors


def layout_arrays(model) -> Dict[str, np.ndarray]:
    """``model``'s weights in the published layout, shaped as the checkpoint stores them."""
    return {
        key: np.asarray(variable.numpy() if hasattr(variable, "numpy") else variable).reshape(shape)
        for key, (variable, shape) in npz.checkpoint_layout(model).items()
    }
