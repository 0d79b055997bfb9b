"""A synthetic CT archive with ground truth: real DICOM series, level labels and organ masks.

``make_archive(out, patients, slices, seed, size)`` writes one axial CT series per patient from the
upper thorax to the pelvis (lungs, heart, liver, spleen, kidneys, aorta, bowel gas, spine, ribs,
pelvic bones, bladder; realistic Hounsfield values, blur and noise), each patient with its own
anatomy and scanner storage conventions, plus ``labels.csv``, ``masks.h5`` and ``phantom.json``.
"""

from medcbir.imaging.phantom.anatomy import HU_RANGES, LABELS, ORGANS, Patient
from medcbir.imaging.phantom.archive import PhantomSummary, make_archive
from medcbir.imaging.phantom.writer import SCANNERS, Scanner

__all__ = ["HU_RANGES", "LABELS", "ORGANS", "SCANNERS", "Patient", "PhantomSummary", "Scanner", "make_archive"]
