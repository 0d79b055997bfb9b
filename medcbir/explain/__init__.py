"""medcbir.explain — explanations of representations and matches (see docs/contracts.md).

Every method has one signature,
``method(encoder, images B×C×H×W, targets B×D | None = None, **options) -> B×H×W float32``,
and attributes ``cosine(encoder(x), target)``: the image's own embedding when ``targets`` is
None, the query's embedding to explain why a neighbour matched.
"""

import importlib
import sys
import types

from medcbir.explain.ablation_cam import ablation_cam
from medcbir.explain.clustered_cam import clustered_cam
from medcbir.explain.gradcam import gradcam
from medcbir.explain.gradient import gradient
from medcbir.explain.guided_backprop import guided_backprop
from medcbir.explain.guided_gradcam import guided_gradcam
from medcbir.explain.integrated_gradients import integrated_gradients
from medcbir.explain.methods import METHODS
from medcbir.explain.occlusion import occlusion
from medcbir.explain.relax import RelaxResult, draw_masks, relax, relax_full
from medcbir.explain.smoothgrad import smoothgrad
from medcbir.explain.smoothgrad_ig import smoothgrad_ig
from medcbir.explain.wildcat import wildcat


def __getattr__(name: str):
    # the search runner imports the engine (FAISS, HDF5): only when asked for
    if name in ("explain_search", "explain_to_report", "Explanation"):
        from medcbir.explain import runner

        return getattr(runner, name)
    if name in ("explain_region_match", "RegionExplanation"):
        from medcbir.explain import regions

        return getattr(regions, name)
    if name == "evaluate_methods":
        from medcbir.explain.evaluation import run

        return run.evaluate_methods
    raise AttributeError(f"module 'medcbir.explain' has no attribute {name!r}")


__all__ = [
    "METHODS",
    "Explanation",
    "RegionExplanation",
    "evaluate_methods",
    "explain_region_match",
    "explain_search",
    "explain_to_report",
    "RelaxResult",
    "ablation_cam",
    "clustered_cam",
    "draw_masks",
    "gradcam",
    "gradient",
    "guided_backprop",
    "guided_gradcam",
    "integrated_gradients",
    "occlusion",
    "relax",
    "relax_full",
    "smoothgrad",
    "smoothgrad_ig",
    "wildcat",
]


class _Package(types.ModuleType):
    """This package is also the public API's function: ``medcbir.explain(index, query, ...)``.

    ``medcbir.explain`` names both (the package attribute Python sets on import wins over any
    function of that name), so calling the package runs :func:`medcbir.api.explain`.
    """

    def __call__(self, *args, **kwargs):
        return importlib.import_module("medcbir.api").explain(*args, **kwargs)


sys.modules[__name__].__class__ = _Package
