"""``medcbir finetune``: parse, call :func:`medcbir.train.finetune.finetune`, print."""

from __future__ import annotations

import json

import click

from medcbir.device import Device
from medcbir.errors import ConfigError


def parse_k(value: str, name: str) -> float:
    """A k of WILDCAT: a whole count (``3``) or a fraction of the regions (``0.2``)."""
    try:
        k = float(value)
    except ValueError:
        raise ConfigError(f"{name} must be a count or a fraction, not {value!r}") from None
    return k


@click.command("finetune")
@click.argument("encoder")
@click.argument("archive", type=click.Path(path_type=str))
@click.option("--labels", required=True, type=click.Path(path_type=str), help="labels.csv (sop_instance_uid,frame,label), as `evaluate --labels` reads it.")
@click.option("--head", default="wildcat", show_default=True, type=click.Choice(["wildcat"]), help="The head to train.")
@click.option("--out", required=True, type=click.Path(path_type=str), help="Checkpoint path (rewritten after every epoch).")
@click.option("--k-plus", default="0.2", show_default=True, help="WILDCAT regions of positive evidence: a count (3) or a fraction of the regions (0.2).")
@click.option("--k-minus", default="0.2", show_default=True, help="Regions of negative evidence (count or fraction; 0 = none).")
@click.option("--alpha", default=0.7, show_default=True, type=float, help="Weight of the negative evidence.")
@click.option("--maps-per-class", default=8, show_default=True, type=int, help="M, transfer maps per class.")
@click.option("--epochs", default=10, show_default=True, type=int)
@click.option("--lr", default=0.01, show_default=True, type=float, help="Learning rate of the head (cosine schedule to zero).")
@click.option("--batch-size", default=32, show_default=True, type=int)
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--train-backbone", is_flag=True, help="Also train the backbone (its fingerprint changes: re-index with the result).")
@click.option("--backbone-lr", default=0.1, show_default=True, type=float, help="With --train-backbone: the backbone's learning rate as a multiple of --lr.")
@click.option("--holdout", default=0.25, show_default=True, type=float, help="Fraction of patients held out for the accuracy monitor (0 = train on all).")
@click.option("--resume", is_flag=True, help="Continue the run saved in --out (same options).")
@click.option("--cache", default=None, type=click.Path(path_type=str), help="HU cache file [default: next to --out].")
@click.option("--workers", default=0, show_default=True, type=int, help="Archive decoding processes (0 = auto).")
@click.option("--device", "device_name", default=None, type=click.Choice(["cpu", "cuda"]), help="Force a device [default: auto].")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def finetune(encoder, archive, labels, head, out, k_plus, k_minus, alpha, maps_per_class, epochs, lr, batch_size, seed, train_backbone,
             backbone_lr, holdout, resume, cache, workers, device_name, as_json, quiet):
    """Fine-tune a supervised head (WILDCAT) on ENCODER with ARCHIVE's labelled items; the result is still an encoder."""
    from medcbir.train.finetune import FinetuneConfig
    from medcbir.train.finetune import finetune as run

    config = FinetuneConfig(
        encoder=encoder, archive=archive, labels=labels, out=out, head=head, k_plus=parse_k(k_plus, "--k-plus"),
        k_minus=parse_k(k_minus, "--k-minus"), alpha=alpha, maps_per_class=maps_per_class, epochs=epochs, lr=lr, batch_size=batch_size,
        seed=seed, train_backbone=train_backbone, backbone_lr=backbone_lr, holdout=holdout, resume=resume, cache=cache, workers=workers,
        device=Device.auto(prefer=device_name), progress=not quiet,
    )
    summary = run(config)
    if as_json:
        click.echo(json.dumps(summary.to_dict(), indent=2, default=str))
        return
    click.echo(f"fine-tuned a {summary.head} head ({len(summary.classes)} classes: {', '.join(summary.classes)}) for {summary.epochs_run} epoch(s) "
               f"of {summary.epochs} on {summary.n_train} labelled images in {summary.seconds:.1f} s")
    held = f", held-out accuracy {summary.heldout_accuracy:.3f} ({summary.n_heldout} images)" if summary.heldout_accuracy is not None else ""
    click.echo(f"final loss {summary.final_loss:.4f}, training accuracy {summary.train_accuracy:.3f}{held}")
    same = "same backbone as" if summary.fingerprint == summary.base_fingerprint else "backbone trained from"
    click.echo(f"encoder {summary.fingerprint[:12]} ({same} {summary.base_fingerprint[:12]}) with its head → {summary.out}; log {summary.log}")
