"""medcbir.explain — see docs/contracts.md."""
