"""``medcbir search`` and ``medcbir evaluate``: parse, call ``medcbir.engine``, print."""

from __future__ import annotations

import json
import math
from pathlib import Path

import click

from medcbir.device import Device
from medcbir.encoders.regions import parse_box
from medcbir.engine import Engine, evaluate as run_evaluation, open_engine
from medcbir.engine.baselines import evaluate_baselines
from medcbir.engine.dicom_kos import write_search_kos
from medcbir.engine.grouping import GROUP_COLUMNS
from medcbir.engine.reading import NOTHING_SIMILAR, above_thresholds, percentile
from medcbir.engine.region_evaluate import CROP_BASELINES, evaluate_regions
from medcbir.errors import ConfigError
from medcbir.imaging import walk

EXCLUDE_CHOICES = ("none", "same-patient", "same-study", "same-series")
PLURALS = {"study": "studies", "series": "series"}
NEIGHBOUR_FIELDS = ("sop_instance_uid", "frame", "series_instance_uid", "study_instance_uid", "modality", "source")


def _device(name: str):
    return Device.auto(prefer=None if name == "auto" else name)


def neighbour_json(n, redact: bool = False) -> dict:
    """The ``--json`` record of one neighbour (``redact``: without its file path)."""
    out = {"rank": n.rank, "score": round(n.score, 6)}
    out.update({key: n.meta.get(key) for key in NEIGHBOUR_FIELDS if not (redact and key == "source")})
    if getattr(n, "region", None) is not None:
        out["region"] = [int(v) for v in n.region]
    return out


def query_name(query: str, redact: bool) -> str:
    """How a query is shown: as given, or with ``redact`` a file by its SOP Instance UID
    (its path may name the patient)."""
    from pathlib import Path

    if not redact or not Path(query).exists():
        return query
    try:
        import pydicom

        return str(pydicom.dcmread(query, stop_before_pixels=True, specific_tags=["SOPInstanceUID"]).SOPInstanceUID)
    except Exception:  # noqa: BLE001 - not readable here: the engine reports it; show nothing of the path
        return "(file)"


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(v).ljust(w) for v, w in zip(header, widths)).rstrip()]
    lines += ["  ".join(str(v).ljust(w) for v, w in zip(row, widths)).rstrip() for row in rows]
    return "\n".join(lines)


def _series_query(engine, spec: str) -> list:
    """A series as one case query: a SeriesInstanceUID in the index, or a folder of its files."""
    from pathlib import Path

    if Path(spec).is_dir():
        decoded = list(walk(Path(spec), preprocessing=engine.encoder.preprocessing, key=engine.pseudonym_key, workers=1))
        if not decoded:
            raise ConfigError(f"folder {spec} holds no decodable image")
        return decoded
    return engine.series_members(spec)


def _print_cases(label: str, cases: list, group_by: str) -> None:
    click.echo(f"query: {label}  ({len(cases)} {PLURALS[group_by] if len(cases) != 1 else group_by})")
    rows = []
    for c in cases:
        best = c.slices[0] if c.slices else None
        rows.append([c.rank, f"{c.score:.4f}", c.n_hits, c.uid, c.meta.get("modality") or "", _date(c.meta.get("study_datetime")),
                     best.meta.get("sop_instance_uid", "") if best else "", f"{best.score:.4f}" if best else ""])
    click.echo(_table(rows, ["rank", "score", "hits", f"{group_by}_instance_uid", "modality", "date", "best slice", "slice score"]))
    click.echo("")


def _date(value) -> str:
    value = str(value or "")
    return f"{value[:4]}-{value[4:6]}-{value[6:8]}" if len(value) >= 8 else "-"


def _drop_source(record: dict, redact: bool) -> None:
    if redact:
        record.pop("source", None)


