"""Visualisation of attributions: heat maps, method-comparison figures and coloured tokens (figures need
matplotlib)."""

from .heatmap import diverging_colors, heatmap, method_figure, method_grid, reduce_channels, symmetric_scale
from .tokens import token_colors, token_figure, token_text

__all__ = ["diverging_colors", "heatmap", "method_figure", "method_grid", "reduce_channels", "symmetric_scale",
           "token_colors", "token_figure", "token_text"]
