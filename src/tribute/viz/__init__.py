"""Visualisation of attributions: heat maps and method-comparison figures (needs matplotlib for figures)."""

from .heatmap import diverging_colors, heatmap, method_figure, method_grid, reduce_channels, symmetric_scale

__all__ = ["diverging_colors", "heatmap", "method_figure", "method_grid", "reduce_channels", "symmetric_scale"]
