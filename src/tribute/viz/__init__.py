"""Visualisation of attributions (figures need matplotlib): heat maps with a colour bar and their stated scale,
overlays, images × methods grids (by method family), class-contrast grids and coloured tokens.

Tensors or arrays in, figures out; nothing here imports an attribution method.
"""

from .contrast import class_contrast_figure, map_similarity
from .figures import (
    METHOD_FAMILIES,
    family_figure,
    heatmap_figure,
    method_figure,
    method_grid,
    overlay_figure,
    save_figure,
)
from .heatmap import colormap, diverging_colors, heatmap, reduce_channels
from .scale import NONFINITE_COLORS, MapScale, map_scale, symmetric_scale
from .tokens import token_colors, token_figure, token_text

__all__ = ["METHOD_FAMILIES", "NONFINITE_COLORS", "MapScale", "class_contrast_figure", "colormap",
           "diverging_colors", "family_figure", "heatmap", "heatmap_figure", "map_scale", "map_similarity",
           "method_figure", "method_grid", "overlay_figure", "reduce_channels", "save_figure", "symmetric_scale",
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
