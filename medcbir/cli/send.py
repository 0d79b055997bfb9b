"""``medcbir send``: C-STORE an archive to a PACS (one association, every transfer syntax present)."""

from __future__ import annotations

import json
import sys

import click

from medcbir.errors import ConfigError
from medcbir.pacs.send import Destination, read_outgoing, send_archive

#: failed files named one per line while sending (the summary counts them all)
MAX_SHOWN = 10

@click.command("send")
@click.argument("archive", nargs=-1, required=True, type=click.Path(exists=True))
@click.option("--to", "to", required=True, metavar="AET@HOST:PORT", help="The DICOM node to store into (its AE title, host and port).")
@click.option("--calling-aet", default="MEDCBIR-SCU", show_default=True,
              help="Our AE title (the peer may accept C-STORE only from AE titles it knows).")
@click.option("--timeout", default=30.0, show_default=True, type=click.FloatRange(min=1), help="Seconds for connecting and for each response.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
def send(archive, to, calling_aet, timeout, as_json, no_progress) -> None:
    """Send every DICOM file of ARCHIVE (folders are walked) to a PACS over one association.

    Each SOP class is proposed with every transfer syntax present in the files; a file whose
    syntax the peer refuses is sent decompressed to explicit VR little endian when its encoding
    is lossless, and reported as failed otherwise. Non-DICOM files are counted and left out.
    Exits 1 when any file could not be stored.
    """
    try:
        destination = Destination.parse(to)
    except ConfigError as exc:
        raise click.BadParameter(str(exc), param_hint="--to") from None
    files, _ = read_outgoing(archive)
    show = not no_progress and not as_json and len(files) > 0 and sys.stderr.isatty()
    from tqdm import tqdm

    bar = tqdm(total=len(files), unit="file", desc=f"send → {destination}", disable=not show, file=sys.stderr)

    shown = []

    def on_file(f, ok, detail) -> None:
        bar.update(1)
        if not ok and not as_json:
            shown.append(f)
            if len(shown) <= MAX_SHOWN:
                bar.write(f"failed: {f.path}: {detail}", file=sys.stderr)
            elif len(shown) == MAX_SHOWN + 1:
                bar.write("failed: ... (the summary counts them all)", file=sys.stderr)

    try:
        report = send_archive(list(archive), destination, calling_aet=calling_aet, on_file=on_file, timeout=timeout)
    finally:
        bar.close()
    if as_json:
        click.echo(json.dumps(report.to_dict()))
    else:
        files_word = "file" if report.files == 1 else "files"
        line = f"sent {report.sent} of {report.files} DICOM {files_word} to {report.destination} in {report.seconds:.1f} s"
        if report.transcoded:
            line += f" ({report.transcoded} transcoded to explicit VR little endian: the peer refused their syntax)"
        click.echo(line)
        if report.failed:
            reasons = "; ".join(f"{reason}: {n}" for reason, n in sorted(report.reasons().items()))
            click.echo(f"failed {len(report.failed)} ({reasons})")
        if report.not_dicom:
            click.echo(f"left out {report.not_dicom} non-DICOM {'file' if report.not_dicom == 1 else 'files'}")
    if report.failed:
        click.get_current_context().exit(1)
