"""``medcbir orthanc-config``: write an Orthanc configuration that runs the medcbir plugin."""

from __future__ import annotations

from pathlib import Path

import click

from medcbir.pacs.orthanc_config import build_config, parse_modality, write_config
from medcbir.pacs.orthanc_server import orthanc_binary


@click.command("orthanc-config")
@click.argument("out", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--index", "index", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Index folder the plugin fills and searches (created on first commit).")
@click.option("--encoder", required=True, help='Encoder checkpoint, .onnx file, "default", or an encoder spec (.json, hf:DIR, model.onnx + model.onnx.json).')
@click.option("--http-port", default=8042, show_default=True, type=int, help="Orthanc's HTTP port.")
@click.option("--dicom-port", default=4242, show_default=True, type=int, help="Orthanc's DICOM (C-STORE) port.")
@click.option("--storage", type=click.Path(file_okay=False, path_type=Path),
              help="Orthanc's storage folder [default: INDEX/../orthanc-storage].")
@click.option("--aet", default="MEDCBIR", show_default=True, help="Orthanc's DICOM AE title.")
@click.option("--user", help="NAME:PASSWORD: enable HTTP authentication with this user.")
@click.option("--remote", is_flag=True, help="Accept connections from other hosts (needs --user).")
@click.option("--batch-size", default=16, show_default=True, type=click.IntRange(min=1), help="Items per forward pass and commit.")
@click.option("--flush-seconds", default=2.0, show_default=True, type=click.FloatRange(min=0), help="Commit a partial batch after this long.")
@click.option("--workers", default=2, show_default=True, type=click.IntRange(min=1), help="Fetch+decode threads in the worker.")
@click.option("--modality", "modalities", multiple=True, metavar="[NAME=]AET@IP:PORT",
              help="A DICOM modality allowed to C-STORE into Orthanc (repeatable); no other host or AE title may.")
@click.option("--allow-any-store", is_flag=True,
              help="Accept C-STORE from any host and AE title (Orthanc's default); every stored image gets indexed.")
@click.option("--explain-encoder", default=None,
              help="A torch checkpoint (or spec) with the encoder's fingerprint for the explanations: "
                   "gradient methods (Grad-CAM, ...) then run when --encoder is its ONNX export. Without it, "
                   "an ONNX encoder explains with RELAX and occlusion only.")
@click.option("--no-regions", "regions", is_flag=True, flag_value=False, default=True,
              help='A new index stores no region descriptors ("Regions": false): faster indexing, no region search (roi).')
@click.option("--json", "as_json", is_flag=True, help="Print what was written (path, ports, bindings, allowed modalities) as JSON.")
@click.option("--plugin-dir", default="/usr/share/orthanc/plugins", show_default=True, help="Folder with libOrthancPython.so.")
def orthanc_config(out: Path, index: Path, encoder: str, http_port: int, dicom_port: int, storage: Path | None,
                   aet: str, user: str | None, remote: bool, batch_size: int, flush_seconds: float, workers: int,
                   modalities: tuple[str, ...], allow_any_store: bool, explain_encoder: str | None, plugin_dir: str, as_json: bool = False,
                   regions: bool = True) -> None:
    """Write OUT (an Orthanc JSON configuration) that indexes every received image into INDEX.

    Start Orthanc with the printed command; then GET /medcbir/status, POST /medcbir/search.
    Only the --modality entries may C-STORE into Orthanc, unless --allow-any-store.
    """
    config = build_config(index, encoder, http_port=http_port, dicom_port=dicom_port, storage=storage, aet=aet,
                          user=user, remote=remote, plugin_dir=plugin_dir, batch_size=batch_size,
                          flush_seconds=flush_seconds, workers=workers,
                          modalities=dict(parse_modality(m) for m in modalities), allow_any_store=allow_any_store,
                          explain_encoder=explain_encoder, regions=regions)
    path = write_config(out, config)
    try:
        binary = orthanc_binary()
    except Exception:  # noqa: BLE001 - the config is still useful on another host
        binary = "Orthanc"
    if as_json:
        import json

        click.echo(json.dumps({"config": str(path.resolve()), "index": config["Medcbir"]["Index"], "storage": config["StorageDirectory"],
                               "http_port": config["HttpPort"], "dicom_port": config["DicomPort"], "aet": config["DicomAet"],
                               "binds": "0.0.0.0", "remote_access_allowed": config["RemoteAccessAllowed"],
                               "authentication": config["AuthenticationEnabled"],
                               "modalities": config["DicomModalities"], "command": [binary, str(path.resolve())]}))
        return
    click.echo(f"wrote {path} (index {config['Medcbir']['Index']}, storage {config['StorageDirectory']})")
    if allow_any_store:
        click.echo("C-STORE: accepted from any host and AE title (--allow-any-store)")
    else:
        known = ", ".join(f"{m['AET']}@{m['Host']}" for m in config["DicomModalities"].values()) or "none yet (add --modality)"
        click.echo(f"C-STORE: accepted only from {known}, called AE title {config['DicomAet']}")
    remote = ("any host (user and password required)" if config["RemoteAccessAllowed"]
              else "loopback clients only, others get 401 (RemoteAccessAllowed false)")
    click.echo(f"Orthanc binds 0.0.0.0 on HTTP port {config['HttpPort']} and DICOM port {config['DicomPort']}: "
               f"HTTP serves {remote}; DICOM answers any host, C-STORE only from the modalities above. "
               "Firewall both ports (README, Security).")
    click.echo("start Orthanc with:")
    click.echo(f"  {binary} {path.resolve()}")
