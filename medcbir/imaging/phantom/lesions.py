"""Phantom v3 lesions: four kinds told apart by their look, in the liver, spleen and kidneys.

Region search needs lesions that differ by appearance, not by size or place. So every kind draws
its size from the same organ-dependent range (a few mm to several cm across) and lies anywhere
inside its organ, the kinds overlap in mean density, and they differ in structure and in how they
change with the contrast phase, as on real CT:

``cyst``
    homogeneous near-water density, smooth round outline, sharp edge, no enhancement in any phase.
``hypervascular``
    soft tissue enhancing brightly in the arterial phase, iso to slightly hyperdense to its organ
    in the portal-venous phase, slightly hypodense without contrast; mottled (brighter and darker
    nodules inside, most marked in the arterial phase); lobulated outline.
``metastasis``
    ring-enhancing: a hypodense necrotic centre of irregular shape inside an enhancing irregular
    rim (without contrast a faint hypodense rim around a darker centre).
``calcified``
    a soft-tissue matrix with mild enhancement holding coarse calcification (one or two irregular
    dense lumps) or, in larger lesions, stippled calcification (several dense foci); the calcium
    does not change with the phase.

A lesion is a 3-D ellipsoid (in-plane an irregular :class:`Blob`, along z its own semi-axis) made
of :class:`Part` s, balls in the lesion's own unit coordinates: the first is the lesion itself,
the others (necrotic centre, nodules, calcifications) lie inside it. A slice at ``z`` paints each
part's cross-section, clipped to the organ, into the lesion's own non-exclusive mask
(``lesion#<number>``); :func:`lesion_truth` turns those into masks.h5 datasets and boxes. Blur and
noise come afterwards with the rest of the image, so lesions carry the scanner's kernel and noise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from medcbir.imaging.phantom.anatomy import PHASES, Blob, Layer, Patient, _harmonics
from medcbir.imaging.phantom.slices import SliceRenderer
from medcbir.imaging.phantom.variation import ANATOMY_UNIT_MM

KINDS: tuple[str, ...] = ("cyst", "hypervascular", "metastasis", "calcified")
# Per-slice labels besides the kinds (labels-lesion-kind.csv).
NO_LESION, MIXED = "none", "mixed"
ORGAN_GROUPS: dict[str, tuple[str, ...]] = {"liver": ("liver",), "spleen": ("spleen",),
                                            "kidney": ("kidney_left", "kidney_right")}
# Radius range in mm per organ, the same for every kind (so size does not tell the kind).
RADIUS_MM: dict[str, tuple[float, float]] = {"liver": (3.0, 24.0), "spleen": (3.0, 15.0), "kidney": (3.0, 10.0)}
# The organ HU a "relative" part value is added to.
BACKGROUND_HU: dict[str, str] = {"liver": "liver", "spleen": "spleen", "kidney_left": "kidney_cortex",
                                 "kidney_right": "kidney_cortex"}
# masks.h5 datasets phantom v3 adds on every slice: one mask per kind, and the lesion numbers.
MASK_NAMES: tuple[str, ...] = tuple(f"lesion-{kind}" for kind in KINDS) + ("lesion-id",)
# A cross-section narrower or shorter than this many pixels does not count as showing the lesion.
MIN_BOX_PX = 2


@dataclass(frozen=True)
class Part:
    """A ball inside a lesion, in the lesion's unit coordinates (its semi-axes are 1).

    Attributes:
        u, v, w: centre (in-plane across, in-plane along the short axis, along z).
        radius: in-plane radius, in the same units.
        hu: per phase (in :data:`PHASES` order) ``(lo, hi, relative)``: HU at enhancement strength
            0 and 1 (interpolated), added to the organ's HU when ``relative``.
        harmonics: in-plane outline irregularity (see :class:`Blob`).
        depth: z semi-axis (None: ``radius``, a ball); a calcification or necrotic centre as deep
            as the lesion shows on every slice through it, not only on the middle ones.
    """

    u: float
    v: float
    w: float
    radius: float
    hu: tuple
    harmonics: tuple = ()
    depth: float | None = None

    def section(self, w: float) -> float:
        """In-plane radius of the cross-section at lesion height ``w`` (0 when none)."""
        depth = self.radius if self.depth is None else self.depth
        t = (w - self.w) / depth
        return self.radius * math.sqrt(1.0 - t * t) if abs(t) < 1.0 else 0.0

    def value(self, phase: str, contrast: float, background: float) -> float:
        lo, hi, relative = self.hu[PHASES.index(phase)]
        return lo + (hi - lo) * contrast + (background if relative else 0.0)


@dataclass(frozen=True)
class Lesion:
    """One lesion of a patient (see the module docstring).

    Attributes:
        number: 0-based within the patient (``lesion-id`` in masks.h5 holds ``number + 1``).
        kind: one of :data:`KINDS`; variant: ``coarse`` / ``stippled`` for calcified lesions.
        organ: liver, spleen, kidney_left or kidney_right.
        u, v: centre in the organ outline's unit disc (follows the organ along z).
        z: body position of the centre; rz: z semi-axis (fraction of the scanned range).
        r: in-plane semi-axis (anatomy units); aspect: short / long in-plane axis; angle: radians.
        parts: the lesion's parts, the lesion itself first.
    """

    number: int
    kind: str
    organ: str
    u: float
    v: float
    z: float
    rz: float
    r: float
    aspect: float
    angle: float
    parts: tuple[Part, ...]
    variant: str = ""

    @property
    def mask(self) -> str:
        return f"lesion#{self.number}"

    def centre(self, outline: Blob) -> tuple[float, float]:
        """Centre of the lesion for the organ's current ``outline``."""
        cos, sin = math.cos(outline.angle), math.sin(outline.angle)
        du, dv = self.u * outline.ax, self.v * outline.ay
        return outline.cx + du * cos - dv * sin, outline.cy + du * sin + dv * cos

    def layers(self, z: float, outline: Blob, phase: str, contrast: float, hu: dict[str, float]) -> list[Layer]:
        """Paint strokes of the lesion's cross-section at ``z`` (none outside its z extent)."""
        w0 = (z - self.z) / self.rz
        if abs(w0) >= 1.0:
            return []
        cx, cy = self.centre(outline)
        cos, sin = math.cos(self.angle), math.sin(self.angle)
        background = hu[BACKGROUND_HU[self.organ]]
        out = []
        for part in self.parts:
            s = part.section(w0) * self.r
            if s <= 0.0:
                continue
            du, dv = part.u * self.r, part.v * self.r * self.aspect
            blob = Blob(cx + du * cos - dv * sin, cy + du * sin + dv * cos, s, s * self.aspect, self.angle,
                        part.harmonics)
            out.append(Layer(None, blob, part.value(phase, contrast, background), within=self.organ, mask=self.mask))
        return out

    def to_dict(self, span_mm: float) -> dict:
        return {"number": self.number, "kind": self.kind, "variant": self.variant, "organ": self.organ,
                "radius_mm": round(self.r * ANATOMY_UNIT_MM, 2), "z_radius_mm": round(self.rz * span_mm, 2),
                "z": round(self.z, 5), "u": round(self.u, 4), "v": round(self.v, 4),
                "aspect": round(self.aspect, 3), "parts": len(self.parts)}