def _print_prior(result, label: str, redact: bool = False) -> None:
    click.echo(f"query: {label}  (study {result.query_study}, {_date(result.query_datetime)}; "
               f"{len(result.studies)} other stud{'ies' if len(result.studies) != 1 else 'y'} of the patient, newest first)")
    rows = [[_date(s.study_datetime), s.relation, s.study_instance_uid, s.slice.meta.get("instance_number", ""),
             _fmt_z(s.slice.meta.get("slice_position")), f"{s.slice.score:.4f}", *([] if redact else [s.slice.meta.get("source", "")])] for s in result.studies]
    click.echo(_table(rows, ["date", "relation", "study_instance_uid", "instance", "z", "score", *([] if redact else ["source"])]))
    click.echo("")


def _fmt_z(value) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.1f}"


@click.command()
@click.argument("index", type=click.Path(file_okay=False))
@click.argument("queries", nargs=-1)
@click.option("-k", "k", type=click.IntRange(min=1), default=10, show_default=True, help="Neighbours (or cases) per query.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list, one object per query.")
@click.option("--exclude", type=click.Choice(EXCLUDE_CHOICES), default="none", show_default=True, help="Drop items of the query's patient, study or series.")
@click.option("--modality", multiple=True, help="Only items of this modality (repeatable).")
@click.option("--body-part", multiple=True, help="Only items with this BodyPartExamined (repeatable).")
@click.option("--series", multiple=True, help="Only items of this SeriesInstanceUID (repeatable).")
@click.option("--study", multiple=True, help="Only items of this StudyInstanceUID (repeatable).")
@click.option("--per-series", type=click.IntRange(min=0), default=2, show_default=True, help="At most N neighbours of one series (0 = no limit).")
@click.option("--include-self", is_flag=True, help="Also return a query that is itself in the index as its own neighbour.")
@click.option("--group-by", type=click.Choice(["series", "study"]), default=None, help="Rank series or studies (cases) instead of slices.")
@click.option("--per-group", type=click.IntRange(min=1), default=3, show_default=True, help="Best matching slices shown per case (--group-by).")
@click.option("--query-series", multiple=True, help="A whole series as one query: a SeriesInstanceUID in the index or a folder (repeatable; needs --group-by).")
@click.option("--prior", is_flag=True, help="The query patient's other studies, newest first, each with the slice nearest in anatomy.")
@click.option("--encoder", default=None, help="Encoder checkpoint/ONNX or encoder spec (default: the one the index records).")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--verify", type=click.Choice(["checksums", "sizes", "none"]), default="checksums", show_default=True, help="How much of the index to check at open (sizes: fast on huge indexes).")
@click.option("--redact", is_flag=True, help="Show no file paths (they may name patients): neighbours without source, query files by SOP UID.")
@click.option("--ray", "ray_address", is_flag=False, flag_value="local", default=None, metavar="[ADDRESS]",
              help="Search on Ray actors holding parts of the index: alone, a local runtime; 'auto', HOST:PORT or ray://HOST:PORT joins a cluster.")
@click.option("--shards", default=None, type=click.IntRange(min=1), help="Ray actors holding parts of the index (with --ray; default 2).")
@click.option("--dicom-out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Also write each query's result as a DICOM Key Object Selection document into this folder.")
@click.option("--kos-other-patients/--kos-same-patient", default=True, show_default=True,
              help="--dicom-out: reference neighbours of other patients in the document (filed under the query's patient), or only the query patient's.")
@click.option("--roi", default=None, metavar="X,Y,W,H",
              help="Region query: the box in the query image's stored pixel grid (X = column, Y = row of its top-left corner, W/H in pixels); neighbours are ranked by their best-matching region.")
@click.option("--roi-mask", type=click.Path(dir_okay=False, exists=True), default=None,
              help="Region query by a mask (PNG or .npy on the query image's grid); its bounding box is the region.")
@click.option("--snap", is_flag=True, help="With --roi: describe the structure the box was drawn around (the best-overlapping region proposal) instead of the box as drawn.")
@click.option("--min-score", type=click.FloatRange(-1.0, 1.0), default=None,
              help="Leave out hits below this cosine; none left: 'no sufficiently similar image'.")
