"""The metrics section of the report: an evaluation table as rows of formatted cells, with each metric's direction
(↑ higher is better, ↓ lower, from the metric registry via the table's ``better``) and the best mean marked."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

ARROWS = {"higher": "↑", "lower": "↓"}
WORDS = {"higher": "higher is better", "lower": "lower is better", "": "no direction known"}


@dataclass
class Column:
    label: str
    arrow: str
    title: str


@dataclass
class Cell:
    text: str
    best: bool = False
    note: str = ""


@dataclass
class MetricTable:
    """Header columns, one row of cells per method, and facts for the caption."""

    columns: list[Column]
    rows: list[list[Cell]]
    samples: int
    seed: int
    notes: list[str] = field(default_factory=list)


def number(v: float | None, digits: int = 4) -> str:
    """``v`` with ``digits`` significant digits; "n/a" for None or NaN."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    return f"{v:.{digits}g}"


def metric_cell(table, method: str, metric: str) -> Cell:
    """mean ± sd over the samples where the score is defined, and how many are not."""
    mean, sd = table.mean(method, metric), table.std(method, metric)
    scores = table[method, metric]
    undefined = int(scores.isnan().sum())
    text = number(mean) + ("" if math.isnan(sd) else f" ± {number(sd, 3)}")
    return Cell(text, note=f"{undefined} of {scores.numel()} samples undefined" if undefined else "")


def best_methods(table, metric: str) -> set[str]:
    """The methods whose mean is the best in the metric's direction (none when it has no direction)."""
    better = table.better.get(metric, "")
    means = {m: table.mean(m, metric) for m in table.methods}
    means = {m: v for m, v in means.items() if not math.isnan(v)}
    if better not in ARROWS or len(means) < 2:
        return set()
    best = max(means.values()) if better == "higher" else min(means.values())
    return {m for m, v in means.items() if v == best}


def metric_table(table) -> MetricTable:
    """The rows of an :class:`tribute.metrics.evaluate.EvaluationTable` as the report shows them."""
    columns = [Column("method", "", "")]
    for k in table.metrics:
        better = table.better.get(k, "")
        columns.append(Column(k, ARROWS.get(better, ""), f"{k}: mean ± sd over the samples; {WORDS[better]}"))
    columns += [Column("s / sample", "", "wall time of the attributions per sample (varies between runs)"),
                Column("forward / sample", "", "rows through the model forward per sample (counted by the engine)"),
                Column("backward / sample", "", "rows through the model backward per sample")]
    best = {k: best_methods(table, k) for k in table.metrics}
    rows = []
    for m in table.methods:
        cells = [Cell(m)]
        for k in table.metrics:
            cell = metric_cell(table, m, k)
            cell.best = m in best[k]
            cells.append(cell)
        eff = table.efficiency(m)
        cells.append(Cell(number(eff["seconds_per_sample"], 3)))
        # None: a callable that runs the model itself, which the engine cannot count
        cells += [Cell("not counted" if eff[k] is None else number(eff[k], 6))
                  for k in ("forward_per_sample", "backward_per_sample")]
        rows.append(cells)
    notes = [f"{k} has no direction (a metric not in the registry): no best method is marked"
             for k in table.metrics if table.better.get(k, "") not in ARROWS]
    return MetricTable(columns, rows, table.samples, table.seed, notes)