def _reach(harmonics: tuple) -> float:
    return 1.0 + sum(abs(a) for _, a, _ in harmonics)


def _inner(harmonics: tuple) -> float:
    """Fraction of the nominal radius the outline never comes inside of."""
    return 1.0 - sum(abs(a) for _, a, _ in harmonics)


def _point_in_ball(rng: np.random.Generator, radius: float, w_max: float = 1.0) -> tuple[float, float, float]:
    """A uniform point in the ball of ``radius`` whose |w| ≤ ``w_max`` × radius."""
    while True:
        p = rng.uniform(-1.0, 1.0, size=3)
        if p @ p <= 1.0 and abs(p[2]) <= w_max:
            return float(p[0] * radius), float(p[1] * radius), float(p[2] * radius)


def _constant(hu: float) -> tuple:
    return ((hu, hu, False),) * len(PHASES)


def _inside_parts(rng: np.random.Generator, count: int, room: float, radii: tuple[float, float], hu,
                  strength: float = 0.0, w_max: float = 1.0, depth: float | None = None) -> list[Part]:
    """``count`` parts whose in-plane outline stays inside a lesion whose outline never comes
    closer to its centre than ``room`` (``depth``: their z semi-axis, None = balls)."""
    parts = []
    for _ in range(count):
        harmonics = _harmonics(rng, strength) if strength else ()
        radius = min(float(rng.uniform(*radii)), 0.9 * room / _reach(harmonics))
        u, v, w = _point_in_ball(rng, max(room - radius * _reach(harmonics), 0.0), w_max)
        parts.append(Part(u, v, w, radius, hu(rng) if callable(hu) else hu, harmonics, depth))
    return parts


