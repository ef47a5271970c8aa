"""What the demo says about its maps: notes under methods whose maps look a known way, and the measures behind them.

Some maps look broken without being so.  The demo prints a note under such a method's column in its figure, from
what is known of the method (:data:`KNOWN_NOTES`, with their sources) and from what it measures on the maps at hand
(the same map for every photo; a map identical to the gradient's), so that a reader is not left to guess.
"""

from __future__ import annotations

import itertools

import torch

#: notes on how a method's maps look on the demo's network, and why (with the source of the explanation)
KNOWN_NOTES: dict[str, str] = {
    # DeconvNet's backward ReLU keeps the positive part of the backward signal and never looks at the forward
    # activation, so without max-pooling switches (EfficientNet-Lite has none) nothing of the input reaches the map
    "deconvnet": "DeconvNet's backward pass never sees the photo on this network (its ReLUs pass the positive "
                 "part of the backward signal; there is no max pooling), so the map is the grid of the strided "
                 "convolutions, whatever the photo (Nie et al. 2018).",
    # RevealCancel splits each neuron's input differences into positive and negative parts and lets each part's
    # effect be judged with the other part present or absent (Shrikumar et al. 2017, Sec. 3.5.3): cancelling
    # evidence is revealed rather than netted out.  On the demo's photos its maps sum to the same S(x) − S(0) as
    # DeepLIFT's, but about twice as many pixels reach half the full colour, at a 99.5th percentile ~5× smaller
    "deeplift_reveal_cancel": "RevealCancel credits positive and negative evidence apart instead of letting them "
                              "cancel (Shrikumar et al. 2017, Sec. 3.5.3): the same total spreads over more "
                              "pixels than DeepLIFT's, so its full colour stands for a smaller value.",
}
SAME_MAP_CORRELATION = 0.99


def per_pixel(a: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) attributions as (N, H·W) per-pixel totals (the channels summed), in float64."""
    return a.double().sum(1).flatten(1) if a.dim() == 4 else a.double().flatten(1)


def smallest_correlation(a: torch.Tensor) -> float | None:
    """The smallest Pearson correlation between the per-pixel maps of two different samples (None for one sample
    or a constant map): near 1 when the map hardly depends on the sample."""
    maps = per_pixel(a)
    if maps.shape[0] < 2:
        return None
    maps = maps - maps.mean(1, keepdim=True)
    norms = maps.norm(dim=1)
    if bool((norms == 0).any()):
        return None
    return min(float(maps[i] @ maps[j] / (norms[i] * norms[j]))
               for i, j in itertools.combinations(range(maps.shape[0]), 2))


def roughness(a: torch.Tensor) -> torch.Tensor:
    """Per sample, the total variation of the per-pixel map (the mean absolute difference between neighbouring
    pixels) divided by the map's mean |φ|: scale-free, so that maps of different methods compare; lower is
    smoother (about 1.4 for Gaussian white noise, 0 for a constant map)."""
    maps = a.double().sum(1) if a.dim() == 4 else a.double()
    tv = torch.cat([(maps[:, 1:] - maps[:, :-1]).abs().flatten(1),
                    (maps[:, :, 1:] - maps[:, :, :-1]).abs().flatten(1)], 1).mean(1)
    return tv / maps.abs().flatten(1).mean(1).clamp(min=torch.finfo(torch.float64).tiny)


def method_notes(attributions: dict[str, torch.Tensor]) -> dict[str, str]:
    """Method → the note printed under its column: the known note, then what is measured on these maps (the same
    map for every photo; the same map as the gradient's)."""
    notes = {}
    gradient = attributions.get("gradient")
    for name, a in attributions.items():
        parts = [KNOWN_NOTES[name]] if name in KNOWN_NOTES else []
        r = smallest_correlation(a)
        if r is not None and r >= SAME_MAP_CORRELATION:
            parts.append(f"Measured: the same map for every photo (correlation ≥ {r:.2f}).")
        if name != "gradient" and gradient is not None and torch.equal(a, gradient):
            # guided backprop and DeconvNet modify ReLUs only; on a model without them they reduce to the gradient
            parts.append("Identical to the plain gradient: its rules changed nothing on this model.")
        if parts:
            notes[name] = " ".join(parts)
    return notes
