"""Visualisation of attributions: heat maps, method-comparison figures and coloured tokens (figures need
matplotlib)."""

from .heatmap import diverging_colors, heatmap, method_figure, method_grid, reduce_channels, symmetric_scale
from .tokens import token_colors, token_figure, token_text

__all__ = ["diverging_colors", "heatmap", "method_figure", "method_grid", "reduce_channels", "symmetric_scale",
           "token_colors", "token_figure", "token_text"]

# direct PNG encoding of maps (no figure) and the metric curve figures
from .curves import (  # noqa: E402
    perturbation_figure,
    roar_figure,
    sanity_figure,
    sensitivity_n_figure,
    table_curves_figure,
)
from .encode import EncodedMap, colorbar_png, encode_map  # noqa: E402

__all__ += ["EncodedMap", "colorbar_png", "encode_map", "perturbation_figure", "roar_figure", "sanity_figure",
            "sensitivity_n_figure", "table_curves_figure"]
