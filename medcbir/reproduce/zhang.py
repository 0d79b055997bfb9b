"""Zhang et al. 2021: self-supervised pretexts judged by how well features at salient landmarks cluster.

The paper (fetal ultrasound video) pre-trains a 3D ResNet-18 with three pretexts — temporal
sequence sorting, rotation prediction, pace prediction — takes visually salient landmarks (local
maxima of a predicted sonographer-attention saliency map), clusters the network's features at
them with K-means and scores the clusters by silhouette S (↑), compactness D_C (↓) and
uniqueness D_U (↑); sequence sorting scores best and is recommended. Here: sequence sorting and
rotation prediction (the paper's rows we have) and SimSiam (ours) trained at the same budget;
each indexed and evaluated (MAP@5 over levels); landmarks are the local maxima of RELAX maps of
liver slices (own embeddings), scored by :func:`medcbir.explain.metrics.landmark_scores` through
``explain-eval``'s scorer (5 landmarks per map, 3 clusters), beside the trivial maps.
"""

from __future__ import annotations

from medcbir.reproduce import Outcome
from medcbir.reproduce.report import bar_chart, map_grid
from medcbir.reproduce.steps import build_index, organ_items, retrieval, train_row
from medcbir.reproduce.table import NOT_REPORTED, Claim, Column, Source, Table

TITLE = "Zhang et al. — pretexts judged by landmark clustering quality (S, D_C, D_U)"
CITATION = ("K. Zhang, J. Jiao, J. A. Noble, \"Explainability of Self-Supervised Representation Learning for Medical Ultrasound "
            "Video\", NeurIPS 2021 (the venue its text names)")
SEQSORT = "sequence sorting (paper's pretext)"
ROTATION = "rotation prediction"
SIMSIAM = "SimSiam"
ROWS = {SEQSORT: ("seqsort", {"method_options": {"length": 3}}), ROTATION: ("rotation", {}), SIMSIAM: ("simsiam", {})}
PAPER_ROWS = [SEQSORT, ROTATION]

# The paper's figures, as printed in its text, each with its place in it.
CITE = "Zhang et al. 2021"
TEXT = "papers/000_64d1e8d4c5109e80.txt"
REFERENCE = f"{CITATION}; cells read in its full text ({TEXT} of the seed-paper collection)"
SOURCES = {
    "sec32": Source(CITE, "Section 3.2 (the text quotes uniqueness only; every metric per model is plotted in Fig. 2, "
                          "whose values are not in the text)", TEXT),
    "sec33": Source(CITE, "Section 3.3 and Fig. 3 (no retrieval; the downstream task is 14-class standard-plane detection)", TEXT),
}
PAPER_CELLS = {
    SEQSORT: {"silhouette": NOT_REPORTED, "compactness": NOT_REPORTED, "uniqueness": "0.351", "map_at_5": NOT_REPORTED},
    ROTATION: {"silhouette": NOT_REPORTED, "compactness": NOT_REPORTED, "uniqueness": NOT_REPORTED, "map_at_5": NOT_REPORTED},
}
PAPER_SOURCES = {row: {key: ("sec33" if key == "map_at_5" else "sec32") for key in cells} for row, cells in PAPER_CELLS.items()}
CLAIMS = [
    Claim("Among the tested self-supervised learning models, the sequence sorting (Seq. Sort) model has the highest clustering "
          "quality (0.351). Therefore, the Seq. Sort model is selected as the recommended approach for representation learning "
          "accordingly.", "sec32"),
    Claim("Fig. 3 shows that Seq.Sort performs the best (e.g. 0.679 for Precision), while Rand.Int. and Supervised serve the lower "
          "(0.625) and upper (0.681) bounds.", "sec33"),
]
PAPER_NOTES = [
    "Sequence sorting's 0.351 is read as uniqueness D_U: Section 3.2 gives it as the \"clustering quality\" right after quoting "
    "uniqueness for the bounds — supervised model 0.403, random initialisation 0.113 (Zhang et al. 2021, Section 3.2). The "
    "paper's third pretext, pace prediction, is not implemented here; SimSiam is our row.",
    "Not on the same scale as ours: the paper's D_C (Eq. 2) is a mean squared distance to the centroid over a scaling factor τ, "
    "its D_U (Eq. 3) an exponential of a centroid's squared distance to the data mean minus its cosine to a reference direction, "
    "over τ; our D_C is the mean Euclidean distance to the centre and our D_U the mean distance between centres.",
    "Setting: the paper's landmarks are maxima of predicted sonographer-attention saliency on fetal ultrasound video frames, "
    "features of a 3D ResNet-18 (Section 2); ours are maxima of RELAX maps of synthetic CT liver slices, features of a 2D ResNet-18.",
]


