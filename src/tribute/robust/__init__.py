"""Robustness: attacks on models, adversarial training, attacks on explanations (Nielsen et al. 2022, §5;
Zeng et al. 2021)."""

from .attacks import fgsm, pgd
from .explanation_attacks import center_attack, manipulate_explanation, random_sign_perturbation, topk_attack
from .training import adversarial_train

__all__: list[str] = ["adversarial_train", "fgsm", "pgd"]
__all__ += ["center_attack", "manipulate_explanation", "random_sign_perturbation", "topk_attack"]
