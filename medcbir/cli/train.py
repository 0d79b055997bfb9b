"""``medcbir train`` and ``medcbir export-onnx``: parse, call :mod:`medcbir.train`, print.

``medcbir train ARCHIVE --out M`` adapts a starting encoder (``--init``, default ``default``) to the
archive and keeps only what the label-free score shows is better (:mod:`medcbir.train.adapt`);
``--method`` trains a network from scratch with a self-supervised recipe (:mod:`medcbir.train.trainer`).
"""

from __future__ import annotations

import json

import click

from medcbir.device import Device
from medcbir.imaging import Preprocessing
from medcbir.train.recipe import RECIPE


def describe_prep(record: dict) -> str:
    return Preprocessing.from_dict(record).describe()


def split_windows(text: str) -> tuple[str, ...]:
    """Channels of a --windows value: ';'-separated policies, or a legacy comma list of windows."""
    parts = text.split(";") if ("=" in text or ";" in text) else text.split(",")
    return tuple(p.strip() for p in parts if p.strip())


def _method_options(values: tuple[str, ...]) -> dict:
    options = {}
    for value in values:
        if "=" not in value:
            raise click.BadParameter(f"{value!r} is not KEY=VALUE", param_hint="--method-option")
        key, raw = value.split("=", 1)
        try:
            options[key.strip().replace("-", "_")] = json.loads(raw)
        except json.JSONDecodeError:
            options[key.strip().replace("-", "_")] = raw
    return options


@click.command("train")
@click.argument("archive", type=click.Path(path_type=str))
@click.option("--method", default=None, type=click.Choice(["simsiam", "simclr", "moco", "rotation", "seqsort"]), help=f"Train a network from scratch with this self-supervised method (the recipe: {RECIPE['method']}; seqsort: order k consecutive slices, --method-option length=3). Without it: adapt --init to the archive.")
@click.option("--init", "init", default=None, metavar="ENCODER",
              help="The starting encoder (a built-in name, a checkpoint, an encoder spec .json, hf:DIR). Without --method: adapted, frozen, "
                   "and kept when no stage beats it [default: default]. With --method: its weights are the start and all are trained; "
                   "its preprocessing replaces --size/--windows/--crop/--fov-mm, and --backbone/--pooling are unused [default: random weights].")