@click.option("--min-percentile", type=click.FloatRange(0.0, 100.0), default=None,
              help="Leave out hits below this percentile of the archive's query-neighbour similarities (sampled at index time).")
def search(index, queries, k, as_json, exclude, modality, body_part, series, study, per_series, include_self, group_by, per_group, query_series,
           prior, encoder, device, verify, redact=False, ray_address=None, shards=None, dicom_out=None, kos_other_patients=True, roi=None,
           roi_mask=None, snap=False, min_score=None, min_percentile=None):
    """Top-K similar images for each QUERY (DICOM file, SOP UID in the index as UID[:frame]).

    All queries are embedded and searched as one batch. A QUERY that is a folder is one series
    query (like --query-series). --group-by ranks series or studies; --prior lists the query
    patient's other exams with the corresponding slice.
    """
    from pathlib import Path

    folders = [q for q in queries if Path(q).is_dir()]
    images = [q for q in queries if not Path(q).is_dir()]
    series_specs = list(query_series) + folders
    if not images and not series_specs:
        raise ConfigError("give at least one QUERY or --query-series")
    if prior and (series_specs or group_by):
        raise ConfigError("--prior takes image queries (files or UIDs), not --group-by or series queries")
    if series_specs and not group_by:
        raise ConfigError("a series query (--query-series or a folder) answers cases: add --group-by series|study")
    if shards is not None and ray_address is None:
        raise ConfigError("--shards needs --ray")
    if dicom_out is not None and (prior or group_by):
        raise ConfigError("--dicom-out writes image neighbours: it does not combine with --prior or --group-by")
    region = None
    if roi is not None or roi_mask is not None:
        if roi is not None and roi_mask is not None:
            raise ConfigError("give one of --roi and --roi-mask")
        if prior or series_specs:
            raise ConfigError("a region query (--roi/--roi-mask) takes image queries: not --prior or series queries")
        region = {"roi": parse_box(roi) if roi is not None else None, "roi_mask": roi_mask, "snap": snap}
    elif snap:
        raise ConfigError("--snap applies to a region query: add --roi X,Y,W,H")
    if (min_score is not None or min_percentile is not None) and (prior or group_by):
        raise ConfigError("--min-score and --min-percentile apply to image neighbours, not --prior or --group-by")
    if region and (min_score is not None or min_percentile is not None):
        raise ConfigError("--min-score and --min-percentile apply to whole-image search: region scores are on another scale")
    engine = open_engine(index, encoder=encoder, device=_device(device), verify=verify, ray=ray_address, shards=shards)
    try:
        _answer(engine, images, series_specs, k, exclude, filters_of(modality, body_part, series, study), per_series, include_self,
                group_by, per_group, prior, redact, as_json, dicom_out, kos_other_patients, (min_score, min_percentile), region)
    finally:
        if ray_address is not None:
            engine.close()  # the Ray actors (and a local runtime this command started)


def filters_of(modality, body_part, series, study) -> dict:
    return {"modality": modality or None, "body_part": body_part or None, "series": series or None, "study": study or None}


