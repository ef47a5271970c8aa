"""Perturbation methods: attributions from forward passes on inputs with groups of features removed."""

__all__: list[str] = []