@click.option("--stages", default="whiten,head", show_default=True, help="Adaptation: the stages to try, cheapest first (whiten: centring + PCA-whitening with shrinkage; head: a linear head learned from label-free positives; finetune: the recipe from the start's weights, network starts only, slow).")
@click.option("--finetune-epochs", default=3, show_default=True, type=int, help="Adaptation: epochs of the finetune stage (per fold, then once on the whole archive).")
@click.option("--folds", default=2, show_default=True, type=int, help="Adaptation: patient-disjoint parts; each is held out once to judge the stages.")
@click.option("--json", "as_json", is_flag=True, help="Adaptation: print the summary as JSON.")
@click.option("--augment", default=RECIPE["augment"], show_default=True, type=click.Choice(["standard", "archive"]), help="standard: crop/flip/jitter/blur; archive: FOV, positioning, window jitter, gamma, noise, blur/sharpen, erasing.")
@click.option("--neighbour-mm", default=0.0, show_default=True, type=float, help="> 0: positives are also other slices of the series within this many mm.")
@click.option("--neighbour-p", default=0.5, show_default=True, type=float, help="Probability of a neighbour-slice positive (with --neighbour-mm).")
@click.option("--position-delta", default=RECIPE["position_delta"], show_default=True, type=float, help="> 0: positives are also slices of other series (other patients) in the same plane at the same relative position, within this fraction of the series' extent (positional contrastive learning); 0 = off.")
@click.option("--position-p", default=RECIPE["position_p"], show_default=True, type=float, help="Probability of a positional positive (with --position-delta).")
@click.option("--epochs", default=30, show_default=True, type=int, help="Total epochs (the cosine schedule spans them; 30 at 128 px beat thumbnail:16 and random on real MR, 10 at 224 px did not: benchmarks/real_mr.py).")
@click.option("--batch-size", default=64, show_default=True, type=int, help="Images per step.")
@click.option("--size", default=128, show_default=True, type=int, help="Image side in pixels (also the encoder's input size).")
@click.option("--out", required=True, type=click.Path(path_type=str), help="Checkpoint path (rewritten after every epoch).")
@click.option("--views", default=None, help="Per-view Hounsfield windows, e.g. hu-narrow,hu-wide (the reference paper's views).")
@click.option(
    "--windows",
    default="CT=ct-liver-wide,*=robust",
    show_default=True,
    help="The encoder's window policy per input channel: MODALITY=WINDOW,...,*=WINDOW; channels separated by ';' "
    "(a bare list like ct-liver-wide,ct-lung is one CT-only window per channel).",
)
@click.option("--crop", default="body", show_default=True, type=click.Choice(["body", "none"]), help="Crop to the body before resizing.")
@click.option("--fov-mm", default=224.0, show_default=True, type=float, help="With --crop body: the body region spans this many mm (0 = fit the box).")
@click.option("--pooling", default="gem", show_default=True, type=click.Choice(["avg", "gem", "multi"]), help="Embedding pooling (multi = last two stages).")
@click.option("--backbone", default="resnet18", show_default=True, type=click.Choice(["resnet18", "resnet34", "resnet50"]))
@click.option("--labels", default=None, type=click.Path(path_type=str), help="labels.csv: MAP@5 on held-out patients beside the label-free score (after each epoch with --method); never used to decide.")
@click.option("--holdout", default=0.25, show_default=True, type=float, help="Fraction of patients held out for the monitor.")
@click.option("--resume", is_flag=True, help="Continue the run saved in --out (same options).")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--workers", default=0, show_default=True, type=int, help="Archive decoding processes (0 = auto).")
@click.option("--lr", default=None, type=float, help="Base learning rate [default: 0.05·batch/256].")
@click.option("--rotation", default=0.0, show_default=True, type=float, help="Max augmentation rotation in degrees (0 = off).")
@click.option("--crop-scale", default=0.2, show_default=True, type=float, help="Smallest random-resized-crop area (fraction of the image).")
@click.option("--method-option", "method_option", multiple=True, metavar="KEY=VALUE", help="Method option, e.g. proj_dim=512, queue_size=1024.")
@click.option("--cache", default=None, type=click.Path(path_type=str), help="HU cache file [default: next to --out].")
@click.option("--device", "device_name", default=None, type=click.Choice(["cpu", "cuda"]), help="Force a device [default: auto].")
@click.option("--precision", default="fp32", show_default=True, type=click.Choice(["fp32", "bf16", "fp16"]), help="Training precision (bf16 autocast also on CPU; fp16 needs CUDA).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def train(archive, method, init, stages, finetune_epochs, folds, as_json, augment, neighbour_mm, neighbour_p, position_delta, position_p, epochs, batch_size, size, out, views, windows, crop, fov_mm, pooling, backbone, labels, holdout, resume, seed, workers, lr, rotation, crop_scale, method_option, cache, device_name, precision, quiet):
    """Adapt an encoder to ARCHIVE (a DICOM folder), or train one from scratch with --method."""
    if method is None:
        _adapt(archive, out, init or "default", stages, finetune_epochs, folds, labels, seed, workers, Device.auto(prefer=device_name, precision=precision), not quiet, as_json)
        return
    from medcbir.train.trainer import TrainConfig
    from medcbir.train.trainer import train as run

    config = TrainConfig(
        archive=archive,
        out=out,
        method=method,
        epochs=epochs,
        batch_size=batch_size,
        size=size,
        views=views,
        windows=split_windows(windows),
        crop=crop,
        fov_mm=fov_mm or None,
        pooling=pooling,
        augment=augment,
        neighbour_mm=neighbour_mm,
        neighbour_p=neighbour_p,
        position_delta=position_delta,
        position_p=position_p,
        backbone=backbone,
        labels=labels,
        holdout=holdout,
        resume=resume,
        seed=seed,
        workers=workers,
        lr=lr,
        rotation=rotation,
        crop_scale=crop_scale,
        method_options=_method_options(method_option),
        cache=cache,
        device=Device.auto(prefer=device_name, precision=precision),
        progress=not quiet and not as_json,
        init=init,
    )
    summary = run(config)
    if as_json:
        click.echo(json.dumps(summary.to_dict(), indent=2, default=str))
        return
    last = summary.history[-1] if summary.history else {}
    start = summary.history[0] if summary.history and summary.history[0]["epoch"] == 0 else None
    click.echo(f"trained {summary.method} ({'from ' + init if init else backbone}) for {summary.epochs_run} epoch(s) of {summary.epochs}: {summary.images} images in {summary.seconds:.1f} s ({summary.images_per_s:.1f} images/s)")
    monitor = ""
    if "map_at_k" in last:
        monitor = f"; held-out MAP@{last['k']} {last['map_at_k']:.3f}, kNN accuracy {last['knn_accuracy']:.3f}"
        if start is not None:
            monitor += f" (random start: MAP@{start['k']} {start['map_at_k']:.3f})"
    click.echo(f"final loss {summary.final_loss:.4f}{monitor}")
    prep = summary.preprocessing
    click.echo(f"encoder {summary.fingerprint[:12]} ({describe_prep(prep)}) → {summary.out}")
    click.echo(f"log {summary.log}" + (f"; plot {summary.plot}" if summary.plot else ""))


def _adapt(archive, out, init, stages, finetune_epochs, folds, labels, seed, workers, device, progress, as_json) -> None:
    from medcbir.train.adapt import AdaptConfig, adapt

    names = tuple(s.strip() for s in stages.split(",") if s.strip())
    summary = adapt(AdaptConfig(archive=archive, out=out, init=init, stages=names, folds=folds, labels=labels, seed=seed,
                                workers=workers, device=device, progress=progress and not as_json, finetune_epochs=finetune_epochs))
    if as_json:
        click.echo(json.dumps(summary.to_dict(), indent=2, sort_keys=True))
        return
    click.echo(summary.summary_line())
    monitor = any(s.labelled_map is not None for s in summary.stages)
    click.echo(f"{'stage':12s} {'dim':>5s} agreement@{summary.k}  gain    lower" + (f"   MAP@{summary.k} (labels)" if monitor else ""))
    for stage in summary.stages:
        if stage.agreement is None:
            click.echo(f"{stage.name:12s} {stage.dim:5d} not fitted: {stage.note}")
            continue
        gain = f"{stage.gain:+.3f}  {stage.lower_bound:+.3f}" if stage.gain is not None else "     -       -"
        line = f"{stage.name:12s} {stage.dim:5d} {stage.agreement:12.3f}  {gain}"
        if monitor:
            line += f"   {stage.labelled_map:.3f}" if stage.labelled_map is not None else "   -"
        click.echo(line + (f"  ({stage.note})" if stage.note else ""))
    click.echo(
        f"{summary.images} images of {summary.patients} patients, {summary.folds} patient-disjoint folds, {summary.seconds:.1f} s; "
        f"encoder {summary.fingerprint[:12]} ({describe_prep(summary.preprocessing)}, {summary.dim}-d) → {summary.out}"
    )


@click.command("export-onnx")
@click.argument("checkpoint", type=click.Path(path_type=str))
@click.argument("out", type=click.Path(path_type=str))
@click.option("--archive", default=None, type=click.Path(path_type=str), help="Real images for the parity check [default: random inputs].")
@click.option("--parity-images", default=8, show_default=True, type=int)
@click.option("--tolerance", default=1e-4, show_default=True, type=float, help="Max |Δ| torch vs ONNX Runtime.")
@click.option("--json", "as_json", is_flag=True, help="Print the export report as JSON.")
def export_onnx(checkpoint, out, archive, parity_images, tolerance, as_json=False):
    """Export CHECKPOINT (or "default") to OUT (.onnx) with a parity check."""
    from medcbir.train.onnx_export import export_onnx as run

    report = run(checkpoint, out, archive=archive, n_parity=parity_images, tolerance=tolerance)
    if as_json:
        click.echo(json.dumps(report.to_dict(), default=str))
        return
    prep = report.preprocessing
    click.echo(f"exported encoder {report.fingerprint[:12]} ({describe_prep(prep)}, {report.dim}-d) → {report.out} ({report.size_bytes / 1e6:.1f} MB)")
    click.echo(f"parity: max |Δ| torch vs onnxruntime = {report.max_abs_diff:.2e} on {report.parity_images} {report.parity_source} images (tolerance {report.tolerance:.0e})")