def _cyst(rng: np.random.Generator, radius_mm: float) -> tuple[list[Part], str]:
    return [Part(0.0, 0.0, 0.0, 1.0, _constant(float(rng.uniform(-3, 15))), _harmonics(rng, 0.03))], ""


def _hypervascular(rng: np.random.Generator, radius_mm: float) -> tuple[list[Part], str]:
    non_contrast = float(rng.uniform(30, 45))
    tissue = ((non_contrast, non_contrast, False),
              (float(rng.uniform(90, 120)), float(rng.uniform(135, 175)), False),
              (float(rng.uniform(2, 10)), float(rng.uniform(10, 25)), True))
    body = Part(0.0, 0.0, 0.0, 1.0, tissue, _harmonics(rng, 0.08))

    def nodule(r: np.random.Generator) -> tuple:
        # Brighter or darker than the tissue around: most in the arterial phase, least without contrast.
        amp = float(r.choice([-1.0, 1.0]) * r.uniform(18, 40))
        return tuple((lo + amp * f, hi + amp * f, rel) for (lo, hi, rel), f in zip(tissue, (0.35, 1.0, 0.6)))

    nodules = _inside_parts(rng, int(rng.integers(4, 9)), 0.95 * _inner(body.harmonics), (0.15, 0.32), nodule,
                            depth=0.5)
    return [body, *nodules], ""


def _metastasis(rng: np.random.Generator, radius_mm: float) -> tuple[list[Part], str]:
    # Without contrast the tumour is a little darker than its organ; with contrast its rim enhances.
    rim_nc = -float(rng.uniform(8, 20))
    rim = ((rim_nc, rim_nc, True), (float(rng.uniform(95, 115)), float(rng.uniform(125, 160)), False),
           (float(rng.uniform(85, 105)), float(rng.uniform(110, 140)), False))
    body = Part(0.0, 0.0, 0.0, 1.0, rim, _harmonics(rng, 0.14))
    necrosis = float(rng.uniform(8, 30))
    core_hu = ((necrosis, necrosis, False), (necrosis, necrosis + 5, False), (necrosis, necrosis + 5, False))
    # The necrotic centre: large, irregular, a little off-centre, always inside the rim.
    core = _inside_parts(rng, 1, 0.95 * _inner(body.harmonics), (0.5, 0.75), core_hu, strength=0.18, w_max=0.1,
                         depth=1.0)
    return [body, *core], ""


def _calcified(rng: np.random.Generator, radius_mm: float) -> tuple[list[Part], str]:
    matrix_nc = float(rng.uniform(35, 55))
    matrix = ((matrix_nc, matrix_nc, False),
              (matrix_nc + float(rng.uniform(0, 8)), matrix_nc + float(rng.uniform(10, 25)), False),
              (matrix_nc + float(rng.uniform(0, 8)), matrix_nc + float(rng.uniform(10, 25)), False))
    body = Part(0.0, 0.0, 0.0, 1.0, matrix, _harmonics(rng, 0.08))
    room = 0.95 * _inner(body.harmonics)

    def calcium(r: np.random.Generator) -> tuple:
        return _constant(float(r.uniform(250, 900)))

    # Foci need a few mm to show on a ~1 mm pixel grid: stippling only in lesions ≥ 8 mm.
    if radius_mm >= 8.0 and rng.uniform() < 0.5:
        smallest = max(0.1, 1.2 / radius_mm)
        foci = _inside_parts(rng, int(rng.integers(6, 13)), room, (smallest, max(smallest, 0.18)), calcium,
                             w_max=0.7, depth=0.45)
        return [body, *foci], "stippled"
    lumps = _inside_parts(rng, int(rng.integers(1, 3)), room, (0.3, 0.55), calcium, strength=0.2, w_max=0.1,
                          depth=1.1)
    return [body, *lumps], "coarse"


PARTS = {"cyst": _cyst, "hypervascular": _hypervascular, "metastasis": _metastasis, "calcified": _calcified}


