"""Factory-string helpers every FAISS module shares: exact specs, the refine step, the IVF level."""

from __future__ import annotations

import re

import faiss

_REFINE = re.compile(r"^(?P<base>.+?),\s*Refine\((?P<refine>.+)\)$")
FLAT_SPECS = {"flat", "idmap,flat", "idmap2,flat"}


def is_flat(spec: str) -> bool:
    return spec.replace(" ", "").lower() in FLAT_SPECS


def split_refine(spec: str) -> tuple[str, str | None]:
    """``"IVF1024,PQ64,Refine(Flat)"`` → ``("IVF1024,PQ64", "Flat")``."""
    match = _REFINE.match(spec.strip())
    if match:
        return match["base"].strip(), match["refine"].strip()
    return spec.strip(), None


def try_extract_ivf(index: faiss.Index):
    try:
        return faiss.extract_index_ivf(index)
    except Exception:  # noqa: BLE001 - not an IVF index
        return None
