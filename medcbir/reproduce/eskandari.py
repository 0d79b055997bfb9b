"""Eskandari et al. 2022: Clustered-CAM against Ablation-CAM — faithfulness (ADC, PIC) and speed.

Clustered-CAM ablates k-means clusters of the last convolutional layer's feature maps instead of
every feature map, so it needs one forward per cluster instead of one per channel; the paper
compares it with Grad-CAM, EGrad-CAM and Ablation-CAM by average drop in confidence (ADC ↓),
percent increase in confidence (PIC ↑) and run time, on thyroid nodule ultrasound classification.
Here the confidence is the similarity of a neighbour to its query (``explain-eval``'s query
targets): ADC/PIC perturb it with each map; seconds per image measured in the same run.
"""

from __future__ import annotations

from medcbir.reproduce import Outcome
from medcbir.reproduce.report import bar_chart, map_grid
from medcbir.reproduce.steps import build_index, organ_pairs, train_row
from medcbir.reproduce.table import NOT_REPORTED, Claim, Column, Source, Table

TITLE = "Eskandari et al. — Clustered-CAM vs Ablation-CAM: ADC, PIC and the speed ratio"
CITATION = ("A. Eskandari, H. Du, A. AlZoubi, \"Clustered-CAM: Visual Explanations for Deep Convolutional Networks for Thyroid "
            "Nodule Ultrasound Image Classification\", MIDL 2022 (under review, as its text says)")
CLUSTERED = "Clustered-CAM (paper's method)"
ABLATION = "Ablation-CAM"
TRIVIAL = ("centre", "intensity")

# The paper's figures, as printed in its text, each with its place in it.
CITE = "Eskandari et al. 2022"
TEXT = "papers/004_653a309177d48dba.txt"
REFERENCE = f"{CITATION}; cells read in its full text ({TEXT} of the seed-paper collection)"
SOURCES = {
    "table1": Source(CITE, "Table 1 (Dataset B, 145 test images; Clustered-CAM with K = 64 clusters; ADC % and PIC %)", TEXT),
    "sec3": Source(CITE, "Section 3 (\"average computation time of analysing Dataset B\": per image or for all 145 is not said; "
                         "no speed ratio or localisation score is given)", TEXT),
    "abstract": Source(CITE, "abstract", TEXT),
}
PAPER_CELLS = {
    CLUSTERED: {"adc": "34.09", "pic": "28.28", "seconds_per_image": "3.75 s", "speedup": NOT_REPORTED, "rank_accuracy": NOT_REPORTED},
    ABLATION: {"adc": "36.70", "pic": "24.14", "seconds_per_image": "14.19 s", "speedup": NOT_REPORTED, "rank_accuracy": NOT_REPORTED},
}
PAPER_SOURCES = {row: {key: ("table1" if key in ("adc", "pic") else "sec3") for key in cells} for row, cells in PAPER_CELLS.items()}
CLAIMS = [
    Claim("Our study with a dataset of 864 ultrasound images shows that the Clustered-CAM achieved a lower average drop and higher "
          "percent increase in confidence comparing to the-state-of-the-art techniques.", "abstract"),
]
PAPER_NOTES = [
    "Other figures of the paper, not in the cells: Grad-CAM and EGrad-CAM both ADC 40.35, PIC 25.52 (Eskandari et al. 2022, Table 1); "
    "Clustered-CAM with 16 and 32 clusters ADC 36.47 and 38.22, PIC 26.90 and 24.83 (Eskandari et al. 2022, Section 3). The two "
    "times of Section 3 differ by a factor of 3.8 (our division, not a figure of the paper).",
    "Setting: the paper explains a thyroid nodule classifier (TNet) and its confidence is the class score; ours is a neighbour's "
    "cosine similarity to its query. ADC and PIC are the same formulas (its Eq. 2), in percent on both sides. Our Clustered-CAM "
    "uses 10 clusters; seconds depend on the machine; RRA on the liver is our column.",
]


def empty_table() -> Table:
    return Table(
        paper="eskandari",
        title="Faithfulness of the maps to the query–neighbour similarity (ADC, PIC) and their cost",
        columns=[Column("adc", "ADC", "low"), Column("pic", "PIC"), Column("seconds_per_image", "s/image", "low"),
                 Column("speedup", "speed-up vs Ablation-CAM"), Column("rank_accuracy", "RRA (liver)")],
        rows=[CLUSTERED, ABLATION],
        extra_rows=[f"trivial: {t}" for t in TRIVIAL],
        paper_cells=PAPER_CELLS, paper_sources=PAPER_SOURCES, sources=SOURCES, claims=CLAIMS, reference=REFERENCE,
        paper_notes=list(PAPER_NOTES),
    )


