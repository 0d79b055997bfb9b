"""Explanation metrics for similarity targets, one per file (see each module's docstring)."""

from medcbir.explain.metrics.auprc import localisation_auprc
from medcbir.explain.metrics.confidence import average_drop_increase, explanation_map
from medcbir.explain.metrics.deletion import deletion_auc, insertion_auc, perturbation_curve
from medcbir.explain.metrics.landmarks import cluster_quality, landmark_features, landmark_scores, local_maxima
from medcbir.explain.metrics.mass import relevance_mass_accuracy
from medcbir.explain.metrics.pointing import pointing_game
from medcbir.explain.metrics.pointwise import pointwise_localisation
from medcbir.explain.metrics.rank import relevance_rank_accuracy
from medcbir.explain.metrics.rotation import dice, dice_rotation_sweep, top_area

__all__ = [
    "average_drop_increase",
    "cluster_quality",
    "deletion_auc",
    "dice",
    "dice_rotation_sweep",
    "explanation_map",
    "insertion_auc",
    "landmark_features",
    "landmark_scores",
    "local_maxima",
    "localisation_auprc",
    "perturbation_curve",
    "pointing_game",
    "pointwise_localisation",
    "relevance_mass_accuracy",
    "relevance_rank_accuracy",
    "top_area",
]