def _answer(engine, images, series_specs, k, exclude, filters, per_series, include_self, group_by, per_group, prior, redact, as_json,
            dicom_out=None, kos_other_patients=True, thresholds=(None, None), region=None) -> None:
    """Run the kind of search asked for and print it."""
    modality = filters["modality"]
    if prior:
        results = [engine.prior(q, modality=modality or None) for q in images]
        if as_json:
            payload = [r.to_dict() for r in results]
            for entry, q in zip(payload, images):
                entry["query"] = query_name(q, redact)
                for study_entry in entry["studies"]:
                    _drop_source(study_entry["slice"], redact)
            click.echo(json.dumps(payload, indent=2))
        else:
            for r, q in zip(results, images):
                _print_prior(r, query_name(q, redact), redact)
        return
    if group_by and region:
        _answer_region_cases(engine, images, k, exclude, filters, group_by, per_group, include_self, region, redact, as_json)
        return
    if group_by:
        labels = images + series_specs
        cases = [*images, *[_series_query(engine, spec) for spec in series_specs]]
        results = engine.search_cases(cases, k=k, group_by=group_by, exclude=exclude, per_group=per_group, include_self=include_self, **filters)
        if as_json:
            payload = [{"query": query_name(q, redact), "group_by": group_by, "cases": [c.to_dict() for c in hits]} for q, hits in zip(labels, results)]
            for entry in payload:
                for case in entry["cases"]:
                    for piece in case["slices"]:
                        _drop_source(piece, redact)
            click.echo(json.dumps(payload, indent=2))
        else:
            for q, hits in zip(labels, results):
                _print_cases(query_name(q, redact), hits, group_by)
        return

    results = engine.search(images, k=k, exclude=exclude, per_series=per_series, include_self=include_self, **filters, **(region or {}))
    if thresholds != (None, None):
        results = [above_thresholds(engine, hits, *thresholds) for hits in results]
    if dicom_out is not None:
        written = write_search_kos(engine, images, results, dicom_out, other_patients=kos_other_patients)
        click.echo(f"wrote {len(written)} Key Object Selection document(s) to {dicom_out}", err=True)
    if as_json:
        payload = [{"query": query_name(q, redact),
                    "neighbours": [{**neighbour_json(n, redact), "percentile": None if region else percentile(engine, n.score)} for n in hits],
                    **({} if hits else {"message": NOTHING_SIMILAR})} for q, hits in zip(images, results)]
        if region:
            for entry, hits in zip(payload, results):
                entry["query_region"] = list(hits[0].query_region) if hits else None
        click.echo(json.dumps(payload, indent=2))
        return
    for q, hits in zip(images, results):
        limit = f", at most {per_series} per series" if per_series else ""
        box = f", region {','.join(map(str, hits[0].query_region))}" if region and hits else ""
        click.echo(f"query: {query_name(q, redact)}  ({len(hits)} neighbour{'s' if len(hits) != 1 else ''}, exclude={exclude}{limit}{box})")
        if not hits and thresholds != (None, None):
            click.echo(f"{NOTHING_SIMILAR} (below --min-score/--min-percentile)\n")
            continue
        rows = [
            [n.rank, f"{n.score:.4f}", *([] if region else [_pct(percentile(engine, n.score))]), n.meta.get("sop_instance_uid", ""), n.meta.get("frame", 0),
             *([",".join(map(str, n.region))] if region else []), n.meta.get("series_instance_uid", ""), n.meta.get("modality", ""),
             *([] if redact else [n.meta.get("source", "")])]
            for n in hits
        ]
        click.echo(_table(rows, ["rank", "score", *([] if region else ["pct"]), "sop_instance_uid", "frame", *(["region x,y,w,h"] if region else []),
                                 "series", "modality", *([] if redact else ["source"])]))
        click.echo("")


def _answer_region_cases(engine, images, k, exclude, filters, group_by, per_group, include_self, region, redact, as_json) -> None:
    """--group-by with a region query: the series or studies of the best-matching regions, each
    ranked by its best region (region hits pooled per query, then grouped)."""
    column = GROUP_COLUMNS[group_by]
    pool = max(100, 20 * int(k))
    results = engine.search(images, k=pool, exclude=exclude, per_series=0, include_self=include_self, **filters, **region)
    payload = []
    for q, hits in zip(images, results):
        cases: dict = {}
        for n in hits:
            cases.setdefault(n.meta.get(column), []).append(n)
        ranked = sorted(cases.items(), key=lambda kv: -kv[1][0].score)[:k]
        entry = {"query": query_name(q, redact), "group_by": group_by, "query_region": list(hits[0].query_region) if hits else None,
                 "cases": [{"rank": r, "uid": uid, "score": round(members[0].score, 6), "hits": len(members),
                            "slices": [neighbour_json(n, redact) for n in members[:per_group]]} for r, (uid, members) in enumerate(ranked, 1)]}
        payload.append(entry)
    if as_json:
        click.echo(json.dumps(payload, indent=2))
        return
    for entry in payload:
        click.echo(f"query: {entry['query']}  ({len(entry['cases'])} {group_by}{'s' if len(entry['cases']) != 1 else ''}, region {entry['query_region']})")
        rows = [[c["rank"], f"{c['score']:.4f}", c["hits"], c["uid"], c["slices"][0]["sop_instance_uid"], ",".join(map(str, c["slices"][0]["region"]))]
                for c in entry["cases"]]
        click.echo(_table(rows, ["rank", "score", "hits", f"{group_by}_instance_uid", "best slice", "region x,y,w,h"]))
        click.echo("")


