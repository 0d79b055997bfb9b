"""``medcbir send`` against a real Orthanc: one association, every transfer syntax of the phantom
(RLE, JPEG 2000, JPEG-LS, uncompressed), lossless sources transcoded when the peer refuses their
syntax, lossy ones reported, a refused caller one line and exit 1."""

from __future__ import annotations

import json

import numpy as np
import pydicom
import pytest

from tests.conftest import require_binary

pytestmark = [pytest.mark.orthanc]

#: What the second Orthanc accepts: uncompressed only; every compressed syntax is refused.
NARROW = ["1.2.840.10008.1.2", "1.2.840.10008.1.2.1"]


def _plain_orthanc(tmp_path, name: str, accepted: list[str] | None = None):
    """An Orthanc without plugins (fast to start) that accepts C-STORE only from SENDER@127.0.0.1."""
    require_binary("Orthanc")
    from medcbir.pacs.orthanc_server import OrthancServer, free_port

    config = {"Name": name, "StorageDirectory": str(tmp_path / name), "IndexDirectory": str(tmp_path / name),
              "HttpPort": free_port(), "DicomPort": free_port(), "DicomAet": "MEDCBIR", "RemoteAccessAllowed": False,
              "AuthenticationEnabled": False, "DicomCheckCalledAet": True, "DicomCheckModalityHost": True,
              "DicomAlwaysAllowStore": False, "Plugins": [],
              "DicomModalities": {"sender": {"AET": "SENDER", "Host": "127.0.0.1", "Port": 104, "AllowStore": True}}}
    if accepted is not None:
        config["AcceptedTransferSyntaxes"] = accepted
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(config))
    return OrthancServer(path).start(timeout=60, wait_plugin=False)


def _stored(server) -> dict:
    """SOP Instance UID → (Orthanc id, the transfer syntax Orthanc stored it in)."""
    out = {}
    for instance in server.rest.get_json("/instances"):
        uid = server.rest.get_json(f"/instances/{instance}/simplified-tags")["SOPInstanceUID"]
        out[uid] = (instance, server.rest.session.get(f"{server.url}/instances/{instance}/metadata/TransferSyntax").text)
    return out


def test_send_stores_every_syntax_over_one_association(pacs_archive, tmp_path, capsys):
    from medcbir.cli.main import main

    syntaxes = {str(pydicom.dcmread(p, stop_before_pixels=True).file_meta.TransferSyntaxUID) for p in pacs_archive}
    assert len(syntaxes) >= 3  # the phantom mixes them: storescu alone stops at the first other family
    archive = pacs_archive[0].parents[3]  # the phantom folder: DICOM files beside labels.csv, masks.h5, ...
    server = _plain_orthanc(tmp_path, "all")
    try:
        code = main(["send", str(archive), "--to", f"MEDCBIR@127.0.0.1:{server.config['DicomPort']}",
                     "--calling-aet", "SENDER", "--json"])
        out = json.loads(capsys.readouterr().out)
        assert code == 0, out
        assert out["sent"] == out["files"] == len(pacs_archive) and out["failed"] == 0 and out["transcoded"] == 0
        assert out["not_dicom"] >= 3  # labels.csv, masks.h5, phantom.json, ...
        stored = _stored(server)
        for path in pacs_archive:  # every file, as it was encoded
            meta = pydicom.dcmread(path, stop_before_pixels=True)
            assert stored[meta.SOPInstanceUID][1] == meta.file_meta.TransferSyntaxUID
    finally:
        server.stop()


def test_send_transcodes_refused_lossless_files_and_reports_lossy_ones(pacs_archive, tmp_path, capsys):
    from pydicom.uid import JPEGLSNearLossless

    from medcbir.cli.main import main

    lossy = pydicom.dcmread(pacs_archive[0])
    if lossy.file_meta.TransferSyntaxUID.is_compressed:
        lossy.decompress(generate_instance_uid=False)
    lossy.compress(JPEGLSNearLossless, jls_error=3, generate_instance_uid=True)
    lossy_path = tmp_path / "lossy.dcm"
    lossy.save_as(lossy_path)
    refused = [p for p in pacs_archive if str(pydicom.dcmread(p, stop_before_pixels=True).file_meta.TransferSyntaxUID) not in NARROW]
    assert refused and len(refused) < len(pacs_archive)
    server = _plain_orthanc(tmp_path, "narrow", accepted=NARROW)
    try:
        code = main(["send", *map(str, pacs_archive), str(lossy_path), "--to", f"MEDCBIR@127.0.0.1:{server.config['DicomPort']}",
                     "--calling-aet", "SENDER", "--json"])
        out = json.loads(capsys.readouterr().out)
        assert code == 1  # one file could not be stored
        assert out["sent"] == len(pacs_archive) and out["transcoded"] == len(refused)
        [failure] = out["failures"]
        assert failure["file"] == str(lossy_path) and "lossy" in failure["reason"]
        stored = _stored(server)
        assert lossy.SOPInstanceUID not in stored
        for path in refused[:3]:  # transcoded: the same instance, the same pixel values
            original = pydicom.dcmread(path)
            instance, syntax = stored[original.SOPInstanceUID]
            assert syntax == "1.2.840.10008.1.2.1"
            import io

            copy = pydicom.dcmread(io.BytesIO(server.rest.instance_file(instance)))
            assert np.array_equal(copy.pixel_array, original.pixel_array)
    finally:
        server.stop()


def test_send_refused_caller_and_bad_destination(pacs_archive, tmp_path, capsys):
    from medcbir.cli.main import main

    server = _plain_orthanc(tmp_path, "strict")
    try:
        code = main(["send", str(pacs_archive[0]), "--to", f"MEDCBIR@127.0.0.1:{server.config['DicomPort']}", "--calling-aet", "STRANGER"])
        err = capsys.readouterr().err
        assert code == 1 and err.count("\n") == 1 and "STRANGER" in err and err.startswith("error: ")
        assert server.rest.get_json("/instances") == []
    finally:
        server.stop()
    assert main(["send", str(pacs_archive[0]), "--to", "no-port-here"]) == 2  # a usage error
