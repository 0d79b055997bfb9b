"""medcbir.train — see docs/contracts.md."""