def run(ctx, say):
    from medcbir.explain.evaluation.run import evaluate_explanations

    b = ctx.budget
    table = empty_table()
    say("eskandari: train SimSiam + HU views")
    t = train_row("SimSiam + HU views", ctx.archive, ctx.work / "simsiam-hu.pt", b, "simsiam", views="hu-narrow,hu-wide")
    index = build_index(ctx.archive, t.path, ctx.work / "simsiam-hu-index")
    pairs = organ_pairs(index, ctx.masks, "liver", b.explain_n, ctx.labels)
    say("eskandari: Clustered-CAM and Ablation-CAM (explain-eval scorer)")
    result = evaluate_explanations(pairs["module"], pairs["images"], pairs["masks"], pairs["query_images"],
                                   methods=("clustered_cam", "ablation_cam"), trivial=TRIVIAL, seed=b.seed)
    rows = {CLUSTERED: result["methods"]["clustered_cam"], ABLATION: result["methods"]["ablation_cam"],
            **{f"trivial: {n}": result["trivial"][n] for n in TRIVIAL}}
    for row, r in rows.items():
        for key in ("adc", "pic", "rank_accuracy"):
            table.set(row, key, r.get(key))
        if not row.startswith("trivial"):
            table.set(row, "seconds_per_image", r["seconds_per_image"])
    speedup = rows[ABLATION]["seconds_per_image"] / max(rows[CLUSTERED]["seconds_per_image"], 1e-9)
    table.set(CLUSTERED, "speedup", speedup)
    table.set(ABLATION, "speedup", 1.0)
    from medcbir.explain.evaluation.scoring import heatmaps_for

    module = pairs["module"].eval()
    import torch.nn.functional as F
    import torch

    with torch.no_grad():
        targets = F.normalize(module(pairs["query_images"][:4]).float(), dim=1)
    grid = {name: heatmaps_for(method, module, pairs["images"][:4], targets, {}).numpy()
            for name, method in ((CLUSTERED, "clustered_cam"), (ABLATION, "ablation_cam"))}
    ours = table.ours
    figures = [
        bar_chart(ctx.out / "adc_pic_speed.png", "Eskandari et al. reproduction: Clustered-CAM vs Ablation-CAM",
                  {c.header: {r: ours.get(r, {}).get(c.key) for r in table.rows} for c in table.columns[:3]}),
        map_grid(ctx.out / "cam_maps.png", "neighbour maps w.r.t. their query (liver outlined)", pairs["images"][:4], grid, pairs["masks"][:4]),
    ]
    na = result.get("not_applicable", {})
    table.notes += [
        f"Speed: Clustered-CAM (10 clusters) {rows[CLUSTERED]['seconds_per_image']:.3f} s/image vs Ablation-CAM (one ablation per channel, "
        f"512 channels) {rows[ABLATION]['seconds_per_image']:.3f} s/image in the same run: {speedup:.1f}× (machine possibly loaded).",
        "Paper's result (Table 1, Section 3): Clustered-CAM has a lower ADC and a higher PIC than Ablation-CAM and took 3.75 s "
        "against 14.19 s.",
        *[f"n/a {k}: {v}" for k, v in na.items()],
        f"{len(pairs['pairs'])} query–neighbour pairs of different patients' liver slices; confidence = cosine similarity to the query.",
    ]
    differences = {
        "data": "phantom v2 CT (synthetic) instead of the paper's thyroid nodule ultrasound images",
        "task": "the similarity of a retrieved neighbour to its query replaces the class score",
        "budget": b.describe(),
        "backbone": f"ResNet-18 (SimSiam + HU views) at {b.size} px",
    }
    commands = [
        f"medcbir train {ctx.archive} --method simsiam --views hu-narrow,hu-wide --size {b.size} --epochs {b.epochs} --lr 0.2 --out simsiam-hu.pt",
        f"medcbir index {ctx.archive} --encoder simsiam-hu.pt --out index/",
        f"medcbir explain-eval index/ --masks-file {ctx.masks} --organ liver --methods clustered_cam,ablation_cam --n {b.explain_n} --angles ''",
    ]
    protocol = [
        "Train SimSiam with HU views at the budget; index the archive.",
        "Pair liver slices with their nearest other-patient liver neighbour; each neighbour's Clustered-CAM and Ablation-CAM w.r.t. its query.",
        "ADC / PIC (the similarity with the image masked by the map), seconds per image, RRA on the liver; trivial maps beside them.",
    ]
    return Outcome(table, figures, protocol, differences, commands, [t], {"scores": {k: {m: v for m, v in r.items() if m != "per_image"} for k, r in rows.items()}, "pairs": pairs["pairs"]})