def empty_table() -> Table:
    return Table(
        paper="zhang",
        title="Landmark clustering of RELAX maps (liver slices, own embeddings) and retrieval of anatomical levels",
        columns=[Column("silhouette", "S"), Column("compactness", "D_C", "low"), Column("uniqueness", "D_U"), Column("map_at_5", "MAP@5")],
        rows=list(PAPER_ROWS),
        extra_rows=[SIMSIAM, "trivial: centre (on the seqsort encoder)", "trivial: intensity (on the seqsort encoder)"],
        paper_cells=PAPER_CELLS, paper_sources=PAPER_SOURCES, sources=SOURCES, claims=CLAIMS, reference=REFERENCE,
        paper_notes=list(PAPER_NOTES),
    )


def run(ctx, say):
    from medcbir.explain.evaluation.run import evaluate_explanations

    b = ctx.budget
    table = empty_table()
    trained, details, grid = [], {}, {}
    first = None
    for row, (method, options) in ROWS.items():
        say(f"zhang: train {row}")
        t = train_row(row, ctx.archive, ctx.work / f"{method}.pt", b, method, **options)
        trained.append(t)
        index = build_index(ctx.archive, t.path, ctx.work / f"{method}-index")
        table.set(row, "map_at_5", retrieval(index, ctx.labels)["encoder"]["map_at_k"])
        say(f"zhang: landmarks of RELAX maps ({row})")
        items = organ_items(index, ctx.masks, "liver", max(b.explain_n, 4), ctx.labels)
        result = evaluate_explanations(items["module"], items["images"], items["masks"], None, methods=("relax",), trivial=("centre", "intensity"),
                                       n_masks=b.relax_masks, seed=b.seed)
        relax = result["methods"]["relax"]
        for key in ("silhouette", "compactness", "uniqueness"):
            table.set(row, key, relax.get(key))
            if first is None:
                for trivial in ("centre", "intensity"):
                    table.set(f"trivial: {trivial} (on the seqsort encoder)", key, result["trivial"][trivial].get(key))
        first = first or items
        details[row] = {k: relax.get(k) for k in ("silhouette", "compactness", "uniqueness", "rank_accuracy")}
        from medcbir.explain.evaluation.scoring import heatmaps_for

        grid[row] = heatmaps_for("relax", items["module"], items["images"][:4], None, {"n_masks": b.relax_masks, "seed": b.seed}).numpy()
    ours = table.ours
    figures = [
        bar_chart(ctx.out / "landmark_clustering.png", "Zhang et al. reproduction: landmark clustering of RELAX maps",
                  {c.header: {r: ours.get(r, {}).get(c.key) for r in ROWS} for c in table.columns}),
        map_grid(ctx.out / "relax_maps.png", "RELAX maps (own embedding) per pretext; liver outlined", first["images"][:4], grid, first["masks"][:4]),
    ]
    best = max(ROWS, key=lambda r: (ours.get(r, {}).get("silhouette") or float("-inf")))
    table.notes += [
        "Paper's claim (Section 3.2, quoted below): sequence sorting has the highest clustering quality of the pretexts; here the "
        f"highest S is {best!r}.",
        "D_C and D_U are distances in each encoder's own feature space: compare them within a row (against the trivial maps), "
        "not across encoders. The trivial rows are scored with the sequence-sorting encoder's features.",
        f"Landmarks: 5 local maxima per RELAX map ({b.relax_masks} masks) of {len(first['uids'])} liver slices, K-means with 3 clusters.",
    ]
    differences = {
        "data": "phantom v2 CT (synthetic) instead of the paper's fetal ultrasound video; liver slices stand in for its frames",
        "budget": b.describe(),
        "backbone": f"2D ResNet-18 at {b.size} px for every pretext (the paper: a 3D ResNet-18 on video clips)",
        "pretexts": "sequence sorting and rotation as in the paper, SimSiam instead of its pace prediction",
        "saliency": "landmarks from RELAX maps of the representation (own embedding) instead of predicted sonographer attention",
    }
    commands = [
        f"medcbir train {ctx.archive} --method seqsort --method-option length=3 --size {b.size} --epochs {b.epochs} --lr 0.2 --out seqsort.pt",
        f"medcbir train {ctx.archive} --method rotation --size {b.size} --epochs {b.epochs} --lr 0.2 --out rotation.pt",
        f"medcbir index {ctx.archive} --encoder seqsort.pt --out index/",
        f"medcbir evaluate index/ --labels {ctx.labels} -k 5 --exclude same-patient",
        f"medcbir explain-eval index/ --masks-file {ctx.masks} --organ liver --methods relax --targets own --n {b.explain_n} --angles ''   # S↑ D_C↓ D_U↑ columns",
    ]
    protocol = [
        "Train sequence sorting (3 slices), rotation prediction and SimSiam at the same budget.",
        "Index the archive with each; MAP@5 over the level labels (other patients only).",
        "RELAX maps of liver slices w.r.t. their own embeddings; 5 landmarks per map described by the encoder's last feature map; "
        "K-means (3) → S, D_C, D_U; trivial maps scored the same way.",
    ]
    return Outcome(table, figures, protocol, differences, commands, trained, details)
