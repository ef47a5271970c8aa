"""The tables, each written as CSV (numbers) and Markdown (for the docs), atomically."""

from __future__ import annotations

import csv
import io
import math
import pathlib

from ...atomic_files import write_bytes
from .scales import FRACTIONS


def write_table(out: pathlib.Path, name: str, header: list[str], rows: list[list], title: str) -> None:
    """``<name>.csv`` with ``header`` and ``rows`` (floats with full precision) and ``<name>.md`` (4 decimals)."""
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(header)
    writer.writerows([[repr(v) if isinstance(v, float) else v for v in row] for row in rows])
    write_bytes(str(out / f"{name}.csv"), text.getvalue().encode())
    md = [f"**{title}**", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    md += ["| " + " | ".join(f"{v:.4f}" if isinstance(v, float) else str(v) for v in row) + " |" for row in rows]
    write_bytes(str(out / f"{name}.md"), ("\n".join(md) + "\n").encode())


def mean_sd(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 with one value: a single seed has no spread to report)."""
    m = sum(values) / len(values)
    if len(values) < 2:
        return m, 0.0
    return m, math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1))


def roar_rows(per_seed: list[dict], methods) -> list[list]:
    """Per method: the mean of ROAR's accuracy over the seeds at each fraction, and its sd with several seeds."""
    rows = []
    for m in methods:
        row = [m]
        for i in range(len(FRACTIONS)):
            mean, sd = mean_sd([seed["accuracy"][m][i] for seed in per_seed])
            row += [mean, sd] if len(per_seed) > 1 else [mean]
        rows.append(row)
    return rows


def roar_header(seeds: int) -> list[str]:
    """The columns of a ROAR table: the sd columns only with several seeds (one seed has no spread to report)."""
    stats = ("mean", "sd") if seeds > 1 else ("mean",)
    return ["method"] + [f"{int(f * 100)}% {s}" for f in FRACTIONS for s in stats]
