"""The explanation methods by name: what ``--method`` and every ``method=`` argument choose from.

Every method has one signature,
``method(encoder, images B×C×H×W, targets B×D | None = None, **options) -> B×H×W float32``.
"""

from medcbir.explain.ablation_cam import ablation_cam
from medcbir.explain.clustered_cam import clustered_cam
from medcbir.explain.gradcam import gradcam
from medcbir.explain.gradient import gradient
from medcbir.explain.guided_backprop import guided_backprop
from medcbir.explain.guided_gradcam import guided_gradcam
from medcbir.explain.integrated_gradients import integrated_gradients
from medcbir.explain.occlusion import occlusion
from medcbir.explain.relax import relax
from medcbir.explain.smoothgrad import smoothgrad
from medcbir.explain.smoothgrad_ig import smoothgrad_ig
from medcbir.explain.wildcat import wildcat

METHODS = {
    "relax": relax,
    "gradcam": gradcam,
    "guided_gradcam": guided_gradcam,
    "integrated_gradients": integrated_gradients,
    "smoothgrad": smoothgrad,
    "occlusion": occlusion,
    "clustered_cam": clustered_cam,
    "ablation_cam": ablation_cam,
    "gradient": gradient,
    "guided_backprop": guided_backprop,
    "smoothgrad_ig": smoothgrad_ig,
    "wildcat": wildcat,
}
