"""``medcbir phantom OUT``: write a synthetic CT archive with ground-truth labels and masks."""

from __future__ import annotations

from pathlib import Path

import click

from medcbir.errors import ConfigError
from medcbir.imaging.phantom import make_archive


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
@click.option("--simple", is_flag=True,
              help="The original phantom (same position, field of view and contrast for everyone; no lesions).")
@click.option("--v3", "v3", is_flag=True,
              help="Phantom v3: lesions of four kinds in liver, spleen and kidneys, with "
                   "labels-lesion-kind.csv and lesion-boxes.csv.")
@click.option("--modality", type=click.Choice(["CT", "MR"]), default="CT", show_default=True,
              help="MR: an MR-like series (no HU, arbitrary intensity scale and gamma per patient).")
@click.option("--override", "overrides", multiple=True, metavar="NAME=JSON",
              help="Force one nuisance for every patient, e.g. --override pixel_spacing=0.9 "
                   "--override 'offset_mm=[20,-10]' --override noise=25 (names: docs/contracts.md).")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.option("--force", is_flag=True, help="Replace the phantom archive already in OUT (its files are removed first; other content is refused).")
def phantom(out: Path, patients: int, slices: int, seed: int, size: int, no_compress: bool, workers: int,
            studies_per_patient: int, simple: bool, v3: bool, modality: str, overrides: tuple[str, ...], force: bool = False,
            as_json: bool = False) -> None:
    """Write a synthetic CT archive (real DICOM) with labels.csv, masks.h5 and phantom.json into OUT (new or empty)."""
    _clear(out, force)

    summary = make_archive(out, patients=patients, slices=slices, seed=seed, size=size, compress=not no_compress,
                           workers=workers, studies_per_patient=studies_per_patient, simple=simple,
                           overrides=_parse_overrides(overrides), modality=modality, version=3 if v3 else 2)
    if as_json:
        import json

        click.echo(json.dumps(summary.to_dict(), default=str))
        return
    click.echo(f"phantom archive: {summary.out}")
    exams = f" × {summary.studies_per_patient} studies" if summary.studies_per_patient > 1 else ""
    click.echo(f"  {summary.files} slices ({summary.patients} patients{exams} × {summary.slices}, {summary.size} px) "
               f"in {summary.elapsed:.2f} s = {summary.slices_per_second:.0f} slices/s")
    click.echo("  labels: " + ", ".join(f"{label} {count}" for label, count in summary.labels.items()))
    click.echo("  transfer syntaxes: " + ", ".join(f"{name} {count}" for name, count in summary.transfer_syntaxes.items()))
    if summary.lesion_kinds:
        click.echo("  lesion cross-sections: " + ", ".join(f"{kind} {n}" for kind, n in summary.lesion_kinds.items()))
    truth = [summary.labels_csv, summary.labels_liver_csv, summary.labels_lesion_csv, summary.labels_lesion_kind_csv,
             summary.lesion_boxes_csv, summary.slices_csv, summary.masks_h5, summary.phantom_json]
    click.echo("  ground truth: " + ", ".join(str(path) for path in truth if path is not None))


def _clear(out: Path, force: bool) -> None:
    """Refuse a non-empty OUT without ``force``: re-running into an indexed archive replaces its
    files (``make_archive`` then replaces only a previous phantom archive, refusing other content)."""
    if out.is_dir() and any(out.iterdir()) and not force:
        raise ConfigError(f"{out} is not empty: choose an empty folder, or add --force to replace the phantom archive in it")


def _parse_overrides(pairs: tuple[str, ...]) -> dict:
    """``NAME=VALUE`` pairs, the value read as JSON when it parses (numbers, lists, true/false),
    else as a string (``phase=arterial``)."""
    import json

    out = {}
    for pair in pairs:
        name, sep, text = pair.partition("=")
        if not sep or not name:
            raise ConfigError(f"--override wants NAME=VALUE (got {pair!r})")
        try:
            out[name.strip()] = json.loads(text)
        except ValueError:
            out[name.strip()] = text
    return out
