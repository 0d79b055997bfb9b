"""A search result as a DICOM Key Object Selection document (KOS), written with highdicom.

The document lives in the query's study (the query's patient and study modules), titled
"Of Interest" (DCM 113000, CID 7010); its series is described as
``similar images (medcbir, encoder <fingerprint>)``. Its content (TID 2010) references the
query first, then the neighbours in rank order; the Key Object Description text states the
encoder's full fingerprint and each neighbour's rank, score and UIDs. Every referenced instance
is listed in the Current Requested Procedure Evidence Sequence, one item per study.

Privacy rule: the document is filed under the query's patient, so whoever may read that patient
reads it. A neighbour of another patient is referenced (by UIDs only: no name, no id of that
patient is written) only when the request allows other patients (``other_patients=True``, the
default, like the search's default ``exclude="none"``); otherwise such neighbours are left out
and the description says how many were withheld.

Example:
    >>> kos = similar_images_kos(query_header, [(Reference.of(h), 1, 0.93)], fingerprint="ab12...")  # doctest: +SKIP
    >>> save(kos, Path("out"))                                                                       # doctest: +SKIP
"""

from __future__ import annotations

from medcbir.imaging.dicom_out.common import MANUFACTURER, Reference, mark

TITLE = "similar images"


def series_description(fingerprint: str) -> str:
    """``similar images (medcbir, encoder <fingerprint>)`` within LO's 64 characters."""
    room = 64 - len(f"{TITLE} (medcbir, encoder )")
    return f"{TITLE} (medcbir, encoder {fingerprint[:room]})"


def _description(fingerprint: str, query: Reference, kept: list, withheld: int) -> str:
    lines = [f"{TITLE} (medcbir, encoder {fingerprint})", f"query: {query.sop_instance_uid}"]
    for ref, rank, score in kept:
        lines.append(f"rank {rank}: score {score:.6f} sop {ref.sop_instance_uid} series {ref.series_instance_uid} study {ref.study_instance_uid}")
    if withheld:
        lines.append(f"{withheld} neighbour(s) of other patients withheld (other patients not allowed by the request)")
    return "\n".join(lines)


def similar_images_kos(query_header, neighbours: list[tuple[Reference, int, float]], fingerprint: str, *,
                       other_patients: bool = True, series_number: int = 9901, instance_number: int = 1):
    """The KOS of one query and its neighbours.

    Args:
        query_header: the query's pydicom dataset (its header is enough): patient and study of
            the document.
        neighbours: ``(reference, rank, score)`` best first.
        fingerprint: the index encoder's fingerprint.
        other_patients: reference neighbours whose PatientID differs from the query's.
        series_number, instance_number: of the new document.

    Returns:
        A ``highdicom.ko.KeyObjectSelectionDocument`` (a pydicom Dataset).
    """
    import highdicom as hd
    from highdicom.sr.utils import collect_evidence
    from pydicom.sr.codedict import codes

    query = Reference.of(query_header)
    kept = [(ref, int(rank), float(score)) for ref, rank, score in neighbours
            if other_patients or ref.patient_id == query.patient_id]
    withheld = len(neighbours) - len(kept)
    referenced = [query.evidence()] + [ref.evidence() for ref, _, _ in kept if ref.sop_instance_uid != query.sop_instance_uid]
    content = hd.ko.KeyObjectSelection(
        document_title=codes.DCM.OfInterest,
        referenced_objects=referenced,
        description=_description(fingerprint, query, kept, withheld),
    )
    # highdicom refuses evidence from more than one other study; DICOM lists every study in the
    # Current Requested Procedure Evidence Sequence, so the document is built on the query's
    # evidence and the full evidence set (grouped by collect_evidence) replaces it.
    only_query = hd.ko.KeyObjectSelection(document_title=codes.DCM.OfInterest, referenced_objects=[referenced[0]])
    document = hd.ko.KeyObjectSelectionDocument(
        evidence=[_patient_study(query_header, referenced[0])],
        content=only_query,
        series_instance_uid=hd.UID(),
        series_number=series_number,
        sop_instance_uid=hd.UID(),
        instance_number=instance_number,
        manufacturer=MANUFACTURER,
    )
    document.ContentSequence = content[0].ContentSequence
    same, other = collect_evidence(referenced, content[0], study_instance_uid=document.StudyInstanceUID)
    document.CurrentRequestedProcedureEvidenceSequence = same + other
    mark(document, series_description(fingerprint))
    return document


def _patient_study(header, evidence):
    """``evidence`` with the query's patient and study attributes (what the document inherits)."""
    for keyword in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "AccessionNumber", "StudyID",
                    "StudyDate", "StudyTime", "ReferringPhysicianName", "SpecificCharacterSet"):
        setattr(evidence, keyword, header.get(keyword, None) if keyword != "PatientID" else evidence.PatientID)
    if "SpecificCharacterSet" not in header:
        del evidence.SpecificCharacterSet
    return evidence
