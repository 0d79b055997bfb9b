"""``medcbir phantom OUT``: write a synthetic CT archive with ground-truth labels and masks."""

from __future__ import annotations

from pathlib import Path

import click


@click.command("phantom")
@click.argument("out", type=click.Path(file_okay=False, path_type=Path))
@click.option("--patients", type=int, default=4, show_default=True, help="Patients (one study/series each).")
@click.option("--slices", type=int, default=32, show_default=True, help="Axial slices per series (≥ 10 covers every level).")
@click.option("--seed", type=int, default=0, show_default=True, help="Same seed, same bytes.")
@click.option("--size", type=int, default=256, show_default=True, help="Rows = columns of every slice.")
@click.option("--no-compress", is_flag=True, help="Write every series uncompressed (no RLE / JPEG 2000).")
@click.option("--workers", type=int, default=0, show_default=True,
              help="Processes writing patients (0 = one per core for ≥ 64 slices); the bytes do not depend on it.")
@click.option("--studies-per-patient", type=int, default=1, show_default=True,
              help="Exams per patient (later ones: new UIDs, later dates, small positioning/FOV/contrast changes).")
def phantom(out: Path, patients: int, slices: int, seed: int, size: int, no_compress: bool, workers: int,
            studies_per_patient: int) -> None:
    """Write a synthetic CT archive (real DICOM) with labels.csv, masks.h5 and phantom.json."""
    from medcbir.imaging.phantom import make_archive

    summary = make_archive(out, patients=patients, slices=slices, seed=seed, size=size, compress=not no_compress,
                           workers=workers, studies_per_patient=studies_per_patient)
    click.echo(f"phantom archive: {summary.out}")
    exams = f" × {summary.studies_per_patient} studies" if summary.studies_per_patient > 1 else ""
    click.echo(f"  {summary.files} slices ({summary.patients} patients{exams} × {summary.slices}, {summary.size} px) "
               f"in {summary.elapsed:.2f} s = {summary.slices_per_second:.0f} slices/s")
    click.echo("  labels: " + ", ".join(f"{label} {count}" for label, count in summary.labels.items()))
    click.echo("  transfer syntaxes: " + ", ".join(f"{name} {count}" for name, count in summary.transfer_syntaxes.items()))
    click.echo(f"  ground truth: {summary.labels_csv}, {summary.slices_csv}, {summary.masks_h5}, {summary.phantom_json}")
