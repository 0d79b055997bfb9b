"""medcbir.engine: open an index, search it (batched, filtered inside FAISS), evaluate it.

See docs/contracts.md (engine section) and ``medcbir.engine.queries`` for the query kinds.

Example:
    >>> from medcbir.engine import Engine, evaluate
    >>> engine = Engine.open("INDEX")
    >>> hits = engine.search(["path/to/slice.dcm"], k=5, exclude="same-patient")[0]
    >>> evaluate(engine, "archive/labels.csv", k=5)["map_at_k"]
"""

from medcbir.engine.engine import Engine
from medcbir.engine.evaluate import evaluate, read_labels
from medcbir.engine.filters import EXCLUDES, Filters
from medcbir.engine.neighbour import Neighbour
from medcbir.engine.opening import open_engine

__all__ = ["EXCLUDES", "Engine", "Filters", "Neighbour", "evaluate", "open_engine", "read_labels"]
