"""``run_alignment``: every table and figure of the alignment experiment into one directory, resumable."""

from __future__ import annotations

import os
import pathlib
import platform
import time

import torch

from ... import __version__
from ...atomic_files import write_json
from ...core import options as opt
from ...metrics.roar import TIES
from .attribution_cache import AttributionCache
from .data import experiment_data
from .figures import roar_figure, sanity_figure
from .measures import latency, roar_seed, sanity
from .methods import EXTRA, TABLE1, specs
from .models import train_models
from .scales import Scale, get_scale
from .steps import Steps
from .tables import roar_header, roar_rows, write_table

#: every file a finished run writes into its directory (beside ``settings.json``, ``steps/`` and ``models/``)
OUTPUTS = tuple(f"{name}.{ext}" for name in ("table1_roar", "table2_alignment", "table3_latency", "fig5_sanity",
                                              "accuracy") for ext in ("csv", "md")) + (
    "fig4_robust_saliency.png", "fig5_sanity.png", "run.json")


def run_alignment(out: str | os.PathLike, *, scale: str | Scale = "smoke", data: str = "fashion-mnist",
                  seeds: int | None = None, ties: str = "index") -> dict:
    """Zeng et al. (2021)'s evidence for the aligned explainer, at ``scale``, on ``data``, into ``out``.

    Writes ``table1_roar``, ``table2_alignment``, ``table3_latency``, ``fig5_sanity`` (the figure's numbers) and
    ``accuracy`` (the classifier alone beside the classifiers trained with the explainer head, and the twin) as
    ``.csv`` and ``.md``, ``fig4_robust_saliency.png``, ``fig5_sanity.png``, and ``run.json`` (settings, seeds,
    versions, seconds per step and in all; :data:`OUTPUTS`).  The scales, their sizes and budget:
    :mod:`tribute.experiments.alignment.scales`.  Rerun with the same arguments, it reuses every finished step
    (trainings and stores resume inside their checkpoints); other settings in the same directory are refused.
    ``ties``: how ROAR orders pixels of equal attribution (:func:`tribute.metrics.roar.roar`: ``"index"``, the
    default, or ``"random"``).  Returns the content of ``run.json``.
    """
    t0 = time.perf_counter()
    sc = get_scale(scale, seeds)
    split, used = experiment_data(data, sc)
    out = pathlib.Path(out)
    opt.choice(TIES)("ties", ties)
    # recorded only when not the default, so that run directories written before the option still match
    steps = Steps(out, {"scale": sc.__dict__, "data": data, "data_used": used} | ({} if ties == "index" else
                                                                                   {"roar_ties": ties}))
    models, accuracy = train_models(steps, split, sc)
    every = specs(sc, tuple(split.train[0].shape[1:]))
    # the rankings, the same for every seed: computed by the first seed that runs, kept on disk for a rerun
    cache = AttributionCache(out / "rankings")
    per_seed = [steps.run(f"roar_seed{s}", lambda s=s: roar_seed(models, split, every, sc, s, cache, ties))
                for s in range(sc.seeds)]
    _roar_outputs(out, per_seed, sc)
    x_test = split.test[0]
    methods = {k: every[k] for k in TABLE1 if k != "random"}
    scores = steps.run("sanity", lambda: sanity(models, x_test[:sc.sanity_images], methods))
    write_table(out, "fig5_sanity", ["method", "spearman mean", "spearman sd"],
                [[k, v["mean"], v["sd"]] for k, v in scores.items()],
                f"Fig 5: Spearman of each method's maps before and after re-initialising the last block "
                f"({sc.sanity_images} test images)")
    sanity_figure(scores, out / "fig5_sanity.png")
    timing = steps.run("latency", lambda: latency(models, x_test[:sc.latency_images], methods))
    write_table(out, "table3_latency", ["method", "ms per image"], [[k, v] for k, v in timing.items()],
                f"Table 3: latency per image on this machine ({sc.latency_images} images in one batch, "
                f"{torch.get_num_threads()} thread(s))")
    write_table(out, "accuracy", ["model", "test accuracy", "PGD-L2 accuracy"], [[k, *v] for k, v in accuracy.items()],
                "Test accuracy, clean and under PGD-L2 at the twin's ε (20 steps): the classifier alone, the robust "
                "twin, the classifiers trained with the explainer head (robust and standard alignment)")
    record = {"scale": sc.__dict__, "data": data, "data_used": used, "roar_seeds": list(range(sc.seeds)),
              "roar_ties": ties, "pipeline_seed": 0, "train_samples": len(split.train[1]),
              "test_samples": len(split.test[1]),
              "extra_rankings": list(EXTRA), "versions": _versions(), "steps": steps.log,
              "seconds": round(time.perf_counter() - t0, 3)}
    write_json(str(out / "run.json"), record)
    return record


def _roar_outputs(out: pathlib.Path, per_seed: list[dict], sc: Scale) -> None:
    """Table 1, Table 2 and Fig 4 from the per-seed ROAR results."""
    spread = " ± sd" if sc.seeds > 1 else ""
    write_table(out, "table1_roar", roar_header(sc.seeds), roar_rows(per_seed, TABLE1),
                f"Table 1: ROAR test accuracy (lower is better), mean{spread} over {sc.seeds} seed(s)")
    write_table(out, "table2_alignment", roar_header(sc.seeds),
                [["robust alignment", *r[1:]] for r in roar_rows(per_seed, ["aligned"])]
                + [["standard alignment", *r[1:]] for r in roar_rows(per_seed, ["aligned_standard"])],
                f"Table 2: ROAR of the explainer aligned with the robust twin's vs the standard model's SmoothGrad, "
                f"mean{spread} over {sc.seeds} seed(s)")
    roar_figure(per_seed, {"standard saliency": "saliency", "robust twin's saliency": "twin_saliency",
                          "random": "random"},
                out / "fig4_robust_saliency.png", "ROAR: the standard model explained")


def _versions() -> dict:
    import numpy

    return {"tribute": __version__, "torch": torch.__version__, "numpy": numpy.__version__,
            "python": platform.python_version(), "machine": platform.machine(), "threads": torch.get_num_threads()}