class _Placer:
    """Finds lesion positions inside their organ, from the organ masks of noise-free renders."""

    SIZE = 256
    MARGIN_MM = 1.5  # of organ tissue kept around a lesion
    GAP_MM = 3.0  # between lesions of the same organ

    def __init__(self, patient: Patient, slices: int, span_mm: float) -> None:
        self.patient = replace(patient, roi_lesions=())
        self.renderer = SliceRenderer(self.patient, self.SIZE)
        self.slices, self.span_mm = slices, span_mm
        self._masks: dict[float, dict] = {}
        self._axis = (np.arange(self.SIZE) + 0.5) / self.SIZE * 2.0 - 1.0

    def masks(self, z: float) -> dict:
        if z not in self._masks:
            rendered = self.renderer.render(z, noise_hu=0.0, blur_px=0.0, rng=np.random.default_rng(0))
            self._masks[z] = rendered.masks
        return self._masks[z]

    def outline(self, organ: str, z: float) -> Blob | None:
        return next((layer.blob for layer in self.patient.layers(z) if layer.organ == organ), None)

    def z_centre(self, rng: np.random.Generator, organ: str, rz: float) -> float:
        """Near the centre of a slice of the first exam inside the organ's middle, so the lesion
        shows at close to its full size on at least one slice."""
        top, bottom = self.patient.extent(organ)
        lo, hi = top + 0.2 * (bottom - top), bottom - 0.2 * (bottom - top)
        centres = [(i + 0.5) / self.slices for i in range(self.slices)]
        inside = [z for z in centres if lo <= z <= hi]
        z = float(rng.choice(inside)) if inside else float(rng.uniform(lo, hi))
        return z + float(rng.uniform(-0.3, 0.3)) * rz

    def fits(self, lesion: Lesion, reach_mm: float) -> bool:
        """The lesion's disc (plus a margin) is organ tissue at its centre and at 0.6 of its z
        semi-axis above and below."""
        for dw in (0.0, -0.6, 0.6):
            z = lesion.z + dw * lesion.rz
            organ = self.masks(z).get(lesion.organ)
            outline = self.outline(lesion.organ, z)
            if organ is None or outline is None:
                return False
            x, y = lesion.centre(outline)
            radius = (reach_mm * math.sqrt(1.0 - dw * dw) + self.MARGIN_MM) / ANATOMY_UNIT_MM
            cols = np.abs(self._axis - x) <= radius
            rows = np.abs(self._axis - y) <= radius
            if not cols.any() or not rows.any():
                return False
            dx, dy = self._axis[cols][None, :] - x, self._axis[rows][:, None] - y
            disc = dx * dx + dy * dy <= radius * radius
            if not disc.any() or not organ[np.ix_(rows, cols)][disc].all():
                return False
        return True

    def apart(self, lesion: Lesion, reach_mm: float, others: list[tuple[Lesion, float]]) -> bool:
        """At least :attr:`GAP_MM` between this lesion and every other of the same organ."""
        here = self.outline(lesion.organ, lesion.z)
        x, y = lesion.centre(here)
        for other, other_reach in others:
            if other.organ != lesion.organ:
                continue
            ox, oy = other.centre(self.outline(other.organ, other.z))
            distance = math.hypot(math.hypot(x - ox, y - oy) * ANATOMY_UNIT_MM, (lesion.z - other.z) * self.span_mm)
            if distance < reach_mm + other_reach + self.GAP_MM:
                return False
        return True


def draw_lesions(seed: int, index: int, patient: Patient, slices: int, span_mm: float) -> tuple[Lesion, ...]:
    """The phantom v3 lesions of patient ``index``: 3–6 of them, at least three kinds (all four
    when there are four or more), liver, spleen and a kidney each at least once, each kind in any
    organ; sizes from :data:`RADIUS_MM` (log-uniform), placed inside their organ, apart.

    Args:
        seed, index: archive seed and patient number.
        patient: the anatomy (the first exam's).
        slices: slices of the series (a lesion is centred near one of them).
        span_mm: length of the scanned range.
    """
    rng = np.random.default_rng([seed, index, 0x1E5103])
    count = int(rng.integers(3, 7))
    kinds = [KINDS[int(k)] for k in rng.permutation(len(KINDS))]
    kinds += [KINDS[int(k)] for k in rng.integers(0, len(KINDS), size=max(0, count - len(KINDS)))]
    names = list(ORGAN_GROUPS)
    groups = [names[int(g)] for g in rng.permutation(len(names))]
    groups += [names[int(g)] for g in rng.choice(len(names), size=max(0, count - len(names)), p=(0.5, 0.25, 0.25))]
    placer = _Placer(patient, slices, span_mm)
    placed: list[tuple[Lesion, float]] = []
    for number, (kind, group) in enumerate(zip(kinds[:count], groups[:count])):
        organ = ORGAN_GROUPS[group][int(rng.integers(len(ORGAN_GROUPS[group])))]
        lo, hi = RADIUS_MM[group]
        radius_mm = float(np.exp(rng.uniform(math.log(lo), math.log(hi))))
        parts, variant = PARTS[kind](rng, radius_mm)
        placed.append(_place(rng, placer, Lesion(
            number=number, kind=kind, organ=organ, u=0.0, v=0.0, z=0.0,
            rz=radius_mm * float(rng.uniform(0.8, 1.2)) / span_mm, r=radius_mm / ANATOMY_UNIT_MM,
            aspect=float(rng.uniform(0.75, 1.0)), angle=float(rng.uniform(0, math.pi)), parts=tuple(parts),
            variant=variant), placed))
    return tuple(lesion for lesion, _ in placed)


