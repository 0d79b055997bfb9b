"""Scoring explanation methods against organ masks (``medcbir explain-eval``), one module per job.

- :mod:`~medcbir.explain.evaluation.selection`: which indexed items (and query–neighbour pairs)
  are explained, and their masks in the images' geometry;
- :mod:`~medcbir.explain.evaluation.scoring`: the metrics of a map family, the n/a rules, the
  margins over trivial maps;
- :mod:`~medcbir.explain.evaluation.run`: :func:`evaluate_explanations` (the index-free core),
  :func:`evaluate_methods` (from an index and a ``masks.h5``) and
  :func:`relevance_rank_and_margin` (the localisation-only variant for quality benchmarks);
- :mod:`~medcbir.explain.evaluation.tables`: the text tables.

The names below are the ones callers use; each is defined in the module named.
"""

from medcbir.explain.evaluation.run import TARGETS, evaluate_explanations, evaluate_methods, relevance_rank_and_margin
from medcbir.explain.evaluation.scoring import COLUMNS, HEADERS, heatmaps_for, map_function, margins, not_applicable, score_heatmaps
from medcbir.explain.evaluation.selection import decode_with_masks, mask_like, select_items, select_pairs
from medcbir.explain.evaluation.tables import describe_targets, format_sanity, format_table

__all__ = [
    "COLUMNS",
    "HEADERS",
    "TARGETS",
    "decode_with_masks",
    "describe_targets",
    "evaluate_explanations",
    "evaluate_methods",
    "format_sanity",
    "format_table",
    "heatmaps_for",
    "map_function",
    "margins",
    "mask_like",
    "not_applicable",
    "relevance_rank_and_margin",
    "score_heatmaps",
    "select_items",
    "select_pairs",
]
