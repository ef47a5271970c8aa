"""Metrics: how good, how faithful, how sane is an explanation (seed 000 §4.1, seed 001 §2.4, seed 003 §3)."""

from .alignment import alignment, cosine_alignment
from .axioms import (
    SensitivityN,
    absorb_shift,
    attribution_distance,
    completeness_gap,
    implementation_invariance,
    input_invariance,
    sensitivity_n,
)
from .class_sensitivity import class_sensitivity, other_classes
from .common import as_explainer, as_map, check_attributions, resolve_target
from .evaluate import EvaluationTable, efficiency, evaluate, metric_names
from .infidelity import draw_perturbations, infidelity
from .perturbation import PerturbationCurve, deletion, insertion, pixel_perturbation
from .reliability import (
    ReliabilityResult,
    cronbach_alpha,
    inter_method_reliability,
    inter_rater_reliability,
    internal_consistency,
    krippendorff_alpha,
    metric_reliability,
    reliability,
)
from .road import linear_imputation, noisy_linear_imputation, road
from .roar import RoarResult, kar, random_attribution, roar
from .robustness import avg_sensitivity, draw_ball, explanation_changes, local_lipschitz, max_sensitivity
from .sanity import (
    SanityResult,
    label_randomisation,
    parameter_layers,
    parameter_randomisation,
    randomisation_steps,
    randomised_copy,
)
from .similarity import (
    center_of_mass,
    center_of_mass_shift,
    hog,
    hog_similarity,
    pearson,
    spearman,
    ssim,
    topk_intersection,
)

__all__ = ["alignment", "as_explainer", "cosine_alignment", "as_map", "check_attributions", "resolve_target"]
__all__ += ["SanityResult", "class_sensitivity", "label_randomisation", "other_classes", "parameter_layers",
            "parameter_randomisation", "randomisation_steps", "randomised_copy"]
__all__ += ["center_of_mass", "center_of_mass_shift", "hog", "hog_similarity", "pearson", "spearman", "ssim",
            "topk_intersection"]
__all__ += ["avg_sensitivity", "draw_ball", "draw_perturbations", "explanation_changes", "infidelity",
            "local_lipschitz", "max_sensitivity"]
__all__ += ["PerturbationCurve", "SensitivityN", "absorb_shift", "attribution_distance", "completeness_gap",
            "deletion", "implementation_invariance", "input_invariance", "insertion", "linear_imputation",
            "noisy_linear_imputation", "pixel_perturbation", "road", "sensitivity_n"]
__all__ += ["EvaluationTable", "ReliabilityResult", "RoarResult", "cronbach_alpha", "efficiency", "evaluate",
            "inter_method_reliability", "inter_rater_reliability", "internal_consistency", "kar",
            "krippendorff_alpha", "metric_names", "metric_reliability", "random_attribution", "reliability", "roar"]
