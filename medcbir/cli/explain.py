"""``medcbir explain`` and ``medcbir explain-eval``: parse, call ``medcbir.explain``, print."""

from __future__ import annotations

import json
import math
from pathlib import Path

import click

from medcbir.cli.search import query_name
from medcbir.encoders.regions import parse_box
from medcbir.engine import Engine
from medcbir.errors import ConfigError

EXCLUDE_CHOICES = ("none", "same-patient", "same-study", "same-series")


def _method_names() -> list[str]:
    # the names only; importing medcbir.explain (torch, captum) waits until a command runs
    return ["relax", "gradcam", "guided_gradcam", "integrated_gradients", "smoothgrad", "occlusion", "clustered_cam", "ablation_cam", "gradient", "guided_backprop", "smoothgrad_ig", "wildcat"]


def _clean(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


@click.command()
@click.argument("index", type=click.Path(file_okay=False))
@click.argument("query")
@click.option("-k", "k", type=click.IntRange(min=1), default=5, show_default=True, help="Neighbours to retrieve and explain.")
@click.option("--method", type=click.Choice(_method_names()), default="relax", show_default=True)
@click.option("--masks", "n_masks", type=click.IntRange(min=1), default=None,
              help="RELAX masks (the maximum with --adaptive; per neighbour with --roi)  [default: the measured best, see README; 500 with --roi]")
@click.option("--adaptive/--no-adaptive", default=None, help="RELAX: stop drawing masks once the map has converged  [default: the measured best]")
@click.option("--target-r", type=click.FloatRange(0.5, 0.999), default=None,
              help="--adaptive: stop when the predicted correlation with the infinite-mask map reaches this  [default: the measured best]")
@click.option("--sampling", type=click.Choice(["iid", "antithetic", "sobol", "sobol-antithetic"]), default=None,
              help="RELAX mask sampling  [default: the measured best]")
@click.option("--control-variates/--no-control-variates", default=None,
              help="RELAX: cross-fitted cell control variates (same map, less noise)  [default: the measured best]")
@click.option("--backend", type=click.Choice(["auto", "torch", "onnx", "onnx-int8"]), default=None,
              help="RELAX masked forwards: auto (torch bf16 on a CPU with native bf16, else ONNX Runtime fp32), torch, "
                   "ONNX Runtime (fp32), or ONNX Runtime int8  [default: the measured best]")
@click.option("--precision", type=click.Choice(["fp32", "bf16"]), default=None,
              help="RELAX forward precision: fp32 runs ONNX Runtime unless --backend torch; bf16 runs torch autocast  [default: the backend's best]")
@click.option("--batch-size", type=click.IntRange(min=1), default=None, help="RELAX masked images per forward  [default: the measured best]")
@click.option("--seed", default=0, show_default=True, help="RELAX / SmoothGrad seed.")
@click.option("--pairwise", is_flag=True, help="Also explain the query w.r.t. each neighbour's embedding.")
@click.option("--exclude", type=click.Choice(EXCLUDE_CHOICES), default="none", show_default=True, help="Drop neighbours of the query's patient, study or series.")
@click.option("--encoder", default=None, help="Encoder with the index's fingerprint (a checkpoint for gradient methods on an ONNX index).")
@click.option("--report", "report", type=click.Path(dir_okay=False, path_type=Path), default=None, help="Write the HTML report (and a PNG next to it).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.option("--redact", is_flag=True, help="Name the query by its SOP UID, never by its file path (which may name the patient).")
@click.option("--heatmap-scale", type=click.Choice(["per-image", "shared"]), default="per-image", show_default=True,
              help="Report colours: each heatmap on its own robust range, or one scale per row.")
@click.option("--include-self", is_flag=True, help="Keep the query among its neighbours when it is itself in the index.")
@click.option("--wildcat-class", default=None, help="--method wildcat: map this class (name or index) [default: the class predicted for the query].")
@click.option("--dicom-out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Also write each explained image's heatmap as a DICOM Secondary Capture overlay and a Parametric Map into this folder "
                   "(with --roi: each neighbour's region-match map, its matched box outlined in green).")
@click.option("--roi", default=None, metavar="X,Y,W,H",
              help="Explain a region match: the query box in the query image's stored pixel grid (as search --roi); each neighbour's map "
                   "shows which of its pixels make its matched region match (--method relax or occlusion).")
@click.option("--roi-mask", type=click.Path(dir_okay=False, exists=True), default=None,
              help="Region query by a mask (PNG or .npy on the query image's grid) instead of --roi.")
@click.option("--snap", is_flag=True, help="With --roi: describe the structure the box was drawn around (as search --snap).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="With --roi: write maps.npy, query.png, neighbour-<rank>.png (map and matched box), explanation.json and report.html (one page of them, with the status line) here.")
def explain(index, query, k, method, n_masks, adaptive, target_r, sampling, control_variates, backend, precision, batch_size, seed, pairwise, exclude,
            encoder, report, as_json, redact, heatmap_scale, include_self, wildcat_class=None, dicom_out=None, roi=None, roi_mask=None,
            snap=False, out_dir=None):
    """Search INDEX for QUERY (DICOM file or SOP UID) and explain it and its K neighbours in one pass.

    With --roi (or --roi-mask), explain a region match instead: search by region and map, over each
    neighbour, which pixels make its matched region match the query's region.
    """
    if roi is not None or roi_mask is not None:
        _check_region_options(method, roi, roi_mask)
        engine = Engine.open(index, encoder=encoder)
        _explain_region(engine, query, k, method, n_masks, seed, exclude, roi, roi_mask, snap, out_dir, as_json, redact, dicom_out)
        return
    if snap or out_dir is not None:
        raise ConfigError(f"{'--snap' if snap else '--out'} applies to a region explanation: add --roi X,Y,W,H")
    from medcbir.explain.runner import explain_search

    engine = Engine.open(index, encoder=encoder)
    options: dict = {}
    if method == "relax":
        from medcbir.explain.relax import relax_options

        given = {"n_masks": n_masks, "adaptive": adaptive, "target_r": target_r, "sampling": sampling,
                 "control_variates": control_variates, "backend": backend}
        options = relax_options(seed=seed, precision=precision, batch_size=batch_size, **given)
    elif method in ("smoothgrad", "smoothgrad_ig"):
        options = {"seed": seed}
    elif method == "wildcat" and wildcat_class is not None:
        options = {"classes": wildcat_class}
    result = explain_search(engine, query, k=k, method=method, pairwise=pairwise, exclude=exclude, include_self=include_self, **options)
    if redact:
        result.query_label = query_name(query, True)
    payload = result.to_dict()
    from medcbir.explain.status import CAVEAT, method_status

    payload.update(status=method_status(index, method), caveat=CAVEAT)
    if dicom_out is not None:
        from medcbir.explain.dicom_maps import write_explanation

        written = write_explanation(engine, query, result, dicom_out)
        payload["dicom"] = [str(p) for p in written]
        click.echo(f"wrote {len(written)} DICOM object(s) (overlays and parametric maps) to {dicom_out}", err=True)
    if report is not None:
        from medcbir.explain.report import render_report

        from medcbir.explain.native import native_panel

        source = query if Path(str(query)).is_file() else None
        html_path, png_path = render_report(report, native_panel(result, engine, query_source=source), scale=heatmap_scale)
        payload["report"] = {"html": str(html_path), "png": str(png_path)}
    if as_json:
        click.echo(json.dumps(_clean(payload), indent=2))
        return
    used = f", {result.n_masks_used} masks" if result.n_masks_used else ""
    click.echo(f"query: {result.query_label}  method={method}{used}  explained {len(result.heatmaps) + (len(result.pairwise) if result.pairwise is not None else 0)} images in {result.seconds:.2f} s")
    for nb in result.neighbours:
        click.echo(f"  #{nb.rank}  score={nb.score:.4f}  sop={nb.meta.get('sop_instance_uid', '')}  frame={nb.meta.get('frame', 0)}")
    click.echo(f"{payload['status']['text']}. {CAVEAT}")
    if report is not None:
        click.echo(f"report: {payload['report']['html']}  (panel {payload['report']['png']})")


# options of `explain` that mean nothing for a region match (the region descriptor is not a network)
NOT_FOR_REGIONS = ("adaptive", "target_r", "sampling", "control_variates", "backend", "precision", "batch_size", "pairwise", "report",
                   "heatmap_scale", "include_self", "wildcat_class")


def _check_region_options(method: str, roi, roi_mask) -> None:
    from click.core import ParameterSource

    from medcbir.explain.regions import check_region_method

    if roi is not None and roi_mask is not None:
        raise ConfigError("give one of --roi and --roi-mask")
    check_region_method(method)
    ctx = click.get_current_context()
    given = [name for name in NOT_FOR_REGIONS if ctx.get_parameter_source(name) == ParameterSource.COMMANDLINE]
    if given:
        flag = "--" + given[0].replace("_", "-")
        raise ConfigError(f"{flag} does not apply to a region explanation (--roi): it takes -k, --method relax|occlusion, --masks, --seed, "
                          "--exclude, --snap, --out, --dicom-out, --json, --redact")


def _explain_region(engine, query, k, method, n_masks, seed, exclude, roi, roi_mask, snap, out_dir, as_json, redact, dicom_out=None) -> None:
    """`explain --roi`: region search, a map per neighbour, one line per neighbour (and files with
    --out; with --dicom-out each neighbour's map as a Parametric Map and an overlay Secondary Capture)."""
    from medcbir.explain.regions import explain_region_match

    box = parse_box(roi) if roi is not None else None
    result = explain_region_match(engine, query, box, k, roi_mask=roi_mask, exclude=exclude, method=method, n_masks=n_masks, seed=seed,
                                  snap=snap)
    if redact:
        result.query_label = query_name(query, True)
    payload = result.to_dict()
    from medcbir.explain.status import CAVEAT, region_method_status

    payload.update(status=region_method_status(engine.store.index_dir, method), caveat=CAVEAT)
    if out_dir is not None:
        from medcbir.explain.region_files import write_region_explanation

        written = write_region_explanation(result, out_dir, payload["status"]["text"], CAVEAT)
        payload["files"] = [str(p) for p in written]
    if dicom_out is not None:
        from medcbir.explain.dicom_maps import write_region_explanation_dicom

        payload["dicom"] = [str(p) for p in write_region_explanation_dicom(engine, result, dicom_out, payload["status"]["text"])]
        click.echo(f"wrote {len(payload['dicom'])} DICOM object(s) (overlays and parametric maps) to {dicom_out}", err=True)
    if as_json:
        click.echo(json.dumps(_clean(payload), indent=2))
        return
    masks = f", {result.n_masks} masks" if result.n_masks else ""
    each = result.seconds / max(1, len(result.neighbours))
    click.echo(f"query: {result.query_label}  region {','.join(map(str, result.query_box))}  method={method}{masks}  "
               f"explained {len(result.neighbours)} region matches in {result.seconds:.2f} s ({each:.2f} s each)")
    for i, nb in enumerate(result.neighbours):
        click.echo(f"  #{nb.rank}  score={nb.score:.4f}  region={','.join(map(str, nb.region))}  map in region={result.share_in_region(i):.0%}  "
                   f"sop={nb.meta.get('sop_instance_uid', '')}  frame={nb.meta.get('frame', 0)}")
    click.echo(f"{payload['status']['text']}. {CAVEAT}")
    if out_dir is not None:
        click.echo(f"wrote {len(payload['files'])} files to {out_dir} (maps.npy, query.png, neighbour-<rank>.png, explanation.json)")


@click.command("explain-eval")
@click.argument("index", type=click.Path(file_okay=False))
@click.option("--masks-file", required=True, type=click.Path(dir_okay=False), help="masks.h5 with /<sop_instance_uid>/<organ> datasets.")
@click.option("--organ", default="liver", show_default=True, help="Organ mask to score against.")
@click.option("--methods", default=None, help="Comma-separated method names  [default: relax,gradcam; relax,occlusion with --roi-boxes]")
@click.option("--labels", "labels", type=click.Path(dir_okay=False), default=None, help="labels.csv: spread the images over its labels.")
@click.option("--n", "n", type=click.IntRange(min=1), default=8, show_default=True, help="Images to score.")
@click.option("--masks", "n_masks", type=click.IntRange(min=1), default=1000, show_default=True, help="RELAX masks.")
@click.option("--angles", default="0,90,180,270", show_default=True, help="Rotation angles of the Dice sweep ('' to skip).")
@click.option("--seed", default=0, show_default=True)
@click.option("--encoder", default=None, help="Encoder with the index's fingerprint (a checkpoint for gradient methods on an ONNX index).")
@click.option("--targets", type=click.Choice(["query", "own"]), default="query", show_default=True,
              help="query: each neighbour's map explains its similarity to the query; own: each image w.r.t. its own embedding.")
@click.option("--pairwise", is_flag=True, help="--targets query: also explain each query w.r.t. its neighbour's embedding.")
@click.option("--exclude", type=click.Choice(EXCLUDE_CHOICES), default="same-patient", show_default=True, help="--targets query: which neighbours may be paired with a query.")
@click.option("--sanity", is_flag=True, help="Also run the randomisation sanity checks (Adebayo et al. 2018).")
@click.option("--sanity-steps", type=click.IntRange(min=0), default=30, show_default=True, help="--sanity: training steps of the noise-trained encoder (0 skips data randomisation).")
@click.option("--json", "as_json", is_flag=True, help="Print the scores as JSON (instead of the table).")
@click.option("--json-out", "json_out", type=click.Path(dir_okay=False, path_type=Path), default=None, help="Also write the scores as JSON to this file.")
@click.option("--wildcat-class", default=None, help="wildcat: map this class (name or index) [default: the class predicted for the target].")
@click.option("--roi-boxes", type=click.Path(dir_okay=False), default=None,
              help="Score region-match explanations instead: a CSV (sop_instance_uid,frame,x,y,w,h[,label], as phantom v3's lesion-boxes.csv) "
                   "whose rows are region queries; maps are scored on the lesions (masks.h5 lesion-id) their neighbours' matched regions hold.")
@click.option("-k", "k", type=click.IntRange(min=1), default=5, show_default=True, help="--roi-boxes: neighbours explained per box query.")
def explain_eval(index, masks_file, organ, methods, labels, n, n_masks, angles, seed, encoder, targets, pairwise, exclude, sanity, sanity_steps, json_out,
                 wildcat_class, as_json=False, roi_boxes=None, k=5):
    """Score explanation METHODS on INDEX's images against their ORGAN masks, beside trivial maps (table + JSON).

    Each method is reported with its margin over the best trivial map (noise, centre, intensity,
    edges); metrics that cannot rank maps for the chosen targets are shown as n/a with the reason.
    The result is also kept in INDEX (explain-eval.json): reports and the viewer state each
    method's measured status from it. With --roi-boxes, region-match explanations (relax,
    occlusion) are scored on the lesions held by each neighbour's matched region, beside trivial
    maps over the same neighbourhood.
    """
    from medcbir.explain.evaluation.run import evaluate_methods
    from medcbir.explain.evaluation.tables import format_table

    if roi_boxes is not None:
        _explain_eval_regions(index, roi_boxes, masks_file, methods or "relax,occlusion", n, k, exclude, n_masks, seed, encoder, json_out, as_json)
        return
    names = [m.strip() for m in (methods or "relax,gradcam").split(",") if m.strip()]
    if not names:
        raise ConfigError("--methods is empty")
    try:
        angle_list = [float(a) for a in angles.split(",") if a.strip()]
    except ValueError:
        raise ConfigError(f"--angles must be comma-separated numbers, not {angles!r}") from None
    result = evaluate_methods(
        index, masks_file, organ=organ, methods=names, n=n, labels=labels, encoder=encoder, angles=angle_list, n_masks=n_masks, seed=seed,
        targets=targets, pairwise=pairwise, exclude=exclude, sanity=sanity, sanity_steps=sanity_steps,
        options={"wildcat": {"classes": wildcat_class}} if wildcat_class is not None else None,
        progress=lambda m: click.echo(f"scoring {m} ...", err=True),
    )
    from medcbir.explain.status import save_evaluation

    save_evaluation(index, _clean(result))
    _print_scores(result, format_table, json_out, as_json)


def _print_scores(result: dict, table, json_out, as_json: bool) -> None:
    """explain-eval's output: the JSON file (--json-out), then the JSON (--json) or the table."""
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(_clean(result), indent=2) + "\n")
    if as_json:
        click.echo(json.dumps(_clean(result), indent=2))
        return
    click.echo(table(result))
    if json_out is not None:
        click.echo(f"scores: {json_out}")


# options of `explain-eval` that score the encoder's maps only
NOT_FOR_REGION_EVAL = ("organ", "labels", "angles", "targets", "pairwise", "sanity", "sanity_steps", "wildcat_class")


def _explain_eval_regions(index, roi_boxes, masks_file, methods, n, k, exclude, n_masks, seed, encoder, json_out, as_json=False) -> None:
    """`explain-eval --roi-boxes`: region-match maps scored on lesion masks beside trivial region maps."""
    from click.core import ParameterSource

    from medcbir.explain.region_evaluation import evaluate_region_explanations, format_region_table

    ctx = click.get_current_context()
    given = [name for name in NOT_FOR_REGION_EVAL if ctx.get_parameter_source(name) == ParameterSource.COMMANDLINE]
    if given:
        raise ConfigError(f"--{given[0].replace('_', '-')} does not apply to --roi-boxes (region-match maps are scored on lesion masks)")
    names = [m.strip() for m in methods.split(",") if m.strip()]
    if not names:
        raise ConfigError("--methods is empty")
    masks_given = ctx.get_parameter_source("n_masks") == ParameterSource.COMMANDLINE
    with Engine.open(index, encoder=encoder) as engine:
        result = evaluate_region_explanations(
            engine, roi_boxes, masks_file, names, n=n, k=k, exclude=exclude, n_masks=n_masks if masks_given else None, seed=seed,
            progress=lambda m: click.echo(m, err=True),
        )
    from medcbir.explain.status import save_evaluation

    save_evaluation(index, _clean(result), regions=True)
    _print_scores(result, format_region_table, json_out, as_json)