def _pct(value) -> str:
    return "-" if value is None else f"{value:.1f}"


def _fmt(value) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.4f}"


@click.command()
@click.argument("index", type=click.Path(file_okay=False))
@click.option("--labels", "labels_csv", required=True, type=click.Path(dir_okay=False), help="CSV with sop_instance_uid,frame,label.")
@click.option("-k", "k", type=click.IntRange(min=1), default=5, show_default=True, help="Neighbours per query (K).")
@click.option("--exclude", type=click.Choice(EXCLUDE_CHOICES), default="same-patient", show_default=True, help="Leave-one-out exclusion besides the query itself.")
@click.option("--queries", "n_queries", type=click.IntRange(min=1), default=None, help="Evaluate a seeded sample of this many queries (default: all).")
@click.option("--json", "as_json", is_flag=True, help="Print the metrics as JSON.")
@click.option("--verify", type=click.Choice(["checksums", "sizes", "none"]), default="checksums", show_default=True, help="How much of the index to check at open (sizes: fast on huge indexes).")
@click.option("--baselines", is_flag=True, help="Also evaluate thumbnail:8/16/32 and random on the same items (the index encoder's preprocessing) and print them beside it.")
@click.option("--workers", type=click.IntRange(min=0), default=0, show_default=True, help="Decoding processes for --baselines (0 = auto).")
@click.option("--roi-boxes", "roi_boxes", type=click.Path(dir_okay=False), default=None,
              help="Region evaluation: a CSV sop_instance_uid,frame,x,y,w,h[,label]; every row is a region query, relevant = "
                   "a neighbour whose label in --labels equals the row's label (else its item's). Also reports the same items "
                   "searched by their whole slice; --baselines then means crop baselines (thumbnail:16, random, classic).")
@click.option("--snap", is_flag=True, help="With --roi-boxes: describe the structure each box was drawn around (the best-overlapping "
                                            "region proposal), as `search --snap` does, instead of the box as drawn.")
