"""Robustness: attacks on models, adversarial training, attacks on explanations (seed 000 §5, seed 004)."""

__all__: list[str] = []
