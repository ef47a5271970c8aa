"""The HTML report of a run directory: ``tribute.report(run_dir)`` and ``tribute report RUN_DIR``.

One self-contained page (images embedded, no external CSS or JavaScript) with each sample's image and every
method's map with its scale, the metric table with its directions, the metric curves, the settings, seeds,
versions and time spent; see :func:`tribute.reporting.build.report`.  Needs Jinja2 (``pip install
'tribute[report]'``).

``tribute.report`` is the function; this package is named ``reporting`` so that the two never shadow each other.
"""

from .build import build_page, render, report

__all__ = ["build_page", "render", "report"]