def evaluate(index, labels_csv, k, exclude, n_queries, as_json, verify, baselines, workers, roi_boxes=None, snap=False):
    """Leave-one-out MAP@K, AP@K, precision@K and kNN accuracy of INDEX against labels."""
    if snap and roi_boxes is None:
        raise click.UsageError("--snap applies to region evaluation only (with --roi-boxes)")
    engine = Engine.open(index, verify=verify)
    if roi_boxes is not None:
        _evaluate_regions(engine, labels_csv, roi_boxes, k, exclude, n_queries, as_json, baselines, snap)
        return
    result = run_evaluation(engine, labels_csv, k=k, exclude=exclude, queries=n_queries or "all")
    if baselines:
        result["baselines"] = evaluate_baselines(engine, labels_csv, k=k, exclude=exclude, queries=n_queries or "all", workers=workers)
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    click.echo(
        f"leave-one-out over {result['n_queries']} labelled items, K={k}, exclude={exclude} (+ the query itself); "
        f"{result['n_labels_unknown']} label rows not in the index, {result['n_labels_deleted']} deleted"
    )
    metrics = ["map_at_k", "ap_at_k", "precision_at_k", "knn_accuracy"]
    rows = [["all", result["n_queries"], *(_fmt(result[m]) for m in metrics)]]
    rows += [[name, c["n_queries"], *(_fmt(c[m]) for m in metrics)] for name, c in result["per_class"].items()]
    click.echo(_table(rows, ["class", "queries", f"MAP@{k}", f"AP@{k}", f"P@{k}", "kNN acc"]))
    if "baselines" in result:
        source = engine.store.encoder_info.get("source") or "index encoder"
        table = [[f"{source} (this index)", result["n_queries"], *(_fmt(result[m]) for m in metrics)]]
        table += [[name, r["n_queries"], *(_fmt(r[m]) for m in metrics)] for name, r in result["baselines"].items()]
        click.echo("beside the baselines (same items, same preprocessing, same protocol):")
        click.echo(_table(table, ["encoder", "queries", f"MAP@{k}", f"AP@{k}", f"P@{k}", "kNN acc"]))
    if "recall_vs_exact" in result:
        click.echo(f"recall@{k} of the approximate index vs exact search: {result['recall_vs_exact']:.4f}")


def _evaluate_regions(engine, labels_csv, boxes_csv, k, exclude, n_queries, as_json, baselines, snap=False) -> None:
    """``evaluate --roi-boxes``: region queries beside whole-slice queries (and crop baselines; a
    progress bar on stderr while they embed, none with --json)."""
    result = evaluate_regions(engine, labels_csv, boxes_csv, k=k, exclude=exclude, queries=n_queries or "all",
                              baselines=CROP_BASELINES if baselines else (), snap=snap, progress=not as_json)
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    q = result["queries"]
    skipped = ", ".join(f"{n} {reason}" for reason, n in q["skipped"].items())
    click.echo(f"region queries: {q['count']} of {q['rows']} rows of {boxes_csv}"
               f"{f' ({skipped} skipped)' if skipped else ''}; K={k}, exclude={exclude} (+ the query's own item); "
               f"{result['searchable']} labelled items searched; relevant = an item labelled like "
               f"{'the row' if result['relevance'] == 'row-label' else 'the query item'}")
    metrics = ["map_at_k", "ap_at_k", "precision_at_k", "knn_accuracy"]
    rows = [["region (this index)", result["n_queries"], *(_fmt(result[m]) for m in metrics)],
            ["whole slice (same items)", result["whole_slice"]["n_queries"], *(_fmt(result["whole_slice"][m]) for m in metrics)]]
    for name, r in result.get("baselines", {}).items():
        if name != "crop":
            rows.append([f"crop {name}", r["n_queries"], *(_fmt(r[m]) for m in metrics)])
    header = ["search", "queries", f"MAP@{k}", f"AP@{k}", f"P@{k}", "kNN acc"]
    click.echo(_table(rows, header))
    click.echo(f"gain of the region over the whole slice: MAP@{k} {result['gain_over_whole_slice']:+.4f}"
               f"{' (boxes snapped to the structure each was drawn around)' if result.get('snap') else ''}")
    if "baselines" in result:
        c = result["baselines"]["crop"]
        click.echo(f"crops: each region and query box resampled to {c['size']} px, windows {', '.join(c['windows'])}; "
                   f"{c['regions']} regions embedded")
    click.echo("per class (region search):")
    click.echo(_table([[name, c["n_queries"], *(_fmt(c[m]) for m in metrics)] for name, c in result["per_class"].items()],
                      ["class", "queries", f"MAP@{k}", f"AP@{k}", f"P@{k}", "kNN acc"]))
    for s in q["skipped_rows"]:
        click.echo(f"skipped line {s['line']}: {s['reason']}: {s['detail']}")
    if len(q["skipped_rows"]) < sum(q["skipped"].values()):
        click.echo(f"(and {sum(q['skipped'].values()) - len(q['skipped_rows'])} more skipped rows; --json lists the first ones)")
