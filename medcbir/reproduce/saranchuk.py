"""Saranchuk 2024: how well SmoothGrad maps of a contrastive (MoCo) model match the mask as the input rotates.

The paper fine-tunes a pretrained MoCo (ResNet-50) on each of three data sets (BraTS, a lung-mask
X-ray set, Kvasir-SEG), rotates 75 images by every degree from 0 to 360°, takes a SmoothGrad map
of each rotated image, rotates it back and plots the mean Dice with the ground-truth mask against
the angle: periodic, with a 90° period. Here: MoCo v2 trained at the budget; SmoothGrad (and
Grad-CAM beside it) of each liver slice's own embedding at every angle of the budget, binarised to
the mask's area (:func:`medcbir.explain.metrics.dice_rotation_sweep`); the centre trivial map as
the floor.
"""

from __future__ import annotations

from medcbir.reproduce import Outcome
from medcbir.reproduce.report import pyplot, save
from medcbir.reproduce.steps import build_index, organ_items, retrieval, train_row
from medcbir.reproduce.table import NOT_REPORTED, Claim, Column, Source, Table

TITLE = "Saranchuk — MoCo + SmoothGrad, Dice of thresholded maps vs input rotation (0–360°)"
CITATION = ("A. Saranchuk, \"Optimizing the Interpretability of Contrastive Learning Models: An Analysis of Augmentation "
            "Strategies\", thesis (supervisor M. Guerzhoy), April 2024")
PAPER_ROW = "MoCo + SmoothGrad (paper)"
METHODS = {PAPER_ROW: "smoothgrad", "MoCo + Grad-CAM": "gradcam"}
TRIVIAL = {"trivial: centre": "centre"}

# The paper's figures, as printed in its text, each with its place in it. The curves themselves are
# plots (Figs. 5.6-5.8); the text gives each curve's range and the angles of its maxima and minima.
CITE = "Saranchuk 2024"
TEXT = "papers/001_9ee28face31b715f.txt"
REFERENCE = f"{CITATION}; cells read in its full text ({TEXT} of the seed-paper collection)"
CURVES = {  # data set: (≈ lowest Dice, ≈ highest Dice, angles of the maxima, angles of the minima)
    "BraTS": ("0.627", "0.658", (90, 180, 270), (45, 135, 225, 315)),
    "Lung": ("0.470", "0.476", (66, 156, 246, 336), (90, 180, 270)),
    "Kvasir": ("0.346", "0.360", (45, 135, 225, 315), (90, 180, 270)),
}
SOURCES = {
    "sec53": Source(CITE, "Section 5.3 (Figs. 5.6–5.8: the text gives each curve's range and the angles of its extrema; "
                          "values at other angles and the mean are only plotted)", TEXT),
    "ch7": Source(CITE, "Chapter 7", TEXT),
}
CLAIMS = [
    Claim("When the similarity between the saliency maps and segmentation masks is plotted against increasing angles of rotation θ, "
          "numerous datasets exhibit periodic behaviour with a period of 90°.", "ch7"),
    Claim("Some datasets have local minima at intervals of θ = 90, whereas others have local maxima at those points.", "ch7"),
]
PAPER_NOTES = [
    "Each quoted cell lists the data sets whose curve has a maximum or minimum at that angle, with the approximate Dice the text "
    "gives for it (BraTS: brain tumours in MRI; Lung: lung masks in chest X-rays, the closest to our organ masks; Kvasir: polyps "
    "in colonoscopy). Dice min is the low end of each curve's range.",
    "Setting: the paper fine-tunes a pretrained MoCo with a ResNet-50 on each data set and averages 75 images per angle, every "
    "degree (Section 5.3); how a map is binarised for the Dice is not stated. Ours: MoCo v2 with a ResNet-18 trained from random "
    "weights on synthetic CT, maps binarised to the mask's area, the budget's angles.",
]


def _paper_cell(angle: float) -> str:
    found = []
    for name, (low, high, maxima, minima) in CURVES.items():
        if angle in maxima:
            found.append(f"{name} ≈{high} (max)")
        elif angle in minima:
            found.append(f"{name} ≈{low} (min)")
    return ", ".join(found) or NOT_REPORTED


