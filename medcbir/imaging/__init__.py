"""medcbir.imaging — see docs/contracts.md."""
