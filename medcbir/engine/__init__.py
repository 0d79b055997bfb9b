"""medcbir.engine — see docs/contracts.md."""
