"""``medcbir embed``: an archive's embeddings with their UIDs, for the user's own analysis (no index)."""

from __future__ import annotations

import json

import click

from medcbir.device import Device


@click.command("embed")
@click.argument("archive", nargs=-1, required=True)
@click.option("--encoder", default="default", show_default=True,
              help="Built-in name, checkpoint, ONNX export, or your own model: an encoder spec (.json), hf:DIR, or model.onnx with model.onnx.json beside it.")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="FILE.npz (sop_instance_uid, frame, vectors, fingerprint) or FILE.parquet (one row per item).")
@click.option("--batch-size", default=64, show_default=True, type=click.IntRange(min=1), help="Images per encoder forward.")
@click.option("--workers", default=0, show_default=True, type=click.IntRange(min=0), help="Decoding processes (0 = auto).")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--precision", type=click.Choice(["fp32", "bf16"]), default="fp32", show_default=True, help="Encoder precision.")
@click.option("--json", "as_json", is_flag=True, help='Print {"out", "items", "dim", "fingerprint", "skipped"}.')
def embed(archive, encoder, out, batch_size, workers, device, precision, as_json) -> None:
    """Embed ARCHIVE (a folder, or DICOM files) with an encoder and write the vectors with their
    (sop_instance_uid, frame) keys to --out: the embedding step of `index`, without the index."""
    from pathlib import Path

    from medcbir.encoders.embedding import check_output, embed_archive, save_embeddings

    check_output(out)  # a wrong suffix is refused before minutes of embedding
    source = archive[0] if len(archive) == 1 else [Path(a) for a in archive]
    dev = Device.auto(prefer=None if device == "auto" else device, precision=precision)
    found = embed_archive(source, encoder, batch_size=batch_size, workers=workers, device=dev)
    path = save_embeddings(found, out)
    dim = int(found.vectors.shape[1]) if found.vectors.ndim == 2 else 0
    if as_json:
        click.echo(json.dumps({"out": str(path), "items": len(found), "dim": dim, "fingerprint": found.fingerprint, "skipped": found.skipped}))
        return
    skipped = ", ".join(f"{reason} {n}" for reason, n in sorted(found.skipped.items())) or "none"
    click.echo(f"embedded {len(found)} item(s), {dim}-d, encoder {found.fingerprint[:12]} → {path} (skipped: {skipped})")
