"""Organ geometry of one synthetic patient, level by level along the body axis.

Geometry lives in normalised image coordinates: ``x`` runs left → right across the image
(patient's right → left, the radiological convention), ``y`` runs top → bottom
(anterior → posterior), both in [-1, 1] over the reconstruction field of view. The body axis
is ``z`` in [0, 1]: 0 is the top of the scanned range (upper thorax), 1 the bottom (pelvis).

A patient is a set of random parameters drawn once from ``(seed, index)``; a slice at ``z`` is a
list of :class:`Layer` (an organ name, a :class:`Blob` outline and a Hounsfield value) painted in
order by :mod:`medcbir.imaging.phantom.slices`. Later layers cover earlier ones, so the
per-organ masks are what is visible in the final image.

Level labels (the retrieval ground truth) follow from organ extents, per patient:

* ``thorax``       z < liver_top                    lungs, heart, no liver;
* ``liver-dome``   liver_top ≤ z < kidney_top       liver (and lung bases, spleen), no kidney;
* ``liver-kidney`` kidney_top ≤ z < liver_bottom    liver and at least one kidney;
* ``kidney``       liver_bottom ≤ z < kidney_bottom kidneys, no liver;
* ``pelvis``       z ≥ kidney_bottom                pelvic bones, bladder, no kidney.

Each band is at least 0.12 of the range wide (nominal boundaries 0.22/0.40/0.60/0.78, each moved
by at most ±0.025 per patient), so a series of ≥ 10 evenly spaced slices, whose centres are at
most 0.1 apart, hits every label.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np

LABELS: tuple[str, ...] = ("thorax", "liver-dome", "liver-kidney", "kidney", "pelvis")

# Masks written for every slice: the contract's organs first, then the extra ones.
CONTRACT_ORGANS: tuple[str, ...] = (
    "liver", "spleen", "kidney_left", "kidney_right", "aorta", "spine",
    "lung_left", "lung_right", "body", "bowel_gas",
)
EXTRA_ORGANS: tuple[str, ...] = (
    "heart", "ribs", "pelvic_bone", "bladder", "gallbladder", "subcutaneous_fat", "muscle",
    # Lesions: a subset of their organ's mask, the one overlapping mask (phantom v2: liver
    # lesions; phantom v3: every lesion, in liver, spleen and kidneys).
    "lesion",
)
ORGANS: tuple[str, ...] = CONTRACT_ORGANS + EXTRA_ORGANS

# The Hounsfield range each tissue's median must fall in (what the tests check through
# medcbir.imaging): the values a radiologist expects on a contrast-enhanced CT.
HU_RANGES: dict[str, tuple[float, float]] = {
    "air": (-1024.0, -950.0),
    "lung_left": (-900.0, -780.0),
    "lung_right": (-900.0, -780.0),
    "subcutaneous_fat": (-130.0, -70.0),
    "muscle": (20.0, 65.0),
    "liver": (50.0, 120.0),
    "spleen": (40.0, 100.0),
    "kidney_left": (30.0, 150.0),
    "kidney_right": (30.0, 150.0),
    "aorta": (200.0, 300.0),
    "spine": (400.0, 1000.0),
    "pelvic_bone": (400.0, 1000.0),
    "bowel_gas": (-1024.0, -850.0),
    "bladder": (-10.0, 20.0),
    "gallbladder": (-10.0, 30.0),
}

# Nominal level boundaries (liver_top, kidney_top, liver_bottom, kidney_bottom) and the most a
# patient may move each one; see the module docstring for why these keep every band ≥ 0.12.
NOMINAL_BOUNDARIES: tuple[float, float, float, float] = (0.22, 0.40, 0.60, 0.78)
BOUNDARY_JITTER = 0.025


@dataclass(frozen=True)
class Blob:
    """A closed outline: an ellipse whose radius is modulated by a few angular harmonics.

    Args:
        cx, cy: centre (normalised image coordinates).
        ax, ay: semi-axes before rotation.
        angle: rotation in radians (positive turns x towards y).
        harmonics: ``(k, amplitude, phase)`` terms; the radius at polar angle θ is
            ``1 + Σ amplitude·cos(kθ + phase)`` times the ellipse radius, which gives each
            patient's organs their own shape without self-intersection for small amplitudes.
    """

    cx: float
    cy: float
    ax: float
    ay: float
    angle: float = 0.0
    harmonics: tuple[tuple[int, float, float], ...] = ()

    def scaled(self, factor: float) -> Blob:
        return Blob(self.cx, self.cy, self.ax * factor, self.ay * factor, self.angle, self.harmonics)

    def moved(self, dx: float, dy: float) -> Blob:
        return Blob(self.cx + dx, self.cy + dy, self.ax, self.ay, self.angle, self.harmonics)

    @property
    def reach(self) -> float:
        """Radius of a circle around the centre that contains the whole outline."""
        return max(self.ax, self.ay) * (1.0 + sum(abs(a) for _, a, _ in self.harmonics))


@dataclass(frozen=True)
class Layer:
    """One paint stroke: set ``hu`` inside ``blob`` and assign those pixels to ``organ``.

    Args:
        organ: the mask the pixels now belong to; ``""`` for unlabelled tissue, ``None`` to keep
            the current owner (a structure inside an organ, e.g. the renal medulla).
        blob: the outline.
        hu: Hounsfield value painted.
        in_cavity: clip to the body cavity (inside the abdominal/chest wall).
        within: clip to the pixels currently owned by this organ (vessels inside an organ).
    """

    organ: str | None
    blob: Blob
    hu: float
    in_cavity: bool = False
    within: str | None = None
    # Also add the painted pixels to this non-exclusive mask ("lesion"); the renderer keeps those
    # still owned by ``within`` at the end.
    mask: str | None = None


PHASES: tuple[str, ...] = ("non-contrast", "arterial", "portal-venous")

# HU of the enhancing tissues per contrast phase: (value at strength 0, value at strength 1).
_PHASE_HU: dict[str, dict[str, tuple[float, float]]] = {
    "non-contrast": {"liver": (52, 66), "spleen": (42, 52), "kidney_cortex": (28, 38), "kidney_medulla": (26, 34),
                     "aorta": (38, 50), "ivc": (36, 46), "heart_wall": (40, 50), "heart_blood": (38, 50)},
    "arterial": {"liver": (62, 80), "spleen": (95, 140), "kidney_cortex": (170, 230), "kidney_medulla": (60, 85),
                 "aorta": (260, 360), "ivc": (55, 75), "heart_wall": (80, 110), "heart_blood": (260, 360)},
}


def _enhancement(contrast: float, phase: str = "portal-venous") -> dict[str, float]:
    """HU of the contrast-enhancing tissues for an enhancement strength in [0, 1] and a phase
    (the portal-venous values are the original phantom's)."""
    if phase in _PHASE_HU:
        return {tissue: lo + (hi - lo) * contrast for tissue, (lo, hi) in _PHASE_HU[phase].items()}
    return {
        "liver": 60.0 + 40.0 * contrast,
        "spleen": 50.0 + 35.0 * contrast,
        "kidney_cortex": 110.0 + 30.0 * contrast,
        "kidney_medulla": 60.0 + 30.0 * contrast,
        "aorta": 220.0 + 70.0 * contrast,
        "ivc": 70.0 + 60.0 * contrast,
        "heart_wall": 60.0 + 30.0 * contrast,
        "heart_blood": 180.0 + 80.0 * contrast,
    }


def lesion_delta(lesion: dict, phase: str, hu: dict[str, float]) -> float:
    """HU of a lesion relative to the liver around it, by kind and contrast phase: metastases
    hypodense in every phase, cysts near water whatever the liver does, hypervascular lesions
    (HCC-like) bright in the arterial phase and washing out later."""
    kind = lesion["kind"]
    if kind == "cyst":
        return lesion["hu"] - hu["liver"]
    if kind == "hyperdense":
        return {"arterial": lesion["delta"], "portal-venous": -12.0, "non-contrast": -8.0}[phase]
    return lesion["delta"] * (0.55 if phase == "non-contrast" else 1.0)


def _harmonics(rng: np.random.Generator, strength: float, orders: tuple[int, ...] = (2, 3, 4)) -> tuple:
    return tuple((k, float(rng.uniform(-strength, strength) / k ** 0.5), float(rng.uniform(0, 2 * math.pi))) for k in orders)


def _vessel_trees(rng: np.random.Generator) -> dict[str, list[tuple[float, ...]]]:
    """Vessel cross-sections per organ: position in the organ's unit disc, drift amplitude,
    frequency and phase along z, and radius (lung vessels thin, liver veins thicker)."""
    def vessels(count: int, r_lo: float, r_hi: float) -> list[tuple[float, ...]]:
        out = []
        for _ in range(count):
            angle, dist = rng.uniform(0, 2 * math.pi), 0.7 * math.sqrt(rng.uniform(0, 1))
            out.append((dist * math.cos(angle), dist * math.sin(angle), float(rng.uniform(0.05, 0.2)),
                        float(rng.uniform(3, 10)), float(rng.uniform(0, 2 * math.pi)), float(rng.uniform(r_lo, r_hi))))
        return out

    return {"lung_left": vessels(10, 0.008, 0.016), "lung_right": vessels(10, 0.008, 0.016),
            "liver": vessels(5, 0.014, 0.028)}


def _profile(z: float, top: float, bottom: float, floor: float = 0.45) -> float:
    """Cross-section scale of an organ spanning [top, bottom): small at both ends, 1 mid-way.

    The floor keeps an organ visibly present on every slice inside its extent, so the level
    labels (which follow the extents) always agree with the masks.
    """
    t = min(max((z - top) / (bottom - top), 0.0), 1.0)
    return floor + (1.0 - floor) * math.sin(math.pi * t) ** 0.7


@dataclass
class Patient:
    """Random anatomy of one synthetic patient (drawn once, then queried per slice)."""

    index: int
    boundaries: tuple[float, float, float, float]
    body: Blob
    fat_frac: float
    wall_frac: float
    hu: dict[str, float]
    shapes: dict[str, tuple] = field(default_factory=dict)
    sizes: dict[str, float] = field(default_factory=dict)
    bowel: list[tuple[float, ...]] = field(default_factory=list)
    lung_bottom: float = 0.0
    kidney_offsets: tuple[float, float] = (0.0, 0.0)
    vessels: dict[str, list[tuple[float, ...]]] = field(default_factory=dict)
    contrast: float = 0.5
    # Phantom v2 only (the defaults draw the original phantom):
    phase: str = "portal-venous"
    shifts: dict[str, tuple[float, float]] = field(default_factory=dict)  # organ → (dx, dy)
    lesions: list[dict] = field(default_factory=list)  # see medcbir.imaging.phantom.variation
    arms: bool = False  # arms down at the sides (in the field of view) instead of raised
    table: bool = True
    # Phantom v3 only: lesions of several kinds in liver, spleen and kidneys, each an object with
    # ``organ`` and ``layers(z, outline, phase, contrast, hu)`` (medcbir.imaging.phantom.lesions).
    roi_lesions: tuple = ()

    @classmethod
    def draw(cls, seed: int, index: int) -> Patient:
        """The anatomy of patient ``index`` of the archive made with ``seed``.

        Args:
            seed: archive seed.
            index: 0-based patient number.
        """
        rng = np.random.default_rng([seed, index, 0x0A7A])
        jitter = rng.uniform(-BOUNDARY_JITTER, BOUNDARY_JITTER, size=4)
        boundaries = tuple(float(b + j) for b, j in zip(NOMINAL_BOUNDARIES, jitter))
        liver_top, kidney_top, _, _ = boundaries
        body = Blob(
            cx=float(rng.uniform(-0.05, 0.05)),
            cy=float(rng.uniform(-0.04, 0.06)),
            ax=float(rng.uniform(0.68, 0.86)),
            ay=float(rng.uniform(0.50, 0.62)),
            harmonics=_harmonics(rng, 0.03),
        )
        contrast = float(rng.uniform(0.0, 1.0))  # 0 = late/weak enhancement, 1 = strong
        hu = {
            "subcutaneous_fat": float(rng.uniform(-110, -90)),
            "visceral_fat": float(rng.uniform(-100, -80)),
            "muscle": float(rng.uniform(38, 50)),
            "lung": float(rng.uniform(-870, -820)),
            **_enhancement(contrast),
            "cortical": float(rng.uniform(850, 1000)),
            "cancellous": float(rng.uniform(430, 520)),
            "rib": float(rng.uniform(600, 800)),
            "bowel_wall": float(rng.uniform(30, 45)),
            "water": float(rng.uniform(0, 10)),
            "bile": float(rng.uniform(5, 20)),
            "csf": float(rng.uniform(5, 15)),
            "renal_sinus": float(rng.uniform(-70, -40)),
            "gas": -1000.0,
        }
        sizes = {
            "liver": float(rng.uniform(0.85, 1.15)),
            "spleen": float(rng.uniform(0.8, 1.25)),
            "kidney": float(rng.uniform(0.85, 1.15)),
            "aorta": float(rng.uniform(0.85, 1.15)),
            "heart": float(rng.uniform(0.85, 1.1)),
            "left_lobe": float(rng.uniform(0.6, 1.2)),
            "bladder": float(rng.uniform(0.7, 1.2)),
        }
        shapes = {
            name: _harmonics(rng, strength)
            for name, strength in (("liver", 0.12), ("spleen", 0.10), ("kidney_left", 0.05),
                                   ("kidney_right", 0.05), ("lung_left", 0.06), ("lung_right", 0.06),
                                   ("heart", 0.05), ("bladder", 0.06), ("stomach", 0.08))
        }
        # Small-bowel loops as tubes wandering through the anterior abdomen: base position,
        # drift amplitude and frequency, radius, and the phase/threshold of their gas content.
        bowel = [
            (float(rng.uniform(-0.55, 0.55)), float(rng.uniform(-0.75, 0.05)), float(rng.uniform(0.04, 0.10)),
             float(rng.uniform(3, 8)), float(rng.uniform(0, 2 * math.pi)), float(rng.uniform(0.07, 0.11)),
             float(rng.uniform(4, 9)), float(rng.uniform(0, 2 * math.pi)), float(rng.uniform(-0.2, 0.4)))
            for _ in range(int(rng.integers(6, 10)))
        ]
        return cls(
            index=index,
            boundaries=boundaries,
            body=body,
            fat_frac=float(rng.uniform(0.05, 0.14)),
            wall_frac=float(rng.uniform(0.06, 0.10)),
            hu=hu,
            shapes=shapes,
            sizes=sizes,
            bowel=bowel,
            lung_bottom=float(liver_top + rng.uniform(0.35, 0.6) * (kidney_top - liver_top)),
            kidney_offsets=(float(rng.uniform(0.0, 0.03)), float(rng.uniform(0.0, 0.03))),
            vessels=_vessel_trees(rng),
            contrast=contrast,
        )

    def with_contrast(self, contrast: float, phase: str | None = None) -> Patient:
        """The same anatomy scanned with another enhancement strength (a later exam's bolus
        timing) or phase: the enhancing organs' HU follow ``contrast`` (clipped to [0, 1])."""
        contrast = min(max(float(contrast), 0.0), 1.0)
        phase = phase or self.phase
        return replace(self, contrast=contrast, phase=phase, hu={**self.hu, **_enhancement(contrast, phase)})

    # -- levels ---------------------------------------------------------------------------

    def label_at(self, z: float) -> str:
        """The anatomical level label of the slice at ``z`` (see the module docstring)."""
        for label, boundary in zip(LABELS, self.boundaries):
            if z < boundary:
                return label
        return LABELS[-1]

    def extent(self, organ: str) -> tuple[float, float]:
        """The z range ``[top, bottom)`` in which ``organ`` (liver, spleen, kidney_left,
        kidney_right) shows."""
        liver_top, kidney_top, liver_bottom, kidney_bottom = self.boundaries
        lower_left, later_right = self.kidney_offsets
        return {
            "liver": (liver_top, liver_bottom),
            "spleen": (liver_top + 0.25 * (kidney_top - liver_top), kidney_top + 0.6 * (liver_bottom - kidney_top)),
            # The left kidney starts at kidney_top, the right one a little lower (the liver pushes
            # it down) and ends at kidney_bottom; so their union spans exactly [kidney_top, kidney_bottom).
            "kidney_left": (kidney_top, kidney_bottom - lower_left),
            "kidney_right": (kidney_top + later_right, kidney_bottom),
        }[organ]

    # -- geometry -------------------------------------------------------------------------

    def body_at(self, z: float) -> Blob:
        """Skin outline: hips a little wider and flatter than the chest."""
        b = self.body
        return Blob(b.cx, b.cy, b.ax * (0.94 + 0.10 * z), b.ay * (1.02 - 0.06 * z), 0.0, b.harmonics)

    def cavity_at(self, z: float) -> Blob:
        """Inside of the chest/abdominal wall (organs are clipped to it)."""
        return self.body_at(z).scaled(1.0 - self.fat_frac - self.wall_frac)

    def layers(self, z: float) -> list[Layer]:
        """Paint strokes of the axial slice at ``z``, in painting order."""
        liver_top, kidney_top, liver_bottom, kidney_bottom = self.boundaries
        hu = self.hu
        body = self.body_at(z)
        cavity = self.cavity_at(z)
        cx, cy, acx, acy = cavity.cx, cavity.cy, cavity.ax, cavity.ay
        # The vertebral body sits a fixed depth in front of the back's skin, so the spinous
        # process stays inside the paraspinal muscles whatever the patient's fat layer.
        spine_y = body.cy + body.ay - 0.34
        out = [
            Layer("subcutaneous_fat", body, hu["subcutaneous_fat"]),
            Layer("muscle", body.scaled(1.0 - self.fat_frac), hu["muscle"]),
            Layer("", cavity, hu["visceral_fat"]),
        ]
        # Paraspinal muscles behind the spine, in every level.
        for side in (-1, 1):
            out.append(Layer("muscle", Blob(cx + side * 0.11, spine_y + 0.13, 0.09, 0.07), hu["muscle"]))
        if self.arms:
            out += self._arms(z, body)

        if z < self.lung_bottom:
            out += self._thorax(z, cavity)
        stomach_top = liver_top + 0.1 * (kidney_top - liver_top)
        stomach_bottom = kidney_top + 0.3 * (liver_bottom - kidney_top)
        if stomach_top <= z < stomach_bottom:
            out += self._stomach(z, cavity, stomach_top, stomach_bottom)
        if kidney_top - 0.05 <= z:
            out += self._bowel(z, cavity, kidney_bottom)
        if liver_top <= z < liver_bottom:
            out += self._liver(z, cavity)
        spleen_top, spleen_bottom = self.extent("spleen")
        if spleen_top <= z < spleen_bottom:
            s = self.sizes["spleen"] * _profile(z, spleen_top, spleen_bottom)
            dx, dy = self.shifts.get("spleen", (0.0, 0.0))
            spleen = Blob(cx + dx + 0.66 * acx, cy + dy + 0.30 * acy, 0.13 * s, 0.24 * s, 0.5, self.shapes["spleen"])
            out.append(Layer("spleen", spleen, hu["spleen"], in_cavity=True))
            out += self._roi_lesion_layers("spleen", z, spleen)
        if kidney_top <= z < kidney_bottom:
            out += self._kidneys(z, spine_y)
        if z >= kidney_top + 0.5 * (liver_bottom - kidney_top):
            grow = min((z - kidney_top) / (1.0 - kidney_top), 1.0)
            for side in (-1, 1):  # psoas muscles, thickening towards the pelvis
                out.append(Layer("muscle", Blob(cx + side * (0.13 + 0.06 * grow), spine_y - 0.02,
                                                0.035 + 0.05 * grow, 0.045 + 0.03 * grow), hu["muscle"]))
        out += self._vessels(z, spine_y, kidney_bottom)
        if z >= kidney_bottom + 0.35 * (1.0 - kidney_bottom):
            g = self.sizes["bladder"] * (0.5 + 0.5 * (z - kidney_bottom) / (1.0 - kidney_bottom))
            out.append(Layer("bladder", Blob(cx, cy - 0.45 * acy, 0.20 * acx * g, 0.22 * acy * g, 0.0,
                                             self.shapes["bladder"]), hu["water"], in_cavity=True))
        if z < liver_bottom:
            out += self._ribs(z, body)
        out += self._spine(z, cx, spine_y, kidney_bottom)
        return out

    def fixed_layers(self) -> list[Layer]:
        """Strokes identical on every slice (painted once per patient, under :meth:`layers`):
        the scanner couch under the patient's back, a curved carbon-fibre shell around a foam
        core, outside the body (so in no organ mask); none when the patient has no table."""
        return self._table() if self.table else []

    def _arms(self, z: float, body: Blob) -> list[Layer]:
        """Arms down beside the trunk (outside the body outline, so in no organ mask): skin and
        fat, muscle, the humerus (upper range) or forearm bones (lower range)."""
        out = []
        for side in (-1, 1):
            arm = Blob(body.cx + side * (body.ax + 0.13), body.cy - 0.05, 0.10, 0.12)
            out += [Layer("", arm, self.hu["subcutaneous_fat"]), Layer("", arm.scaled(0.8), self.hu["muscle"])]
            bones = ((0.0, 0.025),) if z < 0.45 else ((-0.025, 0.016), (0.025, 0.014))
            for dx, r in bones:
                bone = Blob(arm.cx + dx, arm.cy, r, r)
                out += [Layer("", bone, self.hu["cortical"]), Layer("", bone.scaled(0.55), self.hu["cancellous"])]
        return out

    def _lesion_layers(self, z: float, liver: Blob) -> list[Layer]:
        """Cross-sections at ``z`` of the liver lesions (spheres), painted inside the liver only."""
        out = []
        for lesion in self.lesions:
            dz = (z - lesion["z"]) / lesion["rz"]
            if abs(dz) >= 1.0:
                continue
            r = lesion["r"] * math.sqrt(1.0 - dz * dz)
            x = liver.cx + lesion["u"] * liver.ax
            y = liver.cy + lesion["v"] * liver.ay
            out.append(Layer(None, Blob(x, y, r, r * 0.92), self.hu["liver"] + lesion_delta(lesion, self.phase, self.hu),
                             within="liver", mask="lesion"))
        return out

    def _roi_lesion_layers(self, organ: str, z: float, outline: Blob) -> list[Layer]:
        """Cross-sections at ``z`` of the phantom v3 lesions of ``organ``, placed relative to its
        current ``outline`` (painted right after the organ, inside it only)."""
        return [layer for lesion in self.roi_lesions if lesion.organ == organ
                for layer in lesion.layers(z, outline, self.phase, self.contrast, self.hu)]

    def _table(self) -> list[Layer]:
        """The scanner couch under the patient's back: a curved carbon-fibre shell around a foam
        core, outside the body (so in no organ mask), at the same height on every slice."""
        b = self.body
        # Lowest point of the back: the outline's radius straight down (θ = π/2), widest slice.
        back = 1.0 + sum(a * math.cos(k * math.pi / 2 + phase) for k, a, phase in b.harmonics)
        top = b.cy + b.ay * 1.02 * back + 0.006
        shell = Blob(b.cx * 0.3, top + 0.75, 1.15, 0.75)
        return [Layer("", shell, 250.0), Layer("", shell.scaled(0.985), -250.0),
                Layer("", shell.scaled(0.93), -1000.0)]

    def _thorax(self, z: float, cavity: Blob) -> list[Layer]:
        hu = self.hu
        liver_top = self.boundaries[0]
        cx, cy, acx, acy = cavity.cx, cavity.cy, cavity.ax, cavity.ay
        # Lung bases shrink into the posterior recesses below the liver dome.
        s = 1.0 if z < liver_top else 1.0 - 0.55 * (z - liver_top) / (self.lung_bottom - liver_top)
        shift = 0.45 * acy * (1.0 - s)
        out = []
        for side, name in ((-1, "lung_right"), (1, "lung_left")):
            lung = Blob(cx + side * 0.50 * acx, cy - 0.02 + shift, 0.40 * acx * s, 0.82 * acy * s, 0.0,
                        self.shapes[name])
            out.append(Layer(name, lung, hu["lung"], in_cavity=True))
            out += self._vessel_layers(name, z, lung, 40.0)
        # Trachea, then the two main bronchi, in front of the spine in the upper chest.
        airway_y = self.body_at(z).cy + self.body_at(z).ay - 0.34 - 0.18
        if z < 0.35 * liver_top:
            out.append(Layer("", Blob(cx, airway_y, 0.045, 0.04), hu["gas"]))
        elif z < 0.5 * liver_top:
            out += [Layer("", Blob(cx + side * 0.07, airway_y + 0.01, 0.028, 0.025), hu["gas"]) for side in (-1, 1)]
        if 0.03 <= z < liver_top:
            h = self.sizes["heart"] * _profile(z, 0.0, liver_top + 0.04, floor=0.6)
            heart = Blob(cx + 0.14 * acx, cy - 0.20 * acy, 0.34 * acx * h, 0.40 * acy * h, -0.5, self.shapes["heart"])
            out.append(Layer("heart", heart, hu["heart_wall"], in_cavity=True))
            out.append(Layer(None, heart.scaled(0.72), hu["heart_blood"], in_cavity=True))
        return out

    def _vessel_layers(self, organ: str, z: float, outline: Blob, hu: float) -> list[Layer]:
        """Vessels inside an organ, placed relative to its current outline, drifting along z."""
        out = []
        for u, v, amp, freq, phase, radius in self.vessels[organ]:
            x = outline.cx + (u + amp * math.sin(freq * z + phase)) * outline.ax
            y = outline.cy + (v + amp * math.cos(freq * z + phase)) * outline.ay
            out.append(Layer(None, Blob(x, y, radius, radius), hu, within=organ))
        return out

    def _stomach(self, z: float, cavity: Blob, top: float, bottom: float) -> list[Layer]:
        s = _profile(z, top, bottom, floor=0.5)
        stomach = Blob(cavity.cx + 0.30 * cavity.ax, cavity.cy - 0.35 * cavity.ay, 0.17 * s, 0.13 * s, -0.4,
                       self.shapes["stomach"])
        # Fluid below, gas above: supine, so the gas collects anteriorly.
        return [Layer("", stomach, self.hu["water"] + 15.0, in_cavity=True),
                Layer("bowel_gas", Blob(stomach.cx, stomach.cy - 0.45 * stomach.ay, 0.75 * stomach.ax, 0.5 * stomach.ay),
                      self.hu["gas"], in_cavity=True)]

    def _bowel(self, z: float, cavity: Blob, kidney_bottom: float) -> list[Layer]:
        hu = self.hu
        cx, cy, acx, acy = cavity.cx, cavity.cy, cavity.ax, cavity.ay
        out = []
        for bx, by, amp, freq, phase, radius, gas_freq, gas_phase, gas_threshold in self.bowel:
            x = cx + (bx + amp * math.sin(freq * z + phase)) * acx
            y = cy + (by + amp * math.cos(freq * z + phase)) * acy
            loop = Blob(x, y, radius, radius * 0.9)
            out.append(Layer("", loop, hu["bowel_wall"], in_cavity=True))
            if math.sin(gas_freq * z + gas_phase) > gas_threshold:
                # Gas rises to the anterior side of a loop in a supine patient.
                out.append(Layer("bowel_gas", Blob(x, y - 0.25 * radius, 0.75 * radius, 0.65 * radius),
                                 hu["gas"], in_cavity=True))
        if z < kidney_bottom + 0.2 * (1.0 - kidney_bottom):
            for side in (-1, 1):  # ascending/descending colon in the flanks, always holding some gas
                x, y = cx + side * 0.70 * acx, cy - 0.05 * acy
                out.append(Layer("", Blob(x, y, 0.09, 0.085), hu["bowel_wall"], in_cavity=True))
                out.append(Layer("bowel_gas", Blob(x, y - 0.015, 0.07, 0.06), hu["gas"], in_cavity=True))
        return out

    def _liver(self, z: float, cavity: Blob) -> list[Layer]:
        hu = self.hu
        liver_top, kidney_top, liver_bottom, _ = self.boundaries
        cx, cy, acx, acy = cavity.cx, cavity.cy, cavity.ax, cavity.ay
        s = self.sizes["liver"] * _profile(z, liver_top, liver_bottom)
        t = (z - liver_top) / (liver_bottom - liver_top)
        dx, dy = self.shifts.get("liver", (0.0, 0.0))
        cx, cy = cx + dx, cy + dy
        out = [Layer("liver", Blob(cx - 0.40 * acx, cy - 0.02 * acy, 0.52 * acx * s, 0.80 * acy * s, 0.15,
                                   self.shapes["liver"]), hu["liver"], in_cavity=True)]
        if t < 0.7:
            lobe = self.sizes["left_lobe"] * s
            out.append(Layer("liver", Blob(cx + 0.05 * acx, cy - 0.55 * acy, 0.38 * acx * lobe, 0.25 * acy * lobe, -0.2),
                             hu["liver"], in_cavity=True))
        out += self._vessel_layers("liver", z, out[0].blob, hu["liver"] + 45.0)
        out += self._lesion_layers(z, out[0].blob)
        out += self._roi_lesion_layers("liver", z, out[0].blob)
        if 0.55 <= t < 0.95:
            out.append(Layer("gallbladder", Blob(cx - 0.20 * acx, cy - 0.42 * acy, 0.07, 0.09, 0.4), hu["bile"],
                             in_cavity=True))
        return out

    def _kidneys(self, z: float, spine_y: float) -> list[Layer]:
        hu = self.hu
        cx = self.body.cx
        out = []
        for side, name in ((1, "kidney_left"), (-1, "kidney_right")):
            top, bottom = self.extent(name)
            if not top <= z < bottom:
                continue
            s = self.sizes["kidney"] * _profile(z, top, bottom)
            dx, dy = self.shifts.get(name, (0.0, 0.0))
            kidney = Blob(cx + dx + side * 0.26, spine_y + dy - 0.03, 0.085 * s, 0.12 * s, side * 0.45, self.shapes[name])
            out.append(Layer(name, kidney, hu["kidney_cortex"]))
            out.append(Layer(None, kidney.scaled(0.6), hu["kidney_medulla"]))
            # The renal sinus (fat) opens towards the front and the spine.
            sinus = Blob(kidney.cx - side * 0.05 * s, kidney.cy - 0.03 * s, 0.03 * s, 0.04 * s)
            out.append(Layer("", sinus, hu["renal_sinus"]))
            out += self._roi_lesion_layers(name, z, kidney)
        return out

    def _vessels(self, z: float, spine_y: float, kidney_bottom: float) -> list[Layer]:
        hu = self.hu
        cx = self.body.cx
        r = 0.05 * self.sizes["aorta"]
        if z < kidney_bottom:
            out = [Layer("aorta", Blob(cx + 0.06, spine_y - 0.15, r, r), hu["aorta"])]
            if z >= self.boundaries[0]:
                out.append(Layer("", Blob(cx - 0.09, spine_y - 0.15, 0.05, 0.04), hu["ivc"]))
            return out
        # Below the bifurcation: the common iliac arteries (not the aorta).
        return [Layer("", Blob(cx + side * 0.10, spine_y - 0.13, 0.7 * r, 0.7 * r), hu["aorta"]) for side in (-1, 1)]

    def _ribs(self, z: float, body: Blob) -> list[Layer]:
        hu = self.hu
        ring = body.scaled(1.0 - self.fat_frac - 0.5 * self.wall_frac)
        out = []
        for j, degrees in enumerate((-50, -25, 0, 25, 50, 70)):
            for side in (1, -1):
                # Ribs run obliquely, so each one comes and goes along z.
                if math.sin(2 * math.pi * (5.0 * z + 0.37 * j + (0.5 if side < 0 else 0.0))) < -0.3:
                    continue
                theta = math.radians(degrees if side > 0 else 180 - degrees)
                x = ring.cx + ring.ax * math.cos(theta)
                y = ring.cy + ring.ay * math.sin(theta)
                out.append(Layer("ribs", Blob(x, y, 0.028, 0.022, theta), hu["rib"]))
        return out

    def _spine(self, z: float, cx: float, spine_y: float, kidney_bottom: float) -> list[Layer]:
        hu = self.hu
        out = []
        if z < kidney_bottom:
            vertebra = Blob(cx, spine_y, 0.085, 0.075)
            arch_y = spine_y + 0.075 + 0.045
            out += [
                Layer("spine", Blob(cx, arch_y + 0.03, 0.085, 0.05), hu["cortical"]),
                Layer("spine", Blob(cx, arch_y + 0.085, 0.018, 0.05), hu["cortical"]),
                Layer("", Blob(cx, arch_y, 0.04, 0.035), hu["csf"]),
                Layer("spine", vertebra, hu["cortical"]),
                Layer(None, vertebra.scaled(0.82), hu["cancellous"]),
            ]
            return out
        # Pelvis: sacrum, iliac wings, then femoral heads low down.
        depth = (z - kidney_bottom) / (1.0 - kidney_bottom)
        sacrum = Blob(cx, spine_y + 0.04, 0.15, 0.07)
        out += [Layer("spine", sacrum, hu["cortical"]), Layer(None, sacrum.scaled(0.8), hu["cancellous"]),
                Layer("", Blob(cx, spine_y + 0.05, 0.035, 0.025), hu["csf"])]
        cavity = self.cavity_at(z)
        for side in (-1, 1):
            if depth < 0.65:
                wing = Blob(cx + side * (0.30 + 0.1 * depth) * cavity.ax / 0.7, spine_y - 0.04 - 0.1 * depth,
                            0.055, 0.20, -side * 0.55)
            else:
                wing = Blob(cx + side * 0.52 * cavity.ax, cavity.cy + 0.05, 0.085, 0.085)
            out += [Layer("pelvic_bone", wing, hu["cortical"]), Layer(None, wing.scaled(0.7), hu["cancellous"])]
        return out
