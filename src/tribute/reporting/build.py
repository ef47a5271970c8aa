"""``tribute.report(run_dir)``: one self-contained HTML page (images embedded as data URIs, no external CSS or
JavaScript) about a run directory (:mod:`tribute.run_directory`): each sample's image and every method's map with
its scale, the metric table with its directions, the metric curves, what each store computed (options, seeds,
target, model), the run log (settings, seeds, versions, time spent) and a note for every piece that is missing.

The page is rendered from Jinja2 templates shipped with the package (``tribute/reporting/templates``); the maps are
encoded straight to PNG (:mod:`tribute.viz.encode`, about a millisecond each), the curves drawn with matplotlib
(:mod:`tribute.viz.curves`) when it is installed.
"""

from __future__ import annotations

import datetime
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from .._optional import MissingExtraError, require
from ..atomic_files import write_bytes
from ..run_directory import open_run
from ..viz.encode import DEFAULT_PERCENTILE, colorbar_png, png_data_uri
from .runinfo import RunInfo, run_info
from .samples import SCALES, SamplesSection, samples_section
from .tables import MetricTable, metric_table

DEFAULT_MAX_SAMPLES = 12


@dataclass
class CurveFigure:
    metric: str
    uri: str


@dataclass
class Page:
    """Everything the template shows (one instance per report)."""

    title: str
    path: str
    generated: str
    version: str
    samples: SamplesSection | None
    metrics: MetricTable | None
    curves: list[CurveFigure]
    info: RunInfo
    colorbars: dict[str, str]
    percentile: float
    scale: str
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0


def curve_figures(table) -> tuple[list[CurveFigure], list[str]]:
    """One PNG per metric of the table that kept curves; a note instead when matplotlib is missing."""
    metrics = [k for k in table.metrics if any((m, k) in table.curves for m in table.methods)]
    if not metrics:
        return [], []
    try:
        from ..viz.curves import figure_png, table_curves_figure

        return [CurveFigure(k, png_data_uri(figure_png(table_curves_figure(table, [k]), dpi=90)))
                for k in metrics], []
    except MissingExtraError as e:
        return [], [f"the metric curves are not drawn: {e}"]


def load_stores(run) -> tuple[dict, list[str]]:
    """The run's finished stores; an unfinished or damaged store is a note, not the end of the report."""
    from ..store import StoreError

    try:
        return run.stores(), []
    except StoreError:
        pass
    stores, notes = {}, []
    folder = run.path / "attributions"
    for d in sorted(folder.iterdir()) if folder.is_dir() else []:
        try:
            stores.update(type(run)(d).stores())
        except StoreError as e:
            notes.append(f"attributions/{d.name} is left out: {e}")
    return stores, notes


def read_piece(read, name: str, notes: list[str]):
    """``read()``, or None with a note naming the file and the reason when it cannot be read (a damaged piece
    leaves the rest of the report standing)."""
    try:
        return read()
    except (ValueError, KeyError, TypeError, OSError) as e:
        notes.append(f"{name} could not be read and is left out: {e}")
        return None


def check_options(max_samples: int, scale: str, percentile: float) -> None:
    """Refuse bad options before any file is read."""
    if isinstance(max_samples, bool) or not isinstance(max_samples, int) or max_samples < 1:
        raise ValueError(f"max_samples must be a positive int, got {max_samples!r}")
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {', '.join(SCALES)}; got {scale!r}")
    if not isinstance(percentile, (int, float)) or not 0 < percentile <= 100:
        raise ValueError(f"percentile must be in (0, 100], got {percentile!r}")


def build_page(run_dir, *, max_samples: int = DEFAULT_MAX_SAMPLES, scale: str = "map",
               percentile: float = DEFAULT_PERCENTILE, title: str | None = None) -> Page:
    """Read the run directory and prepare what the page shows (see :func:`report`)."""
    import tribute

    check_options(max_samples, scale, percentile)
    run = open_run(run_dir)
    stores, notes = load_stores(run)
    inputs = None if run.is_store() else read_piece(run.inputs, "inputs.safetensors / inputs.json", notes)
    table = None if run.is_store() else read_piece(run.metrics, "metrics.json", notes)
    if not stores:
        notes.append("no attribution store: no maps to show (tribute explain and tribute.store.compute_store "
                     "write them under attributions/<method>)")
    if inputs is None and not (run.path / "inputs.safetensors").exists():
        notes.append("no inputs.safetensors: the samples' images, names and labels are not shown"
                     + (" (a single store keeps only attributions)" if run.is_store() else ""))
    if table is None and not (run.path / "metrics.json").exists():
        notes.append("no metrics.json: no metric table or curves (tribute evaluate --out RUN_DIR writes one)")
    section = samples_section(inputs, stores, max_samples=max_samples, scale=scale, percentile=percentile) \
        if stores else None
    curves, curve_notes = curve_figures(table) if table is not None else ([], [])
    return Page(
        title=title or f"tribute report: {run.path.resolve().name}", path=str(run.path.resolve()),
        generated=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        version=tribute.__version__, samples=section, metrics=metric_table(table) if table is not None else None,
        curves=curves, info=run_info(run, stores),
        colorbars={"signed": png_data_uri(colorbar_png(1.0, signed=True, width=255, height=10)),
                   "unsigned": png_data_uri(colorbar_png(1.0, signed=False, width=255, height=10))},
        percentile=percentile, scale=scale, notes=notes + curve_notes)


def render(page: Page) -> str:
    """The page's HTML, from the package's Jinja2 templates (autoescaped)."""
    jinja2 = require("jinja2", "report", "HTML reports")
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(Path(__file__).parent / "templates")),
                             autoescape=jinja2.select_autoescape(["html", "j2"], default=True),
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    return env.get_template("report.html.j2").render(page=page)


def report(run_dir: str | os.PathLike, out: str | os.PathLike | None = None, *,
           max_samples: int = DEFAULT_MAX_SAMPLES, scale: str = "map", percentile: float = DEFAULT_PERCENTILE,
           title: str | None = None) -> Path:
    """Write the HTML report of a run directory; returns the file written.

    Parameters
    ----------
    run_dir : path
        A run directory (``tribute explain``, ``tribute evaluate --out``) or a single attribution store
        (:func:`tribute.store.compute_store`); anything else is a :class:`tribute.run_directory.RunDirectoryError`.
    out : path, optional
        The HTML file (default ``<run_dir>/report.html``); its folder is created.
    max_samples : int
        Samples shown (the first ones; default 12): the page says when there are more.
    scale : {"map", "method"}
        Each map at its own scale (default), or one scale per method over its shown maps (to compare samples).
    percentile : float
        The scale is this percentile of |a| (default 99.5); it is printed under every map.
    title : str, optional
        The page's title (default: the folder's name).

    Returns
    -------
    pathlib.Path
    """
    start = time.perf_counter()
    page = build_page(run_dir, max_samples=max_samples, scale=scale, percentile=percentile, title=title)
    path = Path(out) if out is not None else Path(run_dir) / "report.html"
    page.seconds = time.perf_counter() - start
    html = render(page)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_bytes(str(path), html.encode("utf-8"))
    return path
