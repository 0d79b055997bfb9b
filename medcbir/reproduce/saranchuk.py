"""Saranchuk: MoCo representations explained with SmoothGrad, and how the maps follow a rotated input.

The paper trains MoCo, explains its representations with SmoothGrad and reports the Dice between
the thresholded maps and the organ mask as the input is rotated from 0 to 360°: a map that
follows the anatomy keeps its Dice at every angle. Here: MoCo v2 trained at the budget; SmoothGrad
(and Grad-CAM beside it) of each liver slice's own embedding at every angle of the budget,
binarised to the mask's area (:func:`medcbir.explain.metrics.dice_rotation_sweep`); the centre
trivial map as the floor.
"""

from __future__ import annotations

from medcbir.reproduce.table import Column, Table

TITLE = "Saranchuk — MoCo + SmoothGrad, Dice of thresholded maps vs input rotation (0–360°)"
CITATION = "Saranchuk, MoCo self-supervised representations explained with SmoothGrad; Dice of thresholded maps under input rotation"
PAPER_ROW = "MoCo + SmoothGrad (paper)"
METHODS = {PAPER_ROW: "smoothgrad", "MoCo + Grad-CAM": "gradcam"}
TRIVIAL = {"trivial: centre": "centre"}

# The paper's figures: only what was read in a retrieved text of the paper, each with its source. No text of
# this paper was found, so no cell is quoted.
REFERENCE = ("not identified — medcbir records only a description of this paper (no title, DOI or arXiv id), and searches of "
             "stored public pages, repositories and issue threads (author, method and metric names) found no text of it")
PAPER_NOTES = [
    "No text of this paper was found: every paper cell (Dice per angle, mean, min) is unverified.",
    "A related work was found but not used: a NeurIPS 2025 workshop paper with A. Saranchuk as co-author (\"Response Patterns to "
    "Rotation Angle in a Rotation Pretext Task Vary Across Datasets and Architectures\", https://openreview.net/forum?id=85rdlgTS50, "
    "as described by the README of github.com/paulyan678/rotation-angle-signatures; the paper itself was not read) studies MoCo v2 "
    "pretrained at fixed rotation angles and a U-Net's Dice against that angle — not SmoothGrad maps under input rotation, so none "
    "of its figures belongs in this table.",
]


def empty_table(angles) -> Table:
    cols = [Column(f"dice_{a:g}", f"Dice {a:g}°") for a in angles] + [Column("dice_mean", "Dice mean"), Column("dice_min", "Dice min")]
    return Table(paper="saranchuk", title="Dice of the top-|mask| pixels of each map with the rotated liver mask, per rotation angle",
                 columns=cols, rows=[PAPER_ROW], extra_rows=[r for r in METHODS if r != PAPER_ROW] + list(TRIVIAL),
                 reference=REFERENCE, paper_notes=list(PAPER_NOTES))


def run(ctx, say):
    import numpy as np

    from medcbir.explain.evaluation import map_function
    from medcbir.explain.metrics import dice_rotation_sweep
    from medcbir.reproduce import Outcome
    from medcbir.reproduce.report import pyplot, save
    from medcbir.reproduce.steps import build_index, organ_items, retrieval, train_row

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
        "data": "phantom v2 CT liver slices (synthetic) instead of the paper's images",
        "budget": b.describe(),
        "backbone": f"ResNet-18 at {b.size} px, MoCo v2 with a 1024-entry queue",
        "angles": f"{len(b.angles)} angles ({', '.join(f'{a:g}' for a in b.angles)}°)",
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
