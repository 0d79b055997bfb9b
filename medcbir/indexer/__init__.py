"""medcbir.indexer: archive → embeddings → HDF5 shards → FAISS, committed through a manifest.

See docs/contracts.md (indexer section) and docs/design.md ("Rules every stage keeps").

Example:
    >>> from medcbir.indexer import index_archive, IndexStore, verify
    >>> summary = index_archive("archive/", "index/", "default")      # doctest: +SKIP
    >>> store = IndexStore.open("index/")                              # doctest: +SKIP
"""

from medcbir.indexer.faiss_index import AUTO_FLAT_MAX, TRAIN_SAMPLE
from medcbir.indexer.lock import IndexBusy
from medcbir.indexer.maintenance import VerifyReport, compact, delete, verify
from medcbir.indexer.pipeline import IndexSummary, index_archive
from medcbir.indexer.recovery import repair
from medcbir.indexer.retrain import retrain
from medcbir.indexer.store import IndexStore
from medcbir.indexer.writer import IndexWriter

__all__ = [
    "AUTO_FLAT_MAX",
    "TRAIN_SAMPLE",
    "IndexBusy",
    "IndexStore",
    "IndexSummary",
    "IndexWriter",
    "VerifyReport",
    "compact",
    "delete",
    "index_archive",
    "repair",
    "retrain",
    "verify",
]