def empty_table(angles) -> Table:
    cols = [Column(f"dice_{a:g}", f"Dice {a:g}°") for a in angles] + [Column("dice_mean", "Dice mean"), Column("dice_min", "Dice min")]
    cells = {f"dice_{a:g}": _paper_cell(a) for a in angles}
    cells.update(dice_mean=NOT_REPORTED, dice_min=", ".join(f"{name} ≈{low}" for name, (low, *_rest) in CURVES.items()))
    return Table(paper="saranchuk", title="Dice of the top-|mask| pixels of each map with the rotated liver mask, per rotation angle",
                 columns=cols, rows=[PAPER_ROW], extra_rows=[r for r in METHODS if r != PAPER_ROW] + list(TRIVIAL),
                 paper_cells={PAPER_ROW: cells}, paper_sources={PAPER_ROW: {key: "sec53" for key in cells}}, sources=SOURCES,
                 claims=CLAIMS, reference=REFERENCE, paper_notes=list(PAPER_NOTES))


def run(ctx, say):
    import numpy as np

    from medcbir.explain.evaluation.scoring import map_function
    from medcbir.explain.metrics import dice_rotation_sweep

    b = ctx.budget
    table = empty_table(b.angles)
    say("saranchuk: train MoCo")
    t = train_row("MoCo v2", ctx.archive, ctx.work / "moco.pt", b, "moco", method_options={"queue_size": 1024})
    index = build_index(ctx.archive, t.path, ctx.work / "moco-index")
    ret = retrieval(index, ctx.labels)["encoder"]
    items = organ_items(index, ctx.masks, "liver", b.explain_n, ctx.labels)
    module = items["module"].eval()
    curves = {}
    for row, name in {**METHODS, **TRIVIAL}.items():
        say(f"saranchuk: Dice vs rotation ({row})")
        fn = map_function(name)
        options = {"seed": b.seed} if name == "smoothgrad" else {}
        sweeps = [dice_rotation_sweep(fn, module, img, mask, angles=b.angles, **options)["dice"] for img, mask in zip(items["images"], items["masks"])]
        curve = np.mean(np.asarray(sweeps), axis=0)
        curves[row] = curve
        for a, d in zip(b.angles, curve):
            table.set(row, f"dice_{a:g}", float(d))
        table.set(row, "dice_mean", float(curve.mean()))
        table.set(row, "dice_min", float(curve.min()))
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=100)
    for i, (row, curve) in enumerate(curves.items()):
        ax.plot(b.angles, curve, "o-" if i == 0 else "s--", label=row, color=f"C{i}")
    ax.set_xlabel("input rotation (degrees)")
    ax.set_ylabel(f"Dice with liver mask (mean of {len(items['uids'])})")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7)
    ax.set_title("Saranchuk reproduction: Dice vs rotation (MoCo encoder)", fontsize=9)
    fig.tight_layout()
    figure = save(fig, ctx.out / "dice_vs_rotation.png")
    sg = curves[PAPER_ROW]
    table.notes += [
        f"MoCo retrieval at this budget: MAP@5 {ret['map_at_k']:.3f}, 5-NN accuracy {ret['knn_accuracy']:.3f} (levels, other patients only).",
        f"SmoothGrad's Dice ranges {sg.min():.3f}–{sg.max():.3f} over the angles (spread {sg.max() - sg.min():.3f}); "
        f"the centre map, which ignores the image, scores {curves['trivial: centre'].mean():.3f} on average.",
        f"{len(items['uids'])} liver slices, each map explains the slice's own embedding; maps binarised to the mask's area.",
    ]
    differences = {
        "data": "phantom v2 CT liver slices (synthetic) instead of the paper's BraTS, lung X-ray and Kvasir-SEG images",
        "budget": b.describe(),
        "backbone": f"ResNet-18 at {b.size} px, MoCo v2 with a 1024-entry queue, from random weights "
                    "(the paper: a pretrained MoCo ResNet-50, fine-tuned)",
        "angles": f"{len(b.angles)} angles ({', '.join(f'{a:g}' for a in b.angles)}°) instead of every degree",
    }
    commands = [
        f"medcbir train {ctx.archive} --method moco --method-option queue_size=1024 --size {b.size} --epochs {b.epochs} --lr 0.2 --out moco.pt",
        f"medcbir index {ctx.archive} --encoder moco.pt --out index/",
        f"medcbir explain-eval index/ --masks-file {ctx.masks} --organ liver --methods smoothgrad,gradcam --targets own --n {b.explain_n} "
        f"--angles {','.join(f'{a:g}' for a in b.angles)}   # Dice-rot column = mean over angles",
    ]
    protocol = [
        "Train MoCo v2 at the budget; index the archive.",
        "For liver slices: rotate image and mask together by each angle, SmoothGrad (and Grad-CAM, centre map) of the rotated image's own "
        "embedding, keep the map's top-|mask| pixels, Dice with the rotated mask.",
    ]
    return Outcome(table, [figure], protocol, differences, commands, [t], {"curves": {k: v.tolist() for k, v in curves.items()}, "retrieval": ret})
