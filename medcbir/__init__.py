"""medcbir: medical content-based image retrieval with explanations.

The public API (``medcbir/api.py``; importing ``medcbir`` loads neither torch nor FAISS: the
first call does):

- ``index(index, archive, encoder="default")`` → ``IndexSummary``: embed an archive into an index;
- ``open_index(index, encoder=None)`` → ``Engine``: open an index for many calls;
- ``search(index, queries, k=10, exclude="same-patient")`` → a list of ``Neighbour`` per query;
- ``evaluate(index, labels, k=5, exclude="same-patient")`` → ``Evaluation``; with
  ``roi_boxes=BOXES_CSV`` (region queries) → ``RegionEvaluation``;
- ``explain(index, query, k=5, method="relax", exclude="same-patient")`` → ``Explanation``;
- ``embed(archive, encoder="default")`` → ``Embeddings``: keys and vectors, without an index;
- ``refresh_regions(index, archive=None)`` → ``RefreshSummary``: re-describe an index's regions
  in place (a new region recipe, or an index built without regions).

``index`` is an index folder or an open ``Engine``; every result is a dataclass. The stages, in the
order they may import each other (docs/design.md): ``imaging`` → ``encoders`` → ``train`` |
``indexer`` → ``engine`` → ``explain`` → the API → ``reproduce`` → ``pacs`` → ``cli``.

Example:
    >>> import medcbir
    >>> sorted(medcbir.__all__)
    ['ClassScores', 'EXCLUDE', 'Evaluation', 'RegionEvaluation', 'embed', 'evaluate', 'explain', 'index', 'open_index', 'refresh_regions', 'search']
    >>> medcbir.EXCLUDE
    'same-patient'
"""

__version__ = "0.1.0"

__all__ = ["EXCLUDE", "ClassScores", "Evaluation", "RegionEvaluation", "embed", "evaluate", "explain", "index", "open_index", "refresh_regions", "search"]


def __getattr__(name: str):
    # The API's module imports torch and FAISS: only when one of its names is asked for.
    # ``explain`` is also the sub-package medcbir.explain, which calls the API's explain.
    if name in __all__:
        import importlib

        api = importlib.import_module("medcbir.api")
        return importlib.import_module("medcbir.explain") if name == "explain" else getattr(api, name)
    raise AttributeError(f"module 'medcbir' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
