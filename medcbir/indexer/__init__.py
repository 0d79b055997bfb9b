"""medcbir.indexer — see docs/contracts.md."""
