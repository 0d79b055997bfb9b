"""``"store": true``: a search's KOS and an explanation's overlays and maps, stored into Orthanc.

The objects are medcbir's DICOM results (``medcbir.imaging.dicom_out``: a search's KOS,
``medcbir.explain.dicom_maps``) uploaded with ``POST /instances`` by the worker (over the same
loopback REST link and token it fetches with), so they appear under their source's study in any
viewer connected to Orthanc. Orthanc then announces them as new instances; the indexer skips
them as ``derived-by-medcbir``.
"""

from __future__ import annotations

from pathlib import Path

from medcbir.errors import DecodeError
from medcbir.imaging.dicom_out.common import Reference, read_header, to_bytes
from medcbir.imaging.dicom_out.kos import similar_images_kos
from medcbir.pacs.orthanc_config import instance_of

REFERENCE_TAGS = ("SOPClassUID", "SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID")


def reference_of(rest, meta: dict) -> Reference:
    """The reference of an indexed item: from Orthanc's tags when Orthanc holds it, else its file."""
    source = str(meta.get("source", ""))
    instance = instance_of(source)
    if instance is None and not Path(source).is_file() and meta.get("sop_instance_uid"):
        instance = rest.lookup_sop(str(meta["sop_instance_uid"]))
    if instance is None:
        return Reference.of(read_header(source))
    tags = rest.tags(instance)
    if tags is None or any(not tags.get(k) for k in REFERENCE_TAGS):
        raise DecodeError(f"Orthanc has no usable tags for instance {instance}")
    return Reference(*(str(tags[k]) for k in REFERENCE_TAGS), patient_id=str(tags.get("PatientID", "") or ""),
                     is_image=bool(tags.get("Rows")) and bool(tags.get("Columns")))


def _stored(answer: dict, ds) -> dict:
    return {"instance": answer.get("ID"), "series": answer.get("ParentSeries"), "study": answer.get("ParentStudy"),
            "sop_class_uid": str(ds.SOPClassUID), "sop_instance_uid": str(ds.SOPInstanceUID)}


def store_all(rest, datasets) -> list[dict]:
    """Upload each dataset; ``{"instance", "series", "study", "sop_class_uid", "sop_instance_uid"}`` each."""
    return [_stored(rest.store(to_bytes(ds)), ds) for ds in datasets]


def store_search_kos(rest, query_path: Path, neighbours, fingerprint: str, *, other_patients: bool = True) -> dict:
    """Build the KOS of one query (its file) and its engine neighbours and store it; what Orthanc answered."""
    refs = [(reference_of(rest, dict(n.meta)), int(n.rank), float(n.score)) for n in neighbours]
    kos = similar_images_kos(read_header(query_path), refs, fingerprint, other_patients=other_patients)
    return store_all(rest, [kos])[0]
