"""medcbir: medical content-based image retrieval with explanations.

The stages, in the order they may import each other (docs/contracts.md):
``imaging`` → ``train`` → ``indexer`` → ``engine`` → ``explain`` → ``pacs`` → ``cli``.
"""

__version__ = "0.1.0"
