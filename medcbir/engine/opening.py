"""Which engine an index opens as: searched in this process, or with its shards spread over Ray actors.

Both answer the same queries with the same results (:mod:`medcbir.engine.sharded`).

Example:
    >>> engine = open_engine("INDEX")                            # doctest: +SKIP
    >>> sharded = open_engine("INDEX", ray="local", shards=2)    # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

from medcbir.engine.engine import Engine
from medcbir.engine.sharded import ShardedEngine


def open_engine(index_dir, encoder: Any = None, device: Any = None, verify: str = "checksums", *, ray: Any = None, shards: int | None = None) -> Engine:
    """Open an index for search.

    Args:
        index_dir, encoder, device, verify: as for :meth:`Engine.open`.
        ray: None = search in this process (an :class:`Engine`); ``"local"``/True (a local Ray
            runtime) or a Ray cluster address = a :class:`~medcbir.engine.sharded.ShardedEngine`.
        shards: Ray actors holding parts of the index (default 2 with ``ray``).
    """
    if ray is None or ray is False:
        return Engine.open(index_dir, encoder=encoder, device=device, verify=verify)
    return ShardedEngine.open(index_dir, encoder=encoder, device=device, verify=verify, ray=ray, shards=shards or 2)
