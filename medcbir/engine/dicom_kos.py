"""Search results as DICOM Key Object Selection documents (``medcbir search --dicom-out``).

The document itself is :func:`medcbir.imaging.dicom_out.kos.similar_images_kos`; this module
finds what it references: the query's file (a path, or a ``UID[:frame]`` of the index) and each
neighbour's header.
"""

from __future__ import annotations

from pathlib import Path

from medcbir.engine.queries import QueryResolver
from medcbir.errors import ConfigError
from medcbir.imaging.dicom_out.common import Reference, read_header, save
from medcbir.imaging.dicom_out.kos import similar_images_kos


def query_source(engine, query) -> str:
    """The DICOM file of a query given as a path or as a SOP Instance UID (``UID[:frame]``) in the index."""
    if isinstance(query, (str, Path)) and Path(str(query)).is_file():
        return str(query)
    [resolved] = QueryResolver(engine).resolve([query])
    if resolved.item_id < 0:
        raise ConfigError(f"query {resolved.label} has no DICOM file to reference")
    return str(engine.meta([resolved.item_id])[0].get("source", ""))


def neighbour_references(neighbours) -> list[tuple[Reference, int, float]]:
    """``(reference, rank, score)`` of engine neighbours, read from their files' headers."""
    return [(Reference.of(read_header(str(n.meta.get("source", "")))), int(n.rank), float(n.score)) for n in neighbours]


def write_search_kos(engine, queries: list, results: list, folder, *, other_patients: bool = True) -> list:
    """One KOS per query of an ``engine.search`` answer, saved in ``folder``; their paths."""
    fingerprint = str(engine.store.encoder_info.get("fingerprint", ""))
    paths = []
    for query, hits in zip(queries, results):
        header = read_header(query_source(engine, query))
        kos = similar_images_kos(header, neighbour_references(hits), fingerprint, other_patients=other_patients)
        paths.append(save(kos, folder))
    return paths
