"""Raw heatmap values as a DICOM Parametric Map (32-bit floats), written with highdicom.

The map lies on its source image's grid, references it, lives in its patient and study, and
carries a real-world value mapping named after the explanation method.
"""

from __future__ import annotations

import numpy as np

from medcbir.imaging.dicom_out.common import MANUFACTURER, MODEL_NAME, NOT_FOR_DIAGNOSIS, mark, software_version

PM_SERIES_NUMBER = 9903


def parametric_map(header, heat: np.ndarray, method: str, series_uid: str, instance_number: int):
    """The raw heatmap values as a float highdicom Parametric Map on ``header``'s grid."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    lo, hi = float(np.min(heat)), float(np.max(heat))
    mapping = hd.pm.RealWorldValueMapping(
        lut_label=method[:16], lut_explanation=f"{method} importance (medcbir)"[:64],
        unit=codes.UCUM.NoUnits, value_range=(lo, hi if hi > lo else lo + 1.0), slope=1.0, intercept=0.0,
    )
    pm = hd.pm.ParametricMap(
        source_images=[header], pixel_array=heat[None].astype(np.float32), series_instance_uid=series_uid,
        series_number=PM_SERIES_NUMBER, sop_instance_uid=hd.UID(), instance_number=instance_number,
        manufacturer=MANUFACTURER, manufacturer_model_name=MODEL_NAME, software_versions=software_version(),
        device_serial_number="none", contains_recognizable_visual_features=False,
        real_world_value_mappings=[mapping],
        # heatmap values span far less than 1: a width < 1 needs LINEAR_EXACT
        voi_lut_transformations=[hd.VOILUTTransformation(window_center=(lo + hi) / 2, window_width=max(hi - lo, 1e-6),
                                                         window_explanation="heatmap range", voi_lut_function="LINEAR_EXACT")],
        content_description=f"{method} heatmap values, {NOT_FOR_DIAGNOSIS}"[:64], content_label="HEATMAP",
    )
    pm.Laterality = header.get("Laterality", "")
    mark(pm, f"medcbir {method} heatmap values - NOT FOR DIAGNOSIS")
    return pm
