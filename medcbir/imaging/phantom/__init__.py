"""A synthetic CT archive with ground truth: real DICOM series, level labels and organ masks.

``make_archive(out, patients, slices, seed, size)`` writes one axial CT series per patient from the
upper thorax to the pelvis (lungs with vessels, airways, heart, liver with veins, gallbladder,
stomach, spleen, kidneys, aorta, bowel loops and gas, spine, ribs, pelvic bones, bladder, the
scanner couch; realistic Hounsfield values, blur and noise), each patient with its own anatomy and
scanner storage conventions, plus ``labels.csv``, ``masks.h5`` and ``phantom.json``. Phantom v3
(``version=3``) adds lesions of four kinds in liver, spleen and kidneys, with per-slice kind labels
and boxes.

Modules: :mod:`.anatomy` (organ geometry per level, labels), :mod:`.variation` (phantom v2's
nuisances), :mod:`.lesions` (phantom v3's lesion kinds), :mod:`.slices` (rasterising, HU, blur,
noise), :mod:`.writer` (scanners, DICOM), :mod:`.masks` (masks.h5), :mod:`.archive`.
"""

from medcbir.imaging.phantom.anatomy import HU_RANGES, LABELS, ORGANS, Patient
from medcbir.imaging.phantom.archive import PhantomSummary, make_archive
from medcbir.imaging.phantom.writer import SCANNERS, Scanner

__all__ = ["HU_RANGES", "LABELS", "ORGANS", "SCANNERS", "Patient", "PhantomSummary", "Scanner", "make_archive"]
