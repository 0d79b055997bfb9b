"""Phantom v2: what varies between patients and exams of a real archive, drawn per patient.

:class:`Nuisances` holds every parameter that is not the anatomical level (the retrieval truth):
patient build (subcutaneous fat, organ sizes and positions, liver volume ±30 %), positioning
(offset, small rotation, arms down in the field of view or raised), table or none, acquisition
(field of view as pixel spacing, slice thickness, noise, soft or sharp kernel, contrast phase and
strength, calibration offset), occasional metal and liver lesions. Each is drawn from the archive
seed and the patient index, recorded in phantom.json, and can be forced for every patient with
``make_archive(..., overrides={...})`` (a robustness benchmark renders the same patients under
controlled nuisances).

Field of view: ``pixel_spacing`` is the spacing of a 512 × 512 reconstruction of the field of view
(0.6–0.95 mm, a 307–486 mm field); an image of ``size`` pixels has PixelSpacing
``pixel_spacing × 512 / size`` (equal at 512 px), so the body fills the image the same way at any
size.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields, replace

import numpy as np

from medcbir.errors import ConfigError
from medcbir.imaging.phantom.anatomy import PHASES, Patient

REFERENCE_MATRIX = 512
# Anatomy coordinates: one unit is this many mm (the original phantom's mean half field of view).
ANATOMY_UNIT_MM = 190.0
LESION_KINDS = ("metastasis", "cyst", "hyperdense")
METAL_KINDS = ("hip-prosthesis", "spinal-fixation")


@dataclass(frozen=True)
class Nuisances:
    """Per-patient nuisance parameters of phantom v2 (see the module docstring).

    Attributes:
        pixel_spacing: mm, of the 512-matrix equivalent (PixelSpacing = this × 512 / size).
        offset_mm: (right, posterior) shift of the patient from the scanner's centre, mm.
        rotation_deg: roll of the patient in the axial plane, degrees.
        body_scale: overall size of the trunk and organs.
        fat_fraction: subcutaneous fat, fraction of the body's radius.
        liver_volume: liver volume relative to the nominal liver (cross-section scale = √ of it).
        organ_shifts: organ → (dx, dy) in anatomy units (1 unit = 190 mm).
        arms_in_fov: arms down beside the trunk (True) or raised above the head.
        table: the scanner couch is in the image.
        slice_thickness_mm: reconstructed slice thickness (SliceThickness; thinner → noisier).
        noise_hu: image noise (standard deviation, HU, before the kernel's sharpening).
        kernel: "soft" (smooth PSF) or "sharp" (edge-enhancing, noisier).
        phase: "non-contrast", "arterial" or "portal-venous".
        contrast: enhancement strength within the phase, 0–1.
        hu_offset: calibration offset added to every pixel, HU (0 unless overridden).
        metal: None, or {"kind", "x", "y" (anatomy units), "z_top", "z_bottom", "strength"}.
        lesions: liver lesions, each {"kind", "u", "v" (in the liver's unit disc), "z", "r"
            (anatomy units), "rz" (z extent, fraction of the range), "delta" / "hu"}.
    """

    pixel_spacing: float
    offset_mm: tuple[float, float]
    rotation_deg: float
    body_scale: float
    fat_fraction: float
    liver_volume: float
    organ_shifts: dict[str, tuple[float, float]] = field(default_factory=dict)
    arms_in_fov: bool = False
    table: bool = True
    slice_thickness_mm: float = 2.5
    noise_hu: float = 12.0
    kernel: str = "soft"
    phase: str = "portal-venous"
    contrast: float = 0.5
    hu_offset: float = 0.0
    metal: dict | None = None
    lesions: list[dict] = field(default_factory=list)

    @property
    def fov_mm(self) -> float:
        return self.pixel_spacing * REFERENCE_MATRIX

    def to_dict(self) -> dict:
        out = asdict(self)
        out["offset_mm"] = [round(v, 3) for v in self.offset_mm]
        out["organ_shifts"] = {k: [round(a, 4), round(b, 4)] for k, (a, b) in self.organ_shifts.items()}
        out["fov_mm"] = round(self.fov_mm, 3)
        for key in ("pixel_spacing", "rotation_deg", "body_scale", "fat_fraction", "liver_volume", "noise_hu",
                    "contrast", "hu_offset"):
            out[key] = round(float(out[key]), 5)
        return out


NUISANCE_NAMES: tuple[str, ...] = tuple(f.name for f in fields(Nuisances))
# Short names accepted by ``overrides`` as well.
ALIASES = {"noise": "noise_hu", "rotation": "rotation_deg", "offset": "offset_mm", "slice_thickness": "slice_thickness_mm",
           "arms": "arms_in_fov", "fat": "fat_fraction"}


def draw_nuisances(seed: int, index: int, total_span_mm: float) -> Nuisances:
    """The nuisances of patient ``index`` of the archive made with ``seed``.

    Args:
        seed: archive seed.
        index: patient number.
        total_span_mm: length of the scanned range (to size lesions in z).
    """
    rng = np.random.default_rng([seed, index, 0x0B2])
    phase = PHASES[int(rng.choice(3, p=[0.2, 0.25, 0.55]))]
    kernel = "sharp" if rng.uniform() < 0.35 else "soft"
    thickness = float(rng.choice([1.0, 1.25, 2.0, 2.5, 3.0, 5.0]))
    # Thinner slices are noisier (noise ∝ 1/√thickness); sharp kernels add noise too.
    noise = float(rng.uniform(7, 16)) * math.sqrt(2.5 / thickness) * (1.35 if kernel == "sharp" else 1.0)
    shifts = {name: (float(rng.uniform(-a, a)), float(rng.uniform(-b, b)))
              for name, a, b in (("liver", 0.04, 0.03), ("spleen", 0.03, 0.03), ("kidney_left", 0.025, 0.02),
                                 ("kidney_right", 0.025, 0.02))}
    metal = None
    if rng.uniform() < 0.15:
        kind = METAL_KINDS[int(rng.integers(0, 2))]
        if kind == "hip-prosthesis":
            metal = {"kind": kind, "x": float(rng.choice([-1, 1]) * 0.36), "y": 0.12, "z_top": 0.9, "z_bottom": 1.1,
                     "strength": float(rng.uniform(150, 400))}
        else:
            top = float(rng.uniform(0.45, 0.65))
            metal = {"kind": kind, "x": 0.06, "y": 0.2, "z_top": top, "z_bottom": top + 0.12,
                     "strength": float(rng.uniform(100, 300))}
    lesions = []
    for _ in range(int(rng.choice([0, 0, 1, 2, 3, 4]))):
        kind = LESION_KINDS[int(rng.choice(3, p=[0.5, 0.3, 0.2]))]
        radius_mm = float(rng.uniform(6, 22))
        angle, dist = rng.uniform(0, 2 * math.pi), 0.55 * math.sqrt(rng.uniform(0, 1))
        lesion = {"kind": kind, "u": dist * math.cos(angle), "v": dist * math.sin(angle),
                  "z_frac": float(rng.uniform(0.15, 0.85)), "r": radius_mm / ANATOMY_UNIT_MM,
                  "rz": radius_mm / total_span_mm, "radius_mm": round(radius_mm, 2)}
        if kind == "cyst":
            lesion["hu"] = float(rng.uniform(0, 15))
        elif kind == "hyperdense":
            lesion["delta"] = float(rng.uniform(45, 80))
        else:
            lesion["delta"] = -float(rng.uniform(35, 65))
        lesions.append(lesion)
    return Nuisances(
        pixel_spacing=float(rng.uniform(0.6, 0.95)),
        offset_mm=(float(rng.uniform(-25, 25)), float(rng.uniform(-20, 20))),
        rotation_deg=float(rng.uniform(-5, 5)),
        body_scale=float(rng.uniform(0.9, 1.1)),
        fat_fraction=float(rng.uniform(0.03, 0.22)),
        liver_volume=float(rng.uniform(0.7, 1.3)),
        organ_shifts=shifts,
        arms_in_fov=bool(rng.uniform() < 0.4),
        table=bool(rng.uniform() < 0.85),
        slice_thickness_mm=thickness,
        noise_hu=noise,
        kernel=kernel,
        phase=phase,
        contrast=float(rng.uniform(0, 1)),
        metal=metal,
        lesions=lesions,
    )


def with_overrides(nuisances: Nuisances, overrides: dict | None) -> Nuisances:
    """``nuisances`` with the fields named in ``overrides`` replaced (checked).

    Raises:
        ConfigError: an unknown name or a value out of its domain.
    """
    if not overrides:
        return nuisances
    values = {ALIASES.get(name, name): value for name, value in overrides.items()}
    unknown = sorted(set(values) - set(NUISANCE_NAMES))
    if unknown:
        raise ConfigError(f"unknown phantom override(s) {', '.join(unknown)}; known: {', '.join(NUISANCE_NAMES)}")
    if "offset_mm" in values:
        values["offset_mm"] = tuple(float(v) for v in values["offset_mm"])
        if len(values["offset_mm"]) != 2:
            raise ConfigError("override offset_mm must be a pair (right, posterior) in mm")
    if "phase" in values and values["phase"] not in PHASES:
        raise ConfigError(f"override phase must be one of {', '.join(PHASES)}")
    if "kernel" in values and values["kernel"] not in ("soft", "sharp"):
        raise ConfigError("override kernel must be 'soft' or 'sharp'")
    for name in ("pixel_spacing", "body_scale", "liver_volume", "slice_thickness_mm"):
        if name in values and not float(values[name]) > 0:
            raise ConfigError(f"override {name} must be positive")
    if "noise_hu" in values and float(values["noise_hu"]) < 0:
        raise ConfigError("override noise_hu must be 0 or more")
    if "fat_fraction" in values and not 0 <= float(values["fat_fraction"]) < 0.5:
        raise ConfigError("override fat_fraction must be in [0, 0.5)")
    return replace(nuisances, **values)


def patient_v2(seed: int, index: int, nuisances: Nuisances) -> Patient:
    """The anatomy of patient ``index`` (as in the original phantom) built as ``nuisances`` say:
    fat layer around an unchanged body cavity, organ sizes and positions, lesions, arms, table,
    contrast phase."""
    patient = Patient.draw(seed, index)
    # Keep the cavity (where the organs live) and grow or shrink the fat around it.
    keep = (1.0 - patient.fat_frac - patient.wall_frac) / (1.0 - nuisances.fat_fraction - patient.wall_frac)
    liver_top, _, liver_bottom, _ = patient.boundaries
    lesions = []
    for lesion in nuisances.lesions:
        # Lesions lie within the liver's z extent, at least one z radius inside it.
        lo, hi = liver_top + lesion["rz"], liver_bottom - lesion["rz"]
        lesions.append({**lesion, "z": lo + lesion["z_frac"] * max(hi - lo, 0.0)})
    patient = replace(
        patient,
        body=patient.body.scaled(keep),
        fat_frac=nuisances.fat_fraction,
        sizes={**patient.sizes, "liver": math.sqrt(nuisances.liver_volume)},
        shifts=dict(nuisances.organ_shifts),
        lesions=lesions,
        arms=nuisances.arms_in_fov,
        table=nuisances.table,
    )
    return patient.with_contrast(nuisances.contrast, nuisances.phase)