def _place(rng: np.random.Generator, placer: _Placer, lesion: Lesion, placed: list) -> tuple[Lesion, float]:
    """Try positions (a new z every 10 tries, the lesion shrunk by 15 % every 20) until the lesion
    fits inside its organ apart from the others; keep the last try if none does (the organ then
    clips it)."""
    reach_factor = _reach(lesion.parts[0].harmonics)
    for attempt in range(80):
        if attempt and attempt % 20 == 0:
            lesion = replace(lesion, r=lesion.r * 0.85, rz=lesion.rz * 0.85)
        if attempt % 10 == 0:
            z = placer.z_centre(rng, lesion.organ, lesion.rz)
        angle, distance = rng.uniform(0, 2 * math.pi), 0.75 * math.sqrt(rng.uniform(0, 1))
        lesion = replace(lesion, z=z, u=float(distance * math.cos(angle)), v=float(distance * math.sin(angle)))
        reach_mm = lesion.r * reach_factor * ANATOMY_UNIT_MM
        if placer.fits(lesion, reach_mm) and placer.apart(lesion, max(reach_mm, lesion.rz * placer.span_mm), placed):
            break
    return lesion, max(lesion.r * reach_factor * ANATOMY_UNIT_MM, lesion.rz * placer.span_mm)


def _box(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """``(x, y, w, h)``: column and row of the top-left pixel, width and height, or None."""
    rows = np.flatnonzero(mask.any(axis=1))
    if not rows.size:
        return None
    cols = np.flatnonzero(mask.any(axis=0))
    return int(cols[0]), int(rows[0]), int(cols[-1] - cols[0] + 1), int(rows[-1] - rows[0] + 1)


def lesion_truth(masks: dict[str, np.ndarray], lesions: tuple[Lesion, ...]) -> tuple[dict, list[tuple]]:
    """The masks.h5 masks and boxes of one rendered slice.

    Each lesion's painted mask loses what a later lesion painted over (so lesions never share a
    pixel); a cross-section under :data:`MIN_BOX_PX` in width or height does not count. The
    per-lesion masks are replaced by ``lesion`` (every lesion shown), ``lesion-<kind>`` and
    ``lesion-id`` (uint8, ``number + 1`` of the lesion owning the pixel).

    Args:
        masks: the renderer's masks (modified and returned).
        lesions: the patient's lesions, in painting order.

    Returns:
        The masks, and ``(number, kind, x, y, w, h)`` per lesion shown, in lesion order.
    """
    taken = None
    shown = []
    for lesion in reversed(lesions):
        painted = masks.pop(lesion.mask, None)
        if painted is None:
            continue
        if taken is not None:
            painted = painted & ~taken
        taken = painted if taken is None else taken | painted
        box = _box(painted)
        if box is not None and box[2] >= MIN_BOX_PX and box[3] >= MIN_BOX_PX:
            shown.append((lesion, painted, box))
    shown.reverse()
    if shown:
        ids = np.zeros(shown[0][1].shape, dtype=np.uint8)
        for lesion, painted, _ in shown:
            ids[painted] = lesion.number + 1
            name = f"lesion-{lesion.kind}"
            masks[name] = masks[name] | painted if name in masks else painted
        masks["lesion"] = ids > 0
        masks["lesion-id"] = ids
    return masks, [(lesion.number, lesion.kind, *box) for lesion, _, box in shown]


def kind_label(kinds: set[str]) -> str:
    """labels-lesion-kind.csv's label of a slice showing lesions of ``kinds``."""
    if not kinds:
        return NO_LESION
    return next(iter(kinds)) if len(kinds) == 1 else MIXED
