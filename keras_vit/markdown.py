"""The one Markdown table writer of the package (model lists, predictions, export and benchmark reports)."""

from __future__ import annotations

from typing import Sequence


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]], right_aligned: Sequence[bool] = ()) -> str:
    """A Markdown table with padded columns.

    Args:
        header: the column names.
        rows: one sequence of cells per row, as many as ``header``; cells are written with ``str``.
        right_aligned: per column, whether its cells are padded on the left (numbers); missing
            entries mean left-aligned.
    """
    cells = [[str(cell) for cell in row] for row in rows]
    for row in cells:
        if len(row) != len(header):
            raise ValueError(f"a row has {len(row)} cells, the header {len(header)}: {row}")
    widths = [max([len(name)] + [len(row[i]) for row in cells]) for i, name in enumerate(header)]
    right = list(right_aligned) + [False] * (len(header) - len(right_aligned))

    def line(values, pad_numbers):
        padded = (v.rjust(w) if pad_numbers and r else v.ljust(w) for v, w, r in zip(values, widths, right))
        return "| " + " | ".join(padded) + " |"

    lines = [line(header, False), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    lines += [line(row, True) for row in cells]
    return "\n".join(lines)
